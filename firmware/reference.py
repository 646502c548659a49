"""A reference device: the board's protocol behaviour in Python, computing with the golden model.

It holds the same loadable memories as a built core (initialised from its image) and
executes requests exactly as docs/protocol.md specifies. The host driver is tested
against it, and it is the behavioural specification of the RTL bridge.
"""

from __future__ import annotations

import struct

import numpy as np

from egru_accel.quantize import golden
from egru_accel.quantize.memory import LOADABLE, CoreLayout, MemoryId
from egru_accel.quantize.model import QuantModel
from egru_accel.quantize.packer import PackedModel, unpack

from .image import KIND_STATUS, ImageChecker, first_kind, image_layout, info_payload
from .protocol import (LOAD_CHECK, LOAD_WRITE, MAX_IMAGE, MAX_RESPONSE_PAYLOAD, REQUEST_SOF, STATUS_FORMAT, Command,
                       FrameDecoder, Status, encode_response)

__all__ = ["ReferenceDevice", "model_from_words"]


def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


def _packed(obj) -> PackedModel:
    # A PackedModel, or the hardware's CoreParams, which holds one.
    packed = obj if isinstance(obj, PackedModel) else getattr(obj, "packed", None)
    if not isinstance(packed, PackedModel):
        raise TypeError(f"expected a PackedModel (or CoreParams), not {type(obj).__name__}")
    return packed


def model_from_words(packed, words: dict) -> QuantModel:
    """The model a core built for ``packed`` (a PackedModel or CoreParams) computes when its
    loadable memories hold ``words[(mem, lane)]`` (as deep as built): the packer's
    :func:`unpack` of those words (z and r biases come back summed into ``bias_x``, as the
    hardware holds them)."""
    packed = _packed(packed)
    contents = {(MemoryId(mem), lane): np.array(w, dtype=object) for (mem, lane), w in words.items()}
    return unpack(PackedModel(layout=packed.layout, contents=contents, readout_shift=packed.readout_shift,
                              meta=dict(packed.meta)))


class ReferenceDevice:
    """Takes request bytes, returns response bytes (see :meth:`receive`).

    ``packed``: the model the device is built for (a :class:`PackedModel`, or the hardware's
    ``CoreParams``, which holds one): its layout fixes what an image must match.
    ``model_at_reset``: the device's memories hold that model at power-up (block RAM
    initialised by the bitstream); ``False`` (e.g. iCE40 SPRAM weights): RUN answers NO_MODEL
    until a load succeeds.

    The device never buffers an image: LOAD_DATA bytes go through an :class:`ImageChecker`
    one by one, and in write mode each word is written as it completes (unless a flag was
    raised by an earlier byte), exactly as the RTL bridge does."""

    def __init__(self, packed, *, model_at_reset: bool = True, counters=None):
        packed = _packed(packed)
        if not isinstance(model_at_reset, bool):
            raise TypeError(f"model_at_reset must be a bool, not {model_at_reset!r}")
        if counters is not None and not callable(counters):
            raise TypeError(f"counters must be a callable returning (cycles, step_cycles), not {counters!r}")
        self.packed = packed
        lay: CoreLayout = packed.layout
        # The golden model has no clock: STATUS's cycle counters come from ``counters()``
        # (e.g. a simulated core's) or are 0.
        self.counters = counters or (lambda: (0, 0))
        self.layout = image_layout(lay)
        self.words = {}
        for p in range(lay.lanes):
            for mem in LOADABLE:
                init = [int(w) for w in packed.words(mem, p)] if model_at_reset else []
                self.words[(int(mem), p)] = init + [0] * (lay.depth(mem) - len(init))
        self.model_ok = model_at_reset
        self.last_error = Status.OK
        self.sequence: list[np.ndarray] = []
        self.steps = 0
        self.load = None
        self.writes: list[tuple[int, int, int, int]] = []   # (mem, lane, addr, word) written by loads, in order
        self.decoder = FrameDecoder(REQUEST_SOF)

    def receive(self, data: bytes) -> bytes:
        out = b""
        for frame in self.decoder.feed(data):
            if frame.oversize:
                out += self._respond(Status.BAD_LENGTH)
            elif not frame.crc_ok:
                out += self._respond(Status.FRAME_CRC)
            else:
                out += self._execute(frame.code, frame.payload)
        return out

    def _respond(self, status: Status, payload: bytes = b"") -> bytes:
        if status != Status.OK:
            self.last_error = status
        return encode_response(status, payload)

    def _execute(self, code: int, payload: bytes) -> bytes:
        lay = self.packed.layout
        if code == Command.INFO:
            return self._respond(Status.OK, info_payload(lay))
        if code == Command.STATUS:
            cycles, step_cycles = self.counters()
            return self._respond(Status.OK, STATUS_FORMAT.pack(0, int(self.model_ok), int(self.last_error),
                                                               self.steps, cycles, step_cycles))
        if code == Command.START:
            self.sequence, self.steps = [], 0
            return self._respond(Status.OK)
        if code == Command.LOAD_BEGIN:
            if len(payload) != 5 or payload[0] not in (LOAD_CHECK, LOAD_WRITE):
                return self._respond(Status.BAD_LENGTH)
            mode, length = struct.unpack("<BI", payload)
            if length > MAX_IMAGE:
                # Announced more than the protocol allows: no load (one in progress is cancelled).
                self.load = None
                return self._respond(Status.IMAGE_LENGTH)
            self.load = {"mode": mode, "remaining": length, "checker": ImageChecker(self.layout)}
            if mode == LOAD_WRITE:
                self.model_ok = False   # the memories are about to be overwritten
            return self._respond(Status.OK)
        if code == Command.LOAD_DATA:
            if self.load is None:
                return self._respond(Status.LOAD_SEQUENCE)
            for byte in payload:
                if self.load["remaining"] == 0:
                    self.load = None
                    return self._respond(Status.IMAGE_LENGTH)
                self.load["remaining"] -= 1
                write = self.load["checker"].feed(byte)
                if write is not None and self.load["mode"] == LOAD_WRITE:
                    mem, lane, addr, word = write
                    self.words[(mem, lane)][addr] = word
                    self.writes.append(write)
            return self._respond(Status.OK)
        if code == Command.LOAD_END:
            if self.load is None:
                return self._respond(Status.LOAD_SEQUENCE)
            load, self.load = self.load, None
            kind = "length" if load["remaining"] else first_kind(load["checker"].finish())
            status = Status.OK if kind is None else KIND_STATUS[kind]
            if load["mode"] == LOAD_WRITE:
                # Words were written as they arrived: only a fully checked image is a valid model.
                self.model_ok = status == Status.OK
                if self.model_ok:
                    self.sequence, self.steps = [], 0
            return self._respond(status)
        if code == Command.RUN:
            I, O = lay.input_size, lay.outputs
            nb = (lay.formats.input_bits + 7) // 8
            if not payload or len(payload) % (I * nb) or len(payload) // (I * nb) * O * 4 > MAX_RESPONSE_PAYLOAD:
                return self._respond(Status.BAD_LENGTH)
            if not self.model_ok:
                return self._respond(Status.NO_MODEL)
            # Each element: nb bytes little-endian, of which the core takes the low input_bits (two's complement).
            bits = lay.formats.input_bits
            x = np.array([_signed(int.from_bytes(payload[k:k + nb], "little") & ((1 << bits) - 1), bits)
                          for k in range(0, len(payload), nb)], dtype=np.int64).reshape(-1, I)
            k = x.shape[0]
            self.sequence.extend(x)
            trace = golden.run(model_from_words(self.packed, self.words), np.array(self.sequence)[:, None, :])
            self.steps += k
            out = trace.logits[-k:, 0]
            return self._respond(Status.OK, struct.pack(f"<{k * O}i", *[int(v) for v in out.ravel()]))
        return self._respond(Status.UNKNOWN_COMMAND)
