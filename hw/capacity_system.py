"""A capacity build as a board sees it: UART (8N1) <-> protocol bridge <-> core v2 (with
``bridge_clk_hz``, the UART and the bridge in a clock domain of their own, behind
:class:`~hw.core_crossing.CoreCrossing`).

::

    rx pin --> UARTRx --> Bridge.rx     Bridge.core_i ------> SharedCore.i (sign-extended)
    tx pin <-- UARTTx <-- Bridge.tx     Bridge.core_o <------ SharedCore.o
                                        Bridge.core_cfg ----> SharedCore.load (a section's
                                                              word at its load address)
                                        Bridge.core_ctl/core_status <-> SharedCore.start/status

One bitstream for many models: the bridge serves the capacity's INFO (capacities and formats,
their CRC32 the signature) and takes any model image placed for the capacity
(:mod:`egru_accel.firmware.capacity_image`), checking it as it streams in, the run-time
registers word by word; RUN's sizes follow the loaded model's.
"""


from dataclasses import dataclass

from amaranth.hdl import Cat, DomainRenamer, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from egru_accel.quantize.capacity import Capacity, place
from egru_accel.quantize.model import QuantModel
from egru_accel.quantize.shared_rows import LoadMemory

from .bridge import Bridge, BridgeSpec
from .config import check_positive_number
from .construct import checked_construction
from .core_crossing import CoreCrossing
from .shared_core import SharedCore, SharedCoreConfig
from .system import activity_led, uart_divisor
from .uart import UARTRx, UARTTx

__all__ = ["CapacitySystem", "CapacityDesign", "HostLink"]


@dataclass(frozen=True)
class CapacityDesign:
    """A capacity build before its clock is known: the capacity, the core's configuration and
    the UART's bit rate (a board top level makes the :class:`CapacitySystem` at its clock)."""
    capacity: Capacity
    config: SharedCoreConfig
    baud: int = 115200

    @property
    def lanes(self) -> int:
        return self.capacity.lanes

    def system(self, clk_hz, *, bridge_clk_hz=None) -> "CapacitySystem":
        return CapacitySystem(self.capacity, self.config, clk_hz=clk_hz, baud=self.baud,
                              bridge_clk_hz=bridge_clk_hz)


class HostLink(wiring.Component):
    """UART (8N1) <-> Bridge, and the LEDs: the host's side of a capacity build, in one clock
    domain (``sync``; rename it to put the link in a domain of its own).

    Args: ``spec`` (the bridge's :class:`~hw.bridge.BridgeSpec`), ``clk_hz`` (the link's clock
    in Hz), ``baud`` (bit/s).

    Members: ``rx``, ``tx``, ``leds`` as :class:`CapacitySystem`'s (``leds[1]`` lights with
    ``core_status.busy``); ``core_*``: the bridge's core ports."""

    def __init__(self, spec: BridgeSpec, *, clk_hz, baud):
        self.spec, self.clk_hz = spec, clk_hz
        self.divisor = uart_divisor(clk_hz, baud)
        self.bridge = Bridge(spec)
        sig = self.bridge.signature.members
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "leds": Out(3),
                          **{name: sig[name] for name in ("core_i", "core_o", "core_ctl", "core_status",
                                                          "core_cfg")}})

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = uart_rx = UARTRx(divisor=self.divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(divisor=self.divisor)
        m.submodules.bridge = bridge = self.bridge
        # UARTRx passes the asynchronous line through two flip-flops of its own first.
        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        wiring.connect(m, uart_rx.o, bridge.rx)
        wiring.connect(m, bridge.tx, uart_tx.i)
        for name in ("core_i", "core_ctl", "core_cfg"):
            wiring.connect(m, getattr(bridge, name), wiring.flipped(getattr(self, name)))
        for name in ("core_o", "core_status"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(bridge, name))
        m.d.comb += [self.leds[0].eq(bridge.model_ok),
                     self.leds[1].eq(self.core_status.busy | bridge.loading
                                     | activity_led(m, clk_hz=self.clk_hz, uart_rx=uart_rx, uart_tx=uart_tx)),
                     self.leds[2].eq(bridge.error)]
        return m


class CapacitySystem(wiring.Component):
    """UART (8N1) <-> Bridge <-> SharedCore built for a capacity: a board's design besides
    clocks and pins.

    Args:
        capacity: What the build holds (:class:`~egru_accel.quantize.capacity.Capacity`).
        config: The core's choices; its ``weight_memory`` and readout engine must be the
            capacity's (they fix the load port's words), and ``model_at_reset`` must say
            whether ``model`` is given.
        clk_hz: The ``sync`` clock (the core's) in Hz; ``baud``: the UART's bit rate.
        bridge_clk_hz: ``None``: the UART and the bridge run in ``sync`` too. Else they run in
            a clock domain ``bridge`` of that rate (Hz), which the parent provides, behind a
            :class:`~hw.core_crossing.CoreCrossing`, so that the bridge's paths do not limit
            the core's clock.
        model: A model the bitstream starts with (placed for the capacity), or ``None``: RUN
            answers NO_MODEL until a load succeeds.

    Members:
        rx, tx: the UART lines (idle high). leds: ``leds[0]`` a model is loaded, ``leds[1]``
        activity, ``leds[2]`` the last response was an error.
    """
    rx: In(1, init=1)
    tx: Out(1, init=1)
    leds: Out(3)

    def __init__(self, capacity: Capacity, config: SharedCoreConfig, *, clk_hz, baud=115200,
                 model: QuantModel | None = None, bridge_clk_hz=None):
        with checked_construction(self):
            if not isinstance(capacity, Capacity):
                raise TypeError(f"capacity must be a Capacity, not {type(capacity).__name__}")
            if not isinstance(config, SharedCoreConfig):
                raise TypeError(f"config must be a SharedCoreConfig, not {type(config).__name__}")
            if config.weight_memory != capacity.weight_memory:
                raise ValueError(f"the core's weight memory ({config.weight_memory}) is not the capacity's "
                                 f"({capacity.weight_memory})")
            if config.load_macs != capacity.readout_macs:
                raise ValueError(f"the core's readout engine multipliers ({config.load_macs}) are not the "
                                 f"capacity's readout_macs ({capacity.readout_macs})")
            if config.model_at_reset != (model is not None):
                raise ValueError("config.model_at_reset must be True exactly when a model is given")
            check_positive_number("clk_hz", clk_hz)
            if bridge_clk_hz is not None:
                check_positive_number("bridge_clk_hz", bridge_clk_hz)
            #: The UART's and the bridge's clock in Hz: the core's, or the bridge domain's.
            self.link_hz = link_hz = clk_hz if bridge_clk_hz is None else bridge_clk_hz
            self.divisor = uart_divisor(link_hz, baud)
            self.image = place(model, capacity) if model is not None else capacity.blank()
            self.spec = BridgeSpec.for_capacity(capacity, at_reset=self.image if model is not None else None)
        self.capacity = capacity
        self.config = config
        self.clk_hz = clk_hz
        self.bridge_clk_hz = bridge_clk_hz
        self.baud = baud
        self.baud_actual = link_hz / self.divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        link = HostLink(self.spec, clk_hz=self.link_hz, baud=self.baud)
        m.submodules.core = core = SharedCore(self.image, self.config)
        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx), self.leds.eq(link.leds), core.last.eq(0)]
        if self.bridge_clk_hz is None:
            m.submodules.link = link
            # The bridge's core ports, as the core sees them.
            i, o, start, status, cfg = link.core_i, link.core_o, link.core_ctl.start, link.core_status, link.core_cfg
        else:
            m.submodules.link = DomainRenamer("bridge")(link)
            m.submodules.crossing = crossing = CoreCrossing(self.spec, bridge_domain="bridge", core_domain="sync")
            for name in ("i", "ctl", "cfg"):
                wiring.connect(m, getattr(link, f"core_{name}"), getattr(crossing, f"bridge_{name}"))
            for name in ("o", "status"):
                wiring.connect(m, getattr(crossing, f"bridge_{name}"), getattr(link, f"core_{name}"))
            i, o, start, status, cfg = (crossing.core_i, crossing.core_o, crossing.core_start, crossing.core_status,
                                        crossing.core_cfg)

        # Inputs: the bridge's signed input_bits, sign-extended to the core's beats.
        m.d.comb += [core.i.valid.eq(i.valid), core.i.payload.eq(i.payload), i.ready.eq(core.i.ready),
                     core.start.eq(start)]
        wiring.connect(m, core.o, o)
        wiring.connect(m, core.status, status)

        # Memory writes: a section's word w goes to the section's base + w, which is the lane's
        # weight memory (lane << entry_address_bits) for a per-lane weight section.
        load = core.load
        lay = self.image.layout
        addr = Signal.like(load.payload.addr)
        if self.capacity.weight_memory == "lanes":
            eab = lay.entry_address_bits
            m.d.comb += addr.eq(Mux(cfg.mem == LoadMemory.WEIGHTS, Cat(cfg.addr[:eab], cfg.lane), cfg.addr))
        else:
            m.d.comb += addr.eq(cfg.addr)
        m.d.comb += [load.valid.eq(cfg.valid), cfg.ready.eq(load.ready), load.payload.mem.eq(cfg.mem),
                     load.payload.addr.eq(addr), load.payload.data.eq(cfg.data)]
        return m
