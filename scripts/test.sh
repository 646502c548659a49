#!/usr/bin/env bash
# Set up, then run the test suite. Extra arguments go to pytest (for example `-n 0` to run in one process).
# Test files run in parallel, one worker per core, a whole file per worker: the files that build one
# module-scoped design (a core, a system) build it once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n auto --dist loadfile "$@"
