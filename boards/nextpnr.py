"""Read nextpnr's log: post-route utilisation per resource and maximum frequency per clock."""

from __future__ import annotations

import re

__all__ = ["parse_nextpnr_log", "parse_critical_paths"]

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
