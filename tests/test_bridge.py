"""The protocol bridge (hw/bridge.py) with an EGRUCore in the Amaranth simulator, byte for
byte against the reference device (firmware/reference.py), and RUN outputs against the
golden model.

Request bytes go in on ``rx`` with random idle cycles, responses come out on ``tx`` under
random back-pressure. Each request's response must equal the reference device's for the
same bytes; after every request the ``model_ok``/``loading``/``error`` outputs must equal
the reference's state, and every ``cfg`` write the bridge makes must be one the reference
makes, in the same order.
"""

import copy
import dataclasses
import struct
import zlib

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from egru_accel.firmware.image import build_image, hardware_signature, image_layout
from egru_accel.firmware.protocol import (STATUS_FORMAT, LOAD_CHECK, LOAD_WRITE, MAX_IMAGE, MAX_PAYLOAD, MAX_RESPONSE_PAYLOAD, RESPONSE_SOF,
                               Command, FrameDecoder, Status, encode_request)
from egru_accel.firmware.reference import ReferenceDevice
from egru_accel.hw.bridge import Bridge
from egru_accel.hw.core import EGRUCore
from egru_accel.hw.params import CoreParams
from egru_accel.quantize.memory import MemoryId
from egru_accel.quantize import golden
from egru_accel.quantize.random_model import random_inputs, random_model


# -- models ---------------------------------------------------------------------------------------

def small_model(hidden=(6,), seed=1, inputs=4, outputs=3):
    return random_model(inputs=inputs, hidden=list(hidden), outputs=outputs, weight_sparsity=0.75, seed=seed)


def negated(model):
    """Every weight and bias negated: other numbers, the same shapes, bounds and widths."""
    b = copy.deepcopy(model)
    for layer in b.layers:
        layer.W, layer.R, layer.bias_x, layer.bias_h = -layer.W, -layer.R, -layer.bias_x, -layer.bias_h
    b.readout.W, b.readout.bias = -b.readout.W, -b.readout.bias
    return b


@pytest.fixture(scope="module")
def models():
    a = small_model()
    pa = CoreParams.from_model(a, lanes=2)
    b = negated(a)
    pb = CoreParams.from_model(b, lanes=2)
    assert hardware_signature(pa) == hardware_signature(pb), "the negated model must fit A's bitstream"
    return a, pa, b, pb


# -- requests -------------------------------------------------------------------------------------

def run_request(x, nb=1):
    return encode_request(Command.RUN, b"".join(int(v).to_bytes(nb, "little", signed=True) for v in np.ravel(x)))


def load_requests(blob, mode, announced=None):
    reqs = [encode_request(Command.LOAD_BEGIN, struct.pack("<BI", mode, len(blob) if announced is None else announced))]
    reqs += [encode_request(Command.LOAD_DATA, blob[k:k + MAX_PAYLOAD]) for k in range(0, len(blob), MAX_PAYLOAD)]
    return reqs + [encode_request(Command.LOAD_END)]


def decode(response):
    (frame,) = FrameDecoder(RESPONSE_SOF, max_payload=MAX_RESPONSE_PAYLOAD).feed(response)
    assert frame.crc_ok
    return Status(frame.code), frame.payload


def outputs_of(response, outputs):
    status, payload = decode(response)
    assert status == Status.OK
    return np.array(struct.unpack(f"<{len(payload) // 4}i", payload), dtype=np.int64).reshape(-1, outputs)


# -- simulation -----------------------------------------------------------------------------------

def simulate(params, requests, *, model_at_reset=True, seed=0, idle=0.2, backpressure=0.3):
    """Send each request (bytes, or a list of bytes sent back to back) and collect the bytes
    that come out until the reference device's response is complete; compare everything.
    Returns the responses."""
    # The reference answers each request when the testbench sends it, with STATUS's cycle
    # counters taken from the simulated core at that moment (it is idle between requests).
    counters = [0, 0]
    params = params.replace_config(model_at_reset=model_at_reset)
    ref = ReferenceDevice(params, model_at_reset=model_at_reset, counters=lambda: tuple(counters))
    expected, states, error = [], [], 0

    m = Module()
    m.submodules.bridge = bridge = Bridge(params)
    m.submodules.core = core = EGRUCore(params)
    wiring.connect(m, bridge.core_i, core.i)
    wiring.connect(m, core.o, bridge.core_o)
    wiring.connect(m, bridge.core_ctl, core.ctl)
    wiring.connect(m, core.status, bridge.core_status)
    wiring.connect(m, bridge.core_cfg, core.cfg)
    rng = np.random.default_rng(seed)
    got, outs, writes = [], [], []
    cfg = bridge.core_cfg

    async def testbench(ctx):
        nonlocal error
        send = ready = False
        for req in requests:
            counters[:] = [ctx.get(core.status.cycles), ctx.get(core.status.step_cycles)]
            exp = ref.receive(req)
            expected.append(exp)
            frames = FrameDecoder(RESPONSE_SOF, max_payload=MAX_RESPONSE_PAYLOAD).feed(exp)
            error = int(frames[-1].code != Status.OK) if frames else error
            states.append((int(ref.model_ok), int(ref.load is not None), error))
            pending, out = list(req), []
            p_idle = idle if len(req) < 64 else min(idle, 0.05)   # image data: few idles, the sim is slow
            for _ in range(200 * (len(req) + len(exp)) + 20000):
                if not pending and len(out) >= len(exp):
                    break
                # (Signals are set only when they change: the simulation is the slow part.)
                was = send
                send = bool(pending) and rng.random() >= p_idle
                if send != was:
                    ctx.set(bridge.rx.valid, send)
                if send:
                    ctx.set(bridge.rx.payload, pending[0])
                was = ready
                ready = rng.random() >= backpressure
                if ready != was:
                    ctx.set(bridge.tx.ready, ready)
                _, _, rx_ready, tx_valid, tx_byte, w_valid, busy, w_mem, w_lane, w_addr, w_data = \
                    await ctx.tick().sample(bridge.rx.ready, bridge.tx.valid, bridge.tx.payload, cfg.valid,
                                            core.status.busy, cfg.mem, cfg.lane, cfg.addr, cfg.data)
                if send and rx_ready:
                    pending.pop(0)
                if ready and tx_valid:
                    out.append(tx_byte)
                if w_valid:
                    assert not busy, "a cfg write to a busy core would be dropped"
                    writes.append((w_mem, w_lane, w_addr, w_data & ((1 << params.layout.word(w_mem).width) - 1)))
            send = False
            ctx.set(bridge.rx.valid, 0)
            got.append(bytes(out))
            outs.append((ctx.get(bridge.model_ok), ctx.get(bridge.loading), ctx.get(bridge.error)))
        # Nothing more comes out once every request is answered.
        ctx.set(bridge.tx.ready, 1)
        for _ in range(300):
            _, _, tx_valid = await ctx.tick().sample(bridge.tx.valid)
            assert not tx_valid, "the bridge sent bytes nobody asked for"

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    for n, (req, g, e) in enumerate(zip(requests, got, expected)):
        assert g == e, f"request {n} ({req[:8].hex()}...): bridge {g[:40].hex()}, reference {e[:40].hex()}"
    assert outs == states, "model_ok/loading/error after each request"
    assert writes == ref.writes, "cfg writes"
    return got


# -- tests ----------------------------------------------------------------------------------------

def test_commands_and_runs(models):
    a, pa, _, _ = models
    x = random_inputs(a, steps=80, seed=3)[0]
    bad_crc = bytearray(encode_request(Command.STATUS))
    bad_crc[-2] ^= 0x40
    oversize = bytes([0xA5, Command.RUN]) + struct.pack("<H", MAX_PAYLOAD + 1) + bytes(range(20, 40))
    I = pa.layout.input_size
    reqs = [
        encode_request(Command.INFO),
        encode_request(Command.STATUS),
        encode_request(Command.START),
        run_request(x[0:3]),
        run_request(x[3:5]),                                # the state carries over
        encode_request(Command.STATUS),                     # steps 5
        encode_request(0x7E, b"xy"),                        # unknown command
        bytes(bad_crc),
        encode_request(Command.RUN),                        # no input vector
        encode_request(Command.RUN, bytes(I + 1)),          # not a whole number of vectors
        encode_request(Command.LOAD_BEGIN, bytes(4)),
        encode_request(Command.LOAD_BEGIN, struct.pack("<BI", 2, 10)),
        encode_request(Command.LOAD_BEGIN, struct.pack("<BI", 0, MAX_IMAGE + 1)),
        encode_request(Command.LOAD_DATA, b"abc"),
        encode_request(Command.LOAD_END),
        b"\x00\x13" + oversize + encode_request(Command.STATUS),  # junk, an oversize header, then a frame
        run_request(x[5:5 + MAX_PAYLOAD // I]),             # a full request buffer; 3x longer response
        encode_request(Command.STATUS),
        encode_request(Command.START),
        run_request(x[0:2]),                                # a new sequence
    ]
    got = simulate(pa, reqs)
    statuses = [decode(r)[0] if i != 15 else None for i, r in enumerate(got)]
    assert statuses[6:15] == [Status.UNKNOWN_COMMAND, Status.FRAME_CRC, Status.BAD_LENGTH, Status.BAD_LENGTH,
                              Status.BAD_LENGTH, Status.BAD_LENGTH, Status.IMAGE_LENGTH, Status.LOAD_SEQUENCE,
                              Status.LOAD_SEQUENCE]
    frames = FrameDecoder(RESPONSE_SOF).feed(got[15])
    assert [f.code for f in frames] == [Status.BAD_LENGTH, Status.OK]
    assert STATUS_FORMAT.unpack(frames[1].payload)[:4] == (0, 1, Status.BAD_LENGTH, 5)
    assert STATUS_FORMAT.unpack(decode(got[17])[1])[:4] == (0, 1, Status.BAD_LENGTH, 5 + MAX_PAYLOAD // I)
    # The cycle counters (equal to the core's, checked byte by byte in simulate()) have counted.
    _, _, _, _, cycles, step_cycles = STATUS_FORMAT.unpack(decode(got[17])[1])
    assert 0 < step_cycles < cycles
    # RUN outputs: the golden model on the same sequence.
    k = 5 + MAX_PAYLOAD // I
    want = golden.run(a, x[:k, None, :]).logits[:, 0]
    ran = np.concatenate([outputs_of(got[i], pa.layout.outputs) for i in (3, 4, 16)])
    assert len(got[16]) - 6 > MAX_PAYLOAD
    assert np.array_equal(ran, want)
    assert np.array_equal(outputs_of(got[19], pa.layout.outputs), want[:2])


def test_load_second_model_then_rejected_write_load(models):
    a, pa, b, pb = models
    x = random_inputs(a, steps=6, seed=5)[0]
    good_b, good_a = build_image(pb), build_image(pa)
    assert good_a != good_b
    corrupt = bytearray(good_b)
    corrupt[image_layout(pb).header_length + 3] ^= 0x10      # a data byte: found by the CRC at the end
    version = bytearray(good_a)
    version[5] ^= 0x01                                      # a header byte: nothing may be written
    reqs = ([run_request(x[:2])] + load_requests(good_b, LOAD_CHECK) + load_requests(good_b, LOAD_WRITE)
            + [encode_request(Command.STATUS), run_request(x[:3]), run_request(x[3:6])]
            + load_requests(bytes(corrupt), LOAD_WRITE)
            + [run_request(x[:1]), encode_request(Command.STATUS)]
            + load_requests(bytes(version), LOAD_WRITE)
            + load_requests(good_a, LOAD_WRITE) + [run_request(x[:3])])
    ref = ReferenceDevice(pa)
    write_counts = [len(ref.writes) for req in reqs if ref.receive(req) is not None]
    got = simulate(pa, reqs, seed=1)    # also checks that the bridge writes what the reference writes
    n_load = len(load_requests(good_b, 0))
    assert all(decode(r)[0] == Status.OK for r in got[1:1 + 2 * n_load])
    i = 1 + 2 * n_load
    assert STATUS_FORMAT.unpack(decode(got[i])[1])[:4] == (0, 1, 0, 0)    # loaded; steps restarted
    assert np.array_equal(np.concatenate([outputs_of(got[i + 1], 3), outputs_of(got[i + 2], 3)]),
                          golden.run(b, x[:, None, :]).logits[:, 0])
    i += 3 + n_load
    assert decode(got[i - 1])[0] == Status.IMAGE_CRC
    assert decode(got[i])[0] == Status.NO_MODEL
    assert STATUS_FORMAT.unpack(decode(got[i + 1])[1])[1:3] == (0, Status.NO_MODEL)
    assert decode(got[i + 1 + n_load])[0] == Status.IMAGE_VERSION
    # Words are written as they arrive: a good image and one whose damage only its CRC shows
    # are written whole; an image with a flagged header byte not at all.
    words = sum(len(w) for w in pb.packed.contents.values())
    loads = [1 + n_load, 1 + 2 * n_load, i, i + 2 + n_load, i + 2 + 2 * n_load]   # after each load
    assert np.diff([0] + [write_counts[k - 1] for k in loads]).tolist() == [0, words, words, 0, words]
    assert np.array_equal(outputs_of(got[-1], 3), golden.run(a, x[:3, None, :]).logits[:, 0])


def test_rejected_images_leave_the_model_running():
    # A smaller device than the other tests' (an image of ~260 bytes): 16 image transfers.
    a = small_model(hidden=(4,), inputs=2, outputs=2)
    pa = CoreParams.from_model(a, lanes=2)
    pb = CoreParams.from_model(negated(a), lanes=2)
    image = build_image(pb)
    lay = image_layout(pb)
    F, H = len(lay.fixed), lay.header_length

    def flip(pos, bit=0):
        blob = bytearray(image)
        blob[pos] ^= 1 << bit
        return bytes(blob)

    def recrc(blob):
        body = bytes(blob[:-4])
        return body + struct.pack("<I", zlib.crc32(body))

    def patched(pos, fmt, value):
        blob = bytearray(image)
        struct.pack_into(fmt, blob, pos, value)
        return recrc(blob)

    other = build_image(CoreParams.from_model(small_model(hidden=(6,), inputs=2, outputs=2), lanes=2))
    # The last section one word longer than its memory, its data there and the CRC right:
    # only the depth check can tell.
    last = F + 12 * (len(lay.sections) - 1)
    mem, _, bits, depth = lay.sections[-1]
    count = struct.unpack_from("<I", image, last + 4)[0]
    assert count <= depth       # a memory is built at least two words deep
    grown = bytearray(image[:-4] + bytes((bits + 7) // 8 * (depth + 1 - count)))
    struct.pack_into("<I", grown, last + 4, depth + 1)
    cases = [   # (image, announced length, expected status)
        (flip(1), None, Status.IMAGE_MAGIC),
        (flip(4, 1), None, Status.IMAGE_VERSION),
        (flip(9, 3), None, Status.IMAGE_CRC),              # signature
        (flip(16, 2), None, Status.IMAGE_CRC),             # inputs
        (flip(F + 12 + 4), None, Status.IMAGE_CRC),        # section table: a word count
        (flip(H + 7, 5), None, Status.IMAGE_CRC),          # data
        (flip(len(image) - 2), None, Status.IMAGE_CRC),    # the CRC itself
        (image[:200], None, Status.IMAGE_CRC),             # truncated (announced as sent)
        (image + b"\x00\x01\x02", None, Status.IMAGE_CRC), # extra bytes
        (patched(4, "<H", 2), None, Status.IMAGE_VERSION),
        (other, None, Status.IMAGE_SIGNATURE),
        (patched(F + 4, "<I", pb.layout.depth(MemoryId.WEIGHTS) + 1), None, Status.IMAGE_SECTION),   # more words than the memory
        (recrc(grown + bytes(4)), None, Status.IMAGE_SECTION),
        (patched(F + 12 + 8, "<I", struct.unpack_from("<I", image, F + 12 + 8)[0] + 2), None,
         Status.IMAGE_SECTION),                                                     # a data offset
        (image[:40], 45, Status.IMAGE_LENGTH),             # fewer bytes than announced
        (image[:3], None, Status.IMAGE_MAGIC),
    ]
    x = random_inputs(a, steps=len(cases) + 1, seed=7)[0]
    reqs, ends = [encode_request(Command.START), run_request(x[:1])], []
    for n, (blob, announced, _) in enumerate(cases):
        reqs += load_requests(blob, LOAD_CHECK, announced)
        ends.append(len(reqs) - 1)
        reqs.append(run_request(x[n + 1:n + 2]))
    # More bytes than announced: answered by LOAD_DATA, which cancels the load.
    reqs += [encode_request(Command.LOAD_BEGIN, struct.pack("<BI", LOAD_CHECK, 10)),
             encode_request(Command.LOAD_DATA, image[:11]), encode_request(Command.LOAD_END)]
    got = simulate(pa, reqs, seed=2, backpressure=0.1)
    assert [decode(got[i])[0] for i in ends] == [c[2] for c in cases]
    assert [decode(r)[0] for r in got[-3:]] == [Status.OK, Status.IMAGE_LENGTH, Status.LOAD_SEQUENCE]
    ran = np.concatenate([outputs_of(got[1], 2)] + [outputs_of(got[i + 1], 2) for i in ends])
    assert np.array_equal(ran, golden.run(a, x[:, None, :]).logits[:, 0])


def test_no_model_until_loaded(models):
    a, pa, _, _ = models
    x = random_inputs(a, steps=3, seed=9)[0]
    reqs = ([encode_request(Command.STATUS), run_request(x[:1]), encode_request(Command.START)]
            + load_requests(build_image(pa), LOAD_WRITE) + [run_request(x), encode_request(Command.STATUS)])
    got = simulate(pa, reqs, model_at_reset=False, seed=3)
    assert STATUS_FORMAT.unpack(decode(got[0])[1])[:2] == (0, 0)
    assert decode(got[1])[0] == Status.NO_MODEL
    assert np.array_equal(outputs_of(got[-2], 3), golden.run(a, x[:, None, :]).logits[:, 0])
    assert STATUS_FORMAT.unpack(decode(got[-1])[1])[:4] == (0, 1, Status.NO_MODEL, 3)


def test_wide_inputs_two_layers():
    """12-bit inputs (two bytes per element; the core keeps the low 12 bits) and two layers."""
    model = random_model(inputs=3, hidden=[4, 4], outputs=2, weight_sparsity=0.5, seed=4)
    model.formats = dataclasses.replace(model.formats, input_bits=12)
    model.validate()
    params = CoreParams.from_model(model, lanes=2)
    x = np.random.default_rng(0).integers(-2048, 2048, size=(4, 3))
    raw = x + np.where(np.arange(12).reshape(4, 3) % 2, 4096, -8192)   # high bits the core must drop
    reqs = [encode_request(Command.INFO), run_request(raw[:2], nb=2), run_request(raw[2:], nb=2)]
    got = simulate(params, reqs, seed=4)
    ran = np.concatenate([outputs_of(got[1], 2), outputs_of(got[2], 2)])
    assert np.array_equal(ran, golden.run(model, x[:, None, :]).logits[:, 0])


def test_constructor_errors(models):
    _, pa, _, _ = models
    with pytest.raises(TypeError, match="^params must be CoreParams or a BridgeSpec, not object$"):
        Bridge(object())
    with pytest.raises(TypeError, match="^model_at_reset must be True, False or None, not 1$"):
        pa.replace_config(model_at_reset=1)
    wide = CoreParams.from_model(random_model(inputs=300, hidden=[2], outputs=2, seed=0), lanes=1)
    with pytest.raises(ValueError, match="one input vector takes 300 bytes"):
        Bridge(wide)
    many = CoreParams.from_model(random_model(inputs=2, hidden=[2], outputs=20000, seed=0), lanes=1)
    with pytest.raises(ValueError, match="one step's outputs take 80000 bytes"):
        Bridge(many)


def test_waits_for_an_idle_core():
    """The bridge alone, its core side driven by the testbench with ``busy`` high at random:
    memory writes and ``start`` happen only while the core is idle (a busy core would drop
    them), and the responses are still the reference's."""
    model = small_model(hidden=(4,), inputs=2, outputs=2)
    params = CoreParams.from_model(model, lanes=2)
    image = build_image(params)
    requests = [encode_request(Command.START)] + load_requests(image, LOAD_WRITE) + [encode_request(Command.START)]
    ref = ReferenceDevice(params)
    expected = [ref.receive(r) for r in requests]
    bridge = Bridge(params)
    rng = np.random.default_rng(11)
    got, writes, starts = [], [], []

    async def testbench(ctx):
        busy = True
        ctx.set(bridge.core_status.busy, 1)
        ctx.set(bridge.tx.ready, 1)
        for req, exp in zip(requests, expected):
            pending, out = list(req), []
            while pending or len(out) < len(exp):
                if rng.random() < 0.1:     # busy for stretches of ~10 cycles
                    busy = not busy
                    ctx.set(bridge.core_status.busy, busy)
                ctx.set(bridge.rx.valid, bool(pending))
                if pending:
                    ctx.set(bridge.rx.payload, pending[0])
                _, _, rx_ready, tx_valid, tx_byte, w_valid, start, mem, lane, addr, data = await ctx.tick().sample(
                    bridge.rx.ready, bridge.tx.valid, bridge.tx.payload, bridge.core_cfg.valid,
                    bridge.core_ctl.start, bridge.core_cfg.mem, bridge.core_cfg.lane, bridge.core_cfg.addr,
                    bridge.core_cfg.data)
                if pending and rx_ready:
                    pending.pop(0)
                if tx_valid:
                    out.append(tx_byte)
                if w_valid or start:
                    assert not busy, "cfg write or start while the core is busy"
                if w_valid:
                    writes.append((mem, lane, addr, data & ((1 << params.layout.word(mem).width) - 1)))
                starts.append(start)
            got.append(bytes(out))

    sim = Simulator(bridge)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    assert got == expected
    assert writes == ref.writes and len(writes) == sum(len(w) for w in params.packed.contents.values())
    assert sum(starts) == 3     # START, the load's LOAD_END, START
