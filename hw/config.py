"""The generator's choices, in one frozen configuration.

Everything the generator is told rather than derives from the model lives in an
:class:`AcceleratorConfig`: how many lanes, the dense baseline or the sparse core, where
the weights live, the debug ports, the clock and the UART rate of a system, and whether
the bitstream's memories start with a model. The core's parameters
(:class:`~egru_accel.hw.params.CoreParams`) pair one configuration with one packed model;
``summary.json`` and every build report carry the configuration as :meth:`to_dict` gives it.

The choices are model-level: the current core shares its lanes, memories and datapath
between all layers, so none of them applies to a single layer.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

__all__ = ["AcceleratorConfig", "WEIGHT_RAMS", "check_positive_number"]

#: Where the weight memory lives: ``"inferred"`` (an Amaranth ``Memory``: block RAM or
#: distributed RAM, initialised by the bitstream) or ``"ice40_spram"`` (iCE40 UP5K SPRAM,
#: :mod:`egru_accel.hw.spram`, which the bitstream cannot initialise: loaded over the UART).
WEIGHT_RAMS = ("inferred", "ice40_spram")


def check_positive_number(name: str, value) -> float:
    """``value`` if it is a positive finite real number, else ``TypeError``/``ValueError`` naming ``name``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, not {value!r}")
    return value


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class AcceleratorConfig:
    """The generator's choices (all keyword-only).

    Args:
        lanes: Parallel lanes ``P`` (>= 1, at most the smallest layer's neurons).
        dense: The dense baseline (every weight stored, every neuron an event) instead of
            the event-driven sparse core.
        weight_ram: One of :data:`WEIGHT_RAMS`.
        debug: Add the ``dbg`` ports (one neuron update per lane and cycle) for testbenches.
        max_weight_depth: Refuse a model whose fullest lane needs more weight words than
            this (``None``: no limit).
        clk_hz: Frequency of a system's ``sync`` clock in Hz (the UART divides it); needed by
            :class:`~egru_accel.hw.system.EGRUSystem`, unused by a core alone.
        baud: UART bit rate in bit/s.
        model_at_reset: Whether the bitstream's memories hold the model at power-up, so that
            RUN works before any load; ``None``: exactly when ``weight_ram`` is ``"inferred"``
            (SPRAM starts empty).
    """
    lanes: int = 1
    dense: bool = False
    weight_ram: str = "inferred"
    debug: bool = False
    max_weight_depth: int | None = None
    clk_hz: float | None = None
    baud: float = 115200
    model_at_reset: bool | None = None

    def __post_init__(self):
        if not isinstance(self.lanes, numbers.Integral) or isinstance(self.lanes, bool):
            raise TypeError(f"lanes must be an integer, not {self.lanes!r}")
        if self.lanes < 1:
            raise ValueError(f"lanes must be at least 1, not {self.lanes}")
        object.__setattr__(self, "lanes", int(self.lanes))
        _flag("dense", self.dense)
        _flag("debug", self.debug)
        if not isinstance(self.weight_ram, str):
            raise TypeError(f"weight_ram must be a string, not {self.weight_ram!r}")
        if self.weight_ram not in WEIGHT_RAMS:
            raise ValueError(f"weight_ram must be one of {', '.join(map(repr, WEIGHT_RAMS))}, not {self.weight_ram!r}")
        if self.max_weight_depth is not None:
            if not isinstance(self.max_weight_depth, numbers.Integral) or isinstance(self.max_weight_depth, bool):
                raise TypeError(f"max_weight_depth must be an integer or None, not {self.max_weight_depth!r}")
            if self.max_weight_depth < 1:
                raise ValueError(f"max_weight_depth must be at least 1, not {self.max_weight_depth}")
        if self.clk_hz is not None:
            check_positive_number("clk_hz", self.clk_hz)
        check_positive_number("baud", self.baud)
        if self.model_at_reset is None:
            object.__setattr__(self, "model_at_reset", self.weight_ram == "inferred")
        elif not isinstance(self.model_at_reset, bool):
            raise TypeError(f"model_at_reset must be True, False or None, not {self.model_at_reset!r}")
        elif self.model_at_reset and self.weight_ram == "ice40_spram":
            raise ValueError("model_at_reset=True needs weights the bitstream initialises; "
                             "weight_ram='ice40_spram' starts empty")

    def replace(self, **changes) -> "AcceleratorConfig":
        """A copy with ``changes`` (checked like the original). ``model_at_reset`` follows a
        changed ``weight_ram`` unless it is given too."""
        if "weight_ram" in changes and "model_at_reset" not in changes:
            changes["model_at_reset"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
