"""Core v2's Verilog under cocotb against the golden model: N random models, or a trained model's task.

Random mode (the "random models in both simulators" benchmark): ``--models N`` seeded random models
(1 or 2 layers, 1 to 8 lanes, both lane kinds, both multiplier kinds, sparse and dense, every
threshold mode), each packed (quantize/shared_rows.py), generated as Verilog and run on
``--simulator`` in one process: random sequences with input idles and output back-pressure
(``--stall``), then the same sequences without. Every output and every neuron update is compared
with the golden model (sim.shared_core_tb.compare_with_golden); ``--amaranth-cycles`` also checks
the stall-free step cycles against the Amaranth simulator's.

Model mode: ``--model runs/digits/model.npz --task digits --sequences K`` runs the first K test
sequences of the task on a ``--lanes``-lane core, stalled and free, and also reports the accuracy
of the core's outputs (last step's argmax).

Capacity mode (one bitstream for many models): ``--capacity-models N`` random models of 1 or 2 layers
(their own sizes, sparsities, thresholds and grids) on ``--lanes`` lanes, one capacity build that
covers them all (quantize/capacity.py), one simulation that loads each model through the core's
``load`` port in turn and runs its sequences with idles and back-pressure, then the first model
again: every model against its own golden model.

Writes JSON (``--out``): per model its spec, mismatches per run, cycles and times; and the totals.

    python scripts/shared_core_cocotb_sweep.py --models 30 --simulator icarus --out runs/sweep/icarus.json
    python scripts/shared_core_cocotb_sweep.py --model runs/digits/model.npz --task digits --sequences 20 \\
        --simulator verilator --out runs/sweep/digits_verilator.json
    python scripts/shared_core_cocotb_sweep.py --capacity-models 30 --lanes 4 --simulator icarus \\
        --out runs/sweep/capacity_icarus.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from egru_accel.hw.shared_core import SharedCoreConfig
from egru_accel.quantize import golden
from egru_accel.quantize.memory import LayoutError
from egru_accel.quantize.model import QuantModel
from egru_accel.quantize.random_model import THRESHOLD_MODES, random_inputs, random_model
from egru_accel.quantize.shared_rows import pack_shared_rows
from egru_accel.sim.runner import SIMULATORS, SimulationError
from egru_accel.sim.shared_core_cocotb import Job, run_shared_core_jobs, write_shared_core_verilog
from egru_accel.sim.shared_core_tb import compare_with_golden, run_shared_core

LANE_CHOICES = (1, 2, 3, 4, 5, 6, 8)


def draw_spec(seed: int) -> dict:
    """The random model of ``seed``: arguments of random_model, and the core's."""
    rng = np.random.default_rng([20260, seed])
    lanes = int(rng.choice(LANE_CHOICES))
    layers = int(rng.integers(1, 3))
    hidden = [int(rng.integers(max(lanes, 3), 17)) for _ in range(layers)]
    return {
        "model": {"inputs": int(rng.integers(2, 9)), "hidden": hidden, "outputs": int(rng.integers(2, 11)),
                  "weight_sparsity": round(float(rng.uniform(0.0, 0.9)), 3),
                  "lanes": lanes if rng.random() < 0.3 and all(h % lanes == 0 for h in hidden) else None,
                  "seed": int(seed), "threshold_mode": str(rng.choice(THRESHOLD_MODES)),
                  "fine": bool(rng.random() < 0.2)},
        "lanes": lanes, "dense": bool(rng.random() < 0.2),
        "lane": str(rng.choice(["fabric", "dsp_model"])), "multipliers": str(rng.choice(["dsp", "logic"])),
        "banks": int(rng.choice([1, 2])),      # used with --banks random only
    }


def draw_capacity_spec(seed: int, lanes: int) -> dict:
    """The random model of ``seed`` for the capacity mode: random_model's arguments (every layer
    at least ``lanes`` neurons; the default number formats, which a capacity build fixes)."""
    rng = np.random.default_rng([20261, seed])
    layers = int(rng.integers(1, 3))
    return {"inputs": int(rng.integers(2, 9)), "hidden": [int(rng.integers(lanes, 17)) for _ in range(layers)],
            "outputs": int(rng.integers(2, 11)), "weight_sparsity": round(float(rng.uniform(0.0, 0.9)), 3),
            "seed": int(seed), "threshold_mode": str(rng.choice(THRESHOLD_MODES))}


def capacity_sweep(a, config, build) -> tuple[list, dict]:
    """The capacity mode: one build, ``a.capacity_models`` models loaded in turn (then the first again)."""
    from egru_accel.quantize.capacity import Capacity, place
    specs = [draw_capacity_spec(k, a.lanes) for k in range(a.first_seed, a.first_seed + a.capacity_models)]
    models = [random_model(**spec) for spec in specs]
    cap = Capacity.covering(models, lanes=a.lanes)
    images = [place(m, cap) for m in models]
    xs = [np.asarray(random_inputs(m, steps=a.steps, sequences=a.sequences, seed=k)) for k, m in enumerate(models)]
    order = list(range(len(models))) + [0]
    jobs = [Job(xs[k], a.stall, seed=n, load=images[k] if n else None) for n, k in enumerate(order)]
    t0, stats = time.monotonic(), {}
    try:
        recs = run_shared_core_jobs(images[0], jobs, config=config, build_dir=build, simulator=a.simulator,
                                    timeout_s=a.timeout, stats=stats)
    finally:
        if not a.keep_builds:
            shutil.rmtree(build, ignore_errors=True)
    results = []
    for n, (k, rec) in enumerate(zip(order, recs)):
        diffs = compare_with_golden(models[k], images[k], xs[k], rec)
        out = {"name": f"model{specs[k]['seed']}" + (" (again)" if n == len(order) - 1 else ""), "spec": specs[k],
               "params": images[k].params.to_dict(), "loaded": n > 0, "sequences": int(xs[k].shape[0]),
               "steps": int(xs[k].shape[0] * xs[k].shape[1]), "mismatches": {"stalled": len(diffs)},
               "first_mismatches": {"stalled": diffs[:3]} if diffs else {},
               "fired": int(sum(u[2] for seq in rec.updates for step in seq for u in step)),
               "cycles_stalled": int(sum(map(sum, rec.step_cycles))), "stalls": {"stalled": stats["stalls"][n]}}
        seen = stats["stalls"][n]
        out["stalls_took_effect"] = seen["input_idles"] + seen["output_backpressure"] > 0
        results.append(out)
        print(f"{out['name']}: H={specs[k]['hidden']} I={specs[k]['inputs']} O={specs[k]['outputs']} "
              f"sparsity {specs[k]['weight_sparsity']} {specs[k]['threshold_mode']}: mismatches {len(diffs)}",
              flush=True)
    extra = {"capacity": cap.to_dict(), "simulated_cycles": int(stats["cycles"]),
             "build_time_s": round(stats["build_time_s"], 2), "sim_time_s": round(stats["wall_time_s"], 2),
             "wall_time_s": round(time.monotonic() - t0, 2)}
    return results, extra


def run_one(name, model, image, config, x, *, simulator, stall, seed, build, amaranth_cycles, timeout_s, keep):
    t0 = time.monotonic()
    out = {"name": name, "layout": {k: v for k, v in image.layout.to_dict().items() if k != "formats"},
           "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "debug"},
           "sequences": int(x.shape[0]), "steps": int(x.shape[0] * x.shape[1])}
    stats = {}
    try:
        stalled, free = run_shared_core_jobs(image, [Job(x, stall, seed=seed), Job(x, 0.0)], config=config,
                                             build_dir=build, simulator=simulator, timeout_s=timeout_s,
                                             stats=stats)
    except SimulationError as exc:
        out.update(error=str(exc)[:4000], mismatches=None, wall_time_s=round(time.monotonic() - t0, 2))
        return out, None
    finally:
        if not keep:
            shutil.rmtree(build, ignore_errors=True)
    diffs = {"stalled": compare_with_golden(model, image, x, stalled), "free": compare_with_golden(model, image, x, free)}
    out["mismatches"] = {k: len(v) for k, v in diffs.items()}
    out["first_mismatches"] = {k: v[:3] for k, v in diffs.items() if v}
    out["fired"] = int(sum(u[2] for seq in free.updates for step in seq for u in step))
    out["cycles_stalled"] = int(sum(map(sum, stalled.step_cycles)))
    out["cycles_free"] = int(sum(map(sum, free.step_cycles)))
    out["stalls_never_shorten"] = all(a >= b for s, f in zip(stalled.step_cycles, free.step_cycles)
                                      for a, b in zip(s, f))
    if amaranth_cycles:
        ref = run_shared_core(image, x, config=config)
        out["amaranth_cycles_match"] = ref.step_cycles == free.step_cycles
    out["stalls"] = dict(zip(("stalled", "free"), stats["stalls"]))
    seen = {k: v["input_idles"] + v["output_backpressure"] for k, v in out["stalls"].items()}
    out["stalls_took_effect"] = seen["stalled"] > 0 and seen["free"] == 0
    out.update(simulated_cycles=int(stats["cycles"]), build_time_s=round(stats["build_time_s"], 2),
               sim_time_s=round(stats["wall_time_s"], 2), cycles_per_second=round(stats["cycles_per_second"]),
               wall_time_s=round(time.monotonic() - t0, 2))
    return out, free


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=30, help="random models (random mode)")
    ap.add_argument("--first-seed", type=int, default=0, help="seed of the first random model")
    ap.add_argument("--steps", type=int, default=8, help="steps per random sequence")
    ap.add_argument("--sequences", type=int, default=3, help="sequences per model (model mode: test sequences)")
    ap.add_argument("--model", help="a QuantModel .npz (model mode)")
    ap.add_argument("--capacity-models", type=int, default=None, metavar="N",
                    help="capacity mode: N random models loaded in turn into one capacity build of --lanes lanes")
    ap.add_argument("--task", default="digits", help="the model's task (model mode)")
    ap.add_argument("--lanes", type=int, default=8, help="lanes (model mode)")
    ap.add_argument("--lane", default="dsp_model", help="lane kind (model mode)")
    ap.add_argument("--multipliers", default="dsp", help="update unit multipliers (model mode)")
    ap.add_argument("--dense", action="store_true", help="dense baseline (model mode)")
    ap.add_argument("--banks", choices=("1", "2", "random"), default=None,
                    help="SharedCoreConfig.banks (cores that have it): 1, 2, or random per model; "
                         "default: the configuration's default")
    ap.add_argument("--units", type=int, default=None,
                    help="SharedCoreConfig.units (cores that have it; models with fewer lanes are skipped)")
    ap.add_argument("--readout", choices=("lanes", "engine"), default=None,
                    help="SharedCoreConfig.readout: the readout's MACs on the lanes or on an engine of its own")
    ap.add_argument("--simulator", choices=SIMULATORS, required=True)
    ap.add_argument("--stall", type=float, default=0.3, help="idle / back-pressure probability")
    ap.add_argument("--amaranth-cycles", action="store_true",
                    help="check the stall-free step cycles against the Amaranth simulator")
    ap.add_argument("--build-dir", default=None, help="default: runs/shared_core_cocotb_sweep/<simulator>")
    ap.add_argument("--keep-builds", action="store_true", help="keep each model's build directory")
    ap.add_argument("--timeout", type=float, default=1800, help="simulation wall-clock limit per model (s)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.banks is not None and "banks" not in {f.name for f in dataclasses.fields(SharedCoreConfig)}:
        ap.error("--banks: this SharedCoreConfig has no banks")
    if a.units is not None and "units" not in {f.name for f in dataclasses.fields(SharedCoreConfig)}:
        ap.error("--units: this SharedCoreConfig has no units")

    def core_config(lane, multipliers, banks):
        extra = {} if a.banks is None else {"banks": banks if a.banks == "random" else int(a.banks)}
        if a.units is not None:
            extra["units"] = a.units
        if a.readout is not None:
            extra["readout"] = a.readout
        return SharedCoreConfig(lane=lane, multipliers=multipliers, debug=True, **extra)
    build_root = Path(a.build_dir or f"runs/shared_core_cocotb_sweep/{a.simulator}")
    t_start = time.monotonic()
    results = []
    common = dict(simulator=a.simulator, stall=a.stall, amaranth_cycles=a.amaranth_cycles, timeout_s=a.timeout,
                  keep=a.keep_builds)
    extra = {}
    if a.capacity_models:
        config = core_config(a.lane, a.multipliers, 1 if a.banks == "random" else a.banks)
        results, extra = capacity_sweep(a, config, build_root / "capacity")
    elif a.model:
        model = QuantModel.load(a.model)
        from egru_accel.quantize.data import load_task
        task = load_task(a.task)
        x = golden.quantize_input(model, task.x_test[:, :a.sequences]).transpose(1, 0, 2)   # [S, T, I]
        x = np.ascontiguousarray(x)
        image = pack_shared_rows(model, a.lanes, dense=a.dense)
        config = core_config(a.lane, a.multipliers, 1 if a.banks == "random" else a.banks)
        out, free = run_one(Path(a.model).name, model, image, config, x, seed=0, build=build_root / "model", **common)
        if free is not None:
            labels = task.y_test[:a.sequences]
            pred = np.array([o[-1].argmax() for o in free.outputs])
            out["accuracy"] = float(np.mean(pred == labels))
            trace = golden.run(model, np.transpose(x, (1, 0, 2)))
            out["golden_accuracy"] = golden.accuracy(trace, labels)
        results.append(out)
        print(json.dumps({k: v for k, v in out.items() if k != "layout"}), flush=True)
    else:
        for k in range(a.first_seed, a.first_seed + a.models):
            spec = draw_spec(k)
            try:
                model = random_model(**spec["model"])
                image = pack_shared_rows(model, spec["lanes"], dense=spec["dense"])
                config = core_config(spec["lane"], spec["multipliers"], spec["banks"])
                # The Verilog now (reused by the run): a configuration the image does not allow is a skip.
                write_shared_core_verilog(image, config, build_root / f"model{k}")
            except (LayoutError, ValueError) as exc:
                results.append({"name": f"model{k}", "spec": spec, "skipped": str(exc)})
                print(f"model{k}: skipped ({exc})", flush=True)
                continue
            x = np.asarray(random_inputs(model, steps=a.steps, sequences=a.sequences, seed=k))
            out, _ = run_one(f"model{k}", model, image, config, x, seed=k, build=build_root / f"model{k}", **common)
            out["spec"] = spec
            results.append(out)
            print(f"model{k}: P={spec['lanes']} H={spec['model']['hidden']} {spec['lane']}/{spec['multipliers']}"
                  f"{' banks=' + str(config.banks) if hasattr(config, 'banks') else ''}"
                  f"{' dense' if spec['dense'] else ''} {spec['model']['threshold_mode']}: "
                  f"mismatches {out['mismatches']}, {out['wall_time_s']} s"
                  + (f" ERROR {out['error'][:200]}" if "error" in out else ""), flush=True)
    ran = [r for r in results if "mismatches" in r]
    totals = {
        "models": len(ran), "skipped": len(results) - len(ran),
        "errors": sum(1 for r in ran if r["mismatches"] is None),
        "mismatches": sum(sum(r["mismatches"].values()) for r in ran if r["mismatches"] is not None),
        "models_with_mismatches": sum(1 for r in ran if r["mismatches"] and sum(r["mismatches"].values())),
        "steps": sum(2 * r["steps"] for r in ran),
        "simulated_cycles": sum(r.get("simulated_cycles", 0) for r in ran),
        "stalls_never_shorten": all(r.get("stalls_never_shorten", True) for r in ran),
        "models_where_stalls_took_effect": sum(1 for r in ran if r.get("stalls_took_effect")),
        "input_idles_seen": sum(r["stalls"]["stalled"]["input_idles"] for r in ran if "stalls" in r),
        "output_backpressure_seen": sum(r["stalls"]["stalled"]["output_backpressure"] for r in ran if "stalls" in r),
        "wall_time_s": round(time.monotonic() - t_start, 1),
        "build_time_s": round(sum(r.get("build_time_s", 0) for r in ran), 1),
        "sim_time_s": round(sum(r.get("sim_time_s", 0) for r in ran), 1),
    }
    if a.amaranth_cycles:
        totals["amaranth_cycle_mismatches"] = sum(1 for r in ran if r.get("amaranth_cycles_match") is False)
    mode = "capacity" if a.capacity_models else "model" if a.model else "random"
    if a.capacity_models:       # one simulation: its build and time once, not per model
        totals.update({k: extra.pop(k) for k in ("simulated_cycles", "build_time_s", "sim_time_s")})
        totals["steps"] = sum(r["steps"] for r in ran)
    doc = {"simulator": a.simulator, "stall_probability": a.stall, "mode": mode,
           **extra, "totals": totals, "results": results}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(totals, indent=1))
    return 0 if totals["mismatches"] == 0 and totals["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
