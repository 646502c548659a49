"""The bridge's view of a core in a clock domain of its own: a clock-domain crossing.

::

    bridge domain (slow)                                  core domain (sync, fast)
    Bridge.core_i   --+
    Bridge.core_ctl --+--> cmd AsyncFIFO (one entry per  --> core.i / core.start / core.load
    Bridge.core_cfg --+    input, start or memory write)
    Bridge.core_o   <----- out AsyncFIFO <-------------------- core.o
    Bridge.core_status <-- status AsyncFIFO (snapshots) <----- core.status

Why: the UART bridge (image checks, CRC32, the request buffer) is the longest path of a board
build (docs/core-v2.md, session 14), and it needs only the UART's rate; the core can run at
what its own paths allow.

The bridge's inputs, START strobes and memory writes share one queue, so the core sees them
in the order the bridge made them: a START never overtakes the inputs before it, and a RUN
never overtakes the load before it. The core's side presents a START at the queue's head only
while the core is idle, which is when the bridge presents it in a one-domain system (its
START waits for ``busy`` low). The bridge's ``busy`` is the core's (two flip-flops late) or
any command still in the queue, so the bridge's START is always taken by the queue (its
strobe has no ``ready``: with the queue empty, it has room).

The status counters cross as whole snapshots (a queue the core's side fills whenever it has
room), so the bridge never reads one counter's bytes from two different cycles; a snapshot is
at most a few bridge cycles old.

Resets: each queue is emptied by the reset of its writing domain; both domains are meant to
leave reset together (a board's reset generators, from one PLL lock).
"""

from amaranth.hdl import Cat, Const, Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import AsyncFIFO
from amaranth.lib.wiring import In, Out

from .bridge import BridgeSpec
from .construct import checked_construction
from .core import ControlSignature, StatusSignature

__all__ = ["CoreCrossing", "CMD_INPUT", "CMD_START", "CMD_WRITE"]

#: The kinds of entry in the command queue (its low two bits).
CMD_INPUT, CMD_START, CMD_WRITE = 0, 1, 2

_STATUS_BITS = 1 + 32 + 32 + 32     # busy, steps, cycles, step_cycles


class CoreCrossing(wiring.Component):
    """The bridge's core ports (``bridge_*``, in ``bridge_domain``) carried to a core in
    ``core_domain`` (``core_*``).

    Args:
        spec: The bridge's :class:`~hw.bridge.BridgeSpec` (input and output bits, the write
            port; the write port must have ``ready``, as a capacity build's does).
        bridge_domain, core_domain: the two clock domains (names).
        depth: entries of the command and output queues (a power of 2, at least 2).

    Members:
        bridge_i, bridge_ctl, bridge_cfg: from the bridge's ``core_i``, ``core_ctl``, ``core_cfg``.
        bridge_o, bridge_status: to the bridge's ``core_o`` and ``core_status``.
        core_i, core_start, core_cfg: to the core's input stream, ``start`` and write port.
        core_o, core_status: from the core's output stream and status.
    """

    def __init__(self, spec: BridgeSpec, *, bridge_domain: str = "bridge", core_domain: str = "sync",
                 depth: int = 4):
        with checked_construction(self):
            if not isinstance(spec, BridgeSpec):
                raise TypeError(f"spec must be a BridgeSpec, not {type(spec).__name__}")
            if "ready" not in spec.write.members:
                raise ValueError("the crossing needs a write port with ready (a capacity build's): without it "
                                 "the bridge writes by the core's busy, which a crossing delays")
            for name, value in (("bridge_domain", bridge_domain), ("core_domain", core_domain)):
                if not isinstance(value, str) or not value:
                    raise TypeError(f"{name} must be a clock domain name, not {value!r}")
            if bridge_domain == core_domain:
                raise ValueError(f"bridge_domain and core_domain are both {bridge_domain!r}: nothing to cross")
            if isinstance(depth, bool) or not isinstance(depth, int):
                raise TypeError(f"depth must be an integer number of entries, not {depth!r}")
            if depth < 2 or depth & (depth - 1):
                raise ValueError(f"depth must be a power of 2 of at least 2, not {depth}")
        self.spec, self.depth = spec, depth
        self.bridge_domain, self.core_domain = bridge_domain, core_domain
        write = spec.write
        super().__init__({
            "bridge_i": In(stream.Signature(signed(spec.input_bits))),
            "bridge_o": Out(stream.Signature(signed(spec.output_bits))),
            "bridge_ctl": In(ControlSignature()),
            "bridge_status": Out(StatusSignature()),
            "bridge_cfg": In(write),
            "core_i": Out(stream.Signature(signed(spec.input_bits))),
            "core_o": In(stream.Signature(signed(spec.output_bits))),
            "core_start": Out(1),
            "core_status": In(StatusSignature()),
            "core_cfg": Out(write),
        })

    def elaborate(self, platform):
        m = Module()
        spec, b, c = self.spec, self.bridge_domain, self.core_domain
        bcfg, ccfg = self.bridge_cfg, self.core_cfg
        # A memory write's fields, packed: mem, lane, addr, data.
        fields = [bcfg.mem, bcfg.lane, bcfg.addr, bcfg.data]
        write_bits = sum(len(f) for f in fields)
        body = max(write_bits, spec.input_bits)

        # -- commands: bridge -> core ----------------------------------------------------------
        m.submodules.cmd = cmd = AsyncFIFO(width=2 + body, depth=self.depth, w_domain=b, r_domain=c)
        # ``ready`` must not depend on ``valid``: the bridge's write valid depends on its ready.
        # An input waits for a write or a START offered in the same cycle.
        m.d.comb += [bcfg.ready.eq(cmd.w_rdy),
                     self.bridge_i.ready.eq(cmd.w_rdy & ~bcfg.valid & ~self.bridge_ctl.start)]
        with m.If(bcfg.valid):
            m.d.comb += [cmd.w_data.eq(Cat(Const(CMD_WRITE, 2), *fields)), cmd.w_en.eq(1)]
        with m.Elif(self.bridge_ctl.start):
            m.d.comb += [cmd.w_data.eq(Cat(Const(CMD_START, 2))), cmd.w_en.eq(1)]
        with m.Elif(self.bridge_i.valid):
            m.d.comb += [cmd.w_data.eq(Cat(Const(CMD_INPUT, 2), self.bridge_i.payload)), cmd.w_en.eq(1)]

        kind, rest = cmd.r_data[:2], cmd.r_data[2:]
        m.d.comb += [self.core_i.payload.eq(rest[:spec.input_bits]),
                     Cat(ccfg.mem, ccfg.lane, ccfg.addr, ccfg.data).eq(rest[:write_bits])]
        with m.Switch(kind):
            with m.Case(CMD_INPUT):
                m.d.comb += [self.core_i.valid.eq(cmd.r_rdy), cmd.r_en.eq(self.core_i.ready)]
            with m.Case(CMD_START):
                # As a one-domain bridge does: a START only while the core is idle.
                take = cmd.r_rdy & ~self.core_status.busy
                m.d.comb += [self.core_start.eq(take), cmd.r_en.eq(take)]
            with m.Case(CMD_WRITE):
                m.d.comb += [ccfg.valid.eq(cmd.r_rdy), cmd.r_en.eq(ccfg.ready)]

        # -- outputs: core -> bridge -----------------------------------------------------------
        m.submodules.out = out = AsyncFIFO(width=spec.output_bits, depth=self.depth, w_domain=c, r_domain=b)
        m.d.comb += [out.w_data.eq(self.core_o.payload), out.w_en.eq(self.core_o.valid),
                     self.core_o.ready.eq(out.w_rdy),
                     self.bridge_o.payload.eq(out.r_data), self.bridge_o.valid.eq(out.r_rdy),
                     out.r_en.eq(self.bridge_o.ready)]

        # -- status: core -> bridge, whole snapshots -------------------------------------------
        cs, bs = self.core_status, self.bridge_status
        m.submodules.status = status = AsyncFIFO(width=_STATUS_BITS, depth=2, w_domain=c, r_domain=b)
        m.d.comb += [status.w_data.eq(Cat(cs.busy, cs.steps, cs.cycles, cs.step_cycles)), status.w_en.eq(1),
                     status.r_en.eq(1)]
        # The last snapshot read; busy until the first arrives (the core clears its memories
        # after reset, busy, in any case).
        snap = Signal(_STATUS_BITS, init=1)
        with m.If(status.r_rdy):
            m.d[b] += snap.eq(status.r_data)
        m.d.comb += [Cat(bs.steps, bs.cycles, bs.step_cycles).eq(snap[1:]),
                     bs.busy.eq(snap[0] | (cmd.w_level != 0))]
        return m
