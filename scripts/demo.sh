#!/usr/bin/env bash
# The main job on the embedded default: set up, then train, prune and quantize an EGRU on
# scikit-learn's digits and report accuracy, sparsity and MACs. Output: runs/digits/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/egru-accel train --task digits --out "${1:-runs/digits}"
