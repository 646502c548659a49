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

Memory ids are :class:`egru_accel.quantize.memory.MemoryId` values of the loadable memories
(0 weights, 1 row_ptr, 2 consts, 3 readout_bias); each section's word bits and the words
themselves are those of :mod:`egru_accel.quantize.memory`, the one definition of every word.
This module and :mod:`.protocol` are what the hardware (the bridge) and the host share; they
depend on the memory definitions only, never on the golden model or the reference device.

A device checks an image as it streams in, byte by byte and without an image buffer
(:class:`ImageChecker`, the behaviour of the RTL bridge ``hw/bridge.py``): every field is
compared with what the device expects at that position, and each mismatch raises a flag.
The status is the highest-priority flag (:data:`CHECK_KINDS`, mapped to protocol status
codes by :data:`KIND_STATUS`).
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from dataclasses import dataclass

from egru_accel.quantize.formats import NumberFormats
from egru_accel.quantize.memory import LOADABLE, CoreLayout
from egru_accel.quantize.packer import PackedModel

from .protocol import INFO_FORMAT, Status

__all__ = ["MAGIC", "VERSION", "ImageError", "ModelImage", "Section", "build_image", "parse_image",
           "hardware_signature", "CRC32_RESIDUE", "CHECK_KINDS", "KIND_STATUS", "ImageLayout", "image_layout",
           "ImageChecker", "check_image", "first_kind", "info_payload", "FREE"]

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


def _layout(obj) -> CoreLayout:
    # A CoreLayout, or anything that has one (a PackedModel, the hardware's CoreParams).
    layout = obj if isinstance(obj, CoreLayout) else getattr(obj, "layout", None)
    if not isinstance(layout, CoreLayout):
        raise TypeError(f"expected a CoreLayout or something with a .layout, not {type(obj).__name__}")
    return layout


def hardware_signature(layout) -> int:
    """The signature of a core layout (:meth:`~egru_accel.quantize.memory.CoreLayout.signature`):
    shapes, lanes, formats, per-layer constants and every word's fields, not the memory
    depths (checked section by section instead, so a smaller model fits). Two models with
    equal signatures can share a bitstream. ``layout``: a CoreLayout, PackedModel or CoreParams."""
    return _layout(layout).signature()


def info_payload(layout) -> bytes:
    """The INFO payload (:data:`~egru_accel.firmware.protocol.INFO_FORMAT`) of a device
    built for ``layout`` (a CoreLayout, PackedModel or CoreParams)."""
    lay = _layout(layout)
    return INFO_FORMAT.pack(lay.signature(), VERSION, lay.lanes, lay.n_layers, lay.input_size, lay.outputs,
                            lay.formats.input_bits, lay.readout_bits, *[lay.depth(m) for m in LOADABLE])


def _header(lay: CoreLayout, sections: int) -> bytes:
    # Magic .. section count, with the header length left 0 (filled in by build_image).
    head = _FIXED.pack(MAGIC, VERSION, 0, lay.signature(), lay.lanes, lay.n_layers, lay.input_size, lay.outputs)
    head += struct.pack(f"<{lay.n_layers}H", *lay.hidden)
    head += struct.pack("<11b", *[getattr(lay.formats, n) for n in _FORMAT_FIELDS])
    return head + struct.pack("<H", sections)


def build_image(packed) -> bytes:
    """The image of a packed model's loadable memories (``packed``: a PackedModel, or the
    hardware's CoreParams, which holds one)."""
    packed = packed if isinstance(packed, PackedModel) else getattr(packed, "packed", None)
    if not isinstance(packed, PackedModel):
        raise TypeError(f"build_image takes a PackedModel (or CoreParams), not {type(packed).__name__}")
    lay = packed.layout
    sections = [Section(int(mem), lane, lay.word(mem).width, tuple(int(w) for w in packed.words(mem, lane)))
                for lane in range(lay.lanes) for mem in LOADABLE]
    head = _header(lay, len(sections))
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


# -- streaming check (what a device does) -------------------------------------------------------

#: The reflected CRC32 register (initial value 0xFFFFFFFF, no final XOR) after a message
#: followed by its own CRC32 (zlib, little-endian) always holds this value.
CRC32_RESIDUE = 0xDEBB20E3

#: What a streaming check can find wrong, highest priority first. ``length``: the bytes
#: sent differ from the announced length (the device's transfer count, not the image);
#: ``magic``: bytes 0..3 are not ``EGRU`` or the image has fewer than 4 bytes;
#: ``version``: bytes 4..5; ``crc``: the CRC32 residue over all bytes; ``signature``:
#: the hardware signature or a shape/format byte of the header; ``capacity`` (an image of
#: a capacity build, :mod:`.capacity_image`): a section with more words than its memory, or a
#: run-time register outside what the build takes; ``section``: the header length, the
#: section count, a section entry (memory, lane, word bits, a word count above the memory's
#: depth, a data offset other than the running one), or an image that ends before or goes
#: past header + data + 4 CRC bytes.
CHECK_KINDS = ("length", "magic", "version", "crc", "signature", "capacity", "section")
KIND_STATUS = {"length": Status.IMAGE_LENGTH, "magic": Status.IMAGE_MAGIC, "version": Status.IMAGE_VERSION,
               "crc": Status.IMAGE_CRC, "signature": Status.IMAGE_SIGNATURE, "capacity": Status.IMAGE_CAPACITY,
               "section": Status.IMAGE_SECTION}
#: A fixed-header byte of this kind is not compared (a capacity image's model shapes: the
#: device takes them from the run-time registers, which it checks word by word).
FREE = "free"


@dataclass(frozen=True)
class ImageLayout:
    """What a device built for some parameters expects of an image (bitstream constants).

    ``fixed``: bytes 0 .. F-1 (magic up to the section count) exactly as :func:`build_image`
    writes them; ``fixed_kinds[i]``: the flag a mismatch of byte ``i`` raises (:data:`FREE`:
    none); ``header_length``: F + 12 bytes per section; ``sections``: ``(mem, lane, word_bits,
    depth)`` in image order (lane-major, memories 0..3 for core v1); ``over_kind``: the flag a
    section with more words than its depth raises; ``word_limits``: per section index, the
    ``(low, high)`` each of its words must lie in (a capacity build's run-time registers)."""
    fixed: bytes
    fixed_kinds: tuple[str, ...]
    header_length: int
    sections: tuple[tuple[int, int, int, int], ...]
    over_kind: str = "section"
    word_limits: tuple[tuple[int, tuple[tuple[int, int], ...]], ...] = ()

    def limits_of(self, section: int) -> tuple[tuple[int, int], ...] | None:
        return dict(self.word_limits).get(section)

    @property
    def max_length(self) -> int:
        """Bytes of the largest acceptable image (every memory full)."""
        return self.header_length + sum(d * ((b + 7) // 8) for _, _, b, d in self.sections) + 4


def image_layout(layout) -> ImageLayout:
    """The :class:`ImageLayout` of a device built for ``layout`` (a CoreLayout, PackedModel
    or CoreParams)."""
    lay = _layout(layout)
    sections = tuple((int(mem), lane, lay.word(mem).width, lay.depth(mem))
                     for lane in range(lay.lanes) for mem in LOADABLE)
    fixed = _header(lay, len(sections))
    fixed_len = len(fixed)
    # Offsets 0-3 magic, 4-5 version, 6-7 header length, 8-11 signature, then lanes .. formats,
    # and the section count in the last two bytes.
    kinds = ("magic",) * 4 + ("version",) * 2 + ("section",) * 2 + ("signature",) * (fixed_len - 10) + ("section",) * 2
    header_length = fixed_len + _SECTION.size * len(sections)
    fixed = fixed[:6] + struct.pack("<H", header_length) + fixed[8:]
    return ImageLayout(fixed=fixed, fixed_kinds=kinds,
                       header_length=header_length, sections=sections)


class ImageChecker:
    """Checks an image byte by byte as a device does, and says which words it writes.

    :meth:`feed` takes one byte and returns ``(mem, lane, addr, word)`` when the byte
    completes a section word and no flag has been raised by an earlier byte (a device in
    write mode writes it then; ``word`` keeps its ``word_bits`` low bits), else ``None``.
    :meth:`finish` adds the checks that need the whole image and returns the flags.

    Phases: ``fixed`` (bytes 0 .. F-1 against :attr:`ImageLayout.fixed`), ``table`` (12
    bytes per section: memory, lane, word bits must match; the word count is kept; the data
    offset must equal the running offset, which starts at the header length and grows by
    each section's words times its word bytes), ``data`` (sections in order, empty ones
    skipped), ``trailer`` (the 4 CRC32 bytes), ``end`` (any further byte raises
    ``section``)."""

    def __init__(self, layout: ImageLayout):
        if not isinstance(layout, ImageLayout):
            raise TypeError(f"layout must be an ImageLayout, not {type(layout).__name__}")
        self.layout = layout
        self.flags: set[str] = set()
        self.crc = 0                      # zlib.crc32 of the bytes so far
        self.phase, self.pos = "fixed", 0
        self.s, self.j, self.n = 0, 0, 0  # table: section, byte in its entry, word count
        self.offset = layout.header_length
        self.counts = [0] * len(layout.sections)
        self.w, self.b, self.word = 0, 0, 0

    def _skip_empty(self):
        while self.s < len(self.counts) and self.counts[self.s] == 0:
            self.s += 1
        if self.s == len(self.counts):
            self.phase, self.j = "trailer", 0
        else:
            self.phase, self.w, self.b, self.word = "data", 0, 0, 0

    def feed(self, byte: int):
        lay = self.layout
        self.crc = zlib.crc32(bytes([byte]), self.crc)
        if self.phase == "fixed":
            if byte != lay.fixed[self.pos] and lay.fixed_kinds[self.pos] != FREE:
                self.flags.add(lay.fixed_kinds[self.pos])
            self.pos += 1
            if self.pos == len(lay.fixed):
                self.phase, self.s, self.j = "table", 0, 0
        elif self.phase == "table":
            mem, lane, bits, depth = lay.sections[self.s]
            j = self.j
            if j < 4:
                if byte != (mem, lane, bits & 0xFF, bits >> 8)[j]:
                    self.flags.add("section")
            elif j < 8:
                self.n = (self.n & ~(0xFF << 8 * (j - 4))) | byte << 8 * (j - 4)
            elif byte != (self.offset >> 8 * (j - 8)) & 0xFF:
                self.flags.add("section")
            if j == 11:
                if self.n > depth:
                    self.flags.add(lay.over_kind)
                self.counts[self.s] = self.n
                self.offset += self.n * ((bits + 7) // 8)
                self.s, self.j = self.s + 1, 0
                if self.s == len(lay.sections):
                    self.s = 0
                    self._skip_empty()
            else:
                self.j += 1
        elif self.phase == "data":
            mem, lane, bits, _ = lay.sections[self.s]
            self.word |= byte << 8 * self.b
            self.b += 1
            if self.b == (bits + 7) // 8:
                word = self.word & ((1 << bits) - 1)
                limits = lay.limits_of(self.s)
                if limits is not None and self.w < len(limits) and not limits[self.w][0] <= word <= limits[self.w][1]:
                    self.flags.add("capacity")     # before the write: an out-of-range word is not written
                write = None if self.flags else (mem, lane, self.w, word)
                self.w, self.b, self.word = self.w + 1, 0, 0
                if self.w == self.counts[self.s]:
                    self.s += 1
                    self._skip_empty()
                return write
        elif self.phase == "trailer":
            self.j += 1
            if self.j == 4:
                self.phase = "end"
        else:
            self.flags.add("section")   # past header + data + CRC
        return None

    def finish(self) -> set[str]:
        """The flags of the whole image (the announced length is the device's business)."""
        flags = set(self.flags)
        if self.phase == "fixed" and self.pos < 4:
            flags.add("magic")
        if self.crc ^ 0xFFFFFFFF != CRC32_RESIDUE:
            flags.add("crc")
        if self.phase != "end":
            flags.add("section")
        return flags


def first_kind(flags) -> str | None:
    """The highest-priority flag of ``flags`` (see :data:`CHECK_KINDS`), or ``None``."""
    return next((k for k in CHECK_KINDS if k in flags), None)


def check_image(blob: bytes, layout) -> str | None:
    """What a device built for ``layout`` reports for ``blob`` sent whole: ``None`` (OK) or
    the first of :data:`CHECK_KINDS` that applies (never ``"length"``). ``layout``: an
    :class:`ImageLayout`, or what :func:`image_layout` takes."""
    checker = ImageChecker(layout if isinstance(layout, ImageLayout) else image_layout(layout))
    for byte in bytes(blob):
        checker.feed(byte)
    return first_kind(checker.finish())
