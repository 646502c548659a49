"""Benchmark: the same model and inputs on Icarus Verilog and on Verilator.

``python -m egru_accel.sim.compare_simulators --model M --lanes P --samples K --out DIR`` runs
the model's test split (or random sequences for a model without a task) through the core on
both simulators under the same random stalls, and writes ``DIR/simulators.json``: per
simulator the mismatches against the golden model, the simulated clock cycles, the build
seconds and the speed (simulated cycles per second of simulation wall time, builds
excluded); and whether the two gave identical cycle counts on every step. Exit status 1 if
either simulator differs from the golden model or the cycle counts differ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

__all__ = ["compare_simulators", "main", "RANDOM_MODELS"]

#: Five random models for ``--random``: one and two layers, sizes not divisible by the lanes,
#: every threshold corner, fine tables (every accumulator LSB reaches the tables), the dense
#: baseline, and a balanced 8-lane core. ``dense`` is a core option, the rest
#: :func:`~egru_accel.quantize.random_model.random_model`'s.
RANDOM_MODELS = [
    dict(inputs=5, hidden=[7], outputs=3, lanes=1, weight_sparsity=0.5, threshold_mode="mixed", seed=11),
    dict(inputs=4, hidden=[9, 6], outputs=2, lanes=3, weight_sparsity=0.8, threshold_mode="random", seed=12,
         fine=True),
    dict(inputs=6, hidden=[10], outputs=5, lanes=4, weight_sparsity=0.0, threshold_mode="zero", seed=13),
    dict(inputs=3, hidden=[16], outputs=4, lanes=8, weight_sparsity=0.9, threshold_mode="fire", seed=14),
    dict(inputs=4, hidden=[6], outputs=3, lanes=2, weight_sparsity=0.6, threshold_mode="mixed", seed=15, dense=True),
]


def compare_simulators(model, *, lanes: int, sequences: np.ndarray, labels=None, stall_probability: float = 0.3,
                       seed: int = 0, simulators=("icarus", "verilator"), progress: bool = False,
                       dense: bool = False) -> dict:
    """Run ``sequences`` [N, T, I] through ``model``'s core on each of ``simulators``; return the
    comparison (see the module docstring)."""
    from .report import simulate

    results, cycles = {}, {}
    for simulator in simulators:
        detail: dict = {}
        with tempfile.TemporaryDirectory(prefix=f"egru-{simulator}-") as build:
            t0 = time.monotonic()
            report = simulate(model, lanes=lanes, sequences=sequences, labels=labels, build_dir=build,
                              stall_probability=stall_probability, seed=seed, progress=progress, detail=detail,
                              simulator=simulator, dense=dense)
            seconds = time.monotonic() - t0
        cycles[simulator] = detail["step_cycles"]
        results[simulator] = {
            "mismatches": report["mismatches"], "first_mismatches": report["first_mismatches"][:5],
            "sequences": report["sequences"], "steps": report["steps"], "neuron_updates": report["neuron_steps"],
            "simulated_cycles": report["simulated_cycles"], "build_seconds": round(report["build_seconds"], 2),
            "cycles_per_second": round(report["simulator_cycles_per_second"], 1),
            "seconds": round(seconds, 1), "cycles_per_step_mean": report["cycles_per_step"]["mean"],
            **({"rtl_accuracy": report["rtl_accuracy"]} if "rtl_accuracy" in report else {}),
        }
    first, *rest = simulators
    identical = all(np.array_equal(cycles[first], cycles[s]) for s in rest)
    return {"lanes": lanes, "stall_probability": stall_probability, "seed": seed, "simulators": results,
            "identical_step_cycles": bool(identical),
            "steps_compared": int(np.asarray(cycles[first]).size),
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()}}


def main(argv=None) -> int:
    from egru_accel.quantize.model import QuantModel

    from .report import model_inputs
    parser = argparse.ArgumentParser(prog="python -m egru_accel.sim.compare_simulators", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="quantized model (model.npz); with --lanes")
    source.add_argument("--random", action="store_true",
                        help="the five random models of RANDOM_MODELS instead (their own lanes; --steps, default 100)")
    parser.add_argument("--lanes", type=int, default=None)
    parser.add_argument("--samples", type=int, default=40, help="test sequences (default: 40)")
    parser.add_argument("--steps", type=int, default=None, help="steps per random sequence (models without a task)")
    parser.add_argument("--stall", type=float, default=0.3, help="stall probability (default: 0.3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output directory (simulators.json)")
    args = parser.parse_args(argv)
    if args.model and args.lanes is None:
        parser.error("--model needs --lanes")
    runs = []
    if args.random:
        from egru_accel.quantize.random_model import random_inputs, random_model
        for spec in RANDOM_MODELS:
            spec = dict(spec)
            dense = spec.pop("dense", False)
            model = random_model(**spec)
            x = np.stack([random_inputs(model, steps=args.steps or 100, seed=args.seed + s)[0]
                          for s in range(min(args.samples, 4))])
            result = compare_simulators(model, lanes=spec["lanes"], sequences=x, stall_probability=args.stall,
                                        seed=args.seed, dense=dense)
            runs.append({"model": {**spec, "dense": dense}, **result})
    else:
        model = QuantModel.load(args.model)
        sequences, labels = model_inputs(model, samples=args.samples, steps=args.steps, seed=args.seed)
        result = compare_simulators(model, lanes=args.lanes, sequences=sequences, labels=labels,
                                    stall_probability=args.stall, seed=args.seed, progress=True)
        runs.append({"model": os.path.abspath(args.model), **result})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "simulators.json"), "w") as f:
        json.dump(runs if args.random else runs[0], f, indent=2)
        f.write("\n")
    bad = False
    for run in runs:
        for name, r in run["simulators"].items():
            print(f"{name:9s} {r['mismatches']} mismatches in {r['neuron_updates']} neuron updates, "
                  f"{r['simulated_cycles']} cycles at {r['cycles_per_second']:.0f} cycles/s "
                  f"(build {r['build_seconds']} s)")
            bad |= r["mismatches"] != 0
        print(f"identical step cycles: {run['identical_step_cycles']} ({run['steps_compared']} steps)")
        bad |= not run["identical_step_cycles"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
