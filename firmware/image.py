"""The model image: a versioned binary holding every run-time-loadable memory of a core.

Layout (all integers little-endian)::

    offset  size  field
    0       4     magic b"EGRU"
    4       2     format version (1)
    6       2     header length H in bytes (up to the first section's data)
    8       4     hardware signature: CRC32 of the bitstream-defining parameters
                  (see :func:`hardware_signature`); a bitstream accepts only its own
    12      2     lanes
    14      2     layers L
    16      2     inputs
    18      2     outputs
    20      2*L   neurons per layer
    ..      11    number formats, one signed byte each, in NumberFormats field order
    ..      2     section count S
    ..      12*S  sections: memory id (u8), lane (u8), word bits (u16), words (u32), data offset (u32)
    H       ...   section data: each word in ceil(word bits / 8) bytes
    end-4   4     CRC32 (zlib) of everything before it

Memory ids are :data:`hw.params.MEMORIES` (0 weights, 1 row_ptr, 2 consts, 3 readout_bias).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass

from quantize.formats import NumberFormats

__all__ = ["MAGIC", "VERSION", "ImageError", "ModelImage", "Section", "build_image", "parse_image",
           "hardware_signature"]

MAGIC = b"EGRU"
VERSION = 1
_FIXED = struct.Struct("<4sHHIHHHH")
_SECTION = struct.Struct("<BBHII")
_FORMAT_FIELDS = [f.name for f in dataclasses.fields(NumberFormats)]


class ImageError(ValueError):
    """A model image that is malformed, corrupted, or not for this hardware.

    ``kind``: ``"truncated"``, ``"magic"``, ``"version"``, ``"crc"``, ``"section"`` or ``"header"``."""

    def __init__(self, message: str, kind: str = "header"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Section:
    mem: int
    lane: int
    word_bits: int
    words: tuple[int, ...]

    @property
    def word_bytes(self) -> int:
        return (self.word_bits + 7) // 8


@dataclass(frozen=True)
class ModelImage:
    signature: int
    lanes: int
    inputs: int
    outputs: int
    hidden: tuple[int, ...]
    formats: NumberFormats
    sections: tuple[Section, ...]

    def words(self, mem: int, lane: int) -> tuple[int, ...]:
        for s in self.sections:
            if s.mem == mem and s.lane == lane:
                return s.words
        raise KeyError((mem, lane))


def hardware_signature(params) -> int:
    """CRC32 of :meth:`hw.params.CoreParams.fixed`: shapes, lanes, formats, per-layer
    constants and word widths (memory depths are checked section by section instead, so a
    smaller model fits). Two models with equal signatures can share a bitstream."""
    blob = json.dumps(params.fixed(), sort_keys=True).encode()
    return zlib.crc32(hashlib.sha256(blob).digest())


def build_image(params) -> bytes:
    """The image of ``params``' (a :class:`hw.params.CoreParams`) loadable memories."""
    from hw.params import MEM_CONSTS, MEM_READOUT_BIAS, MEM_ROW_PTR, MEM_WEIGHTS
    sections = []
    for lane in range(params.lanes):
        for mem, words in ((MEM_WEIGHTS, params.weights[lane]), (MEM_ROW_PTR, params.row_ptr[lane]),
                           (MEM_CONSTS, params.consts[lane]), (MEM_READOUT_BIAS, params.readout_bias[lane])):
            sections.append(Section(mem, lane, params.mem_word_bits(mem), tuple(int(w) for w in words)))
    fmt = params.formats
    head = _FIXED.pack(MAGIC, VERSION, 0, hardware_signature(params), params.lanes, params.layers,
                       params.input_size, params.outputs)
    head += struct.pack(f"<{params.layers}H", *params.hidden)
    head += struct.pack("<11b", *[getattr(fmt, n) for n in _FORMAT_FIELDS])
    head += struct.pack("<H", len(sections))
    header_len = len(head) + _SECTION.size * len(sections)
    table, data = b"", b""
    for s in sections:
        table += _SECTION.pack(s.mem, s.lane, s.word_bits, len(s.words), header_len + len(data))
        data += b"".join(w.to_bytes(s.word_bytes, "little") for w in s.words)
    head = head[:6] + struct.pack("<H", header_len) + head[8:]
    body = head + table + data
    return body + struct.pack("<I", zlib.crc32(body))


def parse_image(blob: bytes) -> ModelImage:
    """Read and check an image; :class:`ImageError` says what is wrong."""
    if not isinstance(blob, (bytes, bytearray)):
        raise ImageError(f"an image is bytes, not {type(blob).__name__}", "header")
    blob = bytes(blob)
    if len(blob) < _FIXED.size + 4:
        raise ImageError(f"image is truncated: {len(blob)} bytes", "truncated")
    magic, version, header_len, signature, lanes, layers, inputs, outputs = _FIXED.unpack_from(blob)
    if magic != MAGIC:
        raise ImageError(f"not a model image (magic {magic!r}, expected {MAGIC!r})", "magic")
    if version != VERSION:
        raise ImageError(f"image format version {version} is not supported (expected {VERSION})", "version")
    body, (crc,) = blob[:-4], struct.unpack("<I", blob[-4:])
    if zlib.crc32(body) != crc:
        raise ImageError(f"image CRC32 mismatch (stored {crc:08x}, computed {zlib.crc32(body):08x}): "
                         "the image is corrupted or truncated", "crc")
    pos = _FIXED.size
    try:
        hidden = struct.unpack_from(f"<{layers}H", blob, pos)
        pos += 2 * layers
        fmt_values = struct.unpack_from("<11b", blob, pos)
        pos += 11
        (count,) = struct.unpack_from("<H", blob, pos)
        pos += 2
        sections = []
        for _ in range(count):
            mem, lane, word_bits, n, offset = _SECTION.unpack_from(blob, pos)
            pos += _SECTION.size
            nbytes = (word_bits + 7) // 8
            if offset + n * nbytes > len(body) or offset < header_len:
                raise ImageError(f"section (memory {mem}, lane {lane}) lies outside the image", "section")
            words = tuple(int.from_bytes(blob[offset + k * nbytes:offset + (k + 1) * nbytes], "little")
                          for k in range(n))
            sections.append(Section(mem, lane, word_bits, words))
    except struct.error:
        raise ImageError("image header is truncated", "truncated") from None
    if pos != header_len:
        raise ImageError(f"image header length is {header_len} but its fields take {pos} bytes")
    try:
        fmt = NumberFormats(**dict(zip(_FORMAT_FIELDS, fmt_values)))
    except (TypeError, ValueError) as e:
        raise ImageError(f"image number formats are invalid: {e}") from None
    return ModelImage(signature=signature, lanes=lanes, inputs=inputs, outputs=outputs, hidden=tuple(hidden),
                      formats=fmt, sections=tuple(sections))
