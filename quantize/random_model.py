"""Random quantized models for verification: integer models built directly, with knobs for
the corners a hardware test must reach.

Weights are uniform int8 values at a chosen sparsity (optionally lane-balanced), with
per-gate shifts that keep pre-activations in the tables' interesting range; thresholds
follow a *threshold mode*:

* ``random``: uniform in [0, 0.5] (state units);
* ``zero``: 0, so every positive candidate fires;
* ``unreachable``: the largest state value, above every reachable candidate: a silent layer;
* ``fire``: 0 with a strongly positive candidate bias and z pushed to 0: a layer firing at
  (nearly) every neuron and step;
* ``mixed``: each neuron draws one of the above.

``fine=True`` picks number formats whose tables are indexed at accumulator resolution,
so that every rounding LSB shows in the outputs.
"""

from __future__ import annotations

import math

import numpy as np

from .formats import NumberFormats
from .lanes import check_lanes, lane_columns
from .model import QuantLayer, QuantModel, QuantReadout

__all__ = ["random_model", "THRESHOLD_MODES", "random_inputs"]

THRESHOLD_MODES = ("random", "zero", "unreachable", "fire", "mixed")

# Fine formats: the accumulator grid of every layer equals the tanh table's index grid
# (2**-12), so a one-LSB difference anywhere before the table moves the table index.
FINE_FORMATS = dict(state_bits=16, state_frac=12, sigmoid_frac=10, tanh_frac=11,
                    sigmoid_lut_bits=14, sigmoid_lut_frac=10, tanh_lut_bits=14, tanh_lut_frac=12)
FINE_WEIGHT_RANGE = 3


def _sparse_weights(rng, rows: int, cols: int, sparsity: float, lanes: int | None, fmt: NumberFormats,
                    limit: int | None = None):
    lo, hi = (-limit, limit) if limit else (fmt.weight_min, fmt.weight_max)
    W = rng.integers(lo, hi + 1, size=(rows, cols))
    W[W == 0] = 1
    if sparsity <= 0.0:
        return W
    if lanes is None or cols % 3:
        keep = rng.random((rows, cols)) >= sparsity
        return np.where(keep, W, 0)
    H = cols // 3
    mask = np.zeros((rows, cols), dtype=bool)
    per_lane = int(math.floor((1.0 - sparsity) * cols / lanes))
    smallest = len(lane_columns(H, lanes, lanes - 1))
    per_lane = min(per_lane, smallest)
    for j in range(rows):
        for p in range(lanes):
            cols_p = lane_columns(H, lanes, p)
            mask[j, rng.choice(cols_p, size=per_lane, replace=False)] = True
    return np.where(mask, W, 0)


def _shift_for(fan_in: float, target_std: float, fmt: NumberFormats) -> int:
    # Uniform int8 weights have std ~ 2**(bits-1) / sqrt(3); choose the scale that gives
    # pre-activation contributions of about target_std from fan_in active sources.
    w_std = (1 << (fmt.weight_bits - 1)) / math.sqrt(3.0)
    want = target_std / math.sqrt(max(fan_in, 1.0))
    return int(np.clip(round(math.log2(w_std / want)), -8, 20))


def random_model(*, inputs: int, hidden: list[int], outputs: int, weight_sparsity: float = 0.5,
                 lanes: int | None = None, seed: int = 0, threshold_mode: str = "mixed",
                 fine: bool = False, input_frac: int = 6) -> QuantModel:
    """A random :class:`QuantModel` (see module docstring). ``lanes`` balances the weights."""
    for name, v in (("inputs", inputs), ("outputs", outputs)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not hidden or any((not isinstance(h, int)) or h < 1 for h in hidden):
        raise ValueError(f"hidden must be a list of positive integers, got {hidden!r}")
    if not (0.0 <= weight_sparsity < 1.0):
        raise ValueError(f"weight sparsity must be in [0, 1), got {weight_sparsity}")
    if threshold_mode not in THRESHOLD_MODES:
        raise ValueError(f"threshold mode must be one of {', '.join(THRESHOLD_MODES)}, got {threshold_mode!r}")
    if lanes is not None:
        for l, H in enumerate(hidden):
            check_lanes(lanes, H)
    rng = np.random.default_rng(seed)
    fmt = NumberFormats(input_frac=input_frac, **(FINE_FORMATS if fine else {}))
    layers = []
    I = inputs
    density = 1.0 - weight_sparsity
    for l, H in enumerate(hidden):
        limit = FINE_WEIGHT_RANGE if fine else None
        W = _sparse_weights(rng, I, 3 * H, weight_sparsity, lanes, fmt, limit)
        R = _sparse_weights(rng, H, 3 * H, weight_sparsity, lanes, fmt, limit)
        src_frac = fmt.source_frac(l)
        if fine:
            w_shift = (fmt.tanh_lut_frac - src_frac,) * 3
            r_shift = (fmt.tanh_lut_frac - fmt.state_frac,) * 3
        else:
            # Inputs are ~1 in magnitude; events ~0.5 and present for a part of the neurons.
            w_shift = tuple(_shift_for(I * density * 0.5, 1.5, fmt) for _ in range(3))
            r_shift = tuple(_shift_for(H * density * 0.3, 1.0, fmt) for _ in range(3))
        acc_frac = max(max(src_frac + s for s in w_shift), max(fmt.state_frac + s for s in r_shift))
        mode = threshold_mode
        modes = rng.choice(THRESHOLD_MODES[:4], size=H) if mode == "mixed" else np.full(H, mode)
        theta = np.zeros(H, dtype=np.int64)
        one = 1 << fmt.state_frac
        acc_one = 1 << acc_frac
        bias_x = np.round(rng.normal(0, 0.5, 3 * H) * acc_one).astype(np.int64)
        bias_h = np.round(rng.normal(0, 0.3, 3 * H) * acc_one).astype(np.int64)
        for n in range(H):
            if modes[n] == "random":
                theta[n] = int(rng.integers(0, one // 2 + 1))
            elif modes[n] == "unreachable":
                theta[n] = fmt.state_max
            elif modes[n] == "fire":
                theta[n] = 0
                bias_x[n] = -6 * acc_one           # z ~ 0: the candidate takes g
                bias_x[2 * H + n] = 3 * acc_one    # g ~ tanh(3) > 0
        layers.append(QuantLayer(W=W, R=R, w_shift=w_shift, r_shift=r_shift,
                                 bias_x=bias_x, bias_h=bias_h, theta=theta))
        I = H
    Wo = _sparse_weights(rng, I, outputs, weight_sparsity, None, fmt)
    o_shift = _shift_for(I * density * 0.3, 1.0, fmt)
    bias = np.round(rng.normal(0, 0.5, outputs) * (1 << (fmt.state_frac + o_shift))).astype(np.int64)
    meta = {"task": "random", "seed": seed, "threshold_mode": threshold_mode, "fine": fine,
            "weight_sparsity": weight_sparsity, "balanced_lanes": lanes}
    # On core v2's bias grids, as the quantizer puts them.
    return QuantModel(formats=fmt, layers=layers, readout=QuantReadout(W=Wo, shift=o_shift, bias=bias),
                      meta=meta).on_bias_grid()


def random_inputs(model: QuantModel, *, steps: int, sequences: int = 1, seed: int = 0,
                  zero_fraction: float = 0.3) -> np.ndarray:
    """Random layer-0 integer inputs [sequences, steps, I], with a fraction of exact zeros."""
    rng = np.random.default_rng(seed)
    fmt = model.formats
    x = rng.normal(0, 1.0, (sequences, steps, model.input_size)) * (1 << fmt.input_frac)
    x[rng.random(x.shape) < zero_fraction] = 0
    return np.clip(np.round(x), fmt.input_min, fmt.input_max).astype(np.int64)
