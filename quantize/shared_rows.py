"""The shared-row layout of core v2: one row table for all lanes, entries issued in lockstep.

Core v2 (docs/core-v2.md) keeps one row table instead of one per lane, and one weight
address for all P lanes: each cycle of a row, every lane takes the entry at that address in
its own weight memory. A row's share differs between lanes when a model is not pruned
balanced, so every lane's share of row ``r`` is padded with zero-weight entries to the
longest share, ``length[r]``. Zero entries add zero; a balanced model needs no padding.

Neuron ``n`` of a layer belongs to lane ``n % P`` at local index ``n // P``
(:mod:`egru_accel.quantize.lanes`), and so does readout output ``o``.

This module is the one definition of the v2 memories and their words (:class:`Word`, from
:mod:`egru_accel.quantize.memory`): the packer below encodes them, the hardware
(:mod:`egru_accel.hw.shared_core`) slices them, the testbenches read them.

=============  =========================================  ========================================
memory         depth (words)                              word, fields from bit 0 up
=============  =========================================  ========================================
weights        per lane: the padded entries of every      value (signed weight_bits), gate (2: z,
(per lane)     layer's rows, then the readout's           r, g), target (local index)
rows           per layer its inputs' rows then its own    start (entry address), length (entries)
(shared)       neurons', then the readout's rows
init_z ..      one per neuron of every layer (global      bias (signed BIAS_BITS = 16): the bias
init_hg        index: layer base + n)                     ``>>`` its layer's shift for the kind
theta          as init                                    theta (state_bits)
readout_bias   one per output                             bias (signed 16) ``>>`` readout_bias_shift
events         per layer two halves (step parities) of    neuron (global index), value (signed
(shared)       H words                                    state_bits)
accumulators   per lane: per layer ``4 ceil(H/P)`` words  acc (signed 32)
(per lane)     (z, r, ag, hg of each local neuron), then
               ``ceil(O/P)`` readout words
=============  =========================================  ========================================

Packed ``structure="lane-window"``, each row is padded per gate and window of
:data:`~egru_accel.quantize.lanes.WINDOW` local neurons, so that the entries at one address of
all lanes share gate and window and make one :attr:`SharedRowLayout.window_word` (gate,
window, then per lane a value and an offset in the window): one wide weight memory instead of
one per lane.

A lane's accumulator addresses (:class:`LaneAddressMap`): with one bank, the layers' words
then the readout's, as above. With two banks (steps alternate between them, so that the
next step's rows accumulate while this step's sweep reads), each bank holds the layers' words
at a power-of-two stride, then come the readout's words. The layers' words are block RAM
(one memory per bank), the readout's flip-flops.

The core's memories that a model fills are *loadable* (:class:`LoadMemory`): a core built
without a model at reset (for example with its weights in iCE40 SPRAM, which the bitstream
cannot initialise) gets them through its load port, one write per word:
:meth:`SharedRowImage.load_writes` lists those writes, :meth:`SharedRowLayout.load_word` is
their word (memory, address, data), the one definition the hardware and the host share.

``init_z = bias_x_z + bias_h_z``, ``init_r`` likewise, ``init_ag = bias_x_g``,
``init_hg = bias_h_g`` (the hardware needs only the sums). Accumulators are 32 bits wide
in every build: a model whose accumulator bound does not fit 32 bits is refused here.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

import numpy as np

from .formats import (BIAS_BITS, GATE_G, GATE_R, GATE_Z, NumberFormats, bias_mantissa_shift, signed_bits_for,
                      unsigned_bits_for)
from .lanes import WINDOW, check_lanes, lane_neurons
from .memory import GATE_BITS, Field, LayerLayout, LayoutError, Word
from .model import QuantModel
from .packer import _lane_entries

__all__ = ["ACC_BITS", "ACC_KINDS", "PACKINGS", "LoadMemory", "LoadSection", "PARAM_BITS", "WEIGHT_MEMORIES",
           "LaneAddressMap", "RuntimeLimits", "ModelParams", "SharedRowLayout", "SharedRowImage", "pack_shared_rows",
           "unpack_weights"]

#: How :func:`pack_shared_rows` pads the lanes' shares: per row, or per gate and window.
PACKINGS = ("unstructured", "lane-window")
#: Width of every accumulator (layers and readout) in every build.
ACC_BITS = 32
#: The accumulator words of a local neuron, in address order: ``ag`` takes the g gate of
#: input rows, ``hg`` that of recurrent rows.
ACC_KINDS = ("z", "r", "ag", "hg")
#: How the core stores the lanes' weight entries: ``"lanes"``, one memory of entry words per
#: lane; ``"wide"``, one memory of :attr:`SharedRowLayout.window_word` s for all lanes (an
#: image packed ``structure="lane-window"`` only).
WEIGHT_MEMORIES = ("lanes", "wide")


class LoadMemory(enum.IntEnum):
    """The loadable memories of core v2: the ``mem`` of a load write. Addresses: ``ROWS`` a
    row; ``WEIGHTS`` an entry address (``"wide"``), or lane ``p``'s entry ``e`` at
    ``p << entry_address_bits | e`` (``"lanes"``); ``INIT_*`` and ``THETA`` a global neuron;
    ``READOUT_BIAS`` an output; ``PARAMS`` a run-time register of a capacity build
    (:meth:`SharedRowLayout.param_names`); ``READOUT_WEIGHTS`` a word of the readout engine's
    weights (:meth:`SharedRowLayout.engine_word`). Data: the memory's word (signed values in
    two's complement)."""
    ROWS = 0
    WEIGHTS = 1
    INIT_Z = 2
    INIT_R = 3
    INIT_AG = 4
    INIT_HG = 5
    THETA = 6
    READOUT_BIAS = 7
    PARAMS = 8
    READOUT_WEIGHTS = 9


#: Gates of the alignment registers, in the order of ``input_align`` / ``recurrent_align``.
ALIGN_GATES = ("z", "r", "g")


#: The init memory of each accumulator kind.
INIT_MEMORIES = dict(zip(ACC_KINDS, (LoadMemory.INIT_Z, LoadMemory.INIT_R, LoadMemory.INIT_AG, LoadMemory.INIT_HG)))


#: Bits of a run-time register's word on the load port.
PARAM_BITS = 16


@dataclass(frozen=True)
class LoadSection:
    """One memory of the load port as a load fills it (:meth:`SharedRowLayout.load_sections`):
    ``bits`` per word, ``depth`` words, word ``a`` written at address ``base + a``; ``part``: the
    lane of a per-lane weight memory (else ``None``); ``macs``: the readout engine's multipliers
    (its weights' section only)."""
    mem: LoadMemory
    bits: int
    depth: int
    part: int | None = None
    base: int = 0
    macs: int | None = None


@dataclass(frozen=True)
class LaneAddressMap:
    """Where a lane's accumulator words live: ``banks`` banks of the layers' words, each
    ``bank_words`` long (a power of two with two banks, so that the bank is an address bit),
    then ``registers`` readout words."""
    banks: int
    bank_words: int
    registers: int

    def bank_base(self, bank: int) -> int:
        return bank * self.bank_words

    @property
    def register_base(self) -> int:
        return self.banks * self.bank_words

    @property
    def depth(self) -> int:
        return self.register_base + self.registers


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class RuntimeLimits:
    """What the run-time registers of a capacity build (one bitstream for many models) can
    hold: the accumulator grids its update units take (``acc_frac`` values, each a table-index
    shift of its own), the largest product alignment its lanes' shifters cover and the largest
    bias shift. A layout with limits has its layers' sizes as *capacities*; each model's own
    sizes, grids, alignments and bias shifts come with its image (:class:`ModelParams`)."""
    grids: tuple[int, ...]
    max_align: int
    max_bias_shift: int

    def to_dict(self) -> dict:
        return {"grids": list(self.grids), "max_align": self.max_align, "max_bias_shift": self.max_bias_shift}


@dataclass(frozen=True)
class ModelParams:
    """A model's values of a capacity build's run-time registers: its sizes (at most the
    capacities), each layer's accumulator grid, product alignments (per gate z, r, g) and bias
    shifts (per :data:`ACC_KINDS`), and the readout bias's shift."""
    inputs: int
    outputs: int
    hidden: tuple[int, ...]
    acc_frac: tuple[int, ...]
    input_align: tuple[tuple[int, int, int], ...]
    recurrent_align: tuple[tuple[int, int, int], ...]
    bias_shifts: tuple[tuple[int, int, int, int], ...]
    readout_bias_shift: int

    @property
    def neurons(self) -> int:
        return sum(self.hidden)

    def values(self, layout: "SharedRowLayout") -> dict:
        """The registers' values by :meth:`SharedRowLayout.param_names` name (a grid as its
        index in the limits' ``grids``; the layers the model does not have 0)."""
        out = {name: 0 for name in layout.param_names()}
        out.update({"last_layer": len(self.hidden) - 1, "inputs": self.inputs, "outputs": self.outputs,
                    "readout_bias_shift": self.readout_bias_shift})
        limits = layout.limits
        for l, H in enumerate(self.hidden):
            out[f"layer{l}.hidden"] = H
            out[f"layer{l}.grid"] = limits.grids.index(self.acc_frac[l])
            for g, a in zip(ALIGN_GATES, self.input_align[l]):
                out[f"layer{l}.input_align.{g}"] = a
            for g, a in zip(ALIGN_GATES, self.recurrent_align[l]):
                out[f"layer{l}.recurrent_align.{g}"] = a
            for k, b in zip(ACC_KINDS, self.bias_shifts[l]):
                out[f"layer{l}.bias_shift.{k}"] = b
        return out

    def to_dict(self) -> dict:
        return {"inputs": self.inputs, "outputs": self.outputs, "hidden": list(self.hidden),
                "acc_frac": list(self.acc_frac), "input_align": [list(a) for a in self.input_align],
                "recurrent_align": [list(a) for a in self.recurrent_align],
                "bias_shifts": [list(b) for b in self.bias_shifts], "readout_bias_shift": self.readout_bias_shift}


@dataclass(frozen=True)
class SharedRowLayout:
    """Shapes, formats and the address map of a shared-row core; every word and depth."""
    formats: NumberFormats
    lanes: int
    dense: bool
    layers: tuple[LayerLayout, ...]
    outputs: int
    entries: int            # weight entries per lane (equal in every lane)
    max_row_length: int
    structure: str = "unstructured"     # "lane-window": every entry's lanes share gate and window
    #: Per layer, the shift of each accumulator kind's biases (:data:`ACC_KINDS` order): a bias
    #: memory word is a ``BIAS_BITS`` mantissa, the bias ``mantissa << shift``.
    bias_shifts: tuple = ()
    readout_bias_shift: int = 0
    #: A capacity build's (``None``: the layers' values are the model's, fixed by the build).
    limits: RuntimeLimits | None = None

    # -- shapes -------------------------------------------------------------------------
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
        """Local neurons of lane 0 (the fullest) per layer."""
        return tuple(_ceil_div(H, self.lanes) for H in self.hidden)

    @property
    def readout_local(self) -> int:
        return _ceil_div(self.outputs, self.lanes)

    # -- address maps -------------------------------------------------------------------
    @property
    def neuron_base(self) -> tuple[int, ...]:
        """Global index of each layer's neuron 0 (init, theta, events, the update unit)."""
        return tuple(int(v) for v in np.concatenate([[0], np.cumsum(self.hidden)[:-1]]))

    @property
    def neurons(self) -> int:
        return sum(self.hidden)

    @property
    def row_base(self) -> tuple[int, ...]:
        """First row of each layer: its ``inputs`` rows, then its ``hidden`` rows."""
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
        """Row words: the layers' rows, then the readout's, one per neuron of the last layer
        (of a capacity layout: of its largest layer, which a model of fewer layers may end with)."""
        return self.readout_row_base + (max(self.hidden) if self.limits is not None else self.hidden[-1])

    @property
    def acc_base(self) -> tuple[int, ...]:
        """First accumulator word of each layer in every lane (4 words per local neuron)."""
        return tuple(int(v) for v in np.concatenate([[0], 4 * np.cumsum(self.n_local)[:-1]]))

    @property
    def readout_acc_base(self) -> int:
        return 4 * sum(self.n_local)

    @property
    def acc_depth(self) -> int:
        return max(2, self.readout_acc_base + self.readout_local)

    def lane_address_map(self, banks: int = 1) -> LaneAddressMap:
        """A lane's accumulator addresses with ``banks`` (1 or 2) banks of the layers' words."""
        if banks not in (1, 2):
            raise ValueError(f"banks must be 1 or 2, not {banks!r}")
        words = self.readout_acc_base
        if banks == 2:
            words = 1 << max(1, (words - 1).bit_length())
        registers = self.acc_depth - self.readout_acc_base
        return LaneAddressMap(banks=banks, bank_words=words, registers=registers)

    def event_base(self, layer: int, parity: int) -> int:
        """First events word of ``layer``'s half for steps of ``parity``."""
        return 2 * self.neuron_base[layer] + parity * self.hidden[layer]

    @property
    def event_depth(self) -> int:
        return max(2, 2 * self.neurons)

    @property
    def max_align(self) -> int:
        """The largest product alignment the lanes' shifters take: the layers' (or the limit)."""
        if self.limits is not None:
            return self.limits.max_align
        return max(max(max(l.input_align), max(l.recurrent_align)) for l in self.layers)

    @property
    def grids(self) -> tuple[int, ...]:
        """The accumulator grids (``acc_frac``) the update units take: one per layer, or the
        limits' (a capacity build)."""
        return self.limits.grids if self.limits is not None else tuple(l.acc_frac for l in self.layers)

    def param_names(self) -> list[str]:
        """The run-time registers of a capacity build, in address order (``PARAMS`` writes)."""
        names = ["last_layer", "inputs", "outputs", "readout_bias_shift"]
        for l in range(self.n_layers):
            names += [f"layer{l}.hidden", f"layer{l}.grid"]
            names += [f"layer{l}.input_align.{g}" for g in ALIGN_GATES]
            names += [f"layer{l}.recurrent_align.{g}" for g in ALIGN_GATES]
            names += [f"layer{l}.bias_shift.{k}" for k in ACC_KINDS]
        return names

    def param_range(self, name: str) -> int:
        """How many values register ``name`` takes (0 .. n-1)."""
        lim = self.limits
        if lim is None:
            raise LayoutError("a layout without limits has no run-time registers")
        if name == "last_layer":
            return self.n_layers
        if name == "inputs":
            return self.input_size + 1
        if name == "outputs":
            return self.outputs + 1
        if name == "readout_bias_shift" or ".bias_shift." in name:
            return lim.max_bias_shift + 1
        if ".align." in name or "_align." in name:
            return lim.max_align + 1
        layer, what = name.split(".")
        if what == "hidden":
            return self.hidden[int(layer[5:])] + 1
        if what == "grid":
            return len(lim.grids)
        raise LayoutError(f"no run-time register {name!r}")

    # -- words --------------------------------------------------------------------------
    @property
    def entry_word(self) -> Word:
        target = unsigned_bits_for(max(max(self.n_local), self.readout_local) - 1)
        return Word((Field("value", self.formats.weight_bits, True), Field("gate", GATE_BITS),
                     Field("target", max(1, target))))

    @property
    def windows(self) -> int:
        """Windows of :data:`~egru_accel.quantize.lanes.WINDOW` local neurons in the widest
        matrix (a layer's or the readout's local neurons)."""
        return _ceil_div(max(max(self.n_local), self.readout_local), WINDOW)

    @property
    def window_word(self) -> Word:
        """One entry of all lanes in one word (``structure="lane-window"`` only): the gate and
        the window the lanes share, then per lane ``p`` its weight ``value{p}`` and its
        ``offset{p}`` in the window (local index ``WINDOW * window + offset``)."""
        if self.structure != "lane-window":
            raise LayoutError(f"a {self.structure} layout has no window word (its lanes' entries need "
                              f"not share a window)")
        offset = unsigned_bits_for(WINDOW - 1)
        fields = [Field("gate", GATE_BITS), Field("window", max(1, unsigned_bits_for(self.windows - 1)))]
        for p in range(self.lanes):
            fields += [Field(f"value{p}", self.formats.weight_bits, True), Field(f"offset{p}", offset)]
        return Word(tuple(fields))

    @property
    def row_word(self) -> Word:
        return Word((Field("start", max(1, unsigned_bits_for(self.entries))),
                     Field("length", max(1, unsigned_bits_for(self.max_row_length)))))

    @property
    def event_word(self) -> Word:
        return Word((Field("neuron", max(1, unsigned_bits_for(self.neurons - 1))),
                     Field("value", self.formats.state_bits, True)))

    @property
    def acc_word(self) -> Word:
        return Word((Field("acc", ACC_BITS, True),))

    @property
    def theta_word(self) -> Word:
        return Word((Field("theta", self.formats.state_bits),))

    @property
    def entry_address_bits(self) -> int:
        """Address bits of a lane's weight memory (as built: at least two words)."""
        return unsigned_bits_for(max(2, self.entries) - 1)

    def weight_word(self, weight_memory: str) -> Word:
        """The word of the weight memory ``weight_memory`` (:data:`WEIGHT_MEMORIES`)."""
        if weight_memory not in WEIGHT_MEMORIES:
            raise ValueError(f"weight_memory must be one of {', '.join(WEIGHT_MEMORIES)}, not {weight_memory!r}")
        return self.window_word if weight_memory == "wide" else self.entry_word

    # -- the readout engine's weights ------------------------------------------------------
    @property
    def engine_rows(self) -> int:
        """Neurons whose events the readout engine takes (the readout's rows)."""
        return self.rows - self.readout_row_base

    def engine_macs(self, macs: int) -> int:
        """The engine's multipliers for ``macs`` asked: no more than there are outputs."""
        return min(macs, self.outputs)

    def engine_chunks(self, macs: int) -> int:
        """Cycles (words) per event of an engine of ``macs`` multipliers."""
        return _ceil_div(self.outputs, self.engine_macs(macs))

    def engine_word(self, macs: int) -> Word:
        """One word of the readout engine's weights: ``value{r}`` of output ``c * macs + r``
        for chunk ``c`` (the word at ``n * chunks + c`` for neuron ``n``; zero past the outputs)."""
        return engine_word(self.formats.weight_bits, self.engine_macs(macs))

    def engine_depth(self, macs: int) -> int:
        return self.engine_rows * self.engine_chunks(macs)

    def load_word(self, weight_memory: str, readout_macs: int | None = None) -> Word:
        """A write of the load port: ``mem`` (a :class:`LoadMemory`), ``addr``, ``data`` (as
        wide as the widest loadable word); ``readout_macs``: a core with a readout engine of
        that many multipliers (its weights are loadable too)."""
        weights = self.entry_address_bits + (unsigned_bits_for(self.lanes - 1) if weight_memory == "lanes" else 0)
        params = len(self.param_names()) if self.limits is not None else 2
        addr = max(weights, unsigned_bits_for(max(2, self.rows) - 1), unsigned_bits_for(max(2, self.neurons) - 1),
                   unsigned_bits_for(max(2, self.outputs) - 1), unsigned_bits_for(params - 1))
        width = max(self.row_word.width, self.weight_word(weight_memory).width, ACC_BITS, self.theta_word.width)
        if readout_macs is not None:
            addr = max(addr, unsigned_bits_for(max(2, self.engine_depth(readout_macs)) - 1))
            width = max(width, self.engine_word(readout_macs).width)
        return Word((Field("mem", unsigned_bits_for(len(LoadMemory) - 1)), Field("addr", addr),
                     Field("data", width)))

    def load_sections(self, weight_memory: str, readout_macs: int | None = None) -> list["LoadSection"]:
        """The load port's memories of a core built for this layout, in load order, each with
        its word bits, its depth and the address of its word 0: rows; weights (one section per
        lane at ``p << entry_address_bits``, or one of window words, ``"wide"``); the four bias
        memories; thresholds; readout biases; the readout engine's weights (``readout_macs``:
        its multipliers; ``None``: no engine); a capacity layout's run-time registers. The one
        definition of what a load writes: :meth:`SharedRowImage.load_writes` and the model image
        (:mod:`egru_accel.firmware.image`) both follow it."""
        ww = self.weight_word(weight_memory)      # a bad weight_memory fails here
        secs = [LoadSection(LoadMemory.ROWS, self.row_word.width, self.rows)]
        if weight_memory == "wide":
            secs.append(LoadSection(LoadMemory.WEIGHTS, ww.width, self.entries))
        else:
            secs += [LoadSection(LoadMemory.WEIGHTS, ww.width, self.entries, part=p, base=p << self.entry_address_bits)
                     for p in range(self.lanes)]
        secs += [LoadSection(INIT_MEMORIES[k], BIAS_BITS, self.neurons) for k in ACC_KINDS]
        secs.append(LoadSection(LoadMemory.THETA, self.theta_word.width, self.neurons))
        secs.append(LoadSection(LoadMemory.READOUT_BIAS, BIAS_BITS, self.outputs))
        if readout_macs is not None:
            secs.append(LoadSection(LoadMemory.READOUT_WEIGHTS, self.engine_word(readout_macs).width,
                                    self.engine_depth(readout_macs), macs=readout_macs))
        if self.limits is not None:
            secs.append(LoadSection(LoadMemory.PARAMS, PARAM_BITS, len(self.param_names())))
        return secs

    def row_offset(self, layer: int, use: str) -> int:
        """What to add to a global neuron index of ``layer`` to get the row its event fetches:
        ``use`` is ``"recurrent"`` (the layer's own rows), ``"input"`` (the next layer's input
        rows) or ``"readout"``."""
        nb = self.neuron_base[layer]
        if use == "recurrent":
            return self.row_base[layer] + self.layers[layer].inputs - nb
        if use == "input":
            return self.row_base[layer + 1] - nb
        if use == "readout":
            return self.readout_row_base - nb
        raise ValueError(f"use must be recurrent, input or readout, not {use!r}")

    def to_dict(self) -> dict:
        return {"formats": self.formats.to_dict(), "lanes": self.lanes, "dense": self.dense,
                "inputs": self.input_size, "hidden": list(self.hidden), "outputs": self.outputs,
                "layers": [{"inputs": l.inputs, "hidden": l.hidden, "acc_frac": l.acc_frac,
                            "input_align": list(l.input_align), "recurrent_align": list(l.recurrent_align)}
                           for l in self.layers],
                "entries": self.entries, "max_row_length": self.max_row_length, "rows": self.rows,
                "acc_depth": self.acc_depth, "structure": self.structure,
                "bias_shifts": [list(b) for b in self.bias_shifts], "readout_bias_shift": self.readout_bias_shift,
                "limits": None if self.limits is None else self.limits.to_dict()}


@dataclass(frozen=True)
class SharedRowImage:
    """A model in the shared-row memories: ``weights[p]`` (entry words of lane ``p``, all
    ``layout.entries`` long), ``rows`` (row words), ``init[k]`` for k in :data:`ACC_KINDS`
    (per global neuron), ``theta``, ``readout_bias`` (integers, not words: they are one field
    each)."""
    layout: SharedRowLayout
    weights: tuple = field(repr=False)
    rows: np.ndarray = field(repr=False)
    init: dict = field(repr=False)
    theta: np.ndarray = field(repr=False)
    readout_bias: np.ndarray = field(repr=False)
    padding: int = 0        # zero-weight entries added to pad shares (all lanes)
    #: A capacity layout's model values (:func:`~egru_accel.quantize.capacity.place`); ``None``
    #: for a layout without limits.
    params: ModelParams | None = None

    def __post_init__(self):
        if (self.params is None) != (self.layout.limits is None):
            raise LayoutError("an image has run-time parameters exactly when its layout has limits")

    @property
    def bias_shifts(self) -> tuple:
        """Per layer, the shift of each accumulator kind's biases (the model's)."""
        return self.params.bias_shifts if self.params is not None else self.layout.bias_shifts

    @property
    def readout_bias_shift(self) -> int:
        return self.params.readout_bias_shift if self.params is not None else self.layout.readout_bias_shift

    @property
    def hidden(self) -> tuple[int, ...]:
        """The model's neurons per layer (at most the layout's, in a capacity layout)."""
        return self.params.hidden if self.params is not None else self.layout.hidden

    @property
    def input_size(self) -> int:
        return self.params.inputs if self.params is not None else self.layout.input_size

    @property
    def outputs(self) -> int:
        return self.params.outputs if self.params is not None else self.layout.outputs

    def param_values(self) -> list[int]:
        """The run-time registers' values in :meth:`SharedRowLayout.param_names` order."""
        values = self.params.values(self.layout)
        return [values[n] for n in self.layout.param_names()]

    def row_fields(self) -> dict:
        return self.layout.row_word.unpack(self.rows)

    def window_words(self) -> np.ndarray:
        """The lanes' entries as :attr:`SharedRowLayout.window_word` words, one per entry
        address (a lane-window image only). Raises ``LayoutError`` if two lanes' entries at
        one address disagree on gate or window, which the packer never lets happen."""
        lay = self.layout
        ww = lay.window_word
        lanes = [lay.entry_word.unpack(w) for w in self.weights]
        gate = lanes[0]["gate"]
        window = lanes[0]["target"] // WINDOW
        fields = {"gate": gate, "window": window}
        for p, e in enumerate(lanes):
            bad = np.nonzero((e["gate"] != gate) | (e["target"] // WINDOW != window))[0]
            if bad.size:
                raise LayoutError(f"entry {int(bad[0])}: lane {p}'s gate/window differs from lane 0's")
            fields[f"value{p}"] = e["value"]
            fields[f"offset{p}"] = e["target"] % WINDOW
        return ww.pack(**fields)


    def engine_words(self, macs: int) -> np.ndarray:
        """The readout engine's weight memory (:meth:`SharedRowLayout.engine_word`) for an
        engine of ``macs`` multipliers: the readout matrix the entries describe."""
        lay = self.layout
        return pack_engine_words(unpack_weights(self)[-1], macs=lay.engine_macs(macs),
                                 weight_bits=lay.formats.weight_bits)

    def section_words(self, section: "LoadSection") -> np.ndarray:
        """The words of one of the load port's sections (:meth:`SharedRowLayout.load_sections`),
        as unsigned integers of ``section.bits`` bits (a wide weight word may exceed 64 bits:
        then an object array of Python ints)."""
        mem = section.mem
        if mem == LoadMemory.ROWS:
            words = self.rows
        elif mem == LoadMemory.WEIGHTS:
            words = self.window_words() if section.part is None else self.weights[section.part]
        elif mem in INIT_MEMORIES.values():
            words = self.init_words(ACC_KINDS[list(INIT_MEMORIES.values()).index(mem)])
        elif mem == LoadMemory.THETA:
            words = self.theta
        elif mem == LoadMemory.READOUT_BIAS:
            words = self.readout_bias_words()
        elif mem == LoadMemory.READOUT_WEIGHTS:
            words = self.engine_words(section.macs)
        elif mem == LoadMemory.PARAMS:
            words = self.param_values()
        else:
            raise LayoutError(f"no load section for memory {mem!r}")
        mask = (1 << section.bits) - 1
        return [int(w) & mask for w in words]

    def load_writes(self, weight_memory: str, readout_macs: int | None = None) -> list[tuple[int, int, int]]:
        """Every write that fills a core built for this layout with this image, as
        (:class:`LoadMemory`, address, data) in load order (:meth:`SharedRowLayout.load_sections`):
        rows, weights, biases, thresholds, readout biases, a readout engine's weights
        (``readout_macs``: its multipliers) and a capacity layout's run-time registers. Data are
        the memories' words as unsigned integers."""
        writes: list[tuple[int, int, int]] = []
        for sec in self.layout.load_sections(weight_memory, readout_macs):
            writes.extend((int(sec.mem), sec.base + a, w) for a, w in enumerate(self.section_words(sec)))
        return writes

    def init_words(self, kind: str) -> np.ndarray:
        """The bias memory of accumulator ``kind``: per global neuron its mantissa (the bias
        ``>>`` its layer's :attr:`SharedRowLayout.bias_shifts`)."""
        lay = self.layout
        k = ACC_KINDS.index(kind)
        # A capacity layout's layers past the model's hold zeros (shift 0).
        given = self.bias_shifts
        shifts = np.concatenate([np.full(l.hidden, given[i][k] if i < len(given) else 0, dtype=np.int64)
                                 for i, l in enumerate(lay.layers)])
        return np.asarray(self.init[kind], dtype=np.int64) >> shifts

    def readout_bias_words(self) -> np.ndarray:
        """The readout bias memory: per output its mantissa."""
        return np.asarray(self.readout_bias, dtype=np.int64) >> self.readout_bias_shift

    def load_payloads(self, weight_memory: str, readout_macs: int | None = None) -> list[int]:
        """:meth:`load_writes` as :meth:`SharedRowLayout.load_word` payloads (Python ints: the
        data of a wide weight word may exceed 64 bits)."""
        word = self.layout.load_word(weight_memory, readout_macs)
        at_addr, at_data = word.offset("addr"), word.offset("data")
        return [mem | addr << at_addr | data << at_data
                for mem, addr, data in self.load_writes(weight_memory, readout_macs)]


def _padded_rows(parts, gates: int, windows: int | None = None):
    """Pad the lanes' ``parts`` (:func:`_lane_entries` of one matrix of ``gates`` gates) into
    equal shares.

    Within a row, entries fall into groups: one per row (``windows=None``), or one per gate
    and window of :data:`~egru_accel.quantize.lanes.WINDOW` local neurons (``windows`` windows
    per gate). Every group gets as many entries as the lane with the most in it, and the groups
    follow in order, so that entries at one address of all lanes share a group. A padding entry
    is a zero weight carrying its group's gate and first target. Returns (per lane (values,
    gates, targets), row lengths, padding entries of all lanes)."""
    rows = len(parts[0][3])
    groups = 1 if windows is None else gates * windows
    keys = [np.repeat(np.arange(rows), n) * groups
            + (0 if windows is None else gt * windows + tg // WINDOW) for _, gt, tg, n in parts]
    counts = np.stack([np.bincount(k, minlength=rows * groups) for k in keys])     # [lanes, rows * groups]
    longest = counts.max(axis=0)
    group_start = np.concatenate([[0], np.cumsum(longest)[:-1]])
    position_group = np.repeat(np.arange(rows * groups) % groups, longest)        # each address's group
    if windows is None:
        pad_gate = pad_target = np.zeros(int(longest.sum()), dtype=np.int64)
    else:
        pad_gate, pad_target = position_group // windows, (position_group % windows) * WINDOW
    out = []
    for (v, gt, tg, _), key, c in zip(parts, keys, counts):
        # A key's entries are consecutive (row order, then gate and target order).
        slot = np.arange(len(v)) - np.concatenate([[0], np.cumsum(c)[:-1]])[key]
        pv, pg, pt = np.zeros_like(pad_gate), pad_gate.copy(), pad_target.copy()
        idx = group_start[key] + slot
        pv[idx], pg[idx], pt[idx] = v, gt, tg
        out.append((pv, pg, pt))
    return out, longest.reshape(rows, groups).sum(axis=1), int((longest[None, :] - counts).sum())


def pack_shared_rows(model: QuantModel, lanes: int, *, dense: bool = False,
                     structure: str = "unstructured") -> SharedRowImage:
    """Lay ``model`` out for a shared-row core of ``lanes`` lanes. ``dense=True`` stores every
    weight, zeros included (the dense baseline). ``structure="lane-window"`` pads each row per
    gate and window of :data:`~egru_accel.quantize.lanes.WINDOW` local neurons instead of per
    row, so that the entries at one address of all lanes share gate and window and pack into
    one :attr:`SharedRowLayout.window_word` (no padding when the model was pruned
    ``lane-window``). Raises ``LayoutError`` when an accumulator bound exceeds
    :data:`ACC_BITS`."""
    if not isinstance(model, QuantModel):
        raise TypeError(f"pack_shared_rows takes a QuantModel, not {type(model).__name__}")
    if structure not in PACKINGS:
        raise ValueError(f"structure must be {' or '.join(PACKINGS)}, not {structure!r}"
                         + (" (lane-block models pack as unstructured)" if structure == "lane-block" else ""))
    lanes = check_lanes(lanes)
    for l, H in enumerate(model.hidden_sizes):
        if lanes > H:
            raise ValueError(f"{lanes} lanes is more than layer{l}'s {H} neurons")
    for l in range(len(model.layers)):
        bits = model.layer_bounds(l).bits()
        worst = max(bits, key=bits.get)
        if bits[worst] > ACC_BITS:
            raise LayoutError(f"layer{l}'s {worst} accumulator needs {bits[worst]} bits, more than the "
                              f"core's {ACC_BITS}")
    if signed_bits_for(model.readout_bound()) > ACC_BITS:
        raise LayoutError(f"the readout needs {signed_bits_for(model.readout_bound())} bits, more than "
                          f"the core's {ACC_BITS}")
    fmt = model.formats
    matrices = [(np.concatenate([layer.W, layer.R], axis=0), 3) for layer in model.layers]
    matrices.append((model.readout.W, 1))
    values, gates, targets, lengths, padding = [[] for _ in range(lanes)], [[] for _ in range(lanes)], \
        [[] for _ in range(lanes)], [], 0
    for M, g in matrices:
        parts = [_lane_entries(M, g, lanes, p, dense) for p in range(lanes)]
        windows = _ceil_div(_ceil_div(M.shape[1] // g, lanes), WINDOW) if structure == "lane-window" else None
        shares, row_lengths, pad = _padded_rows(parts, g, windows)
        padding += pad
        lengths.append(row_lengths)
        for p, (pv, pg, pt) in enumerate(shares):
            values[p].append(pv)
            gates[p].append(pg)
            targets[p].append(pt)
    lengths = np.concatenate(lengths).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    entries = int(lengths.sum())
    layout = SharedRowLayout(
        formats=fmt, lanes=lanes, dense=bool(dense),
        layers=tuple(LayerLayout(inputs=layer.input_size, hidden=layer.hidden_size, acc_frac=model.acc_frac(l),
                                 input_align=model.input_align(l), recurrent_align=model.recurrent_align(l))
                     for l, layer in enumerate(model.layers)),
        outputs=model.output_size, entries=entries, max_row_length=int(lengths.max()) if len(lengths) else 0,
        structure=structure)
    ew = layout.entry_word
    weights = tuple(ew.pack(value=np.concatenate(values[p]), gate=np.concatenate(gates[p]),
                            target=np.concatenate(targets[p])) for p in range(lanes))
    rows = layout.row_word.pack(start=starts, length=lengths)
    init = {k: [] for k in ACC_KINDS}
    theta = []
    for layer in model.layers:
        H = layer.hidden_size
        bx = [layer.bias_x[k * H:(k + 1) * H] for k in (GATE_Z, GATE_R, GATE_G)]
        bh = [layer.bias_h[k * H:(k + 1) * H] for k in (GATE_Z, GATE_R, GATE_G)]
        init["z"].append(bx[0] + bh[0])
        init["r"].append(bx[1] + bh[1])
        init["ag"].append(bx[2])
        init["hg"].append(bh[2])
        theta.append(layer.theta)
    init = {k: np.concatenate(v).astype(np.int64) for k, v in init.items()}
    # Each layer's biases per kind, and the readout's, as BIAS_BITS mantissas times a power of
    # two (the quantizer puts them on those grids; QuantModel.on_bias_grid for other models).
    def grid(values, what):
        shift = bias_mantissa_shift(values)
        if shift is None:
            raise LayoutError(f"{what} biases are not {BIAS_BITS}-bit mantissas times a power of two "
                              f"(quantize the model, or take QuantModel.on_bias_grid())")
        return shift
    bounds = np.cumsum([0] + [layer.hidden_size for layer in model.layers])
    bias_shifts = tuple(tuple(grid(init[k][bounds[l]:bounds[l + 1]], f"layer {l}'s {k}") for k in ACC_KINDS)
                        for l in range(len(model.layers)))
    layout = dataclasses.replace(layout, bias_shifts=bias_shifts,
                                 readout_bias_shift=grid(model.readout.bias, "the readout's"))
    return SharedRowImage(layout=layout, weights=weights, rows=rows, init=init,
                          theta=np.concatenate(theta).astype(np.int64),
                          readout_bias=np.asarray(model.readout.bias, dtype=np.int64), padding=padding)


def engine_word(weight_bits: int, macs: int) -> Word:
    """A word of the readout engine's weights: ``macs`` signed ``weight_bits`` values."""
    return Word(tuple(Field(f"value{r}", weight_bits, True) for r in range(macs)))


def pack_engine_words(matrix, *, macs: int, weight_bits: int) -> np.ndarray:
    """The readout engine's weight memory for ``matrix`` [H, O] and ``macs`` (at most O)
    multipliers: neuron ``n``'s chunk ``c`` at ``n * chunks + c`` holds outputs ``c * macs`` to
    ``c * macs + macs - 1`` (zero past O), :func:`engine_word` s."""
    w = np.asarray(matrix, dtype=np.int64)
    H, O = w.shape
    C = _ceil_div(O, macs)
    padded = np.zeros((H, C * macs), dtype=np.int64)
    padded[:, :O] = w
    chunks = padded.reshape(H * C, macs)
    return engine_word(weight_bits, macs).pack(**{f"value{r}": chunks[:, r] for r in range(macs)})


def unpack_weights(image: SharedRowImage) -> list[np.ndarray]:
    """The matrices the image's entries describe: per layer ``[I + H, 3H]`` (W over R), then
    the readout ``[H, O]`` (for tests: equal to the model's, padding contributing zeros)."""
    lay, P = image.layout, image.layout.lanes
    rows = image.row_fields()
    out = []
    specs = [(lay.row_base[l], l_.inputs + l_.hidden, l_.hidden, 3) for l, l_ in enumerate(lay.layers)]
    specs.append((lay.readout_row_base, lay.engine_rows, lay.outputs, 1))
    for base, n_rows, targets, g in specs:
        M = np.zeros((n_rows, g * targets), dtype=np.int64)
        for p in range(P):
            w = lay.entry_word.unpack(image.weights[p])
            for r in range(n_rows):
                s, n = int(rows["start"][base + r]), int(rows["length"][base + r])
                for e in range(s, s + n):
                    if w["value"][e]:
                        neuron = int(w["target"][e]) * P + p
                        M[r, int(w["gate"][e]) * targets + neuron] += int(w["value"][e])
        out.append(M)
    return out
