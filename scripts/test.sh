#!/usr/bin/env bash
# The test command: set up (idempotent), then run the default (fast) suite on every CPU, each test
# file on one worker (its module fixtures built once). Extra args go to pytest, e.g.
# `bash scripts/test.sh -m slow` for the slow tests, `-n 0` for one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n auto --dist loadfile "$@"
