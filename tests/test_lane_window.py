"""Lane-window packing (quantize/shared_rows.py, structure="lane-window"): every address of
the lanes' weight memories holds entries of one gate and one window, so that the lanes'
entries pack into one wide word; the shared core runs such an image bit-exact."""

import numpy as np
import pytest
import torch

from egru_accel.hw.dispatch import WEIGHT_MEMORIES, EventDispatcher
from egru_accel.hw.shared_core import SharedCore, SharedCoreConfig
from egru_accel.quantize.lanes import WINDOW
from egru_accel.quantize.memory import LayoutError
from egru_accel.quantize.prune import window_mask
from egru_accel.quantize.random_model import random_inputs, random_model
from egru_accel.quantize.shared_rows import pack_shared_rows, unpack_weights
from egru_accel.sim.shared_core_tb import compare_with_golden, run_shared_core


def _window_pruned(*, inputs, hidden, outputs, lanes, sparsity, seed):
    """A random model pruned lane-window with no stored zero (so no lane's count falls short)."""
    model = random_model(inputs=inputs, hidden=hidden, outputs=outputs, weight_sparsity=0.0, seed=seed)
    def prune(w, gates):
        w[w == 0] = 1
        mask = window_mask(torch.tensor(w, dtype=torch.float32), sparsity, lanes=lanes, gates=gates).numpy()
        w *= mask.astype(w.dtype)
    for layer in model.layers:
        prune(layer.W, 3)
        prune(layer.R, 3)
    prune(model.readout.W, 1)
    return model


def _matrices(model):
    return [np.concatenate([l.W, l.R]) for l in model.layers] + [model.readout.W]


@pytest.mark.parametrize("lanes", [1, 3, 4, 8])
@pytest.mark.parametrize("dense", [False, True])
def test_entries_hold_exactly_the_weights_and_share_gate_and_window(lanes, dense):
    model = random_model(inputs=5, hidden=[40, 19], outputs=11, weight_sparsity=0.7, seed=lanes)
    image = pack_shared_rows(model, lanes, dense=dense, structure="lane-window")
    assert image.layout.structure == "lane-window"
    assert all(np.array_equal(a, b) for a, b in zip(unpack_weights(image), _matrices(model)))
    assert all(len(w) == image.layout.entries == image.row_fields()["length"].sum() for w in image.weights)
    # The wide words give back every lane's entry.
    wide = image.layout.window_word.unpack(image.window_words())
    for p, w in enumerate(image.weights):
        e = image.layout.entry_word.unpack(w)
        assert np.array_equal(e["value"], wide[f"value{p}"])
        assert np.array_equal(e["gate"], wide["gate"])
        assert np.array_equal(e["target"], WINDOW * wide["window"] + wide[f"offset{p}"])


def test_window_padding_is_at_least_the_row_padding():
    model = random_model(inputs=5, hidden=[40], outputs=6, weight_sparsity=0.7, seed=2)
    rows = pack_shared_rows(model, 4)
    windows = pack_shared_rows(model, 4, structure="lane-window")
    assert windows.layout.entries >= rows.layout.entries
    # The same weights: padding counts the zero entries of all lanes.
    assert 4 * windows.layout.entries - windows.padding == 4 * rows.layout.entries - rows.padding


def test_a_window_pruned_model_needs_no_padding():
    model = _window_pruned(inputs=6, hidden=[64, 32], outputs=8, lanes=4, sparsity=0.75, seed=5)
    image = pack_shared_rows(model, 4, structure="lane-window")
    assert image.padding == 0
    assert image.layout.entries == pack_shared_rows(model, 4).layout.entries


def test_64_bit_words_for_8_lanes_of_4_bit_weights():
    model = random_model(inputs=5, hidden=[128], outputs=10, weight_sparsity=0.8, seed=1)
    layout = pack_shared_rows(model, 8, structure="lane-window").layout
    # 8 x (4-bit value + 3-bit offset), 2 gate bits, 1 window bit (16 local neurons: 2 windows).
    widths = {f.name: f.width for f in layout.window_word.fields}
    assert widths["gate"] == 2 and widths["window"] == 1
    assert layout.window_word.width == 8 * (layout.formats.weight_bits + 3) + 3


def test_bad_structures_are_refused():
    model = random_model(inputs=4, hidden=[8], outputs=2, seed=0)
    with pytest.raises(ValueError, match=r"^structure must be unstructured or lane-window, not 'lane-block' "
                                         r"\(lane-block models pack as unstructured\)$"):
        pack_shared_rows(model, 2, structure="lane-block")
    with pytest.raises(ValueError, match=r"^structure must be unstructured or lane-window, not 'rows'$"):
        pack_shared_rows(model, 2, structure="rows")
    with pytest.raises(LayoutError, match="^a unstructured layout has no window word"):
        pack_shared_rows(model, 2).layout.window_word


@pytest.mark.parametrize("lanes, hidden, banks, readout", [(4, [33, 9], 1, "lanes"), (8, [40], 2, "lanes"),
                                                           (3, [25], 1, "engine"), (1, [10], 2, "lanes")])
def test_the_shared_core_runs_a_lane_window_image_bit_exact_from_either_weight_memory(lanes, hidden, banks, readout):
    model = random_model(inputs=5, hidden=hidden, outputs=4, weight_sparsity=0.6, seed=lanes,
                         threshold_mode="mixed")
    x = np.asarray(random_inputs(model, steps=4, sequences=3, seed=lanes))
    image = pack_shared_rows(model, lanes, structure="lane-window")
    recs = []
    for memory in WEIGHT_MEMORIES:
        config = SharedCoreConfig(debug=True, banks=banks, readout=readout, weight_memory=memory)
        recs.append(run_shared_core(image, x, config=config, stall_probability=0.2, seed=lanes))
        assert compare_with_golden(model, image, x, recs[-1]) == [], memory
    assert recs[0].step_cycles == recs[1].step_cycles       # the same entries in the same cycles


def test_a_wide_weight_memory_needs_a_lane_window_image():
    model = random_model(inputs=4, hidden=[8], outputs=2, seed=0)
    message = "^a wide weight memory needs an image packed lane-window, not unstructured$"
    with pytest.raises(ValueError, match=message):
        SharedCore(pack_shared_rows(model, 2), SharedCoreConfig(weight_memory="wide"))
    with pytest.raises(ValueError, match=message):
        EventDispatcher(image=pack_shared_rows(model, 2), weight_memory="wide")
    with pytest.raises(ValueError, match="^weight_memory must be one of lanes, wide, not 'spram'$"):
        SharedCoreConfig(weight_memory="spram")
    with pytest.raises(ValueError, match="^weight_memory must be one of lanes, wide, not 'spram'$"):
        EventDispatcher(image=pack_shared_rows(model, 2), weight_memory="spram")


def test_a_window_pruned_model_takes_the_cycles_of_its_row_packing():
    model = _window_pruned(inputs=5, hidden=[64], outputs=8, lanes=4, sparsity=0.75, seed=7)
    x = np.asarray(random_inputs(model, steps=4, sequences=1, seed=7))
    runs = [run_shared_core(pack_shared_rows(model, 4, structure=s), x) for s in ("unstructured", "lane-window")]
    assert all(compare_with_golden(model, pack_shared_rows(model, 4), x, r) == [] for r in runs)
    assert runs[0].step_cycles == runs[1].step_cycles
