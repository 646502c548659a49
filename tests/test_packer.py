"""Packer: exact round trip, layout invariants and capacity errors (property tests)."""

import numpy as np
import pytest
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

from egru_accel.quantize import golden
from egru_accel.quantize.formats import NumberFormats
from egru_accel.quantize.lanes import lane_of, local_index
from egru_accel.quantize.memory import MemoryId
from egru_accel.quantize.model import QuantLayer, QuantModel, QuantReadout
from egru_accel.quantize.packer import CapacityError, MEMORY_NAMES, check_capacity, pack, unpack


def random_model(rng, inputs, hidden, outputs, sparsity, fmt=None):
    fmt = fmt or NumberFormats()
    layers = []
    I = inputs
    for H in hidden:
        def w(shape):
            m = rng.integers(fmt.weight_min, fmt.weight_max + 1, size=shape)
            return np.where(rng.random(shape) < sparsity, 0, m)
        layers.append(QuantLayer(
            W=w((I, 3 * H)), R=w((H, 3 * H)),
            w_shift=tuple(int(v) for v in rng.integers(4, 10, 3)),
            r_shift=tuple(int(v) for v in rng.integers(4, 10, 3)),
            bias_x=rng.integers(-(1 << 20), 1 << 20, 3 * H), bias_h=rng.integers(-(1 << 20), 1 << 20, 3 * H),
            theta=rng.integers(0, fmt.state_max + 1, H)))
        I = H
    ro = QuantReadout(W=np.where(rng.random((I, outputs)) < sparsity, 0,
                                 rng.integers(fmt.weight_min, fmt.weight_max + 1, (I, outputs))),
                      shift=int(rng.integers(3, 9)), bias=rng.integers(-(1 << 16), 1 << 16, outputs))
    return QuantModel(formats=fmt, layers=layers, readout=ro, meta={"task": "random"})


model_params = st.fixed_dictionaries({
    "seed": st.integers(0, 2 ** 32 - 1),
    "inputs": st.integers(1, 20),
    "hidden": st.lists(st.integers(1, 24), min_size=1, max_size=3),
    "outputs": st.integers(1, 12),
    "sparsity": st.sampled_from([0.0, 0.3, 0.9, 0.99, 1.0]),
    "lanes": st.integers(1, 8),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_params)
def test_unpack_pack_round_trip(p):
    rng = np.random.default_rng(p["seed"])
    model = random_model(rng, p["inputs"], p["hidden"], p["outputs"], p["sparsity"])
    lanes = min(p["lanes"], min(p["hidden"]))
    packed = pack(model, lanes)
    folded = model.fold_biases()
    assert unpack(packed) == folded
    # The folded biases compute the same integers.
    x = rng.integers(-128, 128, size=(3, 2, p["inputs"]))
    a, b = golden.run(model, x), golden.run(folded, x)
    assert np.array_equal(a.logits, b.logits) and all(np.array_equal(u, v) for u, v in zip(a.candidate, b.candidate))
    # Every weight memory holds exactly the non-zero weights, and each lane only its own neurons.
    lay = packed.layout
    nnz = sum(np.count_nonzero(l.W) + np.count_nonzero(l.R) for l in model.layers) + np.count_nonzero(model.readout.W)
    assert sum(packed.entries_per_lane()) == nnz
    lengths = [lay.word(MemoryId.ROW_PTR).unpack(packed.words(MemoryId.ROW_PTR, p_))["length"] for p_ in range(lanes)]
    for l, layer in enumerate(model.layers):
        M = np.concatenate([layer.W, layer.R])
        H = layer.hidden_size
        for p_ in range(lanes):
            cols = [c for c in range(3 * H) if lane_of(c % H, lanes) == p_]
            got = lengths[p_][lay.row_base[l]:lay.row_base[l] + M.shape[0]]
            assert got.tolist() == [int(np.count_nonzero(M[j, cols])) for j in range(M.shape[0])]
    dense = pack(model, lanes, dense=True)
    assert unpack(dense) == folded
    dense_entries = sum(l.W.size + l.R.size for l in model.layers) + model.readout.W.size
    assert sum(dense.entries_per_lane()) == dense_entries


def test_word_layout_of_one_entry():
    fmt = NumberFormats()
    W = np.zeros((1, 6), dtype=np.int64)
    W[0, 2 * 2 + 1] = -3  # gate g of neuron 1
    model = QuantModel(formats=fmt, layers=[QuantLayer(W=W, R=np.zeros((2, 6), dtype=np.int64),
                                                       w_shift=(7, 7, 7), r_shift=(7, 7, 7),
                                                       bias_x=np.zeros(6), bias_h=np.zeros(6),
                                                       theta=np.zeros(2))],
                       readout=QuantReadout(W=np.zeros((2, 1)), shift=7, bias=np.zeros(1)))
    packed = pack(model, 2)
    # Neuron 1 lives in lane 1 at local index 0: value -3, gate 2 (g), target 0.
    assert packed.words(MemoryId.WEIGHTS, 1).tolist() == [(-3 & 0xFF) | (2 << 8) | (0 << 10)]
    assert packed.layout.addr_bits == 1 and packed.layout.len_bits == 1  # starts 0 and 1, lengths 0 and 1
    # Rows: layer 0's input 0 (start 0, length 1), its neurons 0 and 1, the readout's two rows (empty, at 1).
    assert packed.words(MemoryId.ROW_PTR, 1).tolist() == [0 | (1 << 1), 1, 1, 1, 1]
    assert packed.words(MemoryId.WEIGHTS, 0).tolist() == []
    assert local_index(1, 2) == 0


@settings(max_examples=60, deadline=None)
@given(model_params, st.integers(0, 1 << 22))
def test_capacity_check(p, budget):
    rng = np.random.default_rng(p["seed"])
    model = random_model(rng, p["inputs"], p["hidden"], p["outputs"], p["sparsity"])
    lanes = min(p["lanes"], min(p["hidden"]))
    packed = pack(model, lanes)
    need = packed.memory_bits()
    assert need["total"] == sum(need[k] for k in MEMORY_NAMES)
    if need["total"] > budget:
        with pytest.raises(CapacityError, match=rf"needs {need['total']} bits .* budget has {budget} bits available"):
            pack(model, lanes, budget=budget)
    else:
        assert unpack(pack(model, lanes, budget=budget)) == model.fold_biases()
    # A per-kind budget one bit short of the weight memory names that kind.
    if need["weights"]:
        with pytest.raises(CapacityError, match=rf"weights: needs {need['weights']} bits, {need['weights'] - 1} bits available"):
            check_capacity(packed, {"weights": need["weights"] - 1})
    check_capacity(packed, dict(need))


def test_pack_errors():
    rng = np.random.default_rng(0)
    model = random_model(rng, 3, [4, 2], 2, 0.5)
    with pytest.raises(ValueError, match="3 lanes is more than layer1's 2 neurons"):
        pack(model, 3)
    with pytest.raises(TypeError, match="lanes must be an integer"):
        pack(model, 2.0)
    with pytest.raises(ValueError, match="lanes must be at least 1"):
        pack(model, 0)
    with pytest.raises(TypeError, match="pack takes a QuantModel"):
        pack({}, 1)
    with pytest.raises(ValueError, match="unknown memories in budget"):
        pack(model, 1, budget={"dram": 10})
    with pytest.raises(ValueError, match="budget must be >= 0"):
        pack(model, 1, budget=-1)
