"""One lane of the v2 lane array: ``acc[addr] += (weight << align) * value``, one entry per cycle.

Built for the clock the silicon allows (docs/core-v2.md): the inputs, the accumulator
memory's read data and the product each land in a register, and the multiplier sits between
two registers so that synthesis puts it in a DSP with its input and output registers (iCE40
SB_MAC16, ECP5 MULT18X18D). The lane never stalls: a read-modify-write on a target that one of
the two entries before it is still writing takes the newer sum from a forwarding register,
through one 3:1 mux in front of the adder.

Pipeline (stage prefixes in signal names)::

    a0  registered entry (valid, addr, weight << align, value); the accumulator read is issued
    a1  product (DSP pipeline register); the memory's read data; hazard compares
    a2  product (DSP output register); read data registered; sum = acc + product; write

The sweep port reads a word (``sweep_rd_*``, data two cycles later on ``sweep_rd_data``) and
writes a word (``sweep_wr_*``, for example the next step's initial value). The caller keeps the
sweep off the cycles that carry entries (entries at a0 for reads, at a2 for writes); a
sweep write counts as a write for forwarding, so entries may follow it at once.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .construct import checked_construction

__all__ = ["MacLane", "check_lane_arguments"]


def _positive(name, value, low=1):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, not {value}")
    return value


def check_lane_arguments(*, depth, weight_bits, max_align, operand_bits: int, operand: str):
    """The checks every lane shares: ``depth`` accumulators (at least 2), ``weight_bits`` and the
    alignment, with ``weight << align`` fitting ``operand`` (``operand_bits`` wide)."""
    _positive("depth", depth, 2)
    _positive("weight_bits", weight_bits, 2)
    _positive("max_align", max_align, 0)
    if weight_bits + max_align > operand_bits:
        raise ValueError(f"weight_bits + max_align must fit {operand}, not {weight_bits} + {max_align}")


class MacLane(wiring.Component):
    """``depth`` accumulators of ``acc_bits`` (signed), fed by entries of a ``weight_bits``
    weight, a ``value_bits`` value and an alignment shift of at most ``max_align`` bits
    (``weight << align`` must fit 18 bits: one DSP operand).

    Latency: an entry presented on ``i_*`` in cycle t is in the memory from cycle t + 4 on
    (a0 at t + 1, write at the end of t + 3). The sum wraps at ``acc_bits`` (the quantizer
    guarantees that no accumulator bound exceeds it).
    """

    LATENCY = 4     # cycles from an entry on i_* to its sum being readable through sweep_rd

    def __init__(self, *, depth: int, acc_bits: int = 32, weight_bits: int = 8, value_bits: int = 16,
                 max_align: int = 8):
        with checked_construction(self):
            check_lane_arguments(depth=depth, weight_bits=weight_bits, max_align=max_align,
                                 operand_bits=18, operand="one 18-bit multiplier operand")
            self.acc_bits = _positive("acc_bits", acc_bits, 2)
            self.value_bits = _positive("value_bits", value_bits, 2)
            self.depth, self.weight_bits, self.max_align = depth, weight_bits, max_align
        addr = unsigned(max(1, (depth - 1).bit_length()))
        super().__init__({
            "i_valid": In(1), "i_addr": In(addr), "i_weight": In(signed(weight_bits)),
            "i_value": In(signed(value_bits)), "i_align": In(range(max_align + 1)),
            "sweep_rd_en": In(1), "sweep_rd_addr": In(addr), "sweep_rd_data": Out(signed(acc_bits)),
            "sweep_wr_en": In(1), "sweep_wr_addr": In(addr), "sweep_wr_data": In(signed(acc_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        acc = signed(self.acc_bits)
        m.submodules.mem = mem = Memory(shape=acc, depth=self.depth, init=[])
        rd = mem.read_port()            # synchronous: data one cycle after the address
        wr = mem.write_port()
        addr_shape = self.i_addr.shape()

        # a0: the entry, registered; the weight shifted before the register (a small mux on a
        # narrow operand, not a barrel shifter on the product).
        a0_valid, a0_addr = Signal(), Signal(addr_shape)
        a0_operand = Signal(signed(self.weight_bits + self.max_align))
        a0_value = Signal(signed(self.value_bits))
        m.d.sync += [a0_valid.eq(self.i_valid), a0_addr.eq(self.i_addr),
                     a0_operand.eq(self.i_weight << self.i_align), a0_value.eq(self.i_value)]
        m.d.comb += [rd.addr.eq(Mux(self.sweep_rd_en, self.sweep_rd_addr, a0_addr)), rd.en.eq(1)]

        # a1: DSP pipeline register; hazards against the entry ahead (a2) and the write before.
        a1_valid, a1_addr = Signal(), Signal(addr_shape)
        a1_product = Signal(signed(self.weight_bits + self.max_align + self.value_bits))
        m.d.sync += [a1_valid.eq(a0_valid), a1_addr.eq(a0_addr), a1_product.eq(a0_operand * a0_value)]
        a2_valid, a2_addr = Signal(), Signal(addr_shape)
        a2_product = Signal.like(a1_product)
        a2_read = Signal(acc)
        w1_en, w1_addr, w1_data = Signal(), Signal(addr_shape), Signal(acc)   # the write one cycle ago
        w2_data = Signal(acc)                                                  # ... and two
        a2_fwd1, a2_fwd2 = Signal(), Signal()
        write_en = Signal()
        write_addr = Signal(addr_shape)
        m.d.sync += [a2_valid.eq(a1_valid), a2_addr.eq(a1_addr), a2_product.eq(a1_product),
                     a2_read.eq(rd.data),
                     # a2 next cycle sees: the write now at a2 (becomes w1), the write now in w1 (w2).
                     a2_fwd1.eq(write_en & (write_addr == a1_addr)),
                     a2_fwd2.eq(w1_en & (w1_addr == a1_addr))]

        # a2: sum and write. Forwarding priority: the newest write.
        current = Mux(a2_fwd1, w1_data, Mux(a2_fwd2, w2_data, a2_read))
        total = Signal(acc)
        m.d.comb += total.eq(current + a2_product)
        m.d.comb += [write_en.eq(a2_valid | self.sweep_wr_en),
                     write_addr.eq(Mux(a2_valid, a2_addr, self.sweep_wr_addr))]
        write_data = Mux(a2_valid, total, self.sweep_wr_data)
        m.d.comb += [wr.en.eq(write_en), wr.addr.eq(write_addr), wr.data.eq(write_data)]
        m.d.sync += [w1_en.eq(write_en), w1_addr.eq(write_addr), w1_data.eq(write_data), w2_data.eq(w1_data)]

        # The sweep's read data, two cycles after its address (registered like the MAC's).
        m.d.comb += self.sweep_rd_data.eq(a2_read)
        return m
