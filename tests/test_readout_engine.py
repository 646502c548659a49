"""hw/readout_engine.py in the Amaranth simulator against NumPy: events with random gaps,
outputs taken and cleared between bursts."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from egru_accel.hw.readout_engine import ReadoutEngine


def wrap32(v):
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def run(engine, bursts, rng, idle=0.3):
    """Feed each burst of events (neuron, value), wait until idle, take every output."""
    taken = []

    async def tb(ctx):
        for events in bursts:
            for n, v in events:
                while rng.random() < idle:
                    ctx.set(engine.i.valid, 0)
                    await ctx.tick()
                ctx.set(engine.i.valid, 1)
                ctx.set(engine.i.payload.neuron, n)
                ctx.set(engine.i.payload.value, v)
                await ctx.tick().until(engine.i.ready)
            ctx.set(engine.i.valid, 0)
            await ctx.tick().until(~engine.busy)
            out = []
            for o in range(engine.outputs + 2):
                ctx.set(engine.take_en, int(o < engine.outputs))
                ctx.set(engine.take_index, o if o < engine.outputs else 0)
                if o >= 2:
                    out.append(ctx.get(engine.take_data))
                await ctx.tick()
            ctx.set(engine.take_en, 0)
            taken.append(out)

    sim = Simulator(engine)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return taken


@pytest.mark.parametrize("hidden,outputs,macs", [(7, 10, 4), (5, 3, 4), (9, 6, 1), (4, 8, 8)])
def test_engine_equals_numpy(hidden, outputs, macs):
    rng = np.random.default_rng(hidden * 10 + outputs + macs)
    w = rng.integers(-128, 128, (hidden, outputs))
    engine = ReadoutEngine(weights=w, macs=macs)
    bursts = [[(int(rng.integers(hidden)), int(rng.integers(-(1 << 15), 1 << 15))) for _ in range(k)]
              for k in (12, 0, 1, 30)]
    taken = run(engine, bursts, rng)
    for events, out in zip(bursts, taken):
        want = [0] * outputs
        for n, v in events:
            for o in range(outputs):
                want[o] = wrap32(want[o] + int(w[n, o]) * v)
        assert out == want          # each burst starts from zero: the takes cleared them


@pytest.mark.parametrize("kwargs,message", [
    (dict(weights=np.zeros(3)), r"^weights must be a matrix \[H, O\], not of shape \[3\]$"),
    (dict(weights=np.full((2, 2), 200)), "^weights must fit 8 signed bits$"),
    (dict(weights=np.zeros((2, 2)), macs=0), "^macs must be at least 1, not 0$"),
])
def test_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReadoutEngine(**kwargs)
