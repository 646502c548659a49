"""Export a quantization-aware :class:`~quantize.egru.EGRUNet` to a :class:`QuantModel`.

The integers written here are the ones the quant forward of :mod:`quantize.egru` computes
with, by the same rounding functions, so ``golden.run(export(net))`` equals the quant forward.
"""

from __future__ import annotations

import numpy as np
import torch

from . import formats as F
from .egru import EGRUNet
from .formats import NumberFormats
from .model import QuantLayer, QuantModel, QuantReadout

__all__ = ["export", "quant_forward_ints", "choose_input_frac"]


def _ints(t: torch.Tensor, frac: int) -> np.ndarray:
    """A float64 tensor on the ``2**-frac`` grid as exact integers."""
    v = t.detach().double() * 2.0 ** frac
    out = torch.round(v)
    if not torch.equal(out, v):
        raise AssertionError("value is not on its integer grid")
    return out.to(torch.int64).numpy()


def choose_input_frac(max_abs_input: float, input_bits: int = 8) -> int:
    """Input fraction bits so that the largest input magnitude fits ``input_bits``."""
    return F.power_of_two_shift(float(max_abs_input), input_bits)


def export(net: EGRUNet, formats: NumberFormats, meta: dict | None = None) -> QuantModel:
    """Integers of ``net``'s quant forward under ``formats``."""
    for name, p in net.named_parameters():
        if not torch.isfinite(p).all():
            raise ValueError(f"parameter {name} holds NaN or Inf values")
    layers = []
    with torch.no_grad():
        for l, layer in enumerate(net.layers):
            q = layer.quant_params(formats, l)
            H = layer.hidden_size
            w_scale = torch.tensor([2.0 ** s for s in q["w_shift"] for _ in range(H)], dtype=torch.float64)
            r_scale = torch.tensor([2.0 ** s for s in q["r_shift"] for _ in range(H)], dtype=torch.float64)
            layers.append(QuantLayer(
                W=_ints(q["W"] * w_scale, 0), R=_ints(q["R"] * r_scale, 0),
                w_shift=tuple(q["w_shift"]), r_shift=tuple(q["r_shift"]),
                bias_x=_ints(q["bx"], q["acc_frac"]), bias_h=_ints(q["bh"], q["acc_frac"]),
                theta=_ints(q["thr"], formats.state_frac)))
        Wo, bo, shift, frac = net.readout_quant(formats)
        readout = QuantReadout(W=_ints(Wo, shift), shift=shift, bias=_ints(bo, frac))
    return QuantModel(formats=formats, layers=layers, readout=readout, meta=dict(meta or {}))


def quant_forward_ints(net: EGRUNet, formats: NumberFormats, x: torch.Tensor) -> dict:
    """Run the torch quant forward and return its results as integers (for comparison
    with :func:`quantize.golden.run`): ``logits`` [T, N, O], ``y``/``c``/``events`` per layer."""
    with torch.no_grad():
        out = net(torch.as_tensor(x), formats=formats)
        _, _, _, frac = net.readout_quant(formats)
        return {
            "logits": _ints(out.logits, frac),
            "y": [_ints(y, formats.state_frac) for y in out.y],
            "c": [_ints(c, formats.state_frac) for c in out.c],
            "events": [o.detach().numpy() > 0 for o in out.o],
        }
