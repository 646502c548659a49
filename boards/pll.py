"""PLL coefficients for the boards' clocks: iCE40 ``SB_PLL40`` (as ``icepll``) and ECP5
``EHXPLLL`` (as ``ecppll``), computed exactly with rationals.

Frequencies are in MHz. Both searches pick the achievable output closest to the target,
with the tools' tie-breaks, and fail with :class:`PLLError` when the closest one is further
than ``tolerance`` (relative) from the target or the target is outside the PLL's output range.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

__all__ = ["PLLError", "ICE40PLL", "ECP5PLL", "ice40_pll", "ecp5_pll", "DEFAULT_TOLERANCE"]

#: Largest relative distance between the achieved and the requested frequency.
DEFAULT_TOLERANCE = 0.01


class PLLError(ValueError):
    """The PLL cannot produce the requested frequency from the board's clock."""


def _mhz(value, name: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction)):
        raise TypeError(f"{name} must be a frequency in MHz (int or float), not {value!r}")
    # Through the decimal text, so that 37.3 means 373/10 and not the nearest binary float.
    f = Fraction(str(value)) if isinstance(value, float) else Fraction(value)
    if not f > 0:
        raise ValueError(f"{name} must be a positive frequency in MHz, not {value}")
    return f


def _check_tolerance(tolerance) -> Fraction:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, Fraction)):
        raise TypeError(f"tolerance must be a number, not {tolerance!r}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), not {tolerance}")
    return Fraction(str(tolerance)) if isinstance(tolerance, float) else Fraction(tolerance)


def _in(f: Fraction, lo, hi) -> bool:
    return lo <= f <= hi


def _fmt(f: Fraction) -> str:
    return f"{float(f):.4g} MHz"


@dataclass(frozen=True)
class ICE40PLL:
    """``SB_PLL40_*`` in SIMPLE feedback mode: ``f_out = f_in / (DIVR+1) * (DIVF+1) / 2**DIVQ``."""
    f_in: Fraction
    divr: int
    divf: int
    divq: int
    filter_range: int

    @property
    def f_pfd(self) -> Fraction:
        return self.f_in / (self.divr + 1)

    @property
    def f_vco(self) -> Fraction:
        return self.f_pfd * (self.divf + 1)

    @property
    def f_out(self) -> Fraction:
        return self.f_vco / 2 ** self.divq

    def parameters(self) -> dict:
        """Instance parameters (``p_`` names without the prefix)."""
        return {"FEEDBACK_PATH": "SIMPLE", "DIVR": self.divr, "DIVF": self.divf, "DIVQ": self.divq,
                "FILTER_RANGE": self.filter_range}


@dataclass(frozen=True)
class ECP5PLL:
    """``EHXPLLL`` with CLKOP fed back: ``f_out = f_in / CLKI_DIV * CLKFB_DIV``,
    ``f_vco = f_out * CLKOP_DIV``."""
    f_in: Fraction
    clki_div: int
    clkfb_div: int
    clkop_div: int

    @property
    def f_pfd(self) -> Fraction:
        return self.f_in / self.clki_div

    @property
    def f_out(self) -> Fraction:
        return self.f_pfd * self.clkfb_div

    @property
    def f_vco(self) -> Fraction:
        return self.f_out * self.clkop_div

    def parameters(self) -> dict:
        """Instance parameters (``p_`` names without the prefix); CLKOP at zero phase
        (``CLKOP_CPHASE = CLKOP_DIV - 1``, as Lattice's tools set it)."""
        return {"PLLRST_ENA": "DISABLED", "INTFB_WAKE": "DISABLED", "STDBY_ENABLE": "DISABLED",
                "DPHASE_SOURCE": "DISABLED", "OUTDIVIDER_MUXA": "DIVA", "OUTDIVIDER_MUXB": "DIVB",
                "OUTDIVIDER_MUXC": "DIVC", "OUTDIVIDER_MUXD": "DIVD", "CLKOP_ENABLE": "ENABLED",
                "CLKOP_DIV": self.clkop_div, "CLKOP_CPHASE": self.clkop_div - 1, "CLKOP_FPHASE": 0,
                "FEEDBK_PATH": "CLKOP", "CLKFB_DIV": self.clkfb_div, "CLKI_DIV": self.clki_div}

    def attributes(self) -> dict:
        """Attributes nextpnr reads to derive the output clock and to set the loop filter."""
        return {"FREQUENCY_PIN_CLKI": f"{float(self.f_in):.6g}", "FREQUENCY_PIN_CLKOP": f"{float(self.f_out):.6g}",
                "ICP_CURRENT": "12", "LPF_RESISTOR": "8", "MFG_ENABLE_FILTEROPAMP": "1", "MFG_GMCREF_SEL": "2"}


# iCE40 limits (iCE40 sysCLOCK PLL guide, as icepll uses them), MHz.
ICE40_IN, ICE40_PFD, ICE40_VCO, ICE40_OUT = (10, 133), (10, 133), (533, 1066), (16, 275)
# ECP5 limits (as ecppll uses them), MHz.
ECP5_IN, ECP5_PFD, ECP5_VCO, ECP5_OUT = (8, 400), (Fraction(3125, 1000), 400), (400, 800), (10, 400)


def _accept(target: Fraction, achieved: Fraction, tolerance: Fraction, device: str, f_in: Fraction):
    if abs(achieved - target) > tolerance * target:
        raise PLLError(f"the {device} PLL cannot produce {_fmt(target)} from {_fmt(f_in)}: the closest is "
                       f"{_fmt(achieved)} (more than {float(tolerance):.1%} away)")


def ice40_pll(f_in_mhz, f_out_mhz, *, tolerance=DEFAULT_TOLERANCE) -> ICE40PLL:
    """Coefficients of an iCE40 PLL (SIMPLE feedback) from ``f_in_mhz`` to ``f_out_mhz``:
    the closest output, the first found in icepll's order (DIVR, DIVF, DIVQ ascending)."""
    f_in, target, tol = _mhz(f_in_mhz, "f_in_mhz"), _mhz(f_out_mhz, "f_out_mhz"), _check_tolerance(tolerance)
    if not _in(f_in, *ICE40_IN):
        raise PLLError(f"the iCE40 PLL takes {ICE40_IN[0]}-{ICE40_IN[1]} MHz, not {_fmt(f_in)}")
    if not _in(target, *ICE40_OUT):
        raise PLLError(f"the iCE40 PLL produces {ICE40_OUT[0]}-{ICE40_OUT[1]} MHz, not {_fmt(target)}")
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not _in(f_pfd, *ICE40_PFD):
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not _in(f_vco, *ICE40_VCO):
                continue
            for divq in range(1, 7):
                err = abs(f_vco / 2 ** divq - target)
                if best is None or err < best[0]:
                    best = (err, divr, divf, divq)
    if best is None:
        raise PLLError(f"the iCE40 PLL has no valid configuration for {_fmt(f_in)} in")
    _, divr, divf, divq = best
    f_pfd = f_in / (divr + 1)
    # Loop filter by PFD frequency, as icepll sets it.
    for filter_range, below in enumerate((17, 26, 44, 66, 101), start=1):
        if f_pfd < below:
            break
    else:
        filter_range = 6
    pll = ICE40PLL(f_in=f_in, divr=divr, divf=divf, divq=divq, filter_range=filter_range)
    _accept(target, pll.f_out, tol, "iCE40", f_in)
    return pll


def ecp5_pll(f_in_mhz, f_out_mhz, *, tolerance=DEFAULT_TOLERANCE) -> ECP5PLL:
    """Coefficients of an ECP5 PLL from ``f_in_mhz`` to ``f_out_mhz``: the closest output;
    among equals the VCO closest to 600 MHz, then the first in ecppll's order."""
    f_in, target, tol = _mhz(f_in_mhz, "f_in_mhz"), _mhz(f_out_mhz, "f_out_mhz"), _check_tolerance(tolerance)
    if not _in(f_in, *ECP5_IN):
        raise PLLError(f"the ECP5 PLL takes {ECP5_IN[0]}-{ECP5_IN[1]} MHz, not {_fmt(f_in)}")
    if not _in(target, *ECP5_OUT):
        raise PLLError(f"the ECP5 PLL produces {ECP5_OUT[0]}-{ECP5_OUT[1]} MHz, not {_fmt(target)}")
    best = None
    for clki_div in range(1, 129):
        f_pfd = f_in / clki_div
        if not _in(f_pfd, *ECP5_PFD):
            continue
        for clkfb_div in range(1, 81):
            f_out = f_pfd * clkfb_div
            err = abs(f_out - target)
            # The output divider only places the VCO: in range, nearest 600 MHz, smallest on a tie.
            lo = max(1, -(-ECP5_VCO[0] // f_out))
            hi = min(128, ECP5_VCO[1] // f_out)
            if lo > hi:
                continue
            near = Fraction(600) / f_out
            candidates = {min(max(int(d), lo), hi) for d in (near.__floor__(), near.__ceil__())}
            clkop_div = min(candidates, key=lambda d: (abs(f_out * d - 600), d))
            key = (err, abs(f_out * clkop_div - 600))
            if best is None or key < best[0]:
                best = (key, clki_div, clkfb_div, clkop_div)
    if best is None:
        raise PLLError(f"the ECP5 PLL has no valid configuration for {_fmt(f_in)} in")
    _, clki_div, clkfb_div, clkop_div = best
    pll = ECP5PLL(f_in=f_in, clki_div=clki_div, clkfb_div=clkfb_div, clkop_div=clkop_div)
    _accept(target, pll.f_out, tol, "ECP5", f_in)
    return pll
