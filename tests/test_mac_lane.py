"""hw/mac_lane.py in the Amaranth simulator against a NumPy reference: hazards, gaps, sweeps."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from egru_accel.hw.mac_lane import TAKE_LATENCY, MacLane, RegisterAccumulators


def wrap(v, bits):
    v = int(v) & ((1 << bits) - 1)
    return v - (1 << bits) if v >> (bits - 1) else v


def run_lane(lane, phases):
    """Run ``phases`` in turn; each is ("mac", entries) with entries (addr, weight, value, align)
    or None for an idle cycle, or ("sweep", inits) that reads every address and writes
    ``inits[addr]`` back, one address per cycle. Returns the sweeps' reads, in order."""
    reads = []

    async def tb(ctx):
        for kind, items in phases:
            if kind == "mac":
                for e in items:
                    if e is None:
                        ctx.set(lane.i_valid, 0)
                    else:
                        addr, weight, value, align = e
                        ctx.set(lane.i_valid, 1)
                        ctx.set(lane.i_addr, addr)
                        ctx.set(lane.i_weight, weight)
                        ctx.set(lane.i_value, value)
                        ctx.set(lane.i_align, align)
                    await ctx.tick()
                ctx.set(lane.i_valid, 0)
                for _ in range(MacLane.LATENCY):
                    await ctx.tick()
            else:
                # Read address a in cycle a; its data appears two cycles later, when the same
                # address is written with its initial value.
                pending = []
                for cycle in range(lane.depth + 2):
                    if cycle < lane.depth:
                        ctx.set(lane.sweep_rd_en, 1)
                        ctx.set(lane.sweep_rd_addr, cycle)
                    else:
                        ctx.set(lane.sweep_rd_en, 0)
                    if cycle >= 2:
                        a = cycle - 2
                        pending.append(ctx.get(lane.sweep_rd_data))
                        ctx.set(lane.sweep_wr_en, 1)
                        ctx.set(lane.sweep_wr_addr, a)
                        ctx.set(lane.sweep_wr_data, items[a])
                    await ctx.tick()
                ctx.set(lane.sweep_wr_en, 0)
                reads.append(pending)

    sim = Simulator(lane)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return reads


def random_entries(rng, n, depth, lane, idle=0.2, hot=None):
    out = []
    for _ in range(n):
        if rng.random() < idle:
            out.append(None)
            continue
        # Many collisions: half of the entries hit a few hot addresses.
        addr = int(rng.choice(hot)) if hot is not None and rng.random() < 0.5 else int(rng.integers(depth))
        w = int(rng.integers(-(1 << (lane.weight_bits - 1)), 1 << (lane.weight_bits - 1)))
        v = int(rng.integers(-(1 << (lane.value_bits - 1)), 1 << (lane.value_bits - 1)))
        out.append((addr, w, v, int(rng.integers(lane.max_align + 1))))
    return out


def reference(acc, entries, bits):
    for e in entries:
        if e is not None:
            addr, w, v, align = e
            acc[addr] = wrap(acc[addr] + (w << align) * v, bits)
    return acc


@pytest.mark.parametrize("depth,weight_bits,max_align,idle,registers", [
    (16, 8, 8, 0.0, 0), (16, 8, 8, 0.3, 0), (5, 4, 12, 0.1, 0), (64, 8, 0, 0.0, 0), (16, 8, 8, 0.0, 4), (5, 4, 12, 0.1, 4),
    (20, 8, 8, 0.2, 4)])
def test_mac_lane_equals_the_reference_through_hazards_and_sweeps(depth, weight_bits, max_align, idle, registers):
    rng = np.random.default_rng(depth * 7 + weight_bits)
    banks = 2 if depth == 20 else 1          # 2 banks of 8 words and 4 registers
    lane = MacLane(depth=depth, weight_bits=weight_bits, max_align=max_align, registers=registers, banks=banks)
    hot = rng.integers(depth, size=2)
    inits = [int(v) for v in rng.integers(-1000, 1000, depth)]
    first = random_entries(rng, 300, depth, lane, idle, hot)
    second = random_entries(rng, 300, depth, lane, idle, hot)
    # Back to back on one address: every distance 1, 2 and 3 hazard.
    burst = [(3 % depth, 1, 1000, 0)] * 6 + [None, (3 % depth, -2, 7, min(1, max_align)), (3 % depth, 5, -9, 0)]
    reads = run_lane(lane, [("mac", first + burst), ("sweep", inits), ("mac", second), ("sweep", [0] * depth)])
    acc = reference([0] * depth, first + burst, 32)
    assert reads[0] == acc
    assert reads[1] == reference(list(inits), second, 32)


def test_mac_lane_wraps_at_its_width():
    lane = MacLane(depth=2, acc_bits=12, weight_bits=8, max_align=0)
    entries = [(1, 127, 100, 0)] * 3                # 38100 wraps in 12 bits
    reads = run_lane(lane, [("mac", entries), ("sweep", [0, 0])])
    assert reads[0] == [0, wrap(3 * 12700, 12)]


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(depth=1), ValueError, "depth must be at least 2, not 1"),
    (dict(depth=8, weight_bits=8, max_align=11), ValueError,
     "weight_bits + max_align must fit one 18-bit multiplier operand, not 8 + 11"),
    (dict(depth=8.0), TypeError, "depth must be an integer, not 8.0"),
    (dict(depth=8, max_align=-1), ValueError, "max_align must be at least 0, not -1"),
    (dict(depth=8, sweep_registers=1), TypeError, "sweep_registers must be True or False, not 1"),
])
def test_mac_lane_arguments_are_checked(kwargs, error, message):
    with pytest.raises(error, match="^" + message.replace("+", r"\+").replace(".", r"\.") + "$"):
        MacLane(**kwargs)


@pytest.mark.parametrize("depth,registers,banks", [(12, 2, 1), (8 + 3, 3, 2)])
def test_word_kinds_overlap(depth, registers, banks):
    # The DSP lane's schedules: entries on one kind of word (register, bank) while the sweep
    # reads and writes another, every cycle.
    from test_dsp_mac_lane import overlap_phases, overlapped_schedule, simulate_model
    rng = np.random.default_rng(depth * 3 + registers + banks)
    cycles, expected = overlapped_schedule(rng, depth, overlap_phases(depth, registers, banks))
    trace = simulate_model(MacLane(depth=depth, weight_bits=8, max_align=4, registers=registers, banks=banks), cycles)
    assert [trace[c] for c, _ in expected] == [v for _, v in expected]


@pytest.mark.parametrize("kind", ["fabric", "dsp_model"])
def test_words_are_zero_after_cycles_without_a_read(kind):
    """A core ORs the lanes' sweep and take words: each must be 0 two cycles (the sweep's) or
    TAKE_LATENCY cycles (the take's) after a cycle that did not read it, whatever the memory and
    the registers hold. The DSP lane's take shares the entries' word select: its takes come
    only in cycles whose entry at the read (two cycles after i_*) is not on a register word, and
    its take word is 0 only after cycles with neither."""
    from egru_accel.hw.dsp_mac_lane import DSPMacLane
    lane = (MacLane(depth=8, weight_bits=8, max_align=2, registers=2) if kind == "fabric"
            else DSPMacLane(depth=8, weight_bits=8, max_align=2, registers=2, dsp="model"))
    rng = np.random.default_rng(5)
    seen = {"sweep": 0, "take": 0, "nonzero": 0}

    async def tb(ctx):
        history = []
        for cycle in range(400):
            rd = bool(rng.random() < 0.4)
            take = bool(rng.random() < 0.3)
            addr = int(rng.integers(8))
            reg_read = kind == "dsp_model" and len(history) >= 2 and history[-2][2]
            if reg_read:
                take = False
            ctx.set(lane.i_valid, 1)
            ctx.set(lane.i_addr, addr)
            ctx.set(lane.i_weight, int(rng.integers(1, 100)))
            ctx.set(lane.i_value, int(rng.integers(1, 1000)))
            ctx.set(lane.sweep_rd_en, rd)
            ctx.set(lane.sweep_rd_addr, int(rng.integers(8)))
            ctx.set(lane.take_en, take)
            ctx.set(lane.take_index, int(rng.integers(2)))
            history.append((rd, take, addr >= 6, reg_read))      # 6, 7: the register words
            if len(history) > 2:
                was_rd, was_take = history[-3][0], history[-1 - TAKE_LATENCY][1] or history[-1 - TAKE_LATENCY][3]
                sweep, took = ctx.get(lane.sweep_rd_data), ctx.get(lane.take_data)
                seen["nonzero"] += (sweep != 0) + (took != 0)
                if not was_rd:
                    assert sweep == 0, cycle
                    seen["sweep"] += 1
                if not was_take:
                    assert took == 0, cycle
                    seen["take"] += 1
            await ctx.tick()

    sim = Simulator(lane)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert min(seen.values()) > 50       # both kinds of cycle happened, and words were read


@pytest.mark.parametrize("registers", [0, 2])
def test_forwarding_into_the_register_word_read_is_for_take_raw_only(registers):
    from amaranth.hdl import Const, Fragment, Module, Signal, signed, unsigned
    m = Module()
    regs = RegisterAccumulators(m, depth=8, registers=registers, shape=signed(32), addr_shape=unsigned(3))
    with pytest.raises(ValueError, match="^forward is for take_raw accumulators$"):
        regs.read(Signal(3), Signal(), Signal(3), forward=(Const(1), Const(0, signed(32))))
    Fragment.get(m, None)        # elaborated, so that its memories are not left unused
