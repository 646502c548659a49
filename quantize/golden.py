"""The golden model: the integer arithmetic of a quantized EGRU, bit for bit.

NumPy, integers only (int64), vectorised over the batch. The hardware and the
quantization-aware PyTorch forward must produce exactly these integers.

Per layer ``l`` and step ``t`` (``acc`` = the layer's accumulator grid, see
:meth:`QuantModel.acc_frac`; ``<<`` aligns a product grid to it exactly)::

    acc_z  = bx_z + bh_z + sum_j (x_j W[j,z] << ax_z) + sum_j (y_j R[j,z] << ay_z)
    acc_r  = likewise for r
    acc_ag = bx_g + sum_j (x_j W[j,g] << ax_g)          # input part of the candidate
    acc_hg = bh_g + sum_j (y_j R[j,g] << ay_g)          # recurrent part, kept apart
    z = SIG[idx(acc_z)]   r = SIG[idx(acc_r)]
    pre_g = acc_ag + round_shift(r * acc_hg, sigmoid_frac)
    g = TANH[idx(pre_g)]
    c~ = sat(round_shift(z * c + (ONE - z) * (g << g_align), sigmoid_frac), state_bits)
    o = c~ > theta;   y = o ? c~ : 0;   c = c~ - o * theta

and the readout ``logits_t = b + sum_j y_j Wo[j]`` on the grid ``2**-(state_frac + shift)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import formats as F
from .model import QuantModel

__all__ = ["GoldenTrace", "run", "neuron_update", "quantize_input", "accuracy"]


@dataclass
class GoldenTrace:
    """Everything the golden model computed. Arrays are [T, N, *] unless noted.

    ``y[l]`` event values (0 where silent), ``c[l]`` cell state after the reset,
    ``candidate[l]`` ``c~`` before the threshold test, ``events[l]`` bool;
    ``logits`` [T, N, O]; ``effective_macs`` [T, N, L + 1] (layers, then the readout):
    pairs of a stored non-zero weight and a non-zero input or event;
    ``dense_macs`` [L + 1] per step; ``acc_peak[l]``: largest |accumulator| seen, per
    kind (``z``, ``r``, ``ag``, ``hg``, ``pre_g``), to check against the bounds;
    ``internals[l]`` (only with ``run(..., internals=True)``): dict of [T, N, H] arrays
    ``acc_z``, ``acc_r``, ``acc_ag``, ``acc_hg``, ``z``, ``r``, ``pre_g``, ``g``.
    """
    logits: np.ndarray
    y: list
    c: list
    candidate: list
    events: list
    effective_macs: np.ndarray
    dense_macs: np.ndarray
    acc_peak: list
    internals: list | None = None

    @property
    def steps(self) -> int:
        return self.logits.shape[0]


def neuron_update(fmt: F.NumberFormats, acc_frac: int, acc_z, acc_r, acc_ag, acc_hg, c, theta, *,
                  sig: np.ndarray | None = None, tanh: np.ndarray | None = None) -> dict:
    """One step of the neuron update from the accumulators (the lines after ``acc_hg`` in the
    module docstring), elementwise on integer arrays: returns ``z``, ``r``, ``pre_g``, ``g``,
    ``candidate`` (c~), ``fire``, ``y`` and the new ``c``. ``run`` uses it for every step, and the
    hardware's update unit is tested against it directly."""
    sig = F.sigmoid_table(fmt) if sig is None else sig
    tanh = F.tanh_table(fmt) if tanh is None else tanh
    one = fmt.sigmoid_one
    z = sig[F.lut_index(acc_z, acc_frac, fmt.sigmoid_lut_bits, fmt.sigmoid_lut_frac)]
    r = sig[F.lut_index(acc_r, acc_frac, fmt.sigmoid_lut_bits, fmt.sigmoid_lut_frac)]
    pre_g = acc_ag + F.round_shift(r * acc_hg, fmt.sigmoid_frac)
    g = tanh[F.lut_index(pre_g, acc_frac, fmt.tanh_lut_bits, fmt.tanh_lut_frac)]
    cand = F.round_shift(z * c + (one - z) * F.align(g, fmt.g_align), fmt.sigmoid_frac)
    cand = F.saturate(cand, fmt.state_bits)
    o = cand > theta
    return {"z": z, "r": r, "pre_g": pre_g, "g": g, "candidate": cand, "fire": o,
            "y": np.where(o, cand, 0), "c": cand - np.where(o, theta, 0)}


def quantize_input(model: QuantModel, x: np.ndarray) -> np.ndarray:
    """Float inputs -> layer-0 integers: ``sat(floor(x * 2**input_frac + 1/2), input_bits)``."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("inputs hold NaN or Inf values")
    fmt = model.formats
    q = np.floor(x * 2.0 ** fmt.input_frac + 0.5)
    return np.clip(q, fmt.input_min, fmt.input_max).astype(np.int64)


def run(model: QuantModel, x: np.ndarray, *, internals: bool = False) -> GoldenTrace:
    """Run the integer model on layer-0 integer inputs ``x`` [T, N, I] (see :func:`quantize_input`).

    ``internals=True`` also records every intermediate integer (for debugging and docs)."""
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise TypeError(f"golden.run takes integer inputs (see quantize_input), not {x.dtype}")
    if x.ndim != 3 or x.shape[2] != model.input_size:
        raise ValueError(f"expected inputs of shape [T, N, {model.input_size}], got {list(x.shape)}")
    fmt = model.formats
    if x.size and (x.min() < fmt.input_min or x.max() > fmt.input_max):
        raise ValueError(f"inputs must lie in [{fmt.input_min}, {fmt.input_max}]")
    x = x.astype(np.int64)
    T, N = x.shape[0], x.shape[1]
    sig, tanh = model.sigmoid_lut, model.tanh_lut
    L = len(model.layers)
    macs = np.zeros((T, N, L + 1), dtype=np.int64)
    ys, cs, cands, evs, peaks, inner = [], [], [], [], [], []
    names = ("acc_z", "acc_r", "acc_ag", "acc_hg", "z", "r", "pre_g", "g")
    src = x
    for l, layer in enumerate(model.layers):
        H = layer.hidden_size
        acc_frac = model.acc_frac(l)
        ax, ay = model.input_align(l), model.recurrent_align(l)
        Wg = [layer.W[:, k * H:(k + 1) * H] for k in range(3)]
        Rg = [layer.R[:, k * H:(k + 1) * H] for k in range(3)]
        bx = [layer.bias_x[k * H:(k + 1) * H] for k in range(3)]
        bh = [layer.bias_h[k * H:(k + 1) * H] for k in range(3)]
        nnz_w = np.count_nonzero(layer.W, axis=1)
        nnz_r = np.count_nonzero(layer.R, axis=1)
        # Input contributions of all steps at once (they do not depend on the state).
        xin = [F.align(src @ Wg[k], ax[k]) for k in range(3)]
        macs[:, :, l] += (src != 0).astype(np.int64) @ nnz_w
        y = np.zeros((N, H), dtype=np.int64)
        c = np.zeros((N, H), dtype=np.int64)
        out_y = np.zeros((T, N, H), dtype=np.int64)
        out_c = np.zeros_like(out_y)
        out_cand = np.zeros_like(out_y)
        out_o = np.zeros((T, N, H), dtype=bool)
        peak = dict.fromkeys(("z", "r", "ag", "hg", "pre_g"), 0)
        rec_in = {k: np.zeros((T, N, H), dtype=np.int64) for k in names} if internals else None
        for t in range(T):
            macs[t, :, l] += (y != 0).astype(np.int64) @ nnz_r
            rec = [F.align(y @ Rg[k], ay[k]) for k in range(3)]
            acc_z = bx[0] + bh[0] + xin[0][t] + rec[0]
            acc_r = bx[1] + bh[1] + xin[1][t] + rec[1]
            acc_ag = bx[2] + xin[2][t]
            acc_hg = bh[2] + rec[2]
            u = neuron_update(fmt, acc_frac, acc_z, acc_r, acc_ag, acc_hg, c, layer.theta, sig=sig, tanh=tanh)
            z, r, pre_g, g, cand, o, y, c = (u[k] for k in ("z", "r", "pre_g", "g", "candidate", "fire", "y", "c"))
            out_y[t], out_c[t], out_cand[t], out_o[t] = y, c, cand, o
            if internals:
                for k, v in zip(names, (acc_z, acc_r, acc_ag, acc_hg, z, r, pre_g, g)):
                    rec_in[k][t] = v
            for k, v in (("z", acc_z), ("r", acc_r), ("ag", acc_ag), ("hg", acc_hg), ("pre_g", pre_g)):
                if v.size:
                    peak[k] = max(peak[k], int(np.abs(v).max()))
        ys.append(out_y)
        cs.append(out_c)
        cands.append(out_cand)
        evs.append(out_o)
        peaks.append(peak)
        inner.append(rec_in)
        src = out_y
    ro = model.readout
    logits = src @ ro.W + ro.bias
    macs[:, :, L] = (src != 0).astype(np.int64) @ np.count_nonzero(ro.W, axis=1)
    return GoldenTrace(logits=logits, y=ys, c=cs, candidate=cands, events=evs, effective_macs=macs,
                       dense_macs=np.array(model.dense_macs_per_step(), dtype=np.int64), acc_peak=peaks,
                       internals=inner if internals else None)


def accuracy(trace: GoldenTrace, labels: np.ndarray) -> float:
    """Classification accuracy from the logits of the last step (ties: lowest class)."""
    pred = trace.logits[-1].argmax(axis=-1)
    return float(np.mean(pred == np.asarray(labels)))
