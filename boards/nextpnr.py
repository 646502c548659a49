"""Read nextpnr's log: post-route utilisation per resource and maximum frequency per clock."""

from __future__ import annotations

import re

__all__ = ["parse_nextpnr_log"]

_UTIL = re.compile(r"^Info:\s+([A-Za-z0-9_]+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)
_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([0-9.]+) MHz \((PASS|FAIL) at ([0-9.]+) MHz\)")


def parse_nextpnr_log(text: str) -> dict:
    """``utilisation``: {resource: {"used", "available"}} from the last "Device utilisation"
    block (post-route); ``clocks``: {clock: {"fmax_mhz", "target_mhz", "met"}} from the last
    report of each clock (nextpnr reports before and after routing)."""
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
    return {"utilisation": util, "clocks": clocks}
