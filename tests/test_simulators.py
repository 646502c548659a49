"""Icarus Verilog and Verilator run the same cocotb testbench on the same Verilog: both bit-exact
with the golden model, and with identical cycle counts, step by step."""

import numpy as np
import pytest

from egru_accel.hw.params import CoreParams
from egru_accel.quantize import golden
from egru_accel.quantize.random_model import random_inputs, random_model
from egru_accel.sim.cocotb_core import run_sequences
from egru_accel.sim.compare import compare_run
from egru_accel.sim.compare_simulators import RANDOM_MODELS
from helpers import needs_both_simulators

#: Two of the benchmark's five models run here (one layer at 1 lane, a balanced 8-lane core);
#: ``python -m egru_accel.sim.compare_simulators --random`` runs all five (docs/simulators.md).
MODELS = [RANDOM_MODELS[0], RANDOM_MODELS[3]]


@needs_both_simulators
@pytest.mark.parametrize("spec", MODELS, ids=[f"model{k}" for k in range(len(MODELS))])
def test_icarus_and_verilator_agree(tmp_path, spec):
    spec = dict(spec)
    dense = spec.pop("dense", False)
    lanes = spec["lanes"]
    model = random_model(**spec)
    params = CoreParams.from_model(model, lanes=lanes, dense=dense)
    x = np.stack([random_inputs(model, steps=12, seed=s)[0] for s in range(3)])     # [N, T, I]
    runs = {}
    for simulator in ("icarus", "verilator"):
        stats = {}
        runs[simulator] = run_sequences(params, x, build_dir=tmp_path, stall_probability=0.3, seed=5,
                                        simulator=simulator, stats=stats, timeout_s=300)
        assert stats["simulator"] == simulator and stats["cycles"] > 0
    fired = 0
    for n in range(len(x)):
        trace = golden.run(model, x[n][:, None, :])
        fired += sum(int(e.sum()) for e in trace.events)
        for simulator, records in runs.items():
            mismatches = compare_run(trace, records[n])
            assert not mismatches, f"{simulator}, sequence {n}: " + "; ".join(map(str, mismatches[:5]))
        a, b = runs["icarus"][n], runs["verilator"][n]
        assert a.step_cycles == b.step_cycles, f"sequence {n}: cycles differ"
        assert a.outputs == b.outputs and a.updates == b.updates
    assert fired > 0 or spec["threshold_mode"] == "zero" or dense
