"""Measure the logic baselines of the fit check (``boards/baselines.json``).

For each FPGA family, the board top level for a model is synthesised (yosys) and packed
(``nextpnr --pack-only``, which reports the utilisation without placing) at several lane
counts. The logic in use, minus the LUTs of distributed RAM on ECP5 (which the fit check
counts per design), is stored per lane count; :func:`boards.fit.estimate` interpolates
between the points and extends the last segment.

    python -m boards.calibrate --model runs/digits/model.npz --lanes 1 2 4 --family ice40

``--core v2`` measures capacity builds of core v2 instead (stored as ``{family}_v2``): at each
lane count, the capacity that holds the model (:func:`capacity_for`) in the board's
configuration (:func:`boards.top.capacity_config`).
"""

import argparse
import json
import os
import sys
import tempfile
import time

from .build import BuildError, _Job, _script_commands, prepare, write_plan
from .fit import BASELINES, design_inventory, estimate
from .nextpnr import parse_nextpnr_log

__all__ = ["measure", "main"]

#: The board each family is measured on.
FAMILY_BOARDS = {"ice40": "icebreaker", "ecp5": "ulx3s-85f"}


#: The readout engine's multipliers of an ECP5 capacity build (docs/core-v2.md, "Choices per board").
ECP5_READOUT_MACS = 4


def capacity_for(family: str, model, lanes: int):
    """The capacity a ``family`` board's capacity build of ``lanes`` lanes has for ``model``:
    on the iCE40 lane-window packing in one wide weight memory (SPRAM), on the ECP5 per-lane
    weight memories and a readout engine of :data:`ECP5_READOUT_MACS` multipliers."""
    from egru_accel.quantize.capacity import Capacity
    if family == "ice40":
        return Capacity.covering([model], lanes=lanes, structure="lane-window", weight_memory="wide")
    return Capacity.covering([model], lanes=lanes, readout_macs=ECP5_READOUT_MACS)


def measure(family: str, model_path: str, lanes: int, work_dir: str, core: str = "v1") -> dict:
    """Synthesise and pack the ``family`` board top level for ``model_path`` at ``lanes`` (core
    v1, or ``core="v2"``: the capacity build of :func:`capacity_for`); return ``{"lanes",
    "logic", "lutram", "cells"}`` (logic cells or LUT4s without distributed RAM)."""
    if core == "v2":
        from egru_accel.quantize.model import QuantModel
        capacity = capacity_for(family, QuantModel.load(model_path), lanes)
        prep = prepare(FAMILY_BOARDS[family], None, capacity=capacity)
    else:
        prep = prepare(FAMILY_BOARDS[family], model_path, lanes=lanes)
    build_dir = os.path.join(work_dir, f"{family}_{lanes}")
    logs = os.path.join(build_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    write_plan(prep.plan, build_dir)
    for tool, args in _script_commands(prep.plan.files[f"{prep.plan.script}.sh"]):
        if tool.startswith("NEXTPNR"):
            # Pack only, and write no routed output (nextpnr fails asked for one without placing).
            out_opts = {"--asc", "--textcfg"}
            args = [a for i, a in enumerate(args) if a not in out_opts and (i == 0 or args[i - 1] not in out_opts)]
            args = args + ["--pack-only"]
        elif tool != "YOSYS":
            continue
        job = _Job(tool, args, build_dir, os.path.join(logs, f"{tool.lower()}.out"), None)
        while not job.poll():
            time.sleep(0.5)
        if job.code != 0:
            raise BuildError(job.failure())
    with open(os.path.join(build_dir, f"{prep.name}.tim"), encoding="utf-8", errors="replace") as f:
        util = parse_nextpnr_log(f.read())["utilisation"]
    if family == "ice40":
        logic, lutram = util["ICESTORM_LC"]["used"], 0
    else:
        # Each TRELLIS_DPR16X4 occupies two TRELLIS_COMB (and one TRELLIS_RAMW).
        lutram = util["TRELLIS_RAMW"]["used"]
        logic = util["TRELLIS_COMB"]["used"] - 2 * lutram
    key = family if core == "v1" else f"{family}_{core}"
    fit = estimate(prep.board, design_inventory(prep.plan.files[f"{prep.name}.il"]), lanes, core=core,
                   baselines={key: {"points": [{"lanes": 1, "logic": 0}]}})
    return {"lanes": lanes, "logic": logic, "lutram": lutram,
            "lutram_estimate": sum(m["blocks"] for m in fit.memories if m["mapped_to"] == "LUTRAM"),
            "cells": {k: v["used"] for k, v in util.items() if v["used"]}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m boards.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--family", choices=sorted(FAMILY_BOARDS), required=True)
    parser.add_argument("--lanes", type=int, nargs="+", required=True)
    parser.add_argument("--core", choices=("v1", "v2"), default="v1",
                        help="core v1 for the model, or core v2 capacity builds that hold it (default: v1)")
    parser.add_argument("--out", default=BASELINES, help="baselines file to update (default: %(default)s)")
    args = parser.parse_args(argv)
    with open(args.out) as f:
        baselines = json.load(f)
    points = []
    # Not under /tmp: the YoWASP tools see their own /tmp (they run in the work directory).
    with tempfile.TemporaryDirectory(prefix=".calibrate-", dir=os.getcwd()) as work:
        for lanes in sorted(set(args.lanes)):
            t0 = time.monotonic()
            point = measure(args.family, args.model, lanes, work, core=args.core)
            print(f"{args.family} {lanes} lanes: {point} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
            points.append(point)
    key = args.family if args.core == "v1" else f"{args.family}_{args.core}"
    baselines[key] = {
        "board": FAMILY_BOARDS[args.family], "model": os.path.relpath(args.model),
        "measured": time.strftime("%Y-%m-%d"),
        "method": "yosys + nextpnr --pack-only of the board top level; logic excludes distributed RAM"
                  + ("" if args.core == "v1" else "; core v2 capacity builds that hold the model"),
        "points": [{"lanes": p["lanes"], "logic": p["logic"]} for p in points],
        "detail": points,
    }
    with open(args.out, "w") as f:
        json.dump(baselines, f, indent=2)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
