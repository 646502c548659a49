"""cocotb test module: the EGRU core (Verilog of ``EGRUCore`` with its debug ports) on Icarus or Verilator.

Started by :func:`sim.cocotb_core.run_sequences`, which passes a JSON config through
:func:`sim.runner.read_json_config`::

    {"inputs": [[[int, ...] * I] * T] * N,   # layer-0 integers (signed)
     "lanes": P, "outputs": O, "input_size": I,
     "stall_probability": 0.3, "seed": 0,
     "step_cycle_limit": 100000,              # a step taking longer fails the test
     "results": "/abs/path/results.json"}

and reads back the results file::

    {"sequences": [{"outputs": [[O ints] * T], "updates": [[step, layer, neuron, candidate,
                    fire, state], ...], "step_cycles": [T ints]}, ...],
     "cycles": total clock cycles, "wall_time_s": ..., "cycles_per_second": ...}

Protocol (the same as :func:`sim.amaranth_tb.run_core`): the core clears its memories
after reset (``status__busy`` high); each sequence starts with a one-cycle
``ctl__start`` pulse while the core is idle; ``i`` takes ``input_size`` beats per step,
``o`` gives ``outputs`` beats per step; ``status__step_cycles`` is read one cycle after a
step's last output handshake. ``dbg__k__*`` report one neuron update per lane and cycle.

Speed: the stream models of :mod:`sim.streams` do the handshakes; the debug monitor
wakes up once per rising edge and reads only the ``valid`` bits, and the other fields
only when one is set. The ``dbg`` ports are driven by registers of the lanes' update
pipelines, so at the rising edge they still hold the values that edge samples (no
``ReadOnly`` phase needed). The clock is cocotb's simulator-side (GPI) clock. Measured
(4 lanes, 128 neurons): about 6,200 cycles/s on Icarus, against about 7,600 cycles/s for
Icarus alone with a plain Verilog testbench; Icarus itself is the bottleneck there. On
Verilator the same testbench runs 3x (1 lane) to 10x (8 lanes) faster (docs/simulators.md),
and this module's per-cycle Python is then the bottleneck.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge
from cocotb.types import LogicArray

from egru_accel.sim.runner import read_json_config
from egru_accel.sim.streams import StreamSink, StreamSource, TestbenchBase, no_pauses, random_pauses

__all__ = ["CoreTestbench"]


class CoreTestbench(TestbenchBase):
    """Clock, reset, input source, output sink and debug monitor of one ``EGRUCore``.

    Args:
        dut: The cocotb DUT (Verilog top level of ``EGRUCore`` with ``config.debug``).
        lanes: Number of lanes ``P`` (``dbg__0`` ... ``dbg__{P-1}``).
        stall_probability: Chance of an idle input cycle and of a back-pressure
            cycle on the output (independent patterns); 0 means none.
        seed: Seed of the idle (``seed``) and back-pressure (``seed + 1``) patterns.
        step_cycle_limit: Cycles one step may take before the test fails.
    """

    def __init__(self, dut, *, lanes: int, stall_probability: float = 0.0, seed: int = 0,
                 step_cycle_limit: int = 1_000_000) -> None:
        super().__init__(dut)
        self.lanes = lanes
        self.stall_probability = float(stall_probability)
        self.seed = int(seed)
        self.step_cycle_limit = int(step_cycle_limit)
        self.cycle = 0                      # rising edges since the monitor started
        self.deadline: int | None = None    # cycle by which the current step must end
        self.updates: list[list[int]] = []  # where the monitor appends neuron updates
        self.source: StreamSource | None = None
        self.sink: StreamSink | None = None
        self.in_bits = len(dut.i__payload)
        self.out_bits = len(dut.o__payload)

    def _pauses(self, seed: int):
        if self.stall_probability:
            return random_pauses(self.stall_probability, seed)
        return no_pauses()

    async def start(self) -> None:
        dut = self.dut
        dut.ctl__start.value = 0
        dut.cfg__valid.value = 0
        dut.i__valid.value = 0
        dut.o__ready.value = 0
        # TestbenchBase.start() with the simulator-side (GPI) clock instead of the default Python
        # coroutine clock, which costs two coroutine resumptions per cycle. Safe on Icarus: the
        # clock toggles in time steps of its own; the testbench's writes still go through
        # cocotb's ReadWrite write scheduling (COCOTB_TRUST_INERTIAL_WRITES is not set).
        self.rst.value = 1
        self.clock = Clock(self.clk, self.period_ns, unit="ns", impl="gpi")
        self.clock.start()
        edge = RisingEdge(self.clk)
        for _ in range(self.reset_cycles):
            await edge
        self.rst.value = 0
        self.source = StreamSource(dut, "i", self.clk, idle=self._pauses(self.seed))
        self.sink = StreamSink(dut, "o", self.clk, backpressure=self._pauses(self.seed + 1))
        cocotb.start_soon(self._monitor())

    async def _monitor(self) -> None:
        dut, P = self.dut, self.lanes
        valid = [getattr(dut, f"dbg__{k}__valid") for k in range(P)]
        fields = [tuple(getattr(dut, f"dbg__{k}__{f}") for f in ("layer", "neuron", "candidate", "fire", "state"))
                  for k in range(P)]
        lanes = list(zip(valid, fields))
        steps = dut.status__steps
        edge = RisingEdge(self.clk)
        while True:
            await edge
            self.cycle += 1
            # The dbg ports come straight from registers: at the edge they still hold the
            # values this edge samples. One cheap read per lane and cycle; the other fields
            # are read only for lanes that report an update (Logic == 1 is False for X/Z).
            if any(v.value == 1 for v in valid):
                step = int(steps.value)
                updates_append = self.updates.append
                for v, (layer, neuron, cand, fire, state) in lanes:
                    if v.value == 1:
                        # int() of a Logic / LogicArray is unsigned (1-bit ports give a Logic).
                        updates_append([step, int(layer.value), int(neuron.value), cand.value.to_signed(),
                                        int(fire.value), state.value.to_signed()])
            if self.deadline is not None and self.cycle > self.deadline:
                raise AssertionError(
                    f"a step did not finish within {self.step_cycle_limit} cycles (cycle {self.cycle}, "
                    f"{self.sink.count if self.sink else 0} outputs received in total)")

    async def run_sequence(self, sequence: list[list[int]], outputs: int) -> dict:
        """Start a new sequence and run its steps; returns outputs, updates and step cycles."""
        dut = self.dut
        await self.wait_low(dut.status__busy, self.step_cycle_limit, "status.busy")
        await self.pulse(dut.ctl__start)
        updates: list[list[int]] = []
        self.updates = updates
        mask = (1 << self.in_bits) - 1
        for step in sequence:
            for x in step:
                self.source.send_nowait(int(x) & mask)
        outs, step_cycles = [], []
        edge = RisingEdge(self.clk)
        for t in range(len(sequence)):
            self.deadline = self.cycle + self.step_cycle_limit
            outs.append([LogicArray.from_unsigned(await self.sink.recv(), self.out_bits).to_signed()
                         for _ in range(outputs)])
            # recv() returns right after the edge of the last handshake; status.step_cycles
            # is updated at the following edge.
            await edge
            await ReadOnly()
            step_cycles.append(int(dut.status__step_cycles.value))
            steps = int(dut.status__steps.value)
            assert steps == t + 1, f"status.steps is {steps} after step {t} of the sequence (expected {t + 1})"
        self.deadline = None
        assert self.source.idle_now(), "the core finished the sequence without taking all its inputs"
        return {"outputs": outs, "updates": updates, "step_cycles": step_cycles}


@cocotb.test()
async def egru_core_sequences(dut) -> None:
    cfg = read_json_config()
    inputs, O = cfg["inputs"], int(cfg["outputs"])
    tb = CoreTestbench(dut, lanes=int(cfg["lanes"]), stall_probability=float(cfg["stall_probability"]),
                       seed=int(cfg["seed"]), step_cycle_limit=int(cfg.get("step_cycle_limit", 1_000_000)))
    assert len(dut.i__payload) >= 1 and all(len(step) == int(cfg["input_size"]) for seq in inputs for step in seq)
    await tb.start()
    wall = time.perf_counter()
    results = []
    for n, seq in enumerate(inputs):
        results.append(await tb.run_sequence(seq, O))
        if (n + 1) % 50 == 0:
            dut._log.info("%d of %d sequences, %d cycles", n + 1, len(inputs), tb.cycle)
    wall = time.perf_counter() - wall
    stats = {"cycles": tb.cycle, "wall_time_s": wall, "cycles_per_second": tb.cycle / wall if wall > 0 else 0.0}
    Path(cfg["results"]).write_text(json.dumps({"sequences": results, **stats}))
    dut._log.info("%d sequences, %d cycles in %.2f s (%.0f cycles/s)", len(inputs), tb.cycle, wall,
                  stats["cycles_per_second"])
