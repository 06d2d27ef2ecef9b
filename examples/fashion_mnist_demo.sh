#!/usr/bin/env bash
# The main job end to end, offline, on real images: set up, build a Fashion-MNIST image folder
# (from Debian's dataset-fashion-mnist), retrain the default EfficientNet-Lite0 extractor's new head,
# then classify held-out images with label-image. Everything lands under runs/fashion_mnist/.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
PER_CLASS=${PER_CLASS:-100}
OUT=runs/fashion_mnist

.venv/bin/python examples/fashion_mnist.py --idx-dir .cache/fashion-mnist \
    --out "$OUT/images" --per-class "$PER_CLASS" --subset train
.venv/bin/python examples/fashion_mnist.py --idx-dir .cache/fashion-mnist \
    --out "$OUT/holdout" --per-class 2 --subset t10k

.venv/bin/retrain --image_dir "$OUT/images" \
    --output_graph "$OUT/output_graph.pb" --output_labels "$OUT/output_labels.txt" \
    --bottleneck_dir "$OUT/bottlenecks" --summaries_dir "$OUT/retrain_logs" \
    --checkpoint_path "$OUT/checkpoint/retrain" --audit_file "$OUT/audit.json" \
    --how_many_training_steps 4000

echo
echo "Classifying held-out images (never seen in training):"
.venv/bin/label-image --graph "$OUT/output_graph.pb" --labels "$OUT/output_labels.txt" \
    --top_k 3 "$OUT/holdout"
