"""One lane of the event-driven EGRU core: its memories and its two pipelines.

Lane ``p`` owns neurons ``n = i * P + p`` (local index ``i``) of every layer and outputs
``o = i * P + p`` of the readout.

**Accumulate pipeline** (an event broadcast by the dispatcher; stages ``i_`` issue,
``m_`` multiply, ``a_`` accumulate)::

    i: weight read at i_addr (the lane's share of the event's row)
    m: decode value/gate/target, product = event value * weight, aligned onto the
       accumulator grid by the layer's constant shift; accumulator read at target
    a: accumulator + product written back (the read port is transparent for the
       write port, so back-to-back updates of one accumulator see each other)

**Update pipeline** (one local neuron per cycle; stages ``u0`` .. ``u4``)::

    u0: read accumulators z, r, ag, hg, the neuron's constants and cell state
    u1: add the start values (biases); clear the accumulators
    u1b: sigmoid table indices and reads for z and r
    u2: r * hg (registered)
    u2b: pre_g = ag + round(r * hg) (registered)
    u2c: tanh table index and read
    u3: c - g' (registered)
    u3b: c~ = g' + round(z * (c - g'))   (= round(z c + (1 - z) g'), one multiplier); saturate
    u4: threshold test, reset by subtraction, state write, event write into the event buffer
    (u0 .. u4 plus u1b, u2b, u2c and u3b: eight cycles from issue to write)

All arithmetic follows :mod:`quantize.golden` bit for bit.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Elaboratable, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.lib.memory import Memory

from egru_accel.quantize import formats as F
from egru_accel.quantize.lanes import lane_size
from egru_accel.quantize.memory import ACCUMULATORS, LOADABLE, MemoryId

from .spram import ICE40WeightRAM
from .params import CoreParams, KIND_INPUT, KIND_READOUT

__all__ = ["Lane", "UPDATE_LATENCY", "ACCUMULATE_LATENCY", "cfg_data_bits", "cfg_addr_shape"]

#: Cycles from an update issue (u0) to its state/event write (u4), and from a weight issue to its write.
UPDATE_LATENCY = 8
ACCUMULATE_LATENCY = 2

ACC_Z, ACC_R, ACC_AG, ACC_HG = 0, 1, 2, 3


def cfg_data_bits(layout) -> int:
    """Width of a run-time memory write's data: the widest loadable word."""
    return max(layout.word(m).width for m in LOADABLE)


def cfg_addr_shape(layout):
    """Shape of a run-time memory write's address: the deepest loadable memory."""
    return range(max(layout.depth(m) for m in LOADABLE))


def _lut_index(m, pre, shift: int, lut_bits: int, name: str):
    """Signal with ``clamp(floor(pre * 2**-shift) + 2**(lut_bits-1), 0, 2**lut_bits - 1)``."""
    half = 1 << (lut_bits - 1)
    scaled = Signal(signed(len(pre) + max(0, -shift) + 1), name=f"{name}_scaled")
    m.d.comb += scaled.eq(pre >> shift if shift >= 0 else pre << -shift)
    idx = Signal(lut_bits, name=f"{name}_idx")
    with m.If(scaled < -half):
        m.d.comb += idx.eq(0)
    with m.Elif(scaled >= half):
        m.d.comb += idx.eq((1 << lut_bits) - 1)
    with m.Else():
        m.d.comb += idx.eq(scaled + half)
    return idx


class Lane(Elaboratable):
    """Lane ``index`` of a core described by ``params`` (see module docstring).

    The core drives the inputs below and reads the outputs; all are plain signals.
    """

    def __init__(self, params: CoreParams, index: int):
        self.params = params
        self.index = index
        p, fmt = params.layout, params.formats
        layer_bits = max(1, (p.n_layers - 1).bit_length())
        # -- dispatcher side: row pointers and weight issue
        self.ptr_addr = Signal(range(max(2, p.rows)))
        self.ptr_en = Signal()
        self.ptr_start = Signal(p.addr_bits)
        self.ptr_len = Signal(p.len_bits)
        self.load = Signal()         # load ptr_start/ptr_len as the next event's share
        self.advance = Signal()      # the issue stage runs this cycle
        self.ev_value = Signal(signed(p.value_bits))
        self.ev_kind = Signal(2)
        self.ev_layer = Signal(layer_bits)
        self.busy = Signal()         # entries still to issue or in flight
        # -- update sweep
        self.upd_valid = Signal()
        self.upd_index = Signal(range(max(2, p.acc_depth)))
        self.upd_layer = Signal(layer_bits)
        self.upd_first = Signal()    # first step of a sequence: c_{t-1} = 0
        self.upd_region = Signal(range(max(2, p.evb_depth)))  # event-buffer base for this layer and parity
        self.upd_start = Signal()    # clear the event count before a sweep
        self.upd_mode = Signal()     # accumulator read ports follow the sweep
        self.ev_count = Signal(range(p.acc_depth + 1))
        # -- event-buffer read (dispatcher) and readout output
        self.evb_addr = Signal(range(max(2, p.evb_depth)))
        self.evb_en = Signal()
        self.evb_local = Signal(p.local_bits)
        self.evb_value = Signal(signed(fmt.state_bits))
        self.out_mode = Signal()
        self.out_addr = Signal(range(max(2, p.readout_local)))
        self.out_en = Signal()
        self.out_value = Signal(signed(p.readout_bits))  # accumulator + bias
        self.out_clear = Signal()
        self.out_clear_addr = Signal.like(self.out_addr)
        # -- clearing after reset
        self.clr_valid = Signal()
        self.clr_index = Signal(range(max(2, max(p.acc_depth, p.readout_local))))
        # -- run-time memory writes
        self.cfg_we = Signal()
        self.cfg_mem = Signal(range(len(LOADABLE)))
        self.cfg_addr = Signal(cfg_addr_shape(p))
        self.cfg_data = Signal(cfg_data_bits(p))
        # -- debug: every neuron update
        self.dbg_valid = Signal()
        self.dbg_layer = Signal(layer_bits)
        self.dbg_neuron = Signal(range(max(2, max(p.hidden))))
        self.dbg_candidate = Signal(signed(fmt.state_bits))
        self.dbg_fire = Signal()
        self.dbg_state = Signal(signed(fmt.state_bits))

    def elaborate(self, platform):
        m = Module()
        params, lane = self.params, self.index
        p, fmt, P = params.layout, params.formats, params.lanes
        A, S = p.acc_bits, fmt.state_bits

        def memory(mem_id, init=()):
            """Memory ``mem_id`` as the layout defines it (raw words; fields through views)."""
            mem = Memory(shape=unsigned(p.word(mem_id).width), depth=p.depth(mem_id), init=list(init))
            m.submodules[mem_id.label] = mem
            return mem

        def view(mem_id, value):
            """The fields of a word of memory ``mem_id`` (its one definition, quantize.memory)."""
            return data.View(p.word(mem_id).struct_layout(), value)

        def loadable(mem_id):
            """A memory that starts from the image and takes run-time writes from ``cfg``;
            returns its read port."""
            mem = memory(mem_id, params.words(mem_id, lane))
            wr = mem.write_port()
            m.d.comb += [wr.addr.eq(self.cfg_addr), wr.data.eq(self.cfg_data),
                         wr.en.eq(self.cfg_we & (self.cfg_mem == mem_id))]
            return mem.read_port()

        # -- memories ------------------------------------------------------------------------
        if params.config.weight_ram == "ice40_spram":
            w_rd = m.submodules.weights = ICE40WeightRAM(width=p.word(MemoryId.WEIGHTS).width,
                                                         depth=p.depth(MemoryId.WEIGHTS))
            m.d.comb += [w_rd.w_addr.eq(self.cfg_addr), w_rd.w_data.eq(self.cfg_data),
                         w_rd.w_en.eq(self.cfg_we & (self.cfg_mem == MemoryId.WEIGHTS))]
        else:
            w_rd = loadable(MemoryId.WEIGHTS)
        ptr_rd = loadable(MemoryId.ROW_PTR)
        const_rd = loadable(MemoryId.CONSTS)
        rob_rd = loadable(MemoryId.READOUT_BIAS)
        state_mem = memory(MemoryId.STATE)
        state_wr = state_mem.write_port()
        state_rd = state_mem.read_port()
        evb_mem = memory(MemoryId.EVENTS)
        evb_wr = evb_mem.write_port()
        evb_rd = evb_mem.read_port()
        acc_wr, acc_rd = [], []
        for mem_id in ACCUMULATORS:
            mem = memory(mem_id)
            wr = mem.write_port()
            acc_wr.append(wr)
            acc_rd.append(mem.read_port(transparent_for=(wr,)))
        ro_mem = memory(MemoryId.READOUT_ACC)
        ro_wr = ro_mem.write_port()
        ro_rd = ro_mem.read_port(transparent_for=(ro_wr,))
        sig_mem = memory(MemoryId.SIGMOID, p.word(MemoryId.SIGMOID).pack(entry=F.sigmoid_table(fmt)).tolist())
        sig_rd = [sig_mem.read_port(), sig_mem.read_port()]
        tanh_mem = memory(MemoryId.TANH, p.word(MemoryId.TANH).pack(entry=F.tanh_table(fmt)).tolist())
        tanh_rd = tanh_mem.read_port()
        acc_data = [view(mem_id, rd.data).acc for mem_id, rd in zip(ACCUMULATORS, acc_rd)]
        ro_data = view(MemoryId.READOUT_ACC, ro_rd.data).acc

        # -- row pointers and issue ------------------------------------------------------------
        ptr = view(MemoryId.ROW_PTR, ptr_rd.data)
        m.d.comb += [ptr_rd.addr.eq(self.ptr_addr), ptr_rd.en.eq(self.ptr_en),
                     self.ptr_start.eq(ptr.start), self.ptr_len.eq(ptr.length)]
        i_addr = Signal(p.addr_bits)
        i_rem = Signal(p.len_bits)
        i_issue = Signal()
        m.d.comb += [i_issue.eq(self.advance & (i_rem != 0)), w_rd.addr.eq(i_addr)]
        with m.If(self.load):
            m.d.sync += [i_addr.eq(self.ptr_start), i_rem.eq(self.ptr_len)]
        with m.Elif(i_issue):
            m.d.sync += [i_addr.eq(i_addr + 1), i_rem.eq(i_rem - 1)]

        # -- multiply stage --------------------------------------------------------------------
        m_valid = Signal()
        m_value = Signal.like(self.ev_value)
        m_kind = Signal.like(self.ev_kind)
        m_layer = Signal.like(self.ev_layer)
        m.d.sync += [m_valid.eq(i_issue), m_value.eq(self.ev_value), m_kind.eq(self.ev_kind),
                     m_layer.eq(self.ev_layer)]
        entry = view(MemoryId.WEIGHTS, w_rd.data)
        m_weight, m_gate, m_target = entry.value, entry.gate, entry.target
        m_product = Signal(signed(p.value_bits + fmt.weight_bits))
        m.d.comb += m_product.eq(m_value * m_weight)
        max_align = max([0] + [s for l in range(p.n_layers) for s in p.input_align[l] + p.recurrent_align[l]])
        m_addend = Signal(signed(len(m_product) + max_align))
        m_sel = Signal(3)   # 0..3: accumulators z, r, ag, hg; 4: readout
        with m.If(m_kind == KIND_READOUT):
            m.d.comb += [m_sel.eq(4), m_addend.eq(m_product)]
        with m.Else():
            with m.Switch(m_gate):
                for gate in range(3):
                    with m.Case(gate):
                        if gate < 2:
                            m.d.comb += m_sel.eq(gate)
                        else:
                            m.d.comb += m_sel.eq(Mux(m_kind == KIND_INPUT, ACC_AG, ACC_HG))
                        with m.Switch(Cat(m_kind == KIND_INPUT, m_layer)):
                            for l in range(p.n_layers):
                                for is_input in (0, 1):
                                    shift = (p.input_align if is_input else p.recurrent_align)[l][gate]
                                    with m.Case(is_input | (l << 1)):
                                        m.d.comb += m_addend.eq(m_product << shift)

        # -- accumulate stage ------------------------------------------------------------------
        a_valid = Signal()
        a_sel = Signal(3)
        a_target = Signal(p.target_bits)
        a_addend = Signal.like(m_addend)
        m.d.sync += [a_valid.eq(m_valid), a_sel.eq(m_sel), a_target.eq(m_target), a_addend.eq(m_addend)]
        a_current = Signal(signed(max(A, p.readout_bits)))
        with m.Switch(a_sel):
            for k in range(4):
                with m.Case(k):
                    m.d.comb += a_current.eq(acc_data[k])
            with m.Default():
                m.d.comb += a_current.eq(ro_data)
        a_sum = Signal(signed(max(A, p.readout_bits) + 1))
        m.d.comb += a_sum.eq(a_current + a_addend)
        m.d.comb += self.busy.eq((i_rem != 0) | m_valid | a_valid)

        # -- update sweep ----------------------------------------------------------------------
        counts = [lane_size(p.hidden[l], P, lane) for l in range(p.n_layers)]
        u0_valid = Signal()
        u0_const_addr = Signal.like(self.cfg_addr)
        with m.Switch(self.upd_layer):
            for l in range(p.n_layers):
                with m.Case(l):
                    m.d.comb += [u0_valid.eq(self.upd_valid & (self.upd_index < counts[l])),
                                 u0_const_addr.eq(p.const_base[l] + self.upd_index)]
        m.d.comb += [const_rd.addr.eq(u0_const_addr), state_rd.addr.eq(u0_const_addr)]

        u1_valid, u1_index = Signal(), Signal.like(self.upd_index)
        u1_layer, u1_first = Signal.like(self.upd_layer), Signal()
        u1_region, u1_state_addr = Signal.like(self.upd_region), Signal.like(u0_const_addr)
        m.d.sync += [u1_valid.eq(u0_valid), u1_index.eq(self.upd_index), u1_layer.eq(self.upd_layer),
                     u1_first.eq(self.upd_first), u1_region.eq(self.upd_region),
                     u1_state_addr.eq(u0_const_addr)]
        const = view(MemoryId.CONSTS, const_rd.data)
        u1_init = [const.init_z, const.init_r, const.init_ag, const.init_hg]
        u1_theta = const.theta
        u1_pre = [Signal(signed(p.pre_bits), name=f"u1_pre_{n}") for n in ("z", "r", "ag", "hg")]
        for k in range(4):
            m.d.comb += u1_pre[k].eq(acc_data[k] + u1_init[k])
        u1_c = Signal(signed(S))
        m.d.comb += u1_c.eq(Mux(u1_first, 0, view(MemoryId.STATE, state_rd.data).c))
        # u1 only adds (accumulator + start value -> register); the table indices (a shift,
        # an add and a clamp) follow in u1b, which keeps both stages short on an iCE40.
        u1b_valid, u1b_index, u1b_layer = Signal(), Signal.like(u1_index), Signal.like(u1_layer)
        u1b_region, u1b_state_addr = Signal.like(u1_region), Signal.like(u1_state_addr)
        u1b_pre = [Signal(signed(p.pre_bits), name=f"u1b_pre_{n}") for n in ("z", "r", "ag", "hg")]
        u1b_theta, u1b_c = Signal(S), Signal(signed(S))
        m.d.sync += [u1b_valid.eq(u1_valid), u1b_index.eq(u1_index), u1b_layer.eq(u1_layer),
                     u1b_region.eq(u1_region), u1b_state_addr.eq(u1_state_addr),
                     u1b_theta.eq(u1_theta), u1b_c.eq(u1_c)]
        m.d.sync += [u1b_pre[k].eq(u1_pre[k]) for k in range(4)]
        idx_z = Signal(fmt.sigmoid_lut_bits)
        idx_r = Signal(fmt.sigmoid_lut_bits)
        with m.Switch(u1b_layer):
            for l in range(p.n_layers):
                with m.Case(l):
                    shift = p.acc_frac[l] - fmt.sigmoid_lut_frac
                    m.d.comb += [idx_z.eq(_lut_index(m, u1b_pre[ACC_Z], shift, fmt.sigmoid_lut_bits, f"z{l}")),
                                 idx_r.eq(_lut_index(m, u1b_pre[ACC_R], shift, fmt.sigmoid_lut_bits, f"r{l}"))]
        m.d.comb += [sig_rd[0].addr.eq(idx_z), sig_rd[1].addr.eq(idx_r)]

        u2_valid, u2_index, u2_layer = Signal(), Signal.like(u1b_index), Signal.like(u1b_layer)
        u2_region, u2_state_addr = Signal.like(u1b_region), Signal.like(u1b_state_addr)
        u2_ag, u2_hg = Signal(signed(p.pre_bits)), Signal(signed(p.pre_bits))
        u2_theta, u2_c = Signal(S), Signal(signed(S))
        m.d.sync += [u2_valid.eq(u1b_valid), u2_index.eq(u1b_index), u2_layer.eq(u1b_layer),
                     u2_region.eq(u1b_region), u2_state_addr.eq(u1b_state_addr),
                     u2_ag.eq(u1b_pre[ACC_AG]), u2_hg.eq(u1b_pre[ACC_HG]), u2_theta.eq(u1b_theta),
                     u2_c.eq(u1b_c)]
        fs = fmt.sigmoid_frac
        u2_z, u2_r = (view(MemoryId.SIGMOID, rd.data).entry for rd in sig_rd)
        # u2 only multiplies (table output -> r * hg -> register); the rounding, the add and
        # the tanh index follow in u2b, which keeps both stages short.
        u2b_valid, u2b_index, u2b_layer = Signal(), Signal.like(u2_index), Signal.like(u2_layer)
        u2b_region, u2b_state_addr = Signal.like(u2_region), Signal.like(u2_state_addr)
        u2b_ag, u2b_rhg = Signal(signed(p.pre_bits)), Signal(signed(p.pre_bits + fs + 2))
        u2b_z, u2b_theta, u2b_c = Signal(fs + 1), Signal(S), Signal(signed(S))
        m.d.sync += [u2b_valid.eq(u2_valid), u2b_index.eq(u2_index), u2b_layer.eq(u2_layer),
                     u2b_region.eq(u2_region), u2b_state_addr.eq(u2_state_addr), u2b_ag.eq(u2_ag),
                     u2b_rhg.eq(u2_r * u2_hg), u2b_z.eq(u2_z), u2b_theta.eq(u2_theta), u2b_c.eq(u2_c)]
        u2b_rh = Signal(signed(p.pre_bits + 2))
        m.d.comb += u2b_rh.eq((u2b_rhg + (1 << (fs - 1))) >> fs)
        u2b_pre_g = Signal(signed(p.pre_bits + 1))
        m.d.comb += u2b_pre_g.eq(u2b_ag + u2b_rh)
        # u2b ends at a register (the rounding and the add); the tanh index and table read
        # follow in u2c.
        u2c_valid, u2c_index, u2c_layer = Signal(), Signal.like(u2b_index), Signal.like(u2b_layer)
        u2c_region, u2c_state_addr = Signal.like(u2b_region), Signal.like(u2b_state_addr)
        u2c_pre_g = Signal.like(u2b_pre_g)
        u2c_z, u2c_theta, u2c_c = Signal(fs + 1), Signal(S), Signal(signed(S))
        m.d.sync += [u2c_valid.eq(u2b_valid), u2c_index.eq(u2b_index), u2c_layer.eq(u2b_layer),
                     u2c_region.eq(u2b_region), u2c_state_addr.eq(u2b_state_addr), u2c_pre_g.eq(u2b_pre_g),
                     u2c_z.eq(u2b_z), u2c_theta.eq(u2b_theta), u2c_c.eq(u2b_c)]
        idx_g = Signal(fmt.tanh_lut_bits)
        with m.Switch(u2c_layer):
            for l in range(p.n_layers):
                with m.Case(l):
                    shift = p.acc_frac[l] - fmt.tanh_lut_frac
                    m.d.comb += idx_g.eq(_lut_index(m, u2c_pre_g, shift, fmt.tanh_lut_bits, f"g{l}"))
        m.d.comb += tanh_rd.addr.eq(idx_g)

        u3_valid, u3_index, u3_layer = Signal(), Signal.like(u2c_index), Signal.like(u2c_layer)
        u3_region, u3_state_addr = Signal.like(u2c_region), Signal.like(u2c_state_addr)
        u3_z, u3_theta, u3_c = Signal(fs + 1), Signal(S), Signal(signed(S))
        m.d.sync += [u3_valid.eq(u2c_valid), u3_index.eq(u2c_index), u3_layer.eq(u2c_layer),
                     u3_region.eq(u2c_region), u3_state_addr.eq(u2c_state_addr),
                     u3_z.eq(u2c_z), u3_theta.eq(u2c_theta), u3_c.eq(u2c_c)]
        u3_g = Signal(signed(S + 1))
        m.d.comb += u3_g.eq(view(MemoryId.TANH, tanh_rd.data).entry << fmt.g_align)
        # u3 only subtracts (table output -> c - g' -> register); the multiply by z, the
        # rounding and the saturation follow in u3b.
        u3b_valid, u3b_index, u3b_layer = Signal(), Signal.like(u3_index), Signal.like(u3_layer)
        u3b_region, u3b_state_addr = Signal.like(u3_region), Signal.like(u3_state_addr)
        u3b_z, u3b_theta = Signal(fs + 1), Signal(S)
        u3b_g, u3b_diff = Signal(signed(S + 1)), Signal(signed(S + 2))
        m.d.sync += [u3b_valid.eq(u3_valid), u3b_index.eq(u3_index), u3b_layer.eq(u3_layer),
                     u3b_region.eq(u3_region), u3b_state_addr.eq(u3_state_addr), u3b_z.eq(u3_z),
                     u3b_theta.eq(u3_theta), u3b_g.eq(u3_g), u3b_diff.eq(u3_c - u3_g)]
        u3b_prod = Signal(signed(fs + 1 + S + 3))
        m.d.comb += u3b_prod.eq(u3b_z * u3b_diff)
        u3b_raw = Signal(signed(S + 3))
        m.d.comb += u3b_raw.eq(u3b_g + ((u3b_prod + (1 << (fs - 1))) >> fs))
        u3b_cand = Signal(signed(S))
        m.d.comb += u3b_cand.eq(Mux(u3b_raw > fmt.state_max, fmt.state_max,
                                    Mux(u3b_raw < fmt.state_min, fmt.state_min, u3b_raw)))

        u4_valid, u4_index, u4_layer = Signal(), Signal.like(u3b_index), Signal.like(u3b_layer)
        u4_region, u4_state_addr = Signal.like(u3b_region), Signal.like(u3b_state_addr)
        u4_cand, u4_theta = Signal(signed(S)), Signal(S)
        m.d.sync += [u4_valid.eq(u3b_valid), u4_index.eq(u3b_index), u4_layer.eq(u3b_layer),
                     u4_region.eq(u3b_region), u4_state_addr.eq(u3b_state_addr),
                     u4_cand.eq(u3b_cand), u4_theta.eq(u3b_theta)]
        u4_fire = Signal()
        u4_state = Signal(signed(S))
        m.d.comb += [u4_fire.eq(u4_cand > u4_theta),
                     u4_state.eq(Mux(u4_fire, u4_cand - u4_theta, u4_cand))]
        m.d.comb += [state_wr.en.eq(u4_valid), state_wr.addr.eq(u4_state_addr), view(MemoryId.STATE, state_wr.data).c.eq(u4_state)]
        emit = u4_valid & (u4_fire | int(p.dense))
        event = view(MemoryId.EVENTS, evb_wr.data)
        m.d.comb += [evb_wr.en.eq(emit), evb_wr.addr.eq(u4_region + self.ev_count),
                     event.local.eq(u4_index), event.value.eq(Mux(u4_fire, u4_cand, 0))]
        with m.If(self.upd_start):
            m.d.sync += self.ev_count.eq(0)
        with m.Elif(emit):
            m.d.sync += self.ev_count.eq(self.ev_count + 1)
        m.d.comb += [self.dbg_valid.eq(u4_valid), self.dbg_layer.eq(u4_layer),
                     self.dbg_neuron.eq(u4_index * P + lane), self.dbg_candidate.eq(u4_cand),
                     self.dbg_fire.eq(u4_fire), self.dbg_state.eq(u4_state)]

        # -- accumulator ports: sweep, accumulate, clear -----------------------------------------
        for k, mem_id in enumerate(ACCUMULATORS):
            acc_write = view(mem_id, acc_wr[k].data).acc
            m.d.comb += [acc_rd[k].addr.eq(Mux(self.upd_mode, self.upd_index, m_target))]
            with m.If(self.clr_valid):
                m.d.comb += [acc_wr[k].en.eq(1), acc_wr[k].addr.eq(self.clr_index), acc_write.eq(0)]
            with m.Elif(u1_valid):  # a swept accumulator starts from zero for the next layer
                m.d.comb += [acc_wr[k].en.eq(1), acc_wr[k].addr.eq(u1_index), acc_write.eq(0)]
            with m.Else():
                m.d.comb += [acc_wr[k].en.eq(a_valid & (a_sel == k)), acc_wr[k].addr.eq(a_target),
                             acc_write.eq(a_sum)]
        m.d.comb += [ro_rd.addr.eq(Mux(self.out_mode, self.out_addr, m_target)),
                     ro_rd.en.eq(Mux(self.out_mode, self.out_en, 1)),
                     rob_rd.addr.eq(self.out_addr), rob_rd.en.eq(self.out_en),
                     self.out_value.eq(ro_data + view(MemoryId.READOUT_BIAS, rob_rd.data).bias)]
        ro_write = view(MemoryId.READOUT_ACC, ro_wr.data).acc
        with m.If(self.clr_valid):
            m.d.comb += [ro_wr.en.eq(1), ro_wr.addr.eq(self.clr_index), ro_write.eq(0)]
        with m.Elif(self.out_clear):
            m.d.comb += [ro_wr.en.eq(1), ro_wr.addr.eq(self.out_clear_addr), ro_write.eq(0)]
        with m.Else():
            m.d.comb += [ro_wr.en.eq(a_valid & (a_sel == 4)), ro_wr.addr.eq(a_target), ro_write.eq(a_sum)]

        event_read = view(MemoryId.EVENTS, evb_rd.data)
        m.d.comb += [evb_rd.addr.eq(self.evb_addr), evb_rd.en.eq(self.evb_en),
                     self.evb_local.eq(event_read.local), self.evb_value.eq(event_read.value)]
        return m
