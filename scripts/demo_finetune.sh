#!/usr/bin/env bash
# After `make demo`: fine-tune the demo's pre-trained OPT-tiny for two
# downstream tasks on the same engine (2 CPU ranks, ZeRO-3), each from the
# pre-trained weights (train.init_from), and score it against the pre-trained
# model on the held-out samples:
#   caption   - captions from the image alone (opt-eval caption: BLEU-4, CIDEr, attributes named)
#   asr       - transcripts from the speech alone (opt-eval caption: WER)
#   retrieval - contrastive + matching with hard negatives (opt-eval retrieval: R@1, both protocols)
#   vqa       - questions about colour, shape and position of the demo's scenes, asked in VQA v2's
#               layout (opt-eval vqa: VQA accuracy per answer type)
#   classify  - the shape, by a linear layer on the frozen image tower (opt-eval classify: top-1, mAP)
# Knobs: DEMO_DIR (runs/demo), DEMO_FT_STEPS (100), DEMO_LABEL_STEPS (150), DEMO_RANKS (2),
# DEMO_FT_TASKS (caption asr retrieval vqa classify).
set -euo pipefail
source "$(dirname "$0")/demo_env.sh"
DEMO_FT_STEPS="${DEMO_FT_STEPS:-100}"
DEMO_RANKS="${DEMO_RANKS:-2}"
DEMO_LABEL_STEPS="${DEMO_LABEL_STEPS:-150}"
DEMO_FT_TASKS="${DEMO_FT_TASKS:-caption asr retrieval vqa classify}"
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

# The labelled data of vqa and classify: VQA v2 JSON and a classes CSV written
# from the demo's scenes, through the same converter and builder real corpora use.
down="$DEMO_DIR/downstream"
label_shards() {   # TASK FORMAT ARGS... -> shards under $down/TASK/shards/{train,heldout}
    local task=$1 fmt=$2; shift 2
    for split in train heldout; do
        local input="$down/$task/$split.csv" extra=()
        [ "$fmt" = vqa ] && input="$down/vqa/${split}_questions.json" \
            && extra=(--annotations "$down/vqa/${split}_annotations.json" --image-name "{image_id}.jpg")
        opt-shards pairs "$input" --format "$fmt" --out "$down/$task/$split.jsonl" "${extra[@]}" "$@" >/dev/null
        opt-shards build --annotations "$down/$task/$split.jsonl" --images "$down/images" \
            --out "$down/$task/shards/$split" --prefix "$task" --samples-per-shard 256 --image-short-side 128 \
            --overwrite --no-progress >/dev/null
    done
}
if [[ " $DEMO_FT_TASKS " == *" vqa "* || " $DEMO_FT_TASKS " == *" classify "* ]]; then
    python -m opt_scale.demo_tasks --dir "$DEMO_DIR"
    label_shards vqa vqa
    label_shards classes classes
fi

for task in $DEMO_FT_TASKS; do
    steps="$DEMO_FT_STEPS" extra=()
    case "$task" in
        vqa) data=vqa ;;
        classify) data=classes ;;
        *) data= ;;
    esac
    if [ -n "$data" ]; then
        steps="$DEMO_LABEL_STEPS"
        extra=(data.train_shards="$down/$data/shards/train/$data-index.json" data.labels="$down/$data/train.labels.json")
    fi
    echo "== fine-tuning for $task: $steps steps from $DEMO_DIR/train"
    opt-train --nproc-per-node "$DEMO_RANKS" --task "$task" --config tiny --set "${assets[@]}" \
        train.init_from="$DEMO_DIR/train" train.steps="$steps" train.lr=3e-4 train.warmup_steps=10 \
        train.out_dir="$out/$task" train.overwrite=true train.log_every=20 train.checkpoint_every=0 \
        data.num_workers=1 "${extra[@]}"
    opt-export "$out/$task" --out "$out/$task-export"
    if [ -n "$data" ]; then
        opt-eval "$task" --checkpoint "$out/$task-export" --shards "$down/$data/shards/heldout/$data-index.json" \
            --json "$out/$task.json"
    elif [ "$task" = retrieval ]; then
        opt-eval retrieval --checkpoint "$out/$task-export" --shards "$heldout" --json "$out/$task-retrieval.json"
    else
        opt-eval caption --checkpoint "$out/$task-export" --shards "$heldout" --beam 3 --json "$out/$task.json"
    fi
done
python - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
have = lambda name: os.path.isfile(f"{out}/{name}.json")  # noqa: E731
runs = {name: json.load(open(f"{out}/{name}.json")) for name in ("pretrained", "caption", "asr") if have(name)}
print(f"\nheld-out samples: {runs['pretrained']['samples']}")
print(f"{'model':<12}{'image BLEU-4':>14}{'image CIDEr':>13}{'colour':>8}{'shape':>7}{'position':>10}{'audio WER %':>13}")
for name, r in runs.items():
    img, attrs = r["scores"]["image"], r["attributes"]["image"]["attributes"]
    print(f"{name:<12}{img['BLEU-4']:>14.1f}{img['CIDEr']:>13.2f}{attrs['colour']['accuracy']:>8.2f}"
          f"{attrs['shape']['accuracy']:>7.2f}{attrs['position']['accuracy']:>10.2f}{r['scores']['audio']['WER']:>13.1f}")
blind = runs["pretrained"]["attributes"]["image"]["attributes"]
print(f"{'chance':<12}{'':>14}{'':>13}{blind['colour']['chance']:>8.2f}{blind['shape']['chance']:>7.2f}"
      f"{blind['position']['chance']:>10.2f}")
if have("retrieval-retrieval"):
    pre, ft = (json.load(open(f"{out}/{n}-retrieval.json")) for n in ("pretrained", "retrieval"))
    print(f"\nretrieval R@1 (%), embedding ranking; chance {pre['chance']['R@1']:.1f}")
    print(f"{'direction':<20}{'pretrained':>12}{'fine-tuned':>12}")
    for d, r in pre["by_protocol"]["embedding"].items():
        print(f"{d:<20}{r['R@1']:>12.1f}{ft['by_protocol']['embedding'][d]['R@1']:>12.1f}")
if have("vqa"):
    v = json.load(open(f"{out}/vqa.json"))
    print(f"\nVQA accuracy (%) over {v['samples']} held-out questions; chance {v['chance']:.1f}")
    print(f"{'answer type':<14}{'accuracy':>10}{'answer prior':>14}")
    for kind, r in v["by_type"].items():
        print(f"{kind:<14}{r['accuracy']:>10.1f}{r['answer_prior']:>14.1f}")
    print(f"{'all':<14}{v['accuracy']:>10.1f}{v['answer_prior']:>14.1f}")
if have("classify"):
    c = json.load(open(f"{out}/classify.json"))
    print(f"\nshape from the frozen image tower (linear probe), {c['samples']} held-out images: top-1 {c['top1']:.1f}% "
          f"(chance {c['chance_top1']:.1f}, majority {c['majority_top1']:.1f}); mAP {c['mAP']:.1f} "
          f"(chance {c['chance_mAP']:.1f})")
PY
