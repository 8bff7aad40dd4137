#!/usr/bin/env bash
# Evaluate the demo run (make demo) on the held-out demo samples:
# retrieval, captioning and text-to-image, into runs/demo/eval/.
set -euo pipefail
source "$(dirname "$0")/demo_env.sh"
[ -d "$DEMO_DIR/train/checkpoints" ] || { echo "no demo run in $DEMO_DIR/train: run 'make demo' first" >&2; exit 1; }
out="$DEMO_DIR/eval"
mkdir -p "$out"
opt-export "$DEMO_DIR/train" --out "$out/export"
heldout="$DEMO_DIR/shards/demo-heldout-index.json"
opt-eval retrieval --checkpoint "$out/export" --shards "$heldout" --rerank 16 --json "$out/retrieval.json"
opt-eval caption --checkpoint "$out/export" --shards "$heldout" --beam 3 --json "$out/caption.json"
opt-eval generate --checkpoint "$out/export" --n 6 --out "$out/text_to_image.png" \
    --prompt "in this image i can see a large red circle on the left of a gray background." \
    --prompt "in this image i can see a small blue square on the right of a white background." \
    --prompt "in this image i can see a large yellow triangle on the top of a black background."
opt-eval report --eval-dir "$out" --run "$DEMO_DIR/train" > "$out/results.md"
echo "evaluation written to $out (summary: $out/results.md)"
