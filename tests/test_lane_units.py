"""Unit tests of lane pieces in the Amaranth simulator: table indexing and the
accumulator read-modify-write hazard."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from egru_accel.hw.lane import _lut_index
from egru_accel.hw.params import CoreParams
from egru_accel.quantize import formats as F
from egru_accel.quantize import golden
from egru_accel.quantize.formats import NumberFormats
from egru_accel.quantize.model import QuantLayer, QuantModel, QuantReadout
from egru_accel.sim.amaranth_tb import run_core
from egru_accel.sim.compare import compare_run


@pytest.mark.parametrize("shift, lut_bits", [(14, 8), (3, 6), (0, 5), (-2, 7)])
def test_lut_index_matches_formats(shift, lut_bits):
    m = Module()
    pre = Signal(signed(24))
    idx = _lut_index(m, pre, shift, lut_bits, "t")
    rng = np.random.default_rng(shift + 10)
    values = list(rng.integers(-(1 << 23), 1 << 23, 300)) + [-(1 << 23), (1 << 23) - 1, 0, -1, 1]
    values += [v << max(shift, 0) for v in range(-(1 << (lut_bits - 1)) - 2, (1 << (lut_bits - 1)) + 2)]
    values = [int(np.clip(v, -(1 << 23), (1 << 23) - 1)) for v in values]
    got = []

    async def tb(ctx):
        for v in values:
            ctx.set(pre, v)
            await ctx.delay(1e-9)
            got.append(ctx.get(idx))

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()
    # formats.lut_index's pre_frac - lut_frac is the shift.
    assert got == [int(F.lut_index(v, shift, lut_bits, 0)) for v in values]


def test_back_to_back_updates_of_one_accumulator():
    """Every row holds one weight, all in the same column: consecutive entries update the
    same accumulator in consecutive cycles, which only the transparent read port gets right.
    Fine formats (accumulator grid = table grid) make every lost product visible."""
    from egru_accel.quantize.random_model import FINE_FORMATS
    fmt = NumberFormats(input_frac=6, **FINE_FORMATS)
    I, H = 6, 3
    W = np.zeros((I, 3 * H), dtype=np.int64)
    R = np.zeros((H, 3 * H), dtype=np.int64)
    W[:, 0] = [3, -2, 1, 2, -3, 1]             # gate z of neuron 0: one weight per input row
    R[:, 2 * H] = [2, -1, 1]                   # gate g of neuron 0: one weight per recurrent row
    acc_frac = fmt.tanh_lut_frac
    bias_x = np.zeros(3 * H, dtype=np.int64)
    bias_x[2 * H:] = (1 << acc_frac) // 4      # g ~ tanh(0.25) > 0 and theta 0: every neuron fires
    bias_x[:H] = -(1 << acc_frac)              # z ~ sigmoid(-1)
    layer = QuantLayer(W=W, R=R, w_shift=(acc_frac - 6,) * 3, r_shift=(acc_frac - fmt.state_frac,) * 3,
                       bias_x=bias_x, bias_h=np.zeros(3 * H), theta=np.zeros(H))
    model = QuantModel(formats=fmt, layers=[layer],
                       readout=QuantReadout(W=np.ones((H, 2)), shift=7, bias=np.zeros(2)))
    assert model.acc_frac(0) == acc_frac
    x = np.array([[30, 20, -25, 40, 10, -5], [12, 3, 7, -9, 33, 21], [1, 2, 3, 4, 5, 6], [9, 9, 9, 9, 9, 9]])
    trace = golden.run(model, x[:, None, :])
    record = run_core(CoreParams.from_model(model, lanes=1), x)
    assert compare_run(trace, record) == []
    assert trace.events[0][1:, 0].all(), "every neuron fires, so the recurrent rows follow each other"
