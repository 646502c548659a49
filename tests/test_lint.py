"""The generated Verilog passes Verilator's lint (warnings that remain are documented in
docs/architecture.md, section "Lint")."""

import os
import subprocess

import pytest

from egru_accel.hw.generate import generate_verilog
from egru_accel.hw.params import CoreParams
from egru_accel.quantize.random_model import random_model
from egru_accel.sim.runner import verilator_environment

# Amaranth's Verilog backend leaves operand extension implicit (WIDTH) and assigns
# defaults before partial case statements (CASEINCOMPLETE); names sub-modules with
# dots (DECLFILENAME); memory words and ports have bits a given model leaves unused
# (UNUSEDSIGNAL); and declares each register with its reset value and assigns it in a
# process (PROCASSINIT, new in Verilator 5.04x). See docs/architecture.md.
DOCUMENTED = ("WIDTH", "CASEINCOMPLETE", "DECLFILENAME", "UNUSEDSIGNAL", "PROCASSINIT")


@pytest.mark.skipif(verilator_environment() is None,
                    reason="Verilator >= 5.036 is not installed (scripts/setup.sh installs it)")
@pytest.mark.parametrize("hidden, lanes, outputs, dense, debug", [
    ([40, 24], 4, 4, False, False), ([9], 1, 1, False, True), ([12], 3, 10, True, False)])
def test_verilator_lint(tmp_path, hidden, lanes, outputs, dense, debug):
    model = random_model(inputs=6, hidden=hidden, outputs=outputs, weight_sparsity=0.8, seed=1)
    generate_verilog(CoreParams.from_model(model, lanes=lanes, dense=dense, debug=debug), str(tmp_path))
    cmd = ["verilator", "--lint-only", "-Wall"] + [f"-Wno-{w}" for w in DOCUMENTED] + ["egru_core.v"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **verilator_environment()})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "%Warning" not in result.stderr and "%Error" not in result.stderr, result.stderr[-3000:]
