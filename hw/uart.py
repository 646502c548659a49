"""8N1 UART receiver and transmitter as stream components (for the board bridge).

Both take ``divisor`` = clock cycles per bit (e.g. 12 MHz / 115200 baud -> 104).
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .construct import checked_construction

__all__ = ["UARTRx", "UARTTx", "check_divisor"]


def check_divisor(divisor) -> int:
    if not isinstance(divisor, int) or isinstance(divisor, bool):
        raise TypeError(f"divisor must be an integer number of clock cycles per bit, not {divisor!r}")
    if divisor < 4:
        raise ValueError(f"divisor must be at least 4 clock cycles per bit, not {divisor}")
    return divisor


class _UARTComponent(wiring.Component):
    def __init__(self, *, divisor: int):
        with checked_construction(self):
            self.divisor = check_divisor(divisor)
        super().__init__()


class UARTRx(_UARTComponent):
    """Receives 8N1 frames on ``rx`` (idle high) and emits each byte on ``o``.

    The line is sampled in the middle of each bit. A byte whose stop bit is low is
    dropped and counted in ``framing_errors``; a byte that arrives while ``o`` still
    holds the previous one is dropped and counted in ``overruns``.
    """
    rx: In(1, init=1)
    o: Out(stream.Signature(8))
    framing_errors: Out(16)
    overruns: Out(16)


    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        rx_sync = Signal(2, init=0b11)          # two flip-flops against metastability
        m.d.sync += rx_sync.eq((rx_sync << 1) | self.rx)
        line = rx_sync[1]
        timer = Signal(range(d + d // 2 + 1))
        bit = Signal(range(10))
        shreg = Signal(8)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    # First sample point: the middle of data bit 0, 1.5 bit times after the start edge.
                    m.d.sync += [timer.eq(d + d // 2 - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shreg.eq((line << 7) | (shreg >> 1)), bit.eq(bit + 1), timer.eq(d - 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    with m.If(~line):
                        m.d.sync += self.framing_errors.eq(self.framing_errors + 1)
                    with m.Elif(self.o.valid & ~self.o.ready):
                        m.d.sync += self.overruns.eq(self.overruns + 1)
                    with m.Else():
                        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                    m.next = "WAIT_IDLE"
            with m.State("WAIT_IDLE"):
                # A framing error leaves the line low: wait for it to return high.
                with m.If(line):
                    m.next = "IDLE"
        return m


class UARTTx(_UARTComponent):
    """Sends each byte taken from ``i`` as an 8N1 frame on ``tx`` (idle high)."""
    i: In(stream.Signature(8))
    tx: Out(1, init=1)


    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        timer = Signal(range(d))
        bits = Signal(9)                        # stop, data[7:0]: shifted out LSB first
        left = Signal(range(10))
        # Ready only once the stop bit has lasted its full time.
        m.d.comb += self.i.ready.eq((left == 0) & (timer == 0))
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Elif(left != 0):
            m.d.sync += [self.tx.eq(bits[0]), bits.eq(bits >> 1), timer.eq(d - 1), left.eq(left - 1)]
        with m.If(self.i.valid & self.i.ready):
            # The start bit goes out at once, so back-to-back frames have no idle cycle.
            m.d.sync += [self.tx.eq(0), bits.eq((1 << 8) | self.i.payload), left.eq(9), timer.eq(d - 1)]
        return m
