"""The boards an accelerator can be built for: platform, device, clock, resources.

Resources are named as nextpnr names its cell types in the post-route utilisation, so that
a fit check (:mod:`boards.fit`) and a build report (:mod:`boards.build`) speak of the same
things: ``ICESTORM_LC`` (iCE40 logic cells: a LUT4 and a flip-flop), ``ICESTORM_RAM`` (4 Kbit
EBR), ``ICESTORM_SPRAM`` (256 Kbit single-port RAM, 16K x 16), ``ICESTORM_DSP`` (SB_MAC16);
``TRELLIS_COMB`` (ECP5 LUT4s, including those of distributed RAM), ``DP16KD`` (18 Kbit block
RAM), ``MULT18X18D``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

__all__ = ["Board", "BOARDS", "get_board", "RESOURCE_LABELS"]

#: What each resource is, for messages.
RESOURCE_LABELS = {
    "ICESTORM_LC": "logic cells (LUT4 + FF)",
    "ICESTORM_RAM": "EBR block RAMs (4 Kbit)",
    "ICESTORM_SPRAM": "SPRAMs (256 Kbit)",
    "ICESTORM_DSP": "DSPs (SB_MAC16)",
    "TRELLIS_COMB": "LUT4s",
    "DP16KD": "block RAMs (DP16KD, 18 Kbit)",
    "MULT18X18D": "multipliers (MULT18X18D)",
}


@dataclass(frozen=True)
class Board:
    """One board: where its platform lives and what its FPGA offers.

    ``clock_mhz`` is the board oscillator (input of the PLL); ``default_mhz`` the target
    frequency of the accelerator's clock when none is asked for. ``weight_ram`` is the
    ``EGRUSystem`` weight-memory choice; ``synth_opts`` the yosys ``synth_*`` options.
    ``leds`` are the (resource, number) pairs showing model loaded, activity, error.
    ``router`` is nextpnr's router of a build, ``timeout_min`` its time budget in minutes and
    ``seeds`` the placement seeds it tries, when none are asked for (docs/builds.md has the
    measurements behind them).
    """
    name: str
    platform: str                 # "module:Class" in amaranth_boards
    family: str                   # "ice40" or "ecp5"
    device: str
    package: str
    clock: str                    # amaranth-boards clock resource
    clock_mhz: float
    default_mhz: float
    resources: dict = field(hash=False)
    weight_ram: str = "inferred"
    synth_opts: str = ""
    leds: tuple = (("led", 0), ("led", 1), ("led", 2))
    extra_resources: str | None = None   # platform attribute with resources to add (e.g. a PMOD)
    #: Memories of at most this many bits ignore a design's request for block RAM (``ram_style`` /
    #: ``rom_style`` "block") and are mapped by yosys' cost model, normally into logic: on the
    #: UP5K the 30 EBRs are the scarcest resource and belong to the core's lanes.
    small_memory_bits: int = 0
    logic_resource: str = ""
    ram_resource: str = ""
    dsp_resource: str = ""
    router: str = "router2"
    timeout_min: float = 30.0
    seeds: int = 1

    def platform_class(self):
        module, cls = self.platform.split(":")
        return getattr(importlib.import_module(module), cls)

    def make_platform(self):
        plat = self.platform_class()()
        if self.extra_resources:
            plat.add_resources(getattr(plat, self.extra_resources))
        return plat

    @property
    def bitstream_ext(self) -> str:
        return {"ice40": "bin", "ecp5": "bit"}[self.family]


_ICE40_UP5K = {"ICESTORM_LC": 5280, "ICESTORM_RAM": 30, "ICESTORM_SPRAM": 4, "ICESTORM_DSP": 8}

BOARDS = {
    "icebreaker": Board(
        name="icebreaker", platform="amaranth_boards.icebreaker:ICEBreakerPlatform", family="ice40",
        device="iCE40UP5K", package="SG48", clock="clk12", clock_mhz=12.0, default_mhz=24.0,
        resources=_ICE40_UP5K, weight_ram="ice40_spram", synth_opts="-dsp", small_memory_bits=1024,
        # Red and green LEDs on the board, the third on the snap-off PMOD (LED2).
        leds=(("led", 1), ("led", 2), ("led", 0)), extra_resources="break_off_pmod",
        logic_resource="ICESTORM_LC", ram_resource="ICESTORM_RAM", dsp_resource="ICESTORM_DSP",
        # router1 meets 24 MHz on the digits model where router2 does not; one seed in about ten
        # falls short of it, so two seeds by default (docs/builds.md).
        router="router1", timeout_min=20.0, seeds=2),
    "ulx3s-85f": Board(
        name="ulx3s-85f", platform="amaranth_boards.ulx3s:ULX3S_85F_Platform", family="ecp5",
        device="LFE5U-85F", package="BG381", clock="clk25", clock_mhz=25.0, default_mhz=50.0,
        resources={"TRELLIS_COMB": 83640, "DP16KD": 208, "MULT18X18D": 156},
        logic_resource="TRELLIS_COMB", ram_resource="DP16KD", dsp_resource="MULT18X18D"),
    "ulx3s-25f": Board(
        name="ulx3s-25f", platform="amaranth_boards.ulx3s:ULX3S_25F_Platform", family="ecp5",
        device="LFE5U-25F", package="BG381", clock="clk25", clock_mhz=25.0, default_mhz=50.0,
        resources={"TRELLIS_COMB": 24288, "DP16KD": 56, "MULT18X18D": 28},
        logic_resource="TRELLIS_COMB", ram_resource="DP16KD", dsp_resource="MULT18X18D"),
}


def get_board(name) -> Board:
    """The board called ``name`` (see :data:`BOARDS`); ``ValueError`` listing the known ones."""
    if isinstance(name, Board):
        return name
    if not isinstance(name, str):
        raise TypeError(f"board must be a board name (str), not {type(name).__name__}")
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None
