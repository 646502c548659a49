"""The quantized EGRU: integer parameters, derived formats and accumulator bounds, file I/O.

A :class:`QuantModel` is what the golden model runs, the packer lays into memories and
the hardware computes. It holds only integers plus a :class:`~quantize.formats.NumberFormats`;
every other format (accumulator fraction bits, product alignments, accumulator widths)
is derived here, once.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from . import formats as F
from .formats import NumberFormats

__all__ = ["ModelError", "QuantLayer", "QuantReadout", "QuantModel", "LayerBounds", "MODEL_FILE_VERSION"]

MODEL_FILE_VERSION = 1


class ModelError(ValueError):
    """A quantized model (or model file) that is malformed or unreadable."""


def _int_array(name: str, a, shape: tuple | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise ModelError(f"{name} holds NaN or Inf values")
        if not np.all(a == np.round(a)):
            raise ModelError(f"{name} must hold integers")
    elif a.dtype.kind not in "iub":
        raise ModelError(f"{name} must be an integer array, not {a.dtype}")
    a = a.astype(np.int64)
    if shape is not None and a.shape != tuple(shape):
        raise ModelError(f"{name} must have shape {list(shape)}, got {list(a.shape)}")
    return a


def _check_range(name: str, a: np.ndarray, lo: int, hi: int):
    if a.size and (a.min() < lo or a.max() > hi):
        raise ModelError(f"{name} must lie in [{lo}, {hi}], found values in [{a.min()}, {a.max()}]")


@dataclass
class QuantLayer:
    """One quantized EGRU layer (all arrays int64).

    ``W`` [I, 3H] and ``R`` [H, 3H]: ``weight_bits`` integers, gate block ``k`` scaled by
    ``2**-w_shift[k]`` (``2**-r_shift[k]``). ``bias_x``, ``bias_h`` [3H]: integers at the
    layer's accumulator grid ``2**-acc_frac``. ``theta`` [H]: state format, >= 0.
    """
    W: np.ndarray
    R: np.ndarray
    w_shift: tuple[int, int, int]
    r_shift: tuple[int, int, int]
    bias_x: np.ndarray
    bias_h: np.ndarray
    theta: np.ndarray

    @property
    def input_size(self) -> int:
        return self.W.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.R.shape[0]


@dataclass
class QuantReadout:
    """Readout ``logits_t = y_t W + b``: ``W`` [H, O] scaled by ``2**-shift``; ``bias`` [O]
    and the logits on the grid ``2**-(state_frac + shift)``."""
    W: np.ndarray
    shift: int
    bias: np.ndarray

    @property
    def output_size(self) -> int:
        return self.W.shape[1]


@dataclass(frozen=True)
class LayerBounds:
    """Worst-case magnitudes of a layer's accumulators (integers on the acc grid).

    Each bound is ``|bias| + sum_j |w_j| * max|source_j| * 2**align`` maximised over
    neurons: no sequence of inputs and events can exceed it, in any order.
    """
    z: int
    r: int
    ag: int
    hg: int

    @property
    def pre_g(self) -> int:
        # ag + round(r * hg) with r <= 1: |.| <= ag + hg (rounding cannot pass an integer bound).
        return self.ag + self.hg

    def bits(self) -> dict:
        """Two's-complement widths: ``z``, ``r``, ``ag``, ``hg``, ``pre_g``."""
        return {k: F.signed_bits_for(getattr(self, k)) for k in ("z", "r", "ag", "hg", "pre_g")}


@dataclass
class QuantModel:
    """A quantized, possibly pruned, stack of EGRU layers with a readout."""
    formats: NumberFormats
    layers: list[QuantLayer]
    readout: QuantReadout
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    # -- shapes ---------------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def hidden_sizes(self) -> list[int]:
        return [layer.hidden_size for layer in self.layers]

    @property
    def output_size(self) -> int:
        return self.readout.output_size

    # -- derived formats ------------------------------------------------------------------
    def acc_frac(self, l: int) -> int:
        """Fraction bits of layer ``l``'s accumulators: the finest of its product grids."""
        layer, fmt = self.layers[l], self.formats
        src = fmt.source_frac(l)
        return max(max(src + s for s in layer.w_shift), max(fmt.state_frac + s for s in layer.r_shift))

    def input_align(self, l: int) -> tuple[int, int, int]:
        """Left shift of an input product ``x_j * W[j, k]`` per gate, onto the acc grid."""
        src = self.formats.source_frac(l)
        return tuple(self.acc_frac(l) - (src + s) for s in self.layers[l].w_shift)

    def recurrent_align(self, l: int) -> tuple[int, int, int]:
        """Left shift of a recurrent product ``y_j * R[j, k]`` per gate, onto the acc grid."""
        fmt = self.formats
        return tuple(self.acc_frac(l) - (fmt.state_frac + s) for s in self.layers[l].r_shift)

    @property
    def readout_frac(self) -> int:
        return self.formats.state_frac + self.readout.shift

    @property
    def sigmoid_lut(self) -> np.ndarray:
        return F.sigmoid_table(self.formats)

    @property
    def tanh_lut(self) -> np.ndarray:
        return F.tanh_table(self.formats)

    # -- bounds ---------------------------------------------------------------------------
    def source_max(self, l: int) -> int:
        """Largest magnitude an input of layer ``l`` can have (integer)."""
        fmt = self.formats
        return -fmt.input_min if l == 0 else fmt.state_max

    def layer_bounds(self, l: int) -> LayerBounds:
        layer, H = self.layers[l], self.layers[l].hidden_size
        xmax, ymax = self.source_max(l), self.formats.state_max
        ia, ra = self.input_align(l), self.recurrent_align(l)
        gate = lambda M, k: np.abs(M[:, k * H:(k + 1) * H]).sum(axis=0)
        bias = np.abs(layer.bias_x) + np.abs(layer.bias_h)
        per = []
        for k in range(3):
            from_x = gate(layer.W, k) * (xmax << ia[k])
            from_y = gate(layer.R, k) * (ymax << ra[k])
            per.append((from_x, from_y))
        sl = lambda v, k: v[k * H:(k + 1) * H]
        z = int((sl(bias, 0) + per[0][0] + per[0][1]).max())
        r = int((sl(bias, 1) + per[1][0] + per[1][1]).max())
        ag = int((np.abs(sl(layer.bias_x, 2)) + per[2][0]).max())
        hg = int((np.abs(sl(layer.bias_h, 2)) + per[2][1]).max())
        return LayerBounds(z=z, r=r, ag=ag, hg=hg)

    def readout_bound(self) -> int:
        ro = self.readout
        return int((np.abs(ro.W).sum(axis=0) * self.formats.state_max + np.abs(ro.bias)).max())

    # -- counts ---------------------------------------------------------------------------
    def dense_macs_per_step(self) -> list[int]:
        """Dense multiply-accumulates per step: 3H(I+H) per layer, then H*O for the readout."""
        macs = [3 * layer.hidden_size * (layer.input_size + layer.hidden_size) for layer in self.layers]
        return macs + [self.hidden_sizes[-1] * self.output_size]

    def weight_sparsity(self) -> dict:
        """Fraction of zero weights per matrix (``layer{l}.W``, ``layer{l}.R``, ``readout``)."""
        out = {}
        for l, layer in enumerate(self.layers):
            out[f"layer{l}.W"] = float(np.mean(layer.W == 0))
            out[f"layer{l}.R"] = float(np.mean(layer.R == 0))
        out["readout"] = float(np.mean(self.readout.W == 0))
        return out

    # -- validation -----------------------------------------------------------------------
    def validate(self):
        fmt = self.formats
        if not isinstance(fmt, NumberFormats):
            raise ModelError(f"formats must be NumberFormats, not {type(fmt).__name__}")
        if not self.layers:
            raise ModelError("a model needs at least one layer")
        prev = None
        for l, layer in enumerate(self.layers):
            name = f"layer{l}"
            W = _int_array(f"{name}.W", layer.W)
            R = _int_array(f"{name}.R", layer.R)
            if W.ndim != 2 or W.shape[1] % 3 or W.shape[1] == 0 or W.shape[0] == 0:
                raise ModelError(f"{name}.W must be [I, 3H] with I, H >= 1, got {list(W.shape)}")
            I, H = W.shape[0], W.shape[1] // 3
            if prev is not None and I != prev:
                raise ModelError(f"{name}.W has {I} inputs but layer{l - 1} has {prev} neurons")
            if R.shape != (H, 3 * H):
                raise ModelError(f"{name}.R must have shape {[H, 3 * H]}, got {list(R.shape)}")
            for mname, M in (("W", W), ("R", R)):
                _check_range(f"{name}.{mname}", M, fmt.weight_min, fmt.weight_max)
            layer.W, layer.R = W, R
            layer.bias_x = _int_array(f"{name}.bias_x", layer.bias_x, (3 * H,))
            layer.bias_h = _int_array(f"{name}.bias_h", layer.bias_h, (3 * H,))
            layer.theta = _int_array(f"{name}.theta", layer.theta, (H,))
            _check_range(f"{name}.theta", layer.theta, 0, fmt.state_max)
            for sname in ("w_shift", "r_shift"):
                s = tuple(int(v) for v in np.asarray(getattr(layer, sname)).reshape(-1))
                if len(s) != 3:
                    raise ModelError(f"{name}.{sname} must hold 3 shifts (z, r, g), got {len(s)}")
                for v in s:
                    if not -24 <= v <= 24:
                        raise ModelError(f"{name}.{sname} values must lie in [-24, 24], got {v}")
                setattr(layer, sname, s)
            prev = H
        ro = self.readout
        ro.W = _int_array("readout.W", ro.W)
        if ro.W.ndim != 2 or ro.W.shape[0] != prev or ro.W.shape[1] == 0:
            raise ModelError(f"readout.W must be [{prev}, O] with O >= 1, got {list(ro.W.shape)}")
        _check_range("readout.W", ro.W, fmt.weight_min, fmt.weight_max)
        ro.bias = _int_array("readout.bias", ro.bias, (ro.W.shape[1],))
        ro.shift = int(ro.shift)
        if not -24 <= ro.shift <= 24:
            raise ModelError(f"readout.shift must lie in [-24, 24], got {ro.shift}")
        for l in range(len(self.layers)):
            if min(self.input_align(l) + self.recurrent_align(l)) < 0:
                raise ModelError(f"layer{l}: internal error, negative alignment")
            widest = max(self.layer_bounds(l).bits().values())
            if widest > 48:
                raise ModelError(
                    f"layer{l}: accumulators would need {widest} bits (limit 48); "
                    "the weight scales or biases are out of proportion")

    def on_bias_grid(self) -> "QuantModel":
        """The same model with its biases rounded to core v2's bias grids
        (:data:`~quantize.formats.BIAS_BITS` mantissas times a power of two: z and r one grid for
        ``bias_x + bias_h``, the g gate's biases and the readout's each their own), as the
        quantizer makes them (for models made otherwise, such as random test models)."""
        def to_grid(v, s):
            return ((v + (1 << s >> 1)) >> s) << s if s else v.copy()

        layers = []
        for layer in self.layers:
            H = layer.hidden_size
            bx, bh = layer.bias_x.copy(), layer.bias_h.copy()
            for k in range(2):
                part = slice(k * H, (k + 1) * H)
                s = F.bias_shift(float((np.abs(bx[part]) + np.abs(bh[part])).max(initial=0)), terms=2)
                bx[part], bh[part] = to_grid(bx[part], s), to_grid(bh[part], s)
            g = slice(2 * H, 3 * H)
            bx[g] = to_grid(bx[g], F.bias_shift(float(np.abs(bx[g]).max(initial=0))))
            bh[g] = to_grid(bh[g], F.bias_shift(float(np.abs(bh[g]).max(initial=0))))
            layers.append(QuantLayer(W=layer.W.copy(), R=layer.R.copy(), w_shift=layer.w_shift,
                                     r_shift=layer.r_shift, bias_x=bx, bias_h=bh, theta=layer.theta.copy()))
        ro = self.readout
        bias = to_grid(ro.bias, F.bias_shift(float(np.abs(ro.bias).max(initial=0))))
        return QuantModel(formats=self.formats, layers=layers,
                          readout=QuantReadout(W=ro.W.copy(), shift=ro.shift, bias=bias), meta=dict(self.meta))

    def fold_biases(self) -> "QuantModel":
        """The same model with the z and r biases of ``bias_h`` added into ``bias_x`` (and
        zero in ``bias_h``), as the hardware holds them. It computes the same integers:
        ``acc_z`` and ``acc_r`` start from the sum either way (``bias_h_g`` stays apart,
        since r multiplies it)."""
        layers = []
        for layer in self.layers:
            H = layer.hidden_size
            bias_x, bias_h = layer.bias_x.copy(), layer.bias_h.copy()
            bias_x[:2 * H] += bias_h[:2 * H]
            bias_h[:2 * H] = 0
            layers.append(QuantLayer(W=layer.W.copy(), R=layer.R.copy(), w_shift=layer.w_shift,
                                     r_shift=layer.r_shift, bias_x=bias_x, bias_h=bias_h, theta=layer.theta.copy()))
        ro = self.readout
        return QuantModel(formats=self.formats, layers=layers,
                          readout=QuantReadout(W=ro.W.copy(), shift=ro.shift, bias=ro.bias.copy()), meta=dict(self.meta))

    # -- equality -------------------------------------------------------------------------
    def __eq__(self, other):
        if not isinstance(other, QuantModel):
            return NotImplemented
        if self.formats != other.formats or len(self.layers) != len(other.layers):
            return False
        for a, b in zip(self.layers, other.layers):
            if a.w_shift != b.w_shift or a.r_shift != b.r_shift:
                return False
            for k in ("W", "R", "bias_x", "bias_h", "theta"):
                x, y = getattr(a, k), getattr(b, k)
                if x.shape != y.shape or not np.array_equal(x, y):
                    return False
        ra, rb = self.readout, other.readout
        return ra.shift == rb.shift and ra.W.shape == rb.W.shape and np.array_equal(ra.W, rb.W) \
            and np.array_equal(ra.bias, rb.bias)

    # -- file I/O -------------------------------------------------------------------------
    def to_arrays(self) -> dict:
        arrays = {"header": np.array(json.dumps({
            "kind": "egru-accel quantized model", "version": MODEL_FILE_VERSION,
            "formats": self.formats.to_dict(), "layers": len(self.layers),
            "shifts": [{"w": list(l.w_shift), "r": list(l.r_shift)} for l in self.layers],
            "readout_shift": self.readout.shift, "meta": self.meta}))}
        for l, layer in enumerate(self.layers):
            for k in ("W", "R", "bias_x", "bias_h", "theta"):
                arrays[f"layer{l}.{k}"] = getattr(layer, k)
        arrays["readout.W"] = self.readout.W
        arrays["readout.bias"] = self.readout.bias
        return arrays

    def save(self, path: str | os.PathLike):
        """Write the model as ``.npz`` (atomically: a temporary file, then a rename)."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **self.to_arrays())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "QuantModel":
        """Read a model written by :meth:`save`; :class:`ModelError` if it is unreadable."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelError(f"cannot read model file {path}: {e.strerror or e}") from None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise ModelError(f"cannot read model file {path}: not an egru-accel model ({e})") from None
        try:
            return cls.from_arrays(arrays)
        except ModelError as e:
            raise ModelError(f"model file {path}: {e}") from None

    @classmethod
    def from_arrays(cls, arrays: dict) -> "QuantModel":
        if "header" not in arrays:
            raise ModelError("not an egru-accel model (no header)")
        try:
            header = json.loads(str(arrays["header"]))
        except (json.JSONDecodeError, TypeError) as e:
            raise ModelError(f"model header is not valid JSON ({e})") from None
        if header.get("kind") != "egru-accel quantized model":
            raise ModelError("not an egru-accel model (wrong kind)")
        if header.get("version") != MODEL_FILE_VERSION:
            raise ModelError(f"model file version {header.get('version')} is not supported "
                             f"(this egru-accel reads version {MODEL_FILE_VERSION})")
        try:
            fmt = NumberFormats.from_dict(header["formats"])
            n = int(header["layers"])
            layers = []
            for l in range(n):
                get = lambda k: arrays[f"layer{l}.{k}"]
                layers.append(QuantLayer(W=get("W"), R=get("R"), w_shift=tuple(header["shifts"][l]["w"]),
                                         r_shift=tuple(header["shifts"][l]["r"]), bias_x=get("bias_x"),
                                         bias_h=get("bias_h"), theta=get("theta")))
            readout = QuantReadout(W=arrays["readout.W"], shift=int(header["readout_shift"]),
                                   bias=arrays["readout.bias"])
        except KeyError as e:
            raise ModelError(f"model file lacks {e}") from None
        except (TypeError, ValueError) as e:
            raise ModelError(str(e)) from None
        return cls(formats=fmt, layers=layers, readout=readout, meta=dict(header.get("meta") or {}))
