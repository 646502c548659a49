"""Verification benchmark: many random models through the cocotb testbench.

    python -m egru_accel.sim.bench --out DIR [--models 32] [--steps 200] [--stall 0.3] [--seed 0]
                                   [--simulator icarus|verilator]

Configurations: a fixed list of corners (tiny, the largest layers at 99% sparsity, dense
layers, silent, firing and zero-threshold layers, fine tables, sizes not divisible by P),
then random draws within the ranges inputs 1..128, hidden 1..256, 1..3 layers,
sparsity 0..99%, P in {1, 2, 4, 8}, kept to a cycle budget so the whole run fits in
Icarus Verilog's speed (about 6,000 cycles per second here; Verilator is faster, see
docs/simulators.md). Writes DIR/random_models.json with each model's configuration, the
simulator, mismatches and cycles, and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from egru_accel.quantize.random_model import THRESHOLD_MODES, random_inputs, random_model

from .report import simulate

CORNERS = [
    dict(inputs=1, hidden=[1], outputs=1, sparsity=0.0, lanes=1, mode="mixed", fine=False),
    dict(inputs=128, hidden=[256], outputs=10, sparsity=0.99, lanes=8, mode="mixed", fine=False),
    dict(inputs=64, hidden=[256, 256, 256], outputs=4, sparsity=0.99, lanes=8, mode="random", fine=False),
    dict(inputs=8, hidden=[16, 16], outputs=3, sparsity=0.0, lanes=4, mode="mixed", fine=True),
    dict(inputs=5, hidden=[7], outputs=2, sparsity=0.5, lanes=2, mode="unreachable", fine=False),
    dict(inputs=6, hidden=[20], outputs=5, sparsity=0.7, lanes=8, mode="fire", fine=False),
    dict(inputs=12, hidden=[13, 9], outputs=4, sparsity=0.6, lanes=4, mode="zero", fine=True),
    dict(inputs=3, hidden=[11, 10, 9], outputs=2, sparsity=0.3, lanes=2, mode="mixed", fine=True),
    dict(inputs=100, hidden=[3], outputs=7, sparsity=0.0, lanes=1, mode="zero", fine=False),
    dict(inputs=17, hidden=[150], outputs=6, sparsity=0.95, lanes=8, mode="mixed", fine=False),
]


def estimated_cycles_per_step(cfg) -> float:
    """A rough upper estimate (half the neurons firing) used only to size configurations."""
    total, I = 0.0, cfg["inputs"]
    dens = 1.0 - cfg["sparsity"]
    for H in cfg["hidden"]:
        act = 1.0 if cfg["mode"] == "fire" else 0.6
        rows = I + act * H
        total += rows * max(1.0, 3 * H * dens / cfg["lanes"]) + H / cfg["lanes"] + 12
        I = H
    total += cfg["hidden"][-1] * 0.6 * max(1.0, cfg["outputs"] * dens / cfg["lanes"]) + cfg["outputs"] + 10
    return total


def random_configs(count: int, seed: int, budget: float):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        L = int(rng.integers(1, 4))
        hidden = [int(min(256, max(1, round(2 ** rng.uniform(0, 8))))) for _ in range(L)]
        lanes = int(rng.choice([1, 2, 4, 8]))
        if lanes > min(hidden):
            continue
        cfg = dict(inputs=int(min(128, max(1, round(2 ** rng.uniform(0, 7))))), hidden=hidden,
                   outputs=int(rng.integers(1, 11)), sparsity=float(rng.choice([0.0, 0.3, 0.5, 0.8, 0.9, 0.95, 0.99])),
                   lanes=lanes, mode=str(rng.choice(THRESHOLD_MODES)), fine=bool(rng.random() < 0.3))
        if estimated_cycles_per_step(cfg) <= budget:
            out.append(cfg)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egru_accel.sim.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--stall", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=1500.0, help="estimated cycles per step, at most")
    parser.add_argument("--simulator", choices=("icarus", "verilator"), default=None,
                        help="default: $EGRU_SIMULATOR, else the faster one for each model's run")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    configs = CORNERS[:args.models]
    configs += random_configs(max(0, args.models - len(configs)), args.seed, args.budget)
    results, t0 = [], time.monotonic()
    for k, cfg in enumerate(configs):
        model = random_model(inputs=cfg["inputs"], hidden=cfg["hidden"], outputs=cfg["outputs"],
                             weight_sparsity=cfg["sparsity"], lanes=None, seed=args.seed + k,
                             threshold_mode=cfg["mode"], fine=cfg["fine"])
        x = random_inputs(model, steps=args.steps, sequences=1, seed=args.seed + k)
        rep = simulate(model, lanes=cfg["lanes"], sequences=x, build_dir=os.path.join(args.out, "build"),
                       stall_probability=args.stall, seed=args.seed + k, progress=False, simulator=args.simulator)
        row = {"config": cfg, "simulator": rep["simulator"], "mismatches": rep["mismatches"], "first_mismatches": rep["first_mismatches"][:3],
               "steps": rep["steps"], "neuron_steps": rep["neuron_steps"],
               "cycles_per_step": rep["cycles_per_step"], "ideal_cycles_per_step": rep["ideal_cycles_per_step"],
               "dense_cycles_per_step": rep["dense_cycles_per_step"], "mac_ratio": rep["mac_ratio"],
               "cycle_ratio": rep["cycle_ratio"], "seconds": rep["seconds"]}
        results.append(row)
        print(f"[{k + 1}/{len(configs)}] {cfg} -> {rep['mismatches']} mismatches, "
              f"{rep['cycles_per_step']['mean']:.0f} cycles/step ({rep['seconds']:.0f} s)", file=sys.stderr, flush=True)
        summary = {"models": len(results), "steps_per_model": args.steps, "stall_probability": args.stall,
                   "total_mismatches": sum(r["mismatches"] for r in results),
                   "total_neuron_steps": sum(r["neuron_steps"] for r in results),
                   "seconds": time.monotonic() - t0, "results": results}
        with open(os.path.join(args.out, "random_models.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if summary["total_mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
