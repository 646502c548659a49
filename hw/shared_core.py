"""Core v2: P MAC lanes, one row table and U neuron-update units shared by all lanes.

docs/core-v2.md records why and what each schedule measures. Per layer, the events of the
layer's input (the ``i`` stream for layer 0, the events of the layer below) and the layer's own
events of the step before go through the dispatcher (:mod:`~egru_accel.hw.dispatch`), every
lane taking one entry per cycle; after a drain, the sweep reads each neuron's four accumulators
(z, r, ag, hg) from its lane, clears them, adds the biases and feeds an update unit
(:mod:`~egru_accel.hw.update_unit`); the units' events are written to the layer's event buffer
as they come out. The source follows that buffer behind the write pointer, so the events fetch
rows while the sweep goes on: the readout's (into the lanes' register words, or into a
:class:`~hw.readout_engine.ReadoutEngine`), and with two banks the layer's recurrent rows for
the next step (into the other bank), while the next step's inputs are taken. The outputs
stream out on ``o`` while the next step runs.

Stage prefixes: ``src_`` event source, ``in_`` inputs, ``sw_`` sweep (``sw{k}_`` its gate-k
read), ``clr_`` bank clear, ``ro_`` events to the readout engine, ``out_`` output reads. Every
memory output lands in a register before logic uses it.

The sweep reads gate k of the u-th neuron of group j in cycle ``j * spacing + slots[k]`` from
that neuron's lane (``spacing = ceil(4 / floor(P / U))``, and :func:`sweep_slots` as late as
the update unit's ``offsets`` allow, so that no lane is read twice in a cycle and the words wait
as little as may be for the unit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from egru_accel.quantize.formats import BIAS_BITS
from egru_accel.quantize.shared_rows import (ACC_BITS, ACC_KINDS, ALIGN_GATES, INIT_MEMORIES, LaneAddressMap,
                                             LoadMemory, SharedRowImage, unpack_weights)

from .construct import checked_construction
from .dispatch import (KIND_INPUT, KIND_READOUT, KIND_RECURRENT, VALUE_BITS, EventDispatcher, EventLayout,
                       check_weight_memory, check_weight_ram)
from .dsp_mac_lane import DSPMacLane
from .mac_lane import MacLane
from .pipeline import NO_RW_COLLISIONS, Timeline, split_counter
from .readout_engine import ReadoutEngine
from .stream import SkidBuffer
from .update_unit import MULTIPLIERS, UpdateUnit

__all__ = ["SharedCore", "SharedCoreConfig", "sweep_slots", "LANE_KINDS", "READOUTS", "STATE_NAMES"]

#: ``"fabric"``: :class:`~hw.mac_lane.MacLane` (adds in the fabric; ECP5); ``"dsp_model"`` /
#: ``"sb_mac16"``: :class:`~hw.dsp_mac_lane.DSPMacLane` (adds in the iCE40's SB_MAC16), as an
#: Amaranth model or as the primitive.
LANE_KINDS = ("fabric", "dsp_model", "sb_mac16")
#: Where the readout's MACs are done (:class:`SharedCoreConfig`).
READOUTS = ("lanes", "engine")


@dataclass(frozen=True, kw_only=True)
class SharedCoreConfig:
    """The generator's choices for a :class:`SharedCore`.

    Args:
        lane: One of :data:`LANE_KINDS`.
        multipliers: The update unit's (:data:`~hw.update_unit.MULTIPLIERS`).
        banks: 1: a layer's recurrent rows run after its input rows, in one accumulator bank.
            2: steps alternate between two banks of accumulators (two block RAMs per lane), and
            a layer's recurrent rows for the next step follow its sweep, event by event, into
            the other bank, while this step's sweep reads its own.
        units: Update units (U). The sweep takes U neurons every ``ceil(4 / floor(P / U))``
            cycles (no lane read twice in a cycle), unit u the u-th of each group; each unit's
            events queue in a FIFO of its own on their way to the event buffer.
        readout: ``"lanes"``: the readout's rows go through the dispatcher to the lanes' register
            words. ``"engine"``: a :class:`~hw.readout_engine.ReadoutEngine` of
            ``readout_macs`` multipliers takes the last layer's events from the event buffer, and
            the lanes only the layers' rows.
        weight_memory: The dispatcher's (:data:`~hw.dispatch.WEIGHT_MEMORIES`): ``"wide"``, one
            memory of window words for all lanes, needs an image packed ``structure="lane-window"``.
        weight_ram: Where the weight memory lives (:data:`~hw.config.WEIGHT_RAMS`):
            ``"ice40_spram"`` puts it in the UP5K's SPRAM, which needs ``model_at_reset=False``.
        model_at_reset: The memories start with the image's model (the bitstream holds it).
            ``False``: they start empty and the model comes through the ``load`` port.
        sweep_address_stages: Registers between the sweep's records and a lane's sweep address:
            1, or 2 (ECP5 at P = 16, where one register per lane, between the records and a
            lane's memory, is far from one or the other; a cycle more of sweep latency).
        register_bias: Register the bias memories' outputs before the sweep's adds (ECP5, whose
            block RAM's output is slow). ``False``: the block RAM's own output register meets
            the lane's word in the add (the iCE40, where a register of its own would have no
            LUT to share a logic cell with).
        debug: Add the ``dbg`` port (every neuron update, for testbenches; one per unit).
    """
    lane: str = "fabric"
    multipliers: str = "dsp"
    banks: int = 1
    units: int = 1
    readout: str = "lanes"
    readout_macs: int = 4
    weight_memory: str = "lanes"
    weight_ram: str = "inferred"
    model_at_reset: bool = True
    sweep_address_stages: int = 1
    register_bias: bool = False
    debug: bool = False

    def __post_init__(self):
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, not {self.readout!r}")
        if not isinstance(self.readout_macs, int) or isinstance(self.readout_macs, bool) or self.readout_macs < 1:
            raise ValueError(f"readout_macs must be a positive integer, not {self.readout_macs!r}")
        if not isinstance(self.units, int) or isinstance(self.units, bool) or self.units < 1:
            raise ValueError(f"units must be a positive integer, not {self.units!r}")
        if self.banks not in (1, 2) or isinstance(self.banks, bool):
            raise ValueError(f"banks must be 1 or 2, not {self.banks!r}")
        if self.lane not in LANE_KINDS:
            raise ValueError(f"lane must be one of {', '.join(LANE_KINDS)}, not {self.lane!r}")
        if self.multipliers not in MULTIPLIERS:
            raise ValueError(f"multipliers must be one of {', '.join(MULTIPLIERS)}, not {self.multipliers!r}")
        check_weight_memory(self.weight_memory)
        check_weight_ram(self.weight_ram, self.model_at_reset)
        if self.sweep_address_stages not in (1, 2) or isinstance(self.sweep_address_stages, bool):
            raise ValueError(f"sweep_address_stages must be 1 or 2, not {self.sweep_address_stages!r}")
        for name in ("register_bias", "debug"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, not {getattr(self, name)!r}")


    @property
    def load_macs(self) -> int | None:
        """What the load port's words depend on besides the weight memory: the readout
        engine's multipliers (``None`` without an engine)."""
        return self.readout_macs if self.readout == "engine" else None


class StatusSignature(wiring.Signature):
    """``busy``: a step is running (or thresholds are being loaded after reset); ``steps``:
    steps completed since the last ``start``; ``cycles``: cycles spent in steps since reset;
    ``step_cycles``: cycles of the last completed step, from its start to its readout's last
    entry written (its outputs stream out while the next step runs)."""
    def __init__(self):
        super().__init__({"busy": Out(1), "steps": Out(32), "cycles": Out(32), "step_cycles": Out(32)})


class DebugSignature(wiring.Signature):
    """One neuron update: ``neuron`` (global index: layer base + n), ``candidate`` c~, ``fire``
    and ``y``."""
    def __init__(self, image: SharedRowImage):
        S = image.layout.formats.state_bits
        super().__init__({"valid": Out(1), "neuron": Out(range(max(2, image.layout.neurons))),
                          "candidate": Out(signed(S)), "fire": Out(1), "y": Out(signed(S))})


# Sequencer states.
STATE_NAMES = ("load", "idle", "acc_in", "acc_rec", "drain", "sweep", "ro_drain")
LOAD, IDLE, ACC_IN, ACC_REC, DRAIN, SWEEP, RO_DRAIN = range(len(STATE_NAMES))


def sweep_slots(offsets: dict, lanes: int, units: int, spacing: int) -> tuple[int, ...]:
    """The cycle after its group's issue in which the sweep reads each gate (in
    :data:`ACC_KINDS` order), so that the words reach the update unit at its ``offsets`` with
    as few delay registers as may be: gates in the order the unit takes them, each as late as
    its offset allows. With one unit (groups every ``spacing`` cycles, never later) a lane's
    reads fit before its next neuron (``spacing * floor(P / U)`` cycles on) or the slots are
    0, 1, 2, 3; with several units (groups that may wait) they are 0, 1, 2, 3."""
    plain = (0, 1, 2, 3)
    if units != 1:
        return plain
    low = min(offsets[g] for g in ACC_KINDS)
    slots, last = [0] * 4, -1
    for k in sorted(range(4), key=lambda k: (offsets[ACC_KINDS[k]], k)):
        slots[k] = last = max(last + 1, offsets[ACC_KINDS[k]] - low)
    return tuple(slots) if max(slots) < spacing * (lanes // units) else plain


def _registered_pairs(m: Module, name: str, words) -> Value:
    """The OR of ``words`` (``(hit, word)``, at most one hit set), registered two at a time as
    one AND-OR each (one LUT per bit, in its flip-flop's logic cell), the pairs ORed after."""
    out = Const(0, signed(ACC_BITS))
    for j in range(0, len(words), 2):
        pair = Signal(signed(ACC_BITS), name=f"{name}_pair{j // 2}")
        hits = Const(0, signed(ACC_BITS))
        for hit, word in words[j:j + 2]:
            hits = hits | Mux(hit, word, 0)
        m.d.sync += pair.eq(hits)
        out = out | pair
    return out


def sweep_classes(lanes: int, units: int, spacing: int, slots=(0, 1, 2, 3)) -> list[list[int]]:
    """The lanes in classes that the sweep never reads in one cycle: group g of U neurons
    issues every ``spacing`` cycles (or later, when it waits, with ``slots`` 0, 1, 2, 3), unit
    u reading gate k of lane ``(g U + u) % P`` in cycle ``g spacing + slots[k]``. Greedy
    colouring of the lanes read together."""
    P, U = lanes, units
    busy = {}
    for g in range(4 * P):
        for u in range(U):
            for k in range(4):
                busy.setdefault(g * spacing + slots[k], set()).add((g * U + u) % P)
    together = {p: set() for p in range(P)}
    for read in busy.values():
        for p in read:
            together[p] |= read - {p}
    classes: list[list[int]] = []
    for p in range(P):
        for c in classes:
            if not any(q in together[p] for q in c):
                c.append(p)
                break
        else:
            classes.append([p])
    return classes


class SharedCore(wiring.Component):
    """The event-driven EGRU core v2 for the model in ``image``.

    Streams: ``i`` takes one signed 16-bit layer-0 input per beat, ``input_size`` beats per
    step; ``o`` gives one signed 32-bit output (the readout grid ``2**-(state_frac + shift)``)
    per beat, ``outputs`` beats per step. ``start`` (a strobe, honoured between steps) begins a
    sequence: cell states and the events of the step before count as zero. ``last``, sampled
    with a step's final input beat, marks the sequence's last step: with two banks its events
    then fetch no recurrent rows for a step that will not come.

    ``load`` writes one word of a model's memories per beat (:meth:`SharedRowLayout.load_word
    <egru_accel.quantize.shared_rows.SharedRowLayout.load_word>`: memory, address, data; the
    writes of a whole model are :meth:`SharedRowImage.load_writes
    <egru_accel.quantize.shared_rows.SharedRowImage.load_writes>`). It is ready only while the
    core is idle with no step's inputs or outputs under way; the model must have this core's
    layout, and a sequence after a load begins with ``start``.
    """

    def __init__(self, image: SharedRowImage, config: SharedCoreConfig | None = None):
        with checked_construction(self):
            if not isinstance(image, SharedRowImage):
                raise TypeError(f"image must be a SharedRowImage, not {type(image).__name__}")
            config = SharedCoreConfig() if config is None else config
            if not isinstance(config, SharedCoreConfig):
                raise TypeError(f"config must be a SharedCoreConfig, not {type(config).__name__}")
            lay = image.layout
            if config.units > lay.lanes:
                raise ValueError(f"units ({config.units}) must not exceed the lanes ({lay.lanes})")
            if lay.formats.input_bits > VALUE_BITS or lay.formats.state_bits > VALUE_BITS:
                raise ValueError(f"inputs and events must fit {VALUE_BITS} bits")
            op_bits = 16 if config.lane != "fabric" else 18
            if lay.formats.weight_bits + lay.max_align > op_bits:
                raise ValueError(f"weights of {lay.formats.weight_bits} bits aligned by up to {lay.max_align} "
                                 f"do not fit the lane's {op_bits}-bit operand")
            check_weight_memory(config.weight_memory, lay)
        self.image, self.config, self.layout = image, config, lay
        #: The load port's word (the host's writes: ``image.load_writes(config.weight_memory,
        #: config.load_macs)``).
        self.load_word = lay.load_word(config.weight_memory, config.load_macs)
        members = {
            "i": In(stream.Signature(signed(VALUE_BITS))),
            "o": Out(stream.Signature(signed(ACC_BITS))),
            "start": In(1),
            "last": In(1),
            "status": Out(StatusSignature()),
            "load": In(stream.Signature(self.load_word.struct_layout())),
        }
        if config.debug:
            members["dbg"] = Out(DebugSignature(image)).array(config.units) if config.units > 1 \
                else Out(DebugSignature(image))
        super().__init__(members)

    @property
    def spacing(self) -> int:
        """Cycles between two groups of U neurons of the sweep: a lane's neuron comes again
        ``floor(P / U)`` groups later, and its four reads must be over by then."""
        return -(-4 // (self.layout.lanes // self.config.units))

    def _lane_map(self):
        """The lanes' accumulator addresses: no register words when the engine does the readout."""
        amap = self.layout.lane_address_map(self.config.banks)
        if self.config.readout == "engine":
            amap = LaneAddressMap(banks=amap.banks, bank_words=amap.bank_words, registers=0)
        return amap

    def _lane(self, p: int):
        lay, kind = self.layout, self.config.lane
        # The readout's words are flip-flops: its rows accumulate while the last layer's sweep
        # holds the block RAM's ports, and its outputs are read while the next step's rows run.
        # Lane p holds outputs p, p + P, ...: only as many words as it has outputs (10 outputs
        # on 8 lanes: two words in lanes 0 and 1, one in the others).
        amap = self._lane_map()
        mine = len(range(p, lay.outputs, lay.lanes)) if amap.registers else 0
        # The sweep reads and clears neuron words only: the readout's leave through the take port.
        # Its words come raw (the block RAM's output and a hit flag): the core registers two
        # lanes' words in one LUT per bit (the buses below).
        words = dict(depth=amap.depth, registers=amap.registers, register_words=mine, banks=amap.banks,
                     sweep_registers=False, sweep_raw=True)
        if kind == "fabric":
            return MacLane(acc_bits=ACC_BITS, weight_bits=lay.formats.weight_bits, value_bits=VALUE_BITS,
                           max_align=lay.max_align, **words)
        # A lane of one output word gives it raw (the word in the take's cycle): the core
        # registers two such lanes' words in one LUT per bit.
        return DSPMacLane(weight_bits=lay.formats.weight_bits, max_align=lay.max_align,
                          dsp="model" if kind == "dsp_model" else "sb_mac16", take_raw=mine == 1, **words)

    def elaborate(self, platform):
        m = Module()
        img, lay = self.image, self.layout
        P, L, dense = lay.lanes, lay.n_layers, lay.dense
        ev_layout = EventLayout(lay)
        ev_word = lay.event_word

        amap = lay.lane_address_map(self.config.banks)
        # The sweep puts a gate's index in the low two bits of its neuron's first word.
        assert all(b % 4 == 0 for b in lay.acc_base) and amap.bank_base(amap.banks - 1) % 4 == 0
        at_reset = self.config.model_at_reset
        m.submodules.dispatch = dispatch = EventDispatcher(image=img, banks=self.config.banks,
                                                           weight_memory=self.config.weight_memory,
                                                           weight_ram=self.config.weight_ram, model_at_reset=at_reset)
        lanes = []
        for p in range(P):
            lane = self._lane(p)
            m.submodules[f"lane{p}"] = lane
            lanes.append(lane)
            port = dispatch.lanes[p]
            m.d.comb += [lane.i_valid.eq(port.valid), lane.i_addr.eq(port.addr), lane.i_weight.eq(port.weight),
                         lane.i_value.eq(port.value), lane.i_align.eq(port.align)]
        U = self.config.units
        units = []
        for u in range(U):
            unit = UpdateUnit(formats=lay.formats, acc_frac=lay.grids,
                              depth=max(2, lay.neurons), acc_bits=ACC_BITS, multipliers=self.config.multipliers)
            m.submodules["unit" if U == 1 else f"unit{u}"] = unit
            units.append(unit)
        lane_latency = lanes[0].LATENCY
        self.lanes_busy = dispatch.lanes[0].valid   # for testbenches: the cycles the lanes take entries
        engine = None
        if self.config.readout == "engine":
            # Its weights from the image (a bitstream with a model) or the load port.
            ro_weights = unpack_weights(img)[-1] if at_reset else np.zeros((lay.engine_rows, lay.outputs), np.int64)
            load = self.load_word
            m.submodules.readout = engine = ReadoutEngine(weights=ro_weights, weight_bits=lay.formats.weight_bits,
                                                          macs=self.config.readout_macs, value_bits=VALUE_BITS,
                                                          loadable=True, load_addr_bits=load.field("addr").width,
                                                          load_data_bits=load.field("data").width)

        # -- memories of the core: events, biases, thresholds ------------------------------------
        # The source and the readout engine read only addresses behind the write pointer, never
        # the one being written.
        m.submodules.events = events = Memory(shape=ev_word.width, depth=lay.event_depth, init=[],
                                              attrs=NO_RW_COLLISIONS)
        ev_rd, ev_wr = events.read_port(), events.write_port()
        # -- ld_: a model's words from ``load``, registered, then written ---------------------------
        ld_valid = Signal()
        ld = Signal(self.load_word.struct_layout())
        # The payload is registered every cycle (no enable across its many bits); ld_valid says
        # whether it was taken.
        m.d.sync += [ld_valid.eq(self.load.valid & self.load.ready), ld.eq(self.load.payload)]

        def ld_to(mem):
            return ld_valid & (ld.mem == mem)

        # -- param_: a capacity build's run-time registers (the model's sizes, grids, alignments and
        # bias shifts), written by ``load``; a build for one model has its values as constants ------
        params = {}
        if lay.limits is not None:
            for i, (name, value) in enumerate(zip(lay.param_names(), img.param_values())):
                reg = Signal(range(lay.param_range(name)), init=value if at_reset else 0,
                             name="param_" + name.replace(".", "_"))
                with m.If(ld_to(LoadMemory.PARAMS) & (ld.addr == i)):
                    m.d.sync += reg.eq(ld.data)
                params[name] = reg
            for l in range(L):
                for use, kind in enumerate(("input", "recurrent")):
                    for g, gate in enumerate(ALIGN_GATES):
                        m.d.comb += dispatch.align[l][use][g].eq(params[f"layer{l}.{kind}_align.{gate}"])

        def param(name, constant):
            return params[name] if params else constant
        input_size, outputs = param("inputs", lay.input_size), param("outputs", lay.outputs)
        last_layer = param("last_layer", L - 1)        # the model's last layer

        def init(words):
            return [int(w) for w in words] if at_reset else []

        def loadable(name, shape, depth, words, mem):
            # A load happens only while the core is idle, when no read's data is used.
            memory = Memory(shape=shape, depth=depth, init=init(words), attrs=NO_RW_COLLISIONS)
            m.submodules[name] = memory
            wr = memory.write_port()
            m.d.comb += [wr.en.eq(ld_to(mem)), wr.addr.eq(ld.addr), wr.data.eq(ld.data)]
            return memory

        if engine is not None:
            m.d.comb += [engine.load_en.eq(ld_to(LoadMemory.READOUT_WEIGHTS)), engine.load_addr.eq(ld.addr),
                         engine.load_data.eq(ld.data)]
        m.d.comb += [dispatch.load_rows.eq(ld_to(LoadMemory.ROWS)), dispatch.load_weights.eq(ld_to(LoadMemory.WEIGHTS)),
                     dispatch.load_addr.eq(ld.addr), dispatch.load_data.eq(ld.data)]
        inits = [[] for _ in range(U)]        # inits[u][k]: unit u's read port of gate k's biases
        for k in ACC_KINDS:
            mem = loadable(f"init_{k}", signed(BIAS_BITS), max(2, lay.neurons), img.init_words(k), INIT_MEMORIES[k])
            for u in range(U):
                inits[u].append(mem.read_port())
        if at_reset:
            # The thresholds go into the units' own memories after reset (state LOAD).
            m.submodules.theta = theta_mem = Memory(shape=lay.theta_word.width, depth=max(2, lay.neurons),
                                                    init=[int(v) for v in img.theta])
            theta_rd = theta_mem.read_port()
        ro_bias = loadable("readout_bias", signed(BIAS_BITS), max(2, lay.outputs), img.readout_bias_words(),
                           LoadMemory.READOUT_BIAS)
        ro_bias_rd = ro_bias.read_port()

        # -- sequencer state -----------------------------------------------------------------------
        # One-hot: each state a flip-flop, so that a state's enables are a gate shallower.
        onehot = Signal(len(STATE_NAMES), init=1 << (LOAD if at_reset else IDLE), name="state_onehot")
        state = Signal(range(len(STATE_NAMES)))        # its index, for status and testbenches
        m.d.comb += state.eq(Cat(Cat(onehot[s] for s in range(len(STATE_NAMES)) if s >> b & 1).any()
                                 for b in range(len(state))))
        self.sequencer_state = state        # for testbenches: cycles per state (STATE_NAMES)

        def goto(s):
            return onehot.eq(1 << s)
        layer = Signal(range(max(2, L)))
        parity = Signal()
        fresh = Signal(init=1)
        counts = Array(Array(Signal(range(max(lay.hidden) + 1), name=f"count_l{l}_p{q}") for q in range(2))
                       for l in range(L))
        step_cycles = Signal(32)
        in_step = Signal()
        m.d.comb += in_step.eq(~onehot[IDLE] & ~onehot[LOAD])
        # Strobes of the sequencer: a sequence starts, a step ends, the next step starts with it.
        seq_start, step_done, step_restart = Signal(), Signal(), Signal()
        # 32-bit status counters with 16-bit carry chains. this_step counts the step's cycles
        # including the current one (1 in its first), so a step's end copies it, no adder.
        cycles = split_counter(m, "cycles", 32, inc=in_step)
        steps = split_counter(m, "steps", 32, inc=step_done, clear=seq_start)
        this_step = split_counter(m, "this_step", 32, inc=in_step, clear=onehot[IDLE] | step_restart, clear_to=1)
        m.d.comb += [self.status.busy.eq(~onehot[IDLE]), self.status.steps.eq(steps),
                     self.status.cycles.eq(cycles), self.status.step_cycles.eq(step_cycles)]

        # -- LOAD: thresholds into the update units after reset (from the image), or from ``load`` --------
        load_v = Signal()
        load_addr = Signal(range(max(2, lay.neurons) + 1))
        load_theta = Signal(lay.theta_word.width)
        if at_reset:
            load_k = Signal(range(max(2, lay.neurons) + 1))
            m.d.comb += [theta_rd.addr.eq(load_k), theta_rd.en.eq(1)]
            m.d.sync += load_v.eq(0)
            with m.If(onehot[LOAD]):
                with m.If(load_k < lay.neurons):
                    m.d.sync += [load_k.eq(load_k + 1), load_v.eq(1), load_addr.eq(load_k)]
                with m.Elif(~load_v):
                    m.d.sync += goto(IDLE)
            m.d.comb += load_theta.eq(theta_rd.data)
        with m.If(ld_to(LoadMemory.THETA)):      # only in IDLE, never with the LOAD state's writes
            m.d.comb += [load_theta.eq(ld.data)]
        theta_en = load_v | ld_to(LoadMemory.THETA)
        theta_addr = Mux(load_v, load_addr, ld.addr)
        for unit in units:
            m.d.comb += [unit.load_en.eq(theta_en), unit.load_theta.eq(1), unit.load_addr.eq(theta_addr),
                         unit.load_data.eq(load_theta)]

        # -- src_: the event source, into the event queue ----------------------------------------------
        m.submodules.evq = evq = SyncFIFOBuffered(width=ev_layout.size, depth=4)
        m.d.comb += [dispatch.i.payload.eq(evq.r_data), dispatch.i.valid.eq(evq.r_rdy), evq.r_en.eq(dispatch.i.ready)]
        # SRC_FOLLOW: the event buffer behind the update unit's write pointer (the readout's rows
        # of the last layer's events, taken as the sweep writes them).
        # One-hot (bit 0 BUFFER, bit 1 FOLLOW): a mode is a flip-flop, not a compare.
        SRC_NONE, SRC_BUFFER, SRC_FOLLOW = 0, 1, 2
        src_mode = Signal(2)
        src_buffering, src_following = src_mode[0], src_mode[1]
        src_left = Signal(range(max(lay.input_size, max(lay.hidden)) + 1))
        src_elem = Signal(range(lay.input_size + 1))
        src_addr = Signal(range(lay.event_depth + 1))   # as wide as ev_ptr, which reaches the end
        # Registers beside the counters, so that the take is a gate or two of flip-flops:
        # src_more = src_left != 0; src_behind = src_addr != ev_ptr while following, kept as
        # src_lag = ev_ptr - src_addr (events written, not yet taken).
        src_more, src_behind = Signal(), Signal()
        src_lag = Signal(range(lay.event_depth + 1))
        # What a buffered event becomes: its row (neuron + offset), kind, target layer and bank;
        # ``zero``: its value counts as 0 (dense baseline, first step). With ``src_pair`` every
        # event makes two, the rows of src_a then those of src_b.
        desc = data.StructLayout({"offset": signed(max(lay.rows, lay.neurons).bit_length() + 2), "kind": 2,
                                  "layer": range(max(2, L)), "zero": 1, "bank": 1})
        src_a, src_b = Signal(desc, name="src_a"), Signal(desc, name="src_b")
        src_pair, src_phase = Signal(), Signal()
        bank = Signal()              # the accumulator bank of this step (banks=2)
        s1_valid, s2_valid = Signal(), Signal()
        s1_desc = Signal(desc)
        s2_event = Signal(ev_layout)
        # Credits: the event queue's slots not yet claimed by s1, s2 or the queue itself
        # (= depth - level - s1 - s2), a register; ``room2`` (credits >= 2) is a register
        # beside it, so that a take is a gate of flip-flops. A take comes off the credits a
        # cycle late (``src_take_late``: the take's logic does not reach the credits' enables),
        # so it needs two credits: one for itself, one for a take of the cycle before.
        src_credits = Signal(range(evq.depth + 1), init=evq.depth)
        room2 = Signal(init=evq.depth >= 2)
        src_take_late = Signal()
        src_take = Signal()
        # -- in_: the layer-0 inputs of a step, from ``i``. With two banks the next step's may
        # come during the last layer's sweep (they go to the other bank): ``in_ahead``.
        in_open = Signal()           # in_left != 0, a register beside it
        # The input stream through a skid buffer (its ready and valid are flip-flops), with
        # ``last`` and whether the value is 0 computed on the way in. ``ready`` only for the
        # beats of the step the engine is open for (as without the buffer: a beat offered opens
        # it), counted as they enter: in_accept_left, and in_accepting beside it.
        in_accept_left = Signal(range(lay.input_size + 1))
        in_accepting = Signal()
        beat_layout = data.StructLayout({"value": signed(VALUE_BITS), "nonzero": 1, "last": 1})
        m.submodules.in_skid = in_skid = SkidBuffer(beat_layout)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [in_accept_left.eq(in_accept_left - 1), in_accepting.eq(in_accept_left != 1)]
        m.d.comb += [in_skid.i.valid.eq(self.i.valid & in_accepting), self.i.ready.eq(in_skid.i.ready & in_accepting),
                     in_skid.i.payload.value.eq(self.i.payload), in_skid.i.payload.nonzero.eq(self.i.payload != 0),
                     in_skid.i.payload.last.eq(self.last)]
        beat = in_skid.o
        in_left = Signal(range(lay.input_size + 1))
        in_have = Signal()           # a step's inputs all taken, its sequencer not yet past them
        in_ahead = Signal()
        in_last = Signal()           # the streamed step is its sequence's last
        step_last = Signal()         # the running step is
        in_room = Signal()
        # Room for a beat besides a buffer read that may enter in the same cycle (two credits,
        # whether or not one does: the beat does not wait for the take's logic); none while a
        # buffer read's data takes s2.
        m.d.comb += in_room.eq(room2 & ~s1_valid)
        m.d.comb += beat.ready.eq(in_open & in_room)
        # A buffer read claims a slot as it is taken, an input beat as it is accepted (a zero
        # input, which fetches no row, claims none); the dispatcher's read gives one back.
        in_claim = beat.valid & beat.ready & (beat.payload.nonzero | dense)
        # Each change's result from the register, picked by the three strobes: the strobes'
        # logic is not followed by an adder.
        # A slot read by the dispatcher comes back a cycle later (a register: the dispatcher's
        # ready does not reach the credits' enables).
        credit_back = Signal()
        m.d.sync += credit_back.eq(evq.r_en & evq.r_rdy)
        m.d.sync += src_take_late.eq(src_take)
        with m.Switch(Cat(credit_back, src_take_late, in_claim)):
            for back in (0, 1):
                for took in (0, 1):
                    for claimed in (0, 1):
                        with m.Case(back | took << 1 | claimed << 2):
                            after = src_credits + (back - took - claimed)
                            m.d.sync += [src_credits.eq(after), room2.eq(after >= 2)]
        ev_ptr = Signal(range(lay.event_depth + 1))        # the update unit's next event address
        out_busy = Signal()         # outputs of a step still to read (they overlap the next step)
        out_pending = Signal()      # out_left != 0, a register beside it
        out_issue = Signal()        # an output read issued this cycle (a register)
        src_follow = Signal()
        # The readout's rows wait while the step before's outputs leave the words they add to.
        # Registered (src_hold): out_busy rises only as a step ends, when the source stops, and
        # in the cycle after src_a becomes the readout's no event has been written to follow.
        src_hold = Signal()
        m.d.sync += src_hold.eq((src_a.kind == KIND_READOUT) & out_busy)
        m.d.comb += src_follow.eq(src_following & src_behind & ~src_hold)
        # A buffer's take is one gate of flip-flops (src_left, its only count, is decremented a
        # cycle later, from src_took); a follow's take two.
        take_buffer = Signal()
        src_took = Signal()          # a buffer take of the cycle before, not yet off src_left
        m.d.comb += [take_buffer.eq(src_buffering & src_more & room2), src_take.eq(take_buffer | (src_follow & room2))]
        # Before the sequencer: a new segment's count replaces the last take's decrement.
        with m.If(src_took):
            m.d.sync += src_left.eq(src_left - 1)
        m.d.comb += [ev_rd.addr.eq(src_addr), ev_rd.en.eq(1)]
        m.d.sync += [s1_valid.eq(0), s2_valid.eq(s1_valid)]
        with m.If(beat.valid & beat.ready):
            m.d.sync += [in_left.eq(in_left - 1), in_open.eq(in_left != 1), src_elem.eq(src_elem + 1)]
            with m.If(in_left == 1):
                m.d.sync += [in_have.eq(1), in_last.eq(beat.payload.last)]
            # A zero input fetches no row (except in the dense baseline).
            m.d.sync += [s2_valid.eq(beat.payload.nonzero | dense), s2_event.row.eq(lay.row_base[0] + src_elem),
                         s2_event.value.eq(beat.payload.value), s2_event.kind.eq(KIND_INPUT), s2_event.layer.eq(0),
                         s2_event.bank.eq(bank ^ in_ahead)]
        ev_data = Signal(ev_word.struct_layout())
        m.d.comb += ev_data.eq(ev_rd.data)
        with m.If(s1_valid):
            m.d.sync += [s2_event.row.eq(ev_data.neuron + s1_desc.offset),
                         s2_event.value.eq(Mux(s1_desc.zero, 0, ev_data.value)),
                         s2_event.kind.eq(s1_desc.kind), s2_event.layer.eq(s1_desc.layer),
                         s2_event.bank.eq(s1_desc.bank)]
        m.d.comb += [evq.w_data.eq(s2_event), evq.w_en.eq(s2_valid)]
        src_busy = Signal()
        # Events to follow count even while held (the readout's rows waiting for the outputs
        # before them): the step must not end without them.
        m.d.comb += src_busy.eq(src_more | (src_following & src_behind) | s1_valid | s2_valid | (evq.level != 0) | evq.r_rdy)

        def describe(d, l, use, kind, zero, to_bank):
            return [d.offset.eq(_row_offset(l, use)), d.kind.eq(kind), d.layer.eq(src_target_layer(l, use)),
                    d.zero.eq(zero), d.bank.eq(to_bank)]

        def source_buffer(l, q, use, kind, count, zero=False, follow=False, then=None, to_bank=None, cur=None):
            """Statements that start the source on ``count`` events of layer ``l``, parity ``q``
            (``follow``: on the events the update unit writes, as it writes them), into
            ``to_bank`` (the step's bank ``cur`` by default, this step's); ``then`` = (use,
            kind): each event also fetches that row, into the other bank."""
            cur = bank if cur is None else cur
            stmts = [src_mode.eq(SRC_FOLLOW if follow else SRC_BUFFER), src_left.eq(0 if follow else count),
                     src_more.eq(0 if follow else count != 0), src_took.eq(0),
                     src_addr.eq(_event_base(l, q)), src_phase.eq(0), src_pair.eq(then is not None)]
            stmts += describe(src_a, l, use, kind, zero, cur if to_bank is None else to_bank)
            if then is not None:
                stmts += describe(src_b, l, then[0], then[1], 0, ~cur)
            return stmts

        def _event_base(l, q):
            return Array(Const(lay.event_base(ll, qq)) for ll in range(L) for qq in range(2))[l * 2 + q]

        def _row_offset(l, use):
            vals = [lay.row_offset(ll, use) if (use != "input" or ll + 1 < L) else 0 for ll in range(L)]
            return Array(Const(v, desc["offset"].shape) for v in vals)[l]

        def src_target_layer(l, use):
            return l + 1 if use == "input" else l

        # -- drain: wait for the dispatcher and the lanes ------------------------------------------------
        # An entry on the lanes' inputs in cycle t is readable from t + lane_latency; the
        # dispatcher is idle from t + 1, and drained() acts ``k`` idle cycles later. The sweep
        # reads three cycles after that (state, its first record, the lane's registered address;
        # four with a second address stage), the outputs two (the issue is a register).
        drain = Signal(range(lane_latency + 4))
        # idle_dispatch is registered (a cycle late; it never falls again in the states that
        # wait for it, since nothing enters then), so each drain counts one idle cycle less.
        x = self.config.sweep_address_stages - 1      # cycles more between a stage and its lane's read
        sweep_drain, out_drain = max(0, lane_latency - 5 - x), max(0, lane_latency - 4)

        # -- sw_: the sweep: a group of U neurons every ``sp`` cycles, unit u the u-th of each --------
        sp = self.spacing
        sw_left = Signal(range(max(lay.hidden) + 1))        # neurons of the layer still to issue
        sw_space = Signal(range(max(2, sp)))
        sw_lane = [Signal(range(max(2, P)), name=f"sw_lane{u}") for u in range(U)]
        sw_local = [Signal(range(max(2, max(lay.n_local) + 1)), name=f"sw_local{u}") for u in range(U)]
        sw_neuron = Signal(range(max(2, lay.neurons + U)))
        sw_base = Signal(range(amap.depth))
        sw_issue = Signal()
        sw_more = Signal()           # sw_left != 0, a register beside it
        sw_done = Signal()           # the sweep over, every event written (registered: a cycle late)
        sw_room = Signal(init=1)     # every unit's event FIFO has room for all it has in flight
        sw_outputs = Signal(range(max(lay.hidden) + 1))   # unit outputs still to come
        m.d.comb += sw_issue.eq(onehot[SWEEP] & sw_more & (sw_space == 0) & sw_room)
        with m.If(onehot[SWEEP]):
            with m.If(sw_space != 0):
                m.d.sync += sw_space.eq(sw_space - 1)
            with m.Elif(sw_issue):
                m.d.sync += [sw_left.eq(Mux(sw_left > U, sw_left - U, 0)), sw_more.eq(sw_left > U),
                             sw_neuron.eq(sw_neuron + U),
                             sw_space.eq(sp - 1)]
                for u in range(U):
                    with m.If(sw_lane[u] + U >= P):
                        m.d.sync += [sw_lane[u].eq(sw_lane[u] + U - P), sw_local[u].eq(sw_local[u] + 1)]
                    with m.Else():
                        m.d.sync += sw_lane[u].eq(sw_lane[u] + U)

        def sweep_start_counters(layer_neuron_base):
            stmts = [sw_neuron.eq(layer_neuron_base), sw_space.eq(0)]
            for u in range(U):
                stmts += [sw_lane[u].eq(u % P), sw_local[u].eq(u // P)]
            return stmts

        # The neuron records, shifted: stage slots[k] reads gate k.
        offsets = getattr(units[0], "offsets", {k: 0 for k in ACC_KINDS})
        slots = sweep_slots(offsets, P, U, sp)
        n_stages = max(slots) + 1
        record = data.StructLayout({"valid": 1, "lane": range(max(2, P)), "addr": range(amap.depth),
                                    "neuron": range(max(2, lay.neurons)), "layer": range(max(2, L)), "fresh": 1})
        unit_record = data.StructLayout({"valid": 1, "neuron": range(max(2, lay.neurons)), "layer": range(max(2, L)),
                                         "fresh": 1})
        stages = [[Signal(record, name=f"sw{k}_record" if U == 1 else f"sw{k}_u{u}_record") for k in range(n_stages)]
                  for u in range(U)]
        for u in range(U):
            st = stages[u]
            m.d.sync += [st[0].valid.eq(sw_issue & (sw_left > u)), st[0].lane.eq(sw_lane[u]),
                         st[0].addr.eq(sw_base + (sw_local[u] << 2) + Mux(bank, amap.bank_base(1), 0)),
                         st[0].neuron.eq(sw_neuron + u), st[0].layer.eq(layer), st[0].fresh.eq(fresh)]
            for k in range(1, n_stages):
                m.d.sync += st[k].eq(st[k - 1])

        # -- out_: the readout's outputs -------------------------------------------------------------
        # Two words: an output is issued every other cycle and the credits below keep the
        # queue from overflowing, so more depth only holds flip-flops (64 of them at depth 4;
        # the cycles per step of the digits model at P = 8 are the same at 2 and 4).
        m.submodules.oq = oq = SyncFIFOBuffered(width=ACC_BITS, depth=2)
        m.d.comb += [self.o.payload.eq(oq.r_data), self.o.valid.eq(oq.r_rdy), oq.r_en.eq(self.o.ready)]
        out_left = Signal(range(lay.outputs + 1))
        out_o = Signal(range(max(2, lay.outputs)))
        out_lane = Signal(range(max(2, P)))
        out_local = Signal(range(max(2, lay.readout_local)))
        out_v = [Signal(name=f"out{c}_valid") for c in range(4)]    # read issued 0..3 cycles ago
        # Credits: the output queue's slots not claimed by an issued output (a register, so that
        # the issue decision is one compare deep rather than an add of the queue's level).
        out_credits = Signal(range(oq.depth + 1), init=oq.depth)
        m.d.sync += out_credits.eq(out_credits - out_issue + (oq.r_en & oq.r_rdy))
        # The issue is a register, decided in the cycle before, which issues none (an output
        # every other cycle, while the next step runs): the lanes' take enables come straight
        # from flip-flops, one per lane.
        out_next = ~out_issue & out_pending & (out_credits != 0)
        out_take = [Signal(name=f"out_take{p}") for p in range(P)]
        m.d.sync += [out_issue.eq(out_next)] + [take.eq(out_next & (out_lane == p)) for p, take in enumerate(out_take)]
        # Registered: outputs under way, a cycle late at both ends (it blocks the readout's rows
        # and the engine, which never start within a cycle of a step's end).
        m.d.sync += out_busy.eq(out_pending | out_issue | out_v[1] | out_v[2])
        m.d.sync += [out_v[c].eq(out_v[c - 1]) for c in range(1, len(out_v))]
        m.d.comb += out_v[0].eq(out_issue)
        with m.If(out_issue):
            m.d.sync += [out_left.eq(out_left - 1), out_pending.eq(out_left != 1), out_o.eq(out_o + 1)]
            with m.If(out_lane == P - 1):
                m.d.sync += [out_lane.eq(0), out_local.eq(out_local + 1)]
            with m.Else():
                m.d.sync += out_lane.eq(out_lane + 1)
        m.d.comb += [ro_bias_rd.addr.eq(out_o), ro_bias_rd.en.eq(1)]
        out_bias = Signal(signed(BIAS_BITS))
        m.d.sync += out_bias.eq(ro_bias_rd.data)
        out_sum = Signal(signed(ACC_BITS))      # registered in cycle 3
        out_acc = Signal(signed(ACC_BITS))
        if engine is None:
            # One lane takes per cycle, and the others' take_data is 0. Their data comes a cycle
            # after the issue (mac_lane.TAKE_LATENCY), the OR, registered, in 2.
            # Lanes with a raw take (one word each) give the word in the take's cycle: two of
            # them registered as one AND-OR, in the cycle the others register theirs.
            word = Const(0, signed(ACC_BITS))
            raw = [p for p, lane in enumerate(lanes) if getattr(lane, "take_raw", False)]
            for lane in (lane for p, lane in enumerate(lanes) if p not in raw):
                word = word | lane.take_data
            word = word | _registered_pairs(m, "out_take", [(out_take[p], lanes[p].take_data) for p in raw])
            m.d.sync += out_acc.eq(word)
        else:
            m.d.comb += [out_acc.eq(engine.take_data), engine.take_en.eq(out_issue), engine.take_index.eq(out_o)]
        m.d.sync += out_sum.eq(out_acc + (out_bias << param("readout_bias_shift", lay.readout_bias_shift)))
        m.d.comb += [oq.w_en.eq(out_v[3]), oq.w_data.eq(out_sum)]
        # bias: read with the issue (cycle 0), data in 1, registered in 2 = the lane's data.

        # -- clr_: with two banks, a new sequence clears the bank its first step's recurrent rows
        # go to (the last step before left its rows there), while that step's inputs run ---------
        clr_left = Signal(range(amap.bank_words + 1))
        clr_addr = Signal(range(amap.depth))
        clr_active = Signal()        # clr_left != 0, a register beside it
        with m.If(clr_active):
            m.d.sync += [clr_left.eq(clr_left - 1), clr_active.eq(clr_left != 1), clr_addr.eq(clr_addr + 1)]

        # -- lane read ports: the sweep's four gate reads, an output read or a clear; each read clears -----
        for p, lane in enumerate(lanes):
            en = Signal(name=f"lane{p}_sweep_en")
            addr = Signal(range(amap.depth), name=f"lane{p}_sweep_addr")
            # A neuron's four words are 4-aligned (asserted above): gate k's address is the
            # record's with k in its low bits, no adder.
            hits = [(su[slots[k]].valid & (su[slots[k]].lane == p), Cat(Const(k, 2), su[slots[k]].addr[2:]))
                    for su in stages for k in range(4)]
            hits.append((clr_active, clr_addr))
            if engine is None:
                m.d.comb += [lane.take_en.eq(out_take[p]), lane.take_index.eq(out_local)]
            # The hits never meet (no lane is read twice in a cycle, the sweep waits for a
            # clear): an AND-OR, not a priority chain.
            word = Const(0, addr.shape())
            for hit, a in hits:
                word = word | Mux(hit, a, 0)
            m.d.comb += [en.eq(Cat(hit for hit, _ in hits).any()), addr.eq(word)]
            # Registered on their way to the lane (the read a cycle after its stage): the block
            # RAM's address comes from flip-flops, not through the records' compare and mux.
            # A clear writes without reading: only the sweep's reads may put words on the buses.
            rd_en_r = Signal(name=f"lane{p}_sweep_rd_en")
            wr_en_r = Signal(name=f"lane{p}_sweep_wr_en")
            addr_r = Signal.like(addr, name=f"lane{p}_sweep_addr_r")
            m.d.sync += [rd_en_r.eq(en & ~clr_active), wr_en_r.eq(en), addr_r.eq(addr)]
            # sweep_address_stages=2: a copy of each, whose only fan-in lets it sit by the lane.
            for c in range(1, self.config.sweep_address_stages):
                copies = (Signal(name=f"lane{p}_sweep_rd_en_s{c}"), Signal(name=f"lane{p}_sweep_wr_en_s{c}"),
                          Signal.like(addr, name=f"lane{p}_sweep_addr_s{c}"))
                m.d.sync += [copy.eq(v) for copy, v in zip(copies, (rd_en_r, wr_en_r, addr_r))]
                rd_en_r, wr_en_r, addr_r = copies
            m.d.comb += [lane.sweep_rd_en.eq(rd_en_r), lane.sweep_rd_addr.eq(addr_r),
                         lane.sweep_wr_en.eq(wr_en_r), lane.sweep_wr_addr.eq(addr_r), lane.sweep_wr_data.eq(0)]

        # -- the gate words: lane data (cycle 3 after the stage), + bias, delayed to the unit's offsets -----
        t = Timeline(m)
        D = max(slots[k] + 5 + x - offsets[g] for k, g in enumerate(ACC_KINDS))   # unit input = issue + D
        # A lane's word is 0 unless the sweep read it, so the lanes of a class (never read in
        # one cycle) share a bus, an OR; a unit's gate picks the class of its neuron's lane.
        classes = sweep_classes(P, U, sp, slots)
        # The lanes' words come raw, a cycle after their read, with a hit flag: registered in
        # pairs (_registered_pairs).
        buses = []
        for c, members in enumerate(classes):
            bus = Signal(signed(ACC_BITS), name=f"sw_bus{c}")
            m.d.comb += bus.eq(_registered_pairs(m, f"sw_bus{c}",
                                                 [(lanes[p].sweep_rd_hit, lanes[p].sweep_rd_data) for p in members]))
            buses.append(bus)
        class_of = {p: c for c, members in enumerate(classes) for p in members}
        for u, unit in enumerate(units):
            tag = "" if U == 1 else f"_u{u}"
            reach = sorted({class_of[(grp * U + u) % P] for grp in range(P)})   # the classes unit u reads
            # Lane -> its class's position in ``reach`` (lanes unit u never reads: 0).
            pick = Array(Const(reach.index(class_of[p]) if class_of[p] in reach else 0, range(len(reach)))
                         for p in range(P))
            for k, g in enumerate(ACC_KINDS):
                st = stages[u][slots[k]]
                rd = inits[u][k]
                # Cycle numbers relative to this gate's stage (cycle 0; the lane reads in 1, its
                # word is on the bus in 3; each a cycle later per extra sweep address stage, x).
                # The bias is read in cycle 3, from the record three stages on: the block RAM's
                # output register meets the lane's word in 4 (a register of its own would have
                # no LUT to share a logic cell with); with register_bias in cycle 2, and
                # registered.
                reg_bias = self.config.register_bias
                rd_at = slots[k] + 3 + x - reg_bias
                if rd_at < n_stages:
                    bias_neuron = stages[u][rd_at].neuron
                else:
                    bias_neuron = stages[u][n_stages - 1].neuron
                    for c in range(n_stages, rd_at + 1):
                        delayed = Signal.like(bias_neuron, name=f"sw{k}{tag}_bias_neuron_s{c}")
                        m.d.sync += delayed.eq(bias_neuron)
                        bias_neuron = delayed
                m.d.comb += [rd.addr.eq(bias_neuron), rd.en.eq(1)]
                bias = t.reg(f"sw{k}{tag}_bias", rd.data, 4 + x) if reg_bias else t.input(rd.data, 4 + x)
                if len(reach) == 1:
                    data_k = buses[reach[0]]
                else:
                    cls = t.input(Signal(range(len(reach)), name=f"sw{k}{tag}_class"), 0)
                    m.d.comb += cls.eq(pick[st.lane])
                    data_k = Array(buses[c] for c in reach)[t.at(cls, 3 + x)]
                acc = t.reg(f"sw{k}{tag}_acc", data_k, 4 + x)
                # The bias is a mantissa: shifted by its layer's shift for this kind (the layer
                # stays put while a sweep runs).
                shifts = [param(f"layer{l}.bias_shift.{g}", lay.bias_shifts[l][k]) for l in range(L)]
                shifted = bias << shifts[0]
                for l in range(1, L):
                    shifted = Mux(layer == l, bias << shifts[l], shifted)
                biased = t.reg(f"sw{k}{tag}_biased", acc + shifted, 5 + x, signed(ACC_BITS))
                word = t.at(biased, D + offsets[g] - slots[k])
                m.d.comb += getattr(unit, f"i_acc_{g}").eq(word)
            # The neuron itself, D cycles after stage 0's read (what the unit takes of the record).
            # From the last stage on (the stages carry it that far anyway).
            last = stages[u][n_stages - 1]
            rec_t = t.input(Signal(unit_record.size, name=f"sw_unit{tag}_record"), n_stages - 1)   # bits: Timeline delays signals
            m.d.comb += rec_t.eq(Cat(last.valid, last.neuron, last.layer, last.fresh))
            rec_u = data.View(unit_record, t.at(rec_t, D))
            # The unit's grid: the layer's (a capacity build's: the layer's run-time register).
            grid = Array(params[f"layer{l}.grid"] for l in range(L))[rec_u.layer] if params else rec_u.layer
            m.d.comb += [unit.i_valid.eq(rec_u.valid), unit.i_neuron.eq(rec_u.neuron), unit.i_layer.eq(grid),
                         unit.i_fresh.eq(rec_u.fresh)]

        # -- the units' events into the event buffer ---------------------------------------------------
        ev_count = Signal(range(max(lay.hidden) + 1))
        ev_in = Signal(ev_word.struct_layout())
        write_event = Signal()
        fired = [Signal(name=f"unit{u}_event") for u in range(U)]
        for u, unit in enumerate(units):
            m.d.comb += fired[u].eq(unit.o_valid & (unit.o_fire | dense))
        ev_pending = Const(0)
        if U == 1:
            m.d.comb += [write_event.eq(fired[0]), ev_in.neuron.eq(units[0].o_neuron), ev_in.value.eq(units[0].o_y)]
        else:
            # Each unit's events wait in a FIFO; one goes to the buffer per cycle, the lowest unit
            # first. A group issues only while every FIFO has room for all its unit has in flight.
            in_flight = D + units[0].latency + 2
            depth = 1 << (in_flight + 2).bit_length()
            queues, flights = [], []
            for u, unit in enumerate(units):
                q = SyncFIFOBuffered(width=ev_word.width, depth=depth)
                m.submodules[f"events{u}_queue"] = q
                word = Signal(ev_word.struct_layout(), name=f"unit{u}_event_word")
                m.d.comb += [word.neuron.eq(unit.o_neuron), word.value.eq(unit.o_y),
                             q.w_data.eq(word), q.w_en.eq(fired[u])]
                flight = Signal(range(in_flight + 2), name=f"unit{u}_in_flight")
                issued = stages[u][0].valid      # registered with the issue: counts from there
                with m.If(issued & ~unit.o_valid):
                    m.d.sync += flight.eq(flight + 1)
                with m.Elif(~issued & unit.o_valid):
                    m.d.sync += flight.eq(flight - 1)
                queues.append(q)
                flights.append(flight)
            # Room for what is in flight, for the group about to issue and for the one whose
            # record is being registered; decided a cycle ahead (a register, not an add and a
            # compare in front of the issue), so with room for one more, since a queue's level
            # plus its flight grows by at most one a cycle.
            m.d.sync += sw_room.eq(Cat(q.level + f + 2 * U + 1 <= depth for q, f in zip(queues, flights)).all())
            pick = Signal(range(max(2, U)))
            chosen = Const(0)
            for u in reversed(range(U)):
                chosen = Mux(queues[u].r_rdy, u, chosen)
            m.d.comb += pick.eq(chosen)
            m.d.comb += [write_event.eq(Cat(q.r_rdy for q in queues).any()),
                         ev_in.eq(Array(q.r_data for q in queues)[pick])]
            for u, q in enumerate(queues):
                m.d.comb += q.r_en.eq(write_event & (pick == u))
            ev_pending = Cat(q.r_rdy for q in queues).any() | Cat(q.level != 0 for q in queues).any()
        m.d.comb += [ev_wr.en.eq(write_event), ev_wr.addr.eq(ev_ptr), ev_wr.data.eq(ev_in)]
        with m.If(write_event):
            m.d.sync += [ev_ptr.eq(ev_ptr + 1), ev_count.eq(ev_count + 1)]
        done_now = sum((unit.o_valid for unit in units), Const(0, range(U + 1)))
        m.d.sync += sw_outputs.eq(sw_outputs - done_now)
        # Once true in SWEEP it stays true until the state leaves (nothing is issued or in flight).
        # Below the last layer it also waits for the source: the next layer's input rows read
        # this bank.
        m.d.sync += sw_done.eq(onehot[SWEEP] & ~sw_more & (sw_outputs == 0) & ~ev_pending
                               & ((layer == last_layer) | ~src_follow))
        if self.config.debug:
            for u, unit in enumerate(units):
                dbg = self.dbg if U == 1 else self.dbg[u]
                m.d.comb += [dbg.valid.eq(unit.o_valid), dbg.neuron.eq(unit.o_neuron),
                             dbg.candidate.eq(unit.o_candidate), dbg.fire.eq(unit.o_fire), dbg.y.eq(unit.o_y)]

        # -- the sequencer ----------------------------------------------------------------------------
        idle_dispatch = Signal()
        # ro_: with the engine, the last layer's events from the event buffer to it, behind the
        # unit's write pointer (a read port of their own), while the step before's outputs are out.
        ro_active = Signal()
        ro_pending = Const(0)
        if engine is not None:
            ro_rd = events.read_port()
            ro_addr = Signal(range(lay.event_depth + 1))
            ro1_valid = Signal()
            m.submodules.ro_queue = ro_queue = SyncFIFOBuffered(width=ev_word.width, depth=4)
            ro_take = Signal()
            m.d.comb += [ro_take.eq(ro_active & (ro_addr != ev_ptr) & ~out_busy & (ro_queue.level + ro1_valid < 4)),
                         ro_rd.addr.eq(ro_addr), ro_rd.en.eq(1)]
            with m.If(ro_take):
                m.d.sync += ro_addr.eq(ro_addr + 1)
            m.d.sync += ro1_valid.eq(ro_take)
            m.d.comb += [ro_queue.w_data.eq(ro_rd.data), ro_queue.w_en.eq(ro1_valid)]
            ro_event = Signal(ev_word.struct_layout())
            m.d.comb += [ro_event.eq(ro_queue.r_data), engine.i.valid.eq(ro_queue.r_rdy),
                         engine.i.payload.neuron.eq(ro_event.neuron - Array(Const(b) for b in lay.neuron_base)[last_layer]
                                                    if params else ro_event.neuron - lay.neuron_base[L - 1]),
                         engine.i.payload.value.eq(ro_event.value), ro_queue.r_en.eq(engine.i.ready)]
            ro_pending = (ro_active & (ro_addr != ev_ptr)) | ro1_valid | ro_queue.r_rdy | (ro_queue.level != 0) | engine.busy
        m.d.sync += idle_dispatch.eq(~src_busy & ~dispatch.busy & ~ro_pending)
        layer_H = Array(Value.cast(param(f"layer{l}.hidden", H)) for l, H in enumerate(lay.hidden))
        layer_base = Array(Const(b) for b in lay.acc_base)
        neuron_base = Array(Const(b) for b in lay.neuron_base)

        def start_recurrent_or_drain(l):
            # The layer's own events of the step before; in the dense baseline every neuron, with
            # value 0 on the first step of a sequence. With two banks they ran during the step
            # before's sweep, except the dense baseline's zeros.
            if dense:
                with m.If(fresh | (banks == 1)):
                    m.d.sync += source_buffer(l, ~parity, "recurrent", KIND_RECURRENT, layer_H[l], zero=fresh)
                    m.d.sync += goto(ACC_REC)
                with m.Else():
                    m.d.sync += goto(DRAIN)
                return
            with m.If(fresh | (banks == 2)):
                m.d.sync += goto(DRAIN)
            with m.Else():
                m.d.sync += source_buffer(l, ~parity, "recurrent", KIND_RECURRENT, counts[l][~parity])
                m.d.sync += goto(ACC_REC)

        # A state's exit is decided in one cycle (go_now, the state's condition) and taken in
        # the next (seq_go, a register), so that the exit's many assignments hang off one
        # flip-flop. Every condition waited on stays true once it holds (nothing enters a
        # drained dispatcher, a source that is done stays done), so the register is exact, a
        # cycle late.
        go_now, seq_go = Signal(), Signal()
        m.d.sync += seq_go.eq(go_now & ~seq_go)

        def drained(k, then, ready=Const(1), strobes=()):
            """``then`` (and the comb ``strobes``) once the dispatcher has been idle for ``k``
            cycles (and ``ready``)."""
            m.d.comb += go_now.eq(idle_dispatch & (drain >= k) & ready)
            with m.If(~idle_dispatch):
                m.d.sync += drain.eq(0)
            with m.Elif(drain < k):
                m.d.sync += drain.eq(drain + 1)
            with m.If(seq_go):
                m.d.sync += [drain.eq(0)] + then
                m.d.comb += list(strobes)

        banks = self.config.banks

        def enter_sweep(l, q, b, step_is_last, top: bool):
            """Statements that start the sweep of layer ``l`` (the last one if ``top``) of a step
            of parity ``q`` in bank ``b``. The layer's events, as the unit writes them, fetch the
            rows that do not touch the bank the sweep reads: the readout's (flip-flop words)
            after the last layer, and with two banks the layer's recurrent rows for the next
            step (other bank), unless the step is its sequence's last."""
            stmts = [goto(SWEEP), sw_left.eq(layer_H[l]), sw_more.eq(1), sw_base.eq(layer_base[l]), sw_outputs.eq(layer_H[l]),
                     ev_ptr.eq(_event_base(l, q)), ev_count.eq(0), src_lag.eq(0), src_behind.eq(0)]
            stmts += sweep_start_counters(neuron_base[l])
            if top and engine is not None:
                # The engine follows the events; the source only the recurrent rows.
                stmts += [ro_active.eq(1), ro_addr.eq(_event_base(l, q))]
                if banks == 2:
                    stmts += source_buffer(l, q, "recurrent", KIND_RECURRENT, 0, follow=True, to_bank=~b, cur=b)
                    stmts.append(src_mode.eq(Mux(step_is_last, SRC_NONE, SRC_FOLLOW)))
            elif top:
                then = ("recurrent", KIND_RECURRENT) if banks == 2 else None
                stmts += source_buffer(l, q, "readout", KIND_READOUT, 0, follow=True, then=then, cur=b)
                if banks == 2:
                    stmts.append(src_pair.eq(~step_is_last))
            elif banks == 2:
                stmts += source_buffer(l, q, "recurrent", KIND_RECURRENT, 0, follow=True, to_bank=~b, cur=b)
                stmts.append(src_mode.eq(Mux(step_is_last, SRC_NONE, SRC_FOLLOW)))
            return stmts

        # The states are exclusive: one If per state's flip-flop.
        with m.If(onehot[IDLE]):
            with m.If(self.start & ~in_open & ~in_have):
                m.d.sync += fresh.eq(1)
                m.d.comb += seq_start.eq(1)
                for l in range(L):
                    m.d.sync += [counts[l][0].eq(0), counts[l][1].eq(0)]
                if banks == 2:
                    # This step's bank holds the last step's recurrent rows: take the other,
                    # which its sweep cleared, and clear this one.
                    m.d.sync += [bank.eq(~bank), clr_left.eq(lay.readout_acc_base),
                                 clr_active.eq(lay.readout_acc_base != 0),
                                 clr_addr.eq(Mux(bank, amap.bank_base(1), 0))]
            with m.Elif(in_open | in_have):
                m.d.sync += [goto(ACC_IN), layer.eq(0)]
        with m.If(onehot[ACC_IN]):
            # Layer 0: the step's inputs taken; a layer above: its input rows from the buffer.
            m.d.comb += go_now.eq(Mux(layer == 0, in_have, ~src_more))
            with m.If(seq_go):
                m.d.sync += src_mode.eq(SRC_NONE)
                with m.If(layer == 0):
                    m.d.sync += [in_have.eq(0), step_last.eq(in_last)]
                start_recurrent_or_drain(layer)
        with m.If(onehot[ACC_REC]):
            m.d.comb += go_now.eq(~src_more)
            with m.If(seq_go):
                m.d.sync += [src_mode.eq(SRC_NONE), goto(DRAIN)]
        with m.If(onehot[DRAIN]):
            # A clear holds the lanes' sweep ports: the sweep waits for it.
            ready = ~clr_active
            with m.If(layer == last_layer):
                drained(sweep_drain, enter_sweep(layer, parity, bank, step_last, True), ready=ready)
            with m.Else():
                drained(sweep_drain, enter_sweep(layer, parity, bank, step_last, False), ready=ready)
        with m.If(onehot[SWEEP]):
            with m.If(sw_done):
                m.d.sync += counts[layer][parity].eq(ev_count)
                with m.If(layer == last_layer):
                    m.d.sync += goto(RO_DRAIN)
                with m.Else():                 # sw_done waited for the source (below)
                    # The next layer's input rows read this bank: they wait for the sweep.
                    m.d.sync += [layer.eq(layer + 1), goto(ACC_IN)]
                    m.d.sync += source_buffer(layer, parity, "input", KIND_INPUT, ev_count)
        with m.If(onehot[RO_DRAIN]):
            # The outputs stream while the next step runs; the step ends here.
            step_end = [src_mode.eq(SRC_NONE), ro_active.eq(0), out_left.eq(outputs),
                        out_pending.eq(outputs != 0), out_o.eq(0), out_lane.eq(0),
                        out_local.eq(0), goto(IDLE), parity.eq(~parity), fresh.eq(0),
                        step_cycles.eq(this_step)]
            if banks == 2:
                step_end += [bank.eq(~bank), in_ahead.eq(0)]
                # With the engine the outputs leave its registers, not the lanes': the
                # next sweep's drain is all the lanes need. The step before's outputs must
                # have left the words.
                k = sweep_drain if engine is not None else out_drain
                m.d.comb += go_now.eq(idle_dispatch & (drain >= k) & ~out_pending)
                with m.If(~idle_dispatch):
                    m.d.sync += drain.eq(0)
                with m.Elif(drain < k):
                    m.d.sync += drain.eq(drain + 1)
                with m.If(~seq_go):
                    pass
                with m.Elif(in_have):
                    # The next step's inputs are in (taken during this sweep), and so are its
                    # recurrent rows: its first sweep starts now (the drain covers the sweep's).
                    m.d.sync += [drain.eq(0)] + step_end + [
                        layer.eq(0), in_have.eq(0), step_last.eq(in_last)]
                    m.d.comb += [step_done.eq(1), step_restart.eq(1)]
                    if params:
                        with m.If(last_layer == 0):
                            m.d.sync += enter_sweep(0, ~parity, ~bank, in_last, True)
                        with m.Else():
                            m.d.sync += enter_sweep(0, ~parity, ~bank, in_last, False)
                    else:
                        m.d.sync += enter_sweep(0, ~parity, ~bank, in_last, L == 1)
                with m.Else():
                    m.d.sync += [drain.eq(0)] + step_end
                    m.d.comb += step_done.eq(1)
            else:
                # The step before's outputs must have left before this step's take their place
                # (a step whose last layer is silent has no readout rows to wait for them).
                drained(out_drain, step_end, ready=~out_pending, strobes=[step_done.eq(1)])

        # -- the source's takes, after the sequencer so that their muxes come last (nearest the
        # registers): the sequencer sets the source up only while it takes nothing (a segment
        # starts when the one before is over; the sweep starts on a drained dispatcher).
        m.d.sync += src_took.eq(take_buffer)
        with m.If(take_buffer):
            m.d.sync += src_more.eq(Mux(src_took, src_left != 2, src_left != 1))
        with m.If(src_take):
            with m.If(src_pair & ~src_phase):
                m.d.sync += src_phase.eq(1)                  # the same event again, for src_b
            with m.Else():
                m.d.sync += [src_phase.eq(0), src_addr.eq(src_addr + 1)]
            # Taken with the read: the next segment may already be set up when its data arrives.
            m.d.sync += [s1_valid.eq(1), s1_desc.eq(Mux(src_pair & src_phase, src_b.as_value(), src_a.as_value()))]
        src_advance = src_take & ~(src_pair & ~src_phase)
        with m.If(write_event & ~src_advance):
            m.d.sync += [src_lag.eq(src_lag + 1), src_behind.eq(1)]
        with m.Elif(src_advance & ~write_event):
            m.d.sync += [src_lag.eq(src_lag - 1), src_behind.eq(src_lag != 1)]

        # A model's words go in while nothing reads them: idle, no step's inputs or outputs under
        # way. Registered (load_quiet), so that ``ready`` is one gate deep: in a cycle with
        # neither ``start`` nor an input beat offered none of those conditions can change, and
        # ``ready`` asks the same of its own cycle, so the input engine does not open while a
        # load is taken.
        load_quiet = Signal()
        no_request = ~self.start & ~self.i.valid & ~beat.valid
        m.d.sync += load_quiet.eq(onehot[IDLE] & ~in_open & ~in_have & ~out_busy & ~out_pending & no_request)
        m.d.comb += self.load.ready.eq(load_quiet & no_request)

        # The input engine opens for a step when the sequencer waits for one, or (two banks)
        # for the next step during the last layer's sweep.
        with m.If(~in_open & ~in_have & (self.i.valid | beat.valid)):
            opened = [in_left.eq(input_size), in_open.eq(input_size != 0), src_elem.eq(0),
                      in_accept_left.eq(input_size), in_accepting.eq(input_size != 0)]
            with m.If(onehot[IDLE] & ~self.start):
                m.d.sync += opened + [in_ahead.eq(0)]
            if banks == 2:
                with m.Elif((onehot[SWEEP] | onehot[RO_DRAIN]) & (layer == last_layer) & ~in_ahead):
                    m.d.sync += opened + [in_ahead.eq(1)]
        return m
