"""UART PHY in the Amaranth simulator: loopback, bit timing, framing errors."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from egru_accel.hw.uart import UARTRx, UARTTx


@pytest.mark.parametrize("divisor", [4, 7, 16])
def test_loopback_random_bytes(divisor):
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor=divisor)
    m.submodules.rx = rx = UARTRx(divisor=divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    data = [int(v) for v in np.random.default_rng(divisor).integers(0, 256, 40)] + [0x00, 0xFF, 0x55]
    got, line = [], []

    async def send(ctx):
        for b in data:
            ctx.set(tx.i.valid, 1)
            ctx.set(tx.i.payload, b)
            await ctx.tick().until(tx.i.ready)
        ctx.set(tx.i.valid, 0)

    async def recv(ctx):
        ctx.set(rx.o.ready, 1)
        while len(got) < len(data):
            _, _, valid, payload = await ctx.tick().sample(rx.o.valid, rx.o.payload)
            if valid:
                got.append(int(payload))

    async def watch(ctx):
        async for _, _, level in ctx.tick().sample(tx.tx):
            line.append(int(level))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(send, background=True)
    sim.add_testbench(recv)
    sim.add_process(watch)
    sim.run()
    assert got == data
    # From the first start bit to the last stop bit, every level lasts whole bit times: no
    # short stop bits and no idle cycles between back-to-back frames.
    first = line.index(0)
    span = line[first:first + len(data) * 10 * divisor - divisor]
    assert len(span) == len(data) * 10 * divisor - divisor
    runs, prev, count = [], span[0], 0
    for level in span:
        if level == prev:
            count += 1
        else:
            runs.append(count)
            prev, count = level, 1
    runs.append(count)
    assert all(n % divisor == 0 for n in runs), "bit edges every `divisor` cycles"

def test_framing_error_counted_and_dropped():
    rx = UARTRx(divisor=8)
    got = []

    async def tb(ctx):
        ctx.set(rx.o.ready, 1)
        ctx.set(rx.rx, 1)
        await ctx.tick().repeat(20)
        for frame in ([0] + [1, 0, 1, 0, 1, 0, 1, 0] + [0], [0] + [0, 1, 1, 0, 0, 0, 0, 1] + [1]):
            for bit in frame:          # the first frame has a low stop bit
                ctx.set(rx.rx, bit)
                for _ in range(8):
                    await ctx.tick()
                    if ctx.get(rx.o.valid):
                        got.append(ctx.get(rx.o.payload))
            ctx.set(rx.rx, 1)
            for _ in range(30):
                await ctx.tick()
                if ctx.get(rx.o.valid):
                    got.append(ctx.get(rx.o.payload))
        assert ctx.get(rx.framing_errors) == 1

    sim = Simulator(rx)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert got == [0b10000110]


def test_divisor_errors():
    with pytest.raises(ValueError, match="at least 4"):
        UARTTx(divisor=2)
    with pytest.raises(TypeError, match="integer number of clock cycles"):
        UARTRx(divisor=10.5)
