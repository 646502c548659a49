"""The packer: a quantized model as the memory contents of a P-lane core, and back.

:func:`pack` lays a :class:`~egru_accel.quantize.model.QuantModel` into exactly the words the
hardware holds (the memories and words of :mod:`egru_accel.quantize.memory`). Per lane ``p``
(owning neurons ``n`` with ``n % P == p``, see :mod:`egru_accel.quantize.lanes`):

* **weights**: the stored non-zero weights whose target the lane owns, layer 0, layer 1,
  ..., then the readout, each grouped by *source row*: for a layer, rows ``0 .. I-1`` are
  its inputs (kernel ``W``), rows ``I .. I+H-1`` its own neurons' events (recurrent kernel
  ``R``); the readout's rows are the last layer's neurons. Within a row, entries are in
  column order (gate-major): word ``value | gate | target`` (the local index ``n // P``).
* **row_ptr**: one word per source row of every layer and the readout, in that order:
  ``start`` (absolute in the lane's weight memory) and ``length`` (entries).
* **consts**: per layer and local neuron, the accumulator start values and the threshold
  (``init_z = bias_x_z + bias_h_z``, ``init_r`` likewise, ``init_ag = bias_x_g``,
  ``init_hg = bias_h_g``); a lane with one neuron fewer than lane 0 holds a zero word.
* **readout_bias**: per local output.

The hardware holds the z and r biases summed, so :func:`unpack` gives back the model with
those biases folded into ``bias_x`` (:meth:`QuantModel.fold_biases`), which computes the
same integers: ``unpack(pack(m, P)) == m.fold_biases()`` exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .formats import GATE_G, GATE_R, GATE_Z, signed_bits_for
from .lanes import check_lanes, lane_neurons
from .memory import LOADABLE, CoreLayout, LayerLayout, LayoutError, MemoryId
from .model import QuantLayer, QuantModel, QuantReadout

__all__ = ["PackedModel", "CapacityError", "pack", "unpack", "check_capacity", "save_images", "MEMORY_NAMES"]

#: Names of the memories in :meth:`PackedModel.memory_bits` and in a budget.
MEMORY_NAMES = tuple(m.label for m in MemoryId)


class CapacityError(ValueError):
    """The packed model does not fit the memory budget."""


@dataclass(frozen=True)
class PackedModel:
    """A model laid out for a core: its :class:`~egru_accel.quantize.memory.CoreLayout` and
    the words of every loadable memory of every lane.

    ``contents[(mem, lane)]``: the words (uint64, or Python ints for words over 64 bits) the
    model needs in that memory, from address 0 (the weights of each lane as many as it holds;
    the other memories as deep as :meth:`CoreLayout.words_needed`). ``readout_shift``: the
    readout's weight scale (it fixes the grid of the outputs, not the hardware)."""
    layout: CoreLayout
    contents: dict = field(repr=False)
    readout_shift: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def formats(self):
        return self.layout.formats

    @property
    def lanes(self) -> int:
        return self.layout.lanes

    @property
    def dense(self) -> bool:
        return self.layout.dense

    def words(self, mem: MemoryId, lane: int) -> np.ndarray:
        return self.contents[(MemoryId(mem), lane)]

    def entries_per_lane(self) -> list[int]:
        return [len(self.words(MemoryId.WEIGHTS, p)) for p in range(self.lanes)]

    def memory_bits(self) -> dict:
        """Bits of every memory of the core as built (:meth:`CoreLayout.memory_bits`)."""
        return self.layout.memory_bits()

    def summary(self) -> dict:
        """The layout's description with the weight entries of each lane (JSON-ready)."""
        return {**self.layout.to_dict(), "entries_per_lane": self.entries_per_lane()}


def save_images(packed: PackedModel, path: str):
    """Write every loadable memory as an array ``lane{p}.{memory}`` of bytes ``[words,
    word bytes]`` (each word little-endian, as in the model image) to ``path`` (``.npz``)."""
    arrays = {}
    for (mem, p), words in sorted(packed.contents.items()):
        nbytes = packed.layout.word(mem).bytes
        arrays[f"lane{p}.{mem.label}"] = np.array(
            [list(int(w).to_bytes(nbytes, "little")) for w in words], dtype=np.uint8).reshape(-1, nbytes)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def _lane_entries(M: np.ndarray, gates: int, lanes: int, lane: int, dense: bool):
    """Lane ``lane``'s entries of a ``[rows, gates * targets]`` matrix: (values, gates,
    local targets, entries per row), grouped by row, in column order within a row."""
    rows, cols = M.shape
    targets = cols // gates
    neurons = lane_neurons(targets, lanes, lane)
    cols_p = np.concatenate([neurons + k * targets for k in range(gates)])
    gate_of = np.repeat(np.arange(gates), len(neurons))
    local_of = np.tile(np.arange(len(neurons)), gates)
    order = np.argsort(cols_p, kind="stable")
    cols_p, gate_of, local_of = cols_p[order], gate_of[order], local_of[order]
    sub = M[:, cols_p]
    r_idx, c_idx = np.nonzero(np.ones_like(sub) if dense else sub)   # dense images store zeros too
    return sub[r_idx, c_idx], gate_of[c_idx], local_of[c_idx], np.bincount(r_idx, minlength=rows)


def pack(model: QuantModel, lanes: int, *, budget: int | dict | None = None, dense: bool = False) -> PackedModel:
    """Lay ``model`` out for ``lanes`` lanes; check it against ``budget`` if one is given.

    ``dense=True`` stores every weight, zeros included (the dense baseline's memories).
    ``budget``: total bits (int) or bits per memory (dict over :data:`MEMORY_NAMES` and
    ``"total"``), counted as :meth:`PackedModel.memory_bits` does. Raises
    :class:`CapacityError` when the model does not fit.
    """
    if not isinstance(model, QuantModel):
        raise TypeError(f"pack takes a QuantModel, not {type(model).__name__}")
    lanes = check_lanes(lanes)
    for l, H in enumerate(model.hidden_sizes):
        if lanes > H:
            raise ValueError(f"{lanes} lanes is more than layer{l}'s {H} neurons")
    fmt = model.formats
    matrices = [(np.concatenate([layer.W, layer.R], axis=0), 3) for layer in model.layers]
    matrices.append((model.readout.W, 1))

    # Per lane: every matrix's entries, concatenated; row pointers absolute.
    per_lane = []
    for p in range(lanes):
        parts = [_lane_entries(M, gates, lanes, p, dense) for M, gates in matrices]
        values = np.concatenate([v for v, _, _, _ in parts]).astype(np.int64)
        gates = np.concatenate([g for _, g, _, _ in parts]).astype(np.int64)
        targets = np.concatenate([t for _, _, t, _ in parts]).astype(np.int64)
        lengths = np.concatenate([n for _, _, _, n in parts]).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        per_lane.append((values, gates, targets, starts, lengths))

    bounds = [model.layer_bounds(l) for l in range(len(model.layers))]
    layout = CoreLayout(
        formats=fmt, lanes=lanes, dense=bool(dense),
        layers=tuple(LayerLayout(inputs=layer.input_size, hidden=layer.hidden_size, acc_frac=model.acc_frac(l),
                                 input_align=model.input_align(l), recurrent_align=model.recurrent_align(l))
                     for l, layer in enumerate(model.layers)),
        outputs=model.output_size,
        acc_bits=max(max(b.bits()[k] for k in ("z", "r", "ag", "hg")) for b in bounds),
        pre_bits=max(max(b.bits().values()) for b in bounds),
        readout_bits=signed_bits_for(model.readout_bound()),
        weight_entries=max(len(v) for v, *_ in per_lane),
        max_row_length=max(int(n.max()) if len(n) else 0 for *_, n in per_lane))

    contents = {}
    for p, (values, gates, targets, starts, lengths) in enumerate(per_lane):
        contents[(MemoryId.WEIGHTS, p)] = layout.word(MemoryId.WEIGHTS).pack(value=values, gate=gates, target=targets)
        contents[(MemoryId.ROW_PTR, p)] = layout.word(MemoryId.ROW_PTR).pack(start=starts, length=lengths)
        init = {k: [] for k in ("init_z", "init_r", "init_ag", "init_hg", "theta")}
        for l, layer in enumerate(model.layers):
            H, n = layer.hidden_size, lane_neurons(layer.hidden_size, lanes, p)
            pad = layout.n_local[l] - len(n)    # the lane owns one neuron fewer than lane 0: a zero word
            bx = [np.append(layer.bias_x[k * H + n], [0] * pad) for k in (GATE_Z, GATE_R, GATE_G)]
            bh = [np.append(layer.bias_h[k * H + n], [0] * pad) for k in (GATE_Z, GATE_R, GATE_G)]
            init["init_z"].append(bx[GATE_Z] + bh[GATE_Z])
            init["init_r"].append(bx[GATE_R] + bh[GATE_R])
            init["init_ag"].append(bx[GATE_G])
            init["init_hg"].append(bh[GATE_G])
            init["theta"].append(np.append(layer.theta[n], [0] * pad))
        contents[(MemoryId.CONSTS, p)] = layout.word(MemoryId.CONSTS).pack(
            **{k: np.concatenate(v) for k, v in init.items()})
        bias = model.readout.bias[lane_neurons(model.output_size, lanes, p)]
        bias = np.append(bias, [0] * (layout.readout_local - len(bias)))
        contents[(MemoryId.READOUT_BIAS, p)] = layout.word(MemoryId.READOUT_BIAS).pack(bias=bias)
    packed = PackedModel(layout=layout, contents=contents, readout_shift=model.readout.shift,
                         meta=dict(model.meta))
    if budget is not None:
        check_capacity(packed, budget)
    return packed


def check_capacity(packed: PackedModel, budget: int | dict):
    """Raise :class:`CapacityError` naming bits needed and available if ``packed`` does not fit."""
    need = packed.memory_bits()
    if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool):
        if budget < 0:
            raise ValueError(f"a memory budget must be >= 0 bits, got {budget}")
        if need["total"] > budget:
            loaded = ", ".join(f"{m.label} {need[m.label]}" for m in LOADABLE)
            working = need["total"] - sum(need[m.label] for m in LOADABLE)
            raise CapacityError(f"model needs {need['total']} bits of on-chip memory with {packed.lanes} "
                                f"lanes ({loaded}, working memories {working}) but the budget has "
                                f"{int(budget)} bits available")
        return
    if not isinstance(budget, dict):
        raise TypeError(f"a memory budget is a number of bits or a dict of them, not {type(budget).__name__}")
    unknown = set(budget) - set(MEMORY_NAMES) - {"total"}
    if unknown:
        raise ValueError(f"unknown memories in budget: {sorted(unknown)}; known: {list(MEMORY_NAMES)} and total")
    over = [f"{k}: needs {need[k]} bits, {int(v)} bits available" for k, v in budget.items() if need[k] > v]
    if over:
        raise CapacityError(f"model does not fit the memory budget with {packed.lanes} lanes: " + "; ".join(over))


def _unpack_matrix(packed: PackedModel, name: str, row_base: int, rows: int, targets: int, gates: int) -> np.ndarray:
    """The ``[rows, gates * targets]`` matrix whose row pointers start at ``row_base``."""
    lay, P = packed.layout, packed.lanes
    M = np.zeros((rows, gates * targets), dtype=np.int64)
    for p in range(P):
        w = lay.word(MemoryId.WEIGHTS).unpack(packed.words(MemoryId.WEIGHTS, p))
        ptr = lay.word(MemoryId.ROW_PTR).unpack(packed.words(MemoryId.ROW_PTR, p)[row_base:row_base + rows])
        starts, lengths = ptr["start"], ptr["length"]
        entry = (np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)]) if rows
                 else np.zeros(0, dtype=np.int64)).astype(np.int64)
        row = np.repeat(np.arange(rows), lengths)
        if entry.size and entry.max() >= len(w["value"]):
            raise LayoutError(f"{name}, lane {p}: a row points past the lane's {len(w['value'])} weight entries")
        gate, local = w["gate"][entry], w["target"][entry]
        neuron = local * P + p
        if entry.size and (gate.max() >= gates or neuron.max() >= targets):
            raise LayoutError(f"{name}, lane {p}: a weight entry targets gate {int(gate.max())} or "
                              f"neuron {int(neuron.max())}, beyond the {gates} gates of {targets} neurons")
        M[row, gate * targets + neuron] = w["value"][entry]
    return M


def unpack(packed: PackedModel) -> QuantModel:
    """The model ``packed`` computes, with the z and r biases folded into ``bias_x`` as the
    hardware holds them: ``unpack(pack(m, P)) == m.fold_biases()``. :class:`LayoutError` if
    the words are not a model of this layout (e.g. a row pointing past the entries)."""
    lay, P = packed.layout, packed.lanes
    fmt = lay.formats
    layers = []
    for l, (spec, base) in enumerate(zip(lay.layers, lay.row_base)):
        I, H = spec.inputs, spec.hidden
        M = _unpack_matrix(packed, f"layer{l}", base, I + H, H, 3)
        bias_x, bias_h, theta = (np.zeros(3 * H, np.int64), np.zeros(3 * H, np.int64), np.zeros(H, np.int64))
        for p in range(P):
            n = lane_neurons(H, P, p)
            c = lay.word(MemoryId.CONSTS).unpack(
                packed.words(MemoryId.CONSTS, p)[lay.const_base[l]:lay.const_base[l] + len(n)])
            bias_x[GATE_Z * H + n], bias_x[GATE_R * H + n], bias_x[GATE_G * H + n] = c["init_z"], c["init_r"], c["init_ag"]
            bias_h[GATE_G * H + n] = c["init_hg"]
            theta[n] = c["theta"]
        src = fmt.source_frac(l)
        layers.append(QuantLayer(W=M[:I], R=M[I:], w_shift=tuple(spec.acc_frac - src - a for a in spec.input_align),
                                 r_shift=tuple(spec.acc_frac - fmt.state_frac - a for a in spec.recurrent_align),
                                 bias_x=bias_x, bias_h=bias_h, theta=theta))
    O = lay.outputs
    W = _unpack_matrix(packed, "readout", lay.readout_row_base, lay.hidden[-1], O, 1)
    bias = np.zeros(O, dtype=np.int64)
    for p in range(P):
        o = lane_neurons(O, P, p)
        bias[o] = lay.word(MemoryId.READOUT_BIAS).unpack(packed.words(MemoryId.READOUT_BIAS, p)[:len(o)])["bias"]
    readout = QuantReadout(W=W, shift=packed.readout_shift, bias=bias)
    return QuantModel(formats=fmt, layers=layers, readout=readout, meta=dict(packed.meta))
