"""cocotb test module: core v2 (Verilog of ``SharedCore`` with its ``dbg`` port) on Icarus or Verilator.

Started by :func:`sim.shared_core_cocotb.run_shared_core_jobs`, which passes a JSON config through
:func:`sim.runner.read_json_config`::

    {"jobs": [{"inputs": [[[int] * I] * T] * S,     # layer-0 integers (signed)
               "stall_probability": 0.3, "seed": 0,
               "load": [int, ...],                  # optional: load-port payloads (packed
                                                    # SharedRowLayout.load_word), before the sequences
               "input_size": I, "outputs": O, "neurons": N},   # the shapes of the model the job
               ...],                                            # runs (a capacity build's loaded one)
     "step_cycle_limit": 100000,                    # a step taking longer fails the test
     "results": "/abs/path/results.json"}

and reads back the results file::

    {"jobs": [[{"outputs": [[O ints] * T], "updates": [[[neuron, candidate, fire, y], ...] * T],
                "step_cycles": [T ints]}, ...S], ...],
     "cycles": total clock cycles, "wall_time_s": ..., "cycles_per_second": ...,
     "stalls": [{"input_idles": cycles the core waited for an input,
                 "output_backpressure": cycles an output waited for the sink}, ...per job]}

Protocol (as :func:`sim.shared_core_tb.run_shared_core`): after reset the core loads its
thresholds (``status__busy`` high); each sequence starts with a one-cycle ``start`` pulse while
the core is idle; ``i`` takes ``input_size`` beats per step (all of a sequence's beats are queued
at once, so the next step's first beat waits at the core while a step runs), ``o`` gives
``outputs`` beats per step. A job's ``load`` words go through the ``load`` stream (with the
job's input idles) before its first sequence, once the core is idle. The stream models are
:mod:`sim.streams`'; one set serves every job,
their pause patterns switched between jobs (:class:`SwitchablePauses`).

Monitors: the ``dbg`` port (or ports ``dbg__{u}__*``, one per update unit, taken in order within a
cycle) is sampled at every falling clock edge, when everything the next
rising edge samples has settled (whatever drives ``dbg``: registers or logic); a sequence's
updates are split into steps of ``neurons`` updates, in order, as :mod:`sim.shared_core_tb` does.
``status__step_cycles`` is read whenever ``status__steps`` rises
(a value-change trigger, then ``ReadOnly``): the cycles of the step that just ended.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from egru_accel.sim.runner import read_json_config
from egru_accel.sim.streams import StreamSink, StreamSource, TestbenchBase, no_pauses, random_pauses

__all__ = ["SharedCoreTestbench", "SwitchablePauses"]


class SwitchablePauses:
    """An infinite pause iterator (see :mod:`sim.streams`) whose pattern can be replaced:
    :func:`random_pauses` of a probability and seed, or :func:`no_pauses` for probability 0."""

    def __init__(self) -> None:
        self._it = no_pauses()

    def set(self, probability: float, seed: int) -> None:
        self._it = random_pauses(probability, seed) if probability else no_pauses()

    def __iter__(self):
        return self

    def __next__(self) -> bool:
        return next(self._it)


class SharedCoreTestbench(TestbenchBase):
    """Clock, reset, input source, output sink and monitors of one ``SharedCore``.

    Args:
        dut: The cocotb DUT (Verilog top level of ``SharedCore`` with ``config.debug``).
        neurons: Neuron updates per step (every hidden neuron of every layer).
        step_cycle_limit: Cycles one step may take before the test fails.
    """

    def __init__(self, dut, *, neurons: int, step_cycle_limit: int = 1_000_000) -> None:
        super().__init__(dut)
        self.neurons = int(neurons)
        self.step_cycle_limit = int(step_cycle_limit)
        self.cycle = 0                       # falling edges since the monitor started
        self.deadline: int | None = None     # cycle by which the current step must end
        self.updates: list[list] = []        # of the current sequence, in order
        self.step_cycles: list[int] = []     # of the current sequence
        self.source_pauses, self.sink_pauses = SwitchablePauses(), SwitchablePauses()
        self.source: StreamSource | None = None
        self.sink: StreamSink | None = None
        self.in_mask = (1 << len(dut.i__payload)) - 1
        self.out_bits = len(dut.o__payload)
        self.failure: str | None = None
        self.input_idles = 0                 # cycles the core waited for an input (see _monitor_dbg)
        self.output_backpressure = 0         # cycles an output waited for the sink

    async def start(self) -> None:
        dut = self.dut
        dut.start.value = 0
        # ``last`` stays 0: a sequence's last step then also fetches the recurrent rows of a step
        # that does not come (the results are the same; the Amaranth testbench sets it).
        if hasattr(dut, "last"):
            dut.last.value = 0
        dut.i__valid.value = 0
        dut.o__ready.value = 0
        dut.load__valid.value = 0
        # The simulator-side (GPI) clock, as sim.core_cocotb_test: no coroutine per clock edge.
        self.rst.value = 1
        self.clock = Clock(self.clk, self.period_ns, unit="ns", impl="gpi")
        self.clock.start()
        edge = RisingEdge(self.clk)
        for _ in range(self.reset_cycles):
            await edge
        self.rst.value = 0
        self.source = StreamSource(dut, "i", self.clk, idle=self.source_pauses)
        self.loader = StreamSource(dut, "load", self.clk, idle=self.source_pauses)
        self.sink = StreamSink(dut, "o", self.clk, backpressure=self.sink_pauses)
        cocotb.start_soon(self._monitor_dbg())
        cocotb.start_soon(self._monitor_steps())

    def _dbg_ports(self) -> list[tuple]:
        """(valid, neuron, candidate, fire, y) of each ``dbg`` port: ``dbg__*``, or ``dbg__{u}__*``
        for a core with several update units (unit u reports the u-th neuron of each group)."""
        dut = self.dut
        fields = ("valid", "neuron", "candidate", "fire", "y")
        if dut._get("dbg__valid") is not None:
            return [tuple(getattr(dut, f"dbg__{f}") for f in fields)]
        ports = []
        while dut._get(f"dbg__{len(ports)}__valid") is not None:
            ports.append(tuple(getattr(dut, f"dbg__{len(ports)}__{f}") for f in fields))
        if not ports:
            raise AttributeError("the DUT has no dbg port (build the core with SharedCoreConfig(debug=True))")
        return ports

    async def _monitor_dbg(self) -> None:
        ports = self._dbg_ports()
        valids = [p[0] for p in ports]
        dut = self.dut
        i_valid, i_ready, o_valid, o_ready = dut.i__valid, dut.i__ready, dut.o__valid, dut.o__ready
        edge = FallingEdge(self.clk)
        while True:
            await edge
            self.cycle += 1
            # Stalls the core saw: it would take an input but none is offered (the whole
            # sequence is queued, so only an idle of the source does that), or it offers an
            # output that is not taken.
            if i_ready.value == 1 and i_valid.value != 1:
                self.input_idles += 1
            if o_valid.value == 1 and o_ready.value != 1:
                self.output_backpressure += 1
            if any(v.value == 1 for v in valids):        # False for X/Z
                # Within a cycle, the units in order.
                for valid, neuron, cand, fire, y in ports:
                    if valid.value == 1:
                        self.updates.append([int(neuron.value), cand.value.to_signed(), int(fire.value),
                                             y.value.to_signed()])
            if self.deadline is not None and self.cycle > self.deadline:
                self.failure = (f"a step did not finish within {self.step_cycle_limit} cycles (cycle "
                                f"{self.cycle}, {self.sink.count if self.sink else 0} outputs received in total)")
                raise AssertionError(self.failure)

    async def _monitor_steps(self) -> None:
        dut = self.dut
        steps, step_cycles = dut.status__steps, dut.status__step_cycles
        change = steps.value_change
        last = 0
        while True:
            await change
            await ReadOnly()
            now = int(steps.value)
            if now == last + 1:
                self.step_cycles.append(int(step_cycles.value))
            elif now != 0:              # 0: the start pulse cleared the counter
                self.failure = f"status.steps went from {last} to {now}"
                raise AssertionError(self.failure)
            last = now

    async def load(self, words: list[int]) -> None:
        """Put ``words`` (load-port payloads) into the idle core, and wait until it took them all."""
        await self.wait_low(self.dut.status__busy, self.step_cycle_limit, "status.busy")
        for w in words:
            self.loader.send_nowait(int(w))
        await self.loader.wait()
        await RisingEdge(self.clk)

    async def run_sequence(self, sequence: list[list[int]], outputs: int) -> dict:
        """Start a new sequence and run its steps; its outputs, updates per step and step cycles."""
        dut = self.dut
        await self.wait_low(dut.status__busy, self.step_cycle_limit, "status.busy")
        await self.pulse(dut.start)
        self.updates, self.step_cycles = [], []
        mask = self.in_mask
        for step in sequence:
            for x in step:
                self.source.send_nowait(int(x) & mask)
        sign, wrap = 1 << (self.out_bits - 1), 1 << self.out_bits
        outs = []
        for t in range(len(sequence)):
            self.deadline = self.cycle + self.step_cycle_limit
            row = []
            for _ in range(outputs):
                v = await self.sink.recv()
                row.append(v - wrap if v & sign else v)
            outs.append(row)
        # The last step has ended once the core is idle again (its last output may have left the
        # output queue before that).
        await self.wait_low(dut.status__busy, self.step_cycle_limit, "status.busy")
        await ReadOnly()
        self.deadline = None
        steps = int(dut.status__steps.value)
        T = len(sequence)
        assert steps == T, f"status.steps is {steps} after a sequence of {T} steps"
        assert self.source.idle_now(), "the core finished the sequence without taking all its inputs"
        assert len(self.step_cycles) == T, f"saw {len(self.step_cycles)} step ends, expected {T}"
        # Split per step as sim.shared_core_tb does: N updates a step, in order (any extra ones go
        # with the last step, so that the comparison sees them).
        N = self.neurons
        flat = self.updates
        updates = [flat[t * N:(t + 1) * N] for t in range(T)]
        updates[-1] = updates[-1] + flat[T * N:]
        await RisingEdge(self.clk)
        return {"outputs": outs, "updates": updates, "step_cycles": list(self.step_cycles)}


@cocotb.test()
async def shared_core_jobs(dut) -> None:
    cfg = read_json_config()
    assert all(len(step) == int(job["input_size"]) for job in cfg["jobs"] for seq in job["inputs"] for step in seq)
    tb = SharedCoreTestbench(dut, neurons=int(cfg["jobs"][0]["neurons"]), step_cycle_limit=int(cfg["step_cycle_limit"]))
    assert len(dut.i__payload) == 16 and len(dut.o__payload) == 32
    await tb.start()
    wall = time.perf_counter()
    results, stalls = [], []
    for n, job in enumerate(cfg["jobs"]):
        p, seed = float(job["stall_probability"]), int(job["seed"])
        tb.source_pauses.set(p, seed)
        tb.sink_pauses.set(p, seed + 1)
        idles, backpressure = tb.input_idles, tb.output_backpressure
        if job.get("load"):
            await tb.load(job["load"])
            dut._log.info("job %d: %d load words taken", n, len(job["load"]))
        tb.neurons = int(job["neurons"])
        results.append([await tb.run_sequence(seq, int(job["outputs"])) for seq in job["inputs"]])
        stalls.append({"input_idles": tb.input_idles - idles,
                       "output_backpressure": tb.output_backpressure - backpressure})
        dut._log.info("job %d: %d sequences (stalls %.2f), %d cycles so far", n, len(job["inputs"]), p, tb.cycle)
    # Nothing more comes out once every sequence is done.
    for _ in range(20):
        await RisingEdge(dut.clk)
    total = sum(len(seq) for job in cfg["jobs"] for seq in job["inputs"])
    expected = sum(len(seq) * int(job["outputs"]) for job in cfg["jobs"] for seq in job["inputs"])
    assert tb.sink.count == expected and tb.sink.empty(), f"{tb.sink.count} outputs in all, expected {expected}"
    assert tb.failure is None, tb.failure
    wall = time.perf_counter() - wall
    stats = {"cycles": tb.cycle, "wall_time_s": wall, "cycles_per_second": tb.cycle / wall if wall > 0 else 0.0,
             "stalls": stalls}
    Path(cfg["results"]).write_text(json.dumps({"jobs": results, **stats}))
    dut._log.info("%d steps, %d cycles in %.2f s (%.0f cycles/s)", total, tb.cycle, wall,
                  stats["cycles_per_second"])
