"""The model image of a capacity build (core v2, image format version 2), and its INFO.

A capacity build (:class:`~egru_accel.quantize.capacity.Capacity`) takes any model that fits
its capacities. Its INFO payload states them, and their CRC32 is the build's signature::

    offset  size  field (INFO, all integers little-endian)
    0       4     signature: CRC32 (zlib) of bytes 4 .. end
    4       2     image format version (2)
    6       1     lanes P
    7       1     layers L (the capacity's)
    8       2     inputs
    10      2     outputs
    12      2*L   neurons per layer
    ..      4     weight entries per lane
    ..      2     longest row share
    ..      1     packing (index in PACKINGS), weight memory (index in WEIGHT_MEMORIES),
                  readout engine multipliers (0: the readout runs on the lanes)
    ..      1     max_align, max_bias_shift, the count G of grids (one byte each)
    ..      G     the accumulator grids
    ..      11    number formats, one signed byte each, in NumberFormats field order

An image for the build is a model placed in its memories (:func:`~egru_accel.quantize.capacity.place`)::

    offset  size  field (image)
    0       4     magic b"EGRU"
    4       2     format version (2)
    6       2     header length H
    8       4     the build's signature
    12      1     the model's layers
    13      1     the capacity's layers L
    14      2     the model's inputs
    16      2     the model's outputs
    18      2*L   the model's neurons per layer (0 past its layers; L the capacity's)
    ..      2     section count S
    ..      12*S  sections: memory (a LoadMemory, u8), part (u8: a weight memory's lane, else 0),
                  word bits (u16), words (u32), data offset (u32)
    H       ...   section data: each word in ceil(word bits / 8) bytes
    end-4   4     CRC32 (zlib) of everything before it

The sections are the load port's memories (:meth:`~egru_accel.quantize.shared_rows.SharedRowLayout.load_sections`,
the one definition of every word), in that order. The device checks an image as it streams
in (:class:`~egru_accel.firmware.image.ImageChecker`, the bridge's bit-exact model): the
magic, version and signature byte for byte; the model's shapes in the header not at all
(``FREE``: what the hardware acts on are the run-time registers of the ``PARAMS`` section);
each section's memory, part, word bits and offset; a word count above a memory's depth and a
run-time register outside what the build takes as ``capacity`` (status ``IMAGE_CAPACITY``),
so that nothing is written unless the check pass succeeded and the model before keeps
answering. The host refuses such a model before sending a byte (``place`` raises a
:class:`~egru_accel.quantize.capacity.CapacityError` naming the capacity).
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from dataclasses import dataclass

from egru_accel.quantize.capacity import Capacity
from egru_accel.quantize.formats import NumberFormats
from egru_accel.quantize.shared_rows import PACKINGS, WEIGHT_MEMORIES, LoadMemory, SharedRowImage

from .image import FREE, MAGIC, ImageError, ImageLayout

__all__ = ["CAPACITY_VERSION", "capacity_info", "parse_capacity_info", "capacity_signature",
           "capacity_image_layout", "build_capacity_image", "parse_capacity_image", "CapacityImage",
           "param_limits"]

CAPACITY_VERSION = 2
_FORMAT_FIELDS = [f.name for f in dataclasses.fields(NumberFormats)]
_SECTION = struct.Struct("<BBHII")
_HEAD = struct.Struct("<4sHHIBBHH")


def _capacity(obj) -> Capacity:
    if not isinstance(obj, Capacity):
        raise TypeError(f"expected a Capacity, not {type(obj).__name__}")
    return obj


def capacity_info(capacity: Capacity) -> bytes:
    """The INFO payload of a device built for ``capacity`` (signature first)."""
    c = _capacity(capacity)
    if c.lanes > 255 or len(c.hidden) > 255 or len(c.grids) > 255 or max(c.grids) > 255:
        raise ValueError("a capacity's lanes, layers and grids must each fit a byte")
    body = struct.pack("<HBBHH", CAPACITY_VERSION, c.lanes, len(c.hidden), c.inputs, c.outputs)
    body += struct.pack(f"<{len(c.hidden)}H", *c.hidden)
    body += struct.pack("<IHBBB", c.entries, c.max_row_length, PACKINGS.index(c.structure),
                        WEIGHT_MEMORIES.index(c.weight_memory), c.readout_macs or 0)
    body += struct.pack("<BBB", c.max_align, c.max_bias_shift, len(c.grids)) + bytes(c.grids)
    body += struct.pack("<11b", *[getattr(c.formats, n) for n in _FORMAT_FIELDS])
    return struct.pack("<I", zlib.crc32(body)) + body


def capacity_signature(capacity: Capacity) -> int:
    """The build's hardware signature: CRC32 of its capacities, load format and number formats."""
    return struct.unpack_from("<I", capacity_info(capacity))[0]


def parse_capacity_info(payload: bytes) -> Capacity:
    """The :class:`Capacity` an INFO payload of :func:`capacity_info` describes; ``ValueError``
    if it is not one (another image version, a signature that does not match, bad fields)."""
    payload = bytes(payload)
    try:
        signature, version, lanes, layers, inputs, outputs = struct.unpack_from("<IHBBHH", payload)
        if version != CAPACITY_VERSION:
            raise ValueError(f"the device's image format version is {version}, not {CAPACITY_VERSION} "
                             "(not a capacity build)")
        if zlib.crc32(payload[4:]) != signature:
            raise ValueError("the INFO payload's signature does not match its fields")
        pos = 12
        hidden = struct.unpack_from(f"<{layers}H", payload, pos)
        pos += 2 * layers
        entries, max_row, packing, memory, macs = struct.unpack_from("<IHBBB", payload, pos)
        pos += 9
        max_align, max_bias_shift, n_grids = struct.unpack_from("<BBB", payload, pos)
        pos += 3
        grids = tuple(payload[pos:pos + n_grids])
        pos += n_grids
        fmt = struct.unpack_from("<11b", payload, pos)
        pos += 11
    except struct.error:
        raise ValueError(f"the INFO payload ({len(payload)} bytes) is truncated") from None
    if pos != len(payload):
        raise ValueError(f"the INFO payload has {len(payload) - pos} bytes past its fields")
    if packing >= len(PACKINGS) or memory >= len(WEIGHT_MEMORIES):
        raise ValueError("the INFO payload names an unknown packing or weight memory")
    return Capacity(formats=NumberFormats(**dict(zip(_FORMAT_FIELDS, fmt))), lanes=lanes, inputs=inputs,
                    hidden=hidden, outputs=outputs, entries=entries, max_row_length=max_row,
                    structure=PACKINGS[packing], grids=grids, max_align=max_align, max_bias_shift=max_bias_shift,
                    weight_memory=WEIGHT_MEMORIES[memory], readout_macs=macs or None)


def param_limits(capacity: Capacity) -> tuple[tuple[int, int], ...]:
    """What each run-time register may hold on the build, ``(low, high)`` in
    :meth:`~egru_accel.quantize.shared_rows.SharedRowLayout.param_names` order: at least one
    input, one output and ``lanes`` neurons in layer 0, and no more than each register's range."""
    lay = _capacity(capacity).layout
    low = {"inputs": 1, "outputs": 1, "layer0.hidden": capacity.lanes}
    return tuple((low.get(name, 0), lay.param_range(name) - 1) for name in lay.param_names())


def _sections(capacity: Capacity):
    return [(int(s.mem), s.part or 0, s.bits, s.depth) for s in capacity.load_sections()]


def _fixed(capacity: Capacity, shapes: tuple[int, int, int, tuple[int, ...]], sections: int) -> bytes:
    layers, inputs, outputs, hidden = shapes
    L = len(capacity.hidden)
    head = _HEAD.pack(MAGIC, CAPACITY_VERSION, 0, capacity_signature(capacity), layers, L, inputs, outputs)
    head += struct.pack(f"<{L}H", *(tuple(hidden) + (0,) * (L - len(hidden))))
    head += struct.pack("<H", sections)
    header_length = len(head) + _SECTION.size * sections
    return head[:6] + struct.pack("<H", header_length) + head[8:]


def capacity_image_layout(capacity: Capacity) -> ImageLayout:
    """What a device built for ``capacity`` expects of an image (its bridge's constants)."""
    cap = _capacity(capacity)
    sections = _sections(cap)
    fixed = _fixed(cap, (0, 0, 0, ()), len(sections))
    L = len(cap.hidden)
    kinds = (("magic",) * 4 + ("version",) * 2 + ("section",) * 2 + ("signature",) * 4 + (FREE, "signature")
             + (FREE,) * (4 + 2 * L) + ("section",) * 2)
    assert len(kinds) == len(fixed)
    params = [k for k, s in enumerate(sections) if s[0] == LoadMemory.PARAMS]
    return ImageLayout(fixed=fixed, fixed_kinds=kinds, header_length=len(fixed) + _SECTION.size * len(sections),
                       sections=tuple(sections), over_kind="capacity",
                       word_limits=tuple((k, param_limits(cap)) for k in params))


def build_capacity_image(placed: SharedRowImage, capacity: Capacity) -> bytes:
    """The image of a model placed for ``capacity`` (``place(model, capacity)``)."""
    cap = _capacity(capacity)
    if not isinstance(placed, SharedRowImage) or placed.layout != cap.layout:
        raise TypeError("build_capacity_image takes a model placed for the capacity (place(model, capacity))")
    secs = cap.load_sections()
    head = _fixed(cap, (len(placed.hidden), placed.input_size, placed.outputs, placed.hidden), len(secs))
    header_len = len(head) + _SECTION.size * len(secs)
    table, data = b"", b""
    for s in secs:
        words = placed.section_words(s)
        nbytes = (s.bits + 7) // 8
        table += _SECTION.pack(int(s.mem), s.part or 0, s.bits, len(words), header_len + len(data))
        data += b"".join(w.to_bytes(nbytes, "little") for w in words)
    body = head + table + data
    return body + struct.pack("<I", zlib.crc32(body))


@dataclass(frozen=True)
class CapacityImage:
    """A parsed capacity image: the build's signature, the model's shapes, and per section
    ``(mem, part, word_bits, words)``."""
    signature: int
    layers: int
    inputs: int
    outputs: int
    hidden: tuple[int, ...]
    sections: tuple[tuple[int, int, int, tuple[int, ...]], ...]

    def words(self, mem: int, part: int = 0) -> tuple[int, ...]:
        for m, p, _, w in self.sections:
            if m == mem and p == part:
                return w
        raise KeyError((mem, part))


def parse_capacity_image(blob: bytes) -> CapacityImage:
    """Read and check a capacity image (its CRC, header and sections; the capacities are the
    device's business); :class:`~egru_accel.firmware.image.ImageError` says what is wrong."""
    if not isinstance(blob, (bytes, bytearray)):
        raise ImageError(f"an image is bytes, not {type(blob).__name__}", "header")
    blob = bytes(blob)
    if len(blob) < _HEAD.size + 4:
        raise ImageError(f"image is truncated: {len(blob)} bytes", "truncated")
    magic, version, header_len, signature, layers, n_hidden, inputs, outputs = _HEAD.unpack_from(blob)
    if magic != MAGIC:
        raise ImageError(f"not a model image (magic {magic!r}, expected {MAGIC!r})", "magic")
    if version != CAPACITY_VERSION:
        raise ImageError(f"image format version {version} is not a capacity image ({CAPACITY_VERSION})", "version")
    body, (crc,) = blob[:-4], struct.unpack("<I", blob[-4:])
    if zlib.crc32(body) != crc:
        raise ImageError(f"image CRC32 mismatch (stored {crc:08x}, computed {zlib.crc32(body):08x}): "
                         "the image is corrupted or truncated", "crc")
    try:
        pos = _HEAD.size
        hidden = struct.unpack_from(f"<{n_hidden}H", blob, pos)
        pos += 2 * n_hidden
        (count,) = struct.unpack_from("<H", blob, pos)
        pos += 2
        if pos + _SECTION.size * count != header_len:
            raise ImageError(f"image header length is {header_len} but its fields take "
                             f"{pos + _SECTION.size * count} bytes")
        sections = []
        for _ in range(count):
            mem, part, bits, n, offset = _SECTION.unpack_from(blob, pos)
            pos += _SECTION.size
            nbytes = (bits + 7) // 8
            if offset + n * nbytes > len(body) or offset < header_len:
                raise ImageError(f"section (memory {mem}, part {part}) lies outside the image", "section")
            words = tuple(int.from_bytes(blob[offset + k * nbytes:offset + (k + 1) * nbytes], "little")
                          for k in range(n))
            sections.append((mem, part, bits, words))
    except struct.error:
        raise ImageError("image header is truncated", "truncated") from None
    if not 1 <= layers <= n_hidden or any(hidden[layers:]) or not all(hidden[:layers]):
        raise ImageError(f"the image's {layers} layers disagree with its neurons per layer {list(hidden)}")
    return CapacityImage(signature=signature, layers=layers, inputs=inputs, outputs=outputs,
                         hidden=tuple(hidden[:layers]), sections=tuple(sections))
