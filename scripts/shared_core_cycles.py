"""Cycles per step of core v2 (hw/shared_core.py) in the Amaranth simulator, against the ideal bound.

Runs sequences of a model's test split (or random inputs) through the core with no stalls,
checks every output and neuron update against the golden model, and writes JSON: the cycles of
every step, their mean, the ideal bound (effective MACs / P + H / P summed over the layers,
the readout's MACs included, as in the reports) and the ratio.

    python scripts/shared_core_cycles.py --model runs/digits/model.npz --lanes 8 --sequences 4 --out runs/bench/shared_core_cycles_p8.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from egru_accel.hw.dispatch import WEIGHT_MEMORIES
from egru_accel.hw.shared_core import SharedCoreConfig
from egru_accel.quantize import golden
from egru_accel.quantize.model import QuantModel
from egru_accel.quantize.shared_rows import PACKINGS, pack_shared_rows
from egru_accel.sim.shared_core_tb import compare_with_golden, run_shared_core


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--lanes", type=int, default=8)
    ap.add_argument("--sequences", type=int, default=4)
    ap.add_argument("--lane", default="dsp_model")
    ap.add_argument("--dense", action="store_true")
    ap.add_argument("--banks", type=int, default=1, choices=(1, 2))
    ap.add_argument("--units", type=int, default=1)
    ap.add_argument("--readout", default="lanes", choices=("lanes", "engine"))
    ap.add_argument("--readout-macs", type=int, default=4)
    ap.add_argument("--structure", default="unstructured", choices=PACKINGS,
                    help="how the weights are packed (pack_shared_rows)")
    ap.add_argument("--weight-memory", default="lanes", choices=WEIGHT_MEMORIES,
                    help="one weight memory per lane, or one wide one (needs --structure lane-window)")
    ap.add_argument("--sweep-address-stages", type=int, default=1, choices=(1, 2),
                    help="registers between the sweep's records and a lane's sweep address (2: the ECP5 build)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    model = QuantModel.load(a.model)
    from egru_accel.quantize.data import load_task
    task = load_task("digits")
    x = golden.quantize_input(model, task.x_test[:, :a.sequences].transpose(1, 0, 2))   # [S, T, I]
    image = pack_shared_rows(model, a.lanes, dense=a.dense, structure=a.structure)
    t0 = time.time()
    rec = run_shared_core(image, x, config=SharedCoreConfig(debug=True, lane=a.lane, banks=a.banks, units=a.units,
                                                              readout=a.readout, readout_macs=a.readout_macs,
                                                              weight_memory=a.weight_memory,
                                                              sweep_address_stages=a.sweep_address_stages))
    wall = time.time() - t0
    diffs = compare_with_golden(model, image, x, rec)
    trace = golden.run(model, np.transpose(x, (1, 0, 2)))
    eff = trace.effective_macs.sum(axis=2)                        # [T, S]
    H = sum(model.hidden_sizes)
    ideal = eff / a.lanes + H / a.lanes
    cycles = np.array(rec.step_cycles, dtype=np.int64).T            # [T, S]
    out = {"model": a.model, "lanes": a.lanes, "lane": a.lane, "banks": a.banks, "units": a.units, "readout": a.readout,
           "readout_macs": a.readout_macs if a.readout == "engine" else None, "dense": a.dense, "sequences": a.sequences,
           "structure": a.structure, "weight_memory": a.weight_memory, "sweep_address_stages": a.sweep_address_stages,
           "steps": int(cycles.size), "mismatches": len(diffs), "first_mismatch": diffs[0] if diffs else None,
           "cycles_per_step_mean": float(cycles.mean()), "ideal_per_step_mean": float(ideal.mean()),
           "ratio_to_ideal": float(cycles.mean() / ideal.mean()),
           "dense_macs_per_step": int(trace.dense_macs.sum()),
           "effective_macs_per_step_mean": float(eff.mean()), "padding_entries": image.padding,
           "lanes_busy_per_step": round(rec.lanes_busy_cycles / cycles.size, 1),
           "state_cycles_per_step": {k: round(v / cycles.size, 1) for k, v in rec.state_cycles.items()
                                     if k not in ("load", "idle")},
           "step_cycles": cycles.T.tolist(), "simulation_seconds": round(wall, 1)}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "step_cycles"}, indent=1))
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
