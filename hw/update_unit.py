"""The neuron update of the golden model (quantize/golden.py), one neuron per cycle, shared by lanes.

One unit serves many lanes (docs/core-v2.md, "Update units"). It takes a neuron's four
accumulators, reads its cell state and threshold from memories it owns, and a fixed number of
cycles later emits the new event and writes the new state. Every stage is at most one carry
chain or one table read; every table read and every multiplier output lands in a register
(the block RAM's own, in logic).

In order: the sigmoid indices of acc_z and acc_r and two reads of one table; r * acc_hg as two
products of 16-bit halves; + (acc_ag << sigmoid_frac) + 1/2 (pre_g); the tanh index and read; the
cell state read, d = c - (g << g_align); z * d + (g' << sigmoid_frac) + 1/2; saturation (c~) and
the threshold read; fire = c~ > theta and c~ - theta; y and the new state.

``multipliers="dsp"`` puts each product between two registers for a DSP to absorb, joins the
halves in the next stage and adds ag after that (17 cycles in all). ``"logic"`` is for the iCE40,
whose DSPs are all the lanes' (19 cycles):

- The sigmoid table holds each value's radix-4 code (:func:`~hw.pipeline.radix4_encode`:
  ``e * ONE`` plus four digits in ``{-2, -1, 0, 1}``), and each product is a tree of registered
  rows (:func:`~hw.pipeline.radix4_product`): one per digit, one LUT per bit, and one for ``e``
  and the digits' ``+1`` bits. The tree's adds cover only the bits where their operands overlap
  (no carry chain over 27 bits, none behind a LUT).
- The halves of (ag << sf) + 1/2 are one more row of each half's tree; then one add carries the
  low half into the high one.
- In z * d + (g' << sf) + 1/2 the code's ``e * d`` and g' share a weight: ``e * d + g'`` is
  ``c if e else g'``, a mux in the top row, so the blend is the tree's own sum.
- Every index takes two stages (its range flags, then the clamp); the table outputs and the
  threshold go straight from the block RAM into registered rows or carry chains.

In both, acc_ag and acc_hg are taken in the cycles they are used in (``offsets``), so they do not
ride the pipeline, and the memories are written on the falling edge (no collision logic around
the block RAM). :class:`~hw.pipeline.Timeline` keeps the stages aligned.

The accumulator grid (``acc_frac``) is fixed per build, so the table-index shifts are wiring.
A unit shared by layers on different grids takes one ``acc_frac`` per layer and an ``i_layer``
input: each index is then a mux of as many shifts as there are grids.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from egru_accel.quantize import formats as F
from egru_accel.quantize.formats import NumberFormats

from .construct import checked_construction
from .mac_lane import _positive
from .pipeline import Timeline, falling_edge_domain, radix4_digits, radix4_encode, radix4_latency, radix4_product

__all__ = ["UpdateUnit", "MULTIPLIERS"]

#: ``"dsp"``: ``*`` between registers, for a DSP block to absorb (ECP5's MULT18X18D);
#: ``"logic"``: shift-and-add trees and adds split to short carry chains (the iCE40, whose DSPs
#: are all the lanes').
MULTIPLIERS = ("dsp", "logic")


class UpdateUnit(wiring.Component):
    """``depth`` neurons' cell states and thresholds; one neuron update per cycle.

    Inputs: ``i_valid``, ``i_neuron`` (which of the ``depth``), ``i_layer`` (with several grids, it
    picks the grid of ``acc_frac[i_layer]``), ``i_fresh`` and the accumulators ``i_acc_z``,
    ``i_acc_r``, ``i_acc_ag``, ``i_acc_hg`` (signed ``acc_bits``, on the grid ``2**-acc_frac``).
    ``offsets`` (a dict ``{"z": .., "r": .., "ag": .., "hg": ..}``) says when each accumulator is
    taken: for a neuron presented with ``i_valid`` in cycle t, ``i_acc_<k>`` must be presented in
    cycle ``t + offsets[k]``; it is sampled then and in no other cycle (ag and hg come later than
    z and r, so that they need not ride the pipeline; a sweep delivers a neuron's gates one after
    another anyway). The other inputs are sampled in cycle t. Outputs, cycle t + ``latency``,
    straight from registers (``o_y`` through one mux): ``o_valid``, ``o_neuron``, ``o_candidate``
    (c~), ``o_fire``, ``o_y`` (the event value, 0 when silent). The new cell state is written back
    in the middle of the next cycle (on the falling edge, from registers).

    A neuron's state is read in the middle of the pipeline and written at its end, so a neuron may
    come again only after ``latency`` cycles (a sweep visits each once). ``i_fresh`` takes the
    neuron's cell state as 0 (the first step of a sequence), so no sweep has to clear the states.
    ``load_*`` writes a threshold (``load_theta``) or a cell state while no update runs (loading a
    model, clearing the states); the write lands in the middle of the next cycle.
    """

    def __init__(self, *, formats: NumberFormats, acc_frac: int | tuple[int, ...], depth: int,
                 acc_bits: int = 32, multipliers: str = "dsp"):
        with checked_construction(self):
            if not isinstance(formats, NumberFormats):
                raise TypeError(f"formats must be a NumberFormats, not {formats!r}")
            self.formats = formats
            fracs = tuple(acc_frac) if isinstance(acc_frac, (tuple, list)) else (acc_frac,)
            if not fracs:
                raise ValueError("acc_frac must name at least one accumulator grid")
            self.acc_fracs = tuple(_positive("acc_frac", a, 0) for a in fracs)
            self.depth = _positive("depth", depth, 2)
            self.acc_bits = _positive("acc_bits", acc_bits, 2)
            if multipliers not in MULTIPLIERS:
                raise ValueError(f"multipliers must be one of {', '.join(MULTIPLIERS)}, not {multipliers!r}")
            self.multipliers = multipliers
            self.latency, self.offsets = self._schedule()
            # In logic the sigmoid table holds these code words (hw.pipeline.radix4_encode).
            self._codes = ([radix4_encode(int(v), formats.sigmoid_value_bits) for v in F.sigmoid_table(formats)]
                           if multipliers == "logic" else None)
            for name, frac in (("sigmoid", formats.sigmoid_lut_frac), ("tanh", formats.tanh_lut_frac)):
                if min(self.acc_fracs) < frac:
                    raise ValueError(f"acc_frac ({min(self.acc_fracs)}) must be at least the {name} table's "
                                     f"index fraction ({frac})")
        f = formats
        addr = unsigned(max(1, (depth - 1).bit_length()))
        state = signed(f.state_bits)
        acc = signed(acc_bits)
        layers = len(self.acc_fracs)
        super().__init__({
            "i_valid": In(1), "i_neuron": In(addr), "i_layer": In(range(max(2, layers))),
            "i_fresh": In(1),
            "i_acc_z": In(acc), "i_acc_r": In(acc), "i_acc_ag": In(acc), "i_acc_hg": In(acc),
            "o_valid": Out(1), "o_neuron": Out(addr), "o_candidate": Out(state), "o_fire": Out(1),
            "o_y": Out(state),
            "load_en": In(1), "load_theta": In(1), "load_addr": In(addr), "load_data": In(state),
        })

    def _schedule(self) -> tuple[int, dict[str, int]]:
        """``(latency, offsets)``: the same cycle counts :meth:`elaborate` builds (and checks).
        Cycle 0 holds the registered inputs; an input presented at offset ``k`` is there in
        cycle ``k - 1``."""
        vbits = self.formats.sigmoid_value_bits
        logic = self.multipliers == "logic"
        if logic:
            product = radix4_latency(vbits)
            index = 2                                    # range flags, then the clamp
            r = index + 1                                # r straight from the table into the rows
            rh = r + radix4_latency(vbits, 1)            # the two halves' trees, with ag's halves
            pre = rh + 1                                 # the low half's carry into the high
            g = pre + index + 1                          # the tanh index; g straight from the table
            ag = r + 1                                   # in the rows' cycle
        else:
            product, index = 2, 1                        # a DSP's two registers; one index stage
            r = index + 2                                # table read + register
            rh = r + product + 1                         # the halves, then their join
            pre = rh + 1                                 # + ag
            g = pre + index + 2
            ag = rh                                      # in the cycle of that add
        zd = g + 1 + product                             # d, then z * d (in logic with + g' << sf + 1/2)
        cand = zd + int(not logic) + 1                   # (+ (g' << sigmoid_frac) + 1/2), saturated
        # hg is taken by the products' first stage; ag lands in its input register in the cycle
        # it is used in.
        offsets = {"z": 0, "r": 0, "ag": ag, "hg": r + int(logic)}
        return cand + 1 + 1, offsets                     # fire and c~ - theta, the outputs

    def _index(self, t, name, pre, cycle, lut_bits, lut_frac, layer):
        """``F.lut_index``: ``clamp((pre >> (acc_frac - lut_frac)) + 2**(lut_bits-1), 0, 2**lut_bits-1)``,
        registered (valid in ``cycle + 1``; in logic ``cycle + 2``)."""
        fracs = self.acc_fracs
        shifted = pre >> (fracs[0] - lut_frac)                 # arithmetic: wiring only
        if len(set(fracs)) > 1:                                # one shift per grid, chosen by layer
            sel = t.at(layer, cycle)
            shifted = Signal(pre.shape(), name=f"{name}_shifted")
            with t.m.Switch(sel):
                for l, af in enumerate(fracs):
                    with t.m.Case(l):
                        t.m.d.comb += shifted.eq(pre >> (af - lut_frac))
        half = 1 << (lut_bits - 1)
        # In range iff -half <= shifted < half, i.e. every bit from lut_bits-1 up equals the sign.
        top = shifted[lut_bits - 1:]
        ones = (1 << len(top)) - 1
        if self.multipliers != "logic":
            in_range = (top == 0) | (top == ones)
            return t.reg(name, Mux(in_range, shifted[:lut_bits] ^ half, Mux(shifted[-1], 0, (1 << lut_bits) - 1)),
                         cycle + 1, unsigned(lut_bits))
        # In logic over two stages: the two range flags (trees of LUTs over up to ~26 bits), then the clamp.
        low = t.reg(f"{name}_low", shifted[:lut_bits] ^ half, cycle + 1, unsigned(lut_bits))
        zero = t.reg(f"{name}_zero", top == 0, cycle + 1, unsigned(1))
        neg = t.reg(f"{name}_neg", top == ones, cycle + 1, unsigned(1))
        sign = t.reg(f"{name}_sign", shifted[-1], cycle + 1, unsigned(1))
        return t.reg(name, Mux(zero | neg, low, Mux(sign, 0, (1 << lut_bits) - 1)), cycle + 2, unsigned(lut_bits))

    def _product(self, t, name, a, b, cycle, **kwargs):
        """``a * b`` (valid in ``cycle``; ``a`` a sigmoid value): a DSP (registered twice) or, in
        logic, a tree of radix-4 rows (``a`` as the code the sigmoid table holds there)."""
        if self.multipliers == "logic":
            return radix4_product(t, name, a, b, cycle, self.formats.sigmoid_value_bits, codes=self._codes,
                                  **kwargs)
        p = t.reg(f"{name}_p", a * b, cycle + 1)
        return t.reg(name, p, cycle + 2)

    @staticmethod
    def _add_above(t, name, a, b, lsb, cycle, shape):
        """``a + b`` registered (valid in ``cycle + 1``) when ``b``'s bits below ``lsb`` are 0:
        ``a``'s pass by, so the carry chain is only ``shape.width - lsb`` bits long."""
        value = Cat(Value.cast(a)[:lsb], (a >> lsb) + (b >> lsb))
        return t.reg(name, value.as_signed() if Shape.cast(shape).signed else value, cycle + 1, shape)

    def elaborate(self, platform):
        m = Module()
        t = Timeline(m)
        f = self.formats
        sf = f.sigmoid_frac
        acc = signed(self.acc_bits)
        state = signed(f.state_bits)
        vbits = f.sigmoid_value_bits
        logic = self.multipliers == "logic"
        off = self.offsets

        # cycle 0: the inputs, registered; ag and hg registered in the cycles they are used in
        # (in logic hg goes straight into the products' registered rows, in the cycle before its
        # offset).
        valid = t.reg("u0_valid", self.i_valid, 0)
        neuron = t.reg("u0_neuron", self.i_neuron, 0)
        layer = t.reg("u0_layer", self.i_layer, 0)
        fresh = t.reg("u0_fresh", self.i_fresh, 0)
        az, ar, aag = (t.reg(f"u0_{k}", getattr(self, f"i_acc_{k}"), off[k], acc) for k in ("z", "r", "ag"))
        if logic:
            ahg = t.input(self.i_acc_hg, off["hg"] - 1)
        else:
            ahg = t.reg("u0_hg", self.i_acc_hg, off["hg"], acc)
        # Sigmoid indices, then two reads of one table. In logic the table's output goes straight
        # into the product's registered rows; for a DSP it is registered first.
        iz = self._index(t, "iz", az, off["z"], f.sigmoid_lut_bits, f.sigmoid_lut_frac, layer)
        ir = self._index(t, "ir", ar, off["r"], f.sigmoid_lut_bits, f.sigmoid_lut_frac, layer)
        # In logic the table holds each value's radix-4 code (hw.pipeline.radix4_encode), the
        # same number of bits: the products' rows take it as it is.
        values = [int(v) for v in F.sigmoid_table(f)]
        sig = Memory(shape=unsigned(2 * radix4_digits(vbits) + 1 if logic else vbits), depth=1 << f.sigmoid_lut_bits,
                     init=self._codes if logic else values)
        m.submodules.sigmoid = sig
        rz, rr = sig.read_port(), sig.read_port()
        m.d.comb += [rr.addr.eq(ir), rz.en.eq(1), rr.en.eq(1)]
        if logic:
            r = t.input(rr.data, t.cycle(ir) + 1)
        else:
            r = t.reg("r", rr.data, t.cycle(ir) + 2)
        # r * acc_hg as two products of 16-bit halves: r * hg = (r * hi) << 16 + r * lo.
        c0 = t.cycle(r)
        hg = t.at(ahg, c0)
        hg_lo = Signal(unsigned(16), name="hg_lo")
        hg_hi = Signal(signed(self.acc_bits - 16), name="hg_hi")
        m.d.comb += [hg_lo.eq(hg[:16]), hg_hi.eq(hg[16:].as_signed())]
        t.input(hg_lo, c0)
        t.input(hg_hi, c0)
        # pre_g * 2**sf + 1/2 = r * hg + (ag << sf) + 1/2 ((ag << sf) has sf zero low bits).
        pre_shape = signed(self.acc_bits + vbits + 2)
        if logic:
            # (ag << sf) + 1/2 in two halves, each one more row of its half's product tree; then
            # the low sum's carry into the high one (a 27-bit carry chain).
            ag_lo = Signal(unsigned(16), name="ag_lo")
            ag_hi = Signal(signed(self.acc_bits + sf - 16), name="ag_hi")
            m.d.comb += [ag_lo.eq(Cat(Const(1 << (sf - 1), sf), aag)[:16]),
                         ag_hi.eq(Cat(Const(1 << (sf - 1), sf), aag)[16:].as_signed())]
            t.input(ag_lo, t.cycle(aag))
            t.input(ag_hi, t.cycle(aag))
            s_lo = self._product(t, "rh_lo", r, hg_lo, c0, extra=(ag_lo,), shape=unsigned(16 + vbits + 1))
            s_hi = self._product(t, "rh_hi", r, hg_hi, c0, extra=(ag_hi,), shape=signed(pre_shape.width - 16))
            pre_sum = t.reg("pre_sum", Cat(s_lo[:16], s_hi + s_lo[16:]).as_signed(), t.cycle(s_lo) + 1,
                            pre_shape)
        else:
            p_lo = self._product(t, "rh_lo", r, hg_lo, c0)
            p_hi = self._product(t, "rh_hi", r, hg_hi, c0)
            c1 = t.cycle(p_lo)
            # The join only carries into the high product: (hi + (lo >> 16)) << 16 | lo[:16].
            rh_top = t.reg("rh_top", p_hi + (p_lo >> 16), c1 + 1, signed(self.acc_bits - 16 + vbits + 1))
            rh = Signal(signed(self.acc_bits + vbits + 1), name="rh")
            m.d.comb += rh.eq(Cat(t.at(p_lo, c1 + 1)[:16], rh_top))
            t.input(rh, c1 + 1)
            c2 = t.cycle(rh)
            ag_term = Signal(signed(self.acc_bits + sf), name="ag_term")
            m.d.comb += ag_term.eq(Cat(Const(1 << (sf - 1), sf), t.at(aag, c2)).as_signed())
            t.input(ag_term, c2)
            pre_sum = t.reg("pre_sum", rh + ag_term, c2 + 1, pre_shape)
        it = self._index(t, "it", pre_sum >> sf, t.cycle(pre_sum), f.tanh_lut_bits, f.tanh_lut_frac,
                         layer)
        tanh = Memory(shape=signed(f.tanh_value_bits), depth=1 << f.tanh_lut_bits,
                      init=[int(v) for v in F.tanh_table(f)])
        m.submodules.tanh = tanh
        rt = tanh.read_port()
        m.d.comb += [rt.addr.eq(it), rt.en.eq(1)]
        if logic:
            g = t.input(rt.data, t.cycle(it) + 1)
        else:
            g = t.reg("g", rt.data, t.cycle(it) + 2)
        # Both memories are written on the falling edge, from registers: a write port on the
        # read port's own edge would make synthesis build read-first collision logic around the
        # block RAM (about 40 FF and 28 LUT per memory on the iCE40), and no address is ever
        # read and written in one cycle here (a neuron comes again only after ``latency``).
        falling_edge_domain(m, "unit_wr")
        states = Memory(shape=state, depth=self.depth, init=[])
        thetas = Memory(shape=state, depth=self.depth, init=[])
        m.submodules.states, m.submodules.thetas = states, thetas
        rc, wc = states.read_port(), states.write_port(domain="unit_wr")
        rth, wth = thetas.read_port(), thetas.write_port(domain="unit_wr")
        # The cell state, read so that it arrives with g: address in cycle(g) - 2.
        c3 = t.cycle(g)
        m.d.comb += [rc.addr.eq(t.at(neuron, c3 - 2)), rc.en.eq(1)]
        c_old = t.reg("c_old", Mux(t.at(fresh, c3 - 1), 0, rc.data), c3)
        # d = c - g', g' = g << g_align; then z * d + (g' << sf) + 1/2 = z * c + (ONE - z) * g' + 1/2.
        gs = Signal(signed(f.state_bits + 1), name="gs")
        m.d.comb += gs.eq(g << f.g_align)
        t.input(gs, c3)
        # |g'| <= 2**state_frac <= 2**(state_bits-1) (the table's range), so d fits state_bits + 1
        # (the DSP build keeps the bit: its multiplier is 18 x 18 anyway).
        d = t.reg("d", c_old - gs, c3 + 1, signed(f.state_bits + (1 if logic else 2)))
        blend_shape = signed(f.state_bits + vbits + 4)
        if logic:
            # z is read late (its index carried, not its value), straight into the rows. The
            # code's top term e * d, where z = e * ONE + (the digits), and g' << sf share a
            # weight, so they are one mux: e * d + g' = (c if e else g'). The blend is then the
            # tree's sum, with + 1/2 in the bits under that term.
            m.d.comb += rz.addr.eq(t.at(iz, c3))
            z = t.input(rz.data, c3 + 1)
            c_mux, gs_mux = t.at(c_old, c3 + 1), t.at(gs, c3 + 1)
            blend = self._product(t, "blend", z, d, c3 + 1, low_const=1 << (sf - 1), shape=blend_shape,
                                  high=(lambda e: Mux(e, c_mux, gs_mux), f.state_min, f.state_max))
        else:
            m.d.comb += rz.addr.eq(iz)
            z = t.at(t.reg("z", rz.data, t.cycle(iz) + 2), c3 + 1)
            zd = self._product(t, "zd", z, d, c3 + 1)
            c4 = t.cycle(zd)
            gs_term = Signal(signed(f.state_bits + 1 + sf), name="gs_term")
            m.d.comb += gs_term.eq(Cat(Const(1 << (sf - 1), sf), t.at(gs, c4)).as_signed())
            t.input(gs_term, c4)
            blend = self._add_above(t, "blend", zd, gs_term, sf - 1, c4, blend_shape)
        # c~ = saturate(blend >> sf): in range iff every bit from state_bits-1 up equals the sign
        # (LUTs, not a comparator's carry chain). theta read so that it arrives with c~.
        shifted = blend[sf:]
        top = shifted[f.state_bits - 1:]
        in_range = (top == 0) | (top == (1 << len(top)) - 1)
        cand = t.reg("cand", Mux(in_range, shifted[:f.state_bits], Mux(shifted[-1], f.state_min, f.state_max)),
                     t.cycle(blend) + 1, state)
        c5 = t.cycle(cand)
        # The thresholds are stored inverted (~theta), so that both carry chains below start at
        # a register (in logic the block RAM's own; ECP5's is slow and gets one in the fabric):
        # c~ + ~theta = c~ - theta - 1 >= 0 iff c~ > theta, and c~ - theta beside it.
        m.d.comb += [rth.addr.eq(t.at(neuron, c5 - 1 - int(not logic))), rth.en.eq(1)]
        ntheta = t.input(rth.data, c5) if logic else t.reg("ntheta", rth.data, c5)
        fire = t.reg("fire", ~(cand + ntheta)[-1], c5 + 1, unsigned(1))
        diff = t.reg("diff", cand + ntheta + 1, c5 + 1, state)
        c6 = c5 + 1
        cand6 = t.at(cand, c6)
        valid6, neuron6 = t.at(valid, c6), t.at(neuron, c6)
        # The outputs, from the registers of cycle c6 (o_y through one mux); the write-back's
        # address, data and enable registered (the load port's when no neuron is there), and
        # written on the falling edge of the next cycle.
        m.d.comb += [self.o_valid.eq(valid6), self.o_neuron.eq(neuron6), self.o_candidate.eq(cand6),
                     self.o_fire.eq(fire), self.o_y.eq(Mux(fire, cand6, 0))]
        w_en = Signal(name="wb_en")
        w_addr = Signal.like(self.load_addr, name="wb_addr", reset_less=True)
        w_data = Signal(state, name="wb_data", reset_less=True)
        th_en = Signal(name="th_en")
        th_addr = Signal.like(self.load_addr, name="th_addr", reset_less=True)
        th_data = Signal(state, name="th_data", reset_less=True)
        m.d.sync += [w_en.eq(valid6 | (self.load_en & ~self.load_theta)),
                     w_addr.eq(Mux(valid6, neuron6, self.load_addr)),
                     w_data.eq(Mux(valid6, Mux(fire, diff, cand6), self.load_data)),
                     th_en.eq(self.load_en & self.load_theta), th_addr.eq(self.load_addr),
                     th_data.eq(~self.load_data)]
        m.d.comb += [wc.en.eq(w_en), wc.addr.eq(w_addr), wc.data.eq(w_data),
                     wth.en.eq(th_en), wth.addr.eq(th_addr), wth.data.eq(th_data)]
        # What was built is what _schedule counts: inputs in cycle -1 (before u0), outputs in
        # c6; ag and hg are registered in the cycles they are used in (no delays).
        assert c6 + 1 == self.latency, (c6, self.latency)
        assert not any(key[0] in (id(aag), id(ahg)) for key in t._delayed), "ag or hg rides the pipeline"
        return m
