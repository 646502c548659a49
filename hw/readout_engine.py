"""Core v2's readout engine: the readout's MACs off the lanes, ``macs`` per cycle.

With the readout on the lanes, an event's readout row takes ``ceil(O / P)`` lockstep cycles of
all P lanes for O MACs: at 10 outputs on 16 lanes that is one cycle for 10 of 16 MACs, and those
cycles sit on the step's critical path (docs/core-v2.md). The engine takes the last layer's
events as the update unit writes them and adds ``y * Wo[n, o]`` into O accumulators of its own,
``macs`` outputs per cycle, while the lanes take the recurrent rows.

Pipeline (an event in cycle t; it takes ``chunks = ceil(O / macs)`` cycles, chunk c in cycle
t + c)::

    t + c      weight word (n * chunks + c) read
    t + c + 1  the block RAM's data; chunk and value registered
    t + c + 2  the data registered (a block RAM's output is slow: on ECP5 it straight into a
               multiplier made the engine the core's worst path, 68 MHz at P = 16)
    t + c + 3  products registered (one multiplier each)
    t + c + 4  in outputs c * macs ... c * macs + macs - 1 (added at the end of t + c + 3)

Each accumulator is a register, written by its own chunk only, so no event waits for another.
``take_*`` reads output ``index`` (data two cycles later on ``take_data``) and clears it.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from egru_accel.quantize.shared_rows import pack_engine_words

from .construct import checked_construction
from .pipeline import NO_RW_COLLISIONS
from .mac_lane import _positive

__all__ = ["ReadoutEngine"]

ACC_BITS = 32


class ReadoutEngine(wiring.Component):
    """O 32-bit accumulators, ``acc[o] += Wo[n, o] * value`` for each event (``n``, ``value``)
    on ``i``; ``busy`` while an event is inside.

    ``weights``: the readout matrix [H, O] of signed ``weight_bits`` integers (zeros included:
    the engine takes every output of an event, ``chunks`` cycles per event), its memory's words
    :func:`~egru_accel.quantize.shared_rows.pack_engine_words`. ``loadable``: ``load_en`` writes
    word ``load_data`` at ``load_addr`` (while no event is inside), another model's weights.
    """


    def __init__(self, *, weights, weight_bits: int = 8, macs: int = 4, value_bits: int = 16,
                 loadable: bool = False, load_addr_bits: int | None = None, load_data_bits: int | None = None):
        with checked_construction(self):
            w = np.asarray(weights, dtype=np.int64)
            if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
                raise ValueError(f"weights must be a matrix [H, O], not of shape {list(w.shape)}")
            self.weight_bits = _positive("weight_bits", weight_bits, 2)
            lim = 1 << (weight_bits - 1)
            if w.min() < -lim or w.max() >= lim:
                raise ValueError(f"weights must fit {weight_bits} signed bits")
            self.macs = _positive("macs", macs, 1)
            self.value_bits = _positive("value_bits", value_bits, 2)
        self.weights = w
        self.hidden, self.outputs = w.shape
        self.macs = min(self.macs, self.outputs)
        self.chunks = -(-self.outputs // self.macs)
        self.loadable = bool(loadable)
        depth = max(2, self.hidden * self.chunks)
        members = {
            "i": In(stream.Signature(data.StructLayout({"neuron": range(max(2, self.hidden)),
                                                        "value": signed(value_bits)}))),
            "busy": Out(1),
            "take_en": In(1), "take_index": In(range(max(2, self.outputs))), "take_data": Out(signed(ACC_BITS)),
        }
        if self.loadable:
            members.update(load_en=In(1), load_addr=In(load_addr_bits or (depth - 1).bit_length()),
                           load_data=In(load_data_bits or self.macs * self.weight_bits))
        super().__init__(members)

    def _words(self):
        """Weight words (:func:`~egru_accel.quantize.shared_rows.pack_engine_words`)."""
        return [int(w) for w in pack_engine_words(self.weights, macs=self.macs, weight_bits=self.weight_bits)]

    def elaborate(self, platform):
        m = Module()
        R, C, W, O = self.macs, self.chunks, self.weight_bits, self.outputs
        # A load happens only while no event is inside: no read needs a write of its cycle kept out.
        m.submodules.weights = mem = Memory(shape=R * W, depth=max(2, self.hidden * C), init=self._words(),
                                            attrs=NO_RW_COLLISIONS if self.loadable else None)
        rd = mem.read_port()
        if self.loadable:
            wr = mem.write_port()
            m.d.comb += [wr.en.eq(self.load_en), wr.addr.eq(self.load_addr), wr.data.eq(self.load_data)]

        # Issue: one chunk per cycle; the next event is taken with the last chunk.
        busy_issue = Signal()
        chunk = Signal(range(max(2, C)))
        base = Signal(range(max(2, self.hidden * C)))
        value = Signal(signed(self.value_bits))
        take = Signal()
        m.d.comb += [take.eq(self.i.valid & (~busy_issue | (chunk == C - 1))), self.i.ready.eq(~busy_issue |
                                                                                             (chunk == C - 1))]
        with m.If(take):
            m.d.sync += [busy_issue.eq(1), chunk.eq(0), base.eq(self.i.payload.neuron * C),
                         value.eq(self.i.payload.value)]
        with m.Elif(busy_issue):
            with m.If(chunk == C - 1):
                m.d.sync += busy_issue.eq(0)
            with m.Else():
                m.d.sync += chunk.eq(chunk + 1)
        m.d.comb += [rd.addr.eq(base + chunk), rd.en.eq(1)]

        # r1: the block RAM's data, value registered; r2: the data registered; r3: products; r4: add.
        r1_valid, r2_valid, r3_valid = Signal(), Signal(), Signal()
        r0_chunk, r1_chunk, r2_chunk, r3_chunk = (Signal(range(max(2, C)), name=f"r{k}_chunk") for k in range(4))
        r0_value, r1_value, r2_value = (Signal(signed(self.value_bits), name=f"r{k}_value") for k in range(3))
        r0_valid = Signal()
        m.d.comb += [r0_valid.eq(busy_issue), r0_chunk.eq(chunk), r0_value.eq(value)]
        r2_word = Signal(R * W)
        m.d.sync += [r1_valid.eq(r0_valid), r1_chunk.eq(r0_chunk), r1_value.eq(r0_value),
                     r2_valid.eq(r1_valid), r2_chunk.eq(r1_chunk), r2_value.eq(r1_value),
                     r2_word.eq(rd.data)]        # the block RAM's output, in the cycle after its address
        products = [Signal(signed(W + self.value_bits), name=f"r3_product{r}") for r in range(R)]
        for r, p in enumerate(products):
            m.d.sync += p.eq(r2_word[r * W:(r + 1) * W].as_signed() * r2_value)
        m.d.sync += [r3_valid.eq(r2_valid), r3_chunk.eq(r2_chunk)]

        accs = [Signal(signed(ACC_BITS), name=f"acc{o}") for o in range(O)]
        take1 = Signal(signed(ACC_BITS))
        sel = Const(0, signed(ACC_BITS))
        for o, acc in enumerate(accs):
            sel = Mux(self.take_index == o, acc, sel)
        m.d.sync += [take1.eq(sel), self.take_data.eq(take1)]
        for o, acc in enumerate(accs):
            c, r = divmod(o, R)
            with m.If(r3_valid & (r3_chunk == c)):
                m.d.sync += acc.eq(acc + products[r])
            with m.Elif(self.take_en & (self.take_index == o)):
                m.d.sync += acc.eq(0)
        m.d.comb += self.busy.eq(busy_issue | r1_valid | r2_valid | r3_valid)
        return m
