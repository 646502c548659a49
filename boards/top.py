"""Board top level: the board's oscillator through a PLL, a reset held until the PLL locks,
the accelerator system (:class:`hw.system.EGRUSystem`) on the board's UART pins, three LEDs.

::

    oscillator --> PLL (SB_PLL40_PAD / EHXPLLL) --> sync clock
                    LOCK --> ResetGenerator ------> sync reset
    uart.rx pin --> EGRUSystem.rx      EGRUSystem.tx --> uart.tx pin
                    EGRUSystem.leds --> LEDs (model loaded, activity, error)

The clock constraint nextpnr checks is the PLL's actual output frequency.

A capacity build on the ECP5 runs its UART and bridge from the oscillator itself, in a clock
domain ``bridge`` with a reset generator of its own, behind the core's clock-domain crossing
(:class:`hw.core_crossing.CoreCrossing`): the bridge then does not limit the core's clock
(:func:`link_clock_hz`).
"""

import math
import numbers
from dataclasses import dataclass
from fractions import Fraction

from amaranth.hdl import ClockDomain, Const, DomainRenamer, Elaboratable, Instance, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from egru_accel.hw.construct import checked_construction

from .boards import Board, get_board
from .pll import ECP5PLL, ICE40PLL, PLLError, ecp5_pll, ice40_pll

__all__ = ["BoardTop", "capacity_config", "ClockPlan", "ResetGenerator", "link_clock_hz", "plan_clock",
           "RESET_HOLD_S"]

#: How long the reset stays asserted after the PLL locks, in seconds. The iCE40's block RAMs
#: read wrong data for about 3 us after configuration (Amaranth's own iCE40 clock domain waits
#: 15 us for the same reason); the hold also keeps the design in reset while the clock settles.
RESET_HOLD_S = 15e-6


@dataclass(frozen=True)
class ClockPlan:
    """How a board makes the ``sync`` clock: ``pll`` (None: the oscillator directly) and the
    resulting frequency ``f_mhz`` (exact)."""
    board: Board
    target_mhz: float
    pll: ICE40PLL | ECP5PLL | None
    f_mhz: Fraction

    @property
    def f_hz(self) -> float:
        return float(self.f_mhz) * 1e6


def plan_clock(board, freq_mhz=None) -> ClockPlan:
    """The clock of ``board`` at ``freq_mhz`` (default: the board's default target):
    the oscillator itself when the target equals it, else the PLL (:class:`PLLError` if it
    cannot produce the target)."""
    board = get_board(board)
    if freq_mhz is None:
        freq_mhz = board.default_mhz
    if isinstance(freq_mhz, bool) or not isinstance(freq_mhz, numbers.Real):
        raise TypeError(f"freq_mhz must be a frequency in MHz, not {freq_mhz!r}")
    if not (math.isfinite(freq_mhz) and freq_mhz > 0):
        raise ValueError(f"freq_mhz must be a positive frequency in MHz, not {freq_mhz}")
    if Fraction(str(freq_mhz)) == Fraction(str(board.clock_mhz)):
        return ClockPlan(board=board, target_mhz=freq_mhz, pll=None, f_mhz=Fraction(str(board.clock_mhz)))
    make = {"ice40": ice40_pll, "ecp5": ecp5_pll}[board.family]
    try:
        pll = make(board.clock_mhz, freq_mhz)
    except PLLError as e:
        raise PLLError(f"{board.name}: {e}") from None
    return ClockPlan(board=board, target_mhz=freq_mhz, pll=pll, f_mhz=pll.f_out)


class ResetGenerator(wiring.Component):
    """Synchronous reset for the domain it runs in, held while ``locked`` is low and for
    ``hold_cycles`` cycles after it rises.

    Runs in ``sync`` (rename it into a reset-less domain on the same clock: it must not be
    reset by the reset it makes). ``locked`` is asynchronous (a PLL's LOCK) and passes two
    flip-flops first. ``rst`` is a register output, so it has no glitches.
    """
    locked: In(1)
    rst: Out(1, init=1)

    def __init__(self, *, hold_cycles: int):
        with checked_construction(self):
            if isinstance(hold_cycles, bool) or not isinstance(hold_cycles, int):
                raise TypeError(f"hold_cycles must be an integer number of clock cycles, not {hold_cycles!r}")
            if hold_cycles < 1:
                raise ValueError(f"hold_cycles must be at least 1, not {hold_cycles}")
        self.hold_cycles = hold_cycles
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        rg_locked = Signal()
        m.submodules.rg_sync = FFSynchronizer(self.locked, rg_locked, init=0)
        rg_count = Signal(range(self.hold_cycles + 1))
        with m.If(~rg_locked):
            m.d.sync += rg_count.eq(0)     # lock lost: start the hold again
        with m.Elif(rg_count != self.hold_cycles):
            m.d.sync += rg_count.eq(rg_count + 1)
        m.d.sync += self.rst.eq(~rg_locked | (rg_count != self.hold_cycles))
        return m


def capacity_config(board, capacity):
    """Core v2's configuration for a capacity build on ``board`` (docs/core-v2.md, "Choices per
    board"): on the iCE40 SB_MAC16 lanes, one bank and one update unit, the weights in SPRAM
    (which needs the capacity's wide weight memory); on the ECP5 fabric lanes, two banks, two
    units from 8 lanes, the bias RAMs registered, a second sweep address stage from 16 lanes.
    The readout runs on the capacity's engine if it has one. No model at reset: models come
    over the UART."""
    from egru_accel.hw.shared_core import SharedCoreConfig
    board = get_board(board)
    readout = {"readout": "engine", "readout_macs": capacity.readout_macs} if capacity.readout_macs else {}
    if board.family == "ice40":
        if capacity.weight_memory != "wide":
            raise ValueError("an iCE40 capacity build keeps its weights in SPRAM, which needs a wide weight "
                             "memory (Capacity(weight_memory='wide', structure='lane-window'))")
        return SharedCoreConfig(lane="sb_mac16", weight_memory="wide", weight_ram="ice40_spram",
                                model_at_reset=False, **readout)
    P = capacity.lanes
    return SharedCoreConfig(lane="fabric", banks=2, units=2 if P >= 8 else 1, weight_memory=capacity.weight_memory,
                            register_bias=True, sweep_address_stages=2 if P >= 16 else 1, model_at_reset=False,
                            **readout)


def link_clock_hz(board, plan: ClockPlan) -> float | None:
    """The clock of a capacity build's UART and bridge on ``board`` at ``plan``, in Hz, when it
    is not the core's: on the ECP5 with a PLL, the oscillator (its pin reaches the fabric's
    clock network beside the PLL). ``None``: one clock for all. On the iCE40, SB_PLL40_PAD takes
    the oscillator's pin for itself (a second fabric clock would need SB_PLL40_2_PAD), so the
    link stays on the core's clock there."""
    board = get_board(board)
    if board.family == "ecp5" and plan.pll is not None:
        return board.clock_mhz * 1e6
    return None


class BoardTop(Elaboratable):
    """Top level of ``board`` (name or :class:`~boards.boards.Board`) for the core ``params``.

    Args:
        board: Board name (see :data:`boards.boards.BOARDS`).
        params: :class:`~egru_accel.hw.params.CoreParams` of a core v1 (its ``config.baud``
            is the UART rate), or a :class:`~egru_accel.hw.capacity_system.CapacityDesign`
            (a capacity build of core v2; :func:`capacity_config` is the board's configuration).
        freq_mhz: Target frequency of the accelerator clock in MHz (default: the board's).

    The board decides the rest of the configuration: where the weights live
    (``board.weight_ram``) and the clock (the PLL's output, ``config.clk_hz``).

    Attributes: ``clock`` (:class:`ClockPlan`), ``params`` (with the board's choices),
    ``system`` (the :class:`~egru_accel.hw.system.EGRUSystem` or
    :class:`~egru_accel.hw.capacity_system.CapacitySystem`).
    """

    def __init__(self, board, params, *, freq_mhz=None):
        from egru_accel.hw.capacity_system import CapacityDesign
        from egru_accel.hw.params import CoreParams
        from egru_accel.hw.system import EGRUSystem
        with checked_construction(self):
            if not isinstance(params, (CoreParams, CapacityDesign)):
                raise TypeError(f"params must be CoreParams or a CapacityDesign, not {type(params).__name__}")
            self.board = get_board(board)
            self.clock = plan_clock(self.board, freq_mhz)
            if isinstance(params, CapacityDesign):
                self.params = params
                self.link_hz = link_clock_hz(self.board, self.clock)
                self.system = params.system(self.clock.f_hz, bridge_clk_hz=self.link_hz)
            else:
                self.params = params.replace_config(clk_hz=self.clock.f_hz, weight_ram=self.board.weight_ram)
                self.link_hz = None
                self.system = EGRUSystem(self.params)

    def elaborate(self, platform):
        m = Module()
        board, plan = self.board, self.clock
        m.domains.sync = cd_sync = ClockDomain("sync")
        # The reset generator's own domain: same clock, no reset (it makes the reset).
        m.domains.por = cd_por = ClockDomain("por", reset_less=True)
        locked = Signal()
        # The clock net under a name of the top level, for the iCE40 timing constraint.
        clk = Signal(name="clk_sync")

        if plan.pll is None:
            m.submodules.clk_buf = clk_in = io.Buffer("i", platform.request(board.clock, 0, dir="-"))
            m.d.comb += [clk.eq(clk_in.i), locked.eq(1)]
        elif board.family == "ice40":
            # SB_PLL40_PAD takes the oscillator straight from its package pin (on the iCEBreaker
            # the 12 MHz pin is the PLL's pad), so the pin is requested without a buffer.
            clk_pin = platform.request(board.clock, 0, dir="-")
            params = {f"p_{k}": v for k, v in plan.pll.parameters().items()}
            m.submodules.pll = Instance(
                "SB_PLL40_PAD", **params,
                i_PACKAGEPIN=clk_pin.io, i_RESETB=Const(1), i_BYPASS=Const(0),
                o_PLLOUTGLOBAL=clk, o_LOCK=locked)
        else:
            m.submodules.clk_buf = clk_in = io.Buffer("i", platform.request(board.clock, 0, dir="-"))
            params = {f"p_{k}": v for k, v in plan.pll.parameters().items()}
            attrs = {f"a_{k}": v for k, v in plan.pll.attributes().items()}
            m.submodules.pll = Instance(
                "EHXPLLL", **params, **attrs,
                i_CLKI=clk_in.i, i_CLKFB=clk, i_RST=Const(0), i_STDBY=Const(0),
                i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1), i_PHASESTEP=Const(1),
                i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0), i_ENCLKOP=Const(0),
                o_CLKOP=clk, o_LOCK=locked)
        m.d.comb += [cd_sync.clk.eq(clk), cd_por.clk.eq(clk)]
        if board.family == "ice40" and plan.pll is not None:
            platform.add_clock_constraint(clk, plan.f_hz)
        # Otherwise nextpnr derives the constraint: from the oscillator pin's constraint without
        # a PLL, and on ECP5 from the PLL's FREQUENCY_PIN_CLKOP attribute (nextpnr-ecp5 finds a
        # net constraint only under the net's final name, which synthesis chooses).

        hold = max(1, math.ceil(RESET_HOLD_S * plan.f_hz))
        m.submodules.reset = reset = DomainRenamer("por")(ResetGenerator(hold_cycles=hold))
        m.d.comb += [reset.locked.eq(locked), cd_sync.rst.eq(reset.rst)]
        if self.link_hz is not None:
            # The link's domain on the oscillator, held in reset by the same lock: the two
            # domains leave reset within a few microseconds of each other, before any byte.
            m.domains.bridge = cd_bridge = ClockDomain("bridge")
            m.domains.bridge_por = cd_bridge_por = ClockDomain("bridge_por", reset_less=True)
            m.d.comb += [cd_bridge.clk.eq(clk_in.i), cd_bridge_por.clk.eq(clk_in.i)]
            hold_link = max(1, math.ceil(RESET_HOLD_S * self.link_hz))
            m.submodules.bridge_reset = bridge_reset = DomainRenamer("bridge_por")(ResetGenerator(hold_cycles=hold_link))
            m.d.comb += [bridge_reset.locked.eq(locked), cd_bridge.rst.eq(bridge_reset.rst)]

        m.submodules.system = system = self.system
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = uart_rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = uart_tx = io.Buffer("o", uart.tx)
        m.d.comb += [system.rx.eq(uart_rx.i), uart_tx.o.eq(system.tx)]
        for k, (name, number) in enumerate(board.leds):
            m.submodules[f"led{k}"] = led = io.Buffer("o", platform.request(name, number, dir="-"))
            m.d.comb += led.o.eq(system.leds[k])
        return m
