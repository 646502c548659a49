"""cocotb bus models for Amaranth ``lib.stream`` interfaces (cocotb 2.x).

An Amaranth stream ``<prefix>`` appears at the Verilog top level as the ports
``<prefix>__valid``, ``<prefix>__ready`` and ``<prefix>__payload`` (see
:mod:`sim.verilog`; e.g. ``i__payload``, ``j__0__valid``, ``k__s__ready``). A
transfer happens at a rising edge of the clock when ``valid`` and ``ready`` are
both 1; the payload is the value present at that edge.

Timing model (same for both models): right after each rising edge the model
drives its outputs for the coming cycle (cocotb applies the writes after the
DUT has sampled the edge), then waits for :class:`~cocotb.triggers.ReadOnly` of
the same time step and samples ``valid``, ``ready`` and ``payload`` once all
logic has settled. Those settled values are exactly what the DUT's registers
see at the next rising edge, so they decide whether a transfer happens there.
This is correct also when ``ready`` depends combinationally on ``valid``.

Payloads are Python ``int``\\ s holding the raw bit pattern of the payload port
(``0 <= payload < 2**width``); a structured payload (``data.StructLayout``) is
one packed vector, see :mod:`sim.verilog` for how to pack/unpack it.

Pause generators are plain infinite iterators of ``bool``; ``True`` means
"pause this clock cycle". The models draw exactly one value per clock cycle,
whether or not it has an effect, so a pattern depends only on the cycle count.

Typical use inside a ``@cocotb.test()``::

    tb = TestbenchBase(dut)
    await tb.start()                       # clock on, reset pulsed
    src = StreamSource(dut, "i", dut.clk, idle=random_pauses(0.3, 1))
    snk = StreamSink(dut, "o", dut.clk, backpressure=random_pauses(0.3, 2))
    for x in values:
        src.send_nowait(x)
    got = [await snk.recv() for _ in values]
"""

from __future__ import annotations

import collections
import itertools
import random
from collections.abc import Iterator
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.handle import SimHandleBase
from cocotb.queue import Queue
from cocotb.triggers import Event, ReadOnly, RisingEdge

__all__ = ["StreamSink", "StreamSource", "TestbenchBase", "no_pauses", "random_pauses"]


def no_pauses() -> Iterator[bool]:
    """Return an infinite iterator that never pauses (always ``False``)."""
    return itertools.repeat(False)


def random_pauses(probability: float, seed: int) -> Iterator[bool]:
    """Return an infinite iterator of independent pauses.

    Args:
        probability: Chance that a given cycle is a pause (``True``),
            ``0 <= probability < 1`` (1 would stall the stream forever).
        seed: Seed of a private :class:`random.Random`; the same seed gives the
            same pattern, independent of other random number users.
    """
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"pause probability must satisfy 0 <= p < 1, got {probability!r}")
    rng = random.Random(seed)

    def gen() -> Iterator[bool]:
        while True:
            yield rng.random() < probability

    return gen()


def _port(dut: Any, name: str, *, required: bool, what: str) -> SimHandleBase | None:
    handle = dut._get(name)
    if handle is None and required:
        raise AttributeError(
            f"{what}: the DUT {dut._path} has no port {name!r}; Amaranth names stream ports "
            f"<prefix>__valid / <prefix>__ready / <prefix>__payload (see sim.verilog.stream_ports)"
        )
    return handle


def _is_high(handle: SimHandleBase) -> bool:
    # X/Z count as "not 1": a transfer needs both handshake signals at a clean 1.
    return str(handle.value) == "1"


class _StreamBase:
    def __init__(self, dut: Any, prefix: str, clock: SimHandleBase, *, kind: str) -> None:
        self.dut = dut
        self.prefix = prefix
        self.clock = clock
        self._what = f"{kind}({prefix!r})"
        self.payload = _port(dut, f"{prefix}__payload", required=True, what=self._what)
        self.valid = _port(dut, f"{prefix}__valid", required=False, what=self._what)
        self.ready = _port(dut, f"{prefix}__ready", required=False, what=self._what)
        self.width: int = len(self.payload)
        self.count: int = 0
        """Number of payloads transferred so far."""


class StreamSource(_StreamBase):
    """Drive an Amaranth stream that the DUT consumes (``In(stream.Signature(...))``).

    Drives ``<prefix>__valid`` and ``<prefix>__payload``, reads ``<prefix>__ready``
    (if the stream is ``always_ready`` there is no ready port and every presented
    payload is taken at the next edge).

    Once ``valid`` is raised it stays high with a stable payload until the
    transfer happens, as the stream protocol requires; *idle* only delays the
    start of a new transfer.

    Args:
        dut: The cocotb DUT handle (top level).
        prefix: Stream port prefix, e.g. ``"i"`` (ports ``i__valid``, ...).
        clock: The clock handle, e.g. ``dut.clk``.
        idle: Pause iterator (``True`` = do not start a transfer this cycle);
            default :func:`no_pauses`.

    Attributes:
        count: Number of payloads accepted by the DUT so far.
    """

    def __init__(self, dut: Any, prefix: str, clock: SimHandleBase, *, idle: Iterator[bool] | None = None) -> None:
        super().__init__(dut, prefix, clock, kind="StreamSource")
        if self.valid is None:
            raise AttributeError(
                f"{self._what}: the DUT has no port {prefix + '__valid'!r}; always_valid streams "
                f"are not supported by StreamSource"
            )
        self.idle: Iterator[bool] = idle if idle is not None else no_pauses()
        self._queue: collections.deque[int] = collections.deque()
        self._idle_event = Event()
        self._idle_event.set()
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def _check(self, payload: int) -> int:
        if isinstance(payload, bool) or not isinstance(payload, int):
            raise TypeError(f"{self._what}: payload must be an int, not {type(payload).__name__}")
        if not 0 <= payload < (1 << self.width):
            raise ValueError(
                f"{self._what}: payload {payload} does not fit the {self.width}-bit port "
                f"(need 0 <= payload < 2**{self.width}; encode negative values as two's complement)"
            )
        return payload

    def send_nowait(self, payload: int) -> None:
        """Queue *payload* (raw bit pattern, ``0 <= payload < 2**width``) for transfer."""
        self._queue.append(self._check(payload))
        self._idle_event.clear()

    async def send(self, payload: int) -> None:
        """Queue *payload* for transfer; returns at once (the queue is unbounded).

        Use :meth:`wait` to wait until everything queued has been accepted.
        """
        self.send_nowait(payload)

    def idle_now(self) -> bool:
        """Return ``True`` if nothing is queued or being presented."""
        return self._idle_event.is_set()

    async def wait(self) -> None:
        """Wait until every queued payload has been accepted by the DUT."""
        if not self._idle_event.is_set():
            await self._idle_event.wait()

    async def _run(self) -> None:
        edge = RisingEdge(self.clock)
        presenting = False
        transfer_at_next_edge = False
        while True:
            await edge
            if transfer_at_next_edge:
                presenting = False
                self.count += 1
                if not self._queue:
                    self._idle_event.set()
            pause = next(self.idle)
            if not presenting:
                if self._queue and not pause:
                    self.payload.value = self._queue.popleft()
                    self.valid.value = 1
                    presenting = True
                else:
                    self.valid.value = 0
            await ReadOnly()
            transfer_at_next_edge = presenting and (self.ready is None or _is_high(self.ready))


class StreamSink(_StreamBase):
    """Receive an Amaranth stream that the DUT produces (``Out(stream.Signature(...))``).

    Drives ``<prefix>__ready``, reads ``<prefix>__valid`` and
    ``<prefix>__payload``. ``ready`` is 0 until the first rising edge after
    construction.

    Args:
        dut: The cocotb DUT handle (top level).
        prefix: Stream port prefix, e.g. ``"o"``.
        clock: The clock handle, e.g. ``dut.clk``.
        backpressure: Pause iterator (``True`` = hold ``ready`` low this cycle);
            default :func:`no_pauses`. Must be ``None`` for ``always_ready``
            streams (no ready port).

    Attributes:
        count: Number of payloads received so far (including ones not yet
            taken with :meth:`recv`).
    """

    def __init__(
        self, dut: Any, prefix: str, clock: SimHandleBase, *, backpressure: Iterator[bool] | None = None
    ) -> None:
        super().__init__(dut, prefix, clock, kind="StreamSink")
        if self.ready is None and backpressure is not None:
            raise ValueError(f"{self._what}: the stream has no ready port (always_ready); backpressure is impossible")
        self.backpressure: Iterator[bool] = backpressure if backpressure is not None else no_pauses()
        self._queue: Queue[int] = Queue()
        if self.ready is not None:
            self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def recv(self) -> int:
        """Wait for and return the next received payload (raw bit pattern as ``int``)."""
        return await self._queue.get()

    def recv_nowait(self) -> int:
        """Return the next received payload; raises :class:`cocotb.queue.QueueEmpty` if none."""
        return self._queue.get_nowait()

    def empty(self) -> bool:
        """Return ``True`` if no received payload is waiting to be taken."""
        return self._queue.empty()

    async def _run(self) -> None:
        edge = RisingEdge(self.clock)
        sampled: int | None = None
        while True:
            await edge
            if sampled is not None:
                self._queue.put_nowait(sampled)
                self.count += 1
                sampled = None
            pause = next(self.backpressure)
            if self.ready is not None:
                self.ready.value = 0 if pause else 1
            await ReadOnly()
            ready = self.ready is None or _is_high(self.ready)
            valid = self.valid is None or _is_high(self.valid)
            if ready and valid:
                value = self.payload.value
                try:
                    sampled = int(value)
                except ValueError:
                    raise ValueError(
                        f"{self._what}: payload is {value} (contains X/Z) while valid and ready are 1"
                    ) from None


class TestbenchBase:
    """Own the clock and the reset of an Amaranth design.

    Amaranth's default (``sync``) domain has the ports ``clk`` and ``rst``; the
    reset is active high and synchronous.

    Args:
        dut: The cocotb DUT handle.
        clock: Name of the clock port.
        reset: Name of the reset port, or ``None`` if the design has none.
        period_ns: Clock period in nanoseconds (the runner's time precision is
            1 ps; the period must be an even number of picoseconds).
        reset_cycles: Number of rising edges during which reset is held high.

    Attributes:
        clk: The clock handle.
        rst: The reset handle (or ``None``).
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        dut: Any,
        *,
        clock: str = "clk",
        reset: str | None = "rst",
        period_ns: float = 10,
        reset_cycles: int = 3,
    ) -> None:
        if reset_cycles < 1:
            raise ValueError(f"reset_cycles must be >= 1, got {reset_cycles}")
        self.dut = dut
        self.clk = _port(dut, clock, required=True, what="TestbenchBase")
        self.rst = _port(dut, reset, required=True, what="TestbenchBase") if reset is not None else None
        self.period_ns = period_ns
        self.reset_cycles = reset_cycles
        self.clock: Clock | None = None

    async def start(self) -> None:
        """Start the clock and apply reset.

        Returns right after a rising edge at which reset was sampled high; from
        the next edge on the design runs (reset is low). Create stream models
        after this returns.
        """
        if self.clock is not None:
            raise RuntimeError("TestbenchBase.start() was already called")
        if self.rst is not None:
            self.rst.value = 1
        self.clock = Clock(self.clk, self.period_ns, unit="ns")
        self.clock.start()
        for _ in range(self.reset_cycles):
            await RisingEdge(self.clk)
        if self.rst is not None:
            self.rst.value = 0

    async def wait_low(self, signal: Any, limit: int, what: str) -> None:
        """Return right after the rising edge that follows a cycle with ``signal`` low; fail
        after ``limit`` cycles with ``what`` (for example ``"status.busy"``) in the message."""
        edge = RisingEdge(self.clk)
        for _ in range(limit):
            await edge
            await ReadOnly()
            if signal.value == 0:
                await edge
                return
        raise AssertionError(f"{what} stayed high for {limit} cycles")

    async def pulse(self, signal: Any) -> None:
        """Drive ``signal`` high for exactly one rising edge (call right after an edge)."""
        signal.value = 1
        await RisingEdge(self.clk)
        signal.value = 0

    async def cycles(self, n: int) -> None:
        """Wait for *n* rising edges of the clock."""
        edge = RisingEdge(self.clk)
        for _ in range(n):
            await edge
