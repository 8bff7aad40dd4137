#!/usr/bin/env bash
# Evaluate the demo run (make demo) on its held-out samples: retrieval (both
# protocols), matching, captioning and text-to-image, into $DEMO_DIR/eval/.
set -euo pipefail
source "$(dirname "$0")/demo_env.sh"
[ -d "$DEMO_DIR/train/checkpoints" ] || { echo "no demo run in $DEMO_DIR/train: run 'make demo' first" >&2; exit 1; }
out="$DEMO_DIR/eval"
mkdir -p "$out"
opt-export "$DEMO_DIR/train" --out "$out/export"
heldout="$DEMO_DIR/shards/heldout/demo-heldout-index.json"
opt-eval retrieval --checkpoint "$out/export" --shards "$heldout" --json "$out/retrieval.json"
opt-eval matching --checkpoint "$out/export" --shards "$heldout" --json "$out/matching.json"
opt-eval caption --checkpoint "$out/export" --shards "$heldout" --beam 3 --json "$out/caption.json"
# Prompts: the first three held-out captions (whatever data the demo ran on).
opt-eval generate --checkpoint "$out/export" --n 6 --out "$out/text_to_image.png" --prompts-from "$heldout" \
    --num-prompts 3
opt-eval report --eval-dir "$out" --run "$DEMO_DIR/train" > "$out/results.md"
echo "evaluation written to $out (summary: $out/results.md)"
