"""Logic depth between registers of a synthesised iCE40 netlist (yosys JSON, flattened).

nextpnr reports one critical path per clock; a design that fails by hundreds of endpoints needs
all of them. This walks the netlist once: every sequential cell's output (flip-flop, block RAM,
SPRAM, SB_MAC16, I/O) starts at depth 0, an ``SB_LUT4`` adds 1, an ``SB_CARRY`` adds
:data:`CARRY_IN` from its operands and :data:`CARRY_THROUGH` along the chain (the carry's
dedicated wire is fast; its operands come over the general routing, as a LUT's do). Each
sequential cell's inputs are endpoints. On the iCE40 one level costs about 0.5 ns of logic and
1-2 ns of routing (more on a high-fan-out net), so at 48 MHz (20.8 ns) about 4 levels is the
budget the issue sets, 6-7 the most that can close.

    python -m egru_accel.boards.depth top.json --over 4
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass

__all__ = ["Endpoint", "logic_depth", "register_name", "summarise", "CARRY_IN", "CARRY_THROUGH"]

#: Depth an ``SB_CARRY`` adds from its operands (``I0``, ``I1``), and along the chain (``CI``).
CARRY_IN, CARRY_THROUGH = 1.0, 0.1
COMBINATIONAL = {"SB_LUT4": None, "SB_CARRY": None}


@dataclass(frozen=True)
class Endpoint:
    """The deepest path into one input bit of a sequential cell: ``depth`` levels from the
    register ``start`` (net name) to ``end`` (net or cell name, with the port), through nets
    whose largest fan-out is ``fanout``."""
    depth: float
    start: str
    end: str
    fanout: int


def register_name(name: str) -> str:
    """A net's register without its bit index: ``"unit.acc[3]"`` -> ``"unit.acc"``,
    ``"unit.acc[3].E"`` -> ``"unit.acc.E"``."""
    return re.sub(r"\[\d+\](?=(\.[A-Z_0-9]+)?$)", "", name)


def logic_depth(netlist: dict, top: str = "top") -> list[Endpoint]:
    """Every endpoint of the flattened module ``top`` of a yosys JSON ``netlist``, deepest first."""
    module = netlist["modules"][top]
    names: dict[int, str] = {}
    for name, net in sorted(module["netnames"].items(), key=lambda kv: (kv[1].get("hide_name", 0), len(kv[0]))):
        for i, bit in enumerate(net["bits"]):
            if isinstance(bit, int) and bit not in names:
                names[bit] = name if len(net["bits"]) == 1 else f"{name}[{i}]"
    driver: dict[int, tuple[str, str]] = {}
    fanout: dict[int, int] = defaultdict(int)
    cells = module["cells"]
    for cname, cell in cells.items():
        for port, bits in cell["connections"].items():
            direction = cell["port_directions"].get(port, "input")
            for bit in bits:
                if not isinstance(bit, int):
                    continue
                if direction == "output":
                    driver[bit] = (cname, port)
                else:
                    fanout[bit] += 1

    arrival: dict[int, tuple[float, str, int]] = {}    # bit -> (depth, start register, worst fan-out)

    def arrive(bit: int) -> tuple[float, str, int]:
        # Iterative: carry chains and adders make recursion deep.
        stack = [bit]
        while stack:
            b = stack[-1]
            if b in arrival:
                stack.pop()
                continue
            src = driver.get(b)
            if src is None or cells[src[0]]["type"] not in COMBINATIONAL:
                arrival[b] = (0.0, names.get(b, src[0] if src else "<input>"), fanout[b])
                stack.pop()
                continue
            cell = cells[src[0]]
            ins = [(p, x) for p, bits in cell["connections"].items()
                   if cell["port_directions"].get(p) == "input" for x in bits if isinstance(x, int)]
            missing = [x for _, x in ins if x not in arrival]
            if missing:
                stack.extend(missing)
                continue
            best = (0.0, "<constant>", 0)
            for port, x in ins:
                d, start, fo = arrival[x]
                step = 1.0 if cell["type"] == "SB_LUT4" else (CARRY_THROUGH if port == "CI" else CARRY_IN)
                cand = (d + step, start, max(fo, fanout[b]))
                if cand[0] > best[0]:
                    best = cand
            arrival[b] = best
            stack.pop()
        return arrival[bit]

    endpoints = []
    for cname, cell in cells.items():
        if cell["type"] in COMBINATIONAL:
            continue
        for port, bits in cell["connections"].items():
            if cell["port_directions"].get(port) != "input" or port in ("C", "CLK", "CLOCK"):
                continue
            q = cell["connections"].get("Q")
            end = names.get(q[0], cname) if q and isinstance(q[0], int) else f"{cname}.{port}"
            for bit in bits:
                if isinstance(bit, int):
                    d, start, fo = arrive(bit)
                    endpoints.append(Endpoint(d, start, f"{end}.{port}" if port != "D" else end, fo))
    endpoints.sort(key=lambda e: -e.depth)
    return endpoints


def summarise(endpoints: list[Endpoint], over: float) -> list[dict]:
    """Endpoints deeper than ``over``, one row per (start register, end register) pair with
    its deepest path and the number of endpoint bits."""
    rows: dict[tuple[str, str], dict] = {}
    for e in endpoints:
        if e.depth <= over:
            continue
        key = (register_name(e.start), register_name(e.end))
        row = rows.setdefault(key, {"depth": e.depth, "start": key[0], "end": key[1], "bits": 0, "fanout": e.fanout})
        row["bits"] += 1
        row["fanout"] = max(row["fanout"], e.fanout)
    return sorted(rows.values(), key=lambda r: (-r["depth"], r["start"], r["end"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("netlist", help="yosys JSON (write_json after synth_ice40, flattened)")
    ap.add_argument("--top", default="top")
    ap.add_argument("--over", type=float, default=4, help="list endpoints deeper than this")
    ap.add_argument("--limit", type=int, default=60)
    args = ap.parse_args(argv)
    with open(args.netlist) as f:
        endpoints = logic_depth(json.load(f), args.top)
    rows = summarise(endpoints, args.over)
    deep = sum(e.depth > args.over for e in endpoints)
    print(f"{len(endpoints)} endpoint bits, {deep} deeper than {args.over:g} levels, {len(rows)} register pairs")
    for r in rows[:args.limit]:
        print(f"{r['depth']:5.1f}  {r['bits']:4d} bits  fan-out {r['fanout']:4d}  {r['start']}  ->  {r['end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
