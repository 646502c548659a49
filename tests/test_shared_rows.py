"""quantize/shared_rows.py: the shared-row layout holds exactly the model's weights."""

import numpy as np
import pytest

from egru_accel.quantize.memory import LayoutError
from egru_accel.quantize.random_model import random_model
from egru_accel.quantize.shared_rows import pack_shared_rows, unpack_weights


@pytest.mark.parametrize("lanes", [1, 2, 3, 4])
@pytest.mark.parametrize("dense", [False, True])
def test_entries_hold_exactly_the_weights(lanes, dense):
    model = random_model(inputs=5, hidden=[9, 6], outputs=3, weight_sparsity=0.6, seed=lanes)
    image = pack_shared_rows(model, lanes, dense=dense)
    matrices = unpack_weights(image)
    for l, layer in enumerate(model.layers):
        assert np.array_equal(matrices[l], np.concatenate([layer.W, layer.R]))
    assert np.array_equal(matrices[-1], model.readout.W)
    lengths = image.row_fields()["length"]
    assert all(len(w) == image.layout.entries == lengths.sum() for w in image.weights)
    if dense:       # every weight stored: each row's share is the lane's neuron count times the gates
        assert image.padding == sum(
            (-(-H // lanes) - (H - p + lanes - 1) // lanes) * 3 * (l.inputs + H)
            for l, H in zip(image.layout.layers, image.layout.hidden) for p in range(lanes)) + sum(
            (-(-model.output_size // lanes) - (model.output_size - p + lanes - 1) // lanes) * model.hidden_sizes[-1]
            for p in range(lanes))


def test_balanced_pruning_needs_no_padding_in_the_layers_rows():
    model = random_model(inputs=8, hidden=[8], outputs=4, weight_sparsity=0.5, seed=1, lanes=4)
    image = pack_shared_rows(model, 4)
    rows = image.row_fields()
    layer_rows = image.layout.readout_row_base        # the readout is not pruned balanced here
    values = [image.layout.entry_word.unpack(w)["value"] for w in image.weights]
    for r in range(layer_rows):
        s, n = int(rows["start"][r]), int(rows["length"][r])
        assert all(np.count_nonzero(v[s:s + n]) == n for v in values), r


def test_a_model_over_the_accumulator_width_is_refused():
    model = random_model(inputs=4, hidden=[4], outputs=2, seed=0)
    model.layers[0].bias_x[0] = 1 << 40
    with pytest.raises(LayoutError, match=r"^layer0's z accumulator needs \d+ bits, more than the core's 32$"):
        pack_shared_rows(model, 2)


def test_lanes_are_checked():
    model = random_model(inputs=4, hidden=[4], outputs=2, seed=0)
    with pytest.raises(ValueError, match="^5 lanes is more than layer0's 4 neurons$"):
        pack_shared_rows(model, 5)
    with pytest.raises(TypeError, match="^pack_shared_rows takes a QuantModel, not str$"):
        pack_shared_rows("model", 2)
