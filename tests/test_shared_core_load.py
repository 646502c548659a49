"""Core v2's load port (``SharedCore.load``): a core built without a model at reset runs the model
it is loaded with, bit-exact with the golden model; a core built for one model runs another of
the same layout once that one is loaded. The writes and their word are defined once, in
quantize/shared_rows.py (``LoadMemory``, ``SharedRowLayout.load_word``,
``SharedRowImage.load_writes``)."""

import copy

import numpy as np
import pytest

from egru_accel.hw.shared_core import SharedCoreConfig
from egru_accel.quantize.random_model import random_inputs, random_model
from egru_accel.quantize.formats import BIAS_BITS
from egru_accel.quantize.shared_rows import ACC_KINDS, INIT_MEMORIES, LoadMemory, pack_shared_rows
from egru_accel.sim.shared_core_tb import compare_with_golden, run_shared_core

# (lanes, hidden sizes, structure, weight memory, banks, units, lane kind, threshold mode)
CASES = [
    (1, [5], "unstructured", "lanes", 1, 1, "fabric", "mixed"),
    (3, [9, 6], "unstructured", "lanes", 2, 1, "dsp_model", "random"),
    (8, [20], "lane-window", "wide", 1, 1, "dsp_model", "mixed"),
    (4, [9, 5], "lane-window", "wide", 2, 2, "fabric", "fire"),
    (2, [6, 5, 4], "lane-window", "lanes", 1, 2, "fabric", "random"),
]


def _signed(v, bits):
    return v - (1 << bits) if v >> (bits - 1) else v


@pytest.mark.parametrize("weight_memory", ["lanes", "wide"])
def test_load_writes_give_back_every_memory(weight_memory):
    model = random_model(inputs=5, hidden=[11, 6], outputs=3, weight_sparsity=0.5, seed=4, threshold_mode="random")
    image = pack_shared_rows(model, 4, structure="lane-window")
    lay = image.layout
    word = lay.load_word(weight_memory)
    writes = image.load_writes(weight_memory)
    per_lane = 1 if weight_memory == "wide" else lay.lanes
    assert len(writes) == lay.rows + per_lane * lay.entries + 5 * lay.neurons + lay.outputs
    for mem, addr, data in writes:
        assert 0 <= mem < len(LoadMemory) and 0 <= addr < 1 << word.field("addr").width
        assert 0 <= data < 1 << word.field("data").width
    got = {}
    for mem, addr, data in writes:
        got.setdefault(mem, {})[addr] = data
    assert [got[LoadMemory.ROWS][r] for r in range(lay.rows)] == [int(w) for w in image.rows]
    if weight_memory == "wide":
        assert [got[LoadMemory.WEIGHTS][e] for e in range(lay.entries)] == [int(w) for w in image.window_words()]
    else:
        for p in range(lay.lanes):
            base = p << lay.entry_address_bits
            assert [got[LoadMemory.WEIGHTS][base + e] for e in range(lay.entries)] == [int(w) for w in image.weights[p]]
    # Biases: BIAS_BITS mantissas, the bias that shifted by its layer's shift for the kind.
    layer_of = [l for l, spec in enumerate(lay.layers) for _ in range(spec.hidden)]
    for i, k in enumerate(ACC_KINDS):
        values = [_signed(got[INIT_MEMORIES[k]][n], BIAS_BITS) << lay.bias_shifts[layer_of[n]][i]
                  for n in range(lay.neurons)]
        assert values == image.init[k].tolist()
    assert [got[LoadMemory.THETA][n] for n in range(lay.neurons)] == image.theta.tolist()
    assert [_signed(got[LoadMemory.READOUT_BIAS][o], BIAS_BITS) << lay.readout_bias_shift
            for o in range(lay.outputs)] == image.readout_bias.tolist()
    with pytest.raises(ValueError, match="^weight_memory must be one of lanes, wide, not 'spram'$"):
        image.load_writes("spram")


@pytest.mark.parametrize("case", range(len(CASES)))
def test_a_core_without_a_model_runs_the_model_it_is_loaded_with(case):
    lanes, hidden, structure, weight_memory, banks, units, lane, mode = CASES[case]
    model = random_model(inputs=5, hidden=hidden, outputs=3, weight_sparsity=0.5, seed=40 + case,
                         threshold_mode=mode)
    x = np.asarray(random_inputs(model, steps=4, sequences=2, seed=case))
    image = pack_shared_rows(model, lanes, structure=structure)
    config = SharedCoreConfig(debug=True, lane=lane, banks=banks, units=units, weight_memory=weight_memory,
                              model_at_reset=False)
    rec = run_shared_core(image, x, config=config, stall_probability=0.2, seed=case,
                          load=image.load_writes(weight_memory))
    assert compare_with_golden(model, image, x, rec) == []


@pytest.mark.parametrize("lanes,hidden,outputs,macs,banks,units", [(4, [9, 5], 10, 4, 2, 2), (3, [7], 3, 4, 1, 1)])
def test_a_readout_engine_without_a_model_runs_the_model_it_is_loaded_with(lanes, hidden, outputs, macs, banks, units):
    model = random_model(inputs=5, hidden=hidden, outputs=outputs, weight_sparsity=0.5, seed=lanes, threshold_mode="mixed")
    x = np.asarray(random_inputs(model, steps=4, sequences=2, seed=lanes))
    image = pack_shared_rows(model, lanes)
    config = SharedCoreConfig(debug=True, readout="engine", readout_macs=macs, banks=banks, units=units,
                              model_at_reset=False)
    writes = image.load_writes("lanes", readout_macs=macs)
    engine = [w for w in writes if w[0] == LoadMemory.READOUT_WEIGHTS]
    assert len(engine) == hidden[-1] * -(-outputs // min(macs, outputs))
    rec = run_shared_core(image, x, config=config, stall_probability=0.2, seed=lanes, load=writes)
    assert compare_with_golden(model, image, x, rec) == []
    # Without the engine's words its outputs are the biases alone.
    rec = run_shared_core(image, x, config=config, seed=lanes, load=[w for w in writes if w not in engine])
    assert compare_with_golden(model, image, x, rec) != []


@pytest.mark.parametrize("skip", [LoadMemory.ROWS, LoadMemory.THETA, LoadMemory.INIT_Z])
def test_a_missing_write_shows(skip):
    # The check above can fail: leave one memory's writes out and the core no longer matches.
    model = random_model(inputs=5, hidden=[9], outputs=3, weight_sparsity=0.3, seed=7, threshold_mode="mixed")
    x = np.asarray(random_inputs(model, steps=4, sequences=1, seed=7))
    image = pack_shared_rows(model, 3)
    writes = [w for w in image.load_writes("lanes") if w[0] != skip]
    rec = run_shared_core(image, x, config=SharedCoreConfig(debug=True, model_at_reset=False), load=writes)
    assert compare_with_golden(model, image, x, rec) != []


def _same_layout_variant(model, seed):
    """Another model with the first one's layout: weights of flipped signs (the same magnitudes
    and pattern, so the same bounds and row lengths), other biases, thresholds permuted."""
    rng = np.random.default_rng(seed)
    other = copy.deepcopy(model)
    low = -(1 << (model.formats.weight_bits - 1))
    for layer in other.layers:
        for M in (layer.W, layer.R):
            flip = (rng.random(M.shape) < 0.5) & (M != low)
            M[flip] = -M[flip]
        # Negated: the same magnitudes, so the same bias grids.
        layer.bias_x[:] = -layer.bias_x
        layer.bias_h[:] = -layer.bias_h
        layer.theta[:] = rng.permutation(layer.theta)
    other.readout.W[:] = -np.where(other.readout.W == low, -low - 1, other.readout.W)
    other.readout.bias[:] = rng.permutation(other.readout.bias)
    return other


@pytest.mark.parametrize("weight_memory", ["lanes", "wide"])
def test_a_core_built_for_one_model_runs_another_of_its_layout_once_loaded(weight_memory):
    model = random_model(inputs=5, hidden=[10, 7], outputs=3, weight_sparsity=0.5, seed=11, threshold_mode="random")
    other = _same_layout_variant(model, 1)
    x = np.asarray(random_inputs(model, steps=4, sequences=2, seed=11))
    built, loaded = pack_shared_rows(model, 4, structure="lane-window"), pack_shared_rows(other, 4,
                                                                                       structure="lane-window")
    assert loaded.layout == built.layout
    config = SharedCoreConfig(debug=True, lane="dsp_model", weight_memory=weight_memory)
    rec = run_shared_core(built, x, config=config, stall_probability=0.2, seed=3,
                          load=loaded.load_writes(weight_memory))
    assert compare_with_golden(other, loaded, x, rec) == []
    assert compare_with_golden(model, built, x, rec) != []      # it no longer runs the model it was built with


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(weight_ram="bram"), ValueError, "weight_ram must be one of inferred, ice40_spram, not 'bram'"),
    (dict(model_at_reset=1), TypeError, "model_at_reset must be True or False, not 1"),
    (dict(weight_ram="ice40_spram"), ValueError, "weight_ram='ice40_spram' needs model_at_reset=False: the "
     "bitstream cannot initialise SPRAM, the weights come through the load port"),
])
def test_load_arguments_are_checked(kwargs, error, message):
    with pytest.raises(error, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        SharedCoreConfig(**kwargs)
