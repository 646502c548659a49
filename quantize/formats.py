"""Number formats: the single definition of every integer format in egru-accel.

Everything that computes with the quantized model -- the NumPy golden model, the
quantization-aware PyTorch forward, the packer, the hardware generator and the
testbenches -- takes its widths, fraction bits, rounding and saturation rules
from this module. ``docs/numerics.md`` describes the same rules in prose.

Conventions
-----------
A *fixed-point value* with ``frac`` fraction bits is stored as the integer
``v`` and means ``v * 2**-frac``. All integers are two's complement.

*Rounding* is round-half-up: ``round_shift(v, n) = floor(v / 2**n + 1/2)``,
which in hardware is ``(v + (1 << (n - 1))) >>> n`` (an adder and wiring).

*Saturation* clamps to the signed range of a width and happens only at the
conversion points documented in ``docs/numerics.md``: input quantization,
weight quantization, lookup-table indexing and the cell-state write-back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NumberFormats", "GATES", "N_GATES", "GATE_Z", "GATE_R", "GATE_G",
    "round_shift", "align", "saturate", "signed_range", "signed_bits_for",
    "unsigned_bits_for", "lut_index", "sigmoid_table", "tanh_table",
    "power_of_two_shift", "BIAS_BITS", "bias_shift", "bias_mantissa_shift",
]

#: Gate order of every ``[*, 3H]`` matrix and ``[3H]`` vector (EvNN's order).
GATES = ("z", "r", "g")
N_GATES = 3
GATE_Z, GATE_R, GATE_G = 0, 1, 2


@dataclass(frozen=True)
class NumberFormats:
    """Widths and fraction bits of every integer quantity of a quantized EGRU.

    Parameters (all keyword-only, all integers)
    -------------------------------------------
    input_bits, input_frac:
        Layer-0 input ``x``: signed ``input_bits``-bit, ``input_frac`` fraction bits.
    weight_bits:
        Every weight (kernel, recurrent kernel, readout): signed ``weight_bits``-bit;
        each matrix has one power-of-two scale per gate (its *shift*, the weight's
        fraction bits), chosen by :func:`power_of_two_shift`.
    state_bits, state_frac:
        Cell state ``c``, candidate ``c~``, event values ``y`` and thresholds:
        signed ``state_bits``-bit with ``state_frac`` fraction bits. Layers above
        layer 0 take ``y`` of the layer below as their input in this format.
    sigmoid_frac:
        Outputs of the sigmoid table (gates ``z``, ``r``): unsigned, value in
        ``[0, 2**sigmoid_frac]`` (``2**sigmoid_frac`` is exactly 1.0).
    tanh_frac:
        Outputs of the tanh table (candidate ``g``): signed, in
        ``[-2**tanh_frac, 2**tanh_frac]``. Must not exceed ``state_frac``.
    sigmoid_lut_bits, sigmoid_lut_frac:
        The sigmoid table has ``2**sigmoid_lut_bits`` entries; its index steps by
        ``2**-sigmoid_lut_frac``, so it covers ``[-2**(bits-1-frac), 2**(bits-1-frac))``.
    tanh_lut_bits, tanh_lut_frac:
        The same for the tanh table.
    """

    input_bits: int = 8
    input_frac: int = 6
    weight_bits: int = 8
    state_bits: int = 16
    state_frac: int = 12
    sigmoid_frac: int = 8
    tanh_frac: int = 10
    sigmoid_lut_bits: int = 8
    sigmoid_lut_frac: int = 4
    tanh_lut_bits: int = 8
    tanh_lut_frac: int = 5

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise TypeError(f"NumberFormats.{field.name} must be an integer, not {value!r}")
            object.__setattr__(self, field.name, int(value))
        for name, low, high in [
            ("input_bits", 2, 16), ("weight_bits", 2, 16), ("state_bits", 4, 24),
            ("sigmoid_frac", 1, 16), ("tanh_frac", 1, 16),
            ("sigmoid_lut_bits", 2, 14), ("tanh_lut_bits", 2, 14),
            ("input_frac", -8, 24), ("state_frac", 0, 24),
            ("sigmoid_lut_frac", -4, 16), ("tanh_lut_frac", -4, 16),
        ]:
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"NumberFormats.{name} must be in [{low}, {high}], not {value}")
        if self.tanh_frac > self.state_frac:
            raise ValueError(
                f"NumberFormats.tanh_frac ({self.tanh_frac}) must not exceed state_frac "
                f"({self.state_frac}): g is aligned to the state by a left shift")
        if self.state_frac >= self.state_bits:
            raise ValueError(
                f"NumberFormats.state_frac ({self.state_frac}) must be below state_bits "
                f"({self.state_bits}) so that the state can hold 1.0")

    # -- derived quantities ---------------------------------------------------------
    @property
    def input_min(self) -> int:
        return -(1 << (self.input_bits - 1))

    @property
    def input_max(self) -> int:
        return (1 << (self.input_bits - 1)) - 1

    @property
    def weight_min(self) -> int:
        return -(1 << (self.weight_bits - 1))

    @property
    def weight_max(self) -> int:
        return (1 << (self.weight_bits - 1)) - 1

    @property
    def state_min(self) -> int:
        return -(1 << (self.state_bits - 1))

    @property
    def state_max(self) -> int:
        return (1 << (self.state_bits - 1)) - 1

    @property
    def sigmoid_one(self) -> int:
        """The integer that means 1.0 at the sigmoid output (``1 - z`` is ``sigmoid_one - z``)."""
        return 1 << self.sigmoid_frac

    @property
    def sigmoid_value_bits(self) -> int:
        """Unsigned bits of a sigmoid-table entry (it may equal :attr:`sigmoid_one`)."""
        return self.sigmoid_frac + 1

    @property
    def tanh_value_bits(self) -> int:
        """Signed bits of a tanh-table entry (range ``[-2**tanh_frac, 2**tanh_frac]``)."""
        return self.tanh_frac + 2

    @property
    def g_align(self) -> int:
        """Left shift that brings a tanh output to the state format."""
        return self.state_frac - self.tanh_frac

    def source_frac(self, layer: int) -> int:
        """Fraction bits of the input of ``layer`` (layer 0: ``x``; above: events ``y``)."""
        return self.input_frac if layer == 0 else self.state_frac

    def source_bits(self, layer: int) -> int:
        return self.input_bits if layer == 0 else self.state_bits

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NumberFormats":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown number-format fields: {sorted(unknown)}")
        return cls(**{k: int(v) for k, v in d.items()})


# -- integer primitives (NumPy arrays or Python ints) ----------------------------------

def round_shift(v, n: int):
    """``floor(v / 2**n + 1/2)`` for ``n > 0``; ``v << -n`` for ``n <= 0`` (exact)."""
    if n > 0:
        return (v + (1 << (n - 1))) >> n
    return v << (-n) if n < 0 else v


def align(v, shift: int):
    """Exact left shift by ``shift >= 0`` (format alignment never rounds)."""
    if shift < 0:
        raise ValueError(f"alignment shift must be >= 0, got {shift}")
    return v << shift


def signed_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def saturate(v, bits: int):
    """Clamp to the signed range of ``bits``."""
    lo, hi = signed_range(bits)
    if isinstance(v, np.ndarray):
        return np.clip(v, lo, hi)
    return min(max(v, lo), hi)


def signed_bits_for(bound: int) -> int:
    """Smallest two's-complement width holding every integer in ``[-bound, bound]``."""
    bound = int(bound)
    if bound < 0:
        raise ValueError("bound must be non-negative")
    return bound.bit_length() + 1


def unsigned_bits_for(bound: int) -> int:
    """Smallest unsigned width holding ``[0, bound]`` (at least 1)."""
    return max(1, int(bound).bit_length())


def lut_index(pre, pre_frac: int, lut_bits: int, lut_frac: int):
    """Table index of a pre-activation ``pre`` (``pre_frac`` fraction bits).

    ``floor(pre * 2**(lut_frac - pre_frac)) + 2**(lut_bits - 1)``, clamped to
    ``[0, 2**lut_bits - 1]``: an arithmetic right shift (or exact left shift),
    an offset and a saturation -- this clamp is the tables' saturation point.
    """
    shift = pre_frac - lut_frac
    idx = (pre >> shift) if shift >= 0 else (pre << -shift)
    idx = idx + (1 << (lut_bits - 1))
    top = (1 << lut_bits) - 1
    if isinstance(idx, np.ndarray):
        return np.clip(idx, 0, top)
    return min(max(idx, 0), top)


def _lut_centres(lut_bits: int, lut_frac: int) -> np.ndarray:
    # Entry i covers [(i - N/2) * step, (i - N/2 + 1) * step); it holds the
    # function at the centre of that interval, which halves the worst error.
    n = 1 << lut_bits
    return (np.arange(n, dtype=np.float64) - n / 2 + 0.5) * 2.0 ** -lut_frac


def sigmoid_table(fmt: NumberFormats) -> np.ndarray:
    """The sigmoid table: ``round(sigmoid(centre_i) * 2**sigmoid_frac)``, int64."""
    x = _lut_centres(fmt.sigmoid_lut_bits, fmt.sigmoid_lut_frac)
    values = np.floor(1.0 / (1.0 + np.exp(-x)) * fmt.sigmoid_one + 0.5)
    return np.clip(values, 0, fmt.sigmoid_one).astype(np.int64)


def tanh_table(fmt: NumberFormats) -> np.ndarray:
    """The tanh table: ``round(tanh(centre_i) * 2**tanh_frac)``, int64."""
    x = _lut_centres(fmt.tanh_lut_bits, fmt.tanh_lut_frac)
    one = 1 << fmt.tanh_frac
    values = np.floor(np.tanh(x) * one + 0.5)
    return np.clip(values, -one, one).astype(np.int64)


def power_of_two_shift(max_abs: float, bits: int, *, limit: int = 24) -> int:
    """Fraction bits ``s`` such that ``max_abs * 2**s`` fits a signed ``bits`` integer.

    The largest ``s`` with ``round(max_abs * 2**s) <= 2**(bits-1) - 1``; an all-zero
    matrix gets ``s = 0``. Clamped to ``[-limit, limit]``.
    """
    if not math.isfinite(max_abs):
        raise ValueError(f"cannot choose a scale for a non-finite value ({max_abs})")
    if max_abs <= 0.0:
        return 0
    top = (1 << (bits - 1)) - 1
    s = math.floor(math.log2(top / max_abs))
    while s > -limit and math.floor(max_abs * 2.0 ** s + 0.5) > top:
        s -= 1
    while s < limit and math.floor(max_abs * 2.0 ** (s + 1) + 0.5) <= top:
        s += 1
    return max(-limit, min(limit, s))


#: Bits of a stored bias: core v2 holds each bias as a signed ``BIAS_BITS`` mantissa times
#: ``2**shift`` on its accumulator grid, one shift per layer and accumulator kind (z, r, ag, hg)
#: and one for the readout (docs/numerics.md). The quantizer puts the biases on that grid.
BIAS_BITS = 16


def bias_shift(max_abs: float, *, terms: int = 1) -> int:
    """The smallest shift ``s >= 0`` such that a sum of ``terms`` values, each rounded to a
    multiple of ``2**s`` and of magnitudes summing to at most ``max_abs`` (in units of the
    accumulator grid), has a mantissa (sum / ``2**s``) that fits ``BIAS_BITS`` signed bits
    (each rounding adds at most half a unit of the mantissa)."""
    if not math.isfinite(max_abs) or max_abs < 0:
        raise ValueError(f"max_abs must be a finite magnitude, not {max_abs!r}")
    top = (1 << (BIAS_BITS - 1)) - 1
    s = 0
    while max_abs / 2.0 ** s + terms / 2.0 > top:
        s += 1
    return s


def bias_mantissa_shift(values) -> int | None:
    """The smallest shift ``s >= 0`` such that ``values`` (integers) are multiples of ``2**s``
    whose mantissas fit ``BIAS_BITS`` signed bits, or ``None`` if there is none (a value not on
    the grid that its magnitude needs)."""
    v = np.asarray(values, dtype=np.int64)
    if v.size == 0:
        return 0
    top, low = (1 << (BIAS_BITS - 1)) - 1, -(1 << (BIAS_BITS - 1))
    s = 0
    while (v >> s).max() > top or (v >> s).min() < low:
        s += 1
    return s if not np.any(v & ((1 << s) - 1)) else None
