#!/usr/bin/env bash
# The main job end to end, offline, on real images:
#   1. set-up (scripts/setup.sh main): .venv/ with retrainer and its dependencies, and Debian's
#      dataset-fashion-mnist package's image files in .cache/ -- nothing else is installed;
#   2. a class folder of real Fashion-MNIST images (PER_CLASS per class, default 100);
#   3. retrain with the default offline extractor (EfficientNet-Lite0) and default flags;
#   4. label-image on held-out images the model never saw.
# Everything it writes lands under $OUT (default runs/fashion_mnist/).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "Set-up: .venv/ (pip install -e .) and Fashion-MNIST in .cache/ (apt-get download, no root)" >&2
bash scripts/setup.sh main
PER_CLASS=${PER_CLASS:-100}
OUT=${OUT:-runs/fashion_mnist}

.venv/bin/python examples/fashion_mnist.py --idx-dir .cache/fashion-mnist \
    --out "$OUT/images" --per-class "$PER_CLASS" --subset train
.venv/bin/python examples/fashion_mnist.py --idx-dir .cache/fashion-mnist \
    --out "$OUT/holdout" --per-class 2 --subset t10k

.venv/bin/retrain --image_dir "$OUT/images" \
    --output_graph "$OUT/output_graph.pb" --output_labels "$OUT/output_labels.txt" \
    --bottleneck_dir "$OUT/bottlenecks" --summaries_dir "$OUT/retrain_logs" \
    --checkpoint_path "$OUT/checkpoint/retrain" --audit_file "$OUT/audit.json" \
    --metrics_file "$OUT/metrics.json" --report_html "$OUT/report.html"

echo
echo "Classifying held-out images (never seen in training):"
.venv/bin/label-image --graph "$OUT/output_graph.pb" --top_k 3 "$OUT/holdout"

echo
echo "Report (open in a browser; self-contained, works offline): $OUT/report.html"
echo "Metrics (JSON, schema in docs/reports.md): $OUT/metrics.json"
