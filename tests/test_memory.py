"""One definition of every memory word: Python and Amaranth decode alike, the layout's
description round-trips, and the packer's bits are the generated hardware's, memory by memory."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egru_accel.hw.params import CoreParams
from egru_accel.quantize.memory import LOADABLE, CoreLayout, Field, LayoutError, MemoryId, Word
from egru_accel.quantize.packer import pack
from egru_accel.quantize.random_model import random_model
from helpers import check_memory_bits

WORDS = st.lists(st.tuples(st.integers(1, 40), st.booleans()), min_size=1, max_size=6).map(
    lambda fs: Word(tuple(Field(f"f{k}", w, s) for k, (w, s) in enumerate(fs))))


@settings(max_examples=100, deadline=None)
@given(WORDS, st.data())
def test_pack_unpack_and_the_amaranth_layout_agree(word, data):
    values = {f.name: data.draw(st.lists(st.integers(f.low, f.high), min_size=3, max_size=3)) for f in word.fields}
    packed = word.pack(**values)
    assert {k: v.tolist() for k, v in word.unpack(packed).items()} == values
    layout = word.struct_layout()
    assert layout.size == word.width
    for f in word.fields:
        assert layout[f.name].offset == word.offset(f.name) and layout[f.name].shape.width == f.width
        assert layout[f.name].shape.signed == f.signed
    for k, w in enumerate(packed):
        const = layout.from_bits(int(w))        # what a data.View on the memory's data reads
        assert {f.name: int(const[f.name]) for f in word.fields} == {n: v[k] for n, v in values.items()}


def test_field_range_errors():
    word = Word((Field("value", 8, True), Field("gate", 2)))
    with pytest.raises(LayoutError, match=r"^field value holds -128 \.\. 127 \(8 bits\), not 128$"):
        word.pack(value=[128], gate=[0])
    with pytest.raises(LayoutError, match=r"^field gate holds 0 \.\. 3 \(2 bits\), not 4$"):
        word.pack(value=[0], gate=[4])
    with pytest.raises(LayoutError, match=r"takes the fields \['value', 'gate'\]"):
        word.pack(value=[0])
    with pytest.raises(LayoutError, match="must be at least 1 bit wide"):
        Field("empty", 0)


def test_layout_description_round_trips_and_signatures():
    a = random_model(inputs=4, hidden=[6, 5], outputs=3, weight_sparsity=0.6, seed=1)
    lay = pack(a, 2).layout
    assert CoreLayout.from_dict(lay.to_dict()) == lay
    with pytest.raises(LayoutError, match="not a core layout description"):
        CoreLayout.from_dict({"lanes": 2})
    # Fewer weights only: the same bitstream (depths are not part of the signature) and it fits.
    fewer = pack(a, 2).layout
    import dataclasses
    smaller = dataclasses.replace(fewer, weight_entries=fewer.weight_entries - 1)
    if smaller.addr_bits == fewer.addr_bits:
        assert smaller.signature() == fewer.signature() and smaller.mismatches(fewer) == []
        assert fewer.mismatches(smaller) == [f"memory weights: the model needs {fewer.weight_depth} words per "
                                             f"lane, the hardware has {smaller.depth(MemoryId.WEIGHTS)}"]
    # Other shapes: another signature, and the mismatch names the shape.
    b = pack(random_model(inputs=4, hidden=[7, 5], outputs=3, seed=2), 2).layout
    assert b.signature() != lay.signature()
    assert b.mismatches(lay) == ["hidden: the model has [7, 5], the hardware [6, 5]"]
    with pytest.raises(TypeError, match="hardware must be a CoreLayout"):
        lay.mismatches(lay.to_dict())


@pytest.mark.parametrize("lanes, hidden, sparsity, seed", [(1, [9], 0.5, 0), (4, [12, 8], 0.8, 1), (8, [17], 0.9, 2)])
def test_packer_bits_are_the_hardware_bits(lanes, hidden, sparsity, seed):
    model = random_model(inputs=5, hidden=hidden, outputs=3, weight_sparsity=sparsity, lanes=lanes, seed=seed)
    check_memory_bits(CoreParams.from_model(model, lanes=lanes))
    check_memory_bits(CoreParams.from_model(model, lanes=lanes, dense=True))


def test_packer_bits_are_the_hardware_bits_at_digits_shapes():
    # The digits shapes (8 inputs, 128 neurons, 10 outputs, 90% sparse, balanced for 8 lanes);
    # a trained digits model is checked in tests/test_demo.py.
    model = random_model(inputs=8, hidden=[128], outputs=10, weight_sparsity=0.9, lanes=8, seed=3)
    for lanes in (1, 8):
        check_memory_bits(CoreParams.from_model(model, lanes=lanes))


def test_loadable_ids_are_the_first():
    assert [int(m) for m in LOADABLE] == [0, 1, 2, 3]
    assert [m.label for m in LOADABLE] == ["weights", "row_ptr", "consts", "readout_bias"]
