"""The UART protocol between a host and a board: frames, commands, status codes.

See docs/protocol.md for the frame-by-frame description. Every frame carries a CRC16
(CCITT: polynomial 0x1021, initial value 0xFFFF, no reflection) over everything after
its start byte::

    request:   0xA5 | command u8 | length u16 | payload | crc16 u16
    response:  0x5A | status  u8 | length u16 | payload | crc16 u16

Integers are little-endian. A request carries at most :data:`MAX_PAYLOAD` bytes (the
device buffers it whole and checks its CRC before executing it); a response at most
:data:`MAX_RESPONSE_PAYLOAD` (RUN streams its outputs as they are computed).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = ["REQUEST_SOF", "RESPONSE_SOF", "MAX_PAYLOAD", "MAX_RESPONSE_PAYLOAD", "MAX_IMAGE", "STATUS_FORMAT",
           "INFO_FORMAT", "INFO_FIELDS",
           "Command", "Status",
           "ProtocolError",
           "crc16", "encode_request", "encode_response", "FrameDecoder", "Frame", "LOAD_CHECK", "LOAD_WRITE"]

REQUEST_SOF = 0xA5
RESPONSE_SOF = 0x5A
#: Largest request payload in bytes: the device's request buffer (one iCE40 block RAM).
MAX_PAYLOAD = 256
#: Largest response payload in bytes (the u16 length field).
MAX_RESPONSE_PAYLOAD = 0xFFFF
#: Largest image length LOAD_BEGIN may announce (16 MiB, far above any image): a device
#: counts image bytes in 24 bits.
MAX_IMAGE = 0xFFFFFF
#: STATUS payload: busy, model loaded, last error (u8 each), then steps since START or the
#: last load, clock cycles spent in steps since reset, and cycles of the last step (u32 each).
STATUS_FORMAT = struct.Struct("<BBBIII")
#: INFO payload: hardware signature, image format version, lanes, layers, inputs, outputs,
#: input bits, readout bits, then the depth (words) of each loadable memory, in the order of
#: :data:`egru_accel.quantize.memory.LOADABLE` (weights, row_ptr, consts, readout_bias).
INFO_FORMAT = struct.Struct("<IHHHHHBBIIII")
INFO_FIELDS = ("signature", "image_version", "lanes", "layers", "inputs", "outputs", "input_bits",
               "readout_bits", "weights_depth", "row_ptr_depth", "consts_depth", "readout_bias_depth")
LOAD_CHECK, LOAD_WRITE = 0, 1


class Command(enum.IntEnum):
    INFO = 0x01         # -> hardware description (see docs/protocol.md)
    STATUS = 0x02       # -> busy, model loaded, last error, counters
    START = 0x03        # reset the recurrent state: the next RUN starts a new sequence
    LOAD_BEGIN = 0x10   # payload: mode u8 (0 check, 1 write), image length u32
    LOAD_DATA = 0x11    # payload: the next bytes of the image
    LOAD_END = 0x12     # -> OK once the whole image checked out (and, in write mode, is loaded)
    RUN = 0x20          # payload: k input vectors of `inputs` bytes -> k x `outputs` values (i32)


class Status(enum.IntEnum):
    OK = 0x00
    FRAME_CRC = 0x01          # the request's CRC16 did not match: nothing was done
    UNKNOWN_COMMAND = 0x02
    BAD_LENGTH = 0x03         # the payload length does not fit the command
    IMAGE_MAGIC = 0x10
    IMAGE_VERSION = 0x11
    IMAGE_SIGNATURE = 0x12    # the image is for another bitstream (shapes, formats, widths)
    IMAGE_SECTION = 0x13      # a section is out of order or larger than its memory
    IMAGE_CRC = 0x14          # the image's CRC32 does not match
    IMAGE_LENGTH = 0x15       # more or fewer bytes than LOAD_BEGIN announced
    LOAD_SEQUENCE = 0x16      # LOAD_DATA/LOAD_END without LOAD_BEGIN
    IMAGE_CAPACITY = 0x17     # the model exceeds a capacity of the build (a section's words, a run-time register)
    NO_MODEL = 0x20           # RUN while no valid model is loaded


class ProtocolError(Exception):
    """A malformed frame, or a response with an error status."""

    def __init__(self, message: str, status: Status | None = None):
        super().__init__(message)
        self.status = status


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _encode(sof: int, code: int, payload: bytes, limit: int) -> bytes:
    if len(payload) > limit:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the protocol's {limit}")
    body = struct.pack("<BH", code, len(payload)) + bytes(payload)
    return bytes([sof]) + body + struct.pack("<H", crc16(body))


def encode_request(command: Command, payload: bytes = b"") -> bytes:
    return _encode(REQUEST_SOF, int(command), payload, MAX_PAYLOAD)


def encode_response(status: Status, payload: bytes = b"") -> bytes:
    return _encode(RESPONSE_SOF, int(status), payload, MAX_RESPONSE_PAYLOAD)


@dataclass(frozen=True)
class Frame:
    code: int          # command (request) or status (response)
    payload: bytes
    crc_ok: bool
    oversize: bool = False   # the header announced more than max_payload bytes (payload and CRC not read)


class FrameDecoder:
    """Incremental decoder: feed bytes, get complete frames. Bytes before a start byte
    are skipped (a receiver resynchronises on the next frame).

    A header announcing more than ``max_payload`` bytes gives a frame with ``oversize``
    set as soon as its 4 header bytes are in, and the decoder hunts for the next start
    byte from the byte after the header (this is how the device answers BAD_LENGTH)."""

    def __init__(self, sof: int, *, max_payload: int = MAX_PAYLOAD):
        self.sof = sof
        self.max_payload = max_payload
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        frames = []
        while True:
            start = self.buffer.find(bytes([self.sof]))
            if start < 0:
                self.buffer.clear()
                return frames
            del self.buffer[:start]
            if len(self.buffer) < 4:
                return frames
            code, length = struct.unpack_from("<BH", self.buffer, 1)
            if length > self.max_payload:
                frames.append(Frame(code, b"", False, oversize=True))
                del self.buffer[:4]
                continue
            total = 1 + 3 + length + 2
            if len(self.buffer) < total:
                return frames
            body = bytes(self.buffer[1:4 + length])
            (crc,) = struct.unpack_from("<H", self.buffer, 4 + length)
            frames.append(Frame(code, body[3:], crc16(body) == crc))
            del self.buffer[:total]
