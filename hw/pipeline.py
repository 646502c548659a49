"""A fixed-latency pipeline, described by the cycle at which each value is valid.

Stages of a fixed-latency pipeline (no stalls) are easiest to get right when every value knows
the cycle it is valid in, counted from the pipeline's input: :meth:`Timeline.reg` registers an
expression of values valid in cycle ``c`` into a value valid in ``c + 1``, and
:meth:`Timeline.at` delays any value to a later cycle with a shift register (shared, so a value
used twice at the same cycle costs one set of flip-flops). A stage whose logic grows (a
multiplier built as a tree, an add split over two cycles) moves everything after it without a
hand-kept latency table.

:func:`shift_add_product`, :func:`radix4_product` and :func:`split_add` are the arithmetic blocks
the iCE40 needs at full clock when no DSP is free: one carry chain per stage, none behind a LUT
once the rows are registered, none much longer than 24 bits. :func:`radix4_product` takes its
narrow operand as a code word from a table (:func:`radix4_encode`): half the rows of
:func:`shift_add_product`, at one LUT per bit each, so about a third fewer cells.
"""

from __future__ import annotations

import contextlib
import contextvars

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Const, Mux, Shape, Signal, Value, signed, unsigned

__all__ = ["NO_RW_COLLISIONS", "split_counter", "poisoned_collisions", "collisions_poisoned", "falling_edge_domain", "Timeline", "radix4_digits", "radix4_encode", "radix4_latency", "radix4_product", "shift_add_latency",
           "shift_add_product", "split_add"]


#: ``attrs`` of a :class:`~amaranth.lib.memory.Memory` none of whose reads needs a write to the
#: same address in the same cycle kept out (never the same address, or a read whose data is
#: then not used): yosys's ``no_rw_check``, which spares the read-first collision logic it
#: otherwise builds around an iCE40 block RAM (about 40 FF and 28 LUT per memory).
NO_RW_COLLISIONS = {"no_rw_check": 1}

_POISON = contextvars.ContextVar("egru_accel_poison_collisions", default=False)


@contextlib.contextmanager
def poisoned_collisions():
    """Within it, designs elaborated model the collisions :data:`NO_RW_COLLISIONS` leaves
    undefined as garbage (for simulation: the Amaranth simulator otherwise gives the old word,
    which would hide a design that relies on it)."""
    token = _POISON.set(True)
    try:
        yield
    finally:
        _POISON.reset(token)


def collisions_poisoned() -> bool:
    """Whether :func:`poisoned_collisions` is in effect."""
    return _POISON.get()


def falling_edge_domain(m, name: str) -> str:
    """Add to ``m`` a local, reset-less clock domain ``name`` on the falling edge of ``sync``'s
    clock, and return its name: for memory write ports driven from registers. A write port on
    the read port's own edge makes yosys build read-first collision logic around an iCE40 block
    RAM (about 40 FF and 28 LUT per memory); a write half a cycle later needs none. Use it only
    where no address is read in the cycle it is written, or where such a read does not matter."""
    domain = ClockDomain(name, clk_edge="neg", local=True, reset_less=True)
    m.domains += domain
    m.d.comb += domain.clk.eq(ClockSignal("sync"))
    return name


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


def split_counter(m, name: str, width: int, *, inc, clear=Const(0), clear_to: int = 0, low_bits: int = 16) -> Value:
    """A ``width``-bit counter of module ``m`` (``+1`` in cycles with ``inc``; ``clear_to`` in
    cycles with ``clear``, which wins) whose carry chain is at most ``low_bits`` long: the high
    part counts when the low part wraps, told by a register (the low part is all ones) rather
    than by the low part's carry. Its value is exact in every cycle."""
    low_bits = min(low_bits, width)
    ones = (1 << low_bits) - 1
    lo = Signal(low_bits, name=f"{name}_lo")
    hi = Signal(max(1, width - low_bits), name=f"{name}_hi")
    full = Signal(name=f"{name}_lo_full")          # lo == ones
    with m.If(clear):
        m.d.sync += [lo.eq(clear_to & ones), hi.eq(clear_to >> low_bits), full.eq((clear_to & ones) == ones)]
    with m.Elif(inc):
        m.d.sync += [lo.eq(lo + 1), full.eq(lo == ones - 1)]
        if width > low_bits:
            with m.If(full):
                m.d.sync += hi.eq(hi + 1)
    return Cat(lo, hi)[:width]


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


def shift_add_latency(a_bits: int, *, top_alone: bool = False, register_rows: bool = False) -> int:
    """Cycles :func:`shift_add_product` takes for an ``a_bits``-bit first operand."""
    rows = a_bits - 1 if top_alone and a_bits >= 2 else a_bits
    return (rows - 1).bit_length() + int(register_rows)


class _Part:
    """A partial sum: the value of ``sig`` times ``2**lsb``, ``sig`` in ``[lo, hi]``."""

    def __init__(self, sig, lsb, lo, hi):
        self.sig, self.lsb, self.lo, self.hi = sig, lsb, lo, hi


def _narrowest(lo: int, hi: int) -> Shape:
    return Shape.cast(range(lo, hi + 1)) if hi > lo else Shape.cast(range(lo, lo + 2))


def _tree(t: Timeline, name: str, parts: list, cycle: int):
    """Sum ``parts`` (all valid in ``cycle``, in order of their lowest bits) by levels of
    registered adds of neighbours, the odd last one carried; returns the sum and its cycle."""
    level, c = 0, cycle
    while len(parts) > 1:
        nxt = []
        for k in range(0, len(parts) - 1, 2):
            x, y = parts[k], parts[k + 1]               # x.lsb <= y.lsb
            s = y.lsb - x.lsb
            lo, hi = x.lo + (y.lo << s), x.hi + (y.hi << s)
            shape = _narrowest(lo, hi)
            value = Cat(x.sig[:s], (x.sig >> s) + y.sig)
            if shape.signed:
                value = value.as_signed()
            sig = t.reg(f"{name}_l{level}_{k // 2}", value, c + 1, shape)
            nxt.append(_Part(sig, x.lsb, lo, hi))
        if len(parts) % 2:
            p = parts[-1]
            nxt.append(_Part(t.at(p.sig, c + 1), p.lsb, p.lo, p.hi))
        parts, level, c = nxt, level + 1, c + 1
    return parts[0], c


def shift_add_product(t: Timeline, name: str, a: Signal, b: Signal, cycle: int, *,
                      top_alone: bool = False, register_rows: bool = False) -> Signal:
    """``a * b`` for an unsigned ``a`` (narrow) and a signed or unsigned ``b``, both valid in
    ``cycle``, as a tree of registered adds of the rows ``(b if a[i] else 0) << i``: each level
    halves the number of rows; the product is valid :func:`shift_add_latency` cycles later.

    Every add covers only the bits where its operands overlap, and above: the lower operand's
    bits below the other's lowest bit pass through a register, so a pair of rows of ``b`` is a
    carry chain of about ``len(b) + 1`` bits and the last level one of about
    ``len(b) + len(a) / 2``. An AND row is a LUT of its own in front of the adder (the carry
    chain needs the operand itself); ``register_rows`` registers it (the flip-flop packs into that
    LUT's cell), so that no carry chain starts behind a LUT whose inputs fan out to every row.

    ``top_alone`` says that ``a``'s top bit is set only when every other bit is clear (a value in
    ``[0, 2**(len(a) - 1)]``, as a sigmoid table's output): the top two rows are then one row,
    ``b << 1``, ``b`` or 0, one LUT per bit, and the tree has one row fewer."""
    a_v, b_v = Value.cast(a), Value.cast(b)
    if a_v.shape().signed:
        raise TypeError("shift_add_product takes an unsigned first operand")
    width = len(a_v) + len(b_v)
    result_shape = signed(width) if b_v.shape().signed else unsigned(width)
    bs = b_v.shape()
    b_lo, b_hi = (-(1 << (bs.width - 1)), (1 << (bs.width - 1)) - 1) if bs.signed else (0, (1 << bs.width) - 1)
    n = len(a_v)
    row_cycle = cycle + int(register_rows)

    def row(i, expr, lo, hi):
        shape = _narrowest(lo, hi)
        if register_rows:
            sig = t.reg(f"{name}_row{i}", expr, row_cycle, shape)
        else:
            sig = Signal(shape, name=f"{name}_row{i}")
            t.m.d.comb += sig.eq(expr)
            t.input(sig, row_cycle)
        return _Part(sig, i, lo, hi)

    merge = top_alone and n >= 2
    parts = [row(i, Mux(a_v[i], b_v, 0), min(0, b_lo), max(0, b_hi)) for i in range(n - 2 if merge else n)]
    if merge:
        parts.append(row(n - 2, Mux(a_v[n - 1], b_v << 1, Mux(a_v[n - 2], b_v, 0)),
                         min(0, 2 * b_lo), max(0, 2 * b_hi)))
    part, c = _tree(t, name, parts, row_cycle)
    out = Signal(result_shape, name=name)
    t.m.d.comb += out.eq(part.sig << part.lsb)
    t.input(out, c)
    return out


def radix4_digits(bits: int) -> int:
    """Digits of :func:`radix4_encode` for a ``bits``-bit value in ``[0, 2**(bits-1)]``."""
    return max(1, bits // 2)


_DIGIT_CODE = {0: (0, 0), 1: (0, 1), -1: (1, 1), -2: (1, 0)}       # digit -> (neg, sel)


def radix4_encode(v: int, bits: int) -> int:
    """The code word of ``v`` in ``[0, 2**(bits-1)]`` for :func:`radix4_product`:
    ``v = e * 2**(bits-1) + sum(d_k * 4**k)``, every digit ``d_k`` in ``{-2, -1, 0, 1}``; digit k
    is bits ``2k`` (sel) and ``2k + 1`` (neg) of the code, and ``e`` its top bit."""
    K, top = radix4_digits(bits), 1 << (bits - 1)
    if not 0 <= v <= top:
        raise ValueError(f"radix4_encode takes a value in [0, {top}], not {v}")
    e = int(v > (4 ** K - 1) // 3)             # the largest sum of digits
    rest, code = v - e * top, 0
    for k in range(K):
        d = (rest + 2) % 4 - 2
        rest = (rest - d) // 4
        neg, sel = _DIGIT_CODE[d]
        code |= (sel << (2 * k)) | (neg << (2 * k + 1))
    assert rest == 0, (v, bits)
    return code | (e << (2 * K))


def radix4_product(t: Timeline, name: str, code: Signal, b: Signal, cycle: int, bits: int, *,
                   high=None, low_const: int = 0, codes=None, shape=None, extra=()) -> Signal:
    """``a * b + low_const`` for ``a`` in ``[0, 2**(bits-1)]`` given as ``code``
    (:func:`radix4_encode`, from a table), ``b`` signed or unsigned, both valid in ``cycle``.

    One registered row per digit, ``d_k * b`` with the negations as ``~b`` (one LUT per bit: its
    inputs are the digit's two code bits and two bits of ``b``), and one more: the digits'
    missing ``+1`` (at bit ``2k``) and ``low_const`` in its bits below ``bits - 1``, and above
    them ``e * b``. ``high`` replaces that ``e * b`` by another term of the same weight:
    ``(expr(e), lo, hi)``, ``expr(e)`` an expression of the code's ``e`` bit, in ``[lo, hi]``
    (so ``a * b + x * 2**(bits-1)`` costs no add of its own when ``e * b + x`` is a mux).
    ``codes`` lists the code words that occur, to check that ``low_const`` and the ``+1`` bits
    never meet (``low_const`` must then be below ``2**(bits-1)``). The rows go through the same
    tree as :func:`shift_add_product`'s, with the signals ``extra`` (valid in ``cycle + 1``, the
    rows' cycle) as more rows; the result, of ``shape`` (by default the product's own, without
    ``high`` and ``extra``: the tree's partial sums are wider), is valid
    :func:`radix4_latency` ``(bits, len(extra))`` cycles later."""
    K = radix4_digits(bits)
    b_v = Value.cast(b)
    bs = b_v.shape()
    b_lo, b_hi = (-(1 << (bs.width - 1)), (1 << (bs.width - 1)) - 1) if bs.signed else (0, (1 << bs.width) - 1)
    code_v = Value.cast(code)
    if len(code_v) != 2 * K + 1:
        raise ValueError(f"a {bits}-bit value's code has {2 * K + 1} bits, not {len(code_v)}")
    negs = 0
    for word in (codes if codes is not None else [(1 << (2 * K + 1)) - 1]):
        negs |= sum(((word >> (2 * k + 1)) & 1) << (2 * k) for k in range(K))
    if low_const < 0 or low_const >> (bits - 1) or (low_const & negs):
        raise ValueError(f"low_const {low_const} meets the digits' +1 bits ({negs:#x}) or bit {bits - 1}")
    row_cycle = cycle + 1
    bx = Signal(signed(bs.width + 2), name=f"{name}_b")
    t.m.d.comb += bx.eq(b_v)
    parts = []
    lo_top, hi_top = (min(0, b_lo), max(0, b_hi)) if high is None else high[1:]
    e = code_v[2 * K]
    top_expr = Mux(e, b_v, 0) if high is None else high[0](e)
    # Below bit bits-1: digit k's +1 at bit 2k, unless low_const has that bit (then the +1 never
    # occurs there: checked above).
    low_bits = [code_v[p + 1] if p % 2 == 0 and p // 2 < K and not (low_const >> p) & 1
                else Const((low_const >> p) & 1, 1) for p in range(bits - 1)]
    corr_hi = sum(4 ** k for k in range(K))
    lo, hi = (lo_top << (bits - 1)) + low_const, (hi_top << (bits - 1)) + low_const + corr_hi
    top_shape = _narrowest(lo, hi)
    value = Cat(*low_bits, top_expr)
    parts.append(_Part(t.reg(f"{name}_top", value.as_signed() if top_shape.signed else value, row_cycle,
                             top_shape), 0, lo, hi))
    for x in extra:
        xs = Value.cast(x).shape()
        x_lo, x_hi = (-(1 << (xs.width - 1)), (1 << (xs.width - 1)) - 1) if xs.signed else (0, (1 << xs.width) - 1)
        if t.cycle(x) != row_cycle:
            raise ValueError(f"{x.name} is valid in cycle {t.cycle(x)}, not in the rows' {row_cycle}")
        parts.append(_Part(x, 0, x_lo, x_hi))
    r_lo, r_hi = min(0, b_lo, -b_hi - 1, -2 * b_hi - 1), max(0, b_hi, -b_lo - 1, -2 * b_lo - 1)
    for k in range(K):
        sel, neg = code_v[2 * k], code_v[2 * k + 1]
        # 0, b, ~b (-b - 1) or ~(b << 1) (-2b - 1); the +1 of the last two is in the top row.
        expr = Mux(neg, ~Mux(sel, bx, bx << 1), Mux(sel, bx, 0))
        parts.append(_Part(t.reg(f"{name}_row{k}", expr, row_cycle, _narrowest(r_lo, r_hi)), 2 * k, r_lo, r_hi))
    part, c = _tree(t, name, parts, row_cycle)
    if shape is None:
        top = 1 << (bits - 1)
        shape = (_narrowest(min(0, top * b_lo) + low_const, max(0, top * b_hi) + low_const)
                 if high is None and not extra else _narrowest(part.lo, part.hi))
    out = Signal(shape, name=name)
    t.m.d.comb += out.eq(part.sig)
    t.input(out, c)
    return out


def radix4_latency(bits: int, extra: int = 0) -> int:
    """Cycles :func:`radix4_product` takes (its rows, then the tree over ``digits + 1 + extra``
    rows)."""
    return 1 + (radix4_digits(bits) + extra).bit_length()
