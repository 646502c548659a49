"""The model image: exact round trip, and every kind of damage is rejected."""

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egru_accel.firmware.image import (MAGIC, ImageChecker, ImageError, build_image, check_image, first_kind, hardware_signature,
                            image_layout, parse_image)
from egru_accel.hw.params import CoreParams
from egru_accel.quantize.memory import LOADABLE, MemoryId
from egru_accel.quantize.random_model import random_model


def params_for(seed=0, hidden=(9, 6), lanes=2):
    model = random_model(inputs=4, hidden=list(hidden), outputs=3, weight_sparsity=0.6, seed=seed)
    return CoreParams.from_model(model, lanes=lanes)


def test_round_trip_every_word():
    p = params_for()
    img = parse_image(build_image(p))
    assert (img.lanes, img.inputs, img.outputs, img.hidden) == (2, 4, 3, (9, 6))
    assert img.formats == p.formats and img.signature == hardware_signature(p)
    for lane in range(p.lanes):
        for mem in LOADABLE:
            assert img.words(mem, lane) == tuple(p.words(mem, lane)), mem.label


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


# -- the streaming check a device runs (firmware.image.ImageChecker) ---------------------------------

def _recrc(blob):
    body = bytes(blob[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


def test_streaming_check_accepts_and_writes_every_word():
    p = params_for()
    checker = ImageChecker(image_layout(p))
    writes = [w for w in (checker.feed(b) for b in build_image(p)) if w is not None]
    assert first_kind(checker.finish()) is None and check_image(build_image(p), p) is None
    expected = [(mem, lane, addr, word) for lane in range(p.lanes) for mem in LOADABLE
                for addr, word in enumerate(p.words(mem, lane))]
    assert writes == expected


def test_streaming_check_kinds_by_region():
    p = params_for()
    blob = build_image(p)
    lay = image_layout(p)
    F, H = len(lay.fixed), lay.header_length
    assert len(lay.fixed) == 20 + 2 * p.layout.n_layers + 11 + 2 and H == F + 12 * 4 * p.lanes

    def flipped(pos):
        b = bytearray(blob)
        b[pos] ^= 0x04
        return bytes(b)

    def patched(pos, fmt, value):
        b = bytearray(blob)
        struct.pack_into(fmt, b, pos, value)
        return _recrc(b)

    cases = {
        "magic": [flipped(0), flipped(3), blob[:3], b""],
        "version": [patched(4, "<H", 2)],
        "crc": [flipped(4 + 4), flipped(F + 5), flipped(H + 1), flipped(len(blob) - 1), blob[:-1], blob + b"\0"],
        "signature": [patched(8, "<I", hardware_signature(p) ^ 1), patched(16, "<H", p.layout.input_size + 1),
                      build_image(params_for(hidden=(10, 6)))],
        "section": [patched(6, "<H", H + 1), patched(F - 2, "<H", 4 * p.lanes - 1),
                    patched(F + 12, "<B", 2),                              # section 1 claims memory 2
                    patched(F + 4, "<I", p.layout.depth(MemoryId.WEIGHTS) + 1),  # more words than the memory
                    patched(F + 8, "<I", H + 1),                           # data offset
                    _recrc(blob[:-4] + b"\0\0" + blob[-4:])],              # goes past the end
    }
    for kind, blobs in cases.items():
        for n, b in enumerate(blobs):
            assert check_image(b, p) == kind, (kind, n)
    # The priority when several apply: magic over crc, crc over signature and section.
    assert check_image(flipped(1)[:-1], p) == "magic"
    assert check_image(build_image(params_for(hidden=(10, 6)))[:-1], p) == "crc"


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10 ** 6), st.data())
def test_streaming_check_finds_any_flipped_bit(seed, data):
    p = params_for(seed % 7)
    blob = bytearray(build_image(p))
    bit = data.draw(st.integers(0, 8 * len(blob) - 1))
    blob[bit // 8] ^= 1 << (bit % 8)
    assert check_image(bytes(blob), p) is not None


def test_image_checker_needs_a_layout():
    with pytest.raises(TypeError, match="layout must be an ImageLayout"):
        ImageChecker(params_for())
