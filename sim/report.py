"""Simulate a model's accelerator in cocotb and compare it with the golden model: the
``egru-accel sim`` report.

The sparse core runs every sequence (under random stream stalls if asked) and is checked
value by value; the dense baseline (every weight stored, every input and neuron an event)
runs one sequence for its cycle count, which does not depend on the data.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from egru_accel.hw.params import CoreParams
from egru_accel.quantize import golden
from egru_accel.quantize.model import QuantModel

from .compare import compare_run

__all__ = ["simulate", "model_inputs"]


def model_inputs(model: QuantModel, *, samples: int | None, steps: int | None, seed: int = 0):
    """Layer-0 integer sequences [N, T, I] and labels (or None): the model's task test split,
    or random inputs for a model without a task."""
    task_name = model.meta.get("task")
    if task_name and task_name != "random":
        from egru_accel.quantize.data import load_task
        task = load_task(task_name)
        if task.input_size != model.input_size:
            raise ValueError(f"model takes {model.input_size} inputs but task {task_name} has {task.input_size}")
        n = task.x_test.shape[1] if samples is None else min(samples, task.x_test.shape[1])
        x = golden.quantize_input(model, task.x_test[:, :n])          # [T, N, I]
        return np.ascontiguousarray(x.transpose(1, 0, 2)), task.y_test[:n]
    from egru_accel.quantize.random_model import random_inputs
    return random_inputs(model, steps=steps or 200, sequences=samples or 1, seed=seed), None


def simulate(model: QuantModel, *, lanes: int, sequences: np.ndarray, labels=None, build_dir: str,
             stall_probability: float = 0.0, seed: int = 0, waves: bool = False, dense: bool = False,
             chunk: int = 25, progress: bool = True, detail: dict | None = None,
             simulator: str | None = None) -> dict:
    """Run ``sequences`` [N, T, I] through the core and return the report dictionary.

    If ``detail`` is a dict, it receives the per-step figures behind the report's means:
    ``step_cycles`` and ``ideal_cycles`` (float64 arrays [N, T], clock cycles of each step of
    each sequence, measured and ideal), ``dense_step_cycles`` (the dense baseline's measured
    steps) and ``trace`` (the golden model's :class:`~quantize.golden.GoldenTrace` [T, N]).
    ``simulator``: ``"icarus"`` or ``"verilator"`` (``None``: :func:`sim.runner.default_simulator`).
    """
    from tqdm import tqdm

    from .cocotb_core import run_sequences
    from .cocotb_core import estimated_cycles
    from .runner import default_simulator
    t0 = time.monotonic()
    params = CoreParams.from_model(model, lanes=lanes, dense=dense)
    N, T, _ = sequences.shape
    # One simulator for the whole run (all chunks and the dense baseline share its builds).
    simulator = simulator or default_simulator(cycles=estimated_cycles(params, N * T), lanes=lanes)
    sim_stats = {"cycles": 0, "wall_time_s": 0.0, "build_time_s": 0.0, "simulator": simulator}
    trace = golden.run(model, sequences.transpose(1, 0, 2))
    mismatches, cycles, outputs = [], [], []
    with tqdm(total=N, unit="seq", file=sys.stderr, disable=not progress, dynamic_ncols=True,
              desc="cocotb " + ("dense" if dense else "sparse")) as bar:
        for start in range(0, N, chunk):
            part = sequences[start:start + chunk]
            stats: dict = {}
            records = run_sequences(params, part, build_dir=os.path.join(build_dir, "dense" if dense else "sparse"),
                                    stall_probability=stall_probability, seed=seed + start,
                                    waves=waves and start == 0, simulator=simulator, stats=stats)
            for key in ("cycles", "wall_time_s", "build_time_s"):
                sim_stats[key] += stats[key]
            sim_stats["simulator"] = stats["simulator"]
            for k, rec in enumerate(records):
                b = start + k
                sub = golden.run(model, sequences[b][:, None, :])
                for mm in compare_run(sub, rec):
                    mismatches.append(f"sequence {b}: {mm}")
                cycles.extend(rec.step_cycles)
                outputs.append(rec.outputs)
            bar.update(len(part))
            bar.set_postfix_str(f"{len(mismatches)} mismatches")
    # The dense baseline costs the same at every step whatever the data (every input and
    # neuron is an event, every weight is stored; tests/test_core_amaranth.py checks this),
    # so two steps of the first sequence measure it.
    dense_steps = min(T, 2)
    if dense:
        dense_cycles = list(cycles[:dense_steps])
    else:
        dense_params = CoreParams.from_model(model, lanes=lanes, dense=True)
        rec = run_sequences(dense_params, sequences[:1, :dense_steps], build_dir=os.path.join(build_dir, "dense"),
                            simulator=simulator)[0]
        dense_cycles = rec.step_cycles
    eff = trace.effective_macs.sum(axis=2)            # [T, N]
    H = sum(model.hidden_sizes)
    ideal = eff / lanes + H / lanes
    dense_macs_step = int(trace.dense_macs.sum())
    cyc = np.array(cycles, dtype=np.float64)
    report = {
        "lanes": lanes, "dense_core": dense, "sequences": N, "steps": N * T,
        "neuron_steps": N * T * H,
        "mismatches": len(mismatches), "first_mismatches": mismatches[:20],
        "cycles_per_step": {"mean": float(cyc.mean()), "max": int(cyc.max())},
        "ideal_cycles_per_step": {"mean": float(ideal.mean()), "max": float(ideal.max())},
        "cycles_over_ideal": float(cyc.mean() / ideal.mean()),
        "dense_cycles_per_step": {"mean": float(np.mean(dense_cycles)), "max": int(np.max(dense_cycles)),
                                  "measured_on": f"the first {dense_steps} steps of sequence 0"},
        "effective_macs": int(eff.sum()), "dense_macs": dense_macs_step * N * T,
        "mac_ratio": dense_macs_step * N * T / max(1, int(eff.sum())),
        "cycle_ratio": float(np.mean(dense_cycles) / cyc.mean()),
        "stall_probability": stall_probability,
        "simulator": sim_stats["simulator"],
        # The simulator's own speed: clock cycles over the simulation's wall time (builds excluded).
        "simulated_cycles": sim_stats["cycles"],
        "simulator_cycles_per_second": sim_stats["cycles"] / max(sim_stats["wall_time_s"], 1e-9),
        "build_seconds": sim_stats["build_time_s"],
        "seconds": time.monotonic() - t0,
    }
    report["cycle_ratio_over_mac_ratio"] = report["cycle_ratio"] / report["mac_ratio"]
    if detail is not None:
        # cycles is sequence-major (all steps of sequence 0, then 1, ...); ideal is [T, N].
        detail.update(step_cycles=cyc.reshape(N, T), ideal_cycles=np.ascontiguousarray(ideal.T, dtype=np.float64),
                      dense_step_cycles=np.array(dense_cycles, dtype=np.int64), trace=trace)
    if labels is not None:
        pred = np.array([np.argmax(o[-1]) for o in outputs])
        report["rtl_accuracy"] = float(np.mean(pred == labels[:len(pred)]))
        report["golden_accuracy"] = golden.accuracy(trace, labels)
    return report
