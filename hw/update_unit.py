"""The neuron update of the golden model (quantize/golden.py), one neuron per cycle, shared by lanes.

One unit serves many lanes (docs/core-v2.md, "Update units"). It takes a neuron's four
accumulators, reads its cell state and threshold from memories it owns, and a fixed number of
cycles later emits the new event and writes the new state. Every stage is at most one carry
chain or one table read; every table read and every multiplier output lands in a register.

In order: the sigmoid indices of acc_z and acc_r and two reads of one table; r * acc_hg as two
products of 16-bit halves, joined; + (acc_ag << sigmoid_frac) + 1/2 (pre_g); the tanh index and
read; the cell state read, d = c - (g << g_align); z * d + (g' << sigmoid_frac) + 1/2; saturation
(c~) and the threshold read; fire = c~ > theta; y and the new state. ``multipliers="dsp"`` puts each
product between two registers for a DSP to absorb (18 cycles in all); ``"logic"`` builds them as
shift-and-add trees and splits adds longer than 24 bits over two stages (24 cycles), for the
iCE40, whose DSPs are all the lanes'. :class:`~hw.pipeline.Timeline` keeps the stages aligned.

The accumulator grid (``acc_frac``) is fixed per build, so the table-index shifts are wiring.
A unit shared by layers on different grids takes one ``acc_frac`` per layer and an ``i_layer``
input: each index is then a mux of as many shifts as there are grids.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from egru_accel.quantize import formats as F
from egru_accel.quantize.formats import NumberFormats

from .construct import checked_construction
from .mac_lane import _positive
from .pipeline import Timeline, shift_add_product, split_add

__all__ = ["UpdateUnit", "MULTIPLIERS"]

#: ``"dsp"``: ``*`` between registers, for a DSP block to absorb (ECP5's MULT18X18D);
#: ``"logic"``: shift-and-add trees and adds split to short carry chains (the iCE40, whose DSPs
#: are all the lanes').
MULTIPLIERS = ("dsp", "logic")


class UpdateUnit(wiring.Component):
    """``depth`` neurons' cell states and thresholds; one neuron update per cycle.

    Inputs, cycle t: ``i_valid``, ``i_neuron`` (which of the ``depth``), the accumulators
    ``i_acc_z``, ``i_acc_r``, ``i_acc_ag``, ``i_acc_hg`` (signed ``acc_bits``, on the grid
    ``2**-acc_frac``; with several grids, ``i_layer`` picks the grid of ``acc_frac[i_layer]``). Outputs, cycle t + ``latency``: ``o_valid``, ``o_neuron``,
    ``o_candidate`` (c~), ``o_fire``, ``o_y`` (the event value, 0 when silent); the cell state is
    written back one cycle before. A neuron's state is read in the middle of the pipeline and
    written at its end, so a neuron may come again only after ``latency`` cycles (a sweep visits
    each once). ``i_fresh`` takes the neuron's cell state as 0 (the first step of a sequence), so
    no sweep has to clear the states. ``load_*`` writes a threshold (``load_theta``) or a cell state
    while no update runs (loading a model, clearing the states).
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
            self.latency = self._latency()
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

    def _latency(self) -> int:
        """Cycles from the inputs to the outputs (the same count :meth:`elaborate` builds)."""
        vbits = self.formats.sigmoid_value_bits
        logic = self.multipliers == "logic"
        product = (vbits - 1).bit_length() if logic else 2      # tree levels, or a DSP's two registers
        def add(width):
            return 2 if logic and width > 24 else 1
        z_r = 3                                                  # inputs, index, table read + register
        rh = z_r + product + 1                                   # the halves, then the join
        g = rh + add(self.acc_bits + vbits + 2) + 1 + 2          # pre_g, index, table read + register
        zd = g + 1 + product                                     # d, then z * d
        cand = zd + add(self.formats.state_bits + vbits + 4) + 1
        return cand + 1 + 2                                      # fire; the output registers

    def _index(self, t, name, pre, cycle, lut_bits, lut_frac, layer):
        """``F.lut_index``: ``clamp((pre >> (acc_frac - lut_frac)) + 2**(lut_bits-1), 0, 2**lut_bits-1)``,
        registered (valid in ``cycle + 1``)."""
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
        in_range = (top == 0) | (top == (1 << len(top)) - 1)
        return t.reg(name, Mux(in_range, shifted[:lut_bits] ^ half, Mux(shifted[-1], 0, (1 << lut_bits) - 1)),
                     cycle + 1, unsigned(lut_bits))

    def _product(self, t, name, a, b, cycle):
        """``a * b`` (valid in ``cycle``): a DSP (registered twice) or a shift-and-add tree."""
        if self.multipliers == "logic":
            return shift_add_product(t, name, a, b, cycle)
        p = t.reg(f"{name}_p", a * b, cycle + 1)
        return t.reg(name, p, cycle + 2)

    def _add(self, t, name, a, b, cycle, shape):
        """``a + b`` (valid in ``cycle``): one stage, or two when the carry chain is long and in logic."""
        if self.multipliers == "logic" and Shape.cast(shape).width > 24:
            return split_add(t, name, a, b, cycle, shape)
        return t.reg(name, a + b, cycle + 1, shape)

    def elaborate(self, platform):
        m = Module()
        t = Timeline(m)
        f = self.formats
        sf = f.sigmoid_frac
        acc = signed(self.acc_bits)
        state = signed(f.state_bits)
        vbits = f.sigmoid_value_bits

        # cycle 0: the inputs, registered.
        valid = t.reg("u0_valid", self.i_valid, 0)
        neuron = t.reg("u0_neuron", self.i_neuron, 0)
        layer = t.reg("u0_layer", self.i_layer, 0)
        fresh = t.reg("u0_fresh", self.i_fresh, 0)
        az, ar, aag, ahg = (t.reg(f"u0_{k}", getattr(self, f"i_acc_{k}"), 0, acc) for k in ("z", "r", "ag", "hg"))
        # Sigmoid indices, then two reads of one table; z and r registered out of the block RAM.
        iz = self._index(t, "iz", az, 0, f.sigmoid_lut_bits, f.sigmoid_lut_frac, layer)
        ir = self._index(t, "ir", ar, 0, f.sigmoid_lut_bits, f.sigmoid_lut_frac, layer)
        sig = Memory(shape=unsigned(vbits), depth=1 << f.sigmoid_lut_bits,
                     init=[int(v) for v in F.sigmoid_table(f)])
        m.submodules.sigmoid = sig
        rz, rr = sig.read_port(), sig.read_port()
        m.d.comb += [rz.addr.eq(iz), rr.addr.eq(ir), rz.en.eq(1), rr.en.eq(1)]
        z = t.reg("z", rz.data, t.cycle(iz) + 2)
        r = t.reg("r", rr.data, t.cycle(ir) + 2)
        # r * acc_hg as two products of 16-bit halves, joined: r * hg = (r * hi) << 16 + r * lo.
        c0 = t.cycle(r)
        hg = t.at(ahg, c0)
        hg_lo = Signal(unsigned(16), name="hg_lo")
        hg_hi = Signal(signed(self.acc_bits - 16), name="hg_hi")
        m.d.comb += [hg_lo.eq(hg[:16]), hg_hi.eq(hg[16:].as_signed())]
        t.input(hg_lo, c0)
        t.input(hg_hi, c0)
        p_lo = self._product(t, "rh_lo", r, hg_lo, c0)
        p_hi = self._product(t, "rh_hi", r, hg_hi, c0)
        # The join only carries into the high product: (hi + (lo >> 16)) << 16 | lo[:16].
        c1 = t.cycle(p_lo)
        rh_top = t.reg("rh_top", p_hi + (p_lo >> 16), c1 + 1, signed(self.acc_bits - 16 + vbits + 1))
        rh = Signal(signed(self.acc_bits + vbits + 1), name="rh")
        m.d.comb += rh.eq(Cat(t.at(p_lo, c1 + 1)[:16], rh_top))
        t.input(rh, c1 + 1)
        # pre_g * 2**sf + 1/2 = r * hg + (ag << sf) + 1/2 ((ag << sf) has sf zero low bits).
        c2 = t.cycle(rh)
        ag_term = Signal(signed(self.acc_bits + sf), name="ag_term")
        m.d.comb += ag_term.eq(Cat(Const(1 << (sf - 1), sf), t.at(aag, c2)).as_signed())
        t.input(ag_term, c2)
        pre_sum = self._add(t, "pre_sum", rh, ag_term, c2, signed(self.acc_bits + vbits + 2))
        it = self._index(t, "it", pre_sum >> sf, t.cycle(pre_sum), f.tanh_lut_bits, f.tanh_lut_frac,
                         layer)
        tanh = Memory(shape=signed(f.tanh_value_bits), depth=1 << f.tanh_lut_bits,
                      init=[int(v) for v in F.tanh_table(f)])
        m.submodules.tanh = tanh
        rt = tanh.read_port()
        m.d.comb += [rt.addr.eq(it), rt.en.eq(1)]
        g = t.reg("g", rt.data, t.cycle(it) + 2)
        # The cell state, read so that it arrives with g: address in cycle(g) - 2.
        states = Memory(shape=state, depth=self.depth, init=[])
        thetas = Memory(shape=state, depth=self.depth, init=[])
        m.submodules.states, m.submodules.thetas = states, thetas
        rc, wc = states.read_port(), states.write_port()
        rth, wth = thetas.read_port(), thetas.write_port()
        c3 = t.cycle(g)
        m.d.comb += [rc.addr.eq(t.at(neuron, c3 - 2)), rc.en.eq(1)]
        c_old = t.reg("c_old", Mux(t.at(fresh, c3 - 1), 0, rc.data), c3)
        # d = c - g', g' = g << g_align; then z * d + (g' << sf) + 1/2 = z * c + (ONE - z) * g' + 1/2.
        gs = Signal(signed(f.state_bits + 1), name="gs")
        m.d.comb += gs.eq(g << f.g_align)
        t.input(gs, c3)
        d = t.reg("d", c_old - gs, c3 + 1, signed(f.state_bits + 2))
        zd = self._product(t, "zd", t.at(z, c3 + 1), d, c3 + 1)
        c4 = t.cycle(zd)
        gs_term = Signal(signed(f.state_bits + 1 + sf), name="gs_term")
        m.d.comb += gs_term.eq(Cat(Const(1 << (sf - 1), sf), t.at(gs, c4)).as_signed())
        t.input(gs_term, c4)
        blend = self._add(t, "blend", zd, gs_term, c4, signed(f.state_bits + vbits + 4))
        # c~ = saturate(blend >> sf); theta read so that it arrives with c~.
        shifted = blend >> sf
        cand = t.reg("cand", Mux(shifted > f.state_max, f.state_max,
                                 Mux(shifted < f.state_min, f.state_min, shifted)), t.cycle(blend) + 1, state)
        c5 = t.cycle(cand)
        m.d.comb += [rth.addr.eq(t.at(neuron, c5 - 2)), rth.en.eq(1)]
        theta = t.reg("theta", rth.data, c5)
        fire = t.reg("fire", cand > theta, c5 + 1, unsigned(1))
        c6 = c5 + 1
        cand6, theta6 = t.at(cand, c6), t.at(theta, c6)
        valid6, neuron6 = t.at(valid, c6), t.at(neuron, c6)
        # The outputs registered; the new state written back in the same cycle.
        new_c = Signal(state)
        m.d.comb += new_c.eq(cand6 - Mux(fire, theta6, 0))
        m.d.sync += [self.o_valid.eq(valid6), self.o_neuron.eq(neuron6), self.o_candidate.eq(cand6),
                     self.o_fire.eq(fire), self.o_y.eq(Mux(fire, cand6, 0))]
        m.d.comb += [wc.en.eq(valid6 | (self.load_en & ~self.load_theta)),
                     wc.addr.eq(Mux(valid6, neuron6, self.load_addr)),
                     wc.data.eq(Mux(valid6, new_c, self.load_data)),
                     wth.en.eq(self.load_en & self.load_theta), wth.addr.eq(self.load_addr),
                     wth.data.eq(self.load_data)]
        # Latency check: inputs in cycle -1 (before u0), outputs one cycle after c6.
        assert c6 + 2 == self.latency, (c6, self.latency)      # _latency counts what was built
        return m
