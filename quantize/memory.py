"""The accelerator's memories: every memory word defined once, and a model's layout in them.

This module is the one definition of what each on-chip memory of the core holds, field by
field. The packer (:mod:`egru_accel.quantize.packer`) encodes words with it, the hardware
(:mod:`egru_accel.hw`) slices them through :meth:`Word.struct_layout` (an Amaranth
``data.StructLayout`` built from the same fields), the model image and the reference
device (:mod:`egru_accel.firmware`) take their word widths and decoders from it, and the
testbenches read the same names.

Per lane ``p`` (lane ``p`` owns neuron ``n = i * P + p`` of every layer and output
``o = i * P + p`` of the readout, see :mod:`egru_accel.quantize.lanes`):

===============  ===========================================  ==========================================
memory           depth (words)                                word, fields from bit 0 up
===============  ===========================================  ==========================================
weights          entries of the fullest lane, layers then      value (signed weight_bits), gate (2: z, r,
                 readout, concatenated                          g), target (local index, target_bits)
row_ptr          one per source row: per layer inputs then     start (absolute entry, addr_bits),
                 own neurons, then the readout's rows           length (entries, len_bits)
consts           per layer ``ceil(H/P)`` local neurons          init_z, init_r, init_ag, init_hg (signed
                                                               acc_bits each), theta (state_bits)
readout_bias     ``ceil(O/P)`` local outputs                    bias (signed readout_bits)
state            as consts                                      c (signed state_bits)
events           two halves (step parities) per layer           local (local_bits), value (signed
                                                               state_bits)
acc_z .. acc_hg  ``max_l ceil(H_l/P)``                          acc (signed acc_bits)
readout_acc      ``ceil(O/P)``                                  acc (signed readout_bits)
sigmoid, tanh    table entries                                  entry (unsigned / signed table bits)
===============  ===========================================  ==========================================

``init_z = bias_x_z + bias_h_z`` and ``init_r`` likewise (the hardware only needs the
sum), ``init_ag = bias_x_g``, ``init_hg = bias_h_g``. The first four memories are
*loadable*: a host writes them at run time (``cfg``, the model image); their
:class:`MemoryId` values are the ids used there. Every memory is built at least two words
deep (a one-word memory would have a zero-bit address); :meth:`CoreLayout.depth` gives
the depth as built, and every bit count here is of memories as built.
"""

from __future__ import annotations

import enum
import hashlib
import json
import zlib
from dataclasses import dataclass

import numpy as np

from . import formats as F
from .formats import NumberFormats
from .lanes import lane_size

__all__ = ["MemoryId", "LOADABLE", "Field", "Word", "LayerLayout", "CoreLayout", "LayoutError",
           "GATE_BITS", "ACCUMULATORS"]

#: Bits of a weight entry's gate field (0 = z, 1 = r, 2 = g).
GATE_BITS = 2


class MemoryId(enum.IntEnum):
    """Every memory of a lane. The loadable ones (:data:`LOADABLE`) come first: their
    values are the memory ids of the run-time write port and of the model image."""
    WEIGHTS = 0
    ROW_PTR = 1
    CONSTS = 2
    READOUT_BIAS = 3
    STATE = 4
    EVENTS = 5
    ACC_Z = 6
    ACC_R = 7
    ACC_AG = 8
    ACC_HG = 9
    READOUT_ACC = 10
    SIGMOID = 11
    TANH = 12

    @property
    def label(self) -> str:
        """The memory's name in summaries and budgets (``"weights"``, ``"row_ptr"``, ...)."""
        return self.name.lower()


#: Memories a host loads (image sections, ``cfg`` writes), in image order.
LOADABLE = (MemoryId.WEIGHTS, MemoryId.ROW_PTR, MemoryId.CONSTS, MemoryId.READOUT_BIAS)
ACCUMULATORS = (MemoryId.ACC_Z, MemoryId.ACC_R, MemoryId.ACC_AG, MemoryId.ACC_HG)


class LayoutError(ValueError):
    """A word or layout that cannot be built (a field out of range, a malformed description)."""


@dataclass(frozen=True)
class Field:
    """One field of a memory word: ``width`` bits, two's complement if ``signed``."""
    name: str
    width: int
    signed: bool = False

    def __post_init__(self):
        if not isinstance(self.width, int) or isinstance(self.width, bool) or self.width < 1:
            raise LayoutError(f"field {self.name} must be at least 1 bit wide, not {self.width!r}")

    @property
    def low(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def high(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1


@dataclass(frozen=True)
class Word:
    """A memory word: :attr:`fields` packed from bit 0 up, in order."""
    fields: tuple[Field, ...]

    @property
    def width(self) -> int:
        return sum(f.width for f in self.fields)

    @property
    def bytes(self) -> int:
        """Bytes of the word in a model image (little-endian, zero-padded)."""
        return (self.width + 7) // 8

    def offset(self, name: str) -> int:
        """Bit offset of field ``name``."""
        at = 0
        for f in self.fields:
            if f.name == name:
                return at
            at += f.width
        raise KeyError(name)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def struct_layout(self):
        """The same word as an Amaranth ``data.StructLayout`` (for views on memory data)."""
        from amaranth.hdl import signed, unsigned
        from amaranth.lib import data
        return data.StructLayout({f.name: (signed if f.signed else unsigned)(f.width) for f in self.fields})

    def pack(self, **values) -> np.ndarray:
        """Words from field values (integers or equal-length integer arrays), as a uint64
        array when the word fits 64 bits, else an array of Python ints (dtype object).
        A value outside its field's range raises :class:`LayoutError`."""
        if set(values) != {f.name for f in self.fields}:
            raise LayoutError(f"a word takes the fields {[f.name for f in self.fields]}, not {sorted(values)}")
        wide = self.width > 64
        out, at = None, 0
        for f in self.fields:
            v = np.asarray(values[f.name], dtype=np.int64).reshape(-1)
            if v.size and (v.min() < f.low or v.max() > f.high):
                bad = v[(v < f.low) | (v > f.high)][0]
                raise LayoutError(f"field {f.name} holds {f.low} .. {f.high} ({f.width} bits), not {int(bad)}")
            raw = v & ((1 << f.width) - 1) if f.signed else v
            part = raw.astype(object) << at if wide else raw.astype(np.uint64) << np.uint64(at)
            out = part if out is None else out | part
            at += f.width
        return out if out is not None else np.zeros(0, dtype=np.uint64)

    def unpack(self, words) -> dict[str, np.ndarray]:
        """Field values (int64 arrays) of ``words`` (an integer or an array of them)."""
        w = np.asarray(words, dtype=object if self.width > 64 else np.uint64).reshape(-1)
        out, at = {}, 0
        for f in self.fields:
            if self.width > 64:
                raw = np.array([(int(x) >> at) & ((1 << f.width) - 1) for x in w], dtype=np.int64)
            else:
                raw = ((w >> np.uint64(at)) & np.uint64((1 << f.width) - 1)).astype(np.int64)
            if f.signed:
                raw = np.where(raw >= (1 << (f.width - 1)), raw - (1 << f.width), raw)
            out[f.name] = raw
            at += f.width
        return out

    def to_dict(self) -> list:
        return [{"name": f.name, "width": f.width, "signed": f.signed} for f in self.fields]


@dataclass(frozen=True)
class LayerLayout:
    """What the hardware fixes of one layer: its shapes and its accumulator grid.

    ``acc_frac``: fraction bits of the layer's accumulators; ``input_align`` /
    ``recurrent_align``: the left shift (per gate z, r, g) of an input / recurrent product
    onto that grid (see docs/numerics.md)."""
    inputs: int
    hidden: int
    acc_frac: int
    input_align: tuple[int, int, int]
    recurrent_align: tuple[int, int, int]


def _bits_for_index(n: int) -> int:
    """Unsigned bits of an index in ``0 .. n-1`` (at least 1)."""
    return F.unsigned_bits_for(max(n - 1, 0))


@dataclass(frozen=True)
class CoreLayout:
    """A core's memory organisation: shapes, formats and widths, and from them every
    memory's depth and word. Only what cannot be derived is stored.

    ``acc_bits``: width of the accumulators (the widest of every layer's z, r, ag, hg
    bound); ``pre_bits``: width of the pre-activations (those and ``pre_g``);
    ``readout_bits``: the readout accumulator; ``weight_entries``: weight entries of the
    fullest lane; ``max_row_length``: the longest share of a row in any lane.
    """
    formats: NumberFormats
    lanes: int
    dense: bool
    layers: tuple[LayerLayout, ...]
    outputs: int
    acc_bits: int
    pre_bits: int
    readout_bits: int
    weight_entries: int
    max_row_length: int

    # -- shapes ---------------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        return self.layers[0].inputs

    @property
    def hidden(self) -> tuple[int, ...]:
        return tuple(l.hidden for l in self.layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_local(self) -> tuple[int, ...]:
        """Neurons of lane 0 (the fullest) per layer."""
        return tuple(lane_size(H, self.lanes, 0) for H in self.hidden)

    @property
    def readout_local(self) -> int:
        """Outputs of lane 0 (at least 1 word of readout memory)."""
        return max(1, lane_size(self.outputs, self.lanes, 0))

    @property
    def acc_frac(self) -> tuple[int, ...]:
        return tuple(l.acc_frac for l in self.layers)

    @property
    def input_align(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(l.input_align for l in self.layers)

    @property
    def recurrent_align(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(l.recurrent_align for l in self.layers)

    # -- address map ----------------------------------------------------------------------
    @property
    def row_base(self) -> tuple[int, ...]:
        """First row-pointer word of each layer (its inputs' rows, then its own neurons')."""
        out, r = [], 0
        for l in self.layers:
            out.append(r)
            r += l.inputs + l.hidden
        return tuple(out)

    @property
    def readout_row_base(self) -> int:
        return sum(l.inputs + l.hidden for l in self.layers)

    @property
    def rows(self) -> int:
        return self.readout_row_base + self.hidden[-1]

    @property
    def const_base(self) -> tuple[int, ...]:
        """First consts (and state) word of each layer."""
        return tuple(int(v) for v in np.concatenate([[0], np.cumsum(self.n_local)[:-1]]))

    @property
    def const_depth(self) -> int:
        return sum(self.n_local)

    @property
    def evb_base(self) -> tuple[int, ...]:
        """First event-buffer word of each layer: two halves (step parities) of ``n_local``."""
        return tuple(2 * b for b in self.const_base)

    @property
    def evb_depth(self) -> int:
        return 2 * self.const_depth

    @property
    def acc_depth(self) -> int:
        return max(self.n_local)

    # -- widths ---------------------------------------------------------------------------
    @property
    def weight_depth(self) -> int:
        return max(1, self.weight_entries)

    @property
    def target_bits(self) -> int:
        return _bits_for_index(max(self.acc_depth, self.readout_local))

    @property
    def addr_bits(self) -> int:
        # A start may equal the entry count (an empty last row), so 0 .. entries inclusive.
        return F.unsigned_bits_for(self.weight_depth)

    @property
    def len_bits(self) -> int:
        return F.unsigned_bits_for(self.max_row_length)

    @property
    def local_bits(self) -> int:
        return _bits_for_index(self.acc_depth)

    @property
    def value_bits(self) -> int:
        """Width of an event value: a layer-0 input or an event of a layer."""
        return max(self.formats.input_bits, self.formats.state_bits)

    # -- words and depths -----------------------------------------------------------------
    def word(self, mem: MemoryId) -> Word:
        """The word of memory ``mem``."""
        fmt, A, S = self.formats, self.acc_bits, self.formats.state_bits
        mem = MemoryId(mem)
        if mem == MemoryId.WEIGHTS:
            return Word((Field("value", fmt.weight_bits, True), Field("gate", GATE_BITS),
                         Field("target", self.target_bits)))
        if mem == MemoryId.ROW_PTR:
            return Word((Field("start", self.addr_bits), Field("length", self.len_bits)))
        if mem == MemoryId.CONSTS:
            return Word((Field("init_z", A, True), Field("init_r", A, True), Field("init_ag", A, True),
                         Field("init_hg", A, True), Field("theta", S)))
        if mem == MemoryId.READOUT_BIAS:
            return Word((Field("bias", self.readout_bits, True),))
        if mem == MemoryId.STATE:
            return Word((Field("c", S, True),))
        if mem == MemoryId.EVENTS:
            return Word((Field("local", self.local_bits), Field("value", S, True)))
        if mem in ACCUMULATORS:
            return Word((Field("acc", A, True),))
        if mem == MemoryId.READOUT_ACC:
            return Word((Field("acc", self.readout_bits, True),))
        if mem == MemoryId.SIGMOID:
            return Word((Field("entry", fmt.sigmoid_value_bits),))
        return Word((Field("entry", fmt.tanh_value_bits, True),))

    def words_needed(self, mem: MemoryId) -> int:
        """Words the model needs in memory ``mem`` of the fullest lane."""
        mem = MemoryId(mem)
        fmt = self.formats
        return {
            MemoryId.WEIGHTS: self.weight_depth, MemoryId.ROW_PTR: self.rows,
            MemoryId.CONSTS: self.const_depth, MemoryId.READOUT_BIAS: self.readout_local,
            MemoryId.STATE: self.const_depth, MemoryId.EVENTS: self.evb_depth,
            MemoryId.READOUT_ACC: self.readout_local,
            MemoryId.SIGMOID: 1 << fmt.sigmoid_lut_bits, MemoryId.TANH: 1 << fmt.tanh_lut_bits,
        }.get(mem, self.acc_depth)

    def depth(self, mem: MemoryId) -> int:
        """Words of memory ``mem`` as built (at least two: a one-word memory has a zero-bit address)."""
        return max(2, self.words_needed(mem))

    def memory_bits(self) -> dict[str, int]:
        """Bits of every memory as built, all lanes together, by :attr:`MemoryId.label`, and ``total``."""
        bits = {m.label: self.lanes * self.depth(m) * self.word(m).width for m in MemoryId}
        bits["total"] = sum(bits.values())
        return bits

    # -- description, signature, compatibility --------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready description: the stored fields, then (for readers) every memory's
        depth, word and bits per lane. :meth:`from_dict` reads it back."""
        return {
            "formats": self.formats.to_dict(), "lanes": self.lanes, "dense": self.dense,
            "inputs": self.input_size, "hidden": list(self.hidden), "outputs": self.outputs,
            "layers": [{"inputs": l.inputs, "hidden": l.hidden, "acc_frac": l.acc_frac,
                        "input_align": list(l.input_align), "recurrent_align": list(l.recurrent_align),
                        "neurons_per_lane": n} for l, n in zip(self.layers, self.n_local)],
            "acc_bits": self.acc_bits, "pre_bits": self.pre_bits, "readout_bits": self.readout_bits,
            "weight_entries": self.weight_entries, "max_row_length": self.max_row_length,
            "memories_per_lane": {m.label: {"depth": self.depth(m), "width": self.word(m).width,
                                            "bits": self.depth(m) * self.word(m).width,
                                            "fields": self.word(m).to_dict()} for m in MemoryId},
            "memory_bits": self.memory_bits(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CoreLayout":
        """The layout :meth:`to_dict` described; :class:`LayoutError` if ``d`` is not one."""
        try:
            layers = tuple(LayerLayout(inputs=int(l["inputs"]), hidden=int(l["hidden"]),
                                       acc_frac=int(l["acc_frac"]),
                                       input_align=tuple(int(v) for v in l["input_align"]),
                                       recurrent_align=tuple(int(v) for v in l["recurrent_align"]))
                           for l in d["layers"])
            layout = cls(formats=NumberFormats.from_dict(d["formats"]), lanes=int(d["lanes"]),
                         dense=bool(d["dense"]), layers=layers, outputs=int(d["outputs"]),
                         acc_bits=int(d["acc_bits"]), pre_bits=int(d["pre_bits"]),
                         readout_bits=int(d["readout_bits"]), weight_entries=int(d["weight_entries"]),
                         max_row_length=int(d["max_row_length"]))
        except (KeyError, TypeError, ValueError) as e:
            raise LayoutError(f"not a core layout description ({type(e).__name__}: {e})") from None
        return layout

    def _fixed(self) -> dict:
        # Everything a bitstream fixes: shapes, formats, per-layer constants, the
        # pre-activation width and every word's fields (which hold every other width).
        d = self.to_dict()
        fixed = {k: d[k] for k in ("formats", "lanes", "dense", "inputs", "hidden", "outputs", "layers",
                                   "pre_bits")}
        fixed["words"] = {name: m["fields"] for name, m in d["memories_per_lane"].items()}
        return fixed

    def signature(self) -> int:
        """CRC32 of everything a bitstream fixes (shapes, lanes, formats, per-layer
        constants, widths and every word's fields; not the memory depths, which are checked
        one by one, so that a model with fewer weights fits). Equal signatures: one
        bitstream serves both."""
        blob = json.dumps(self._fixed(), sort_keys=True).encode()
        return zlib.crc32(hashlib.sha256(blob).digest())

    def mismatches(self, hardware: "CoreLayout") -> list[str]:
        """Why a model with this layout cannot be loaded into ``hardware`` (built for
        another layout): every fixed item must be equal and every loadable memory deep
        enough. An empty list: it can."""
        if not isinstance(hardware, CoreLayout):
            raise TypeError(f"hardware must be a CoreLayout, not {type(hardware).__name__}")
        mine, theirs = self._fixed(), hardware._fixed()
        diffs = [f"{key}: the model has {mine[key]}, the hardware {theirs[key]}"
                 for key in ("lanes", "dense", "inputs", "hidden", "outputs", "formats") if mine[key] != theirs[key]]
        if diffs:   # the rest follows from these
            return diffs
        for l, (a, b) in enumerate(zip(mine["layers"], theirs["layers"])):
            diffs += [f"layer{l} {k}: the model has {v}, the hardware {b[k]} (a hardware constant)"
                      for k, v in a.items() if v != b[k]]
        if mine["pre_bits"] != theirs["pre_bits"]:
            diffs.append(f"pre-activations: the model needs {mine['pre_bits']} bits, the hardware has "
                         f"{theirs['pre_bits']}")
        for m in MemoryId:
            if self.word(m) != hardware.word(m):
                diffs.append(f"memory {m.label}: the model's words have fields "
                             f"{[(f.name, f.width) for f in self.word(m).fields]}, the hardware's "
                             f"{[(f.name, f.width) for f in hardware.word(m).fields]}")
        for m in LOADABLE:
            if self.words_needed(m) > hardware.depth(m):
                diffs.append(f"memory {m.label}: the model needs {self.words_needed(m)} words per lane, "
                             f"the hardware has {hardware.depth(m)}")
        return diffs
