"""The core in the Amaranth simulator against the golden model, bit for bit."""

import numpy as np
import pytest

from hw.params import CoreParams
from quantize import golden
from quantize.formats import NumberFormats
from quantize.qat import export
from sim.amaranth_tb import run_core
from sim.compare import compare_run
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
