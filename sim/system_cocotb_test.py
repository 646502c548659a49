"""cocotb test module: the host driver against the Verilog of :class:`hw.system.EGRUSystem`.

Started by :func:`sim.system_round_trip.run_round_trip`, which passes a JSON config
(:func:`sim.runner.read_json_config`)::

    {"scenario": "round_trip",      # or "capacity": sim.capacity_round_trip.capacity_scenario
     "plan": {...},                 # see sim.system_round_trip.host_scenario
     "divisor": 8, "period_ns": 10, # the design's UART bit time in cycles; the simulated clock
     "bridge_period_ns": 26,        # optional: the UART's own clock (ports bridge_clk, bridge_rst)
     "clk_hz": 921600,              # the UART's clock rate the design was built for
     "driver_timeout_s": 2.0, "chunk": 256,
     "results": "/abs/path/results.json"}

and reads back ``{"log": host_scenario's log, "cycles", "wall_time_s", "transport",
"framing_errors"}``. The driver runs unchanged in a :func:`cocotb.task.bridge` thread; each
phase's ``probe`` holds the cycle count and the LEDs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.task import bridge, resume

from egru_accel.firmware.driver import EGRUDevice
from egru_accel.sim.runner import read_json_config
from egru_accel.sim.streams import TestbenchBase
from egru_accel.sim.capacity_round_trip import capacity_scenario
from egru_accel.sim.system_round_trip import host_scenario
from egru_accel.sim.uart_cocotb import SimTransport, UARTSink, UARTSource


@cocotb.test()
async def host_driver_round_trip(dut):
    config = read_json_config()
    period_ns, divisor = config["period_ns"], config["divisor"]
    tb = TestbenchBase(dut, period_ns=period_ns)
    link_period = config.get("bridge_period_ns")
    if link_period:
        # The UART and the bridge in their own clock domain: a second clock and reset.
        link_tb = TestbenchBase(dut, clock="bridge_clk", reset="bridge_rst", period_ns=link_period)
        link_clk = dut.bridge_clk
    else:
        link_tb, link_clk, link_period = None, dut.clk, period_ns
    source = UARTSource(dut.rx, link_clk, divisor=divisor, period_ns=link_period)
    sink = UARTSink(dut.tx, divisor=divisor, period_ns=link_period)
    link_started = cocotb.start_soon(link_tb.start()) if link_tb is not None else None
    await tb.start()
    if link_started is not None:
        await link_started
    transport = SimTransport(source, sink, clk_hz=config["clk_hz"])
    device = EGRUDevice(transport, timeout=config["driver_timeout_s"], chunk=config["chunk"])

    def cycles() -> int:
        return int(get_sim_time(unit="ns") // period_ns)

    @resume
    async def probe() -> dict:
        return {"cycle": cycles(), "leds": [int(b) for b in reversed(str(dut.leds.value))]}

    start = time.monotonic()
    scenario = {"round_trip": host_scenario, "capacity": capacity_scenario}[config.get("scenario", "round_trip")]
    log = await bridge(scenario)(device, config["plan"], probe=probe)
    wall = time.monotonic() - start
    results = {"log": log, "cycles": cycles(), "wall_time_s": wall, "transport": transport.stats,
               "framing_errors": sink.framing_errors}
    Path(config["results"]).write_text(json.dumps(results))
