"""A capacity build's Verilog under cocotb on Icarus Verilog and Verilator: one core, built for
capacities, loaded through its ``load`` port with three models in turn (different seeds, sizes,
sparsities and accumulator grids; one with a single layer), then the first again, under random
input idles and output back-pressure: every output and neuron update equal to each model's golden
model, and the two simulators identical."""

import numpy as np
import pytest

from egru_accel.hw.shared_core import SharedCoreConfig
from egru_accel.quantize.capacity import place
from egru_accel.quantize.random_model import random_inputs
from egru_accel.sim.shared_core_cocotb import Job, run_shared_core_jobs
from egru_accel.sim.shared_core_tb import compare_with_golden

from helpers import capacity_for, needs_both_simulators, simulator_params, three_models

SIMULATORS = simulator_params()
ORDER = [0, 1, 2, 0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = {}
    build = tmp_path_factory.mktemp("capacity")

    def get(simulator):
        if simulator not in cache:
            models = three_models()
            cap = capacity_for(models)
            images = [place(m, cap) for m in models]
            xs = [np.asarray(random_inputs(m, steps=3, sequences=2, seed=k)) for k, m in enumerate(models)]
            jobs = [Job(xs[0], 0.3, seed=0)] + [Job(xs[k], 0.3, seed=n, load=images[k])
                                                for n, k in enumerate(ORDER[1:], 1)]
            recs = run_shared_core_jobs(images[0], jobs, config=SharedCoreConfig(lane="dsp_model", banks=2),
                                        build_dir=build, simulator=simulator, timeout_s=300)
            cache[simulator] = models, images, xs, recs
        return cache[simulator]
    return get


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_one_capacity_build_runs_three_models_in_turn(runs, simulator):
    models, images, xs, recs = runs(simulator)
    for k, rec in zip(ORDER, recs):
        assert compare_with_golden(models[k], images[k], xs[k], rec) == []


@needs_both_simulators
def test_both_simulators_agree(runs):
    a, b = runs("icarus")[3], runs("verilator")[3]
    for ra, rb in zip(a, b):
        assert ra.step_cycles == rb.step_cycles
        assert all(np.array_equal(x, y) for x, y in zip(ra.outputs, rb.outputs))
        assert ra.updates == rb.updates
