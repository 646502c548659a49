"""A reference device: the board's protocol behaviour in Python, computing with the golden model.

It holds the same loadable memories as a built core (initialised from its image) and
executes requests exactly as docs/protocol.md specifies. The host driver is tested
against it, and it is the behavioural specification of the RTL bridge.
"""

from __future__ import annotations

import struct

import numpy as np

from hw.params import CoreParams, MEM_CONSTS, MEM_READOUT_BIAS, MEM_ROW_PTR, MEM_WEIGHTS, MEMORIES
from quantize import golden
from quantize.model import QuantLayer, QuantModel, QuantReadout

from .image import KIND_STATUS, ImageChecker, first_kind, hardware_signature, image_layout
from .protocol import (LOAD_CHECK, LOAD_WRITE, MAX_IMAGE, MAX_RESPONSE_PAYLOAD, REQUEST_SOF, STATUS_FORMAT, Command,
                       FrameDecoder, Status, encode_response)

__all__ = ["ReferenceDevice", "model_from_words", "info_payload", "INFO_FORMAT"]

#: INFO payload: signature, image version, lanes, layers, inputs, outputs, input bits,
#: readout bits, then the depth of each loadable memory (weights, row_ptr, consts, readout_bias).
INFO_FORMAT = struct.Struct("<IHHHHHBBIIII")


def _signed(v: int, bits: int) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


def info_payload(params: CoreParams) -> bytes:
    from .image import VERSION
    return INFO_FORMAT.pack(hardware_signature(params), VERSION, params.lanes, params.layers, params.input_size,
                            params.outputs, params.formats.input_bits, params.readout_bits,
                            *[params.mem_depth(k) for k in range(len(MEMORIES))])


def model_from_words(params: CoreParams, words: dict) -> QuantModel:
    """The model a core with ``params``' constants computes when its loadable memories hold
    ``words[(mem, lane)]``. Biases of z and r come back summed into ``bias_x`` (the hardware
    only holds the sum), which computes the same integers."""
    P, fmt, wb = params.lanes, params.formats, params.formats.weight_bits
    amask = (1 << params.addr_bits) - 1

    def matrix(row_base, rows, targets, gates):
        M = np.zeros((rows, gates * targets), dtype=np.int64)
        for p in range(P):
            w, ptr = words[(MEM_WEIGHTS, p)], words[(MEM_ROW_PTR, p)]
            for r in range(rows):
                start, length = ptr[row_base + r] & amask, ptr[row_base + r] >> params.addr_bits
                for e in w[start:start + length]:
                    value, gate, target = _signed(e & ((1 << wb) - 1), wb), (e >> wb) & 3, e >> (wb + 2)
                    M[r, gate * targets + target * P + p] = value
        return M

    layers, A = [], params.acc_bits
    for l, H in enumerate(params.hidden):
        I = params.input_size if l == 0 else params.hidden[l - 1]
        M = matrix(params.row_base[l], I + H, H, 3)
        bias_x, bias_h, theta = np.zeros(3 * H, np.int64), np.zeros(3 * H, np.int64), np.zeros(H, np.int64)
        for p in range(P):
            consts = words[(MEM_CONSTS, p)]
            for n in params.lane_neurons(l, p):
                c = consts[params.const_base[l] + n // P]
                init = [_signed((c >> (k * A)) & ((1 << A) - 1), A) for k in range(4)]
                bias_x[[n, H + n, 2 * H + n]] = init[:3]
                bias_h[2 * H + n] = init[3]
                theta[n] = (c >> (4 * A)) & ((1 << fmt.state_bits) - 1)
        src = fmt.source_frac(l)
        acc = params.acc_frac[l]
        layers.append(QuantLayer(W=M[:I], R=M[I:], w_shift=tuple(acc - src - a for a in params.input_align[l]),
                                 r_shift=tuple(acc - fmt.state_frac - a for a in params.recurrent_align[l]),
                                 bias_x=bias_x, bias_h=bias_h, theta=theta))
    O, H = params.outputs, params.hidden[-1]
    Wo = matrix(params.readout_row_base, H, O, 1)
    bias = np.zeros(O, np.int64)
    for p in range(P):
        for i, o in enumerate(range(p, O, P)):
            bias[o] = _signed(words[(MEM_READOUT_BIAS, p)][i], params.readout_bits)
    return QuantModel(formats=fmt, layers=layers,
                      readout=QuantReadout(W=Wo, shift=params.model.readout.shift, bias=bias))


class ReferenceDevice:
    """Takes request bytes, returns response bytes (see :meth:`receive`).

    ``model_at_reset``: the device's memories hold ``params``' model at power-up (block RAM
    initialised by the bitstream); ``False`` (e.g. iCE40 SPRAM weights): RUN answers NO_MODEL
    until a load succeeds.

    The device never buffers an image: LOAD_DATA bytes go through an :class:`ImageChecker`
    one by one, and in write mode each word is written as it completes (unless a flag was
    raised by an earlier byte), exactly as the RTL bridge does."""

    def __init__(self, params: CoreParams, *, model_at_reset: bool = True, counters=None):
        if not isinstance(model_at_reset, bool):
            raise TypeError(f"model_at_reset must be a bool, not {model_at_reset!r}")
        if counters is not None and not callable(counters):
            raise TypeError(f"counters must be a callable returning (cycles, step_cycles), not {counters!r}")
        self.params = params
        # The golden model has no clock: STATUS's cycle counters come from ``counters()``
        # (e.g. a simulated core's) or are 0.
        self.counters = counters or (lambda: (0, 0))
        self.layout = image_layout(params)
        self.words = {}
        for p in range(params.lanes):
            for mem, src in ((MEM_WEIGHTS, params.weights), (MEM_ROW_PTR, params.row_ptr),
                             (MEM_CONSTS, params.consts), (MEM_READOUT_BIAS, params.readout_bias)):
                init = list(src[p]) if model_at_reset else []
                self.words[(mem, p)] = init + [0] * (params.mem_depth(mem) - len(init))
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
        p = self.params
        if code == Command.INFO:
            return self._respond(Status.OK, info_payload(p))
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
            I, O = p.input_size, p.outputs
            nb = (p.formats.input_bits + 7) // 8
            if not payload or len(payload) % (I * nb) or len(payload) // (I * nb) * O * 4 > MAX_RESPONSE_PAYLOAD:
                return self._respond(Status.BAD_LENGTH)
            if not self.model_ok:
                return self._respond(Status.NO_MODEL)
            # Each element: nb bytes little-endian, of which the core takes the low input_bits (two's complement).
            bits = p.formats.input_bits
            x = np.array([_signed(int.from_bytes(payload[k:k + nb], "little") & ((1 << bits) - 1), bits)
                          for k in range(0, len(payload), nb)], dtype=np.int64).reshape(-1, I)
            k = x.shape[0]
            self.sequence.extend(x)
            trace = golden.run(model_from_words(p, self.words), np.array(self.sequence)[:, None, :])
            self.steps += k
            out = trace.logits[-k:, 0]
            return self._respond(Status.OK, struct.pack(f"<{k * O}i", *[int(v) for v in out.ravel()]))
        return self._respond(Status.UNKNOWN_COMMAND)
