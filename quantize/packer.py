"""The packer: a quantized model as the memory images of a P-lane accelerator, and back.

Per layer and lane ``p`` (owning neurons ``n`` with ``n % P == p``, see :mod:`quantize.lanes`):

* **weight memory**: the stored non-zero weights whose target neuron the lane owns,
  grouped by *source row*: rows ``0 .. I-1`` are the layer's inputs (kernel ``W``),
  rows ``I .. I+H-1`` its own neurons' events (recurrent kernel ``R``). Within a row,
  entries are in column order (gate-major). One word per entry::

      word = value & (2**weight_bits - 1)              bits [0, weight_bits)
           | gate << weight_bits                       2 bits: 0 = z, 1 = r, 2 = g
           | local_target << (weight_bits + 2)         target_bits: neuron n // P

* **row-pointer memory**: one word per source row, read once per event::

      word = start | length << addr_bits               start, length in entries

* **neuron constants**: per local neuron, ``bias_x`` and ``bias_h`` (3 each, on the
  layer's accumulator grid) and ``theta`` (state format).

The readout has the same layout with output ``o`` in lane ``o % P`` and gate 0. The
sigmoid and tanh tables and every shift and width travel in the image too.
``unpack(pack(m, P)) == m`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import os

import numpy as np

from . import formats as F
from .formats import NumberFormats
from .lanes import check_lanes, lane_neurons, lane_size
from .model import QuantLayer, QuantModel, QuantReadout

__all__ = ["LaneImage", "MatrixImage", "PackedModel", "CapacityError", "pack", "unpack",
           "check_capacity", "save_images", "MEMORY_KINDS"]

#: Memory kinds in :meth:`PackedModel.memory_bits` and in a budget.
MEMORY_KINDS = ("weights", "row_pointers", "neuron_constants", "tables")


class CapacityError(ValueError):
    """The packed model does not fit the memory budget."""


@dataclass
class LaneImage:
    """One lane's memories for one matrix (a layer's W and R together, or the readout)."""
    weights: np.ndarray                 # uint64 [entries]
    row_ptr: np.ndarray                 # uint64 [rows]
    bias_x: np.ndarray | None = None    # int64 [local, 3]; None for the readout
    bias_h: np.ndarray | None = None    # int64 [local, 3] (readout: bias [local, 1] here)
    theta: np.ndarray | None = None     # int64 [local]


@dataclass
class MatrixImage:
    """Memory images of one layer (or the readout) for all lanes, with the word formats."""
    rows: int                 # source rows: I + H for a layer, H for the readout
    input_rows: int           # rows fed by the layer input (I); the readout: 0
    targets: int              # neurons (H) or outputs (O)
    target_bits: int
    addr_bits: int
    len_bits: int
    weight_bits: int
    lanes: list[LaneImage]

    @property
    def depth(self) -> int:
        """Entries of the fullest lane: the depth every lane's weight memory needs."""
        return max((len(l.weights) for l in self.lanes), default=0)

    @property
    def weight_word_bits(self) -> int:
        return self.weight_bits + 2 + self.target_bits

    @property
    def row_ptr_word_bits(self) -> int:
        return self.addr_bits + self.len_bits

    def row_lengths(self) -> np.ndarray:
        """[lanes, rows] entries per lane and source row."""
        return np.stack([(l.row_ptr >> np.uint64(self.addr_bits)).astype(np.int64) for l in self.lanes])


@dataclass
class PackedModel:
    """Memory images for ``lanes`` lanes plus every constant the hardware needs."""
    formats: NumberFormats
    lanes: int
    layers: list[MatrixImage]
    readout: MatrixImage
    shifts: list[dict]               # per layer: {"w": (3,), "r": (3,)}
    readout_shift: int
    sigmoid_lut: np.ndarray
    tanh_lut: np.ndarray
    meta: dict = field(default_factory=dict)
    dense: bool = False               # every weight stored, zeros included

    def memory_bits(self) -> dict:
        """Bits of on-chip memory per kind, with every lane's memory as deep as the fullest."""
        fmt = self.formats
        bits = dict.fromkeys(MEMORY_KINDS, 0)
        for img in self.layers + [self.readout]:
            bits["weights"] += self.lanes * img.depth * img.weight_word_bits
            bits["row_pointers"] += self.lanes * img.rows * img.row_ptr_word_bits
        model = unpack(self)
        for l, img in enumerate(self.layers):
            local = lane_size(img.targets, self.lanes, 0)
            acc_bits = max(model.layer_bounds(l).bits().values())
            bits["neuron_constants"] += self.lanes * local * (6 * acc_bits + fmt.state_bits)
        ro_local = lane_size(self.readout.targets, self.lanes, 0)
        bits["neuron_constants"] += self.lanes * ro_local * F.signed_bits_for(model.readout_bound())
        bits["tables"] = len(self.sigmoid_lut) * fmt.sigmoid_value_bits + len(self.tanh_lut) * fmt.tanh_value_bits
        bits["total"] = sum(bits[k] for k in MEMORY_KINDS)
        return bits


    def summary(self) -> dict:
        """Word formats, depths and bits per memory, as JSON-ready data."""
        def matrix(img: MatrixImage) -> dict:
            return {"rows": img.rows, "input_rows": img.input_rows, "targets": img.targets,
                    "depth": img.depth, "entries_per_lane": [len(l.weights) for l in img.lanes],
                    "weight_word_bits": img.weight_word_bits, "target_bits": img.target_bits,
                    "row_ptr_word_bits": img.row_ptr_word_bits, "addr_bits": img.addr_bits,
                    "len_bits": img.len_bits}
        return {"lanes": self.lanes, "formats": self.formats.to_dict(),
                "layers": [matrix(img) for img in self.layers], "readout": matrix(self.readout),
                "memory_bits": self.memory_bits()}


def save_images(packed: PackedModel, path: str):
    """Write every memory image as arrays named ``layer{l}.lane{p}.{memory}`` (``.npz``)."""
    arrays = {"sigmoid_lut": packed.sigmoid_lut, "tanh_lut": packed.tanh_lut}
    for name, img in [(f"layer{l}", img) for l, img in enumerate(packed.layers)] + [("readout", packed.readout)]:
        for p, lane in enumerate(img.lanes):
            for k in ("weights", "row_ptr", "bias_x", "bias_h", "theta"):
                v = getattr(lane, k)
                if v is not None:
                    arrays[f"{name}.lane{p}.{k}"] = v
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def _field_bits(n: int) -> int:
    return F.unsigned_bits_for(max(n - 1, 0))


def _pack_matrix(M: np.ndarray, input_rows: int, gates: int, lanes: int, fmt: NumberFormats,
                 bias_x=None, bias_h=None, theta=None, dense: bool = False) -> MatrixImage:
    rows, cols = M.shape
    targets = cols // gates
    target_bits = _field_bits(max(lane_size(targets, lanes, 0), 1))
    per_lane = []
    max_entries = 0
    images = []
    wmask = (1 << fmt.weight_bits) - 1
    for p in range(lanes):
        neurons = lane_neurons(targets, lanes, p)
        # Columns of this lane in gate-major order: gate k of local neuron i is k*targets + neurons[i].
        cols_p = np.concatenate([neurons + k * targets for k in range(gates)]) if len(neurons) else \
            np.zeros(0, dtype=np.int64)
        gate_of = np.repeat(np.arange(gates), len(neurons))
        local_of = np.tile(np.arange(len(neurons)), gates)
        order = np.argsort(cols_p, kind="stable")
        cols_p, gate_of, local_of = cols_p[order], gate_of[order], local_of[order]
        sub = M[:, cols_p]
        # Row-major: grouped by row, column order within. Dense images store zeros too.
        r_idx, c_idx = np.nonzero(np.ones_like(sub) if dense else sub)
        values = sub[r_idx, c_idx]
        words = (values.astype(np.int64) & wmask).astype(np.uint64) \
            | (gate_of[c_idx].astype(np.uint64) << np.uint64(fmt.weight_bits)) \
            | (local_of[c_idx].astype(np.uint64) << np.uint64(fmt.weight_bits + 2))
        lengths = np.bincount(r_idx, minlength=rows).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        per_lane.append((words, starts, lengths, neurons))
        max_entries = max(max_entries, len(words))
    # A start may equal the entry count (an empty row after the last entry), so the
    # field holds 0 .. entries inclusive.
    addr_bits = F.unsigned_bits_for(max_entries)
    len_bits = F.unsigned_bits_for(max((int(x[2].max()) if len(x[2]) else 0) for x in per_lane))
    for words, starts, lengths, neurons in per_lane:
        ptr = starts.astype(np.uint64) | (lengths.astype(np.uint64) << np.uint64(addr_bits))
        img = LaneImage(weights=words, row_ptr=ptr)
        if bias_x is not None:
            img.bias_x = np.stack([bias_x[k * targets + neurons] for k in range(3)], axis=1)
            img.bias_h = np.stack([bias_h[k * targets + neurons] for k in range(3)], axis=1)
            img.theta = theta[neurons].copy()
        elif bias_h is not None:
            img.bias_h = bias_h[neurons].reshape(-1, 1).copy()
        images.append(img)
    return MatrixImage(rows=rows, input_rows=input_rows, targets=targets, target_bits=target_bits,
                       addr_bits=addr_bits, len_bits=len_bits, weight_bits=fmt.weight_bits, lanes=images)


def pack(model: QuantModel, lanes: int, *, budget: int | dict | None = None, dense: bool = False) -> PackedModel:
    """Lay ``model`` out for ``lanes`` lanes; check it against ``budget`` if one is given.

    ``dense=True`` stores every weight, zeros included (the dense baseline's images).

    ``budget``: total bits (int) or bits per memory kind (dict over :data:`MEMORY_KINDS`).
    Raises :class:`CapacityError` when the model does not fit.
    """
    if not isinstance(model, QuantModel):
        raise TypeError(f"pack takes a QuantModel, not {type(model).__name__}")
    lanes = check_lanes(lanes)
    for l, H in enumerate(model.hidden_sizes):
        if lanes > H:
            raise ValueError(f"{lanes} lanes is more than layer{l}'s {H} neurons")
    fmt = model.formats
    layers = []
    for layer in model.layers:
        M = np.concatenate([layer.W, layer.R], axis=0)
        layers.append(_pack_matrix(M, layer.input_size, 3, lanes, fmt, layer.bias_x, layer.bias_h, layer.theta,
                                   dense=dense))
    ro = model.readout
    readout = _pack_matrix(ro.W, 0, 1, lanes, fmt, bias_h=ro.bias, dense=dense)
    packed = PackedModel(formats=fmt, lanes=lanes, layers=layers, readout=readout,
                         shifts=[{"w": tuple(l.w_shift), "r": tuple(l.r_shift)} for l in model.layers],
                         readout_shift=ro.shift, sigmoid_lut=model.sigmoid_lut, tanh_lut=model.tanh_lut,
                         meta=dict(model.meta), dense=bool(dense))
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
            detail = ", ".join(f"{k} {need[k]}" for k in MEMORY_KINDS)
            raise CapacityError(f"model needs {need['total']} bits of on-chip memory with {packed.lanes} "
                                f"lanes ({detail}) but the budget has {int(budget)} bits available")
        return
    if not isinstance(budget, dict):
        raise TypeError(f"a memory budget is a number of bits or a dict of them, not {type(budget).__name__}")
    unknown = set(budget) - set(MEMORY_KINDS) - {"total"}
    if unknown:
        raise ValueError(f"unknown memory kinds in budget: {sorted(unknown)}; known: {list(MEMORY_KINDS)}")
    over = [f"{k}: needs {need[k]} bits, {int(v)} bits available" for k, v in budget.items() if need[k] > v]
    if over:
        raise CapacityError(f"model does not fit the memory budget with {packed.lanes} lanes: " + "; ".join(over))


def _unpack_matrix(img: MatrixImage, gates: int, lanes: int) -> np.ndarray:
    M = np.zeros((img.rows, gates * img.targets), dtype=np.int64)
    wb = img.weight_bits
    for p, lane in enumerate(img.lanes):
        w = lane.weights.astype(np.uint64)
        raw = (w & np.uint64((1 << wb) - 1)).astype(np.int64)
        value = np.where(raw >= (1 << (wb - 1)), raw - (1 << wb), raw)
        gate = ((w >> np.uint64(wb)) & np.uint64(3)).astype(np.int64)
        local = (w >> np.uint64(wb + 2)).astype(np.int64)
        starts = (lane.row_ptr & np.uint64((1 << img.addr_bits) - 1)).astype(np.int64)
        lengths = (lane.row_ptr >> np.uint64(img.addr_bits)).astype(np.int64)
        rows = np.repeat(np.arange(img.rows), lengths)
        entry = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)]) if len(lengths) else \
            np.zeros(0, dtype=np.int64)
        cols = gate[entry] * img.targets + local[entry] * lanes + p
        M[rows, cols] = value[entry]
    return M


def unpack(packed: PackedModel) -> QuantModel:
    """The :class:`QuantModel` that ``packed`` holds (exact inverse of :func:`pack`)."""
    P = packed.lanes
    layers = []
    for img, shifts in zip(packed.layers, packed.shifts):
        M = _unpack_matrix(img, 3, P)
        H = img.targets
        bias_x = np.zeros(3 * H, dtype=np.int64)
        bias_h = np.zeros(3 * H, dtype=np.int64)
        theta = np.zeros(H, dtype=np.int64)
        for p, lane in enumerate(img.lanes):
            n = lane_neurons(H, P, p)
            for k in range(3):
                bias_x[k * H + n] = lane.bias_x[:, k]
                bias_h[k * H + n] = lane.bias_h[:, k]
            theta[n] = lane.theta
        layers.append(QuantLayer(W=M[:img.input_rows], R=M[img.input_rows:], w_shift=tuple(shifts["w"]),
                                 r_shift=tuple(shifts["r"]), bias_x=bias_x, bias_h=bias_h, theta=theta))
    ro = packed.readout
    W = _unpack_matrix(ro, 1, P)
    bias = np.zeros(ro.targets, dtype=np.int64)
    for p, lane in enumerate(ro.lanes):
        bias[lane_neurons(ro.targets, P, p)] = lane.bias_h[:, 0]
    readout = QuantReadout(W=W, shift=packed.readout_shift, bias=bias)
    return QuantModel(formats=packed.formats, layers=layers, readout=readout, meta=dict(packed.meta))
