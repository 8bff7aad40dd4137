#!/usr/bin/env bash
# The demo pipeline, end to end, on the built-in learnable data set:
#   demo data (Localized Narratives layout) -> shards -> SentencePiece tokenizer
#   -> VQ image tokenizer -> OPT-tiny, 2 CPU ranks, DeepSpeed ZeRO-3 (gloo)
#   -> TensorBoard + checkpoint.
# Steps already done (data, shards, tokenizers) are reused; pre-training starts fresh.
# Knobs: DEMO_DIR (runs/demo), DEMO_N (512 samples), DEMO_STEPS (300), DEMO_VQ_STEPS (120), DEMO_RANKS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"
DEMO_DIR="${DEMO_DIR:-runs/demo}"
DEMO_N="${DEMO_N:-512}"
DEMO_STEPS="${DEMO_STEPS:-300}"
DEMO_VQ_STEPS="${DEMO_VQ_STEPS:-120}"
DEMO_RANKS="${DEMO_RANKS:-2}"
export PYTHONWARNINGS="ignore::FutureWarning"
start=$(date +%s)

ann="$DEMO_DIR/raw/annotations/open_images_demo_localized_narratives-00000-of-00001.jsonl"
if [ ! -f "$ann" ] || [ "$(wc -l < "$ann")" -ne "$DEMO_N" ]; then
    echo "== 1/5 demo data: $DEMO_N image-text-audio triplets -> $DEMO_DIR/raw"
    rm -rf "$DEMO_DIR/raw" "$DEMO_DIR/shards" "$DEMO_DIR/tokenizer.model"
    opt-shards demo-data --out "$DEMO_DIR/raw" --n "$DEMO_N"
else
    echo "== 1/5 demo data: reusing $DEMO_DIR/raw"
fi

echo "== 2/5 shards -> $DEMO_DIR/shards"
opt-shards build --annotations "$DEMO_DIR/raw/annotations/*.jsonl" --images "$DEMO_DIR/raw/images" \
    --audio "$DEMO_DIR/raw/recordings" --out "$DEMO_DIR/shards" --prefix demo --samples-per-shard 64 \
    --image-short-side 128

if [ ! -f "$DEMO_DIR/tokenizer.model" ]; then
    echo "== 3/5 tokenizer -> $DEMO_DIR/tokenizer.model"
    opt-shards train-tokenizer --shards "$DEMO_DIR/shards/demo-index.json" --vocab-size 128 \
        --out "$DEMO_DIR/tokenizer.model"
else
    echo "== 3/5 tokenizer: reusing $DEMO_DIR/tokenizer.model"
fi

common=(data.train_shards="$DEMO_DIR/shards/demo-index.json" data.tokenizer="$DEMO_DIR/tokenizer.model")
if [ ! -f "$DEMO_DIR/vq/vq.safetensors" ]; then
    echo "== 4/5 VQ image tokenizer (the MVM/DIR targets): $DEMO_VQ_STEPS steps -> $DEMO_DIR/vq"
    rm -rf "$DEMO_DIR/vq"
    opt-train --task vq --config tiny --set "${common[@]}" train.out_dir="$DEMO_DIR/vq" \
        train.steps="$DEMO_VQ_STEPS" train.micro_batch_size=32 train.lr=2e-3 train.warmup_steps=10 \
        train.log_every=20 data.num_workers=1
else
    echo "== 4/5 VQ image tokenizer: reusing $DEMO_DIR/vq/vq.safetensors"
fi

echo "== 5/5 pre-training OPT-tiny: $DEMO_STEPS steps, $DEMO_RANKS CPU ranks, DeepSpeed ZeRO-3 (gloo)"
rm -rf "$DEMO_DIR/train"   # the demo's own scratch run: each demo starts fresh
torchrun --standalone --nproc_per_node "$DEMO_RANKS" "$(command -v opt-train)" --config tiny --set "${common[@]}" \
    model.vq.checkpoint="$DEMO_DIR/vq/vq.safetensors" data.num_workers=1 \
    train.steps="$DEMO_STEPS" train.out_dir="$DEMO_DIR/train" train.log_every=20 train.checkpoint_every=100

echo "demo finished in $(( $(date +%s) - start )) s"
