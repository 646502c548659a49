"""hw/update_unit.py in the Amaranth simulator against the golden model's internals, step by step."""

import numpy as np
import pytest

from egru_accel.hw.update_unit import UpdateUnit
from egru_accel.quantize import golden
from egru_accel.quantize.random_model import random_inputs, random_model

from helpers import simulate


async def load(ctx, unit, *, theta=(), c=()):
    """Write thresholds and cell states through the load port, one per cycle."""
    for kind, values in ((1, theta), (0, c)):
        for k, v in enumerate(values):
            ctx.set(unit.load_en, 1)
            ctx.set(unit.load_theta, kind)
            ctx.set(unit.load_addr, k)
            ctx.set(unit.load_data, int(v))
            await ctx.tick()
    ctx.set(unit.load_en, 0)


KINDS = ("z", "r", "ag", "hg")


def run_neurons(unit, slots, theta, c, rng, offsets=None) -> dict:
    """Load ``theta`` and ``c``, drive ``slots`` (as :func:`drive`), and return neuron ->
    (candidate, fire, y) once every driven neuron has come out."""
    n = sum(slot is not None for slot in slots)
    got = {}

    async def feed(ctx):
        await load(ctx, unit, theta=theta, c=c)
        await drive(ctx, unit, slots, rng, offsets)

    async def collect(ctx):
        async for _, _, valid, neuron, cand, fire, y in ctx.tick().sample(
                unit.o_valid, unit.o_neuron, unit.o_candidate, unit.o_fire, unit.o_y):
            if valid:
                got[int(neuron)] = (int(cand), int(fire), int(y))
                if len(got) == n:
                    return

    simulate(unit, collect, feed)
    return got


async def drive(ctx, unit, slots, rng, offsets=None):
    """Drive one slot per cycle: ``None`` (idle) or ``(neuron, acc)`` with ``acc[gate]`` its
    accumulators. ``i_valid`` and ``i_neuron`` are set in the slot's cycle and each ``i_acc_<gate>``
    ``unit.offsets[gate]`` cycles later, as the unit's contract says (or ``offsets[gate]``); every
    input nobody asks for in a cycle carries random junk, so an input read in any other cycle than
    its offset is seen."""
    off = unit.offsets if offsets is None else offsets
    junk_lo, junk_hi = -(1 << (unit.acc_bits - 1)), 1 << (unit.acc_bits - 1)
    for c in range(min(0, min(off.values())), len(slots) + max(off.values())):
        slot = slots[c] if 0 <= c < len(slots) else None
        ctx.set(unit.i_valid, int(slot is not None))
        ctx.set(unit.i_neuron, slot[0] if slot is not None else int(rng.integers(unit.depth)))
        for g in KINDS:
            src = slots[c - off[g]] if 0 <= c - off[g] < len(slots) else None
            ctx.set(getattr(unit, f"i_acc_{g}"), int(src[1][g]) if src is not None
                    else int(rng.integers(junk_lo, junk_hi)))
        await ctx.tick()
    ctx.set(unit.i_valid, 0)


def run_unit(unit, theta, steps, gap_prob, rng):
    """Load ``theta``; then per step feed every neuron's accumulators (with random idle cycles);
    return the outputs per step as {neuron: (candidate, fire, y)}."""
    outs = []

    async def feed(ctx):
        await load(ctx, unit, theta=theta)
        for acc in steps:
            slots = []
            for n in range(len(theta)):
                while rng.random() < gap_prob:
                    slots.append(None)
                slots.append((n, {g: acc[g][n] for g in KINDS}))
            await drive(ctx, unit, slots, rng)
            # The next step needs this step's states: wait for the pipeline to empty.
            for _ in range(unit.latency):
                await ctx.tick()

    async def collect(ctx):
        expected = len(steps) * len(theta)
        got = {}
        seen = 0
        async for _, _, valid, neuron, cand, fire, y in ctx.tick().sample(
                unit.o_valid, unit.o_neuron, unit.o_candidate, unit.o_fire, unit.o_y):
            if valid:
                got[int(neuron)] = (int(cand), int(fire), int(y))
                seen += 1
                if len(got) == len(theta):
                    outs.append(got)
                    got = {}
                if seen == expected:
                    return

    simulate(unit, collect, feed)
    return outs


@pytest.mark.parametrize("multipliers", ["dsp", "logic"])
@pytest.mark.parametrize("seed,hidden,mode,gap", [(0, 12, "mixed", 0.0), (1, 9, "random", 0.3),
                                                   (2, 5, "fire", 0.1), (3, 7, "zero", 0.0)])
def test_update_unit_is_bit_exact_with_the_golden_model(seed, hidden, mode, gap, multipliers):
    model = random_model(inputs=4, hidden=[hidden], outputs=3, weight_sparsity=0.3, seed=seed,
                         threshold_mode=mode)
    x = random_inputs(model, steps=12, sequences=1, seed=seed)[0][:, None, :]     # [T, 1, I]
    trace = golden.run(model, x, internals=True)
    inner = trace.internals[0]
    layer = model.layers[0]
    acc_bits = max(32, max(model.layer_bounds(0).bits().values()))
    unit = UpdateUnit(formats=model.formats, acc_frac=model.acc_frac(0), depth=hidden, acc_bits=acc_bits,
                      multipliers=multipliers)
    steps = [{k: inner[f"acc_{k}"][t, 0] for k in ("z", "r", "ag", "hg")} for t in range(trace.steps)]
    outs = run_unit(unit, layer.theta, steps, gap, np.random.default_rng(seed))
    assert len(outs) == trace.steps
    for t, got in enumerate(outs):
        want = {n: (int(trace.candidate[0][t, 0, n]), int(trace.events[0][t, 0, n]), int(trace.y[0][t, 0, n]))
                for n in range(hidden)}
        assert got == want, f"step {t}"
    fired = sum(int(trace.events[0][t, 0].sum()) for t in range(trace.steps))
    if mode in ("fire", "mixed"):
        assert fired > 0          # the test sees events, not only silence


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(formats="default", acc_frac=18, depth=8), TypeError, "formats must be a NumberFormats, not 'default'"),
    (dict(acc_frac=3, depth=8), ValueError, r"acc_frac \(3\) must be at least the sigmoid table's index fraction \(4\)"),
    (dict(acc_frac=18, depth=1), ValueError, "depth must be at least 2, not 1"),
    (dict(acc_frac=18, depth=8, multipliers="booth"), ValueError, "multipliers must be one of dsp, logic, not 'booth'"),
])
def test_update_unit_arguments_are_checked(kwargs, error, message):
    from egru_accel.quantize.formats import NumberFormats
    kwargs.setdefault("formats", NumberFormats())
    with pytest.raises(error, match="^" + message + "$"):
        UpdateUnit(**kwargs)


def crafted_neurons(rng, formats, acc_frac, n):
    """Accumulators where the arithmetic's corners are: table-index boundaries (+-3 around a
    multiple of the index step), exact halves in r * acc_hg, far beyond the tables' ranges both
    ways; cell states over the whole state range; thresholds equal to the candidate."""
    s_sig = 1 << (acc_frac - formats.sigmoid_lut_frac)
    s_tanh = 1 << (acc_frac - formats.tanh_lut_frac)
    def near(step, size):
        return rng.integers(-200, 200, size) * step + rng.integers(-3, 4, size)
    acc = {
        "z": np.concatenate([near(s_sig, n // 2), rng.integers(-(1 << 30), 1 << 30, n - n // 2)]),
        "r": np.concatenate([near(s_sig, n // 2), rng.integers(-(1 << 30), 1 << 30, n - n // 2)]),
        "ag": np.concatenate([near(s_tanh, n // 2), rng.integers(-(1 << 30), 1 << 30, n - n // 2)]),
        "hg": np.concatenate([rng.integers(-5, 6, n // 2), rng.integers(-(1 << 22), 1 << 22, n - n // 2)]),
    }
    order = rng.permutation(n)                       # one permutation: ag and hg stay paired
    for k in acc:
        acc[k] = acc[k][order].astype(np.int64)
    c = rng.integers(formats.state_min, formats.state_max + 1, n).astype(np.int64)
    theta = rng.integers(0, formats.state_max + 1, n).astype(np.int64)
    first = golden.neuron_update(formats, acc_frac, acc["z"], acc["r"], acc["ag"], acc["hg"], c, theta)
    equal = rng.random(n) < 0.3                      # c~ == theta: must not fire (strict)
    theta = np.where(equal & (first["candidate"] >= 0), first["candidate"], theta)
    return acc, c, theta


@pytest.mark.parametrize("multipliers", ["dsp", "logic"])
def test_update_unit_at_the_arithmetic_corners(multipliers):
    from egru_accel.quantize.formats import NumberFormats
    fmt, acc_frac, n = NumberFormats(), 18, 600
    rng = np.random.default_rng(11)
    acc, c, theta = crafted_neurons(rng, fmt, acc_frac, n)
    want = golden.neuron_update(fmt, acc_frac, acc["z"], acc["r"], acc["ag"], acc["hg"], c, theta)
    assert want["fire"].any() and (~want["fire"]).any() and (want["candidate"] == theta).sum() > 50
    unit = UpdateUnit(formats=fmt, acc_frac=acc_frac, depth=n, multipliers=multipliers)
    assert unit.latency == {"dsp": 17, "logic": 19}[multipliers]
    # ag and hg are taken in the cycles they are used in, so they do not ride the pipeline.
    assert unit.offsets == {"dsp": {"z": 0, "r": 0, "ag": 6, "hg": 3},
                            "logic": {"z": 0, "r": 0, "ag": 4, "hg": 4}}[multipliers]
    got = run_neurons(unit, [(k, {g: acc[g][k] for g in KINDS}) for k in range(n)], theta, c, rng)
    for k in range(n):
        assert got[k] == (int(want["candidate"][k]), int(want["fire"][k]), int(want["y"][k])), k


@pytest.mark.parametrize("multipliers", ["dsp", "logic"])
def test_update_unit_takes_each_accumulator_at_its_offset_only(multipliers):
    """The same neurons with one accumulator a cycle early or late: the outputs go wrong (the
    accumulators are within the tables' ranges, so that each one matters)."""
    from egru_accel.quantize.formats import NumberFormats
    fmt, acc_frac, n = NumberFormats(), 18, 40
    rng = np.random.default_rng(5)
    acc = {g: rng.integers(-(1 << 20), 1 << 20, n).astype(np.int64) for g in KINDS}
    c = rng.integers(fmt.state_min, fmt.state_max + 1, n).astype(np.int64)
    theta = rng.integers(0, fmt.state_max + 1, n).astype(np.int64)
    want = golden.neuron_update(fmt, acc_frac, acc["z"], acc["r"], acc["ag"], acc["hg"], c, theta)
    want = {k: (int(want["candidate"][k]), int(want["fire"][k]), int(want["y"][k])) for k in range(n)}
    unit = UpdateUnit(formats=fmt, acc_frac=acc_frac, depth=n, multipliers=multipliers)
    slots = [(k, {g: acc[g][k] for g in KINDS}) for k in range(n)]

    def outputs(offsets):
        return run_neurons(unit, slots, theta, c, rng, offsets)

    assert outputs(unit.offsets) == want
    for g in KINDS:
        for shift in (-1, 1):
            wrong = outputs({**unit.offsets, g: unit.offsets[g] + shift})
            assert sum(wrong[k] != want[k] for k in range(n)) > n // 4, (g, shift)
