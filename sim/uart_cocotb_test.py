"""cocotb test module: the UART models of :mod:`sim.uart_cocotb` against :mod:`hw.uart`.

The design is an echo (``UARTRx -> FIFO -> UARTTx``, top-level ports ``rx``, ``tx``, ``clk``,
``rst``, ``framing_errors``) built with ``divisor`` clock cycles per bit. Config (JSON, see
:func:`sim.runner.read_json_config`)::

    {"divisor": 8, "period_ns": 10, "clk_hz": 921600, "data": [bytes as ints], "timeout_s": 0.0005}

The transport is driven from a :func:`cocotb.task.bridge` thread exactly as the host driver
drives it.
"""

from __future__ import annotations

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.task import bridge

from egru_accel.sim.runner import read_json_config
from egru_accel.sim.streams import TestbenchBase
from egru_accel.sim.uart_cocotb import SimTransport, UARTSink, UARTSource


@cocotb.test()
async def echo_through_transport(dut):
    config = read_json_config()
    divisor, period_ns, clk_hz = config["divisor"], config["period_ns"], config["clk_hz"]
    data = bytes(config["data"])
    tb = TestbenchBase(dut, period_ns=period_ns)
    await tb.start()
    source = UARTSource(dut.rx, dut.clk, divisor=divisor, period_ns=period_ns)
    sink = UARTSink(dut.tx, divisor=divisor, period_ns=period_ns)
    transport = SimTransport(source, sink, clk_hz=clk_hz, frame_end=None)
    now_cycles = lambda: get_sim_time(unit="ns") / period_ns  # noqa: E731
    timings = {}

    def host():
        # Everything echoes, bit for bit, whatever the read size.
        transport.write(data[:5])
        transport.write(data[5:])
        got = b""
        while len(got) < len(data):
            part = transport.read(len(data) - len(got), 1.0)
            assert part, f"no echo after {len(got)} of {len(data)} bytes"
            got += part
        assert got == data, f"echo differs: sent {data.hex()}, got {got.hex()}"
        # Nothing more arrives: the read ends after exactly its cycle budget, empty.
        before = now_cycles()
        assert transport.read(16, config["timeout_s"]) == b""
        timings["silent_read_cycles"] = now_cycles() - before
        # A read for more than arrives ends once the line stays idle (the gap), with all of it.
        transport.write(data[:3])
        before = now_cycles()
        got = transport.read(100, 1.0)
        timings["gap_read_cycles"] = now_cycles() - before
        assert got == data[:3], got.hex()

    await bridge(host)()
    budget = transport.cycles_for(config["timeout_s"])
    assert timings["silent_read_cycles"] == budget, (timings, budget)
    # 3 bytes there and back (4 to 5 byte times), then the 32-byte-time gap; far below 1 s.
    byte = 10 * divisor
    assert (32 + 3) * byte <= timings["gap_read_cycles"] < (32 + 6) * byte, timings
    assert sink.framing_errors == 0 and int(dut.framing_errors.value) == 0
    assert source.idle and source.sent == len(data) + 3
    assert transport.stats["timeouts"] == 1
    assert transport.stats["bytes_read"] == len(data) + 3
