import os

import numpy as np
import pytest
import torch

# One thread per test process: two torch processes with two threads each on a 2-core
# machine spin against each other and run many times slower.
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--simulator", choices=("icarus", "verilator"), default=None,
                     help="simulator of every cocotb test (default: $EGRU_SIMULATOR, else the fastest installed)")


def pytest_configure(config):
    # Every cocotb run without an explicit simulator takes sim.runner.default_simulator(),
    # which reads this variable: one choice for the whole suite.
    chosen = config.getoption("--simulator")
    if chosen:
        os.environ["EGRU_SIMULATOR"] = chosen


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _poisoned_collisions():
    """Every design a test elaborates models the read-write collisions its ``no_rw_check``
    memories leave undefined as garbage (hw.pipeline.poisoned_collisions): a design that read
    such a word would fail its test instead of passing on the simulator's old-data answer."""
    from egru_accel.hw.pipeline import poisoned_collisions
    with poisoned_collisions():
        yield
