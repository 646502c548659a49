"""QuantModel validation and file errors."""

import numpy as np
import pytest

from egru_accel.quantize.model import ModelError, QuantModel
from test_packer import random_model


@pytest.fixture
def model():
    return random_model(np.random.default_rng(0), 3, [5, 4], 2, 0.5)


def test_save_load_round_trip(model, tmp_path):
    model.save(tmp_path / "m.npz")
    again = QuantModel.load(tmp_path / "m.npz")
    assert again == model and again.meta == model.meta


def test_unreadable_files(tmp_path):
    with pytest.raises(ModelError, match="cannot read model file .*missing.npz"):
        QuantModel.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ModelError, match="not an egru-accel model"):
        QuantModel.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ModelError, match="no header"):
        QuantModel.load(tmp_path / "other.npz")


def test_truncated_file(model, tmp_path):
    model.save(tmp_path / "m.npz")
    data = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cannot read model file"):
        QuantModel.load(tmp_path / "t.npz")


def edit(model, tmp_path, **changes):
    arrays = model.to_arrays()
    arrays.update(changes)
    np.savez(tmp_path / "e.npz", **arrays)
    return tmp_path / "e.npz"


def test_nan_weights_rejected(model, tmp_path):
    W = model.layers[0].W.astype(float)
    W[0, 0] = np.nan
    with pytest.raises(ModelError, match=r"layer0.W holds NaN or Inf"):
        QuantModel.load(edit(model, tmp_path, **{"layer0.W": W}))
    W[0, 0] = np.inf
    with pytest.raises(ModelError, match=r"layer0.W holds NaN or Inf"):
        QuantModel.load(edit(model, tmp_path, **{"layer0.W": W}))


@pytest.mark.parametrize("key, value, message", [
    ("layer1.R", np.zeros((4, 11), dtype=np.int64), r"layer1.R must have shape \[4, 12\]"),
    ("layer1.W", np.zeros((6, 12), dtype=np.int64), r"layer1.W has 6 inputs but layer0 has 5 neurons"),
    ("layer0.theta", -np.ones(5, dtype=np.int64), r"layer0.theta must lie in \[0, 32767\]"),
    ("layer0.W", np.full((3, 15), 300, dtype=np.int64), r"layer0.W must lie in \[-128, 127\]"),
    ("readout.bias", np.zeros(3, dtype=np.int64), r"readout.bias must have shape \[2\]"),
    ("layer0.bias_x", np.zeros(15, dtype=np.float32) + 0.5, r"layer0.bias_x must hold integers"),
])
def test_malformed_models(model, tmp_path, key, value, message):
    with pytest.raises(ModelError, match=message):
        QuantModel.load(edit(model, tmp_path, **{key: value}))


def test_missing_array(model, tmp_path):
    arrays = model.to_arrays()
    del arrays["layer1.theta"]
    np.savez(tmp_path / "e.npz", **arrays)
    with pytest.raises(ModelError, match="lacks 'layer1.theta'"):
        QuantModel.load(tmp_path / "e.npz")
