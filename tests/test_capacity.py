"""Capacity builds (quantize/capacity.py): one core v2 built for capacities runs models of other
sizes, layer counts, sparsities and numerics in turn, each bit-exact with its own golden model,
once its words and run-time registers are loaded; a model over a capacity is refused with an error
naming that capacity. Amaranth simulator here; Icarus and Verilator in test_capacity_cocotb.py."""

import dataclasses
import json

import numpy as np
import pytest

from egru_accel.hw.shared_core import SharedCoreConfig
from egru_accel.quantize.capacity import Capacity, CapacityError, place
from egru_accel.quantize.formats import NumberFormats
from egru_accel.quantize.random_model import random_inputs, random_model
from egru_accel.quantize.shared_rows import LoadMemory, pack_shared_rows, unpack_weights
from egru_accel.sim.shared_core_tb import Phase, compare_with_golden, run_shared_core, run_shared_core_phases
from helpers import capacity_for, three_models


def test_the_three_models_differ_where_the_build_must_follow_them():
    # Otherwise the test below would not show the run-time registers at work.
    models = three_models()
    assert len({m.acc_frac(0) for m in models}) == 2
    assert len({tuple(m.hidden_sizes) for m in models}) == 3 and {len(m.layers) for m in models} == {1, 2}
    images = [place(m, capacity_for(models)) for m in models]
    assert len({i.params.bias_shifts for i in images}) == 3
    assert len({i.params.readout_bias_shift for i in images}) > 1


@pytest.mark.parametrize("banks,units,lane,structure,memory", [
    (2, 1, "fabric", "unstructured", "lanes"),
    (1, 2, "dsp_model", "lane-window", "wide"),
])
def test_one_core_runs_three_models_in_turn(banks, units, lane, structure, memory):
    models = three_models()
    cap = capacity_for(models, structure=structure)
    images = [place(m, cap) for m in models]
    assert all(i.layout == cap.layout for i in images)
    xs = [np.asarray(random_inputs(m, steps=3, sequences=2, seed=k)) for k, m in enumerate(models)]
    order = [0, 1, 2, 1, 0]
    phases = [Phase(x=xs[0], running=images[0])] + [
        Phase(x=xs[k], load=images[k].load_writes(memory), running=images[k]) for k in order[1:]]
    config = SharedCoreConfig(debug=True, lane=lane, banks=banks, units=units, weight_memory=memory)
    recs = run_shared_core_phases(images[0], phases, config=config, stall_probability=0.2, seed=banks)
    for k, rec in zip(order, recs):
        assert compare_with_golden(models[k], images[k], xs[k], rec) == []


def test_a_smaller_model_takes_the_cycles_of_its_own_size():
    # The one-layer, 12-neuron model on the (12, 8) capacity build: step for step the cycles of a
    # core built for it alone (no layer, neuron, input or output of the capacity's it lacks costs
    # a cycle).
    models = three_models()
    image = place(models[1], capacity_for(models))
    x = np.asarray(random_inputs(models[1], steps=4, sequences=2, seed=9))
    config = SharedCoreConfig(debug=True, banks=2)
    on_capacity = run_shared_core_phases(image, [Phase(x=x, running=image)], config=config)[0]
    own = pack_shared_rows(models[1], 4)
    alone = run_shared_core(own, x, config=config)
    assert compare_with_golden(models[1], image, x, on_capacity) == []
    assert on_capacity.step_cycles == alone.step_cycles


def test_without_its_run_time_registers_a_loaded_model_does_not_match():
    # The registers matter: the third model's words and sizes, with the first model's grids,
    # alignments and bias shifts (the third's differ).
    models = three_models()
    cap = capacity_for(models)
    images = [place(models[0], cap), place(models[2], cap)]
    names = cap.layout.param_names()
    sizes = {"last_layer", "inputs", "outputs"} | {f"layer{l}.hidden" for l in range(len(cap.hidden))}
    x = np.asarray(random_inputs(models[2], steps=3, sequences=1, seed=5))
    writes = [w for w in images[1].load_writes("lanes") if w[0] != LoadMemory.PARAMS or names[w[1]] in sizes]
    assert len(writes) < len(images[1].load_writes("lanes"))
    rec = run_shared_core_phases(images[0], [Phase(x=x, load=writes, running=images[1])],
                                 config=SharedCoreConfig(debug=True), seed=1, stall_probability=0.0)
    assert compare_with_golden(models[2], images[1], x, rec[0]) != []


def test_placed_images_hold_the_model_and_its_registers():
    models = three_models()
    cap = capacity_for(models)
    for m in models:
        image = place(m, cap)
        lay = image.layout
        # Every weight where the capacity puts it: layer l's neuron n at neuron n, input j at row j.
        for l, (M, layer) in enumerate(zip(unpack_weights(image), m.layers)):
            I, H, Ic, Hc = layer.input_size, layer.hidden_size, lay.layers[l].inputs, lay.hidden[l]
            for k in range(3):
                assert np.array_equal(M[:I, k * Hc:k * Hc + H], layer.W[:, k * H:(k + 1) * H])
                assert np.array_equal(M[Ic:Ic + H, k * Hc:k * Hc + H], layer.R[:, k * H:(k + 1) * H])
            assert np.count_nonzero(M) == np.count_nonzero(layer.W) + np.count_nonzero(layer.R)
        params = {addr: data for mem, addr, data in image.load_writes("lanes") if mem == LoadMemory.PARAMS}
        names = lay.param_names()
        assert len(params) == len(names)
        got = {names[a]: v for a, v in params.items()}
        assert got["last_layer"] == len(m.layers) - 1 and got["inputs"] == m.input_size
        assert got["outputs"] == m.output_size
        for l in range(len(cap.hidden)):
            assert got[f"layer{l}.hidden"] == (m.hidden_sizes[l] if l < len(m.layers) else 0)
        assert cap.grids[got["layer0.grid"]] == m.acc_frac(0)
        assert [got[f"layer0.input_align.{g}"] for g in "zrg"] == list(m.input_align(0))


def _formats(**changes):
    return dataclasses.replace(NumberFormats(), **changes)


@pytest.mark.parametrize("change,message", [
    (dict(inputs=5), "the model's 6 inputs exceed the build's capacity of 5"),
    (dict(hidden=(12,)), "the model's 2 layers exceed the build's capacity of 1"),
    (dict(hidden=(11, 8)), "layer 0's 12 neurons exceed the build's capacity of 11"),
    (dict(hidden=(12, 7)), "layer 1's 8 neurons exceed the build's capacity of 7"),
    (dict(outputs=3), "the model's 4 outputs exceed the build's capacity of 3"),
    (dict(grids=(18,)), "layer 0's accumulator grid (acc_frac 19) is not one of the build's (18)"),
    (dict(max_align=6), "layer 0's product alignment 7 exceeds the build's max_align of 6"),
    (dict(max_bias_shift=3), "the model's bias shift 7 exceeds the build's max_bias_shift of 3"),
    # The model's own packing's counts (its placement adds only entries of zero length).
    (dict(entries=50), "the model needs {entries} weight entries per lane, more than the build's capacity of 50"),
    (dict(max_row_length=2), "the model's longest row share has {row} entries, more than the build's capacity of 2"),
    (dict(formats=_formats(weight_bits=4)), "the model's number formats differ from the build's in weight_bits"),
])
def test_a_model_over_a_capacity_is_refused_naming_it(change, message):
    model = random_model(inputs=6, hidden=[12, 8], outputs=4, weight_sparsity=0.5, seed=3, threshold_mode="mixed")
    cap = capacity_for([model], **{"grids": (18, 19), **change})
    own = pack_shared_rows(model, 4).layout
    assert own.entries > 50 and own.max_row_length > 2
    message = message.format(entries=own.entries, row=own.max_row_length)
    with pytest.raises(CapacityError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        place(model, cap)


@pytest.mark.parametrize("change,error,message", [
    (dict(formats="int8"), TypeError, "formats must be NumberFormats, not str"),
    (dict(lanes=0), ValueError, None),
    (dict(inputs=0), ValueError, "inputs must be at least 1, not 0"),
    (dict(outputs=2.0), TypeError, "outputs must be an integer, not 2.0"),
    (dict(hidden=()), ValueError, "hidden must name at least one layer"),
    (dict(hidden=12), TypeError, "hidden must be a sequence of integers, not 12"),
    (dict(hidden=(12, 3)), ValueError, r"hidden\[1\] \(3\) must be at least the lanes \(4\)"),
    (dict(structure="lane-block"), ValueError, "structure must be one of unstructured, lane-window, not 'lane-block'"),
    (dict(grids=()), ValueError, r"grids must name at least one accumulator grid, each once, not \(\)"),
    (dict(grids=(18, 18)), ValueError, r"grids must name at least one accumulator grid, each once, not \(18, 18\)"),
    (dict(max_align=-1), ValueError, "max_align must be at least 0, not -1"),
])
def test_capacity_arguments_are_checked(change, error, message):
    with pytest.raises(error, match=None if message is None else "^" + message + "$"):
        capacity_for(three_models(), **change)


def test_a_capacity_file_gives_the_capacity_back(tmp_path):
    cap = capacity_for(three_models())
    path = tmp_path / "capacity.json"
    cap.save(path)
    assert Capacity.load(path) == cap
    d = json.loads(path.read_text())
    path.write_text(json.dumps({**d, "lanez": 4}))
    with pytest.raises(ValueError, match=r"^capacity keys: unknown \['lanez'\], missing \[\]$"):
        Capacity.load(path)
    path.write_text(json.dumps({**d, "version": 9}))
    with pytest.raises(ValueError, match="^capacity version 9 is not 1$"):
        Capacity.load(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="not a capacity file"):
        Capacity.load(path)


def test_a_capacity_build_with_a_readout_engine_runs_three_models_in_turn():
    # The ECP5 configuration: two banks, two units, the readout on an engine whose weights load too.
    models = three_models()
    cap = capacity_for(models)
    images = [place(m, cap) for m in models]
    xs = [np.asarray(random_inputs(m, steps=3, sequences=2, seed=k)) for k, m in enumerate(models)]
    config = SharedCoreConfig(debug=True, banks=2, units=2, readout="engine", readout_macs=3)
    order = [0, 1, 2]
    phases = [Phase(x=xs[0], running=images[0])] + [
        Phase(x=xs[k], load=images[k].load_writes("lanes", readout_macs=3), running=images[k]) for k in order[1:]]
    recs = run_shared_core_phases(images[0], phases, config=config, stall_probability=0.2, seed=4)
    for k, rec in zip(order, recs):
        assert compare_with_golden(models[k], images[k], xs[k], rec) == []


def test_covering_is_the_smallest_capacity_that_holds_every_model():
    models = three_models()
    cap = Capacity.covering(models, lanes=4)
    for m in models:
        place(m, cap)               # each fits
    assert cap.inputs == 6 and cap.hidden == (12, 8) and cap.outputs == 4
    assert cap.grids == (18, 19) and cap.entries == max(pack_shared_rows(m, 4).layout.entries for m in models)
    # One less of any capacity and some model no longer fits.
    for change in (dict(inputs=5), dict(hidden=(11, 8)), dict(hidden=(12, 7)), dict(outputs=3),
                   dict(entries=cap.entries - 1), dict(max_row_length=cap.max_row_length - 1),
                   dict(max_align=cap.max_align - 1), dict(max_bias_shift=cap.max_bias_shift - 1),
                   dict(grids=(18,)), dict(grids=(19,))):
        smaller = dataclasses.replace(cap, **change)
        with pytest.raises(CapacityError):
            for m in models:
                place(m, smaller)
    with pytest.raises(TypeError, match="^covering takes one or more QuantModels$"):
        Capacity.covering([], lanes=4)
