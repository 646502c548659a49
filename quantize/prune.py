"""Gradual magnitude pruning (Zhu & Gupta, 2017) of the kernels, optionally balanced across lanes.

Two sparsity structures, the two that the core's weight memories can feed:

- ``"unstructured"``: any weight may be pruned. With ``lanes``, every row keeps the same number of
  weights in each lane's columns, so the lanes step through a row together (each entry carries
  its own target in every lane).
- ``"lane-block"``: weights are kept or pruned in blocks of ``lanes`` consecutive neurons of one
  gate, the P neurons at one local index of the P lanes (:mod:`quantize.lanes`); one entry then
  feeds all lanes with one shared target, and a wide weight memory gives a weight to every lane
  at one address.
- ``"lane-window"``: one entry gives every lane one weight inside a window of ``WINDOW`` consecutive
  local neurons of one gate, the window shared and the offset in it per lane; the pruning is
  balanced per window (each window keeps the same number of weights in every lane). With 4-bit
  weights an entry for 8 lanes is one 64-bit word (8 x (4 + 3) bits and an 8-bit window).

Masks live in each layer's ``kernel_mask`` / ``recurrent_kernel_mask`` buffers; the forward
multiplies weights by them, so pruned weights get no gradient and stay zero while the
remaining ones are fine-tuned.
"""

from __future__ import annotations

import math

import torch

from .egru import EGRUNet
from .lanes import WINDOW, check_lanes, lane_columns, lane_size

__all__ = ["STRUCTURES", "WINDOW", "check_sparsity", "check_structure", "magnitude_mask", "block_mask", "window_mask",
           "PruningSchedule", "apply_masks"]

STRUCTURES = ("unstructured", "lane-block", "lane-window")


def check_structure(structure, lanes: int | None) -> str:
    if structure not in STRUCTURES:
        raise ValueError(f"sparsity structure must be one of {', '.join(STRUCTURES)}, not {structure!r}")
    if structure != "unstructured" and lanes is None:
        raise ValueError(f"{structure} sparsity needs a lane count")
    return structure


def check_sparsity(sparsity, name: str = "weight sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"{name} must be a number, not {sparsity!r}")
    if not (0.0 <= float(sparsity) < 1.0) or math.isnan(sparsity):
        raise ValueError(f"{name} must be in [0, 1), got {sparsity}")
    return float(sparsity)


def _top_k_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Mask keeping the ``k`` largest entries of a 1-D tensor (ties: lower index first)."""
    mask = torch.zeros_like(values, dtype=torch.bool)
    if k > 0:
        # Stable sort on -|w| keeps the earlier index on ties, deterministically.
        order = torch.sort(-values, stable=True).indices[:k]
        mask[order] = True
    return mask


def magnitude_mask(w: torch.Tensor, sparsity: float, *, lanes: int | None = None, gates: int = 3) -> torch.Tensor:
    """Keep the largest-magnitude weights of ``w`` [rows, gates * H] at the given sparsity.

    With ``lanes``, every row keeps the same number of weights in each lane's columns
    (:func:`quantize.lanes.lane_columns`), so no lane waits for another on any event.
    """
    sparsity = check_sparsity(sparsity)
    mag = w.detach().abs().float()
    if lanes is None:
        k = int(round((1.0 - sparsity) * mag.numel()))
        return _top_k_mask(mag.reshape(-1), k).reshape(w.shape).to(w.dtype)
    H = w.shape[1] // gates
    lanes = check_lanes(lanes, H)
    rows = mag.shape[0]
    depth = gates * lane_size(H, lanes, 0)  # the largest lane's share of a row
    # sorted[p, j, k]: k-th largest magnitude of lane p in row j (zero-padded), with the
    # column it came from. Giving row j one more weight in every lane is worth
    # value[j, k] = sum_p sorted[p, j, k]; value is non-increasing in k, so taking the
    # best `budget` values over all (j, k) keeps a prefix of each row: the best
    # balanced mask with at most (1 - sparsity) of the weights.
    sorted_mag = torch.zeros(lanes, rows, depth)
    sorted_col = torch.full((lanes, rows, depth), -1, dtype=torch.long)
    for p in range(lanes):
        cols = torch.as_tensor(lane_columns(H, lanes, p, gates))
        m = mag[:, cols]
        order = torch.sort(-m, dim=1, stable=True).indices
        sorted_mag[p, :, :len(cols)] = torch.gather(m, 1, order)
        sorted_col[p, :, :len(cols)] = cols[order]
    smallest = gates * lane_size(H, lanes, lanes - 1)
    value = sorted_mag.sum(dim=0)[:, :smallest]  # a row can hold no more than the smallest lane
    budget = int(math.floor((1.0 - sparsity) * mag.numel() / lanes + 1e-9))
    take = _top_k_mask(value.reshape(-1), min(budget, value.numel())).reshape(value.shape)
    keep_per_row = take.sum(dim=1)
    mask = torch.zeros_like(mag, dtype=torch.bool)
    for j in range(rows):
        k = int(keep_per_row[j])
        if k:
            cols = sorted_col[:, j, :k].reshape(-1)
            mask[j, cols] = True
    return mask.to(w.dtype)


def block_mask(w: torch.Tensor, sparsity: float, *, lanes: int, gates: int = 3) -> torch.Tensor:
    """Keep the blocks of ``w`` [rows, gates * H] with the largest L1 norm at the given sparsity.

    A block is one row, one gate and one local index ``b``: the columns of neurons
    ``b * lanes .. b * lanes + lanes - 1`` (fewer in the last block when ``lanes`` does not divide
    H). A kept block keeps all its weights. The number of kept blocks is
    ``floor((1 - sparsity) * blocks)``, so the weight sparsity is the block sparsity (exactly, when
    ``lanes`` divides H)."""
    sparsity = check_sparsity(sparsity)
    lanes = check_lanes(lanes)
    mag = w.detach().abs().float()
    rows = mag.shape[0]
    H = w.shape[1] // gates
    nblocks = -(-H // lanes)
    pad = nblocks * lanes - H
    by_gate = mag.reshape(rows, gates, H)
    padded = torch.cat([by_gate, torch.zeros(rows, gates, pad)], dim=2)
    score = padded.reshape(rows, gates, nblocks, lanes).sum(dim=3)
    keep = int(math.floor((1.0 - sparsity) * score.numel() + 1e-9))
    kept = _top_k_mask(score.reshape(-1), keep).reshape(rows, gates, nblocks, 1)
    mask = kept.expand(rows, gates, nblocks, lanes).reshape(rows, gates, nblocks * lanes)[:, :, :H]
    return mask.reshape(w.shape).to(w.dtype)


def window_mask(w: torch.Tensor, sparsity: float, *, lanes: int, gates: int = 3) -> torch.Tensor:
    """Lane-window pruning of ``w`` [rows, gates * H]: window ``b`` of a gate holds the neurons
    ``b * WINDOW * lanes .. (b + 1) * WINDOW * lanes - 1`` (local indices ``b * WINDOW ..`` in every
    lane); each window keeps the same number of weights in every lane (the balanced
    :func:`magnitude_mask` with windows as its rows), so an entry feeds all lanes."""
    sparsity = check_sparsity(sparsity)
    lanes = check_lanes(lanes)
    rows, H = w.shape[0], w.shape[1] // gates
    span = WINDOW * lanes
    nwin = -(-H // span)
    pad = nwin * span - H
    by_gate = w.detach().reshape(rows, gates, H)
    padded = torch.cat([by_gate, torch.zeros(rows, gates, pad, dtype=w.dtype)], dim=2)
    windows = padded.reshape(rows * gates * nwin, span)
    # Padding columns are zero, so they are never kept before a real weight of the same lane;
    # the sparsity is over real weights: scale it so the budget counts them only.
    real = rows * gates * H
    keep = (1.0 - sparsity) * real / windows.numel()
    mask = magnitude_mask(windows, min(max(1.0 - keep, 0.0), 0.999999), lanes=lanes, gates=1)
    mask = mask.reshape(rows, gates, nwin * span)[:, :, :H]
    return mask.reshape(w.shape).to(w.dtype)


class PruningSchedule:
    """Cubic sparsity ramp from 0 to ``target`` between steps ``begin`` and ``end``:
    ``s(t) = target * (1 - (1 - (t - begin) / (end - begin))**3)``; masks are
    recomputed every ``every`` steps and held after ``end``."""

    def __init__(self, target: float, *, begin: int, end: int, every: int = 10,
                 lanes: int | None = None, readout_target: float = 0.0, structure: str = "unstructured"):
        self.target = check_sparsity(target, "target sparsity")
        self.structure = check_structure(structure, lanes)
        self.readout_target = check_sparsity(readout_target, "readout sparsity")
        if not 0 <= begin < end:
            raise ValueError(f"pruning needs 0 <= begin < end, got begin={begin}, end={end}")
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.begin, self.end, self.every, self.lanes = begin, end, every, lanes

    def ramp(self, step: int) -> float:
        """Fraction of the final sparsity reached at ``step`` (0 to 1)."""
        if step < self.begin:
            return 0.0
        progress = min(1.0, (step - self.begin) / (self.end - self.begin))
        return 1.0 - (1.0 - progress) ** 3

    def sparsity_at(self, step: int) -> float:
        return self.target * self.ramp(step)

    def step(self, net: EGRUNet, step: int) -> bool:
        """Update the masks if ``step`` is a pruning step; return whether it was."""
        if step < self.begin or step > self.end or ((step - self.begin) % self.every and step != self.end):
            return False
        apply_masks(net, self.sparsity_at(step), lanes=self.lanes,
                    readout_sparsity=self.readout_target * self.ramp(step), structure=self.structure)
        return True


def apply_masks(net: EGRUNet, sparsity: float, *, lanes: int | None = None, readout_sparsity: float = 0.0,
                structure: str = "unstructured"):
    """Set every layer's kernel and recurrent-kernel masks (and the readout's) by magnitude
    and zero the pruned weights, in the given sparsity structure."""
    check_structure(structure, lanes)
    blocks = structure == "lane-block"
    windows = structure == "lane-window"
    with torch.no_grad():
        if readout_sparsity:
            # Balanced over the lanes that own outputs (all of them unless O < P); lane-block:
            # blocks of P outputs.
            outputs = net.readout_weight.shape[1]
            if blocks:
                mask = block_mask(net.masked_readout(), readout_sparsity, gates=1, lanes=lanes)
            elif windows:
                mask = window_mask(net.masked_readout(), readout_sparsity, gates=1, lanes=lanes)
            else:
                mask = magnitude_mask(net.masked_readout(), readout_sparsity, gates=1,
                                      lanes=min(lanes, outputs) if lanes else None)
            net.readout_mask.copy_(mask)
            net.readout_weight.mul_(mask)
        for layer in net.layers:
            for wname, mname in (("kernel", "kernel_mask"), ("recurrent_kernel", "recurrent_kernel_mask")):
                w = getattr(layer, wname)
                if blocks:
                    mask = block_mask(w * getattr(layer, mname), sparsity, lanes=lanes)
                elif windows:
                    mask = window_mask(w * getattr(layer, mname), sparsity, lanes=lanes)
                else:
                    mask = magnitude_mask(w * getattr(layer, mname), sparsity,
                                          lanes=lanes if lanes and lanes <= layer.hidden_size else None)
                getattr(layer, mname).copy_(mask)
                w.mul_(mask)
