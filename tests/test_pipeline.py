"""hw/pipeline.py: the timeline's alignment and the two arithmetic blocks, against Python integers."""

import numpy as np
import pytest
from amaranth.hdl import Fragment, Module, Signal, signed, unsigned

from egru_accel.hw.pipeline import Timeline, shift_add_product, split_add

from helpers import simulate


@pytest.mark.parametrize("a_bits,b_shape", [(9, signed(16)), (9, unsigned(16)), (3, signed(7)), (1, signed(5))])
def test_shift_add_product_and_split_add(a_bits, b_shape):
    m = Module()
    t = Timeline(m)
    a, b = Signal(a_bits), Signal(b_shape)
    a0, b0 = t.reg("a0", a, 0), t.reg("b0", b, 0)
    prod = shift_add_product(t, "p", a0, b0, 0)
    total = split_add(t, "s", prod, t.at(b0, t.cycle(prod)), t.cycle(prod), signed(len(prod) + 2), low_bits=4)
    out_cycle = t.cycle(total)
    assert t.cycle(prod) == max(0, (a_bits - 1).bit_length())
    rng = np.random.default_rng(a_bits)
    lo, hi = (-(1 << (b_shape.width - 1)), 1 << (b_shape.width - 1)) if b_shape.signed else (0, 1 << b_shape.width)
    pairs = [(int(rng.integers(1 << a_bits)), int(rng.integers(lo, hi))) for _ in range(200)]
    pairs += [((1 << a_bits) - 1, lo), ((1 << a_bits) - 1, hi - 1), (0, lo)]
    got = []

    async def bench(ctx):
        for k in range(len(pairs) + out_cycle + 1):
            if k < len(pairs):
                ctx.set(a, pairs[k][0])
                ctx.set(b, pairs[k][1])
            await ctx.tick()
            if k >= out_cycle:
                got.append(ctx.get(total))

    simulate(m, bench)
    # Inputs set before tick k land in cycle 0 at k; the result of pair k is readable after tick k + out_cycle.
    assert got[:len(pairs)] == [x * y + y for x, y in pairs]


def test_timeline_refuses_to_go_back():
    m = Module()
    t = Timeline(m)
    x = t.reg("x", Signal(4), 3)
    with pytest.raises(ValueError, match=r"^x is valid in cycle 3, not before; asked for 2$"):
        t.at(x, 2)
    Fragment.get(m, None)      # elaborated: an unused Module would warn when collected
