"""How neurons are dealt to the P hardware lanes: one definition for pruning, packer and hardware.

Neuron ``n`` of a layer belongs to lane ``n % P`` at local index ``n // P`` (interleaved,
so lane sizes differ by at most one and balanced pruning can give every lane the same
number of weights per row).
"""

from __future__ import annotations

import numpy as np

__all__ = ["WINDOW", "check_lanes", "lane_of", "local_index", "lane_neurons", "lane_size", "lane_columns"]

#: Local neurons per lane in a lane-window (pruning structure and shared-row packing): with
#: 4-bit weights an entry of 8 lanes, 8 x (4 + 3) bits, fits one 64-bit word.
WINDOW = 8


def check_lanes(lanes, hidden_size: int | None = None) -> int:
    if not isinstance(lanes, (int, np.integer)) or isinstance(lanes, bool):
        raise TypeError(f"lanes must be an integer, not {lanes!r}")
    if lanes < 1:
        raise ValueError(f"lanes must be at least 1, not {lanes}")
    if hidden_size is not None and lanes > hidden_size:
        raise ValueError(f"{lanes} lanes is more than the layer's {hidden_size} neurons")
    return int(lanes)


def lane_of(n, lanes: int):
    return n % lanes


def local_index(n, lanes: int):
    return n // lanes


def lane_size(hidden_size: int, lanes: int, lane: int) -> int:
    """Neurons owned by ``lane``."""
    return (hidden_size - lane + lanes - 1) // lanes


def lane_neurons(hidden_size: int, lanes: int, lane: int) -> np.ndarray:
    return np.arange(lane, hidden_size, lanes)


def lane_columns(targets: int, lanes: int, lane: int, gates: int = 3) -> np.ndarray:
    """Columns of a [*, gates * targets] matrix that target ``lane``'s neurons (every gate):
    a layer's kernels have 3 gates, the readout 1."""
    n = lane_neurons(targets, lanes, lane)
    return np.concatenate([n + k * targets for k in range(gates)])
