"""Stream building blocks for pipelines that run at the clock the silicon allows.

A valid/ready handshake that passes ``ready`` backwards through logic builds a combinational
path from the last stage of a pipeline to the first; at full clock that path, not the
arithmetic, sets Fmax (core v1: ``s_ready`` through 8 LUT levels). :class:`SkidBuffer` cuts it:
its ``i.ready`` and ``o.valid`` come straight from flip-flops, and it still moves one
transfer per cycle.
"""

from __future__ import annotations

from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .construct import checked_construction

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """A two-entry buffer between two streams of ``shape``: registered ``i.ready`` and
    ``o.valid``/``o.payload``, full throughput, order kept, nothing lost.

    When ``o`` stalls, the transfer that ``i`` accepted in the same cycle (``i.ready`` was
    already high) lands in the skid register; ``i.ready`` drops in the next cycle. The
    latency from ``i`` to ``o`` is one cycle.
    """

    def __init__(self, shape):
        with checked_construction(self):
            try:
                Shape.cast(shape)
            except TypeError:
                raise TypeError(f"shape must be a shape-castable object, not {shape!r}") from None
            self.shape = shape
        super().__init__({"i": In(stream.Signature(self.shape)), "o": Out(stream.Signature(self.shape))})

    def elaborate(self, platform):
        m = Module()
        skid = Signal.like(self.i.payload)
        skid_full = Signal()
        # i.ready is "the skid register is empty": a flip-flop, whatever o.ready does.
        m.d.comb += self.i.ready.eq(~skid_full)
        i_take = self.i.valid & self.i.ready
        o_free = ~self.o.valid | self.o.ready       # the output register can load this cycle
        with m.If(o_free):
            with m.If(skid_full):
                m.d.sync += [self.o.payload.eq(skid), self.o.valid.eq(1), skid_full.eq(0)]
            with m.Else():
                m.d.sync += self.o.valid.eq(i_take)
                with m.If(i_take):
                    m.d.sync += self.o.payload.eq(self.i.payload)
        with m.Elif(i_take):
            m.d.sync += [skid.eq(self.i.payload), skid_full.eq(1)]
        return m
