"""Host driver against the reference device: loading, running, and rejected images."""

import struct

import numpy as np
import pytest

from firmware.driver import DeviceTransport, EGRUDevice
from firmware.image import build_image
from firmware.protocol import Command, ProtocolError, Status, encode_request, FrameDecoder, RESPONSE_SOF
from firmware.reference import ReferenceDevice, model_from_words
from hw.params import CoreParams
from quantize import golden
from quantize.random_model import random_inputs, random_model


def compatible_pair():
    a = random_model(inputs=4, hidden=[6, 5], outputs=3, weight_sparsity=0.6, seed=1)
    pa = CoreParams.from_model(a, lanes=2)
    for seed in range(2, 400):  # widths come from each model's bounds: few random pairs share them
        b = random_model(inputs=4, hidden=[6, 5], outputs=3, weight_sparsity=0.6, seed=seed)
        pb = CoreParams.from_model(b, lanes=2)
        if not pb.mismatches(pa.summary()):
            return a, pa, b, pb
    pytest.fail("no compatible model")


def test_model_from_words_computes_like_the_model():
    a, pa, _, _ = compatible_pair()
    dev = ReferenceDevice(pa)
    x = random_inputs(a, steps=6, seed=0)[0][:, None, :]
    assert np.array_equal(golden.run(model_from_words(pa, dev.words), x).logits, golden.run(a, x).logits)


def test_load_run_and_rejects():
    a, pa, b, pb = compatible_pair()
    dev = EGRUDevice(DeviceTransport(ReferenceDevice(pa)))
    info = dev.info()
    assert (info["lanes"], info["inputs"], info["outputs"]) == (2, 4, 3)
    x = random_inputs(a, steps=5, seed=3)[0]
    assert np.array_equal(dev.run(x), golden.run(a, x[:, None, :]).logits[:, 0])

    image = build_image(pb)
    bad_images = {
        Status.IMAGE_CRC: image[:100] + bytes([image[100] ^ 0x08]) + image[101:],
        Status.IMAGE_VERSION: None,
        Status.IMAGE_SIGNATURE: build_image(CoreParams.from_model(
            random_model(inputs=4, hidden=[7, 5], outputs=3, seed=9), lanes=2)),
    }
    import zlib
    v2 = image[:4] + struct.pack("<H", 2) + image[6:-4]
    bad_images[Status.IMAGE_VERSION] = v2 + struct.pack("<I", zlib.crc32(v2))
    # A truncated file announces its own length: the transfer is complete, the CRC32 is not.
    cases = list(bad_images.items()) + [(Status.IMAGE_CRC, image[:-7])]
    for status, blob in cases:
        dev.start()
        with pytest.raises(ProtocolError) as e:
            dev.load(blob)
        assert e.value.status == status
        # The model already loaded keeps answering correctly.
        assert np.array_equal(dev.run(x), golden.run(a, x[:, None, :]).logits[:, 0])
        assert dev.status()["model_loaded"]

    dev.load(image)
    dev.start()
    assert np.array_equal(dev.run(x), golden.run(b, x[:, None, :]).logits[:, 0])
    # Steps continue the sequence until START.
    y = random_inputs(b, steps=3, seed=4)[0]
    full = golden.run(b, np.concatenate([x, y])[:, None, :]).logits[:, 0]
    assert np.array_equal(dev.run(y), full[-3:])


def test_frame_crc_and_unknown_command():
    _, pa, _, _ = compatible_pair()
    ref = ReferenceDevice(pa)
    frame = bytearray(encode_request(Command.INFO))
    frame[-1] ^= 0x01
    dec = FrameDecoder(RESPONSE_SOF)
    (resp,) = dec.feed(ref.receive(bytes(frame)))
    assert resp.code == Status.FRAME_CRC
    (resp,) = dec.feed(ref.receive(encode_request(0x7E)))
    assert resp.code == Status.UNKNOWN_COMMAND
    (resp,) = dec.feed(ref.receive(encode_request(Command.LOAD_DATA, b"xyz")))
    assert resp.code == Status.LOAD_SEQUENCE


def test_transfer_shorter_or_longer_than_announced():
    _, pa, _, pb = compatible_pair()
    dev = EGRUDevice(DeviceTransport(ReferenceDevice(pa)))
    image = build_image(pb)
    dev.request(Command.LOAD_BEGIN, struct.pack("<BI", 0, len(image) + 5))
    dev.request(Command.LOAD_DATA, image)
    with pytest.raises(ProtocolError) as e:
        dev.request(Command.LOAD_END)
    assert e.value.status == Status.IMAGE_LENGTH
    dev.request(Command.LOAD_BEGIN, struct.pack("<BI", 0, 10))
    with pytest.raises(ProtocolError) as e:
        dev.request(Command.LOAD_DATA, image[:11])
    assert e.value.status == Status.IMAGE_LENGTH
