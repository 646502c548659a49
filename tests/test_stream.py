"""hw/stream.py in the Amaranth simulator: order, throughput and registered handshakes."""

import numpy as np
import pytest
from amaranth.hdl import signed
from amaranth.lib import data

from egru_accel.hw.stream import SkidBuffer

from helpers import simulate


def run_skid(dut, data_in, *, send_idle, recv_stall, seed, cycles):
    """Drive ``dut.i`` with ``data_in`` (idle with probability ``send_idle``) and drain ``dut.o``
    (stalled with probability ``recv_stall``); return what came out and the cycles it took."""
    rng = np.random.default_rng(seed)
    got, done_at = [], []

    async def send(ctx):
        for v in data_in:
            while rng.random() < send_idle:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, v)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def recv(ctx):
        for cycle in range(cycles):
            ready = int(rng.random() >= recv_stall)
            ctx.set(dut.o.ready, ready)
            # ready-to-valid independence: o.valid and i.ready must not follow o.ready in the
            # same cycle (they come from flip-flops).
            valid_before, iready_before = ctx.get(dut.o.valid), ctx.get(dut.i.ready)
            ctx.set(dut.o.ready, 1 - ready)
            assert (ctx.get(dut.o.valid), ctx.get(dut.i.ready)) == (valid_before, iready_before)
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid and ready:
                got.append(payload)
                if len(got) == len(data_in):
                    done_at.append(cycle)
                    return

    simulate(dut, recv, send)
    return got, (done_at[0] + 1 if done_at else None)


@pytest.mark.parametrize("send_idle,recv_stall", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.4), (0.5, 0.5)])
def test_skid_buffer_keeps_order_and_loses_nothing(send_idle, recv_stall):
    dut = SkidBuffer(signed(12))
    values = [int(v) for v in np.random.default_rng(1).integers(-2048, 2048, 200)]
    got, cycles = run_skid(dut, values, send_idle=send_idle, recv_stall=recv_stall, seed=7, cycles=2000)
    assert got == values
    if send_idle == recv_stall == 0.0:
        assert cycles == len(values) + 1          # one transfer per cycle, one cycle of latency


def test_skid_buffer_carries_a_layout():
    layout = data.StructLayout({"index": 7, "value": signed(16)})
    dut = SkidBuffer(layout)
    values = [{"index": i, "value": -i * 100} for i in range(20)]
    got, _ = run_skid(dut, values, send_idle=0.2, recv_stall=0.3, seed=3, cycles=500)
    assert [(g.index, g.value) for g in got] == [(v["index"], v["value"]) for v in values]


def test_skid_buffer_shape_is_checked():
    with pytest.raises(TypeError, match=r"^shape must be a shape-castable object, not 'wide'$"):
        SkidBuffer("wide")
