"""Host driver against the reference device: loading, running, and rejected images."""

import struct

import numpy as np
import pytest

from egru_accel.firmware.driver import DeviceTransport, EGRUDevice
from egru_accel.firmware.image import build_image
from egru_accel.firmware.protocol import (STATUS_FORMAT, MAX_IMAGE, MAX_PAYLOAD, MAX_RESPONSE_PAYLOAD, RESPONSE_SOF, Command, FrameDecoder,
                               ProtocolError, Status, encode_request, encode_response)
from egru_accel.firmware.reference import ReferenceDevice, model_from_words
from egru_accel.hw.params import CoreParams
from egru_accel.quantize import golden
from egru_accel.quantize.random_model import random_inputs, random_model


def compatible_pair():
    a = random_model(inputs=4, hidden=[6, 5], outputs=3, weight_sparsity=0.6, seed=1)
    pa = CoreParams.from_model(a, lanes=2)
    for seed in range(2, 400):  # widths come from each model's bounds: few random pairs share them
        b = random_model(inputs=4, hidden=[6, 5], outputs=3, weight_sparsity=0.6, seed=seed)
        pb = CoreParams.from_model(b, lanes=2)
        if not pb.layout.mismatches(pa.layout):
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
    for k in range(0, len(image), MAX_PAYLOAD):
        dev.request(Command.LOAD_DATA, image[k:k + MAX_PAYLOAD])
    with pytest.raises(ProtocolError) as e:
        dev.request(Command.LOAD_END)
    assert e.value.status == Status.IMAGE_LENGTH
    dev.request(Command.LOAD_BEGIN, struct.pack("<BI", 0, 10))
    with pytest.raises(ProtocolError) as e:
        dev.request(Command.LOAD_DATA, image[:11])
    assert e.value.status == Status.IMAGE_LENGTH


def test_oversize_header_answered_at_once_then_hunt():
    _, pa, _, _ = compatible_pair()
    ref = ReferenceDevice(pa)
    header = bytes([0xA5, Command.RUN]) + struct.pack("<H", MAX_PAYLOAD + 1)
    assert ref.receive(header[:3]) == b""
    assert ref.receive(header[3:]) == encode_response(Status.BAD_LENGTH)
    # The bytes after the header are hunted through for the next start byte.
    assert ref.receive(b"\x01\x02" + encode_request(Command.STATUS)) == encode_response(
        Status.OK, STATUS_FORMAT.pack(0, 1, Status.BAD_LENGTH, 0, 0, 0))
    with pytest.raises(ValueError, match="exceeds the protocol's 256"):
        encode_request(Command.LOAD_DATA, bytes(MAX_PAYLOAD + 1))


def test_long_runs_split_into_frames():
    a, pa, _, _ = compatible_pair()
    sent = []

    class Recorder(DeviceTransport):
        def write(self, data):
            sent.append(len(data) - 6)
            super().write(data)

    dev = EGRUDevice(Recorder(ReferenceDevice(pa)))
    x = random_inputs(a, steps=150, seed=6)[0]
    assert np.array_equal(dev.run(x), golden.run(a, x[:, None, :]).logits[:, 0])
    runs = sent[1:]                      # after INFO
    assert max(runs) <= MAX_PAYLOAD and sum(runs) == x.size and len(runs) == 3
    # Each response (steps * outputs * 4 bytes) is longer than a request may be.
    assert MAX_PAYLOAD // pa.layout.input_size * pa.layout.outputs * 4 > MAX_PAYLOAD


def test_run_frame_errors_and_input_wrap():
    a, pa, _, _ = compatible_pair()
    ref = ReferenceDevice(pa)
    dec = FrameDecoder(RESPONSE_SOF, max_payload=MAX_RESPONSE_PAYLOAD)
    for payload in (b"", bytes(pa.layout.input_size + 1)):
        (resp,) = dec.feed(ref.receive(encode_request(Command.RUN, payload)))
        assert resp.code == Status.BAD_LENGTH
    # A device without a model refuses RUN until a load succeeds.
    empty = ReferenceDevice(pa, model_at_reset=False)
    (resp,) = dec.feed(empty.receive(encode_request(Command.RUN, bytes(pa.layout.input_size))))
    assert resp.code == Status.NO_MODEL
    dev = EGRUDevice(DeviceTransport(empty))
    dev.load(build_image(pa))
    x = random_inputs(a, steps=2, seed=8)[0]
    assert np.array_equal(dev.run(x), golden.run(a, x[:, None, :]).logits[:, 0])


def test_load_begin_limits():
    _, pa, _, pb = compatible_pair()
    ref = ReferenceDevice(pa)
    dec = FrameDecoder(RESPONSE_SOF)
    codes = lambda req: [f.code for f in dec.feed(ref.receive(req))]
    assert codes(encode_request(Command.LOAD_BEGIN, struct.pack("<BI", 1, 10))) == [Status.OK]
    assert not ref.model_ok                     # write mode: the memories are being overwritten
    # A bad mode or payload leaves the load in progress alone; a length above MAX_IMAGE cancels it.
    assert codes(encode_request(Command.LOAD_BEGIN, struct.pack("<BI", 2, 10))) == [Status.BAD_LENGTH]
    assert codes(encode_request(Command.LOAD_BEGIN, b"\x00")) == [Status.BAD_LENGTH]
    assert ref.load is not None
    assert codes(encode_request(Command.LOAD_BEGIN, struct.pack("<BI", 0, MAX_IMAGE + 1))) == [Status.IMAGE_LENGTH]
    assert codes(encode_request(Command.LOAD_END)) == [Status.LOAD_SEQUENCE]
    with pytest.raises(ValueError, match="exceeds the protocol's"):
        EGRUDevice(DeviceTransport(ref)).load(bytes(MAX_IMAGE + 1))


def test_chunk_must_fit_a_request():
    _, pa, _, _ = compatible_pair()
    with pytest.raises(ValueError, match="chunk must be 1 .. 256"):
        EGRUDevice(DeviceTransport(ReferenceDevice(pa)), chunk=MAX_PAYLOAD + 1)
    with pytest.raises(TypeError, match="chunk must be an integer"):
        EGRUDevice(DeviceTransport(ReferenceDevice(pa)), chunk=12.5)
    with pytest.raises(TypeError, match="model_at_reset must be a bool"):
        ReferenceDevice(pa, model_at_reset=None)


def test_status_reports_the_cycle_counters_it_is_given():
    _, pa, _, _ = compatible_pair()
    dev = EGRUDevice(DeviceTransport(ReferenceDevice(pa, counters=lambda: (1234, 56))))
    status = dev.status()
    assert (status["cycles"], status["step_cycles"], status["steps"]) == (1234, 56, 0)
    assert EGRUDevice(DeviceTransport(ReferenceDevice(pa))).status()["cycles"] == 0
    with pytest.raises(TypeError, match="counters must be a callable"):
        ReferenceDevice(pa, counters=5)
