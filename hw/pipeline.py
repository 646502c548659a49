"""A fixed-latency pipeline, described by the cycle at which each value is valid.

Stages of a fixed-latency pipeline (no stalls) are easiest to get right when every value knows
the cycle it is valid in, counted from the pipeline's input: :meth:`Timeline.reg` registers an
expression of values valid in cycle ``c`` into a value valid in ``c + 1``, and
:meth:`Timeline.at` delays any value to a later cycle with a shift register (shared, so a value
used twice at the same cycle costs one set of flip-flops). A stage whose logic grows (a
multiplier built as a tree, an add split over two cycles) moves everything after it without a
hand-kept latency table.

:func:`shift_add_product` and :func:`split_add` are the two arithmetic blocks the iCE40 needs at
full clock when no DSP is free: one carry chain per stage, at most about 24 bits long.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Mux, Shape, Signal, Value, signed, unsigned

__all__ = ["Timeline", "shift_add_product", "split_add"]


class Timeline:
    """Values of module ``m``'s pipeline, each valid in one cycle (0: the registered inputs)."""

    def __init__(self, m):
        self.m = m
        self._when: dict[int, int] = {}
        self._delayed: dict[tuple[int, int], Signal] = {}

    def input(self, signal: Signal, cycle: int = 0) -> Signal:
        self._when[id(signal)] = cycle
        return signal

    def cycle(self, signal) -> int:
        return self._when[id(signal)]

    def reg(self, name: str, value, cycle: int, shape=None) -> Signal:
        """A register loaded with ``value`` (valid in ``cycle - 1``), valid in ``cycle``."""
        value = Value.cast(value)
        sig = Signal(shape if shape is not None else value.shape(), name=name)
        self.m.d.sync += sig.eq(value)
        self._when[id(sig)] = cycle
        return sig

    def at(self, signal: Signal, cycle: int) -> Signal:
        """``signal`` delayed to ``cycle`` (``signal`` itself when it is valid then)."""
        have = self._when[id(signal)]
        if cycle < have:
            raise ValueError(f"{signal.name} is valid in cycle {have}, not before; asked for {cycle}")
        value = signal
        for c in range(have + 1, cycle + 1):
            key = (id(signal), c)
            if key not in self._delayed:
                reg = Signal.like(signal, name=f"{signal.name}_c{c}")
                self.m.d.sync += reg.eq(value)
                self._when[id(reg)] = c
                self._delayed[key] = reg
            value = self._delayed[key]
        return value


def split_add(t: Timeline, name: str, a: Signal, b, cycle: int, shape, *, low_bits: int = 20) -> Signal:
    """``a + b`` (both valid in ``cycle``) over two registered stages: the low ``low_bits`` and
    their carry in ``cycle + 1``, the rest in ``cycle + 2``; the result, of ``shape``, is valid in
    ``cycle + 2``. Neither stage's carry chain is longer than ``max(low_bits, width - low_bits)``."""
    shape = Shape.cast(shape)
    width = shape.width
    a_v = Value.cast(a)
    b_v = Value.cast(b)
    a_ext = a_v.as_signed() if a_v.shape().signed else a_v
    b_ext = b_v.as_signed() if b_v.shape().signed else b_v
    # Extend both to the result's width first, so the high halves carry the signs.
    a_w = Signal(signed(width) if shape.signed else unsigned(width), name=f"{name}_a")
    b_w = Signal(signed(width) if shape.signed else unsigned(width), name=f"{name}_b")
    t.m.d.comb += [a_w.eq(a_ext), b_w.eq(b_ext)]
    low = t.reg(f"{name}_lo", a_w[:low_bits] + b_w[:low_bits], cycle + 1, unsigned(low_bits + 1))
    a_hi = t.reg(f"{name}_ahi", a_w[low_bits:], cycle + 1)
    b_hi = t.reg(f"{name}_bhi", b_w[low_bits:], cycle + 1)
    high = t.reg(f"{name}_hi", a_hi + b_hi + low[low_bits], cycle + 2, unsigned(width - low_bits))
    low_q = t.at(low, cycle + 2)
    out = Signal(shape, name=name)
    t.m.d.comb += out.eq(Cat(low_q[:low_bits], high))
    t._when[id(out)] = cycle + 2
    return out


def shift_add_product(t: Timeline, name: str, a: Signal, b: Signal, cycle: int) -> Signal:
    """``a * b`` for an unsigned ``a`` (narrow) and a signed or unsigned ``b``, both valid in
    ``cycle``, as a tree of registered adds of the rows ``(b if a[i] else 0) << i``: each level
    halves the number of rows; the product is valid in ``cycle + ceil(log2(len(a)))``."""
    a_v, b_v = Value.cast(a), Value.cast(b)
    if a_v.shape().signed:
        raise TypeError("shift_add_product takes an unsigned first operand")
    width = len(a_v) + len(b_v)
    result_shape = signed(width) if b_v.shape().signed else unsigned(width)
    rows = []
    for i in range(len(a_v)):
        row = Signal(result_shape, name=f"{name}_row{i}")
        # An AND row: folded by synthesis into the adder's LUT in the first level.
        t.m.d.comb += row.eq(Mux(a_v[i], b_v, 0) << i)
        t._when[id(row)] = cycle
        rows.append(row)
    level, c = 0, cycle
    while len(rows) > 1:
        nxt = []
        for k in range(0, len(rows) - 1, 2):
            nxt.append(t.reg(f"{name}_l{level}_{k // 2}", rows[k] + rows[k + 1], c + 1, result_shape))
        if len(rows) % 2:
            nxt.append(t.at(rows[-1], c + 1))
        rows, level, c = nxt, level + 1, c + 1
    return rows[0]
