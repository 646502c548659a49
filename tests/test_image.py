"""The model image: exact round trip, and every kind of damage is rejected."""

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.image import MAGIC, ImageError, build_image, hardware_signature, parse_image
from hw.params import MEMORIES, CoreParams
from quantize.random_model import random_model


def params_for(seed=0, hidden=(9, 6), lanes=2):
    model = random_model(inputs=4, hidden=list(hidden), outputs=3, weight_sparsity=0.6, seed=seed)
    return CoreParams.from_model(model, lanes=lanes)


def test_round_trip_every_word():
    p = params_for()
    img = parse_image(build_image(p))
    assert (img.lanes, img.inputs, img.outputs, img.hidden) == (2, 4, 3, (9, 6))
    assert img.formats == p.formats and img.signature == hardware_signature(p)
    for lane in range(p.lanes):
        for mem, words in enumerate((p.weights[lane], p.row_ptr[lane], p.consts[lane], p.readout_bias[lane])):
            assert img.words(mem, lane) == tuple(words), MEMORIES[mem]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10 ** 6), st.data())
def test_any_flipped_bit_is_detected(seed, data):
    blob = bytearray(build_image(params_for(seed % 7)))
    bit = data.draw(st.integers(0, 8 * len(blob) - 1))
    blob[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ImageError):
        parse_image(bytes(blob))


@pytest.mark.parametrize("cut", [0, 3, 20, 100, -1])
def test_truncated_images(cut):
    blob = build_image(params_for())
    with pytest.raises(ImageError, match="truncated|CRC32"):
        parse_image(blob[:cut])


def test_wrong_magic_and_version():
    blob = bytearray(build_image(params_for()))
    bad = b"XXXX" + bytes(blob[4:-4])
    with pytest.raises(ImageError, match="not a model image"):
        parse_image(bad + struct.pack("<I", zlib.crc32(bad)))
    v2 = bytes(blob[:4]) + struct.pack("<H", 2) + bytes(blob[6:-4])
    with pytest.raises(ImageError, match="version 2 is not supported"):
        parse_image(v2 + struct.pack("<I", zlib.crc32(v2)))
    assert bytes(blob[:4]) == MAGIC


def test_signature_tells_bitstreams_apart():
    a, b = params_for(hidden=(9, 6)), params_for(hidden=(10, 6))
    assert hardware_signature(a) != hardware_signature(b)
    assert hardware_signature(a) == hardware_signature(params_for(hidden=(9, 6)))
