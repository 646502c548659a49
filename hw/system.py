"""The accelerator as a board sees it: UART (8N1) <-> protocol bridge <-> EGRU core.

::

    rx pin --> UARTRx --> Bridge.rx     Bridge.core_i ----> EGRUCore.i
    tx pin <-- UARTTx <-- Bridge.tx     Bridge.core_o <---- EGRUCore.o
                                        Bridge.core_ctl/core_status/core_cfg <-> EGRUCore

The bridge (:mod:`hw.bridge`) executes the host protocol of docs/protocol.md; a board top
level adds only clocks, pins and LEDs (:mod:`boards`).
"""

import math

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .bridge import Bridge
from .config import check_positive_number
from .construct import checked_construction
from .core import EGRUCore
from .params import CoreParams
from .uart import UARTRx, UARTTx, check_divisor

__all__ = ["EGRUSystem", "activity_led", "MAX_BAUD_ERROR", "ACTIVITY_HOLD_S", "ACTIVITY_PRESCALE", "uart_divisor"]

#: Largest relative difference between the requested and the generated baud rate. An 8N1
#: receiver sampling mid-bit tolerates about 5% between both ends; 2% leaves the host its share.
MAX_BAUD_ERROR = 0.02
#: How long (s) leds[1] stays lit after a byte moved, so that a short frame is visible.
ACTIVITY_HOLD_S = 0.04
#: The activity countdown counts ticks of this many cycles (the LED stays lit between
#: ACTIVITY_HOLD_S and ACTIVITY_HOLD_S plus two ticks).
ACTIVITY_PRESCALE = 1 << 12


def uart_divisor(clk_hz, baud) -> int:
    """Clock cycles per UART bit, ``round(clk_hz / baud)``, checked against the UART's
    minimum and :data:`MAX_BAUD_ERROR`. ``clk_hz`` and ``baud`` in Hz and bit/s."""
    check_positive_number("clk_hz", clk_hz)
    check_positive_number("baud", baud)
    divisor = round(clk_hz / baud)
    try:
        check_divisor(divisor)
    except ValueError as e:
        raise ValueError(f"clk_hz {clk_hz:g} Hz / baud {baud:g} gives {divisor} clock cycles per bit, too few "
                         f"for the UART ({e})") from None
    actual = clk_hz / divisor
    error = abs(actual - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"clk_hz {clk_hz:g} Hz with {divisor} clock cycles per bit gives {actual:.1f} baud, "
                         f"{error:.2%} off the requested {baud:g} (at most {MAX_BAUD_ERROR:.0%})")
    return divisor


def activity_led(m: Module, *, clk_hz, uart_rx: UARTRx, uart_tx: UARTTx) -> Signal:
    """A signal high within :data:`ACTIVITY_HOLD_S` seconds after a byte moved on the UART."""
    # A retriggered countdown of ACTIVITY_HOLD_S, reloaded by every byte in either direction.
    # It counts prescaler ticks (every ACTIVITY_PRESCALE cycles) so that the countdown is a
    # short counter: a 20-bit reloadable countdown was the longest path on the iCE40.
    prescale = Signal(range(ACTIVITY_PRESCALE))
    tick = Signal()
    m.d.sync += [prescale.eq(prescale + 1), tick.eq(prescale == ACTIVITY_PRESCALE - 1)]
    hold = max(1, math.ceil(ACTIVITY_HOLD_S * clk_hz / ACTIVITY_PRESCALE))
    act_count = Signal(range(hold + 1))
    act_byte = Signal()
    # Registered: the transmit handshake is the end of the bridge's response logic, and
    # an LED does not need it in the same cycle.
    m.d.sync += act_byte.eq((uart_rx.o.valid & uart_rx.o.ready) | (uart_tx.i.valid & uart_tx.i.ready))
    with m.If(act_byte):
        m.d.sync += act_count.eq(hold)
    with m.Elif(tick & (act_count != 0)):
        m.d.sync += act_count.eq(act_count - 1)
    active = Signal()
    m.d.comb += active.eq(act_count != 0)
    return active


class EGRUSystem(wiring.Component):
    """UART (8N1) <-> Bridge <-> EGRUCore: everything a board top level needs besides clocks and pins.

    Args:
        params: The core (shapes, formats, initial memory contents) and the generator's
            choices: ``params.config.clk_hz`` (the ``sync`` clock in Hz; required here),
            ``baud`` (the UART divides the clock by ``round(clk_hz / baud)``), ``weight_ram``
            and ``model_at_reset`` (whether RUN works right after configuration).

    Members:
        rx: UART line into the FPGA (idle high), asynchronous to the clock.
        tx: UART line out of the FPGA (idle high).
        leds: ``leds[0]`` a valid model is loaded; ``leds[1]`` activity: the core is busy, a
            load is in progress, or a byte moved on the UART within the last
            ``ACTIVITY_HOLD_S`` seconds; ``leds[2]`` the bridge reports an error.

    Attributes:
        divisor: Clock cycles per UART bit.
        baud_actual: The generated bit rate, ``clk_hz / divisor``.
    """
    rx: In(1, init=1)
    tx: Out(1, init=1)
    leds: Out(3)

    def __init__(self, params: CoreParams):
        with checked_construction(self):
            if not isinstance(params, CoreParams):
                raise TypeError(f"params must be CoreParams, not {type(params).__name__}")
            cfg = params.config
            if cfg.clk_hz is None:
                raise ValueError("a system needs its clock frequency: params.config.clk_hz is None")
            self.divisor = uart_divisor(cfg.clk_hz, cfg.baud)
        self.params = params
        self.clk_hz = cfg.clk_hz
        self.baud = cfg.baud
        self.baud_actual = cfg.clk_hz / self.divisor
        self.model_at_reset = cfg.model_at_reset
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = uart_rx = UARTRx(divisor=self.divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(divisor=self.divisor)
        m.submodules.bridge = bridge = Bridge(self.params)
        m.submodules.core = core = EGRUCore(self.params)

        # UARTRx passes the asynchronous line through its own two flip-flops
        # (hw/uart.py, rx_sync) before anything looks at it.
        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        wiring.connect(m, uart_rx.o, bridge.rx)
        wiring.connect(m, bridge.tx, uart_tx.i)
        wiring.connect(m, bridge.core_i, core.i)
        wiring.connect(m, core.o, bridge.core_o)
        wiring.connect(m, bridge.core_ctl, core.ctl)
        wiring.connect(m, core.status, bridge.core_status)
        wiring.connect(m, bridge.core_cfg, core.cfg)

        activity = activity_led(m, clk_hz=self.clk_hz, uart_rx=uart_rx, uart_tx=uart_tx)
        m.d.comb += [
            self.leds[0].eq(bridge.model_ok),
            self.leds[1].eq(core.status.busy | bridge.loading | activity),
            self.leds[2].eq(bridge.error),
        ]
        return m
