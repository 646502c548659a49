"""The neuron update of the golden model (quantize/golden.py), one neuron per cycle, shared by lanes.

One unit serves many lanes (docs/core-v2.md, "Update units"). It takes a neuron's four
accumulators, reads its cell state and threshold from memories it owns, and a fixed number of
cycles later emits the new event and writes the new state. Every stage is at most one carry
chain or one table read; every table read and every multiplier output lands in a register.

Stages (signal prefixes)::

    u0  inputs registered
    u1  sigmoid indices of acc_z and acc_r (a constant shift, offset and clamp)
    u2  sigmoid table reads (block RAM, two ports)        u3  z, r registered
    u4  r * acc_hg as two half-width products             u5  the halves joined
    u6  + 1/2 for the rounding; acc_ag << sigmoid_frac added in the same carry chain
    u7  pre_g; tanh index                                 u8  tanh table read
    u9  g registered; the cell state read                 u10 d = c - (g << g_align)
    u11 z * d                                             u12 the product registered again
    u13 + (g << g_align << sigmoid_frac) + 1/2            u14 c~ = saturate(>> sigmoid_frac); theta read
    u15 fire = c~ > theta                                 u16 y and the new c (written back)

The accumulator grid (``acc_frac``) is fixed per build, so the table-index shifts are wiring.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from egru_accel.quantize import formats as F
from egru_accel.quantize.formats import NumberFormats

from .construct import checked_construction
from .mac_lane import _positive

__all__ = ["UpdateUnit"]


class UpdateUnit(wiring.Component):
    """``depth`` neurons' cell states and thresholds; one neuron update per cycle.

    Inputs, cycle t: ``i_valid``, ``i_neuron`` (which of the ``depth``), the accumulators
    ``i_acc_z``, ``i_acc_r``, ``i_acc_ag``, ``i_acc_hg`` (signed ``acc_bits``, on the grid
    ``2**-acc_frac``). Outputs, cycle t + ``LATENCY``: ``o_valid``, ``o_neuron``,
    ``o_candidate`` (c~), ``o_fire``, ``o_y`` (the event value, 0 when silent); the cell state is
    written back one cycle before. A neuron's state is read 8 cycles after its input and written
    17 cycles after, so a neuron may come again only after ``LATENCY`` cycles (a sweep visits
    each once). ``load_*`` writes a threshold (``load_theta``) or a cell state
    while no update runs (loading a model, clearing the states).
    """

    LATENCY = 18

    def __init__(self, *, formats: NumberFormats, acc_frac: int, depth: int, acc_bits: int = 32):
        with checked_construction(self):
            if not isinstance(formats, NumberFormats):
                raise TypeError(f"formats must be a NumberFormats, not {formats!r}")
            self.formats = formats
            self.acc_frac = _positive("acc_frac", acc_frac, 0)
            self.depth = _positive("depth", depth, 2)
            self.acc_bits = _positive("acc_bits", acc_bits, 2)
            for name, frac in (("sigmoid", formats.sigmoid_lut_frac), ("tanh", formats.tanh_lut_frac)):
                if acc_frac < frac:
                    raise ValueError(f"acc_frac ({acc_frac}) must be at least the {name} table's "
                                     f"index fraction ({frac})")
        f = formats
        addr = unsigned(max(1, (depth - 1).bit_length()))
        state = signed(f.state_bits)
        acc = signed(acc_bits)
        super().__init__({
            "i_valid": In(1), "i_neuron": In(addr),
            "i_acc_z": In(acc), "i_acc_r": In(acc), "i_acc_ag": In(acc), "i_acc_hg": In(acc),
            "o_valid": Out(1), "o_neuron": Out(addr), "o_candidate": Out(state), "o_fire": Out(1),
            "o_y": Out(state),
            "load_en": In(1), "load_theta": In(1), "load_addr": In(addr), "load_data": In(state),
        })

    def _index(self, m, name, pre, lut_bits, lut_frac):
        """``F.lut_index``: ``clamp((pre >> (acc_frac - lut_frac)) + 2**(lut_bits-1), 0, 2**lut_bits-1)``."""
        shifted = pre >> (self.acc_frac - lut_frac)            # arithmetic: wiring only
        half = 1 << (lut_bits - 1)
        # In range iff -half <= shifted < half, i.e. every bit from lut_bits-1 up equals the sign.
        top = shifted[lut_bits - 1:]
        in_range = (top == 0) | (top == (1 << len(top)) - 1)
        idx = Signal(lut_bits, name=name)
        m.d.sync += idx.eq(Mux(in_range, shifted[:lut_bits] ^ half, Mux(shifted[-1], 0, (1 << lut_bits) - 1)))
        return idx

    def elaborate(self, platform):
        m = Module()
        f = self.formats
        sf = f.sigmoid_frac
        acc = signed(self.acc_bits)
        addr_shape = self.i_neuron.shape()
        state = signed(f.state_bits)

        def delay(value, cycles, name):
            for k in range(cycles):
                reg = Signal.like(value, name=f"{name}_d{k + 1}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        # u0
        u0_valid, u0_neuron = Signal(), Signal(addr_shape)
        u0_z, u0_r, u0_ag, u0_hg = (Signal(acc, name=f"u0_{k}") for k in ("z", "r", "ag", "hg"))
        m.d.sync += [u0_valid.eq(self.i_valid), u0_neuron.eq(self.i_neuron), u0_z.eq(self.i_acc_z),
                     u0_r.eq(self.i_acc_r), u0_ag.eq(self.i_acc_ag), u0_hg.eq(self.i_acc_hg)]
        # u1: sigmoid indices (registered), ag and hg carried.
        u1_iz = self._index(m, "u1_iz", u0_z, f.sigmoid_lut_bits, f.sigmoid_lut_frac)
        u1_ir = self._index(m, "u1_ir", u0_r, f.sigmoid_lut_bits, f.sigmoid_lut_frac)
        # u2: table reads, two ports of one table.
        sig = Memory(shape=unsigned(f.sigmoid_value_bits), depth=1 << f.sigmoid_lut_bits,
                     init=[int(v) for v in F.sigmoid_table(f)])
        m.submodules.sigmoid = sig
        rz, rr = sig.read_port(), sig.read_port()
        m.d.comb += [rz.addr.eq(u1_iz), rr.addr.eq(u1_ir), rz.en.eq(1), rr.en.eq(1)]
        # u3: z, r registered (z waits for the blend at u11).
        u3_z, u3_r = Signal(unsigned(f.sigmoid_value_bits)), Signal(unsigned(f.sigmoid_value_bits))
        m.d.sync += [u3_z.eq(rz.data), u3_r.eq(rr.data)]
        u3_hg = delay(u0_hg, 3, "hg")
        # u4: r * acc_hg as two products of 16-bit halves (each one 18x18 multiplier on ECP5, a
        # narrower array in logic on the iCE40); u5: joined, hi << 16 + lo.
        u4_lo = Signal(unsigned(16 + f.sigmoid_value_bits), name="u4_rh_lo")
        u4_hi = Signal(signed(self.acc_bits - 16 + f.sigmoid_value_bits + 1), name="u4_rh_hi")
        m.d.sync += [u4_lo.eq(u3_r * u3_hg[:16]), u4_hi.eq(u3_r * u3_hg[16:].as_signed())]
        prod_rh = Signal(signed(self.acc_bits + f.sigmoid_value_bits + 1), name="u5_rh")
        m.d.sync += prod_rh.eq((u4_hi << 16) + u4_lo)
        u5_rh = prod_rh
        # u6: r * hg + (ag << sf) + 1/2 in one carry chain ((ag << sf) has sf zero low bits).
        u5_ag = delay(u0_ag, 5, "ag")
        u6_sum = Signal(signed(len(prod_rh) + 2), name="u6_sum")
        m.d.sync += u6_sum.eq(u5_rh + Cat(Const(1 << (sf - 1), sf), u5_ag).as_signed())
        # u7: pre_g = u6_sum >> sf; tanh index (registered).
        pre_g = (u6_sum >> sf)
        u7_it = self._index(m, "u7_it", pre_g, f.tanh_lut_bits, f.tanh_lut_frac)
        tanh = Memory(shape=signed(f.tanh_value_bits), depth=1 << f.tanh_lut_bits,
                      init=[int(v) for v in F.tanh_table(f)])
        m.submodules.tanh = tanh
        rt = tanh.read_port()
        m.d.comb += [rt.addr.eq(u7_it), rt.en.eq(1)]
        # u8 -> u9: g registered; the state read issued so that c arrives at u10.
        u9_g = Signal(signed(f.tanh_value_bits))
        m.d.sync += u9_g.eq(rt.data)
        states = Memory(shape=state, depth=self.depth, init=[])
        thetas = Memory(shape=state, depth=self.depth, init=[])
        m.submodules.states, m.submodules.thetas = states, thetas
        rc, wc = states.read_port(), states.write_port()
        rth, wth = thetas.read_port(), thetas.write_port()
        u8_neuron = delay(u0_neuron, 7, "neuron")
        m.d.comb += [rc.addr.eq(u8_neuron), rc.en.eq(1)]
        # u10: d = c - (g << g_align) (c read at u9, arriving now).
        u9_c = Signal(state)
        m.d.sync += u9_c.eq(rc.data)
        gs = Signal(signed(f.state_bits + 1), name="u10_gs")
        m.d.comb += gs.eq(u9_g << f.g_align)
        u10_d = Signal(signed(f.state_bits + 2))
        m.d.sync += u10_d.eq(u9_c - gs)
        u10_gs = delay(gs, 1, "gs")
        u10_z = delay(u3_z, 7, "z")
        # u11, u12: z * d.
        prod_zd = Signal(signed(len(u10_d) + f.sigmoid_value_bits + 1), name="u11_zd")
        m.d.sync += prod_zd.eq(u10_z * u10_d)
        u12_zd = delay(prod_zd, 1, "u12_zd")
        u12_gs = delay(u10_gs, 2, "gs_b")
        # u13: z * (c - g') + (g' << sf) + 1/2 = z * c + (ONE - z) * g' + 1/2.
        u13_sum = Signal(signed(len(prod_zd) + 2), name="u13_sum")
        m.d.sync += u13_sum.eq(u12_zd + Cat(Const(1 << (sf - 1), sf), u12_gs).as_signed())
        # u14: c~ = saturate(u13_sum >> sf); theta read so that it arrives at u15.
        shifted = u13_sum >> sf
        u14_cand = Signal(state)
        m.d.sync += u14_cand.eq(Mux(shifted > f.state_max, f.state_max,
                                    Mux(shifted < f.state_min, f.state_min, shifted)))
        u13_neuron = delay(u8_neuron, 6, "neuron_b")
        m.d.comb += [rth.addr.eq(u13_neuron), rth.en.eq(1)]
        # u15: fire = c~ > theta (theta read at u14).
        u15_theta = Signal(state)
        m.d.sync += u15_theta.eq(rth.data)
        u15_cand = delay(u14_cand, 1, "cand")
        u16_fire = Signal()
        u16_cand = Signal(state)
        u16_theta = Signal(state)
        m.d.sync += [u16_fire.eq(u15_cand > u15_theta), u16_cand.eq(u15_cand), u16_theta.eq(u15_theta)]
        # u16 -> outputs: y and c = c~ - fire * theta, registered; the state written back.
        u16_valid = delay(u0_valid, 16, "valid")
        u16_neuron = delay(u13_neuron, 3, "neuron_c")
        new_c = Signal(state)
        m.d.comb += new_c.eq(u16_cand - Mux(u16_fire, u16_theta, 0))
        m.d.sync += [self.o_valid.eq(u16_valid), self.o_neuron.eq(u16_neuron), self.o_candidate.eq(u16_cand),
                     self.o_fire.eq(u16_fire), self.o_y.eq(Mux(u16_fire, u16_cand, 0))]
        m.d.comb += [wc.en.eq(u16_valid | (self.load_en & ~self.load_theta)),
                     wc.addr.eq(Mux(u16_valid, u16_neuron, self.load_addr)),
                     wc.data.eq(Mux(u16_valid, new_c, self.load_data)),
                     wth.en.eq(self.load_en & self.load_theta), wth.addr.eq(self.load_addr),
                     wth.data.eq(self.load_data)]
        return m
