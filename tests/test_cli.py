"""The egru-accel command line: train end to end (small), and clear errors on bad input."""

import json
import os

import numpy as np
import pytest
import torch

from egru_accel.cli import main
from test_egru_float import evnn_state_dict


def run(argv, capsys):
    """Run the CLI in-process; return (exit status, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits for usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    code = main(["train", "--out", str(out), "--epochs", "3", "--hidden", "16", "--lanes", "4", "--quiet"])
    assert code == 0
    return out


def test_train_writes_model_and_report(trained):
    assert sorted(os.listdir(trained)) == ["model.npz", "report.json"]
    r = json.loads((trained / "report.json").read_text())
    for key in ("float_accuracy", "quant_accuracy", "weight_sparsity", "activity_sparsity",
                "effective_macs_per_step", "dense_macs_per_step"):
        assert key in r
    assert r["dense_macs_per_step"] == 3 * 16 * (8 + 16) + 16 * 10
    assert r["weight_sparsity"]["layer0.W"] >= 0.9 and r["weight_sparsity"]["layer0.R"] >= 0.9
    assert 0 <= r["activity_sparsity"]["layer0"] <= 1


def test_eval_reproduces_report(trained, capsys):
    code, out, _ = run(["eval", "--model", str(trained / "model.npz")], capsys)
    assert code == 0
    r = json.loads((trained / "report.json").read_text())
    assert json.loads(out)["quant_accuracy"] == r["quant_accuracy"]


def test_pack_and_budget(trained, tmp_path, capsys):
    code, out, err = run(["pack", "--model", str(trained / "model.npz"), "--lanes", "4",
                          "--out", str(tmp_path / "p")], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "p" / "memories.json").read_text())
    need = summary["memory_bits"]["total"]
    code, out, err = run(["pack", "--model", str(trained / "model.npz"), "--lanes", "4",
                          "--budget-bits", str(need - 1), "--out", str(tmp_path / "q")], capsys)
    assert code == 2
    assert f"needs {need} bits" in err and f"{need - 1} bits available" in err
    assert "Traceback" not in err
    assert not (tmp_path / "q").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".q")], "no partial directory left"


@pytest.mark.parametrize("argv, message", [
    (["train", "--out", "{tmp}/o", "--weight-sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["train", "--out", "{tmp}/o", "--weight-sparsity", "-0.5"], "sparsity must be in [0, 1)"),
    (["train", "--out", "{tmp}/o", "--weight-bits", "9"], "argument --weight-bits: invalid choice: 9"),
    (["train", "--out", "{tmp}/o", "--structure", "blocks"], "argument --structure: invalid choice: 'blocks'"),
    (["train", "--out", "{tmp}/o", "--hidden", "0"], "expected a positive integer"),
    (["train", "--out", "{tmp}/o", "--task", "mnist"], "invalid choice"),
    (["eval", "--model", "{tmp}/missing.npz"], "cannot read model file"),
    (["pack", "--model", "{tmp}/junk.npz", "--lanes", "2", "--out", "{tmp}/o"], "not an egru-accel model"),
])
def test_bad_arguments(argv, message, tmp_path, capsys):
    (tmp_path / "junk.npz").write_bytes(b"\x00garbage")
    code, _, err = run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("mutate, message", [
    (lambda sd: sd["kernel"].__setitem__((0, 0), float("nan")), "'kernel' holds NaN or Inf"),
    (lambda sd: sd.pop("recurrent_bias"), "missing keys ['recurrent_bias']"),
    (lambda sd: sd.update(rnn_extra=torch.zeros(2)), "unknown keys ['rnn_extra']"),
    (lambda sd: sd.update(thr=torch.zeros(7)), "'thr' must have shape [6]"),
    (lambda sd: None, "imported layer 0 is 4->6 but the model needs 8->6"),
])
def test_bad_evnn_import(mutate, message, tmp_path, capsys):
    sd = evnn_state_dict(I=4, H=6)
    mutate(sd)
    torch.save(sd, tmp_path / "layer.pt")
    code, _, err = run(["train", "--out", str(tmp_path / "o"), "--epochs", "3", "--lanes", "2",
                        "--init-evnn", str(tmp_path / "layer.pt"), "--quiet"], capsys)
    assert code == 2
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()
    assert os.listdir(tmp_path) == ["layer.pt"]


def test_evnn_import_trains(tmp_path, capsys):
    torch.save(evnn_state_dict(I=8, H=6), tmp_path / "layer.pt")
    code, _, err = run(["train", "--out", str(tmp_path / "o"), "--epochs", "3", "--lanes", "2",
                        "--init-evnn", str(tmp_path / "layer.pt"), "--quiet"], capsys)
    assert code == 0, err
    r = json.loads((tmp_path / "o" / "report.json").read_text())
    assert r["config"]["hidden"] == 6


def test_unreadable_evnn_file(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    code, _, err = run(["train", "--out", str(tmp_path / "o"), "--init-evnn", str(tmp_path / "bad.pt")], capsys)
    assert code == 2 and "cannot read EvNN state_dict" in err and "Traceback" not in err


def test_existing_output_directory_is_updated_not_lost(trained, tmp_path, capsys):
    out = tmp_path / "p"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run(["pack", "--model", str(trained / "model.npz"), "--lanes", "2", "--out", str(out),
                        "--quiet"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["keep.txt", "memories.json", "memories.npz"]


def test_too_many_lanes_for_imported_layer(tmp_path, capsys):
    torch.save(evnn_state_dict(I=8, H=6), tmp_path / "layer.pt")
    code, _, err = run(["train", "--out", str(tmp_path / "o"), "--init-evnn", str(tmp_path / "layer.pt")], capsys)
    assert code == 2 and "8 lanes is more than the layer's 6 neurons" in err


@pytest.fixture(scope="module")
def random_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rm") / "m.npz"
    assert main(["random-model", "--inputs", "5", "--hidden", "12", "--layers", "2", "--weight-sparsity", "0.8",
                 "--out", str(path), "--quiet"]) == 0
    return path


def test_generate_writes_verilog_and_summary(random_model_file, tmp_path, capsys):
    code, out, err = run(["generate", "--model", str(random_model_file), "--lanes", "3", "--out",
                          str(tmp_path / "g")], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert summary["lanes"] == 3 and summary["hidden"] == [12, 12]
    assert "module egru_core" in (tmp_path / "g" / "egru_core.v").read_text()
    assert "/tmp" not in (tmp_path / "g" / "egru_core.v").read_text(), "no absolute paths in the Verilog"


@pytest.mark.parametrize("extra, message", [
    (["--lanes", "13"], "13 lanes is more than layer0's 12 neurons"),
    (["--lanes", "2", "--max-weight-depth", "10"], "weight entries but the weight memory holds 10"),
])
def test_generate_errors_before_writing(random_model_file, tmp_path, capsys, extra, message):
    code, _, err = run(["generate", "--model", str(random_model_file), "--out", str(tmp_path / "g")] + extra, capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_generate_match_checks_the_hardware(random_model_file, tmp_path, capsys):
    assert run(["generate", "--model", str(random_model_file), "--lanes", "2", "--out", str(tmp_path / "hw")],
               capsys)[0] == 0
    # The same model fits its own hardware; a model of other shapes does not.
    code, _, err = run(["generate", "--model", str(random_model_file), "--lanes", "2", "--match",
                        str(tmp_path / "hw" / "summary.json"), "--out", str(tmp_path / "again")], capsys)
    assert code == 0, err
    assert main(["random-model", "--inputs", "5", "--hidden", "10", "--layers", "2", "--out",
                 str(tmp_path / "other.npz"), "--quiet"]) == 0
    code, _, err = run(["generate", "--model", str(tmp_path / "other.npz"), "--lanes", "2", "--match",
                        str(tmp_path / "hw" / "summary.json"), "--out", str(tmp_path / "bad")], capsys)
    assert code == 2
    assert "hidden: the model has [10, 10], the hardware [12, 12]" in err
    assert not (tmp_path / "bad").exists()


def test_random_model_errors(tmp_path, capsys):
    code, _, err = run(["random-model", "--inputs", "3", "--hidden", "4", "--lanes", "5", "--out",
                        str(tmp_path / "m.npz")], capsys)
    assert code == 2 and "5 lanes is more than the layer's 4 neurons" in err
    code, _, err = run(["random-model", "--inputs", "3", "--hidden", "4", "--weight-sparsity", "1.5", "--out",
                        str(tmp_path / "m.npz")], capsys)
    assert code == 2 and "sparsity must be in [0, 1)" in err


def test_image_and_run_errors(random_model_file, tmp_path, capsys):
    import numpy as np
    from egru_accel.firmware.image import parse_image
    code, _, err = run(["image", "--model", str(random_model_file), "--lanes", "2", "--out",
                        str(tmp_path / "m.img"), "--quiet"], capsys)
    assert code == 0, err
    img = parse_image((tmp_path / "m.img").read_bytes())
    assert img.lanes == 2 and img.inputs == 5
    np.save(tmp_path / "x.npy", np.zeros((3, 5), dtype=np.int64))
    code, _, err = run(["run", "--port", str(tmp_path / "ttyNONE"), "--image", str(tmp_path / "m.img"),
                        "--inputs", str(tmp_path / "x.npy")], capsys)
    assert code == 2 and "cannot open serial port" in err and "Traceback" not in err
    (tmp_path / "bad.img").write_bytes((tmp_path / "m.img").read_bytes()[:-1])
    code, _, err = run(["run", "--port", "/dev/null", "--image", str(tmp_path / "bad.img"),
                        "--inputs", str(tmp_path / "x.npy")], capsys)
    assert code == 2 and "CRC32" in err
    np.save(tmp_path / "f.npy", np.zeros((3, 4)))
    code, _, err = run(["run", "--port", "/dev/null", "--image", str(tmp_path / "m.img"),
                        "--inputs", str(tmp_path / "f.npy")], capsys)
    assert code == 2 and "inputs must be integers [T, 5]" in err


def test_run_with_unreadable_inputs(random_model_file, tmp_path, capsys):
    import numpy as np
    code, _, err = run(["image", "--model", str(random_model_file), "--lanes", "2", "--out",
                        str(tmp_path / "m.img"), "--quiet"], capsys)
    assert code == 0, err
    (tmp_path / "empty.npy").write_bytes(b"")
    np.savez(tmp_path / "two.npz", a=np.zeros(2), b=np.zeros(2))
    for name, message in (("empty.npy", "cannot read inputs"), ("two.npz", "not an archive")):
        code, _, err = run(["run", "--port", "/dev/null", "--image", str(tmp_path / "m.img"),
                            "--inputs", str(tmp_path / name)], capsys)
        assert code == 2 and message in err and "Traceback" not in err, err


def test_train_lane_block_sparsity(tmp_path, capsys):
    code, _, err = run(["train", "--out", str(tmp_path / "o"), "--epochs", "3", "--hidden", "16", "--lanes", "4",
                        "--structure", "lane-block", "--quiet"], capsys)
    assert code == 0, err
    r = json.loads((tmp_path / "o" / "report.json").read_text())
    assert r["config"]["structure"] == "lane-block" and 0.9 <= r["weight_sparsity"]["layer0.R"] < 0.91
    from egru_accel.quantize.model import QuantModel
    model = QuantModel.load(tmp_path / "o" / "model.npz")
    assert model.meta["structure"] == "lane-block"
    R = model.layers[0].R != 0                        # [16, 3 * 16]: blocks of 4 neurons of one gate
    blocks = R.reshape(16, 3, 4, 4)
    assert (blocks.all(axis=3) == blocks.any(axis=3)).all()


def test_train_lane_window_with_4_bit_weights(tmp_path, capsys):
    code, _, err = run(["train", "--out", str(tmp_path / "o"), "--epochs", "3", "--hidden", "20", "--lanes", "2",
                        "--structure", "lane-window", "--weight-bits", "4", "--quiet"], capsys)
    assert code == 0, err
    from egru_accel.quantize.model import QuantModel
    model = QuantModel.load(tmp_path / "o" / "model.npz")
    assert model.formats.weight_bits == 4 and model.meta["structure"] == "lane-window"
    layer = model.layers[0]
    assert np.abs(layer.R).max() <= 7 and np.abs(layer.W).max() <= 7
    # (The window structure itself is tested on the masks in test_prune.py: rounding to 4 bits
    # may zero a kept weight, so the quantized model need not show it exactly.)
    r = json.loads((tmp_path / "o" / "report.json").read_text())
    assert r["config"]["weight_bits"] == 4 and r["config"]["structure"] == "lane-window"


def test_capacity_and_images_for_a_capacity_build(random_model_file, tmp_path, capsys):
    """``capacity`` sizes a build for models; ``image --build DIR`` places a model for the
    build's capacity.json, or refuses it (exit 2, nothing written) naming the capacity."""
    from egru_accel.firmware.capacity_image import parse_capacity_image
    from egru_accel.quantize.capacity import Capacity
    small = tmp_path / "small.npz"
    assert main(["random-model", "--inputs", "4", "--hidden", "8", "--weight-sparsity", "0.5", "--seed", "3",
                 "--out", str(small), "--quiet"]) == 0
    build = tmp_path / "build"
    code, out, err = run(["capacity", "--model", str(random_model_file), str(small), "--lanes", "2",
                          "--out", str(build / "capacity.json")], capsys)
    assert code == 0, err
    cap = Capacity.load(build / "capacity.json")
    assert (cap.lanes, cap.inputs, cap.hidden) == (2, 5, (12, 12)) and "2 lanes, 5 inputs" in out
    code, out, err = run(["image", "--model", str(small), "--build", str(build), "--out", str(tmp_path / "s.img")],
                         capsys)
    assert code == 0, err
    parsed = parse_capacity_image((tmp_path / "s.img").read_bytes())
    assert (parsed.layers, parsed.inputs, parsed.hidden) == (1, 4, (8,))
    big = tmp_path / "big.npz"
    assert main(["random-model", "--inputs", "5", "--hidden", "16", "--out", str(big), "--quiet"]) == 0
    code, _, err = run(["image", "--model", str(big), "--build", str(build), "--out", str(tmp_path / "b.img")],
                       capsys)
    assert code == 2 and err.strip() == "egru-accel: error: layer 0's 16 neurons exceed the build's capacity of 12"
    assert not (tmp_path / "b.img").exists()
    code, _, err = run(["image", "--model", str(small), "--build", str(tmp_path), "--out", str(tmp_path / "c.img")],
                       capsys)
    assert code == 2 and "has no capacity.json" in err and not (tmp_path / "c.img").exists()
    (tmp_path / "bad.json").write_text('{"version": 1, "lanes": 2}')
    code, _, err = run(["image", "--model", str(small), "--capacity", str(tmp_path / "bad.json"),
                        "--out", str(tmp_path / "c.img")], capsys)
    assert code == 2 and "capacity keys" in err and "Traceback" not in err
    code, _, err = run(["image", "--model", str(small), "--lanes", "2", "--build", str(build),
                        "--out", str(tmp_path / "c.img")], capsys)
    assert code == 2 and "not allowed with argument" in err


def test_build_of_a_capacity_errors_before_any_tool(random_model_file, tmp_path, capsys):
    """``build --capacity``: the lanes come from the capacity, the iCE40 needs a wide weight
    memory (SPRAM), a missing file is an error; each one line, exit 2, no output directory."""
    cap = tmp_path / "capacity.json"
    assert main(["capacity", "--model", str(random_model_file), "--lanes", "2", "--out", str(cap), "--quiet"]) == 0
    wide = tmp_path / "wide.json"
    assert main(["capacity", "--model", str(random_model_file), "--lanes", "2", "--structure", "lane-window",
                 "--weight-memory", "wide", "--out", str(wide), "--quiet"]) == 0
    out = tmp_path / "b"
    for argv, message in [
            # Core v2's fixed logic alone is over the UP5K's 5280 cells (boards/baselines.json, ice40_v2).
            (["--board", "icebreaker", "--capacity", str(wide)], "ICESTORM_LC"),
            (["--board", "ulx3s-85f", "--capacity", str(cap), "--lanes", "2"], "--lanes goes with --model"),
            (["--board", "icebreaker", "--capacity", str(cap)], "needs a wide weight memory"),
            (["--board", "ulx3s-85f", "--capacity", str(tmp_path / "none.json")], "cannot read"),
            (["--board", "ulx3s-85f", "--capacity", str(cap), "--model", str(random_model_file)],
             "not allowed with argument")]:
        code, _, err = run(["build", *argv, "--out", str(out)], capsys)
        assert code == 2 and "error:" in err and message in err and "Traceback" not in err, err
        assert not out.exists()
