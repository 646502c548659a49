"""hw/pipeline.py: the timeline's alignment and the two arithmetic blocks, against Python integers."""

import numpy as np
import pytest
from amaranth.hdl import Array, Fragment, Module, Mux, Signal, signed, unsigned
from amaranth.sim import Simulator

from egru_accel.hw.pipeline import (Timeline, split_counter, radix4_digits, radix4_encode, radix4_latency, radix4_product,
                                    shift_add_latency, shift_add_product, split_add)

from helpers import simulate


@pytest.mark.parametrize("top_alone,register_rows", [(False, False), (True, False), (True, True), (False, True)])
@pytest.mark.parametrize("a_bits,b_shape", [(9, signed(16)), (9, unsigned(16)), (9, signed(18)), (3, signed(7)),
                                            (2, unsigned(5)), (1, signed(5))])
def test_shift_add_product_and_split_add(a_bits, b_shape, top_alone, register_rows):
    m = Module()
    t = Timeline(m)
    a, b = Signal(a_bits), Signal(b_shape)
    a0, b0 = t.reg("a0", a, 0), t.reg("b0", b, 0)
    prod = shift_add_product(t, "p", a0, b0, 0, top_alone=top_alone, register_rows=register_rows)
    total = split_add(t, "s", prod, t.at(b0, t.cycle(prod)), t.cycle(prod), signed(len(prod) + 2), low_bits=4)
    out_cycle = t.cycle(total)
    rows = a_bits - 1 if top_alone and a_bits > 1 else a_bits
    levels = max(0, (rows - 1).bit_length())
    assert t.cycle(prod) == levels + register_rows == shift_add_latency(a_bits, top_alone=top_alone,
                                                                         register_rows=register_rows)
    assert shift_add_latency(9, top_alone=True) == 3 and shift_add_latency(9) == 4
    rng = np.random.default_rng(a_bits)
    lo, hi = (-(1 << (b_shape.width - 1)), 1 << (b_shape.width - 1)) if b_shape.signed else (0, 1 << b_shape.width)
    # With top_alone, a takes the values [0, 2**(a_bits-1)] only (a sigmoid output: its top bit alone).
    a_top = (1 << (a_bits - 1)) + 1 if top_alone else 1 << a_bits
    pairs = [(int(rng.integers(a_top)), int(rng.integers(lo, hi))) for _ in range(300)]
    pairs += [(a_top - 1, lo), (a_top - 1, hi - 1), (0, lo), (a_top - 2, lo), (a_top - 2, hi - 1), (1, lo)]
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


@pytest.mark.parametrize("bits", [9, 8, 11, 3, 2])
def test_radix4_encode_covers_every_value(bits):
    K = radix4_digits(bits)
    for v in range(1 << (bits - 1) | 1):
        code = radix4_encode(v, bits)
        digits = [{(0, 0): 0, (0, 1): 1, (1, 1): -1, (1, 0): -2}[((code >> (2 * k + 1)) & 1, (code >> (2 * k)) & 1)]
                  for k in range(K)]
        assert (code >> (2 * K)) * (1 << (bits - 1)) + sum(d * 4 ** k for k, d in enumerate(digits)) == v
        assert code < 1 << (2 * K + 1)
    with pytest.raises(ValueError, match=r"^radix4_encode takes a value in \[0, 256\], not 257$"):
        radix4_encode(257, 9)


@pytest.mark.parametrize("bits,b_shape,with_high", [(9, unsigned(16), False), (9, signed(16), False),
                                                    (9, signed(17), True), (8, signed(17), True),
                                                    (3, signed(6), True), (2, unsigned(4), False)])
def test_radix4_product(bits, b_shape, with_high):
    """a * b (+ x * 2**(bits-1) + 2**(bits-2) with the top term a mux, as the update unit's blend)."""
    m = Module()
    t = Timeline(m)
    a, b, x = Signal(range((1 << (bits - 1)) + 1)), Signal(b_shape), Signal(signed(8))
    codes = [radix4_encode(v, bits) for v in range((1 << (bits - 1)) + 1)]
    code = Signal(2 * radix4_digits(bits) + 1)
    m.d.comb += code.eq(Array(codes)[a])
    c0, b0, x0 = t.reg("c0", code, 0), t.reg("b0", b, 0), t.reg("x0", x, 0)
    lo, hi = (-(1 << (b_shape.width - 1)), 1 << (b_shape.width - 1)) if b_shape.signed else (0, 1 << b_shape.width)
    if with_high:
        # e * b + x, as a mux: with b = c - x, e ? c : x, here c = b + x computed beforehand.
        bx_sum = t.reg("bx", b + x, 0, signed(max(b_shape.width, 8) + 1))
        half = 1 << (bits - 2) if bits > 2 else 0
        high = (lambda e: Mux(e, bx_sum, x0), min(lo - 128, -128), hi + 127)
        prod = radix4_product(t, "p", c0, b0, 0, bits, high=high, low_const=half if bits % 2 else 0, codes=codes)
    else:
        prod = radix4_product(t, "p", c0, b0, 0, bits, codes=codes)
    assert t.cycle(prod) == radix4_latency(bits)
    rng = np.random.default_rng(bits)
    top = 1 << (bits - 1)
    trips = [(int(rng.integers(top + 1)), int(rng.integers(lo, hi)), int(rng.integers(-128, 128))) for _ in range(300)]
    trips += [(v, y, -128) for v in (0, 1, top - 1, top) for y in (lo, hi - 1)]
    trips += [(v, int(rng.integers(lo, hi)), 127) for v in range(top + 1)]
    got = []

    async def bench(ctx):
        for k in range(len(trips) + t.cycle(prod) + 1):
            if k < len(trips):
                ctx.set(a, trips[k][0])
                ctx.set(b, trips[k][1])
                ctx.set(x, trips[k][2])
            await ctx.tick()
            if k >= t.cycle(prod):
                got.append(ctx.get(prod))

    simulate(m, bench)
    if with_high:
        want = [v * y + (x_ << (bits - 1)) + (half if bits % 2 else 0) for v, y, x_ in trips]
    else:
        want = [v * y for v, y, _ in trips]
    assert got[:len(trips)] == want


def test_radix4_product_refuses_a_constant_on_the_digits_bits():
    m = Module()
    t = Timeline(m)
    code, b = t.reg("c", Signal(9), 0), t.reg("b", Signal(signed(8)), 0)
    with pytest.raises(ValueError, match=r"^low_const 4 meets the digits' \+1 bits \(0x55\) or bit 8$"):
        radix4_product(t, "p", code, b, 0, 9, low_const=4)
    Fragment.get(m, None)


@pytest.mark.parametrize("clear_to", [0, 5, 7])
def test_a_split_counter_counts_like_a_plain_one(clear_to):
    # 8 bits with a 3-bit carry chain: the high part counts on the low part's registered wrap.
    m = Module()
    inc, clear = Signal(), Signal()
    value = Signal(8)
    m.d.comb += value.eq(split_counter(m, "n", 8, inc=inc, clear=clear, clear_to=clear_to, low_bits=3))
    rng = np.random.default_rng(clear_to)
    pattern = [(bool(rng.random() < 0.7), bool(rng.random() < 0.02)) for _ in range(700)]
    seen = []

    async def bench(ctx):
        for i, c in pattern:
            ctx.set(inc, i)
            ctx.set(clear, c)
            await ctx.tick()
            seen.append(ctx.get(value))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    expected, n = [], 0
    for i, c in pattern:
        n = clear_to if c else (n + 1) % 256 if i else n
        expected.append(n)
    assert seen == expected and max(seen) > 8      # it wrapped its low part
