"""The lane's read-modify-write with the add inside the DSP: iCE40's SB_MAC16.

:class:`~hw.mac_lane.MacLane` adds in the fabric. On the iCE40 a 32-bit carry chain alone takes
about 12 ns, and with forwarding in front of it the lane reaches 35 MHz (docs/core-v2.md). The
SB_MAC16 has its own 32-bit adder behind the multiplier, ``O <= A * B + C:D``. With the
accumulator's old value on C:D, the whole read-modify-write is the DSP's.

Pipeline (cycle t = the entry on ``i_*``)::

    t+1  a0: A, B in the DSP's input registers; addr, valid in the fabric
    t+2  a1: partial products registered (DSP); the accumulator read is issued
    t+3  a2: their sum registered (DSP); C:D = the read data, or a newer sum (forwarding)
    t+4  a3: O = A * B + C:D in the DSP's output register; written back

A read issued at t+2 sees the writes up to t+1, so only the two entries just ahead can be
missing from it. The one right ahead is on O itself, and the one before that is on ``a3_prev``.
That makes a 3:1 mux in front of C:D, fed by registers and the block RAM's output. A lane with
``take_raw`` registers O of the cycle before in the register it reads its register word into
(``reg_word_a``, one LUT per bit), so that its C:D is a 2:1 mux of O and a 2:1 mux.

``dsp="sb_mac16"`` instantiates the primitive (for iCE40 builds, synthesised without
``-dsp``, whose pass rewrites SB_MAC16 instances). ``dsp="model"`` is the same pipeline in
Amaranth, for the Amaranth simulator and for other families. tests/test_dsp_mac_lane.py runs
both against each other: the model in the Amaranth simulator, the primitive in Icarus with
yosys's SB_MAC16 simulation model.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .construct import checked_construction
from .mac_lane import RegisterAccumulators, check_lane_arguments, register_ports, sweep_hit_port, take_registers

__all__ = ["DSPMacLane", "DSP_KINDS"]

DSP_KINDS = ("model", "sb_mac16")


class DSPMacLane(wiring.Component):
    """``depth`` 32-bit accumulators; ``acc[addr] += (weight << align) * value`` per cycle.

    ``weight << align`` and ``value`` are 16-bit signed (the SB_MAC16's operands). The sweep
    port works as :class:`~hw.mac_lane.MacLane`'s (read data two cycles after the address, 0
    after a cycle without a read), and the sweep must keep ``LATENCY`` cycles away from
    entries, both ways, on the block RAM's addresses. The last ``registers`` addresses are
    flip-flops, as in MacLane: entries and sweep accesses on them use no block-RAM port; with
    ``banks=2``, an entry in one bank and a sweep access in the other use different block RAMs.
    ``take_raw=True`` (one register word, ``sweep_registers=False``): ``take_data`` is the word
    itself in the take's cycle (cleared at its end), for a core that registers it; an entry on
    the word reads it straight from its flip-flops, three cycles after its ``i_*`` (where the
    select register would hold it), and what it may see newer there is the write that
    forwarding gives it anyway.
    ``sweep_raw=True``: ``sweep_rd_data`` is the block RAM's output one cycle after the
    address (not zeroed), with ``sweep_rd_hit`` set when a read was issued the cycle before.
    ``sweep_registers=False``: the sweep port addresses block-RAM words only (the register
    words leave through the take port), which saves the register words' sweep muxes.
    ``register_words``: only the first that many register addresses hold a word (the others
    read 0 and drop writes); ``None``: all ``registers``. The take port shares the entries'
    word select: a take must not come in the cycle an entry on a register word is at its read
    (two cycles after ``i_*``), and ``take_data`` is 0 only after cycles with neither.
    """

    LATENCY = 5     # an entry on i_* in cycle t is readable through sweep_rd from cycle t + 5

    def __init__(self, *, depth: int, weight_bits: int = 8, max_align: int = 8, dsp: str = "model",
                 registers: int = 0, banks: int = 1, sweep_registers: bool = True, register_words: int | None = None,
                 sweep_raw: bool = False, take_raw: bool = False):
        with checked_construction(self):
            check_lane_arguments(depth=depth, weight_bits=weight_bits, max_align=max_align,
                                 operand_bits=16, operand="the 16-bit DSP operand", registers=registers,
                                 banks=banks, sweep_registers=sweep_registers, register_words=register_words,
                                 sweep_raw=sweep_raw)
            self.registers, self.banks, self.sweep_registers = registers, banks, sweep_registers
            self.register_words = register_words
            self.sweep_raw = sweep_raw
            if not isinstance(take_raw, bool):
                raise TypeError(f"take_raw must be True or False, not {take_raw!r}")
            words = registers if register_words is None else register_words
            if take_raw and (words != 1 or sweep_registers):
                raise ValueError(f"take_raw needs one register word and sweep_registers=False, not {words} "
                                 f"and {sweep_registers}")
            self.take_raw = take_raw
            self.depth, self.weight_bits, self.max_align = depth, weight_bits, max_align
            if dsp not in DSP_KINDS:
                raise ValueError(f"dsp must be one of {', '.join(DSP_KINDS)}, not {dsp!r}")
            self.dsp = dsp
        self.acc_bits = 32
        addr = unsigned(max(1, (depth - 1).bit_length()))
        super().__init__({
            "i_valid": In(1), "i_addr": In(addr), "i_weight": In(signed(weight_bits)),
            "i_value": In(signed(16)), "i_align": In(range(max_align + 1)),
            "sweep_rd_en": In(1), "sweep_rd_addr": In(addr), "sweep_rd_data": Out(signed(32)),
            "sweep_wr_en": In(1), "sweep_wr_addr": In(addr), "sweep_wr_data": In(signed(32)),
            **register_ports(registers, 32), **sweep_hit_port(sweep_raw),
        })

    def _dsp(self, m, a, b, cd, o):
        """``o`` (in cycle t+4) = ``a`` * ``b`` (given in cycle t) + ``cd`` (given in cycle t+3)."""
        if self.dsp == "sb_mac16":
            m.submodules.dsp = Instance(
                "SB_MAC16",
                p_A_REG=1, p_B_REG=1, p_C_REG=0, p_D_REG=0,
                p_TOP_8x8_MULT_REG=1, p_BOT_8x8_MULT_REG=1,
                p_PIPELINE_16x16_MULT_REG1=1, p_PIPELINE_16x16_MULT_REG2=1,
                # Top and bottom adders: the product's halves plus C and D, carry from bottom to top;
                # both halves registered at the output.
                p_TOPOUTPUT_SELECT=1, p_TOPADDSUB_LOWERINPUT=2, p_TOPADDSUB_UPPERINPUT=1,
                p_TOPADDSUB_CARRYSELECT=2,
                p_BOTOUTPUT_SELECT=1, p_BOTADDSUB_LOWERINPUT=2, p_BOTADDSUB_UPPERINPUT=1,
                p_BOTADDSUB_CARRYSELECT=0,
                p_MODE_8x8=0, p_A_SIGNED=1, p_B_SIGNED=1,
                i_CLK=ClockSignal(), i_CE=Const(1, 1), i_A=a, i_B=b, i_C=cd[16:], i_D=cd[:16],
                i_AHOLD=Const(0, 1), i_BHOLD=Const(0, 1), i_CHOLD=Const(0, 1), i_DHOLD=Const(0, 1),
                i_IRSTTOP=Const(0, 1), i_IRSTBOT=Const(0, 1), i_ORSTTOP=Const(0, 1), i_ORSTBOT=Const(0, 1),
                i_OLOADTOP=Const(0, 1), i_OLOADBOT=Const(0, 1), i_ADDSUBTOP=Const(0, 1),
                i_ADDSUBBOT=Const(0, 1), i_OHOLDTOP=Const(0, 1), i_OHOLDBOT=Const(0, 1),
                i_CI=Const(0, 1), i_ACCUMCI=Const(0, 1), i_SIGNEXTIN=Const(0, 1), o_O=o)
        else:
            a_r, b_r = Signal(signed(16)), Signal(signed(16))
            p1, p2 = Signal(signed(32)), Signal(signed(32))
            m.d.sync += [a_r.eq(a), b_r.eq(b), p1.eq(a_r * b_r), p2.eq(p1), o.eq(p2 + cd)]

    def elaborate(self, platform):
        m = Module()
        addr_shape = self.i_addr.shape()
        acc = signed(32)
        # The sweep's write a cycle late: no collision logic around the block RAMs (about 40 FF
        # and 28 LUT each on the iCE40).
        regs = RegisterAccumulators(m, depth=self.depth, registers=self.registers, shape=acc, addr_shape=addr_shape,
                                    banks=self.banks, sweep_registers=self.sweep_registers, late_sweep_write=True,
                                    register_words=self.register_words, shared_take=True, sweep_raw=self.sweep_raw,
                                    take_raw=self.take_raw)

        operand = Signal(signed(16))
        m.d.comb += operand.eq(self.i_weight << self.i_align)
        o = Signal(signed(32))
        cd = Signal(signed(32))
        self._dsp(m, operand, self.i_value, cd, o)

        a0_valid, a0_addr = Signal(), Signal(addr_shape)
        a1_valid, a1_addr = Signal(), Signal(addr_shape)
        a2_valid, a2_addr = Signal(), Signal(addr_shape)
        a3_valid, a3_addr = Signal(), Signal(addr_shape)
        # With register words an invalid entry's address is 0 (a flip-flop's reset): the shared
        # word select (take_data) must not keep reading the register word a last readout entry left.
        i_addr = Mux(self.i_valid, self.i_addr, 0) if self.registers else self.i_addr
        m.d.sync += [a0_valid.eq(self.i_valid), a0_addr.eq(i_addr),
                     a1_valid.eq(a0_valid), a1_addr.eq(a0_addr),
                     a2_valid.eq(a1_valid), a2_addr.eq(a1_addr),
                     a3_valid.eq(a2_valid), a3_addr.eq(a2_addr)]
        # The entry's read is issued at a1: its data (block RAM or register) is there at a2.
        take_registers(regs, self)          # shares the entries' word select: before read()
        # Forwarding, decided a cycle ahead: the entry now at a1 against the one at a2 (it will
        # be on O) and the one at a3 (on O now; registered, it is O of the cycle before).
        fwd1_next = a2_valid & (a2_addr == a1_addr)
        fwd2_next = a3_valid & (a3_addr == a1_addr)
        a2_fwd1 = Signal()
        m.d.sync += a2_fwd1.eq(fwd1_next)
        # The register words' hits compared at a0, so that the select at a1 (shared with the
        # take) is one LUT after flip-flops.
        hits = regs.hits_ahead(a0_addr)
        if self.take_raw:
            # O of the cycle before registered with the register word (one LUT per bit, in the
            # flip-flop's cell, where a register of its own would have none).
            entry_data = regs.read(a1_addr, self.sweep_rd_en, self.sweep_rd_addr, entry_hits=hits,
                                   forward=(fwd2_next, o))
            m.d.comb += cd.eq(Mux(a2_fwd1, o, entry_data))
        else:
            entry_data = regs.read(a1_addr, self.sweep_rd_en, self.sweep_rd_addr, entry_hits=hits)
            a2_fwd2 = Signal()
            m.d.sync += a2_fwd2.eq(fwd2_next)
            a3_prev = Signal(signed(32))      # O of the cycle before
            m.d.sync += a3_prev.eq(o)
            m.d.comb += cd.eq(Mux(a2_fwd1, o, Mux(a2_fwd2, a3_prev, entry_data)))

        regs.write(a3_valid, a3_addr, o, self.sweep_wr_en, self.sweep_wr_addr, self.sweep_wr_data,
                   entry_hits=regs.hits_ahead(a2_addr))
        # The sweep reads two cycles after its address: one for the block RAM, one register
        # (raw: one, the block RAM's).
        m.d.comb += self.sweep_rd_data.eq(regs.sweep_data)
        if self.sweep_raw:
            m.d.comb += self.sweep_rd_hit.eq(regs.sweep_hit)
        return m
