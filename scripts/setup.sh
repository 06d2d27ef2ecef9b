#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: a virtual environment with retrainer and its test extras,
# and the real test/demo data (Debian's dataset-fashion-mnist) under .cache/.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

bash scripts/fetch_fashion_mnist.sh .cache/fashion-mnist
