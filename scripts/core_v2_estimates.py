"""Cycle estimates for the core-v2 alternatives of docs/core-v2.md, from a model's golden trace.

Design-time estimates, not the cycle-exact model: each alternative is a schedule with stated
latencies, counted per step from the events the golden model fires on the digits test split.

    python scripts/core_v2_estimates.py --model runs/digits/model.npz --out runs/bench/core_v2_estimates.json

Counts per step (mean over test sequences and steps):
- ``rows``: cycles the lane array spends on a layer's weight rows. Unstructured (``un``): a row costs
  the most entries any lane holds for it (balanced pruning makes that nnz / P). Lane-block (``lb``):
  a row costs its non-empty blocks of P consecutive targets of one gate; the model is not block
  pruned, so ``lb`` is also given at the model's density with full blocks (``lb_dense_blocks``).
- ``sweep``: H / rate, where the rate is min(U, P * ports / 4) neurons per cycle: every neuron reads
  four accumulator words (z, r, ag, hg) through ``ports`` read ports per lane.
- ``readout``: the readout rows of the last layer's events (un: most outputs any lane holds; lb:
  non-empty blocks of P outputs).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from egru_accel.quantize import golden
from egru_accel.quantize.data import load_task
from egru_accel.quantize.model import QuantModel
from egru_accel.quantize.prune import WINDOW

# Latencies of the v2 pipelines, in cycles (registered memory outputs, DSP with input, pipeline
# and output registers, a registered fan-out tree): from an event's row request to the last
# accumulator write, and from an accumulator read to the event leaving the update unit.
MAC_LATENCY = 9
UPDATE_LATENCY = 12
V1_OVERHEAD = 36      # measured on v1 (drain 14, update latency 9, output beats 12, done 2)


def row_costs(matrix: np.ndarray, targets: int, gates: int, lanes: int) -> dict:
    """Cycles per source row of a [rows, gates * targets] weight matrix on ``lanes`` lanes."""
    nz = matrix != 0
    rows = nz.shape[0]
    by_gate = nz.reshape(rows, gates, targets)
    pad = (-targets) % lanes
    padded = np.concatenate([by_gate, np.zeros((rows, gates, pad), bool)], axis=2)
    # Neuron n is in lane n % P at local index n // P: block b holds local index b of every lane.
    blocks = padded.reshape(rows, gates, -1, lanes)             # [rows, gates, block, lane]
    per_lane = blocks.sum(axis=(1, 2))                          # [rows, lane]
    nnz = nz.sum(axis=1)
    # Lane-window: windows of WINDOW local neurons of one gate; an entry gives each lane one
    # weight in the window, so a window costs the most weights any lane keeps in it.
    nwin = -(-blocks.shape[2] // WINDOW)
    wpad = nwin * WINDOW - blocks.shape[2]
    win = np.concatenate([blocks, np.zeros((rows, gates, wpad, lanes), bool)], axis=2)
    win = win.reshape(rows, gates, nwin, WINDOW, lanes).sum(axis=3)      # [rows, gates, window, lane]
    return {
        "lw": win.max(axis=3).sum(axis=(1, 2)),
        "un": per_lane.max(axis=1),
        "lb": blocks.any(axis=3).sum(axis=(1, 2)),
        "lb_dense_blocks": np.ceil(nnz / lanes),
        "nnz": nnz,
    }


def estimate(model: QuantModel, x: np.ndarray, lanes: int, units: int, ports: int, structure: str) -> dict:
    trace = golden.run(model, golden.quantize_input(model, x))
    T, N = trace.logits.shape[:2]
    L = len(model.layers)
    src = (golden.quantize_input(model, x) != 0)
    layer_rows = np.zeros((T, N))
    sweep_total = 0.0
    ideal_update = 0.0
    for l, layer in enumerate(model.layers):
        H = layer.hidden_size
        w = row_costs(layer.W, H, 3, lanes)[structure]
        r = row_costs(layer.R, H, 3, lanes)[structure]
        prev = np.concatenate([np.zeros((1, N, H), bool), trace.events[l][:-1]], axis=0)
        layer_rows += src.astype(float) @ w + prev.astype(float) @ r
        rate = min(units, lanes * ports / 4)
        sweep_last = math.ceil(H / rate)
        sweep_total += sweep_last
        ideal_update += H / lanes
        src = trace.events[l]
    ro = row_costs(model.readout.W, model.output_size, 1, lanes)[structure]
    readout = src.astype(float) @ ro
    eff = trace.effective_macs.sum(axis=2)
    ideal = eff / lanes + ideal_update
    # v2, serial per layer: a layer's rows, the last accumulator write (MAC_LATENCY), then its sweep.
    # While the last layer sweeps, the lane array works on the readout rows of the events the sweep
    # emits (another memory), from the first event on (UPDATE_LATENCY); what is left of them runs
    # before the next step's rows, so their drain hides behind those. Deeper layers run in turn.
    overlapped = (layer_rows + MAC_LATENCY * L + (sweep_total + UPDATE_LATENCY * L)
                  - (sweep_last + UPDATE_LATENCY) + np.maximum(sweep_last + UPDATE_LATENCY,
                                                                UPDATE_LATENCY + readout) + 2)
    # v1-like: everything in turn.
    serial = layer_rows + MAC_LATENCY * (L + 1) + sweep_total + UPDATE_LATENCY * L + readout + 2 * L
    # A readout engine of its own (ECP5: spare multipliers) takes the readout rows off the lanes.
    separate_readout = layer_rows + MAC_LATENCY * L + sweep_total + UPDATE_LATENCY * L + 2
    # Two accumulator banks (ping-pong): step t+1's rows run during step t's sweep, so the lane
    # array is the bound unless the sweep is longer.
    pingpong = np.maximum(layer_rows + readout, sweep_total + UPDATE_LATENCY + MAC_LATENCY) + 4
    variants = {"serial": serial, "overlapped": overlapped, "separate_readout": separate_readout,
                "pingpong": pingpong}
    return {
        "lanes": lanes, "units": units, "ports": ports, "structure": structure,
        "effective_macs": float(eff.mean()), "ideal": float(ideal.mean()),
        "layer_rows": float(layer_rows.mean()), "readout_rows": float(readout.mean()),
        "sweep": float(sweep_total),
        "cycles": {k: float(v.mean()) for k, v in variants.items()},
        "over_ideal": {k: float(v.mean() / ideal.mean()) for k, v in variants.items()},
        "dense_macs": int(trace.dense_macs.sum()),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=None, help="test sequences (default: all)")
    ap.add_argument("--structures", default="un,lb_dense_blocks", help="comma-separated: un, lb, lb_dense_blocks, lw")
    args = ap.parse_args(argv)
    model = QuantModel.load(args.model)
    x = load_task("digits").x_test[:, :args.samples]
    rows = []
    for lanes, units, ports in [(1, 1, 4), (8, 1, 1), (8, 2, 1), (8, 2, 2), (8, 4, 2), (8, 8, 4),
                                (16, 4, 1), (16, 4, 4), (16, 8, 4), (16, 16, 4), (32, 8, 4), (32, 32, 4)]:
        for structure in args.structures.split(","):
            e = estimate(model, x, lanes, units, ports, structure)
            rows.append(e)
            print(f"P={lanes:2} U={units:2} ports={ports} {structure:16} ideal {e['ideal']:7.1f}  "
                  f"rows {e['layer_rows']:6.1f} readout {e['readout_rows']:5.1f} sweep {e['sweep']:4.0f}  "
                  + "  ".join(f"{k} {v:5.0f} ({e['over_ideal'][k]:.2f}x)" for k, v in e["cycles"].items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "mac_latency": MAC_LATENCY,
                                          "update_latency": UPDATE_LATENCY, "estimates": rows}, indent=1))


if __name__ == "__main__":
    main()
