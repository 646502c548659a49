"""cocotb models of a UART line (8N1) and a host-driver transport over them (cocotb 2.x).

:class:`UARTSource` drives the design's ``rx`` line, :class:`UARTSink` decodes its ``tx``
line, both with the bit time ``divisor`` clock periods of the design's UART
(:mod:`hw.uart`). :class:`SimTransport` is a :class:`firmware.driver.Transport` over the
two, so that the unchanged host driver (:class:`firmware.driver.EGRUDevice`) talks to the
simulated design bit by bit. The driver is synchronous: run it in a thread started with
:func:`cocotb.task.bridge`; the transport's ``write`` and ``read`` hand control back to the
simulator with :func:`cocotb.task.resume` and block the thread until they are done::

    source = UARTSource(dut.rx, dut.clk, divisor=8, period_ns=10)
    sink = UARTSink(dut.tx, divisor=8, period_ns=10)
    transport = SimTransport(source, sink, clk_hz=921_600)

    def host():                       # runs in a thread, simulator paused while it computes
        return EGRUDevice(transport).info()

    info = await bridge(host)()

Time: the simulation's clock period (``period_ns``) is a simulation choice; what counts is
cycles. ``read(n, timeout)`` converts the driver's ``timeout`` (seconds) into a budget of
``ceil(timeout * clk_hz)`` clock cycles of *simulated* time, so a missing answer ends the
read after that budget instead of hanging the simulation.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.task import resume
from cocotb.triggers import Event, FallingEdge, First, RisingEdge, Timer, ValueChange

from egru_accel.firmware.protocol import MAX_RESPONSE_PAYLOAD, RESPONSE_SOF

__all__ = ["UARTSource", "UARTSink", "SimTransport", "response_complete"]

_PS_PER_NS = 1000


def _check_timing(divisor, period_ns) -> None:
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 1:
        raise ValueError(f"divisor must be a positive integer number of clock cycles per bit, not {divisor!r}")
    if not isinstance(period_ns, int) or isinstance(period_ns, bool) or period_ns < 2 or period_ns % 2:
        raise ValueError(f"period_ns must be an even integer number of nanoseconds >= 2, not {period_ns!r}")


class UARTSource:
    """Sends bytes as 8N1 frames (start bit 0, 8 data bits LSB first, stop bit 1) on ``line``.

    The line idles high. Frames queued together follow each other without idle time. Every
    level change happens half a clock period after a rising edge of ``clk``, never at the
    edge where the design samples the line.

    Args:
        line: The design's UART input (1 bit).
        clk: The design's clock.
        divisor: Clock cycles per bit.
        period_ns: Clock period of the simulation, in ns (even).
    """

    def __init__(self, line, clk, *, divisor: int, period_ns: int) -> None:
        _check_timing(divisor, period_ns)
        self.line = line
        self.clk = clk
        self.period_ps = period_ns * _PS_PER_NS
        self.bit_ps = divisor * self.period_ps
        self.sent = 0                          # bytes completely sent (stop bit included)
        self._queue: collections.deque[int] = collections.deque()
        self._wake = Event()
        self._sending = False
        self.line.value = 1
        self._task = cocotb.start_soon(self._run())

    @property
    def idle(self) -> bool:
        return not self._queue and not self._sending

    def send_nowait(self, data: bytes) -> None:
        """Queue ``data``; returns at once."""
        self._queue.extend(bytes(data))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await RisingEdge(self.clk)
            await Timer(self.period_ps // 2, unit="step")
            self._sending = True
            while self._queue:
                byte = self._queue.popleft()
                for level in (0, *((byte >> k) & 1 for k in range(8)), 1):
                    self.line.value = level
                    await Timer(self.bit_ps, unit="step")
                self.sent += 1
            self._sending = False


class UARTSink:
    """Decodes 8N1 frames on ``line`` into :attr:`buffer`.

    A frame starts with a falling edge; each bit is sampled in its middle. A frame whose
    stop bit is low, or with a bit that is not 0 or 1 (X, Z), counts in
    :attr:`framing_errors` and is dropped.

    Attributes:
        buffer: Bytes received and not yet taken (``bytearray``; consumers delete from it).
        arrived: Set on every byte received (consumers clear it before waiting).
        received: Bytes received in total.
        last_ps: Simulation time (ps) of the last byte's stop-bit sample.
    """

    def __init__(self, line, *, divisor: int, period_ns: int) -> None:
        _check_timing(divisor, period_ns)
        self.line = line
        self.bit_ps = divisor * period_ns * _PS_PER_NS
        self.buffer = bytearray()
        self.arrived = Event()
        self.received = 0
        self.framing_errors = 0
        self.last_ps = 0
        self._task = cocotb.start_soon(self._run())

    def _level(self) -> int | None:
        value = self.line.value
        return int(value) if value.is_resolvable else None

    async def _run(self) -> None:
        while True:
            level = self._level()
            if level is None:                       # not driven yet (time 0): wait for a value
                await ValueChange(self.line)
                continue
            if level:
                await FallingEdge(self.line)
            else:                                   # low outside a frame: wait for idle first
                await RisingEdge(self.line)
                continue
            await Timer(self.bit_ps * 3 // 2, unit="step")     # middle of data bit 0
            byte, bad = 0, False
            for k in range(8):
                level = self._level()
                byte |= (level or 0) << k
                bad = bad or level is None
                await Timer(self.bit_ps, unit="step")
            # Middle of the stop bit: the next start edge can come right after it.
            if bad or self._level() != 1:
                self.framing_errors += 1
                continue
            self.buffer.append(byte)
            self.received += 1
            self.last_ps = get_sim_time(unit="step")
            self.arrived.set()


def response_complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole response frame (see :mod:`firmware.protocol`)."""
    start = data.find(bytes([RESPONSE_SOF]))
    if start < 0 or len(data) < start + 4:
        return False
    length = int.from_bytes(data[start + 2:start + 4], "little")
    return length <= MAX_RESPONSE_PAYLOAD and len(data) >= start + 6 + length


class SimTransport:
    """:class:`firmware.driver.Transport` over a simulated UART; call it from a
    :func:`cocotb.task.bridge` thread only.

    ``write`` queues the bytes on the source and returns (like a serial port's write).
    ``read(n, timeout)`` lets the simulation run until it has ``n`` bytes, or the bytes
    received end with a complete frame (``frame_end``), or, once some bytes are there, the
    line has stayed idle for ``gap_bytes`` byte times, or ``ceil(timeout * clk_hz)`` clock
    cycles have passed; it returns the bytes received (possibly none).

    Args:
        source: Drives the design's ``rx``.
        sink: Decodes the design's ``tx``.
        clk_hz: The clock frequency the design was built for (its UART divisor is
            ``clk_hz / baud``); converts the driver's seconds into cycles.
        gap_bytes: Idle line, in byte times (10 bits), that ends a read with data.
        frame_end: Predicate on the received bytes that ends a read early; ``None``: only
            ``n`` bytes, the gap or the timeout end it.

    Attributes:
        stats: ``writes``, ``reads``, ``bytes_written``, ``bytes_read``, ``timeouts``
            (reads that returned nothing), ``read_cycles`` (simulated cycles spent in reads).
    """

    def __init__(self, source: UARTSource, sink: UARTSink, *, clk_hz: float, gap_bytes: int = 32,
                 frame_end: Callable[[bytes], bool] | None = response_complete) -> None:
        if not clk_hz > 0:
            raise ValueError(f"clk_hz must be a positive frequency in Hz, not {clk_hz!r}")
        if not isinstance(gap_bytes, int) or gap_bytes < 1:
            raise ValueError(f"gap_bytes must be a positive integer, not {gap_bytes!r}")
        self.source = source
        self.sink = sink
        self.clk_hz = clk_hz
        self.period_ps = source.period_ps
        self.gap_ps = gap_bytes * 10 * sink.bit_ps
        self.frame_end = frame_end
        self.stats = {"writes": 0, "reads": 0, "bytes_written": 0, "bytes_read": 0, "timeouts": 0,
                      "read_cycles": 0}

    def cycles_for(self, seconds: float) -> int:
        """Clock cycles of ``seconds`` at ``clk_hz`` (rounded up)."""
        return math.ceil(max(0.0, seconds) * self.clk_hz)

    # Blocking API for the driver's thread.
    def write(self, data: bytes) -> None:
        resume(self._write)(bytes(data))

    def read(self, n: int, timeout: float) -> bytes:
        return resume(self._read)(n, timeout)

    # Coroutines that run in the simulator.
    async def _write(self, data: bytes) -> None:
        self.stats["writes"] += 1
        self.stats["bytes_written"] += len(data)
        self.source.send_nowait(data)

    async def _read(self, n: int, timeout: float) -> bytes:
        start = get_sim_time(unit="step")
        deadline = start + self.cycles_for(timeout) * self.period_ps
        buf = self.sink.buffer
        while True:
            if len(buf) >= n or (buf and self.frame_end is not None and self.frame_end(bytes(buf))):
                break
            now = get_sim_time(unit="step")
            limit = min(deadline, self.sink.last_ps + self.gap_ps) if buf else deadline
            if limit <= now:
                break
            self.sink.arrived.clear()
            await First(self.sink.arrived.wait(), Timer(limit - now, unit="step"))
        out = bytes(buf[:n])
        del buf[:n]
        self.stats["reads"] += 1
        self.stats["bytes_read"] += len(out)
        self.stats["timeouts"] += not out
        self.stats["read_cycles"] += (get_sim_time(unit="step") - start) // self.period_ps
        return out
