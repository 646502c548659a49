"""The EGRU in PyTorch: float reference (EvNN v0.2.0 semantics) and quantization-aware forward.

Per layer, with ``x_t`` of size I, ``y_{t-1}`` and ``c_{t-1}`` of size H (both zero at t = 0)::

    a = x_t W + b_x            h = y_{t-1} R + b_h          # column blocks [z | r | g]
    z = sigmoid(a_z + h_z)     r = sigmoid(a_r + h_r)
    g = tanh(a_g + r * h_g)
    c~ = z * c_{t-1} + (1 - z) * g
    o = [c~ > theta]           y_t = o * c~           c_t = c~ - o * theta

The quantization-aware ("quant") forward runs the same graph on the integer grids that
:mod:`quantize.formats` defines, in float64: every quantity is a dyadic rational with
fewer than 53 significant bits, so float64 sums and products are exact and the result
equals the integer golden model (:mod:`quantize.golden`) bit for bit. Rounding and
lookup tables pass gradients straight through (the derivative of the real function).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from . import formats as F
from .formats import NumberFormats, bias_shift

__all__ = [
    "SpikeFunction", "EGRULayer", "EGRUNet", "EGRUOutput", "run_egru",
    "EVNN_REQUIRED_KEYS", "EVNN_OPTIONAL_KEYS", "StateDictError", "layer_from_evnn_state_dict",
    "quant_weight", "quant_shifts",
]

EVNN_REQUIRED_KEYS = ("kernel", "recurrent_kernel", "bias", "recurrent_bias", "thr")
# EvNN registers these as non-trainable Parameters, so they appear in its state_dict.
EVNN_OPTIONAL_KEYS = ("dampening_factor", "pseudo_derivative_support", "_max_norm")


class StateDictError(ValueError):
    """An EvNN state_dict that cannot be loaded (keys, shapes or values)."""


class SpikeFunction(torch.autograd.Function):
    """Heaviside step ``[v > 0]`` with EvNN's pseudo-derivative
    ``dampening * max(0, 1 - support * |v|)``. ``v == 0`` does not fire."""

    @staticmethod
    def forward(ctx, v, dampening_factor: float, support: float):
        ctx.save_for_backward(v)
        ctx.dampening_factor = float(dampening_factor)
        ctx.support = float(support)
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (v,) = ctx.saved_tensors
        surrogate = ctx.dampening_factor * torch.clamp(1.0 - ctx.support * v.abs(), min=0.0)
        return grad_output * surrogate, None, None


# -- fake quantization (float64, exact) ---------------------------------------------------

def _round_half_up_ste(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.floor(v + 0.5) - v).detach()


def _to_grid(v: torch.Tensor, frac: int) -> torch.Tensor:
    """Round to the ``frac``-fraction-bit grid (round half up), gradient straight through."""
    scale = 2.0 ** frac
    return _round_half_up_ste(v * scale) / scale


def _bias_to_grid(v: torch.Tensor, frac: int) -> torch.Tensor:
    """``v`` (on a grid of ``frac`` fraction bits) rounded to the bias grid of core v2: a
    multiple of ``2**s`` grid units whose mantissa fits ``BIAS_BITS``
    (:func:`~quantize.formats.bias_shift`)."""
    mag = float(v.detach().abs().max()) * 2.0 ** frac if v.numel() else 0.0
    return _to_grid(v, frac - bias_shift(mag))


def _biases_on_grid(bx: torch.Tensor, bh: torch.Tensor, acc_frac: int, H: int):
    """``bias_x``, ``bias_h`` [3H] on core v2's bias grids: z and r one grid for both (the core
    holds their sums), the g gate's each one of its own."""
    outs_x, outs_h = [], []
    for k in range(2):
        part_x, part_h = bx[k * H:(k + 1) * H], bh[k * H:(k + 1) * H]
        mag = float((part_x.detach().abs() + part_h.detach().abs()).max()) * 2.0 ** acc_frac if H else 0.0
        frac = acc_frac - bias_shift(mag, terms=2)
        outs_x.append(_to_grid(part_x, frac))
        outs_h.append(_to_grid(part_h, frac))
    outs_x.append(_bias_to_grid(bx[2 * H:], acc_frac))
    outs_h.append(_bias_to_grid(bh[2 * H:], acc_frac))
    return torch.cat(outs_x), torch.cat(outs_h)


def quant_shifts(w: torch.Tensor, bits: int, gated: bool) -> list[int]:
    """Per-gate (or one, if not ``gated``) power-of-two shifts of a weight matrix."""
    w = w.detach()
    if gated:
        blocks = torch.chunk(w, F.N_GATES, dim=-1)
        return [F.power_of_two_shift(float(b.abs().max()) if b.numel() else 0.0, bits) for b in blocks]
    return [F.power_of_two_shift(float(w.abs().max()) if w.numel() else 0.0, bits)]


def quant_weight(w: torch.Tensor, shifts: list[int], bits: int) -> torch.Tensor:
    """Fake-quantize ``w`` (float64 result on its per-block grid, STE gradient)."""
    lo, hi = F.signed_range(bits)
    blocks = torch.chunk(w.double(), len(shifts), dim=-1)
    out = []
    for block, s in zip(blocks, shifts):
        scale = 2.0 ** s
        q = torch.clamp(_round_half_up_ste(block * scale), lo, hi)
        out.append(q / scale)
    return torch.cat(out, dim=-1)


class _LutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, table, lut_bits, lut_frac, out_frac, kind):
        idx = torch.floor(pre * 2.0 ** lut_frac) + (1 << (lut_bits - 1))
        idx = idx.clamp(0, (1 << lut_bits) - 1).long()
        ctx.save_for_backward(pre)
        ctx.kind = kind
        return table[idx] / 2.0 ** out_frac

    @staticmethod
    def backward(ctx, grad):
        (pre,) = ctx.saved_tensors
        if ctx.kind == "sigmoid":
            s = torch.sigmoid(pre)
            d = s * (1 - s)
        else:
            d = 1 - torch.tanh(pre) ** 2
        return grad * d, None, None, None, None, None


@dataclass
class EGRUOutput:
    """What :meth:`EGRUNet.forward` returns. Tensors are [T, N, *].

    In quant mode every value lies exactly on its integer grid: ``logits`` on
    ``2**-readout_frac``, ``y``/``c`` on ``2**-state_frac``.
    """
    logits: torch.Tensor
    y: list[torch.Tensor] = field(default_factory=list)
    c: list[torch.Tensor] = field(default_factory=list)
    o: list[torch.Tensor] = field(default_factory=list)


class EGRULayer(nn.Module):
    """One EGRU layer with EvNN's parameter names and shapes.

    Parameters: ``kernel`` [I, 3H], ``recurrent_kernel`` [H, 3H], ``bias`` [3H],
    ``recurrent_bias`` [3H] (blocks [z | r | g]) and ``thr`` [H], used clamped to [0, 1]
    as EvNN does. Pruning masks are non-persistent buffers, so :meth:`state_dict`
    stays EvNN-compatible.
    """

    def __init__(self, input_size: int, hidden_size: int, *, dampening_factor: float = 0.7,
                 pseudo_derivative_support: float = 1.0, thr_mean: float = 0.3,
                 generator: torch.Generator | None = None):
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{name} must be an integer, not {v!r}")
            if v < 1:
                raise ValueError(f"{name} must be at least 1, not {v}")
        if not 0.0 < thr_mean < 1.0:
            raise ValueError(f"thr_mean must be in (0, 1), not {thr_mean}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        H = hidden_size
        self.kernel = nn.Parameter(torch.empty(input_size, 3 * H))
        self.recurrent_kernel = nn.Parameter(torch.empty(H, 3 * H))
        self.bias = nn.Parameter(torch.zeros(3 * H))
        self.recurrent_bias = nn.Parameter(torch.zeros(3 * H))
        self.register_buffer("dampening_factor", torch.tensor([float(dampening_factor)]))
        self.register_buffer("pseudo_derivative_support", torch.tensor([float(pseudo_derivative_support)]))
        # EvNN draws thresholds from Beta(alpha, 3) with the given mean.
        beta = 3.0
        alpha = beta * thr_mean / (1.0 - thr_mean)
        thr = torch.distributions.Beta(alpha, beta).sample((H,)) if generator is None else \
            _beta_sample(alpha, beta, H, generator)
        self.thr = nn.Parameter(thr)
        nn.init.xavier_normal_(self.kernel, generator=generator)
        nn.init.xavier_normal_(self.recurrent_kernel, generator=generator)
        self.register_buffer("kernel_mask", torch.ones(input_size, 3 * H), persistent=False)
        self.register_buffer("recurrent_kernel_mask", torch.ones(H, 3 * H), persistent=False)

    # -- weights as the forward uses them ---------------------------------------------------
    def masked_kernel(self) -> torch.Tensor:
        return self.kernel * self.kernel_mask

    def masked_recurrent_kernel(self) -> torch.Tensor:
        return self.recurrent_kernel * self.recurrent_kernel_mask

    def threshold(self) -> torch.Tensor:
        return self.thr.clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor, *, formats: NumberFormats | None = None, layer_index: int = 0):
        """Run the layer over a [T, N, I] sequence; return ``(y, c, o)``, each [T, N, H].

        ``formats=None`` is the float reference; with ``formats`` the quantization-aware
        forward (float64; ``x`` must already lie on the layer's input grid).
        """
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"expected input of shape [T, N, {self.input_size}], got {list(x.shape)}")
        H = self.hidden_size
        damp = float(self.dampening_factor)
        support = float(self.pseudo_derivative_support)
        if formats is None:
            W, R = self.masked_kernel(), self.masked_recurrent_kernel()
            bx, bh, thr = self.bias, self.recurrent_bias, self.threshold()
            x = x.to(W.dtype)
        else:
            q = self.quant_params(formats, layer_index)
            W, R, bx, bh, thr = q["W"], q["R"], q["bx"], q["bh"], q["thr"]
            acc_frac = q["acc_frac"]
            sig_tab = torch.as_tensor(F.sigmoid_table(formats), dtype=torch.float64)
            tanh_tab = torch.as_tensor(F.tanh_table(formats), dtype=torch.float64)
            x = x.double()
            s_lo = formats.state_min / 2.0 ** formats.state_frac
            s_hi = formats.state_max / 2.0 ** formats.state_frac

        T, N = x.shape[0], x.shape[1]
        Wx = x @ W + bx
        y = x.new_zeros(N, H)
        c = x.new_zeros(N, H)
        ys, cs, os_ = [], [], []
        for t in range(T):
            Rh = y @ R + bh
            az, ar, ag = torch.chunk(Wx[t], 3, dim=-1)
            hz, hr, hg = torch.chunk(Rh, 3, dim=-1)
            if formats is None:
                z = torch.sigmoid(az + hz)
                r = torch.sigmoid(ar + hr)
                g = torch.tanh(ag + r * hg)
                ct = z * c + (1 - z) * g
            else:
                # Table index uses the pre-activation on the accumulator grid (2**-acc_frac).
                sig_args = (sig_tab, formats.sigmoid_lut_bits, formats.sigmoid_lut_frac,
                            formats.sigmoid_frac, "sigmoid")
                z = _LutFunction.apply(az + hz, *sig_args)
                r = _LutFunction.apply(ar + hr, *sig_args)
                pre_g = ag + _to_grid(r * hg, acc_frac)
                g = _LutFunction.apply(pre_g, tanh_tab, formats.tanh_lut_bits, formats.tanh_lut_frac,
                                       formats.tanh_frac, "tanh")
                ct = _to_grid(z * c + (1 - z) * g, formats.state_frac)
                ct = torch.clamp(ct, s_lo, s_hi)
            o = SpikeFunction.apply(ct - thr, damp, support)
            y = o * ct
            c = ct - o * thr
            ys.append(y)
            cs.append(c)
            os_.append(o)
        return torch.stack(ys), torch.stack(cs), torch.stack(os_)

    def quant_params(self, formats: NumberFormats, layer_index: int) -> dict:
        """Fake-quantized parameters (float64 on their grids) and their shifts."""
        in_frac = formats.source_frac(layer_index)
        W_f, R_f = self.masked_kernel(), self.masked_recurrent_kernel()
        w_shift = quant_shifts(W_f, formats.weight_bits, gated=True)
        r_shift = quant_shifts(R_f, formats.weight_bits, gated=True)
        acc_frac = max(max(in_frac + s for s in w_shift), max(formats.state_frac + s for s in r_shift))
        bx, bh = _biases_on_grid(self.bias.double(), self.recurrent_bias.double(), acc_frac, self.hidden_size)
        thr_q = torch.clamp(_to_grid(self.threshold().double(), formats.state_frac),
                            0.0, formats.state_max / 2.0 ** formats.state_frac)
        return {
            "W": quant_weight(W_f, w_shift, formats.weight_bits),
            "R": quant_weight(R_f, r_shift, formats.weight_bits),
            "bx": bx, "bh": bh,
            "thr": thr_q, "w_shift": w_shift, "r_shift": r_shift, "acc_frac": acc_frac,
        }


def _beta_sample(alpha: float, beta: float, n: int, generator: torch.Generator) -> torch.Tensor:
    # torch.distributions has no generator argument: Beta(a, b) = Ga / (Ga + Gb).
    ga = torch._standard_gamma(torch.full((n,), alpha), generator=generator)
    gb = torch._standard_gamma(torch.full((n,), beta), generator=generator)
    return ga / (ga + gb)


class EGRUNet(nn.Module):
    """Stacked :class:`EGRULayer` s and a linear readout of the last layer's events.

    ``logits_t = y_t W_o + b_o`` at every step, ``W_o`` [H, O]; a sequence classifier
    reads the last step. The readout is driven by events, like the layers.
    """

    def __init__(self, input_size: int, hidden_sizes: list[int], output_size: int, *,
                 thr_mean: float = 0.3, seed: int | None = None, **layer_kwargs):
        super().__init__()
        if not hidden_sizes:
            raise ValueError("hidden_sizes must name at least one layer")
        if not isinstance(output_size, int) or output_size < 1:
            raise ValueError(f"output_size must be a positive integer, not {output_size!r}")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        sizes = [input_size] + list(hidden_sizes)
        self.layers = nn.ModuleList(
            EGRULayer(sizes[i], sizes[i + 1], thr_mean=thr_mean, generator=gen, **layer_kwargs)
            for i in range(len(hidden_sizes)))
        H = hidden_sizes[-1]
        bound = 1.0 / H ** 0.5
        w = torch.empty(H, output_size).uniform_(-bound, bound, generator=gen)
        self.readout_weight = nn.Parameter(w)
        self.readout_bias = nn.Parameter(torch.zeros(output_size))
        self.register_buffer("readout_mask", torch.ones(H, output_size), persistent=False)
        self.input_size = input_size
        self.output_size = output_size

    @property
    def hidden_sizes(self) -> list[int]:
        return [layer.hidden_size for layer in self.layers]

    def quantize_input(self, x: torch.Tensor, formats: NumberFormats) -> torch.Tensor:
        """Inputs on the layer-0 grid: round half up, saturate to ``input_bits`` (float64)."""
        scale = 2.0 ** formats.input_frac
        q = torch.clamp(torch.floor(x.double() * scale + 0.5), formats.input_min, formats.input_max)
        return q / scale

    def masked_readout(self) -> torch.Tensor:
        return self.readout_weight * self.readout_mask

    def readout_quant(self, formats: NumberFormats):
        w = self.masked_readout()
        shift = quant_shifts(w, formats.weight_bits, gated=False)
        frac = formats.state_frac + shift[0]
        return quant_weight(w, shift, formats.weight_bits), \
            _bias_to_grid(self.readout_bias.double(), frac), shift[0], frac

    def forward(self, x: torch.Tensor, *, formats: NumberFormats | None = None) -> EGRUOutput:
        """``x`` [T, N, I] -> :class:`EGRUOutput`; ``formats`` selects the quant forward."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"expected input of shape [T, N, {self.input_size}], got {list(x.shape)}")
        out = EGRUOutput(logits=None)
        h = self.quantize_input(x, formats) if formats is not None else x
        for i, layer in enumerate(self.layers):
            y, c, o = layer(h, formats=formats, layer_index=i)
            out.y.append(y)
            out.c.append(c)
            out.o.append(o)
            h = y
        if formats is None:
            out.logits = h @ self.masked_readout() + self.readout_bias
        else:
            Wo, bo, _, _ = self.readout_quant(formats)
            out.logits = h @ Wo + bo
        return out


def layer_from_evnn_state_dict(state_dict: dict) -> EGRULayer:
    """Build an :class:`EGRULayer` from an EvNN ``EGRU`` state_dict, unchanged.

    Required keys: ``kernel``, ``recurrent_kernel``, ``bias``, ``recurrent_bias``, ``thr``;
    EvNN's non-trainable ``dampening_factor``, ``pseudo_derivative_support`` and
    ``_max_norm`` are accepted (the first two are used). Raises :class:`StateDictError`
    for missing or unknown keys, wrong shapes and non-finite values.
    """
    if not isinstance(state_dict, dict):
        raise StateDictError(f"expected a state_dict (a mapping), got {type(state_dict).__name__}")
    keys = set(state_dict)
    missing = [k for k in EVNN_REQUIRED_KEYS if k not in keys]
    unknown = sorted(keys - set(EVNN_REQUIRED_KEYS) - set(EVNN_OPTIONAL_KEYS))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unknown:
            parts.append(f"unknown keys {unknown}")
        raise StateDictError("EvNN EGRU state_dict: " + "; ".join(parts))
    tensors = {}
    for k in keys:
        v = state_dict[k]
        if not isinstance(v, torch.Tensor):
            raise StateDictError(f"EvNN EGRU state_dict: '{k}' is a {type(v).__name__}, not a tensor")
        if not torch.isfinite(v).all():
            raise StateDictError(f"EvNN EGRU state_dict: '{k}' holds NaN or Inf values")
        tensors[k] = v.detach().float()
    kernel = tensors["kernel"]
    if kernel.dim() != 2 or kernel.shape[1] % 3 or kernel.shape[1] == 0:
        raise StateDictError(f"EvNN EGRU state_dict: 'kernel' must be [I, 3H], got {list(kernel.shape)}")
    I, H = kernel.shape[0], kernel.shape[1] // 3
    expected = {"kernel": [I, 3 * H], "recurrent_kernel": [H, 3 * H], "bias": [3 * H],
                "recurrent_bias": [3 * H], "thr": [H], "dampening_factor": [1],
                "pseudo_derivative_support": [1], "_max_norm": [1]}
    for k, v in tensors.items():
        if list(v.shape) != expected[k]:
            raise StateDictError(
                f"EvNN EGRU state_dict: '{k}' must have shape {expected[k]} (I={I}, H={H}), "
                f"got {list(v.shape)}")
    kwargs = {}
    if "dampening_factor" in tensors:
        kwargs["dampening_factor"] = float(tensors["dampening_factor"][0])
    if "pseudo_derivative_support" in tensors:
        kwargs["pseudo_derivative_support"] = float(tensors["pseudo_derivative_support"][0])
    layer = EGRULayer(I, H, generator=torch.Generator().manual_seed(0), **kwargs)
    with torch.no_grad():
        for k in EVNN_REQUIRED_KEYS:
            getattr(layer, k).copy_(tensors[k])
    return layer


def run_egru(layer: EGRULayer | dict, x: torch.Tensor) -> torch.Tensor:
    """Run one float EGRU layer (or an EvNN state_dict) on ``x`` [T, N, I]; return y [T, N, H].

    ``y_t = o_t * c~_t``: zero for silent neurons, the candidate state where an event fires.
    """
    if isinstance(layer, dict):
        layer = layer_from_evnn_state_dict(layer)
    with torch.no_grad():
        y, _, _ = layer(x)
    return y
