#!/usr/bin/env bash
# The test command: set up (idempotent), then run the default (fast) suite. Extra args go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
