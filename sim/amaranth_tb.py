"""Run the core in the Amaranth simulator (fast unit-level checks, no Verilog).

:func:`run_core` feeds input vectors through the ``i`` stream, takes outputs from ``o``,
records every neuron update from the debug port, and optionally inserts random idle
cycles on the input and back-pressure on the output.
"""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from egru_accel.hw.core import EGRUCore
from egru_accel.hw.params import CoreParams
from egru_accel.quantize.memory import LOADABLE

from .compare import CoreRecord

__all__ = ["run_core", "image_writes"]


def _pauses(rng, probability):
    while True:
        yield bool(rng is not None and rng.random() < probability)


def image_writes(params: CoreParams) -> list[tuple[int, int, int, int]]:
    """``(mem, lane, addr, word)`` writes that load ``params``' memory images through ``cfg``."""
    return [(int(mem), p, a, w) for p in range(params.lanes) for mem in LOADABLE
            for a, w in enumerate(params.words(mem, p))]


def run_core(params: CoreParams, x: np.ndarray, *, stall_probability: float = 0.0, seed: int = 0,
             max_cycles: int | None = None, vcd: str | None = None,
             writes: list[tuple[int, int, int, int]] = ()) -> CoreRecord:
    """Simulate one sequence ``x`` [T, I] (layer-0 integers) and return what the core did.

    ``writes`` (``(mem, lane, addr, word)``) go through the ``cfg`` port first, once the core is idle."""
    x = np.asarray(x, dtype=np.int64)
    lay = params.layout
    if x.ndim != 2 or x.shape[1] != lay.input_size:
        raise ValueError(f"expected inputs [T, {lay.input_size}], got {list(x.shape)}")
    T, I, O, P = x.shape[0], lay.input_size, lay.outputs, params.lanes
    dut = EGRUCore(params.replace_config(debug=True))
    rng = np.random.default_rng(seed) if stall_probability else None
    src_pause = _pauses(rng, stall_probability)
    sink_pause = _pauses(np.random.default_rng(seed + 1) if rng is not None else None, stall_probability)
    record = CoreRecord()
    done = []

    async def source(ctx):
        if writes:
            await ctx.tick().until(~dut.status.busy)
            for mem, lane, addr, word in writes:
                ctx.set(dut.cfg.valid, 1)
                ctx.set(dut.cfg.mem, mem)
                ctx.set(dut.cfg.lane, lane)
                ctx.set(dut.cfg.addr, addr)
                ctx.set(dut.cfg.data, word)
                await ctx.tick()
            ctx.set(dut.cfg.valid, 0)
        for t in range(T):
            for j in range(I):
                while next(src_pause):
                    ctx.set(dut.i.valid, 0)
                    await ctx.tick()
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, int(x[t, j]))
                await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        for t in range(T):
            values = []
            while len(values) < O:
                ready = not next(sink_pause)
                ctx.set(dut.o.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
                if valid and ready:
                    values.append(int(payload))
            ctx.set(dut.o.ready, 0)
            record.outputs.append(values)
            # status.step_cycles is updated in the cycle after the last output is taken.
            await ctx.tick()
            record.step_cycles.append(int(ctx.get(dut.status.step_cycles)))
        done.append(True)

    fields = ("valid", "layer", "neuron", "candidate", "fire", "state")
    probes = [getattr(dut.dbg[k], f) for k in range(P) for f in fields]

    async def monitor(ctx):
        async for _, _, steps, *vals in ctx.tick().sample(dut.status.steps, *probes):
            for k in range(P):
                v = vals[k * 6:(k + 1) * 6]
                if v[0]:
                    record.updates.append((int(steps), int(v[1]), int(v[2]), int(v[3]), int(v[4]), int(v[5])))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.add_process(monitor)
    limit = max_cycles or 200 + len(writes) + T * (50 + 4 * (lay.weight_depth + lay.rows + lay.acc_depth + O + I))
    if vcd:
        with sim.write_vcd(vcd):
            sim.run_until(limit * 1e-8)
    else:
        sim.run_until(limit * 1e-8)
    if not done:
        raise TimeoutError(f"the core did not finish {T} steps in {limit} cycles "
                           f"({len(record.outputs)} steps completed)")
    return record
