#!/usr/bin/env bash
# After `make demo`: fine-tune the demo's pre-trained OPT-tiny for two
# downstream tasks on the same engine (2 CPU ranks, ZeRO-3), each from the
# pre-trained weights (train.init_from), and score it against the pre-trained
# model on the held-out samples:
#   caption   - captions from the image alone (opt-eval caption: BLEU-4, CIDEr, attributes named)
#   asr       - transcripts from the speech alone (opt-eval caption: WER)
#   retrieval - contrastive + matching with hard negatives (opt-eval retrieval: R@1, both protocols)
# Knobs: DEMO_DIR (runs/demo), DEMO_FT_STEPS (100), DEMO_RANKS (2).
set -euo pipefail
source "$(dirname "$0")/demo_env.sh"
DEMO_FT_STEPS="${DEMO_FT_STEPS:-100}"
DEMO_RANKS="${DEMO_RANKS:-2}"
[ -d "$DEMO_DIR/train/checkpoints" ] || { echo "no demo run in $DEMO_DIR/train: run 'make demo' first" >&2; exit 1; }
mapfile -t assets < <(python -m opt_scale.demo overrides --dir "$DEMO_DIR")
heldout="$DEMO_DIR/shards/heldout/demo-heldout-index.json"
out="$DEMO_DIR/finetune"
mkdir -p "$out"
[ -f "$out/pretrained-retrieval.json" ] || {
    opt-export "$DEMO_DIR/train" --out "$out/pretrained-export"
    opt-eval caption --checkpoint "$out/pretrained-export" --shards "$heldout" --beam 3 --json "$out/pretrained.json"
    opt-eval retrieval --checkpoint "$out/pretrained-export" --shards "$heldout" \
        --json "$out/pretrained-retrieval.json"
}
for task in caption asr retrieval; do
    echo "== fine-tuning for $task: $DEMO_FT_STEPS steps from $DEMO_DIR/train"
    opt-train --nproc-per-node "$DEMO_RANKS" --task "$task" --config tiny --set "${assets[@]}" \
        train.init_from="$DEMO_DIR/train" train.steps="$DEMO_FT_STEPS" train.lr=3e-4 train.warmup_steps=10 \
        train.out_dir="$out/$task" train.overwrite=true train.log_every=20 train.checkpoint_every=0 \
        data.num_workers=1
    opt-export "$out/$task" --out "$out/$task-export"
    if [ "$task" = retrieval ]; then
        opt-eval retrieval --checkpoint "$out/$task-export" --shards "$heldout" --json "$out/$task-retrieval.json"
    else
        opt-eval caption --checkpoint "$out/$task-export" --shards "$heldout" --beam 3 --json "$out/$task.json"
    fi
done
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
runs = {name: json.load(open(f"{out}/{name}.json")) for name in ("pretrained", "caption", "asr")}
print(f"\nheld-out samples: {runs['pretrained']['samples']}")
print(f"{'model':<12}{'image BLEU-4':>14}{'image CIDEr':>13}{'colour':>8}{'shape':>7}{'position':>10}{'audio WER %':>13}")
for name, r in runs.items():
    img, attrs = r["scores"]["image"], r["attributes"]["image"]["attributes"]
    print(f"{name:<12}{img['BLEU-4']:>14.1f}{img['CIDEr']:>13.2f}{attrs['colour']['accuracy']:>8.2f}"
          f"{attrs['shape']['accuracy']:>7.2f}{attrs['position']['accuracy']:>10.2f}{r['scores']['audio']['WER']:>13.1f}")
blind = runs["pretrained"]["attributes"]["image"]["attributes"]
print(f"{'chance':<12}{'':>14}{'':>13}{blind['colour']['chance']:>8.2f}{blind['shape']['chance']:>7.2f}"
      f"{blind['position']['chance']:>10.2f}")
pre, ft = (json.load(open(f"{out}/{n}-retrieval.json")) for n in ("pretrained", "retrieval"))
print(f"\nretrieval R@1 (%), embedding ranking; chance {pre['chance']['R@1']:.1f}")
print(f"{'direction':<20}{'pretrained':>12}{'fine-tuned':>12}")
for d, r in pre["by_protocol"]["embedding"].items():
    print(f"{d:<20}{r['R@1']:>12.1f}{ft['by_protocol']['embedding'][d]['R@1']:>12.1f}")
PY
