"""The bridge-to-core clock-domain crossing in the Amaranth simulator, with two clocks whose
edges drift against each other: every command arrives once and in order, START only while
the core is idle, every output in order, status snapshots whole, under random stalls on
both sides; and the constructor's errors."""

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.sim import Simulator

from egru_accel.hw.bridge import BridgeSpec
from egru_accel.hw.core_crossing import CoreCrossing
from helpers import capacity_for, three_models


@pytest.fixture(scope="module")
def spec():
    return BridgeSpec.for_capacity(capacity_for(three_models()))


def _harness(spec, **kwargs):
    m = Module()
    m.domains.bridge = ClockDomain("bridge")
    m.domains.sync = ClockDomain("sync")
    m.submodules.x = x = CoreCrossing(spec, **kwargs)
    return m, x


def _commands(spec, rng, n):
    """``n`` random commands as the bridge makes them: ("write", mem, lane, addr, data),
    ("start",) or ("input", value)."""
    w = spec.write.members
    bits = {name: w[name].shape for name in ("mem", "lane", "addr")}
    out = []
    for _ in range(n):
        k = rng.integers(0, 3)
        if k == 0:
            out.append(("write", *(int(rng.integers(0, min(s.stop, 1 << 16))) for s in bits.values()),
                        int("".join(map(str, rng.integers(0, 2, w["data"].shape))), 2)))
        elif k == 1:
            out.append(("start",))
        else:
            lo = -(1 << (spec.input_bits - 1))
            out.append(("input", int(rng.integers(lo, -lo))))
    return out


@pytest.mark.parametrize("bridge_period,core_period", [(26e-9, 10e-9), (10e-9, 26e-9), (10e-9, 10.4e-9)])
def test_commands_outputs_and_status_cross_whole_and_in_order(spec, bridge_period, core_period):
    rng = np.random.default_rng(int(bridge_period * 1e10) + int(core_period * 1e9))
    m, x = _harness(spec)
    sent = _commands(spec, rng, 300)
    got, outputs_got = [], []
    outputs = [int(v) for v in rng.integers(-(1 << 31), 1 << 31, 200)]
    state = {"busy": 1, "done": False, "snapshots": [], "starts_while_busy": 0}

    async def bridge_side(ctx):
        # The bridge: one command at a time, with random idles; START only while busy is low
        # (as the bridge's START state does) and as a one-cycle strobe without ready.
        for cmd in sent:
            while rng.random() < 0.3:
                await ctx.tick("bridge")
            if cmd[0] == "start":
                while ctx.get(x.bridge_status.busy):
                    await ctx.tick("bridge")
                ctx.set(x.bridge_ctl.start, 1)
                await ctx.tick("bridge")
                ctx.set(x.bridge_ctl.start, 0)
                continue
            if cmd[0] == "write":
                _, mem, lane, addr, data = cmd
                port = x.bridge_cfg
                ctx.set(port.mem, mem)
                ctx.set(port.lane, lane)
                ctx.set(port.addr, addr)
                ctx.set(port.data, data)
                ctx.set(port.valid, 1)
                await ctx.tick("bridge").until(port.ready)
                ctx.set(port.valid, 0)
            else:
                ctx.set(x.bridge_i.payload, cmd[1])
                ctx.set(x.bridge_i.valid, 1)
                await ctx.tick("bridge").until(x.bridge_i.ready)
                ctx.set(x.bridge_i.valid, 0)

    async def core_side(ctx):
        # The core: random ready on its input and write port, busy toggling at random (a
        # START counts only in a cycle with busy low), counters that keep an invariant.
        steps = 0
        while len(got) < len(sent) and steps < 50_000:     # bounded: a lost command must fail, not hang
            busy = int(rng.random() < 0.5)
            ctx.set(x.core_status.busy, busy)
            ctx.set(x.core_i.ready, int(rng.random() < 0.6))
            ctx.set(x.core_cfg.ready, int(rng.random() < 0.6))
            steps += 1
            # step_cycles = 3 * steps + 1, cycles = 7 * steps: a torn snapshot breaks these.
            ctx.set(x.core_status.steps, steps)
            ctx.set(x.core_status.cycles, 7 * steps)
            ctx.set(x.core_status.step_cycles, 3 * steps + 1)
            _, _, i_valid, i_ready, i_data, c_valid, c_ready, mem, lane, addr, data, start = \
                await ctx.tick("sync").sample(
                    x.core_i.valid, x.core_i.ready, x.core_i.payload, x.core_cfg.valid, x.core_cfg.ready,
                    x.core_cfg.mem, x.core_cfg.lane, x.core_cfg.addr, x.core_cfg.data, x.core_start)
            assert (i_valid & i_ready) + (c_valid & c_ready) + start <= 1
            if start:
                state["starts_while_busy"] += busy
                got.append(("start",))
            if i_valid and i_ready:
                got.append(("input", int(i_data)))
            if c_valid and c_ready:
                got.append(("write", int(mem), int(lane), int(addr), int(data)))
        state["final_steps"] = steps
        # Idle for the bridge to see the last snapshot.
        ctx.set(x.core_status.busy, 0)
        for _ in range(40):
            await ctx.tick("sync")
        state["done"] = True

    async def core_outputs(ctx):
        for v in outputs:
            while rng.random() < 0.3:
                await ctx.tick("sync")
            ctx.set(x.core_o.payload, v)
            ctx.set(x.core_o.valid, 1)
            await ctx.tick("sync").until(x.core_o.ready)
            ctx.set(x.core_o.valid, 0)

    async def bridge_outputs(ctx):
        while len(outputs_got) < len(outputs):
            ctx.set(x.bridge_o.ready, int(rng.random() < 0.5))
            _, _, valid, ready, payload = await ctx.tick("bridge").sample(
                x.bridge_o.valid, x.bridge_o.ready, x.bridge_o.payload)
            if valid and ready:
                outputs_got.append(int(payload))

    async def bridge_status(ctx):
        async for _, _, steps, cycles, step_cycles in ctx.tick("bridge").sample(
                x.bridge_status.steps, x.bridge_status.cycles, x.bridge_status.step_cycles):
            state["snapshots"].append((int(steps), int(cycles), int(step_cycles)))

    async def main(ctx):
        for _ in range(50_000):
            if state["done"] and len(outputs_got) == len(outputs):
                break
            await ctx.tick("bridge")

    sim = Simulator(m)
    sim.add_clock(bridge_period, domain="bridge")
    sim.add_clock(core_period, domain="sync")
    for bench in (bridge_side, core_side, core_outputs, bridge_outputs):
        sim.add_testbench(bench, background=True)
    sim.add_process(bridge_status)
    sim.add_testbench(main)
    sim.run()

    assert got == sent
    assert state["starts_while_busy"] == 0
    assert outputs_got == outputs
    snaps = [s for s in state["snapshots"] if s[0]]
    assert snaps, "no status snapshot reached the bridge"
    assert all(c == 7 * s and sc == 3 * s + 1 for s, c, sc in snaps), "a torn status snapshot"
    assert all(a[0] <= b[0] for a, b in zip(snaps, snaps[1:])), "snapshots out of order"
    assert snaps[-1][0] == state["final_steps"]


def test_bridge_busy_while_commands_are_queued(spec):
    # A START the bridge makes right after an input must wait for it: busy covers the queue.
    m, x = _harness(spec)
    seen = []

    async def main(ctx):
        ctx.set(x.core_status.busy, 0)
        ctx.set(x.core_i.ready, 0)                # the core takes nothing yet
        for _ in range(20):
            await ctx.tick("bridge")
        assert not ctx.get(x.bridge_status.busy)
        ctx.set(x.bridge_i.payload, 5)
        ctx.set(x.bridge_i.valid, 1)
        await ctx.tick("bridge").until(x.bridge_i.ready)
        ctx.set(x.bridge_i.valid, 0)
        for _ in range(10):
            await ctx.tick("bridge")
            seen.append(ctx.get(x.bridge_status.busy))
        ctx.set(x.core_i.ready, 1)
        for _ in range(20):
            await ctx.tick("bridge")
        assert not ctx.get(x.bridge_status.busy)

    sim = Simulator(m)
    sim.add_clock(20e-9, domain="bridge")
    sim.add_clock(7e-9, domain="sync")
    sim.add_testbench(main)
    sim.run()
    assert all(seen)


def test_constructor_errors(spec):
    with pytest.raises(TypeError, match=r"^spec must be a BridgeSpec, not int$"):
        CoreCrossing(1)
    with pytest.raises(ValueError, match=r"^bridge_domain and core_domain are both 'sync': nothing to cross$"):
        CoreCrossing(spec, bridge_domain="sync")
    with pytest.raises(TypeError, match=r"^core_domain must be a clock domain name, not ''$"):
        CoreCrossing(spec, core_domain="")
    with pytest.raises(ValueError, match=r"^depth must be a power of 2 of at least 2, not 6$"):
        CoreCrossing(spec, depth=6)
    with pytest.raises(TypeError, match=r"^depth must be an integer number of entries, not True$"):
        CoreCrossing(spec, depth=True)
    from dataclasses import replace
    from egru_accel.hw.bridge import WriteSignature
    no_ready = replace(spec, write=WriteSignature(mem=range(4), lane=range(2), addr=range(4), data=8, ready=False))
    with pytest.raises(ValueError, match=r"^the crossing needs a write port with ready"):
        CoreCrossing(no_ready)


def test_a_capacity_system_with_a_bridge_clock_has_two_clock_domains():
    from amaranth.back import verilog
    from egru_accel.hw.capacity_system import CapacitySystem
    from egru_accel.hw.shared_core import SharedCoreConfig
    system = CapacitySystem(capacity_for(three_models()), SharedCoreConfig(model_at_reset=False),
                            clk_hz=100e6, bridge_clk_hz=25e6)
    assert system.link_hz == 25e6 and system.divisor == round(25e6 / 115200)
    text = verilog.convert(system, name="top", emit_src=False)
    for port in ("input bridge_clk", "input bridge_rst", "input clk", "input rst"):
        assert port in text, port
