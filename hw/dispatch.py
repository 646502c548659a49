"""Core v2's event dispatcher: an event fetches its row once, and every lane takes one entry per cycle.

An event (a row of the shared row table and the value that multiplies it) goes through three
registered stages and two queues, so that no memory output feeds logic in the cycle it appears
and the handshakes are cut:

    r_   row read: the event is accepted while the row queue has room for everything in
         flight; the row table's read data is registered; rows of length 0 are dropped.
    w_   walker: the row at the head of the queue issues its entries, one address per cycle,
         and takes the next row in the cycle it issues its last entry (no bubble between rows).
    e_   entry: the weight memories' read data (one word per lane, same address), registered;
         from it and the row's constants, each lane's accumulator address and alignment.

The lanes (:mod:`~egru_accel.hw.mac_lane`, :mod:`~egru_accel.hw.dsp_mac_lane`) register the
entries again at their inputs. Words and address maps are those of
:mod:`egru_accel.quantize.shared_rows`.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from egru_accel.quantize.formats import GATE_G
from egru_accel.quantize.shared_rows import WEIGHT_MEMORIES, SharedRowImage, SharedRowLayout

from .config import WEIGHT_RAMS
from .construct import checked_construction
from .pipeline import NO_RW_COLLISIONS
from .spram import ICE40WeightRAM

__all__ = ["WEIGHT_MEMORIES", "check_weight_memory", "check_weight_ram", "EventDispatcher", "EventLayout", "LaneEntrySignature", "KIND_INPUT", "KIND_RECURRENT",
           "KIND_READOUT", "VALUE_BITS"]

#: What an event's row feeds: a layer's input rows, its recurrent rows, or the readout.
KIND_INPUT, KIND_RECURRENT, KIND_READOUT = 0, 1, 2
#: Width of an event value (a layer-0 input or an event of a layer): the lanes' 16-bit operand.
VALUE_BITS = 16


def EventLayout(layout: SharedRowLayout) -> data.StructLayout:
    """An event: ``row`` (of the row table), ``value`` (signed 16), ``kind`` (``KIND_*``), the
    ``layer`` whose accumulators its input and recurrent rows feed, and their ``bank`` (with
    two banks of accumulators)."""
    return data.StructLayout({"row": range(max(2, layout.rows)), "value": signed(VALUE_BITS),
                              "kind": unsigned(2), "layer": range(max(2, layout.n_layers)), "bank": 1})


class LaneEntrySignature(wiring.Signature):
    """One entry for one lane: ``acc[addr] += (weight << align) * value`` (``addr`` in the
    lane's :class:`~egru_accel.quantize.shared_rows.LaneAddressMap` with ``banks``)."""
    def __init__(self, layout: SharedRowLayout, banks: int = 1):
        super().__init__({
            "valid": Out(1), "addr": Out(range(layout.lane_address_map(banks).depth)),
            "weight": Out(signed(layout.formats.weight_bits)), "value": Out(signed(VALUE_BITS)),
            "align": Out(range(layout.max_align + 1)),
        })


def check_weight_ram(weight_ram, model_at_reset) -> str:
    """``weight_ram`` if it is one of :data:`~hw.config.WEIGHT_RAMS` and ``model_at_reset`` a
    bool it allows (SPRAM starts empty), else ``TypeError``/``ValueError``."""
    if weight_ram not in WEIGHT_RAMS:
        raise ValueError(f"weight_ram must be one of {', '.join(WEIGHT_RAMS)}, not {weight_ram!r}")
    if not isinstance(model_at_reset, bool):
        raise TypeError(f"model_at_reset must be True or False, not {model_at_reset!r}")
    if model_at_reset and weight_ram == "ice40_spram":
        raise ValueError("weight_ram='ice40_spram' needs model_at_reset=False: the bitstream cannot "
                         "initialise SPRAM, the weights come through the load port")
    return weight_ram


def check_weight_memory(weight_memory, layout: SharedRowLayout | None = None) -> str:
    """``weight_memory`` if it is one of :data:`WEIGHT_MEMORIES` (and, given ``layout``, one
    that layout can fill), else ``ValueError``."""
    if weight_memory not in WEIGHT_MEMORIES:
        raise ValueError(f"weight_memory must be one of {', '.join(WEIGHT_MEMORIES)}, not {weight_memory!r}")
    if layout is not None and weight_memory == "wide" and layout.structure != "lane-window":
        raise ValueError(f"a wide weight memory needs an image packed lane-window, not {layout.structure}")
    return weight_memory


class EventDispatcher(wiring.Component):
    """Events on ``i``; entries for every lane on ``lanes[p]``; ``busy`` while any event or entry
    is inside. ``image`` initialises the row table and the weight memories.

    ``queue_depth``: entries of the row queue (its room decides how far row reads run ahead).
    ``banks``: the lanes' accumulator banks (an event's ``bank`` picks one).
    ``weight_memory``: one of :data:`WEIGHT_MEMORIES`. ``"lanes"``: one memory of entry words
    per lane. ``"wide"``: one memory of window words
    (:attr:`~quantize.shared_rows.SharedRowLayout.window_word`) for all lanes, which stores the
    gate and the window once per address instead of once per lane; it needs an image packed
    ``structure="lane-window"``. The lanes get the same entries in the same cycles either way.
    ``weight_ram``: :data:`~hw.config.WEIGHT_RAMS`; ``"ice40_spram"`` puts the weight memory
    in SB_SPRAM256KA blocks (:class:`~hw.spram.ICE40WeightRAM`). ``model_at_reset``: the row
    table and weight memories start with ``image`` (else empty; SPRAM always is).

    ``load_rows`` / ``load_weights`` write ``load_data`` to word ``load_addr`` of the row table
    / the weight memory (addresses and words of
    :class:`~egru_accel.quantize.shared_rows.LoadMemory`); only while no event is inside: a
    weight write takes the memory's port in SPRAM.

    A capacity layout (``image.layout.limits``) takes each layer's alignments at run time:
    ``align[l][0]`` (input rows) and ``align[l][1]`` (recurrent rows), per gate z, r, g.
    """

    def __init__(self, *, image: SharedRowImage, queue_depth: int = 4, banks: int = 1,
                 weight_memory: str = "lanes", weight_ram: str = "inferred", model_at_reset: bool = True):
        with checked_construction(self):
            if not isinstance(image, SharedRowImage):
                raise TypeError(f"image must be a SharedRowImage, not {type(image).__name__}")
            if not isinstance(queue_depth, int) or queue_depth < 4:
                raise ValueError(f"queue_depth must be an integer of at least 4, not {queue_depth!r}")
            check_weight_memory(weight_memory, image.layout)
            check_weight_ram(weight_ram, model_at_reset)
        self.weight_memory, self.weight_ram, self.model_at_reset = weight_memory, weight_ram, model_at_reset
        self.image = image
        self.layout = lay = image.layout
        self.queue_depth = queue_depth
        self.address_map = lay.lane_address_map(banks)
        load = lay.load_word(weight_memory)
        members = {
            "i": In(stream.Signature(EventLayout(lay))),
            "lanes": Out(LaneEntrySignature(lay, banks)).array(lay.lanes),
            "busy": Out(1),
            "load_rows": In(1), "load_weights": In(1),
            "load_addr": In(load.field("addr").width), "load_data": In(load.field("data").width),
        }
        if lay.limits is not None:
            members["align"] = In(range(lay.max_align + 1)).array(lay.n_layers, 2, 3)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        lay, img = self.layout, self.image
        P = lay.lanes
        ev_layout = EventLayout(lay)
        row_word, entry_word = lay.row_word, lay.entry_word

        def init(words):
            return [int(w) for w in words] if self.model_at_reset else []

        # A load happens only while no event is inside: no read needs a write of its cycle kept out.
        m.submodules.rows = rows = Memory(shape=row_word.width, depth=max(2, lay.rows), init=init(img.rows),
                                          attrs=NO_RW_COLLISIONS)
        rows_rd, rows_wr = rows.read_port(), rows.write_port()
        m.d.comb += [rows_wr.en.eq(self.load_rows), rows_wr.addr.eq(self.load_addr), rows_wr.data.eq(self.load_data)]
        # One weight memory (``wide``) or one per lane, each with a read port ``.addr``/``.data``
        # (data one cycle after the address) and written from the load port.
        words = [img.window_words()] if self.weight_memory == "wide" else list(img.weights)
        width = lay.weight_word(self.weight_memory).width
        depth = max(2, lay.entries)
        entry_bits = lay.entry_address_bits
        weights = []
        for p, image_words in enumerate(words):
            name = "weights" if self.weight_memory == "wide" else f"weights{p}"
            write = self.load_weights
            if len(words) > 1:
                write = write & (self.load_addr[entry_bits:] == p)
            if self.weight_ram == "ice40_spram":
                m.submodules[name] = rd = ICE40WeightRAM(width=width, depth=depth)
                m.d.comb += [rd.w_en.eq(write), rd.w_addr.eq(self.load_addr[:entry_bits]), rd.w_data.eq(self.load_data)]
            else:
                m.submodules[name] = mem = Memory(shape=width, depth=depth, init=init(image_words),
                                                  attrs=NO_RW_COLLISIONS)
                rd, wr = mem.read_port(), mem.write_port()
                m.d.comb += [rd.en.eq(1), wr.en.eq(write), wr.addr.eq(self.load_addr[:entry_bits]),
                             wr.data.eq(self.load_data)]
            weights.append(rd)

        # -- r_: accept, read the row, register it, queue it -----------------------------------
        rec = data.StructLayout({"start": unsigned(row_word.field("start").width),
                                 "length": unsigned(row_word.field("length").width),
                                 "value": signed(VALUE_BITS), "kind": unsigned(2),
                                 "layer": range(max(2, lay.n_layers)), "bank": 1})
        m.submodules.queue = queue = SyncFIFOBuffered(width=rec.size, depth=self.queue_depth)
        r1_valid, r2_valid = Signal(), Signal()
        r1_event, r2_event = Signal(ev_layout), Signal(ev_layout)
        r2_row = Signal(row_word.struct_layout())
        # Credits: the queue's slots not claimed by r1, r2 or the queue itself (depth - level -
        # r1 - r2), a register, so that ``ready`` is one compare deep: an accepted event claims
        # one, a row read from the queue or a row of length 0 dropped at r2 gives it back.
        credits = Signal(range(self.queue_depth + 1), init=self.queue_depth)
        room = Signal()
        take = Signal()
        m.d.comb += room.eq(credits != 0)
        m.d.comb += [self.i.ready.eq(room), rows_rd.addr.eq(self.i.payload.row), rows_rd.en.eq(1)]
        dropped = r2_valid & (r2_row.length == 0)
        m.d.sync += credits.eq(credits - (self.i.valid & room) + take + dropped)
        m.d.sync += [r1_valid.eq(self.i.valid & room), r1_event.eq(self.i.payload),
                     r2_valid.eq(r1_valid), r2_event.eq(r1_event), r2_row.eq(rows_rd.data)]
        q_in = Signal(rec)
        m.d.comb += [q_in.start.eq(r2_row.start), q_in.length.eq(r2_row.length), q_in.value.eq(r2_event.value),
                     q_in.kind.eq(r2_event.kind), q_in.layer.eq(r2_event.layer), q_in.bank.eq(r2_event.bank),
                     queue.w_data.eq(q_in), queue.w_en.eq(r2_valid & (r2_row.length != 0))]

        # -- w_: walk the head row's entries -----------------------------------------------------
        head = Signal(rec)
        m.d.comb += head.eq(queue.r_data)
        w_active = Signal()
        w_ptr = Signal(range(max(2, lay.entries + 1)))
        w_left = Signal(row_word.field("length").width)
        w_last = Signal()            # w_left == 1, registered: the take is one gate deep
        w_row = Signal(rec)
        m.d.comb += [take.eq(queue.r_rdy & (~w_active | w_last)), queue.r_en.eq(take)]
        with m.If(take):
            m.d.sync += [w_active.eq(1), w_ptr.eq(head.start), w_left.eq(head.length), w_row.eq(head),
                         w_last.eq(head.length == 1)]
        with m.Elif(w_active):
            m.d.sync += [w_ptr.eq(w_ptr + 1), w_left.eq(w_left - 1), w_last.eq(w_left == 2)]
            with m.If(w_last):
                m.d.sync += w_active.eq(0)
        for rd in weights:
            m.d.comb += rd.addr.eq(w_ptr)

        # -- e_: the entries, registered; addresses and alignments per lane -------------------------
        e1_valid, e2_valid = Signal(), Signal()
        e1_row, e2_row = Signal(rec), Signal(rec)
        e2_words = [Signal(entry_word.struct_layout(), name=f"e2_word{p}") for p in range(P)]
        m.d.sync += [e1_valid.eq(w_active), e1_row.eq(w_row), e2_valid.eq(e1_valid), e2_row.eq(e1_row)]
        if self.weight_memory == "wide":
            wide = Signal(lay.window_word.struct_layout())
            m.d.comb += wide.eq(weights[0].data)
            m.d.sync += [w.eq(Cat(wide[f"value{p}"], wide.gate, Cat(wide[f"offset{p}"], wide.window)))
                         for p, w in enumerate(e2_words)]
        else:
            m.d.sync += [w.eq(rd.data) for w, rd in zip(e2_words, weights)]
        # Per row: the accumulator region, and the alignment of each gate (constants per layer/kind).
        amap = self.address_map
        base = Signal(range(amap.depth))
        aligns = [Signal(range(lay.max_align + 1), name=f"e2_align{k}") for k in range(3)]
        readout = Signal()
        m.d.comb += readout.eq(e2_row.kind == KIND_READOUT)
        with m.Switch(Cat(e2_row.kind, e2_row.layer)):
            for l, spec in enumerate(lay.layers):
                if lay.limits is not None:
                    ports = ((KIND_INPUT, list(self.align[l][0])), (KIND_RECURRENT, list(self.align[l][1])))
                else:
                    ports = ((KIND_INPUT, spec.input_align), (KIND_RECURRENT, spec.recurrent_align))
                for kind, al in ports:
                    with m.Case(kind | (l << 2)):
                        m.d.comb += [base.eq(lay.acc_base[l])] + [a.eq(v) for a, v in zip(aligns, al)]
            with m.Default():
                m.d.comb += [base.eq(amap.register_base)] + [a.eq(0) for a in aligns]
        for p, (port, word) in enumerate(zip(self.lanes, e2_words)):
            # z and r words at 0 and 1; g at 2 (ag) from input rows, 3 (hg) from recurrent rows.
            acc_kind = Mux(word.gate == GATE_G, Mux(e2_row.kind == KIND_RECURRENT, 3, 2), word.gate)
            layer_addr = base + Cat(acc_kind[:2], word.target)
            if amap.banks == 2:
                # The bank is the address bit above a bank's words (a power of two).
                layer_addr = Cat(layer_addr[:(amap.bank_words - 1).bit_length()], e2_row.bank)
            m.d.comb += [port.valid.eq(e2_valid),
                         port.addr.eq(Mux(readout, base + word.target, layer_addr)),
                         port.weight.eq(word.value), port.value.eq(e2_row.value),
                         port.align.eq(Mux(word.gate == 0, aligns[0], Mux(word.gate == 1, aligns[1], aligns[2])))]

        # Every credit back: nothing in r1, r2 or the queue.
        m.d.comb += self.busy.eq((credits != self.queue_depth) | w_active | e1_valid | e2_valid)
        return m
