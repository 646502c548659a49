"""`egru-accel demo` (egru_accel/demo.py): the pipeline on a tiny configuration, the plots,
the summary, and the errors."""

import json
import os
import re
import struct

import numpy as np
import pytest

from egru_accel import cli
from egru_accel import demo
from egru_accel.demo import (MismatchError, SUMMARY_ROWS, default_samples, dispatched_events, format_summary,
                             plot_activity, plot_cycles_vs_events, run_demo)
from helpers import check_memory_bits, chosen_simulator, needs_simulator


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file, after checking its signature and that it decodes to a
    picture that is not one flat colour."""
    from matplotlib.image import imread
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    w, h = struct.unpack(">II", head[16:24])
    pixels = imread(path)
    assert pixels.shape[:2] == (h, w)
    assert float(pixels[..., :3].std()) > 0.01, f"{path} is blank"
    return w, h


def tiny_config():
    from egru_accel.quantize.train import TrainConfig
    return TrainConfig(hidden=16, epochs=3, lanes=2)


# -- the pipeline on a tiny configuration ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    if chosen_simulator() is None:
        pytest.skip("the chosen simulator is not installed (scripts/setup.sh installs Icarus Verilog and Verilator)")
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, samples=2, build=False, lanes=2, train_config=tiny_config(), progress=False)
    return out, report


def test_demo_writes_every_file(tiny_run):
    out, report = tiny_run
    for name in report["files"]:
        assert os.path.exists(out / name), name
    assert not (out / "sim").exists(), "the cocotb build directory is removed"
    assert "module egru_core" in (out / "verilog" / "egru_core.v").read_text()
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))


def test_demo_report_figures(tiny_run):
    from egru_accel.quantize import golden
    from egru_accel.quantize.data import load_task
    from egru_accel.quantize.model import QuantModel
    out, report = tiny_run
    for key in ("float_accuracy", "quant_accuracy", "rtl_accuracy", "weight_sparsity", "activity_sparsity",
                "macs_per_step", "cycles_per_step", "memory_bits", "sim", "train", "stage_seconds",
                "total_seconds", "activity_per_neuron", "lanes", "board"):
        assert key in report, key
    assert report["lanes"] == 2 and report["build"] is None and report["built"] is False
    assert set(report["stage_seconds"]) == {"train", "pack", "generate", "simulate", "plots"}
    assert report["total_seconds"] >= sum(report["stage_seconds"].values())
    # The figures, recomputed from the written model.
    model = QuantModel.load(out / "model.npz")
    task = load_task("digits")
    x = golden.quantize_input(model, task.x_test)
    trace = golden.run(model, x)
    assert report["quant_accuracy"] == golden.accuracy(trace, task.y_test)
    assert report["test_sequences"] == task.x_test.shape[1]
    rates = [ev.mean(axis=(0, 1)) for ev in trace.events]
    assert len(report["activity_per_neuron"]) == 1
    assert np.array_equal(np.array(report["activity_per_neuron"][0]), rates[0])
    assert report["activity_sparsity"]["per_layer"]["layer0"] == pytest.approx(1.0 - rates[0].mean())
    zeros = sum(m.size - np.count_nonzero(m) for m in (model.layers[0].W, model.layers[0].R))
    assert report["weight_sparsity"]["kernels"] == zeros / (model.layers[0].W.size + model.layers[0].R.size)
    assert report["macs_per_step"]["dense"] == int(trace.dense_macs.sum())
    assert report["macs_per_step"]["effective"] == pytest.approx(trace.effective_macs.sum(axis=2).mean())
    # The simulated subset: the first 2 test sequences, no mismatch, RTL accuracy = golden's there.
    sim = report["sim"]
    assert sim["sequences"] == 2 and sim["steps"] == 2 * task.steps and sim["mismatches"] == 0
    sub = golden.run(model, x[:, :2])
    assert report["rtl_accuracy"] == golden.accuracy(sub, task.y_test[:2])
    cyc = report["cycles_per_step"]
    assert cyc["sequences"] == 2
    assert cyc["mean"] == sim["cycles_per_step"]["mean"] and cyc["dense"] == sim["dense_cycles_per_step"]["mean"]
    ideal = (sub.effective_macs.sum(axis=2) / 2 + 16 / 2).mean()
    assert cyc["ideal"] == pytest.approx(ideal)
    # The core never beats the ideal and is much faster than the dense baseline.
    assert cyc["ideal"] <= cyc["mean"] <= cyc["max"] < cyc["dense"]


def test_demo_image_matches_the_model(tiny_run):
    from egru_accel.firmware.image import hardware_signature, parse_image
    from egru_accel.hw.params import CoreParams
    from egru_accel.quantize.model import QuantModel
    out, report = tiny_run
    image = parse_image((out / "model.img").read_bytes())
    params = CoreParams.from_model(QuantModel.load(out / "model.npz"), lanes=report["lanes"])
    assert image.signature == hardware_signature(params)
    from egru_accel.quantize.memory import CoreLayout
    summary = json.loads((out / "verilog" / "summary.json").read_text())
    assert params.layout.mismatches(CoreLayout.from_dict(summary)) == []
    # memories.json (the packer), summary.json (the generator) and the report agree to the bit.
    memories = json.loads((out / "memories.json").read_text())
    assert memories["memory_bits"] == summary["memory_bits"] == report["memory_bits"]
    assert summary["memory_bits_total"] == report["memory_bits"]["total"] == params.layout.memory_bits()["total"]
    check_memory_bits(params)    # and the Verilog the generator writes for it


def test_demo_plots_are_pngs(tiny_run):
    out, _ = tiny_run
    for name in ("activity.png", "cycles_vs_events.png"):
        w, h = png_size(out / name)
        assert w >= 400 and h >= 300


def test_demo_summary_has_every_row(tiny_run):
    _, report = tiny_run
    text = format_summary(report)
    lines = text.splitlines()
    width = max(len(r) for r in SUMMARY_ROWS)
    assert [line[:width].strip() for line in lines] == list(SUMMARY_ROWS)
    # Aligned: the labels are padded to one width and every value ends in the same column.
    assert all(line[width:width + 2] == "  " for line in lines)
    ends = {width + re.match(r"\s*(\S+(?: \S+)*)", line[width:]).end(1) for line in lines}
    assert len(ends) == 1
    assert f"{100 * report['rtl_accuracy']:.1f}%" in lines[2]
    assert "not built" in lines[SUMMARY_ROWS.index("Fmax")]


def test_summary_with_a_build_report(tiny_run):
    _, report = tiny_run
    built = dict(report, build={
        "board": "icebreaker", "device": "iCE40UP5K", "lanes": 2, "target_mhz": 24.0, "fmax_mhz": 31.25,
        "timing_met": True,
        "utilisation": {"ICESTORM_LC": {"used": 4000, "available": 5280}, "ICESTORM_RAM": {"used": 20, "available": 30},
                        "SB_IO": {"used": 6, "available": 96}}})
    lines = format_summary(built).splitlines()
    fmax = next(line for line in lines if line.startswith("Fmax"))
    assert "31.2 MHz" in fmax and "target 24 MHz, timing met; icebreaker (iCE40UP5K), 2 lanes" in fmax
    res = next(i for i, line in enumerate(lines) if line.startswith("resources"))
    assert lines[res].split()[1:] == ["4000/5280", "ICESTORM_LC", "(76%)"]
    assert lines[res + 1].split() == ["20/30", "ICESTORM_RAM", "(67%)"]
    assert lines[res + 2].startswith("Fmax"), "only the resources that bound the design"
    assert not any("SB_IO" in line for line in lines)
    # Still aligned with the extra rows.
    width = max(len(r) for r in SUMMARY_ROWS)
    ends = {width + re.match(r"\s*(\S+(?: \S+)*)", line[width:]).end(1) for line in lines}
    assert len(ends) == 1
    built["build"] = dict(built["build"], timing_met=False)
    assert "NOT met" in format_summary(built)


# -- pieces on synthetic data ------------------------------------------------------------------

def test_dispatched_events_one_layer():
    x = np.zeros((3, 1, 2), dtype=np.int64)
    x[0, 0, 1] = 5
    x[1, 0, :] = -3                       # non-zero inputs per step: 1, 2, 0
    ev = np.zeros((3, 1, 4), dtype=bool)
    ev[0, 0, :2] = True                   # events per step: 2, 0, 3
    ev[2, 0, 1:] = True
    # step t: inputs(t) + events(t) (to the readout) + events(t - 1) (recurrent)
    assert dispatched_events(x, [ev])[:, 0].tolist() == [1 + 2 + 0, 2 + 0 + 2, 0 + 3 + 0]


def test_dispatched_events_two_layers_and_batch():
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, size=(5, 3, 4))
    evs = [rng.random((5, 3, 6)) < 0.3, rng.random((5, 3, 2)) < 0.5]
    got = dispatched_events(x, evs)
    for n in range(3):
        for t in range(5):
            want = np.count_nonzero(x[t, n]) + sum(int(e[t, n].sum()) + (int(e[t - 1, n].sum()) if t else 0)
                                                   for e in evs)
            assert got[t, n] == want
    with pytest.raises(ValueError, match=r"events of layer 1 are \[4, 3, 2\], expected \[5, 3, H\]"):
        dispatched_events(x, [evs[0], evs[1][:4]])
    with pytest.raises(ValueError, match="inputs must be"):
        dispatched_events(x[0], evs)


def test_plot_activity_synthetic(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "a.png"
    plot_activity([rng.random(64) * 0.5, np.zeros(32)], path, title="two layers")
    w, h = png_size(path)
    assert w > h     # one panel per layer, side by side
    for bad, match in (([], "at least one layer"), ([np.array([0.2, 1.5])], "layer 0: rates"),
                       ([np.zeros(3), np.array([])], "layer 1: rates")):
        with pytest.raises(ValueError, match=match):
            plot_activity(bad, tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"must end in \.png"):
        plot_activity([np.zeros(3)], tmp_path / "a.jpg")
    assert not (tmp_path / "b.png").exists()


def test_plot_cycles_vs_events_synthetic(tmp_path):
    rng = np.random.default_rng(2)
    events = rng.integers(0, 60, size=(10, 8))
    cycles = 120 + 7 * events
    path = tmp_path / "c.png"
    fit = plot_cycles_vs_events(events, cycles, cycles * 0.9, path, dense_cycles=5000.0, title="synthetic")
    assert fit["slope"] == pytest.approx(7.0) and fit["intercept"] == pytest.approx(120.0)
    png_size(path)
    fit = plot_cycles_vs_events(np.full(4, 3), np.array([10, 12, 14, 16]), np.full(4, 9), tmp_path / "d.png")
    assert fit == {"slope": 0.0, "intercept": 13.0}
    with pytest.raises(ValueError, match="same non-zero number of steps, got 3, 2, 3"):
        plot_cycles_vs_events(np.ones(3), np.ones(2), np.ones(3), tmp_path / "e.png")
    with pytest.raises(ValueError, match="got 0, 0, 0"):
        plot_cycles_vs_events([], [], [], tmp_path / "e.png")


def test_default_samples_fills_the_budget():
    from egru_accel.quantize import golden
    from egru_accel.quantize.data import load_task
    from egru_accel.quantize.random_model import random_model
    task = load_task("digits")
    model = random_model(inputs=task.input_size, hidden=[16], outputs=10, weight_sparsity=0.5, lanes=2, seed=3,
                         threshold_mode="random")
    trace = golden.run(model, golden.quantize_input(model, task.x_test))
    per_seq = float((trace.effective_macs.sum(axis=2) / 2 + 16 / 2).sum(axis=0).mean())
    n = default_samples(model, 2, task.x_test, budget=20_000)
    assert 1 < n < task.x_test.shape[1]
    assert n * per_seq <= 20_000 < (n + 1) * per_seq
    assert default_samples(model, 2, task.x_test, budget=1) == 1
    assert default_samples(model, 2, task.x_test, budget=10 ** 12) == task.x_test.shape[1]
    # More lanes, fewer cycles per sequence: more sequences in the same budget.
    assert default_samples(model, 4, task.x_test, budget=20_000) > n


# -- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, match", [
    ({"samples": 0}, ValueError, "samples must be a positive integer or None, got 0"),
    ({"samples": True}, ValueError, "samples must be a positive integer or None, got True"),
    ({"epochs": 2.5}, ValueError, "epochs must be a positive integer or None, got 2.5"),
    ({"epochs": 2}, ValueError, "epochs must be at least 3"),
    ({"lanes": -1}, ValueError, "lanes must be a positive integer or None, got -1"),
    ({"lanes": 17}, ValueError, "17 lanes is more than the layer's 16 neurons"),
    ({"board": 3}, TypeError, "board must be a board name"),
    ({"board": "nosuch"}, ValueError, "unknown board 'nosuch'; known boards: icebreaker"),
    ({"build": "no"}, TypeError, "build must be a bool, got str"),
    ({"train_config": {"hidden": 8}}, TypeError, "train_config must be a TrainConfig, got dict"),
])
def test_run_demo_rejects_bad_arguments(tmp_path, kwargs, exc, match):
    args = {"build": False, "lanes": 2, "train_config": tiny_config(), **kwargs}
    with pytest.raises(exc, match=match):
        run_demo(tmp_path, **args)
    assert os.listdir(tmp_path) == []


def test_run_demo_needs_an_existing_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        run_demo(tmp_path / "missing", build=False, lanes=2, train_config=tiny_config())


def _fake_simulate(real):
    """sim.report.simulate, but reporting mismatches (as a broken core would)."""
    def simulate(*args, **kwargs):
        report = real(*args, **kwargs)
        report["mismatches"] = 2
        report["first_mismatches"] = ["sequence 0: step 3 layer 0 neuron 5: candidate 17 != 18",
                                      "sequence 1: step 0 output 2: 4 != 5"]
        return report
    return simulate


@needs_simulator
def test_mismatch_fails_without_a_report(tmp_path, monkeypatch):
    from egru_accel.sim import report as sim_report
    monkeypatch.setattr(sim_report, "simulate", _fake_simulate(sim_report.simulate))
    with pytest.raises(MismatchError, match=r"differs from the golden model in 2 values(.|\n)*candidate 17 != 18"):
        run_demo(tmp_path, samples=1, build=False, lanes=2, train_config=tiny_config(), progress=False)
    assert not (tmp_path / "report.json").exists()


def run_cli(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@needs_simulator
def test_cli_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run_cli(["demo", "--out", str(out), "--epochs", "3", "--samples", "1", "--lanes", "8",
                                 "--no-build"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["lanes"] == 8 and report["sim"]["sequences"] == 1 and report["train"]["config"]["epochs"] == 3
    assert format_summary(report) in stdout
    for stage in ("train", "pack", "generate", "simulate", "plots"):
        assert f"] {stage} " in err
    assert [p.name for p in tmp_path.iterdir()] == ["demo"], "no temporary directory is left"


@needs_simulator
def test_cli_demo_mismatch_exits_1_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    # run_demo's own mismatch path is tested above; here, what the CLI makes of it: the files
    # written before the failure vanish with the temporary directory, and the status is 1.
    def failing_run_demo(out_dir, **kwargs):
        with open(os.path.join(out_dir, "model.npz"), "w") as f:
            f.write("partial")
        raise MismatchError("the RTL differs from the golden model in 2 values; first ones:\n  x")
    monkeypatch.setattr(demo, "run_demo", failing_run_demo)
    code, stdout, err = run_cli(["demo", "--out", str(tmp_path / "d"), "--no-build", "--lanes", "2"], capsys)
    assert code == 1
    assert "egru-accel: error: the RTL differs from the golden model in 2 values" in err
    assert stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "2"], "egru-accel: error: epochs must be at least 3"),
    (["--samples", "0"], "expected a positive integer, got 0"),
    (["--lanes", "x"], "expected a positive integer, got 'x'"),
    (["--board", "nosuch"], "egru-accel: error: unknown board 'nosuch'; known boards: icebreaker"),
    (["--lanes", "129"], "egru-accel: error: 129 lanes is more than the layer's 128 neurons"),
])
def test_cli_demo_errors(tmp_path, capsys, argv, message):
    out = tmp_path / "d"
    try:
        code = cli.main(["demo", "--out", str(out), "--no-build", "--lanes", "2"] + argv)
    except SystemExit as e:          # argparse errors
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_demo_build_errors_exit_2_and_leave_nothing(tmp_path, capsys, monkeypatch):
    from egru_accel.boards.build import BuildError

    def failing_run_demo(out_dir, **kwargs):
        with open(os.path.join(out_dir, "model.npz"), "w") as f:
            f.write("partial")
        raise BuildError("timing not met on the icebreaker: post-route Fmax 20.00 MHz, below the 24.00 MHz clock")
    monkeypatch.setattr(demo, "run_demo", failing_run_demo)
    code, _, err = run_cli(["demo", "--out", str(tmp_path / "d")], capsys)
    assert code == 2
    assert "egru-accel: error: timing not met on the icebreaker: post-route Fmax 20.00 MHz" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_demo_without_a_simulator(tmp_path, capsys, monkeypatch):
    from egru_accel.sim import runner
    monkeypatch.setattr(runner, "available_simulators", lambda: ("verilator",))
    code, _, err = run_cli(["demo", "--out", str(tmp_path / "d"), "--no-build", "--lanes", "2",
                            "--simulator", "icarus"], capsys)
    assert code == 2 and "egru-accel: error: Icarus Verilog is not installed" in err
    monkeypatch.setattr(runner, "available_simulators", lambda: ())
    monkeypatch.setenv("EGRU_SIMULATOR", "")
    code, _, err = run_cli(["demo", "--out", str(tmp_path / "d"), "--no-build", "--lanes", "2"], capsys)
    assert code == 2 and "egru-accel: error: no simulator is installed" in err
    assert list(tmp_path.iterdir()) == []


def test_module_exports():
    assert set(demo.__all__) <= set(dir(demo))
