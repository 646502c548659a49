"""Run core v2 (:class:`~egru_accel.hw.shared_core.SharedCore`) in the Amaranth simulator.

:func:`run_shared_core` feeds sequences through ``i`` (with ``start`` before each), takes the
outputs from ``o``, records every neuron update from the debug port and every step's cycles,
with optional random idle cycles on the input and back-pressure on the output.
:func:`compare_with_golden` checks all of it against the golden model, integer for integer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from amaranth.sim import Simulator

from egru_accel.hw.shared_core import STATE_NAMES, SharedCore, SharedCoreConfig
from egru_accel.quantize import golden
from egru_accel.quantize.model import QuantModel
from egru_accel.quantize.shared_rows import SharedRowImage

__all__ = ["SharedCoreRecord", "Phase", "run_shared_core", "run_shared_core_phases", "compare_with_golden"]


@dataclass
class SharedCoreRecord:
    """What the core did: ``outputs[s]`` [T, O] per sequence; ``updates[s][t]``: (global neuron,
    candidate, fire, y) in the order the unit produced them; ``step_cycles[s]`` [T];
    ``state_cycles``: cycles spent in each sequencer state (``STATE_NAMES``) over the run;
    ``lanes_busy_cycles``: cycles in which the lanes took entries."""
    outputs: list = field(default_factory=list)
    updates: list = field(default_factory=list)
    step_cycles: list = field(default_factory=list)
    state_cycles: dict = field(default_factory=dict)
    lanes_busy_cycles: int = 0


def _pauses(rng, probability):
    while True:
        yield bool(rng is not None and probability and rng.random() < probability)


def run_shared_core(image: SharedRowImage, x: np.ndarray, *, config: SharedCoreConfig | None = None,
                    stall_probability: float = 0.0, seed: int = 0, vcd: str | None = None,
                    load=None, sink_stall_probability: float | None = None) -> SharedCoreRecord:
    """Simulate the sequences ``x`` [S, T, I] (layer-0 integers), each after a ``start``.

    ``stall_probability``: of an idle input cycle and of a cycle without ``o.ready``;
    ``sink_stall_probability`` sets the latter on its own (a slow host).

    ``load``: writes (memory, address, data), as :meth:`SharedRowImage.load_writes` lists them,
    put through the core's ``load`` port (with the input's idles) before the first sequence.
    The monitor fails the run if ``load`` is ever ready while the core is busy."""
    return run_shared_core_phases(image, [Phase(x=x, load=load)], config=config,
                                  stall_probability=stall_probability, seed=seed, vcd=vcd,
                                  sink_stall_probability=sink_stall_probability)[0]


@dataclass
class Phase:
    """Part of a run: ``load`` (writes, or ``None``), then the sequences ``x`` [S, T, I] of the
    model ``running`` (the image whose sizes the core then has: a capacity build's placed model;
    ``None``: the image the core was built with)."""
    x: np.ndarray
    load: list | None = None
    running: SharedRowImage | None = None


def run_shared_core_phases(image: SharedRowImage, phases: list, *, config: SharedCoreConfig | None = None,
                           stall_probability: float = 0.0, seed: int = 0, vcd: str | None = None,
                           sink_stall_probability: float | None = None) -> list:
    """Simulate one core built for ``image`` through ``phases`` (:class:`Phase`) in turn, in one
    simulation: a capacity build loading one model after another. One :class:`SharedCoreRecord`
    per phase (``state_cycles`` counted from the phase's first load write or ``start``)."""
    config = SharedCoreConfig(debug=True) if config is None else config
    if not config.debug:
        raise ValueError("run_shared_core needs a core with the debug port (debug=True)")
    plan = []
    for phase in phases:
        run = phase.running if phase.running is not None else image
        x = np.asarray(phase.x, dtype=np.int64)
        if x.ndim != 3 or x.shape[2] != run.input_size:
            raise ValueError(f"expected inputs [S, T, {run.input_size}], got {list(x.shape)}")
        plan.append((x, phase.load, run))
    lay = image.layout
    dut = SharedCore(image, config)
    rng = np.random.default_rng(seed)
    src_pause = _pauses(rng, stall_probability)
    sink_pause = _pauses(np.random.default_rng(seed + 1),
                         stall_probability if sink_stall_probability is None else sink_stall_probability)
    recs = [SharedCoreRecord() for _ in plan]
    updates: list = [[] for _ in plan]
    completed: list = [[] for _ in plan]        # step_cycles of every step, in order
    now = [0]                                   # the phase under way (set by the source)
    sunk = [0]                                  # the phases whose outputs are all in

    async def source(ctx):
        # A sequence's inputs back to back, as fast as the core takes them (with two banks it
        # takes a step's inputs while the step before sweeps); between sequences, ``start``
        # once the last step has finished. A phase's load waits for the outputs before it.
        for k, (x, load, run) in enumerate(plan):
            S, T, I = x.shape
            await ctx.tick().until(~dut.status.busy)
            while sunk[0] < k:
                await ctx.tick()
            now[0] = k
            for mem, addr, word in (load or ()):
                while next(src_pause):
                    ctx.set(dut.load.valid, 0)
                    await ctx.tick()
                ctx.set(dut.load.valid, 1)
                ctx.set(dut.load.payload.mem, int(mem))
                ctx.set(dut.load.payload.addr, int(addr))
                ctx.set(dut.load.payload.data, int(word))
                await ctx.tick().until(dut.load.ready)
            ctx.set(dut.load.valid, 0)
            for s in range(S):
                ctx.set(dut.start, 1)
                await ctx.tick()
                ctx.set(dut.start, 0)
                for t in range(T):
                    for j in range(I):
                        while next(src_pause):
                            ctx.set(dut.i.valid, 0)
                            await ctx.tick()
                        ctx.set(dut.i.valid, 1)
                        ctx.set(dut.i.payload, int(x[s, t, j]))
                        ctx.set(dut.last, int(t == T - 1))
                        await ctx.tick().until(dut.i.ready)
                    ctx.set(dut.i.valid, 0)
                while len(completed[k]) < (s + 1) * T or ctx.get(dut.status.busy):
                    await ctx.tick()

    state_counts = [[0] * len(STATE_NAMES) for _ in plan]

    U = config.units
    ports = [dut.dbg] if U == 1 else [dut.dbg[u] for u in range(U)]
    probes = [sig for d in ports for sig in (d.valid, d.neuron, d.candidate, d.fire, d.y)]

    async def monitor(ctx):
        steps_before = 0
        async for _, _, *values in ctx.tick().sample(dut.sequencer_state, dut.status.steps, dut.status.step_cycles,
                                                      dut.lanes_busy, dut.status.busy, dut.load.ready, *probes):
            state, steps, step_cycles, lanes_busy, busy, load_ready = values[:6]
            values = values[:4] + values[6:]
            if busy and load_ready:
                raise AssertionError("the load port was ready while the core was busy")
            k = now[0]
            state_counts[k][int(state)] += 1
            recs[k].lanes_busy_cycles += int(lanes_busy)
            # Unit u takes the u-th neuron of each group: within a cycle, units in order.
            for u in range(U):
                valid, neuron, cand, fire, y = values[4 + 5 * u:9 + 5 * u]
                if valid:
                    updates[k].append((int(neuron), int(cand), int(fire), int(y)))
            if int(steps) != steps_before:
                if int(steps) == steps_before + 1:
                    completed[k].append(int(step_cycles))
                steps_before = int(steps)

    async def sink(ctx):
        for k, (x, _, run) in enumerate(plan):
            S, T, O = x.shape[0], x.shape[1], run.outputs
            for s in range(S):
                out = np.zeros((T, O), dtype=np.int64)
                for t in range(T):
                    values = []
                    while len(values) < O:
                        ready = not next(sink_pause)
                        ctx.set(dut.o.ready, ready)
                        _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
                        if valid and ready:
                            values.append(int(payload))
                    out[t] = values
                recs[k].outputs.append(out)
            sunk[0] = k + 1
        ctx.set(dut.o.ready, 0)

    # A step takes at most every entry and every neuron a few times over: a core that hangs
    # fails here instead of running forever.
    budget = sum(x.shape[0] * x.shape[1] * (4 * (lay.entries + lay.rows + lay.neurons) + 1000)
                 + 2 * len(load or ()) for x, load, _ in plan) + 10_000

    async def watchdog(ctx):
        for _ in range(budget):
            await ctx.tick()
        raise AssertionError(f"the core did not finish its {len(plan)} phase(s) in {budget} cycles")

    sim = Simulator(dut)
    sim.add_testbench(watchdog, background=True)
    sim.add_clock(1e-6)
    sim.add_testbench(source, background=True)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(sink)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    for k, (x, _, run) in enumerate(plan):
        S, T = x.shape[0], x.shape[1]
        rec = recs[k]
        rec.state_cycles = dict(zip(STATE_NAMES, state_counts[k]))
        rec.step_cycles = [completed[k][s * T:(s + 1) * T] for s in range(S)]
        per_step = sum(run.hidden)
        rec.updates = [[updates[k][(s * T + t) * per_step:(s * T + t + 1) * per_step] for t in range(T)]
                       for s in range(S)]
    return recs


def compare_with_golden(model: QuantModel, image: SharedRowImage, x: np.ndarray, rec: SharedCoreRecord) -> list[str]:
    """Every difference between the core's record and the golden model on ``x`` [S, T, I]: the
    outputs of every step, and every neuron's candidate, event and value. Empty: bit-exact."""
    x = np.asarray(x, dtype=np.int64)
    trace = golden.run(model, np.transpose(x, (1, 0, 2)))
    lay = image.layout
    diffs = []
    S, T = x.shape[0], x.shape[1]
    for s in range(S):
        got = rec.outputs[s]
        want = trace.logits[:, s, :]
        if not np.array_equal(got, want):
            t = int(np.argwhere(got != want)[0][0])
            diffs.append(f"sequence {s} step {t}: outputs {got[t].tolist()}, golden {want[t].tolist()}")
        for t in range(T):
            ups = rec.updates[s][t]
            want_u = []
            for l, H in enumerate(image.hidden):
                base = lay.neuron_base[l]
                for n in range(H):
                    want_u.append((base + n, int(trace.candidate[l][t, s, n]), int(trace.events[l][t, s, n]),
                                   int(trace.y[l][t, s, n])))
            if ups != want_u:
                first = next((i for i, (a, b) in enumerate(zip(ups, want_u)) if a != b), min(len(ups), len(want_u)))
                diffs.append(f"sequence {s} step {t}: update {first}: core "
                             f"{ups[first] if first < len(ups) else None}, golden "
                             f"{want_u[first] if first < len(want_u) else None}")
    return diffs
