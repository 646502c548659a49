"""The core's Verilog in Icarus Verilog (cocotb) against the golden model, bit for bit, and
its cycle counts against the Amaranth simulator's."""

import shutil

import numpy as np
import pytest

from egru_accel.hw.params import CoreParams
from egru_accel.quantize import golden
from egru_accel.quantize.formats import NumberFormats
from egru_accel.quantize.qat import export
from egru_accel.sim.amaranth_tb import run_core
from egru_accel.sim.cocotb_core import run_sequences
from egru_accel.sim.compare import compare_run
from helpers import needs_simulator
from test_golden import random_net



def fixture(seed, *, inputs, hidden, outputs, sparsity, sequences=3, steps=5):
    rng = np.random.default_rng(seed)
    net = random_net(rng, inputs=inputs, hidden=hidden, outputs=outputs, sparsity=sparsity)
    model = export(net, NumberFormats())
    shape = (steps, sequences, inputs)
    x = golden.quantize_input(model, rng.normal(0, 1, shape) * (rng.random(shape) < 0.6))
    return model, np.ascontiguousarray(x.transpose(1, 0, 2))      # [N, T, I]


def check_bit_exact(model, seqs, records):
    assert len(records) == len(seqs)
    events = 0
    for n, (seq, record) in enumerate(zip(seqs, records)):
        trace = golden.run(model, seq[:, None, :])
        mismatches = compare_run(trace, record)
        assert not mismatches, f"sequence {n}:\n" + "\n".join(str(m) for m in mismatches[:10])
        assert len(record.step_cycles) == len(seq) and all(c > 0 for c in record.step_cycles)
        events += sum(int(e.sum()) for e in trace.events)
    assert events > 0, "the fixture should fire"


@needs_simulator
@pytest.mark.parametrize("seed, lanes, hidden, sparsity, dense", [
    (0, 1, [6], 0.5, False),
    (1, 3, [7, 5], 0.9, False),
    (2, 4, [9], 0.0, True),
])
def test_random_models_bit_exact_with_stalls_and_cycles_match_amaranth(tmp_path, seed, lanes, hidden, sparsity,
                                                                       dense):
    model, seqs = fixture(seed, inputs=4, hidden=hidden, outputs=3, sparsity=sparsity)
    params = CoreParams.from_model(model, lanes=lanes, dense=dense)
    stalled = run_sequences(params, seqs, build_dir=tmp_path, stall_probability=0.3, seed=seed, timeout_s=120)
    check_bit_exact(model, seqs, stalled)
    verilog_written = (tmp_path / "egru_core.v").stat().st_mtime_ns

    # Without stalls the cycle counts are the hardware's alone: the same in both simulators,
    # and the start pulse between sequences leaves nothing behind that changes them.
    free = run_sequences(params, seqs, build_dir=tmp_path, timeout_s=120)
    check_bit_exact(model, seqs, free)
    for n, (seq, record) in enumerate(zip(seqs, free)):
        reference = run_core(params, seq)
        assert record.step_cycles == reference.step_cycles, f"sequence {n}"
        assert record.outputs == reference.outputs
        assert sorted(record.updates) == sorted(reference.updates)
    # Input idles and output back-pressure can only make a step longer.
    for s, f in zip(stalled, free):
        assert all(a >= b for a, b in zip(s.step_cycles, f.step_cycles))
    assert (tmp_path / "egru_core.v").stat().st_mtime_ns == verilog_written, "the Verilog should be reused"


def test_run_sequences_rejects_bad_inputs(tmp_path):
    model, seqs = fixture(0, inputs=4, hidden=[6], outputs=3, sparsity=0.5)
    params = CoreParams.from_model(model, lanes=2)
    with pytest.raises(ValueError, match=r"\[N, T, 4\]"):
        run_sequences(params, seqs[0], build_dir=tmp_path)
    with pytest.raises(ValueError, match="integers"):
        run_sequences(params, seqs.astype(float), build_dir=tmp_path)
    with pytest.raises(ValueError, match="8-bit signed"):
        run_sequences(params, seqs * 0 + 128, build_dir=tmp_path)
    with pytest.raises(ValueError, match="stall_probability"):
        run_sequences(params, seqs, build_dir=tmp_path, stall_probability=1.0)
