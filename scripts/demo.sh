#!/usr/bin/env bash
# The main job on the embedded default: set up, then `egru-accel demo`: train, prune and quantize
# an EGRU on scikit-learn's digits, pack it, generate the Verilog and the model image, check a
# subset of the test split in cocotb against the golden model, build the iCEBreaker bitstream,
# and print one summary. Usage: scripts/demo.sh [DIR [demo options]]; output: DIR (runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${1:-runs/demo}"
[ $# -gt 0 ] && shift
exec .venv/bin/egru-accel demo --out "$out" "$@"
