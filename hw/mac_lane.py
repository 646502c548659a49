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

The sweep port reads a word (``sweep_rd_*``, data two cycles later on ``sweep_rd_data``, which
is 0 two cycles after a cycle without a sweep read, so that a core may OR lanes' words; with
``sweep_raw=True`` the block RAM's own output one cycle after the address, with
``sweep_rd_hit`` set, for a core that registers several lanes' words in one LUT each) and
writes a word (``sweep_wr_*``, for example the next step's initial value). The caller keeps the
sweep off the cycles that carry entries (entries at a0 for reads, at a2 for writes); a
sweep write counts as a write for forwarding, so entries may follow it at once.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .construct import checked_construction
from .pipeline import NO_RW_COLLISIONS, collisions_poisoned

__all__ = ["MacLane", "RegisterAccumulators", "TAKE_LATENCY", "check_lane_arguments", "register_ports",
           "sweep_hit_port"]


def _positive(name, value, low=1):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, not {value}")
    return value


def check_lane_arguments(*, depth, weight_bits, max_align, operand_bits: int, operand: str, registers: int = 0,
                         banks: int = 1, sweep_registers: bool = True, register_words: int | None = None,
                         sweep_raw: bool = False):
    """The checks every lane shares: ``depth`` accumulators (at least 2), ``weight_bits`` and the
    alignment, with ``weight << align`` fitting ``operand`` (``operand_bits`` wide), fewer
    ``registers`` than ``depth``, and 1 or 2 ``banks`` (two of a power-of-two size each)."""
    _positive("depth", depth, 2)
    _positive("weight_bits", weight_bits, 2)
    _positive("max_align", max_align, 0)
    _positive("registers", registers, 0)
    if register_words is not None and (_positive("register_words", register_words, 0) > registers):
        raise ValueError(f"register_words must not exceed registers ({registers}), not {register_words}")
    if registers >= depth:
        raise ValueError(f"registers must be fewer than depth ({depth}), not {registers}")
    if banks not in (1, 2) or isinstance(banks, bool):
        raise ValueError(f"banks must be 1 or 2, not {banks!r}")
    if not isinstance(sweep_raw, bool):
        raise TypeError(f"sweep_raw must be True or False, not {sweep_raw!r}")
    if not isinstance(sweep_registers, bool):
        raise TypeError(f"sweep_registers must be True or False, not {sweep_registers!r}")
    ram = depth - registers
    if banks == 2 and (ram % 2 or ram // 2 < 2 or (ram // 2) & (ram // 2 - 1)):
        raise ValueError(f"two banks need depth - registers to be twice a power of two (at least 4), not {ram}")
    if weight_bits + max_align > operand_bits:
        raise ValueError(f"weight_bits + max_align must fit {operand}, not {weight_bits} + {max_align}")


def sweep_hit_port(sweep_raw: bool) -> dict:
    """``sweep_rd_hit`` (the sweep read one cycle before; its word is on ``sweep_rd_data``) for
    a lane whose sweep data is raw."""
    return {"sweep_rd_hit": Out(1)} if sweep_raw else {}


def register_ports(registers: int, acc_bits: int) -> dict:
    """A lane's port for taking its register words (``take_en``, ``take_index``; the word on
    ``take_data`` :data:`TAKE_LATENCY` cycle later, and cleared): the readout's outputs leave through it while
    the sweep uses the sweep port."""
    if not registers:
        return {}
    return {"take_en": In(1), "take_index": In(range(max(2, registers))), "take_data": Out(signed(acc_bits))}


#: Cycles from a take (``take_en``) to its word on ``take_data``.
TAKE_LATENCY = 1


def take_registers(regs: "RegisterAccumulators", lane) -> None:
    if regs.words:
        regs.take(lane.take_en, lane.take_index)
        regs.m.d.comb += lane.take_data.eq(regs.take_data)


class RegisterAccumulators:
    """A lane's ``depth`` accumulators: the first ``depth - registers`` in ``banks`` block RAMs
    (each with one read and one write port), the last ``registers`` in flip-flops.

    The flip-flop words are the readout's: few, and busy while the sweep of the last layer
    uses the block RAMs' ports, so entries and sweep accesses on them take no block-RAM port.
    With two banks the bank is the address bit above ``(depth - registers) / 2`` words (a
    power of two), and an entry in one bank and a sweep access in the other use different
    ports. Reads behave alike on every kind of word (data one cycle after the address, writes
    of that cycle not seen, except a block RAM's with ``late_sweep_write``, where they are
    undefined), so a lane's forwarding covers them all.
    """

    def __init__(self, m: Module, *, depth: int, registers: int, shape, addr_shape, banks: int = 1,
                 sweep_registers: bool = True, late_sweep_write: bool = False, register_words: int | None = None,
                 shared_take: bool = False, sweep_raw: bool = False, take_raw: bool = False):
        self.m, self.shape = m, shape
        # True (one register word, shared_take): ``take_data`` is the word itself in the cycle
        # of the take (cleared at its end), for a caller that registers two lanes' words in one
        # LUT each; an entry reads the word straight from its flip-flops a cycle after the
        # address (the write it may then see is the one forwarding would give it anyway).
        self.take_raw = take_raw
        # True: ``sweep_data`` is the block RAM's output (one cycle after the read, not zeroed)
        # and ``sweep_hit`` says a read was issued the cycle before: the caller's register can
        # then AND-OR two lanes' words in one LUT per bit, where a zeroing register of its own
        # (a flip-flop's reset) has no LUT to share a logic cell with.
        self.sweep_raw = sweep_raw
        self.sweep_hit = Signal()
        # True: the take port reads through the entries' register-word select (call take()
        # before read()); take_data then holds an entry's register read in cycles without a take.
        self.shared_take = shared_take
        # Of the ``registers`` addresses, the first ``register_words`` are flip-flops; the others
        # read 0 and drop writes (a lane whose readout holds fewer outputs than the address map).
        register_words = registers if register_words is None else register_words
        self.registers = registers
        # True: the sweep's write of a block-RAM word goes a cycle after its read of it, so that
        # no read needs a write of its cycle kept out, and the memories are built without
        # yosys's collision logic (:data:`~hw.pipeline.NO_RW_COLLISIONS`). An entry's read that
        # meets the write of the entry two ahead is covered by the lane's forwarding.
        self.late_sweep_write = late_sweep_write
        # False: the sweep port never addresses a register word (a core whose readout leaves
        # through the take port), which saves its muxes on every register word.
        self.sweep_registers = sweep_registers
        self.base = depth - registers                 # the first register address
        self.banks = banks
        bank_words = self.base // banks
        self.bank_bits = (bank_words - 1).bit_length() if banks > 1 else None
        if banks > 1:
            ram_depth = bank_words
        elif registers:
            # The block RAM spans the whole address space, so that the read an entry on a
            # register word issues lands on a (never used) word rather than outside.
            ram_depth = 1 << Shape.cast(addr_shape).width
        else:
            ram_depth = depth
        self.rds, self.wrs = [], []
        for b in range(banks):
            mem = Memory(shape=shape, depth=max(2, ram_depth), init=[],
                         attrs=NO_RW_COLLISIONS if late_sweep_write else None)
            m.submodules[f"mem{b}" if banks > 1 else "mem"] = mem
            self.rds.append(mem.read_port())
            self.wrs.append(mem.write_port())
        self.words = [Signal(shape, name=f"reg_acc{j}") for j in range(register_words)]
        self.sweep_data = Signal(shape)
        self.take_data = Signal(shape)
        self._take = None

    def _hits(self, addr):
        return [addr == self.base + j for j in range(len(self.words))]

    def _select(self, addr):
        """The register word at ``addr`` (0 when ``addr`` is in a block RAM)."""
        return self._select_hits(self._hits(addr))

    def _select_hits(self, hits):
        """The word whose hit is set (at most one is: an AND-OR, not a priority chain), else 0."""
        out = Const(0, self.shape)
        for hit, word in zip(hits, self.words):
            out = out | Mux(hit, word, 0)
        return out

    def is_register(self, addr):
        return addr >= self.base if self.registers else Const(0)

    def _bank(self, addr):
        return addr[self.bank_bits] if self.banks > 1 else Const(0)

    def _low(self, addr):
        return addr[:self.bank_bits] if self.banks > 1 else addr

    def _in_bank(self, en, addr, b):
        return en & ~self.is_register(addr) & (self._bank(addr) == b)

    def _ram_data(self, bank_reg):
        data = [self._poisoned(b) for b in range(self.banks)]
        out = data[0]
        for b in range(1, self.banks):
            out = Mux(bank_reg == b, data[b], out)
        return out

    def _poisoned(self, b):
        """Bank ``b``'s read data; under :func:`~hw.pipeline.poisoned_collisions` (simulation
        only) garbage after a read of the address written in the same cycle, which the
        ``no_rw_check`` memories leave undefined."""
        rd = self.rds[b]
        if not (self.late_sweep_write and collisions_poisoned()):
            return rd.data
        wr = self.wrs[b]
        hit = Signal(name=f"collision{b}")
        self.m.d.sync += hit.eq(wr.en & (wr.addr == rd.addr))
        return Mux(hit, rd.data ^ 0x5A5A5A5A, rd.data)

    def hits_ahead(self, addr):
        """The register words' hits of ``addr``, registered: with the address a cycle before
        the entry's read, ``read(..., entry_hits=)`` takes them instead of comparing there."""
        hits = [Signal(name=f"reg_hit{j}") for j in range(len(self.words))]
        self.m.d.sync += [h.eq(a) for h, a in zip(hits, self._hits(addr))]
        return hits

    def read(self, entry_addr, sweep_en, sweep_addr, entry_hits=None, forward=None):
        """Issue an entry's read and the sweep's: the entry's data one cycle later (returned),
        the sweep's two cycles later on ``sweep_data``. A sweep read of a block RAM takes its
        port from an entry in the same bank (the caller keeps them apart). ``entry_hits``:
        :meth:`hits_ahead` of the entry's address a cycle before (the word select is then one
        LUT deep after flip-flops, not behind the address compares). ``forward``
        (``take_raw`` only): ``(hit, value)`` in the cycle of the read; where ``hit``, the
        entry's data is ``value`` instead of the word read (the caller's forwarding of a sum
        not yet written), registered with the register word in one LUT per bit."""
        if forward is not None and not self.take_raw:
            raise ValueError("forward is for take_raw accumulators")
        m = self.m
        for b, rd in enumerate(self.rds):
            here = self._in_bank(sweep_en, sweep_addr, b)
            m.d.comb += [rd.addr.eq(Mux(here, self._low(sweep_addr), self._low(entry_addr))), rd.en.eq(1)]
        e_bank, s_bank = Signal(range(max(2, self.banks))), Signal(range(max(2, self.banks)))
        m.d.sync += [e_bank.eq(self._bank(entry_addr)), s_bank.eq(self._bank(sweep_addr))]
        e_ram, s_ram = self._ram_data(e_bank), self._ram_data(s_bank)
        # sweep_data is 0 unless the sweep read two cycles before: the lanes' words can then be
        # ORed together instead of muxed (a flip-flop's synchronous reset, no logic).
        s_en = self.sweep_hit
        m.d.sync += s_en.eq(sweep_en)
        sweep = m.d.comb if self.sweep_raw else m.d.sync

        def sweep_word(word):
            return word if self.sweep_raw else Mux(s_en, word, 0)
        entry_data = Signal(self.shape)
        if not self.words:
            m.d.comb += entry_data.eq(e_ram)
            sweep += self.sweep_data.eq(sweep_word(s_ram))
            return entry_data
        e_is_reg = Signal()
        if self.take_raw:
            # The register word (or the forwarded value) is registered in the cycle of the read,
            # as the block RAM registers its word: one LUT per bit in the flip-flop's cell, and
            # the entry's data a 2:1 mux. A write of the word at the end of that cycle is an
            # entry's, which the caller forwards; a take does not come then (the caller's promise).
            own = self._hits(entry_addr) if entry_hits is None else entry_hits
            fwd_hit, fwd_value = forward if forward is not None else (Const(0), Const(0, self.shape))
            e_word = Signal(self.shape, name="reg_word_a")
            use_ram = Signal(name="use_ram_a")
            m.d.sync += [e_word.eq(Mux(fwd_hit, fwd_value, Mux(own[0], self.words[0], 0))),
                         use_ram.eq(~fwd_hit & ~self.is_register(entry_addr))]
            m.d.comb += [self.take_data.eq(self.words[0]), entry_data.eq(Mux(use_ram, e_ram, e_word))]
            sweep += self.sweep_data.eq(sweep_word(s_ram))     # take_raw: no sweep on register words
            return entry_data
        e_reg = Signal(self.shape)
        if self.shared_take:
            # One word select for the entries and the take port: a take and an entry on a
            # register word never come in one cycle (the caller's promise; the readout's rows
            # wait for the outputs before them), so take_data may carry an entry's register
            # read in other cycles, which the caller ignores.
            if self._take is None:
                raise RuntimeError("shared_take: take() must come before read()")
            take_en, take_index = self._take
            # Per word: the take's small index compare, or the entry's address compare.
            own = self._hits(entry_addr) if entry_hits is None else entry_hits
            hits = [Mux(take_en, take_index == j, hit) for j, hit in enumerate(own)]
            m.d.comb += self.take_data.eq(e_reg)
        else:
            hits = self._hits(entry_addr) if entry_hits is None else entry_hits
        m.d.sync += [e_reg.eq(self._select_hits(hits)), e_is_reg.eq(self.is_register(entry_addr))]
        if self.sweep_registers:
            s_reg, s_is_reg = Signal(self.shape), Signal()
            m.d.sync += [s_reg.eq(self._select(sweep_addr)), s_is_reg.eq(self.is_register(sweep_addr))]
            if self.sweep_raw:
                m.d.comb += self.sweep_data.eq(Mux(s_is_reg, s_reg, s_ram))
            else:
                m.d.sync += self.sweep_data.eq(Mux(s_en, Mux(s_is_reg, s_reg, s_ram), 0))
        else:
            sweep += self.sweep_data.eq(sweep_word(s_ram))
        m.d.comb += entry_data.eq(Mux(e_is_reg, e_reg, e_ram))
        return entry_data

    def take(self, en, index):
        """Read register word ``index`` and clear it (``take_data`` :data:`TAKE_LATENCY` cycle
        later, 0 after a cycle without ``en``), through a port of its own: the sweep's and the
        entries' ports stay free. One register per lane: a core ORs the lanes' words and
        registers the OR once, instead of every lane registering its word twice."""
        m = self.m
        self._take = (en, index)
        if self.shared_take:
            return          # read() serves it through the entries' word select
        out = Const(0, self.shape)
        for j, word in enumerate(self.words):
            out = Mux(en & (index == j), word, out)
        m.d.sync += self.take_data.eq(out)

    def write(self, entry_en, entry_addr, entry_data, sweep_en, sweep_addr, sweep_data, entry_hits=None):
        """This cycle's writes: an entry's sum and a sweep word (and a take's clear); on one
        memory or one register the entry wins, then the sweep (the caller keeps them apart).
        ``entry_hits``: :meth:`hits_ahead` of the entry's address a cycle before."""
        m = self.m
        for b, wr in enumerate(self.wrs):
            entry_here = self._in_bank(entry_en, entry_addr, b)
            sweep_here = self._in_bank(sweep_en, sweep_addr, b)
            s_addr, s_data = self._low(sweep_addr), sweep_data
            if self.late_sweep_write:
                late = Signal(name=f"sweep_wr{b}_en")
                s_addr, s_data = Signal.like(self._low(sweep_addr), name=f"sweep_wr{b}_addr"), \
                    Signal(self.shape, name=f"sweep_wr{b}_data")
                m.d.sync += [late.eq(sweep_here), s_addr.eq(self._low(sweep_addr)), s_data.eq(sweep_data)]
                sweep_here = late
            m.d.comb += [wr.en.eq(entry_here | sweep_here),
                         wr.addr.eq(Mux(entry_here, self._low(entry_addr), s_addr)),
                         wr.data.eq(Mux(entry_here, entry_data, s_data))]
        own = self._hits(entry_addr) if entry_hits is None else entry_hits
        for j, (hit_e, hit_s, word) in enumerate(zip(own, self._hits(sweep_addr), self.words)):
            with m.If(entry_en & hit_e):
                m.d.sync += word.eq(entry_data)
            with m.Elif(sweep_en & hit_s & self.sweep_registers):
                m.d.sync += word.eq(sweep_data)
            if self._take is not None:
                with m.Elif(self._take[0] & (self._take[1] == j)):
                    m.d.sync += word.eq(0)


class MacLane(wiring.Component):
    """``depth`` accumulators of ``acc_bits`` (signed), fed by entries of a ``weight_bits``
    weight, a ``value_bits`` value and an alignment shift of at most ``max_align`` bits
    (``weight << align`` must fit 18 bits: one DSP operand).

    Latency: an entry presented on ``i_*`` in cycle t is in the memory from cycle t + 4 on
    (a0 at t + 1, write at the end of t + 3). The sum wraps at ``acc_bits`` (the quantizer
    guarantees that no accumulator bound exceeds it). The last ``registers`` addresses are
    flip-flops (:class:`RegisterAccumulators`): the sweep may read and write them while entries
    use the block RAM, and entries may use them while the sweep uses the block RAM. With
    ``banks=2`` the same holds between the two banks of block RAM.
    """

    LATENCY = 4     # cycles from an entry on i_* to its sum being readable through sweep_rd

    def __init__(self, *, depth: int, acc_bits: int = 32, weight_bits: int = 8, value_bits: int = 16,
                 max_align: int = 8, registers: int = 0, banks: int = 1, sweep_registers: bool = True,
                 register_words: int | None = None, sweep_raw: bool = False):
        with checked_construction(self):
            check_lane_arguments(depth=depth, weight_bits=weight_bits, max_align=max_align,
                                 operand_bits=18, operand="one 18-bit multiplier operand", registers=registers,
                                 banks=banks, sweep_registers=sweep_registers, register_words=register_words,
                                 sweep_raw=sweep_raw)
            self.registers, self.banks, self.sweep_registers = registers, banks, sweep_registers
            self.register_words = register_words
            self.sweep_raw = sweep_raw
            self.acc_bits = _positive("acc_bits", acc_bits, 2)
            self.value_bits = _positive("value_bits", value_bits, 2)
            self.depth, self.weight_bits, self.max_align = depth, weight_bits, max_align
        addr = unsigned(max(1, (depth - 1).bit_length()))
        super().__init__({
            "i_valid": In(1), "i_addr": In(addr), "i_weight": In(signed(weight_bits)),
            "i_value": In(signed(value_bits)), "i_align": In(range(max_align + 1)),
            "sweep_rd_en": In(1), "sweep_rd_addr": In(addr), "sweep_rd_data": Out(signed(acc_bits)),
            "sweep_wr_en": In(1), "sweep_wr_addr": In(addr), "sweep_wr_data": In(signed(acc_bits)),
            **register_ports(registers, acc_bits), **sweep_hit_port(sweep_raw),
        })

    def elaborate(self, platform):
        m = Module()
        acc = signed(self.acc_bits)
        addr_shape = self.i_addr.shape()
        regs = RegisterAccumulators(m, depth=self.depth, registers=self.registers, shape=acc, addr_shape=addr_shape,
                                    banks=self.banks, sweep_registers=self.sweep_registers,
                                    register_words=self.register_words, sweep_raw=self.sweep_raw)

        # a0: the entry, registered; the weight shifted before the register (a small mux on a
        # narrow operand, not a barrel shifter on the product).
        a0_valid, a0_addr = Signal(), Signal(addr_shape)
        a0_operand = Signal(signed(self.weight_bits + self.max_align))
        a0_value = Signal(signed(self.value_bits))
        m.d.sync += [a0_valid.eq(self.i_valid), a0_addr.eq(self.i_addr),
                     a0_operand.eq(self.i_weight << self.i_align)]
        # The value is loaded only with a non-zero weight (a zero operand makes the product 0
        # whatever it holds): every lane's value register then has an enable of its own, so
        # that synthesis keeps one per lane instead of merging them into one flip-flop that
        # drives every lane's multiplier (on ECP5 at P = 16 the worst path, 7 ns of routing).
        with m.If(self.i_weight != 0):
            m.d.sync += a0_value.eq(self.i_value)
        entry_data = regs.read(a0_addr, self.sweep_rd_en, self.sweep_rd_addr)     # at a1

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
                     a2_read.eq(entry_data),
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
        take_registers(regs, self)
        regs.write(a2_valid, a2_addr, total, self.sweep_wr_en, self.sweep_wr_addr, self.sweep_wr_data)
        # Forwarding counts one write per cycle, the entry's before the sweep's.
        m.d.sync += [w1_en.eq(write_en), w1_addr.eq(write_addr), w1_data.eq(write_data), w2_data.eq(w1_data)]

        # The sweep's read data, two cycles after its address (raw: one).
        m.d.comb += self.sweep_rd_data.eq(regs.sweep_data)
        if self.sweep_raw:
            m.d.comb += self.sweep_rd_hit.eq(regs.sweep_hit)
        return m
