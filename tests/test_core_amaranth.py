"""The core in the Amaranth simulator against the golden model, bit for bit."""

import numpy as np
import pytest

from egru_accel.hw.params import CoreParams
from egru_accel.quantize import golden
from egru_accel.quantize.formats import NumberFormats
from egru_accel.quantize.qat import export
from egru_accel.sim.amaranth_tb import run_core
from egru_accel.sim.compare import compare_run
from test_golden import random_net


def check(model, lanes, x, *, dense=False, stall=0.0, seed=0):
    params = CoreParams.from_model(model, lanes=lanes, dense=dense)
    trace = golden.run(model, x[:, None, :])
    record = run_core(params, x, stall_probability=stall, seed=seed)
    mismatches = compare_run(trace, record)
    assert not mismatches, "\n".join(str(m) for m in mismatches[:10])
    return trace, record


@pytest.mark.parametrize("seed, lanes, stall", [(0, 1, 0.0), (1, 2, 0.3), (2, 3, 0.0), (3, 4, 0.3)])
def test_random_models(seed, lanes, stall):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(1, 3))
    hidden = [int(rng.integers(lanes, 9)) for _ in range(L)]
    inputs, outputs = int(rng.integers(1, 6)), int(rng.integers(1, 4))
    net = random_net(rng, inputs=inputs, hidden=hidden, outputs=outputs, sparsity=float(rng.choice([0.0, 0.5, 0.9])))
    model = export(net, NumberFormats())
    x = golden.quantize_input(model, rng.normal(0, 1, (5, 1, inputs)) * (rng.random((5, 1, inputs)) < 0.6))[:, 0]
    trace, record = check(model, lanes, x, stall=stall, seed=seed)
    assert sum(int(e.sum()) for e in trace.events) > 0, "the fixture should fire"


def test_dense_baseline_is_bit_exact_and_slower():
    rng = np.random.default_rng(9)
    model = export(random_net(rng, inputs=4, hidden=[6], outputs=2, sparsity=0.8), NumberFormats())
    x = golden.quantize_input(model, rng.normal(0, 1, (4, 1, 4)) * (rng.random((4, 1, 4)) < 0.5))[:, 0]
    _, sparse = check(model, 2, x)
    _, dense = check(model, 2, x, dense=True)
    assert sum(dense.step_cycles) > sum(sparse.step_cycles)


def tie_model(model, x):
    """Thresholds equal to each neuron's step-0 candidate (which does not depend on theta):
    a strict test must not fire there, a >= test would."""
    trace = golden.run(model, x[:, None, :])
    for l, layer in enumerate(model.layers):
        cand = trace.candidate[l][0, 0]
        layer.theta = np.where(cand >= 0, cand, layer.theta)
    model.validate()
    return model


@pytest.mark.parametrize("seed", [0, 1])
def test_threshold_ties_and_fine_rounding(seed):
    from test_golden import random_formats
    rng = np.random.default_rng(100 + seed)
    fmt = random_formats(rng, fine_tables=True)
    net = random_net(rng, inputs=3, hidden=[7, 5], outputs=2, sparsity=0.3)
    model = export(net, fmt)
    x = golden.quantize_input(model, rng.normal(0, 1.5, (6, 1, 3)))[:, 0]
    model = tie_model(model, x)
    trace, _ = check(model, 2, x, stall=0.2, seed=seed)
    ties = sum(int((trace.candidate[l][0, 0] == model.layers[l].theta).sum()) for l in range(2))
    assert ties >= 3


@pytest.mark.parametrize("mode, fine, lanes, sparsity, hidden", [
    ("mixed", True, 2, 0.5, [7, 5]),
    ("fire", True, 3, 0.0, [5]),
    ("unreachable", False, 2, 0.9, [6]),
    ("zero", False, 4, 0.99, [9, 4]),
])
def test_random_model_corners(mode, fine, lanes, sparsity, hidden):
    from egru_accel.quantize.random_model import random_inputs, random_model
    model = random_model(inputs=5, hidden=hidden, outputs=3, weight_sparsity=sparsity, lanes=None,
                         seed=7, threshold_mode=mode, fine=fine)
    x = random_inputs(model, steps=8, seed=3)[0]
    trace, _ = check(model, lanes, x, stall=0.25, seed=5)
    if mode == "unreachable":
        assert not any(e.any() for e in trace.events)
    if mode == "fire":
        assert trace.events[0][1:].mean() > 0.8


def test_dense_cycles_do_not_depend_on_data():
    """The dense baseline does every MAC at every step (first step included), whatever the inputs."""
    from egru_accel.quantize.random_model import random_inputs, random_model
    model = random_model(inputs=4, hidden=[6, 5], outputs=3, weight_sparsity=0.7, seed=2)
    params = CoreParams.from_model(model, lanes=2, dense=True)
    runs = []
    for seed in (0, 1):
        x = random_inputs(model, steps=4, seed=seed)[0]
        trace = golden.run(model, x[:, None, :])
        rec = run_core(params, x)
        assert not compare_run(trace, rec)
        runs.append(rec.step_cycles)
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 1, "every step, the first included, costs the same"


def test_run_time_loading_through_cfg():
    """A core generated for model A computes model B after B's images are written through cfg."""
    from egru_accel.quantize.random_model import random_inputs, random_model
    from egru_accel.sim.amaranth_tb import image_writes
    from test_driver import compatible_pair
    a, params_a, b, params_b = compatible_pair()
    x = random_inputs(b, steps=5, seed=4)[0]
    trace_b = golden.run(b, x[:, None, :])
    assert not np.array_equal(trace_b.logits, golden.run(a, x[:, None, :]).logits)
    record = run_core(params_a, x, writes=image_writes(params_b))
    assert compare_run(trace_b, record) == []
