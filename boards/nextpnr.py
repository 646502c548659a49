"""Read nextpnr's log: post-route utilisation per resource and maximum frequency per clock."""

from __future__ import annotations

import re

__all__ = ["parse_nextpnr_log", "parse_critical_paths", "nextpnr_progress", "describe_progress"]

_UTIL = re.compile(r"^Info:\s+([A-Za-z0-9_]+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)
_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([0-9.]+) MHz \((PASS|FAIL) at ([0-9.]+) MHz\)")
_PATH_HEAD = re.compile(r"^Info: Critical path report for clock '([^']+)' \(posedge -> posedge\):$", re.M)
_PATH_STEP = re.compile(r"^Info:\s+([a-z-]+)\s+([0-9.]+)\s+([0-9.]+)\s+(Source|Net)\s+(\S+)")
_PATH_SINK = re.compile(r"^Info:\s+Sink\s+(\S+)")
_PATH_SUM = re.compile(r"^Info: ([0-9.]+) ns logic, ([0-9.]+) ns routing")


def parse_critical_paths(text: str) -> dict:
    """The last critical path nextpnr reported for each clock (same-edge paths):
    ``{clock: {"start", "end", "total_ns", "logic_ns", "routing_ns", "cells"}}`` with the cells
    the path passes through (each step's source), in order."""
    paths = {}
    for head in _PATH_HEAD.finditer(text):
        cells, start, end, total, summary = [], None, None, 0.0, None
        for line in text[head.end():].splitlines()[1:]:
            if not line.startswith("Info:") or not line[5:].strip():
                break
            step = _PATH_STEP.match(line)
            if step:
                total = float(step.group(3))
                if step.group(4) == "Source":
                    start = start or step.group(5)
                    end = step.group(5)
                    cells.append(step.group(5))
                continue
            sink = _PATH_SINK.match(line)
            if sink:
                end = sink.group(1)
                continue
            s = _PATH_SUM.match(line)
            if s:
                summary = (float(s.group(1)), float(s.group(2)))
                break
        if start is None:
            continue
        paths[head.group(1)] = {"start": start, "end": end, "total_ns": total,
                                "logic_ns": summary[0] if summary else None,
                                "routing_ns": summary[1] if summary else None, "cells": cells}
    return paths


def parse_nextpnr_log(text: str) -> dict:
    """``utilisation``: {resource: {"used", "available"}} from the last "Device utilisation"
    block (post-route); ``clocks``: {clock: {"fmax_mhz", "target_mhz", "met"}} from the last
    report of each clock (nextpnr reports before and after routing); ``critical_paths``: see
    :func:`parse_critical_paths`."""
    blocks = text.split("Device utilisation:")
    util = {}
    if len(blocks) > 1:
        last = blocks[-1].split("\n\n")[0]
        for name, used, avail in _UTIL.findall(last):
            util[name] = {"used": int(used), "available": int(avail)}
    clocks = {}
    for clock, fmax, verdict, target in _FMAX.findall(text):
        clocks[clock] = {"fmax_mhz": float(fmax), "target_mhz": float(target), "met": verdict == "PASS"}
    if not util and not clocks:
        raise ValueError("no utilisation or timing report found in the nextpnr log")
    return {"utilisation": util, "clocks": clocks, "critical_paths": parse_critical_paths(text)}


# -- progress while nextpnr runs -----------------------------------------------------------------

_PLACE_ITER = re.compile(r"^Info:\s+at (?:initial placer )?iter(?:ation)? #?(\d+)", re.M)
_ROUTER2_ITER = re.compile(r"^Info:\s+iter=(\d+) wires=(\d+) overused=(\d+) overuse=(\d+)", re.M)
_ROUTER1_ROW = re.compile(r"^Info:\s+(\d+) \|\s+(\d+)\s+(\d+) \|\s+(\d+)\s+(\d+) \|\s+(\d+)\|", re.M)
_PHASES = [(re.compile(p, re.M), name) for p, name in (
    (r"^Info: (?:Packing|Pack)", "packing"), (r"^Info: Placed \d+ cells based on constraints", "placing"),
    (r"^Info: Running main analytical placer|^Info: Creating initial analytic placement|"
     r"^Info: Running simulated annealing placer", "placing"),
    (r"^Info: Routing globals|^Info: Running router2|^Info: Routing\.\.", "routing"),
    (r"^Info: Running router1 to check that route is legal", "checking the route"),
    (r"^Info: Program finished normally|^Info: Critical path report for clock", "timing report"))]


# The placer's stages, in the order nextpnr runs them; each counts its iterations from 1 again.
_PLACERS = [(re.compile(p, re.M), stage) for p, stage in (
    (r"^Info: Running main analytical placer|^Info: Creating initial analytic placement", "analytic"),
    (r"^Info: Running simulated annealing placer", "annealing"))]


def nextpnr_progress(text: str) -> dict:
    """Where a running nextpnr is, from (the tail of) its log: ``phase`` (``"packing"``,
    ``"placing"``, ``"routing"``, ...) and, while placing or routing, ``iteration``; while placing,
    ``placer`` (``"analytic"``, then ``"annealing"``: each counts its iterations afresh); while
    routing, ``overused`` (router2: overused wires; router1: arcs still to route) and
    ``router``. An empty dict before the first recognised line."""
    out: dict = {}
    last = -1
    for pattern, name in _PHASES:
        for m in pattern.finditer(text):
            if m.start() > last:
                last, out["phase"] = m.start(), name
    if out.get("phase") == "placing":
        stages = [(m.start(), stage) for pattern, stage in _PLACERS for m in pattern.finditer(text)]
        if stages:
            out["placer"] = max(stages)[1]
        iters = list(_PLACE_ITER.finditer(text))
        if iters and iters[-1].start() > last:
            out["iteration"] = int(iters[-1].group(1))
    if out.get("phase") == "routing":
        r2 = list(_ROUTER2_ITER.finditer(text))
        r1 = list(_ROUTER1_ROW.finditer(text))
        if r2 and (not r1 or r2[-1].start() > r1[-1].start()):
            m = r2[-1]
            out.update(router="router2", iteration=int(m.group(1)), overused=int(m.group(3)))
        elif r1:
            m = r1[-1]
            out.update(router="router1", iteration=int(m.group(1)), overused=int(m.group(6)))
    return out


def describe_progress(progress: dict) -> str:
    """One line for :func:`nextpnr_progress`'s result, e.g. ``routing (router2) iteration 12,
    310 overused wires``."""
    if not progress:
        return "starting"
    text = progress["phase"]
    if "router" in progress or "placer" in progress:
        text += f" ({progress.get('router') or progress['placer']})"
    if "iteration" in progress:
        text += f" iteration {progress['iteration']}"
    if "overused" in progress:
        what = "overused wires" if progress.get("router") == "router2" else "arcs left"
        text += f", {progress['overused']} {what}"
    return text
