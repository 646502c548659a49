"""The event-driven EGRU core: sequencer, event dispatcher and P lanes.

One step (one input vector) runs, for each layer in turn, an *accumulate* phase (events
of the layer's input, then the layer's own events of the previous step, each fetching
only its row's stored non-zero weights in every lane at once), then an *update* sweep
(one local neuron per lane and cycle). After the last layer the readout accumulates
the last layer's events, and the outputs stream out. See docs/architecture.md.

Dispatcher stages: ``s_`` event source, ``p_`` row-pointer read, ``i_`` issue. The next
event's row pointers are read while the current event's entries issue, so consecutive
events follow each other without an idle cycle.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from egru_accel.quantize.lanes import lane_size
from egru_accel.quantize.memory import LOADABLE

from .construct import checked_construction
from .lane import ACCUMULATE_LATENCY, Lane, UPDATE_LATENCY, cfg_addr_shape, cfg_data_bits
from .params import CoreParams, KIND_INPUT, KIND_READOUT, KIND_RECURRENT

__all__ = ["EGRUCore", "ControlSignature", "StatusSignature", "ConfigSignature", "DebugSignature"]


class ControlSignature(wiring.Signature):
    """``start``: a one-cycle strobe, honoured between steps, that begins a new sequence
    (cell states and previous events are reset)."""
    def __init__(self):
        super().__init__({"start": Out(1)})


class StatusSignature(wiring.Signature):
    """``busy``: a step is running (or memories are being cleared after reset);
    ``steps``: steps completed since the last ``start``; ``cycles``: clock cycles spent
    in steps since reset; ``step_cycles``: cycles of the last completed step (from the
    first input element accepted to the last output accepted)."""
    def __init__(self):
        super().__init__({"busy": Out(1), "steps": Out(32), "cycles": Out(32), "step_cycles": Out(32)})


class ConfigSignature(wiring.Signature):
    """Run-time memory writes: when ``valid`` and the core is idle, ``data`` is written to
    word ``addr`` of loadable memory ``mem`` (a :class:`~egru_accel.quantize.memory.MemoryId`
    of :data:`~egru_accel.quantize.memory.LOADABLE`) of lane ``lane``.
    Writes while busy are dropped and counted in ``dropped``."""
    def __init__(self, params: CoreParams):
        layout = params.layout
        super().__init__({
            "valid": Out(1), "mem": Out(range(len(LOADABLE))), "lane": Out(range(max(2, params.lanes))),
            "addr": Out(cfg_addr_shape(layout)), "data": Out(cfg_data_bits(layout)),
        })


class DebugSignature(wiring.Signature):
    """One neuron update per cycle and lane: layer, neuron (global index), candidate
    ``c~``, whether it fired, and the new cell state (state format)."""
    def __init__(self, params: CoreParams):
        S = params.formats.state_bits
        super().__init__({
            "valid": Out(1), "layer": Out(max(1, (params.layout.n_layers - 1).bit_length())),
            "neuron": Out(range(max(2, max(params.layout.hidden)))), "candidate": Out(signed(S)),
            "fire": Out(1), "state": Out(signed(S)),
        })


# Sequencer states.
CLEAR, IDLE, ACC, DRAIN, UPDATE, OUTPUT, DONE = range(7)
# Event sources of an accumulate phase.
SRC_INPUT_STREAM, SRC_BELOW, SRC_OWN, SRC_LAST = range(4)


class EGRUCore(wiring.Component):
    """Event-driven accelerator for the model described by ``params``.

    Streams: ``i`` takes one signed ``input_bits`` element per beat, ``input_size`` beats per
    step; ``o`` gives one signed readout value (grid ``2**-(state_frac + readout shift)``)
    per beat, ``outputs`` beats per step, in output order.

    ``params.config`` chooses where the weights live (``weight_ram``: block RAM initialised
    with ``params``' weights, or iCE40 UP5K SPRAM, :mod:`~egru_accel.hw.spram`, empty until
    written through ``cfg``) and whether the ``dbg`` ports exist (``debug``: one neuron update
    per lane and cycle, for testbenches).
    """

    def __init__(self, params: CoreParams):
        with checked_construction(self):
            if not isinstance(params, CoreParams):
                raise TypeError(f"params must be CoreParams, not {type(params).__name__}")
        self.params = params
        self.debug = params.config.debug
        fmt = params.formats
        members = {
            "i": In(stream.Signature(signed(fmt.input_bits))),
            "o": Out(stream.Signature(signed(params.layout.readout_bits))),
            "ctl": In(ControlSignature()),
            "status": Out(StatusSignature()),
            "cfg": In(ConfigSignature(params)),
            "cfg_dropped": Out(16),
        }
        if self.debug:
            members["dbg"] = Out(DebugSignature(params)).array(params.lanes)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        p, P, L = self.params.layout, self.params.lanes, self.params.layout.n_layers
        lanes = [Lane(self.params, k) for k in range(P)]
        for k, lane in enumerate(lanes):
            m.submodules[f"lane{k}"] = lane

        state = Signal(range(8), init=CLEAR)
        self._state = state  # for simulation probes
        layer = Signal(max(1, (L - 1).bit_length()))
        readout = Signal()       # the accumulate phase feeds the readout
        parity = Signal()        # event-buffer half written this step
        first = Signal(init=1)   # first step of a sequence
        idle = Signal()
        m.d.comb += idle.eq(state == IDLE)

        # -- run-time memory writes --------------------------------------------------------------
        for k, lane in enumerate(lanes):
            m.d.comb += [lane.cfg_we.eq(self.cfg.valid & idle & (self.cfg.lane == k)),
                         lane.cfg_mem.eq(self.cfg.mem), lane.cfg_addr.eq(self.cfg.addr),
                         lane.cfg_data.eq(self.cfg.data)]
        with m.If(self.cfg.valid & ~idle):
            m.d.sync += self.cfg_dropped.eq(self.cfg_dropped + 1)

        # -- status --------------------------------------------------------------------------
        steps, cycles, step_cycles, this_step = (Signal(32) for _ in range(4))
        m.d.comb += [self.status.busy.eq(~idle), self.status.steps.eq(steps), self.status.cycles.eq(cycles),
                     self.status.step_cycles.eq(step_cycles)]
        in_step = Signal()
        m.d.comb += in_step.eq((state != IDLE) & (state != CLEAR))
        with m.If(in_step):
            m.d.sync += [cycles.eq(cycles + 1), this_step.eq(this_step + 1)]

        # -- event source (s_) -----------------------------------------------------------------
        s_valid = Signal()
        s_row = Signal(range(max(2, p.rows)))
        s_value = Signal(signed(p.value_bits))
        s_ready = Signal()
        src = Signal(2)
        src_done = Signal()      # the current source has no more events
        elem = Signal(range(p.input_size + 1))
        # Event-buffer walk: lane `e_lane`, entry `e_k` of the buffer region `e_region`.
        e_lane = Signal(range(max(2, P)))
        e_k = Signal(range(p.acc_depth + 1))
        e_region = Signal(range(max(2, p.evb_depth)))
        e_row_base = Signal(range(max(2, p.rows + 1)))
        e_layer = Signal.like(layer)   # whose buffer is walked
        e_pending = Signal()           # a buffer read was issued; its data is on the lane outputs
        e_pending_lane = Signal.like(e_lane)
        count_w = p.acc_depth.bit_length() + 1
        # Event counts of the buffers being read are kept per layer and parity in registers
        # (a lane's live counter only covers the sweep it is writing).
        # The dense baseline treats every neuron as active from the first step on: its
        # "previous step" holds every neuron as an event of value 0.
        start_count = [[lane_size(p.hidden[l], P, k) if p.dense else 0 for k in range(P)] for l in range(L)]
        saved = [[[Signal(count_w, name=f"cnt_l{l}_h{h}_p{k}", init=start_count[l][k]) for k in range(P)]
                  for h in range(2)] for l in range(L)]
        e_pending_k = Signal.like(e_k)

        # The counts of the buffer being walked, selected by (e_layer, e_half).
        e_half = Signal()
        walk_counts = [Signal(count_w, name=f"walk_count{k}") for k in range(P)]
        for k in range(P):
            with m.Switch(Cat(e_half, e_layer)):
                for l in range(L):
                    for h in range(2):
                        with m.Case(h | (l << 1)):
                            m.d.comb += walk_counts[k].eq(saved[l][h][k])
        # Next lane (after e_lane) with events, for a walk without a cycle per empty lane.
        def first_nonempty(after):
            found = Signal(name="nonempty_found")
            which = Signal.like(e_lane, name="nonempty_lane")
            for k in reversed(range(1, P)):  # lane 0 never comes after another lane
                with m.If((walk_counts[k] != 0) & (after < k)):
                    m.d.comb += [found.eq(1), which.eq(k)]
            return found, which

        next_found, next_lane = first_nonempty(e_lane)
        start_found, start_lane = Signal(), Signal.like(e_lane)
        for k in reversed(range(P)):
            with m.If(walk_counts[k] != 0):
                m.d.comb += [start_found.eq(1), start_lane.eq(k)]

        e_active = Signal()          # a buffer walk is in progress
        e_count_here = Signal(count_w)
        with m.Switch(e_lane):
            for k in range(P):
                with m.Case(k):
                    m.d.comb += e_count_here.eq(walk_counts[k])
        pending_local = Signal(p.local_bits)
        pending_value = Signal(signed(p.formats.state_bits))
        with m.Switch(e_pending_lane):
            for k, lane in enumerate(lanes):
                with m.Case(k):
                    m.d.comb += [pending_local.eq(lane.evb_local), pending_value.eq(lane.evb_value)]

        with m.If(src == SRC_INPUT_STREAM):
            in_valid = self.i.valid & (elem < p.input_size) & (state == ACC)
            nonzero = (self.i.payload != 0) | int(p.dense)
            m.d.comb += [s_valid.eq(in_valid & nonzero), s_row.eq(p.row_base[0] + elem),
                         s_value.eq(self.i.payload), self.i.ready.eq((elem < p.input_size) & (state == ACC) & s_ready),
                         src_done.eq(elem == p.input_size)]
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += elem.eq(elem + 1)
        with m.Else():
            if p.dense:
                # Dense buffers hold every neuron in order (entry k is local neuron k); at a
                # sequence's first step the previous step's events are all zero.
                m.d.comb += [s_row.eq(e_row_base + e_pending_k * P + e_pending_lane),
                             s_value.eq(Mux(first & (src == SRC_OWN), 0, pending_value))]
            else:
                m.d.comb += [s_row.eq(e_row_base + pending_local * P + e_pending_lane), s_value.eq(pending_value)]
            m.d.comb += [s_valid.eq(e_pending), src_done.eq(~e_active & ~e_pending)]
            issue_read = Signal()
            m.d.comb += issue_read.eq(e_active & (~e_pending | s_ready))
            for k, lane in enumerate(lanes):
                m.d.comb += [lane.evb_addr.eq(e_region + e_k), lane.evb_en.eq(issue_read & (e_lane == k))]
            with m.If(issue_read):
                m.d.sync += [e_pending.eq(1), e_pending_lane.eq(e_lane), e_pending_k.eq(e_k)]
                with m.If(e_k + 1 < e_count_here):
                    m.d.sync += e_k.eq(e_k + 1)
                with m.Elif(next_found):
                    m.d.sync += [e_lane.eq(next_lane), e_k.eq(0)]
                with m.Else():
                    m.d.sync += e_active.eq(0)
            with m.Elif(s_ready):
                m.d.sync += e_pending.eq(0)

        # -- row-pointer stage (p_) and issue stage (i_) ---------------------------------------
        p_valid = Signal()
        p_value = Signal(signed(p.value_bits))
        p_kind = Signal(2)
        p_layer = Signal.like(layer)
        i_active = Signal()
        i_count = Signal(p.len_bits + 1)
        i_value = Signal(signed(p.value_bits))
        i_kind = Signal(2)
        i_layer = Signal.like(layer)
        i_take = Signal()
        p_empty = Signal()     # the event's row holds no weight in any lane: it costs no issue cycle
        m.d.comb += [i_take.eq(p_valid & ~p_empty & (~i_active | (i_count <= 1))),
                     s_ready.eq(~p_valid | i_take | p_empty)]
        cur_kind = Signal(2)
        m.d.comb += cur_kind.eq(Mux(readout, KIND_READOUT, Mux((src == SRC_OWN), KIND_RECURRENT, KIND_INPUT)))
        p_advance = Signal()
        m.d.comb += p_advance.eq(s_valid & s_ready)
        for lane in lanes:
            m.d.comb += [lane.ptr_addr.eq(s_row), lane.ptr_en.eq(p_advance)]
        with m.If(p_advance):
            m.d.sync += [p_valid.eq(1), p_value.eq(s_value), p_kind.eq(cur_kind), p_layer.eq(layer)]
        with m.Elif(i_take | p_empty):
            m.d.sync += p_valid.eq(0)
        # Cycles the event occupies: the longest lane share, as a tree of comparisons (it only
        # feeds the i_count register). Whether the row is empty comes from an OR of the
        # lengths, not from the maximum: it steers the handshake back to the event walker,
        # and that path, from the row-pointer memory outputs, was the longest on the ECP5.
        p_max = Signal(p.len_bits + 1)
        lens = [lane.ptr_len for lane in lanes]
        level = 0
        while len(lens) > 1:
            nxt = []
            for k in range(0, len(lens) - 1, 2):
                a, b = lens[k], lens[k + 1]
                mx = Signal(p.len_bits, name=f"p_max_{level}_{k // 2}")
                m.d.comb += mx.eq(Mux(a > b, a, b))
                nxt.append(mx)
            if len(lens) % 2:
                nxt.append(lens[-1])
            lens, level = nxt, level + 1
        m.d.comb += [p_max.eq(lens[0]), p_empty.eq(p_valid & ~Cat(*[lane.ptr_len for lane in lanes]).any())]
        for lane in lanes:
            m.d.comb += [lane.load.eq(i_take), lane.advance.eq(i_active), lane.ev_value.eq(i_value),
                         lane.ev_kind.eq(i_kind), lane.ev_layer.eq(i_layer)]
        with m.If(i_take):
            m.d.sync += [i_active.eq(1), i_count.eq(p_max), i_value.eq(p_value), i_kind.eq(p_kind),
                         i_layer.eq(p_layer)]
        with m.Elif(i_active):
            m.d.sync += i_count.eq(i_count - 1)
            with m.If(i_count <= 1):
                m.d.sync += i_active.eq(0)

        lanes_busy = Signal()
        m.d.comb += lanes_busy.eq(Cat(*[lane.busy for lane in lanes]).any())

        # -- phase control -------------------------------------------------------------------
        sweep = Signal(range(p.acc_depth + UPDATE_LATENCY + 2))
        drain = Signal(range(UPDATE_LATENCY + ACCUMULATE_LATENCY + 2))
        # Output: read output `o_rd` (lane o_rd_lane, local o_rd_local) while the previous
        # read waits on the memory outputs (o_pending) and the one before is on the stream.
        o_rd = Signal(range(p.outputs + 1))
        o_rd_lane = Signal(range(max(2, P)))
        o_rd_local = Signal(range(max(2, p.readout_local)))
        o_pending = Signal()
        o_pend_lane = Signal.like(o_rd_lane)
        o_pend_local = Signal.like(o_rd_local)
        o_valid = Signal()
        o_data = Signal(signed(p.readout_bits))
        o_sent = Signal(range(p.outputs + 1))
        clr = Signal(range(max(2, max(p.acc_depth, p.readout_local) + 1)))
        sweep_len = Signal.like(sweep)
        with m.Switch(layer):
            for l in range(L):
                with m.Case(l):
                    m.d.comb += sweep_len.eq(p.n_local[l])

        def begin_walk(buffer_layer, half, row_base):
            """Start walking the event buffers of ``buffer_layer``'s ``half``."""
            m.d.sync += [e_layer.eq(buffer_layer), e_half.eq(half), e_row_base.eq(row_base),
                         e_k.eq(0), e_pending.eq(0)]
            with m.Switch(buffer_layer):
                for l in range(L):
                    with m.Case(l):
                        m.d.sync += e_region.eq(p.evb_base[l] + Mux(half, p.n_local[l], 0))
            # e_active/e_lane are set one cycle later, once walk_counts reflect the new buffer.

        walk_started = Signal()  # the walk's first lane has been chosen

        for lane in lanes:
            m.d.comb += [lane.upd_layer.eq(layer), lane.upd_first.eq(first), lane.upd_index.eq(sweep)]
        upd_region = Signal.like(lanes[0].upd_region)
        with m.Switch(layer):
            for l in range(L):
                with m.Case(l):
                    m.d.comb += upd_region.eq(p.evb_base[l] + Mux(parity, p.n_local[l], 0))
        for lane in lanes:
            m.d.comb += lane.upd_region.eq(upd_region)

        def save_counts():
            for l in range(L):
                for h in range(2):
                    with m.If((layer == l) & (parity == h)):
                        for k, lane in enumerate(lanes):
                            m.d.sync += saved[l][h][k].eq(lane.ev_count)

        with m.Switch(state):
            with m.Case(CLEAR):
                for lane in lanes:
                    m.d.comb += [lane.clr_valid.eq(1), lane.clr_index.eq(clr)]
                m.d.sync += clr.eq(clr + 1)
                with m.If(clr == max(p.acc_depth, p.readout_local) - 1):
                    m.d.sync += state.eq(IDLE)
            with m.Case(IDLE):
                with m.If(self.ctl.start):
                    m.d.sync += [first.eq(1), steps.eq(0)]
                    for l in range(L):
                        for h in range(2):
                            for k in range(P):
                                m.d.sync += saved[l][h][k].eq(start_count[l][k])
                with m.Elif(self.i.valid):
                    m.d.sync += [state.eq(ACC), layer.eq(0), readout.eq(0), src.eq(SRC_INPUT_STREAM),
                                 elem.eq(0), this_step.eq(0)]
            with m.Case(ACC):
                # Sources in order: the layer's input (stream or the layer below's buffer of this
                # step), then the layer's own buffer of the previous step; the readout walks the
                # last layer's buffer of this step.
                with m.If(src != SRC_INPUT_STREAM):
                    with m.If(~walk_started):
                        m.d.sync += [walk_started.eq(1), e_active.eq(start_found), e_lane.eq(start_lane)]
                with m.If(src_done & ((src == SRC_INPUT_STREAM) | walk_started)):
                    m.d.sync += walk_started.eq(0)
                    with m.If(~readout & (src != SRC_OWN)):
                        # Next: the layer's own events of the previous step.
                        m.d.sync += src.eq(SRC_OWN)
                        with m.Switch(layer):
                            for l in range(L):
                                with m.Case(l):
                                    begin_walk(Const(l, len(layer)), ~parity,
                                               p.row_base[l] + (p.input_size if l == 0 else p.hidden[l - 1]))
                    with m.Else():
                        m.d.sync += [state.eq(DRAIN), drain.eq(0)]
            with m.Case(DRAIN):
                with m.If(~p_valid & ~i_active & ~lanes_busy):
                    with m.If(readout):
                        m.d.sync += [state.eq(OUTPUT), o_rd.eq(0), o_rd_lane.eq(0), o_rd_local.eq(0),
                                     o_pending.eq(0), o_valid.eq(0), o_sent.eq(0)]
                    with m.Else():
                        m.d.sync += [state.eq(UPDATE), sweep.eq(0)]
                        for lane in lanes:
                            m.d.comb += lane.upd_start.eq(1)
            with m.Case(UPDATE):
                for lane in lanes:
                    m.d.comb += [lane.upd_mode.eq(1), lane.upd_valid.eq(sweep < sweep_len)]
                m.d.sync += sweep.eq(sweep + 1)
                with m.If(sweep == sweep_len + UPDATE_LATENCY):
                    save_counts()
                    with m.If(layer == L - 1):
                        # Readout: the last layer's events of this step.
                        m.d.sync += [state.eq(ACC), readout.eq(1), src.eq(SRC_LAST)]
                        begin_walk(Const(L - 1, len(layer)), parity, p.readout_row_base)
                    with m.Else():
                        m.d.sync += [state.eq(ACC), layer.eq(layer + 1), src.eq(SRC_BELOW)]
                        with m.Switch(layer):
                            for l in range(L - 1):
                                with m.Case(l):
                                    begin_walk(Const(l, len(layer)), parity, p.row_base[l + 1])
            with m.Case(OUTPUT):
                o_consume = Signal()
                o_issue = Signal()
                m.d.comb += [o_consume.eq(o_pending & (~o_valid | self.o.ready)),
                             o_issue.eq((o_rd < p.outputs) & (~o_pending | o_consume)),
                             self.o.valid.eq(o_valid), self.o.payload.eq(o_data)]
                for k, lane in enumerate(lanes):
                    m.d.comb += [lane.out_mode.eq(1), lane.out_addr.eq(o_rd_local), lane.out_en.eq(o_issue),
                                 lane.out_clear_addr.eq(o_pend_local),
                                 lane.out_clear.eq(o_consume & (o_pend_lane == k))]
                with m.If(o_consume):
                    with m.Switch(o_pend_lane):
                        for k, lane in enumerate(lanes):
                            with m.Case(k):
                                m.d.sync += o_data.eq(lane.out_value)
                    m.d.sync += o_valid.eq(1)
                with m.Elif(self.o.ready):
                    m.d.sync += o_valid.eq(0)
                with m.If(o_issue):
                    m.d.sync += [o_pending.eq(1), o_pend_lane.eq(o_rd_lane), o_pend_local.eq(o_rd_local),
                                 o_rd.eq(o_rd + 1)]
                    with m.If(o_rd_lane == P - 1):
                        m.d.sync += [o_rd_lane.eq(0), o_rd_local.eq(o_rd_local + 1)]
                    with m.Else():
                        m.d.sync += o_rd_lane.eq(o_rd_lane + 1)
                with m.Elif(o_consume):
                    m.d.sync += o_pending.eq(0)
                with m.If(o_valid & self.o.ready):
                    m.d.sync += o_sent.eq(o_sent + 1)
                    with m.If(o_sent == p.outputs - 1):
                        m.d.sync += state.eq(DONE)
            with m.Case(DONE):
                m.d.sync += [state.eq(IDLE), steps.eq(steps + 1), first.eq(0), parity.eq(~parity),
                             step_cycles.eq(this_step + 1)]

        if self.debug:
            for k, lane in enumerate(lanes):
                d = self.dbg[k]
                m.d.comb += [d.valid.eq(lane.dbg_valid), d.layer.eq(lane.dbg_layer), d.neuron.eq(lane.dbg_neuron),
                             d.candidate.eq(lane.dbg_candidate), d.fire.eq(lane.dbg_fire),
                             d.state.eq(lane.dbg_state)]
        return m
