import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# One thread per test process: two torch processes with two threads each on a 2-core
# machine spin against each other and run many times slower.
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
