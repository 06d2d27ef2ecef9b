#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: a virtual environment with retrainer and its test extras,
# the real test/demo data (Debian's dataset-fashion-mnist) under .cache/, and Debian's chromium
# for the (slow) test that opens the HTML report in a real browser.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

bash scripts/fetch_fashion_mnist.sh .cache/fashion-mnist

# Only where it is missing and apt-get can install it (root); elsewhere that one test skips, saying why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
    echo "Installing chromium (headless browser for the HTML report test)" >&2
    apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
        || echo "Warning: could not install chromium; the browser test will be skipped" >&2
fi
