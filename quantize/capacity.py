"""Capacities: one core v2 bitstream for many models.

A capacity build is sized by a :class:`Capacity` (lanes, inputs, neurons per layer, outputs,
weight entries per lane, the longest row) with fixed word formats, instead of by one model.
Its layout (:attr:`Capacity.layout`) has the capacities as its shapes and
:class:`~egru_accel.quantize.shared_rows.RuntimeLimits`: each model's own sizes, accumulator
grids, product alignments and bias shifts are run-time registers
(:class:`~egru_accel.quantize.shared_rows.ModelParams`), loaded with the model's other words.

:func:`place` lays a model into a capacity's memories: each layer's neurons, inputs and outputs
at the capacity's addresses (neuron ``n`` of a layer stays neuron ``n``, in lane ``n % P``),
the rows of the addresses the model does not use of length 0, the weight entries in the first
addresses. The core sweeps only the model's neurons, takes only its inputs and gives only its
outputs, so a smaller model costs no cycles for the capacity it leaves unused. A model that
does not fit is refused with a :class:`CapacityError` naming the capacity it exceeds.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from dataclasses import dataclass

import numpy as np

from .formats import NumberFormats
from .lanes import check_lanes
from .memory import LayerLayout, LayoutError
from .model import QuantLayer, QuantModel, QuantReadout
from .shared_rows import (ACC_KINDS, PACKINGS, WEIGHT_MEMORIES, LoadSection, ModelParams, RuntimeLimits,
                          SharedRowImage, SharedRowLayout, pack_shared_rows)

__all__ = ["Capacity", "CapacityError", "place", "CAPACITY_FILE_VERSION"]

CAPACITY_FILE_VERSION = 1


class CapacityError(ValueError):
    """A model that does not fit a build's capacities (the message names the capacity)."""


def _count(name: str, value, low: int = 1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, not {value}")
    return int(value)


@dataclass(frozen=True, kw_only=True)
class Capacity:
    """What a capacity build holds (all keyword-only).

    Args:
        formats: The word formats every model on the build has (weights, states, tables).
        lanes: Parallel lanes ``P``.
        inputs: Inputs per step (layer 0's).
        hidden: Neurons of each layer (at least ``lanes`` each); a model has at most as many
            layers, each at most this size.
        outputs: Readout outputs.
        entries: Weight entries per lane (every layer's and the readout's rows, padded).
        max_row_length: Entries of the longest row share.
        structure: The packing (:data:`~egru_accel.quantize.shared_rows.PACKINGS`).
        grids: The accumulator grids (``acc_frac``) the update units take.
        max_align: The largest product alignment the lanes' shifters take.
        max_bias_shift: The largest bias shift (a bias is a 16-bit mantissa times ``2**shift``).
        weight_memory: The core's weight memory (:data:`~egru_accel.quantize.shared_rows.WEIGHT_MEMORIES`):
            ``"lanes"``, one per lane, or ``"wide"``, one of window words (``structure="lane-window"``).
        readout_macs: The multipliers of the core's readout engine; ``None``: the readout runs on
            the lanes. With ``weight_memory``, what the load port's words look like.
    """
    formats: NumberFormats
    lanes: int
    inputs: int
    hidden: tuple[int, ...]
    outputs: int
    entries: int
    max_row_length: int
    structure: str = "unstructured"
    grids: tuple[int, ...] = (18,)
    max_align: int = 8
    max_bias_shift: int = 7
    weight_memory: str = "lanes"
    readout_macs: int | None = None

    def __post_init__(self):
        if not isinstance(self.formats, NumberFormats):
            raise TypeError(f"formats must be NumberFormats, not {type(self.formats).__name__}")
        object.__setattr__(self, "lanes", check_lanes(self.lanes))
        for name in ("inputs", "outputs", "entries", "max_row_length"):
            object.__setattr__(self, name, _count(name, getattr(self, name)))
        if isinstance(self.hidden, (str, bytes)) or not hasattr(self.hidden, "__iter__"):
            raise TypeError(f"hidden must be a sequence of integers, not {self.hidden!r}")
        hidden = tuple(_count(f"hidden[{l}]", H) for l, H in enumerate(self.hidden))
        if not hidden:
            raise ValueError("hidden must name at least one layer")
        for l, H in enumerate(hidden):
            if H < self.lanes:
                raise ValueError(f"hidden[{l}] ({H}) must be at least the lanes ({self.lanes})")
        object.__setattr__(self, "hidden", hidden)
        if self.structure not in PACKINGS:
            raise ValueError(f"structure must be one of {', '.join(PACKINGS)}, not {self.structure!r}")
        if isinstance(self.grids, (str, bytes)) or not hasattr(self.grids, "__iter__"):
            raise TypeError(f"grids must be a sequence of integers, not {self.grids!r}")
        grids = tuple(_count("a grid", g, 0) for g in self.grids)
        if not grids or len(set(grids)) != len(grids):
            raise ValueError(f"grids must name at least one accumulator grid, each once, not {self.grids!r}")
        object.__setattr__(self, "grids", grids)
        object.__setattr__(self, "max_align", _count("max_align", self.max_align, 0))
        object.__setattr__(self, "max_bias_shift", _count("max_bias_shift", self.max_bias_shift, 0))
        if self.weight_memory not in WEIGHT_MEMORIES:
            raise ValueError(f"weight_memory must be one of {', '.join(WEIGHT_MEMORIES)}, not {self.weight_memory!r}")
        if self.weight_memory == "wide" and self.structure != "lane-window":
            raise ValueError(f"a wide weight memory holds lane-window packings, not {self.structure}")
        if self.readout_macs is not None:
            object.__setattr__(self, "readout_macs", _count("readout_macs", self.readout_macs))

    def load_sections(self) -> list[LoadSection]:
        """The load port's memories of the build (:meth:`SharedRowLayout.load_sections`)."""
        return self.layout.load_sections(self.weight_memory, self.readout_macs)

    def load_writes(self, image: SharedRowImage) -> list[tuple[int, int, int]]:
        """The load port's writes of a placed model (:func:`place`)."""
        if not isinstance(image, SharedRowImage) or image.layout != self.layout:
            raise TypeError("load_writes takes a model placed for this capacity (place(model, capacity))")
        return image.load_writes(self.weight_memory, self.readout_macs)

    @property
    def limits(self) -> RuntimeLimits:
        return RuntimeLimits(grids=self.grids, max_align=self.max_align, max_bias_shift=self.max_bias_shift)

    @property
    def layout(self) -> SharedRowLayout:
        """The build's layout: the capacities as shapes, the run-time registers' limits (its
        layers' grids and alignments are placeholders: each model brings its own)."""
        inputs = (self.inputs,) + self.hidden[:-1]
        layers = tuple(LayerLayout(inputs=I, hidden=H, acc_frac=self.grids[0], input_align=(0, 0, 0),
                                   recurrent_align=(0, 0, 0)) for I, H in zip(inputs, self.hidden))
        return SharedRowLayout(formats=self.formats, lanes=self.lanes, dense=False, layers=layers,
                               outputs=self.outputs, entries=self.entries, max_row_length=self.max_row_length,
                               structure=self.structure, bias_shifts=tuple((0, 0, 0, 0) for _ in layers),
                               readout_bias_shift=0, limits=self.limits)

    def blank(self) -> SharedRowImage:
        """The build's memories all zero, with the capacity's own sizes in its registers: the
        image of a bitstream that holds no model (its models come through the load port)."""
        lay = self.layout
        L = len(self.hidden)
        params = ModelParams(inputs=self.inputs, outputs=self.outputs, hidden=self.hidden,
                             acc_frac=(self.grids[0],) * L, input_align=((0, 0, 0),) * L,
                             recurrent_align=((0, 0, 0),) * L, bias_shifts=((0, 0, 0, 0),) * L, readout_bias_shift=0)
        zeros = np.zeros(lay.neurons, dtype=np.int64)
        weights = tuple(np.zeros(self.entries, dtype=np.int64) for _ in range(self.lanes))
        return SharedRowImage(layout=lay, weights=weights,
                              rows=np.zeros(lay.rows, dtype=np.int64), init={k: zeros for k in ACC_KINDS},
                              theta=zeros, readout_bias=np.zeros(self.outputs, dtype=np.int64), params=params)

    # -- the fit ----------------------------------------------------------------------------
    def check(self, model: QuantModel):
        """Raise :class:`CapacityError` (naming the capacity) unless ``model``'s shapes and
        numerics fit; its entries are checked by :func:`place`, which packs it."""
        if not isinstance(model, QuantModel):
            raise TypeError(f"a capacity checks a QuantModel, not {type(model).__name__}")
        if model.formats != self.formats:
            diff = [f.name for f in dataclasses.fields(NumberFormats)
                    if getattr(model.formats, f.name) != getattr(self.formats, f.name)]
            raise CapacityError(f"the model's number formats differ from the build's in {', '.join(diff)}")
        if len(model.layers) > len(self.hidden):
            raise CapacityError(f"the model's {len(model.layers)} layers exceed the build's capacity of "
                                f"{len(self.hidden)}")
        if model.input_size > self.inputs:
            raise CapacityError(f"the model's {model.input_size} inputs exceed the build's capacity of {self.inputs}")
        for l, (H, cap) in enumerate(zip(model.hidden_sizes, self.hidden)):
            if H > cap:
                raise CapacityError(f"layer {l}'s {H} neurons exceed the build's capacity of {cap}")
            if H < self.lanes:
                raise CapacityError(f"layer {l}'s {H} neurons are fewer than the build's {self.lanes} lanes")
        if model.output_size > self.outputs:
            raise CapacityError(f"the model's {model.output_size} outputs exceed the build's capacity of "
                                f"{self.outputs}")
        for l in range(len(model.layers)):
            if model.acc_frac(l) not in self.grids:
                raise CapacityError(f"layer {l}'s accumulator grid (acc_frac {model.acc_frac(l)}) is not one of "
                                    f"the build's ({', '.join(map(str, self.grids))})")
            worst = max(max(model.input_align(l)), max(model.recurrent_align(l)))
            if worst > self.max_align:
                raise CapacityError(f"layer {l}'s product alignment {worst} exceeds the build's max_align of "
                                    f"{self.max_align}")

    @classmethod
    def covering(cls, models, *, lanes: int, structure: str = "unstructured", max_align: int | None = None,
                 max_bias_shift: int | None = None, grids=None, weight_memory: str = "lanes",
                 readout_macs: int | None = None) -> "Capacity":
        """The smallest capacity that holds every one of ``models`` (QuantModels of one number
        format) on ``lanes`` lanes: the largest of each shape, of their entries and longest rows,
        all their grids (or ``grids``), their largest alignment and bias shift (or ``max_align``,
        ``max_bias_shift``)."""
        models = list(models)
        if not models or not all(isinstance(m, QuantModel) for m in models):
            raise TypeError("covering takes one or more QuantModels")
        layouts = [pack_shared_rows(m, lanes, structure=structure).layout for m in models]
        layers = max(len(m.layers) for m in models)
        hidden = tuple(max(m.hidden_sizes[l] for m in models if l < len(m.layers)) for l in range(layers))
        shifts = [s for lay in layouts for b in lay.bias_shifts for s in b] + [lay.readout_bias_shift for lay in layouts]
        found = sorted({m.acc_frac(l) for m in models for l in range(len(m.layers))})
        return cls(formats=models[0].formats, lanes=lanes, inputs=max(m.input_size for m in models), hidden=hidden,
                   outputs=max(m.output_size for m in models), entries=max(lay.entries for lay in layouts),
                   max_row_length=max(lay.max_row_length for lay in layouts), structure=structure,
                   grids=tuple(found) if grids is None else grids,
                   max_align=max(lay.max_align for lay in layouts) if max_align is None else max_align,
                   max_bias_shift=max(shifts) if max_bias_shift is None else max_bias_shift,
                   weight_memory=weight_memory, readout_macs=readout_macs)

    # -- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"version": CAPACITY_FILE_VERSION, "formats": self.formats.to_dict(), "lanes": self.lanes,
                "inputs": self.inputs, "hidden": list(self.hidden), "outputs": self.outputs,
                "entries": self.entries, "max_row_length": self.max_row_length, "structure": self.structure,
                "grids": list(self.grids), "max_align": self.max_align, "max_bias_shift": self.max_bias_shift,
                "weight_memory": self.weight_memory, "readout_macs": self.readout_macs}

    @classmethod
    def from_dict(cls, d: dict) -> "Capacity":
        if not isinstance(d, dict):
            raise ValueError(f"a capacity must be a JSON object, not {type(d).__name__}")
        if d.get("version") != CAPACITY_FILE_VERSION:
            raise ValueError(f"capacity version {d.get('version')!r} is not {CAPACITY_FILE_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"version"}
        missing = names - set(d) - {"structure", "grids", "max_align", "max_bias_shift", "weight_memory",
                                    "readout_macs"}
        if unknown or missing:
            raise ValueError(f"capacity keys: unknown {sorted(unknown)}, missing {sorted(missing)}")
        args = {k: v for k, v in d.items() if k != "version"}
        args["formats"] = NumberFormats.from_dict(d["formats"])
        for k in ("hidden", "grids"):
            if k in args and isinstance(args[k], list):
                args[k] = tuple(args[k])
        return cls(**args)

    def save(self, path: str | os.PathLike):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Capacity":
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a capacity file ({e})") from None
        return cls.from_dict(d)


def _padded(model: QuantModel, cap: Capacity) -> QuantModel:
    """``model`` with the capacity's shapes: the neurons, inputs and outputs it lacks added with
    zero weights and biases (they are never swept, taken or read)."""
    layers, I_cap = [], cap.inputs
    for l, layer in enumerate(model.layers):
        I, H, Hc = layer.input_size, layer.hidden_size, cap.hidden[l]

        def gates(M, rows):
            out = np.zeros((rows, 3 * Hc), dtype=np.int64)
            for k in range(3):
                out[:M.shape[0], k * Hc:k * Hc + H] = M[:, k * H:(k + 1) * H]
            return out

        def bias(b):
            out = np.zeros(3 * Hc, dtype=np.int64)
            for k in range(3):
                out[k * Hc:k * Hc + H] = b[k * H:(k + 1) * H]
            return out
        theta = np.zeros(Hc, dtype=np.int64)
        theta[:H] = layer.theta
        layers.append(QuantLayer(W=gates(layer.W, I_cap), R=gates(layer.R, Hc), w_shift=layer.w_shift,
                                 r_shift=layer.r_shift, bias_x=bias(layer.bias_x), bias_h=bias(layer.bias_h),
                                 theta=theta))
        I_cap = Hc
    ro = model.readout
    W = np.zeros((cap.hidden[len(layers) - 1], cap.outputs), dtype=np.int64)
    W[:ro.W.shape[0], :ro.W.shape[1]] = ro.W
    b = np.zeros(cap.outputs, dtype=np.int64)
    b[:ro.bias.shape[0]] = ro.bias
    return QuantModel(formats=model.formats, layers=layers, readout=QuantReadout(W=W, shift=ro.shift, bias=b),
                      meta=dict(model.meta))


def place(model: QuantModel, capacity: Capacity) -> SharedRowImage:
    """``model`` in the memories of a ``capacity`` build, with its run-time registers; raises
    :class:`CapacityError` naming the capacity it exceeds."""
    if not isinstance(capacity, Capacity):
        raise TypeError(f"capacity must be a Capacity, not {type(capacity).__name__}")
    capacity.check(model)
    try:
        packed = pack_shared_rows(_padded(model, capacity), capacity.lanes, structure=capacity.structure)
    except LayoutError as e:
        raise CapacityError(str(e)) from None
    lay, cap_lay = packed.layout, capacity.layout
    if lay.entries > capacity.entries:
        raise CapacityError(f"the model needs {lay.entries} weight entries per lane, more than the build's "
                            f"capacity of {capacity.entries}")
    if lay.max_row_length > capacity.max_row_length:
        raise CapacityError(f"the model's longest row share has {lay.max_row_length} entries, more than the "
                            f"build's capacity of {capacity.max_row_length}")
    shifts = [s for b in lay.bias_shifts for s in b] + [lay.readout_bias_shift]
    if max(shifts) > capacity.max_bias_shift:
        raise CapacityError(f"the model's bias shift {max(shifts)} exceeds the build's max_bias_shift of "
                            f"{capacity.max_bias_shift}")
    params = ModelParams(inputs=model.input_size, outputs=model.output_size, hidden=tuple(model.hidden_sizes),
                         acc_frac=tuple(model.acc_frac(l) for l in range(len(model.layers))),
                         input_align=tuple(model.input_align(l) for l in range(len(model.layers))),
                         recurrent_align=tuple(model.recurrent_align(l) for l in range(len(model.layers))),
                         bias_shifts=lay.bias_shifts, readout_bias_shift=lay.readout_bias_shift)
    # The capacity's words (a model of fewer layers may have narrower targets): the weight
    # memories with zero words past the model's entries; the readout's rows after the capacity's
    # layers' rows; the biases and thresholds of the layers the model lacks zero.
    weights = []
    for w in packed.weights:
        words = cap_lay.entry_word.pack(**lay.entry_word.unpack(w))
        weights.append(np.concatenate([words, np.zeros(capacity.entries - lay.entries, dtype=words.dtype)]))
    weights = tuple(weights)
    fields = packed.row_fields()
    ours = lay.readout_row_base
    row_fields = {}
    for name, v in fields.items():
        out = np.zeros(cap_lay.rows, dtype=np.int64)
        out[:ours] = v[:ours]
        out[cap_lay.readout_row_base:cap_lay.readout_row_base + len(v) - ours] = v[ours:]
        row_fields[name] = out

    def neurons(a):
        out = np.zeros(cap_lay.neurons, dtype=np.int64)
        out[:len(a)] = a
        return out
    return SharedRowImage(layout=cap_lay, weights=weights, rows=cap_lay.row_word.pack(**row_fields),
                          init={k: neurons(v) for k, v in packed.init.items()}, theta=neurons(packed.theta),
                          readout_bias=packed.readout_bias, padding=packed.padding, params=params)
