"""A lane's weight memory in iCE40 UP5K single-port RAM (SB_SPRAM256KA).

The UP5K has four SPRAM blocks of 16384 words x 16 bits next to its thirty 4-kbit EBRs.
The weights are by far the largest memory of a core, so on the iCEBreaker they live in
SPRAM. SPRAM cannot be initialised by the bitstream: a board built this way starts without
a model and gets its weights over the UART (see docs/protocol.md).

Words wider than 16 bits take several blocks side by side, more than 16384 words several
blocks deep. Reads have one cycle of latency, like a synchronous
:class:`amaranth.lib.memory.Memory` read port that is always enabled. The port is single:
a write takes the cycle (the core writes only while idle, when no read matters).
"""

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .construct import checked_construction

__all__ = ["ICE40WeightRAM", "SPRAM_WORDS", "SPRAM_BITS", "spram_blocks"]

#: Geometry of one SB_SPRAM256KA.
SPRAM_WORDS = 16384
SPRAM_BITS = 16


def spram_blocks(width: int, depth: int) -> int:
    """SPRAM blocks for a ``width``-bit, ``depth``-word memory."""
    return -(-width // SPRAM_BITS) * -(-depth // SPRAM_WORDS)


class ICE40WeightRAM(wiring.Component):
    """``depth`` words of ``width`` bits in SB_SPRAM256KA blocks.

    ``addr``/``data``: read port (``data`` holds word ``addr`` of the previous cycle);
    ``w_en``/``w_addr``/``w_data``: write port, which has priority over the read.
    """

    def __init__(self, *, width: int, depth: int):
        with checked_construction(self):
            for name, value in (("width", width), ("depth", depth)):
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self.width, self.depth = width, depth
        addr_shape = range(max(2, depth))
        super().__init__({"addr": In(addr_shape), "data": Out(width),
                          "w_en": In(1), "w_addr": In(addr_shape), "w_data": In(width)})

    def elaborate(self, platform):
        m = Module()
        columns = -(-self.width // SPRAM_BITS)
        rows = -(-self.depth // SPRAM_WORDS)
        addr = Signal(max(14, len(self.addr)))
        m.d.comb += addr.eq(self.addr)
        with m.If(self.w_en):
            m.d.comb += addr.eq(self.w_addr)
        w_data = Signal(columns * SPRAM_BITS)
        m.d.comb += w_data.eq(self.w_data)
        # The block row that was read, for the output multiplexer one cycle later.
        r_row = Signal(range(max(2, rows)))
        m.d.sync += r_row.eq(addr >> 14 if rows > 1 else 0)
        row_data = []
        for r in range(rows):
            select = Signal(name=f"cs{r}")
            m.d.comb += select.eq((addr >> 14) == r if rows > 1 else 1)
            out = Signal(columns * SPRAM_BITS, name=f"row{r}_data")
            for c in range(columns):
                m.submodules[f"spram_{r}_{c}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=addr[:14], i_DATAIN=w_data[c * SPRAM_BITS:(c + 1) * SPRAM_BITS],
                    i_MASKWREN=Const(0b1111, 4), i_WREN=self.w_en, i_CHIPSELECT=select, i_CLOCK=ClockSignal(),
                    i_STANDBY=Const(0, 1), i_SLEEP=Const(0, 1), i_POWEROFF=Const(1, 1),
                    o_DATAOUT=out[c * SPRAM_BITS:(c + 1) * SPRAM_BITS])
            row_data.append(out)
        m.d.comb += self.data.eq(row_data[0])
        for r in range(1, rows):
            with m.If(r_row == r):
                m.d.comb += self.data.eq(row_data[r])
        return m
