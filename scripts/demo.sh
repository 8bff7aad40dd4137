#!/usr/bin/env bash
# The demo pipeline, end to end, on the built-in learnable data set:
#   demo data (Localized Narratives layout) -> shards -> SentencePiece tokenizer
#   -> VQ image tokenizer -> OPT-tiny, 2 CPU ranks, DeepSpeed ZeRO-3 (gloo)
#   -> TensorBoard + checkpoint.
# Assets already made (data, shards, tokenizers) are reused; pre-training starts fresh.
# Knobs: DEMO_DIR (runs/demo), DEMO_N (512 samples), DEMO_STEPS (300), DEMO_VQ_STEPS (300), DEMO_RANKS (2).
set -euo pipefail
source "$(dirname "$0")/demo_env.sh"
DEMO_N="${DEMO_N:-512}"
DEMO_STEPS="${DEMO_STEPS:-300}"
DEMO_VQ_STEPS="${DEMO_VQ_STEPS:-300}"
DEMO_RANKS="${DEMO_RANKS:-2}"
start=$(date +%s)

python -m opt_scale.demo prepare --dir "$DEMO_DIR" --n "$DEMO_N" --vq-steps "$DEMO_VQ_STEPS"

echo "== pre-training OPT-tiny: $DEMO_STEPS steps, $DEMO_RANKS CPU ranks, DeepSpeed ZeRO-3 (gloo)"
rm -rf "$DEMO_DIR/train"   # the demo's own scratch run: each demo starts fresh
torchrun --standalone --nproc_per_node "$DEMO_RANKS" "$(command -v opt-train)" --config tiny --set \
    data.train_shards="$DEMO_DIR/shards/demo-index.json" data.tokenizer="$DEMO_DIR/tokenizer.model" \
    model.vq.checkpoint="$DEMO_DIR/vq/vq.safetensors" data.num_workers=1 \
    train.steps="$DEMO_STEPS" train.out_dir="$DEMO_DIR/train" train.log_every=20 train.checkpoint_every=100

echo "demo finished in $(( $(date +%s) - start )) s"
