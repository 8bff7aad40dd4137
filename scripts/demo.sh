#!/usr/bin/env bash
# The demo pipeline, end to end:
#   narratives (the built-in demo data, or DEMO_INPUT) -> shards -> SentencePiece
#   tokenizer -> VQ image tokenizer -> OPT-tiny, 2 CPU ranks, DeepSpeed ZeRO-3
#   (gloo) -> TensorBoard + checkpoint.
# Assets already made (data, shards, tokenizers) are reused; pre-training starts fresh.
# Knobs: DEMO_DIR (runs/demo), DEMO_INPUT (a directory in the Localized
# Narratives layout: annotations.jsonl, images/, audio/; default: generate the
# demo data), DEMO_N (512 generated samples), DEMO_HOLDOUT (64 held-out
# samples), DEMO_STEPS (240), DEMO_VQ_STEPS (300), DEMO_RANKS (2).
set -euo pipefail
source "$(dirname "$0")/demo_env.sh"
DEMO_N="${DEMO_N:-512}"
DEMO_HOLDOUT="${DEMO_HOLDOUT:-64}"
DEMO_STEPS="${DEMO_STEPS:-240}"
DEMO_VQ_STEPS="${DEMO_VQ_STEPS:-300}"
DEMO_RANKS="${DEMO_RANKS:-2}"
start=$(date +%s)

input=()
[ -n "${DEMO_INPUT:-}" ] && input=(--input "$DEMO_INPUT")
python -m opt_scale.demo prepare --dir "$DEMO_DIR" --n "$DEMO_N" --holdout "$DEMO_HOLDOUT" \
    --vq-steps "$DEMO_VQ_STEPS" "${input[@]}"
mapfile -t assets < <(python -m opt_scale.demo overrides --dir "$DEMO_DIR")

# Dropout off: on CPU torch's dropout costs about a third of a tiny step, and
# 240 steps are too few to overfit (the presets keep the paper's 0.1).
no_dropout=()
for tower in text vision audio cross text_decoder image_decoder; do no_dropout+=("model.$tower.dropout=0"); done

echo "== pre-training OPT-tiny: $DEMO_STEPS steps, $DEMO_RANKS CPU ranks, DeepSpeed ZeRO-3 (gloo)"
rm -rf "$DEMO_DIR/train"   # the demo's own scratch run: each demo starts fresh
opt-train --nproc-per-node "$DEMO_RANKS" --config tiny --set \
    "${assets[@]}" "${no_dropout[@]}" data.num_workers=1 \
    train.steps="$DEMO_STEPS" train.out_dir="$DEMO_DIR/train" train.log_every=20 train.checkpoint_every=100

echo "demo finished in $(( $(date +%s) - start )) s"
