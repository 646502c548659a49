"""The image and INFO of a capacity build (firmware/capacity_image.py), the device's streaming
check of them (firmware.image.ImageChecker, the bridge's model), and the driver placing models
for the capacity a device states."""

import dataclasses
import struct
import zlib

import numpy as np
import pytest

from egru_accel.firmware.capacity_image import (CAPACITY_VERSION, build_capacity_image, capacity_image_layout,
                                                capacity_info, capacity_signature, param_limits,
                                                parse_capacity_image, parse_capacity_info)
from egru_accel.firmware.driver import DeviceTransport, EGRUDevice
from egru_accel.firmware.image import ImageChecker, ImageError, check_image
from egru_accel.firmware.protocol import REQUEST_SOF, Command, FrameDecoder, Status, encode_request, encode_response
from egru_accel.quantize.capacity import Capacity, CapacityError, place
from egru_accel.quantize.shared_rows import LoadMemory
from egru_accel.sim.capacity_round_trip import over_capacity, refused_images
from helpers import three_models


@pytest.fixture(scope="module")
def built():
    models = three_models()
    cap = Capacity.covering(models, lanes=4)
    return models, cap, [build_capacity_image(place(m, cap), cap) for m in models]


@pytest.mark.parametrize("changes", [{}, {"structure": "lane-window", "weight_memory": "wide"}, {"readout_macs": 3}])
def test_info_states_the_capacity(changes):
    cap = Capacity.covering(three_models(), lanes=4, **changes)
    info = capacity_info(cap)
    assert struct.unpack_from("<H", info, 4)[0] == CAPACITY_VERSION
    assert parse_capacity_info(info) == cap
    assert struct.unpack_from("<I", info)[0] == capacity_signature(cap) == zlib.crc32(info[4:])


def test_the_signature_covers_every_capacity():
    cap = Capacity.covering(three_models(), lanes=4)
    others = [dataclasses.replace(cap, **{k: v}) for k, v in
              [("inputs", cap.inputs + 1), ("hidden", (cap.hidden[0], cap.hidden[1] + 1)), ("outputs", cap.outputs + 1),
               ("entries", cap.entries + 1), ("max_row_length", cap.max_row_length + 1), ("grids", (18,)),
               ("max_align", cap.max_align + 1), ("max_bias_shift", cap.max_bias_shift + 1), ("readout_macs", 2),
               ("formats", dataclasses.replace(cap.formats, state_frac=cap.formats.state_frac - 1))]]
    assert len({capacity_signature(c) for c in others + [cap]}) == len(others) + 1


def test_bad_info_is_refused():
    info = capacity_info(Capacity.covering(three_models(), lanes=4))
    with pytest.raises(ValueError, match="signature does not match"):
        parse_capacity_info(info[:-1] + bytes([info[-1] ^ 1]))
    with pytest.raises(ValueError, match="truncated"):
        parse_capacity_info(info[:10])
    with pytest.raises(ValueError, match="not a capacity build"):
        parse_capacity_info(info[:4] + struct.pack("<H", 1) + info[6:])


def test_images_check_out_and_state_their_model(built):
    models, cap, images = built
    layout = capacity_image_layout(cap)
    for model, blob in zip(models, images):
        assert check_image(blob, layout) is None
        parsed = parse_capacity_image(blob)
        assert (parsed.layers, parsed.inputs, parsed.outputs, parsed.hidden) == (
            len(model.layers), model.input_size, model.output_size, tuple(model.hidden_sizes))
        assert parsed.signature == capacity_signature(cap)
        # The sections are the load port's writes, word for word.
        placed = place(model, cap)
        writes = cap.load_writes(placed)
        got = [(m, sec_base + a, w) for (m, part, _, words), sec_base in
               zip(parsed.sections, [s.base for s in cap.load_sections()]) for a, w in enumerate(words)]
        assert got == writes


def test_the_checker_writes_exactly_the_load_writes(built):
    models, cap, images = built
    checker = ImageChecker(capacity_image_layout(cap))
    writes = [w for w in (checker.feed(b) for b in images[0]) if w is not None]
    assert not checker.finish()
    sections = cap.load_sections()
    mapped = []
    for mem, part, addr, word in writes:
        base = next(s.base for s in sections if int(s.mem) == mem and (s.part or 0) == part)
        mapped.append((mem, base + addr, word))
    assert mapped == cap.load_writes(place(models[0], cap))


def test_the_model_shapes_in_the_header_are_not_what_the_device_checks(built):
    """The device takes the model's sizes from its run-time registers: a header whose shape
    bytes differ (CRC32 made good) still checks out; the host's parse refuses it."""
    _, cap, images = built
    body = bytearray(images[0][:-4])
    body[14] ^= 1                                     # the model's inputs
    blob = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    assert check_image(blob, capacity_image_layout(cap)) is None
    body[12] = 0                                      # no layers
    blob = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    with pytest.raises(ImageError, match="layers disagree"):
        parse_capacity_image(blob)


def test_refusals_by_the_device(built):
    models, cap, _ = built
    layout = capacity_image_layout(cap)
    kinds = {name: check_image(blob, layout) for name, blob, _ in refused_images(models[2], cap)}
    assert kinds == {"an image for another capacity": "signature", "a layer over its capacity": "capacity",
                     "a flipped bit": "crc"}


@pytest.mark.parametrize("name", ["inputs", "outputs", "layer0.hidden", "layer1.hidden", "last_layer", "layer0.grid",
                                  "layer1.input_align.z", "layer0.bias_shift.hg", "readout_bias_shift"])
def test_every_run_time_register_is_range_checked(built, name):
    """A register one past its high limit (and inputs, outputs, layer 0's neurons below their
    low one) raises ``capacity``, and the checker writes none of that word or after it."""
    models, cap, images = built
    names = cap.layout.param_names()
    limits = dict(zip(names, param_limits(cap)))
    layout = capacity_image_layout(cap)
    lo, hi = limits[name]
    bad_values = [hi + 1] + ([lo - 1] if lo > 0 else [])
    for value in bad_values:
        body = bytearray(images[0][:-4])
        at = len(body) - 2 * len(names) + 2 * names.index(name)
        body[at:at + 2] = struct.pack("<H", value)
        blob = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
        checker = ImageChecker(layout)
        writes = [w for w in (checker.feed(b) for b in blob) if w is not None]
        assert "capacity" in checker.finish()
        params = [w for w in writes if w[0] == LoadMemory.PARAMS]
        assert len(params) == names.index(name)


def test_a_section_over_its_depth_is_a_capacity_refusal(built):
    models, cap, _ = built
    bigger = dataclasses.replace(cap, entries=cap.entries + 8)
    blob = build_capacity_image(place(models[0], bigger), bigger)
    # The same image for the smaller build: its signature differs too, so compare the flags.
    checker = ImageChecker(capacity_image_layout(cap))
    for b in blob:
        checker.feed(b)
    assert {"signature", "capacity"} <= checker.finish()


def test_build_capacity_image_takes_a_placed_model(built):
    models, cap, _ = built
    other = dataclasses.replace(cap, entries=cap.entries + 1)
    with pytest.raises(TypeError, match="placed for the capacity"):
        build_capacity_image(place(models[0], other), cap)
    with pytest.raises(TypeError, match="expected a Capacity"):
        capacity_info(cap.layout)


class CapacityStub:
    """A device that answers INFO with a capacity and OK to the rest, and keeps every request."""

    def __init__(self, capacity):
        self.info = capacity_info(capacity)
        self.decoder = FrameDecoder(REQUEST_SOF)
        self.commands = []

    def receive(self, data):
        out = b""
        for frame in self.decoder.feed(data):
            self.commands.append(frame.code)
            out += encode_response(Status.OK, self.info if frame.code == Command.INFO else b"")
        return out


def test_the_driver_refuses_a_model_over_the_capacity_before_sending_it(built):
    models, cap, images = built
    stub = CapacityStub(cap)
    device = EGRUDevice(DeviceTransport(stub))
    assert device.capacity() == cap
    sent = device.load_model(models[1])
    assert sent == images[1] and device.model_shape == (models[1].input_size, models[1].output_size)
    before = list(stub.commands)
    with pytest.raises(CapacityError, match="7 inputs exceed the build's capacity of 6"):
        device.load_model(over_capacity(models[1], cap))
    assert stub.commands == before
    assert device.model_shape == (models[1].input_size, models[1].output_size)


def test_over_capacity_models_name_what_they_exceed(built):
    models, cap, _ = built
    over = over_capacity(models[0], cap)
    assert over.input_size == cap.inputs + 1
    with pytest.raises(CapacityError, match="inputs exceed"):
        place(over, cap)
    assert np.array_equal(over.layers[0].W[:models[0].input_size], models[0].layers[0].W)


def test_the_bridge_checks_and_writes_a_capacity_image_as_the_checker_does():
    """The bridge of a capacity build alone in the Amaranth simulator, its core's ``ready``
    driven at random: each model's image checks out and is written word for word as
    :class:`ImageChecker` writes it (every data bit: a narrow word carries no bytes of the wide
    window word before it), and an image with a register over its limits is refused with
    nothing written."""
    from amaranth.sim import Simulator

    from egru_accel.firmware.protocol import LOAD_CHECK, LOAD_WRITE, MAX_PAYLOAD, RESPONSE_SOF
    from egru_accel.hw.bridge import Bridge, BridgeSpec

    models = three_models()
    cap = Capacity.covering(models, lanes=4, structure="lane-window", weight_memory="wide")
    spec = BridgeSpec.for_capacity(cap)
    layout = capacity_image_layout(cap)
    images = [build_capacity_image(place(m, cap), cap) for m in models]
    _, bad, _ = refused_images(models[0], cap)[1]
    assert max(s[2] for s in layout.sections) > 16     # a wide section before the 16-bit ones

    def load(blob, mode):
        reqs = [encode_request(Command.LOAD_BEGIN, struct.pack("<BI", mode, len(blob)))]
        reqs += [encode_request(Command.LOAD_DATA, blob[k:k + MAX_PAYLOAD]) for k in range(0, len(blob), MAX_PAYLOAD)]
        return reqs + [encode_request(Command.LOAD_END)]

    plan = [(images[k], LOAD_WRITE) for k in (0, 1, 2)] + [(bad, LOAD_CHECK)]
    bridge = Bridge(spec)
    rng = np.random.default_rng(3)
    results = []

    async def testbench(ctx):
        ctx.set(bridge.tx.ready, 1)
        for blob, mode in plan:
            writes, statuses = [], []
            for req in load(blob, mode):
                pending, out = list(req), bytearray()
                while pending or not out or len(FrameDecoder(RESPONSE_SOF).feed(bytes(out))) == 0:
                    ready = rng.random() < 0.7
                    ctx.set(bridge.core_cfg.ready, ready)
                    ctx.set(bridge.rx.valid, bool(pending))
                    if pending:
                        ctx.set(bridge.rx.payload, pending[0])
                    _, _, rx_ready, tx_valid, tx_byte, w_valid, mem, lane, addr, data = await ctx.tick().sample(
                        bridge.rx.ready, bridge.tx.valid, bridge.tx.payload, bridge.core_cfg.valid,
                        bridge.core_cfg.mem, bridge.core_cfg.lane, bridge.core_cfg.addr, bridge.core_cfg.data)
                    if pending and rx_ready:
                        pending.pop(0)
                    if tx_valid:
                        out.append(tx_byte)
                    if w_valid and ready:
                        writes.append((mem, lane, addr, data))
                statuses.append(Status(FrameDecoder(RESPONSE_SOF).feed(bytes(out))[0].code))
            results.append((statuses, writes))

    sim = Simulator(bridge)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    for (blob, mode), (statuses, writes) in zip(plan, results):
        checker = ImageChecker(layout)
        want = [w for w in (checker.feed(b) for b in blob) if w is not None]
        if blob is bad:
            assert statuses[-1] == Status.IMAGE_CAPACITY and writes == []
        else:
            assert set(statuses) == {Status.OK} and writes == want
