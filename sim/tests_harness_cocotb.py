"""cocotb test module for the harness self-test (tests/test_sim_harness.py).

Runs inside the simulator against a stream "add one" design with ports
``i__valid/i__ready/i__payload`` (8 bits) and ``o__valid/o__ready/o__payload``
(9 bits). Configuration comes as JSON through :func:`sim.runner.read_json_config`
(environment variable ``SIM_HARNESS_CONFIG``)::

    {"count": 200, "seed": 1, "idle_probability": 0.3,
     "backpressure_probability": 0.3, "expected_offset": 1}

``expected_offset`` is what the test expects the design to add; the pytest side
sets it to 2 to check that a failing test is reported.
"""

from __future__ import annotations

import random

import cocotb

from egru_accel.sim.runner import read_json_config
from egru_accel.sim.streams import StreamSink, StreamSource, TestbenchBase, random_pauses


@cocotb.test(timeout_time=1, timeout_unit="ms")
async def stream_add_one_random_handshakes(dut) -> None:
    cfg = read_json_config()
    count = int(cfg["count"])
    seed = int(cfg["seed"])
    offset = int(cfg["expected_offset"])

    tb = TestbenchBase(dut)
    await tb.start()
    source = StreamSource(dut, "i", dut.clk, idle=random_pauses(float(cfg["idle_probability"]), seed + 1))
    sink = StreamSink(dut, "o", dut.clk, backpressure=random_pauses(float(cfg["backpressure_probability"]), seed + 2))

    rng = random.Random(seed)
    values = [rng.randrange(256) for _ in range(count)]
    for value in values:
        await source.send(value)

    received = [await sink.recv() for _ in range(count)]
    await source.wait()
    await tb.cycles(5)

    expected = [value + offset for value in values]
    mismatches = [(k, got, want) for k, (got, want) in enumerate(zip(received, expected)) if got != want]
    assert not mismatches, (
        f"{len(mismatches)} of {count} outputs differ from input+{offset}; "
        f"first (index, got, expected): {mismatches[:5]}"
    )
    assert source.count == count, f"source sent {source.count} payloads, expected {count}"
    assert sink.count == count, f"sink received {sink.count} payloads, expected {count} (extra transfers?)"
    assert sink.empty()
    dut._log.info("checked %d transfers", count)
