"""Run the EGRU core's Verilog under cocotb (Icarus Verilog or Verilator), sequence by sequence.

:func:`run_sequences` is the cocotb counterpart of :func:`sim.amaranth_tb.run_core`: it
writes the Verilog of the core with its debug ports, runs the cocotb test module
:mod:`sim.core_cocotb_test` on it (one simulator process for all sequences) and returns
one :class:`~sim.compare.CoreRecord` per sequence, to be checked with
:func:`sim.compare.compare_run` against the golden model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from egru_accel.hw.params import CoreParams

from .compare import CoreRecord
from .runner import default_simulator, run_cocotb, write_json_config

__all__ = ["run_sequences", "write_core_verilog", "estimated_cycles", "TEST_MODULE", "TOPLEVEL"]

TEST_MODULE = "egru_accel.sim.core_cocotb_test"
TOPLEVEL = "egru_core"


def _params_key(params: CoreParams) -> str:
    """Digest of everything the generated Verilog depends on: ``params`` (configuration,
    layout and memory contents), the generator's sources (``hw/*.py`` and the memory
    definitions) and the Amaranth version."""
    import amaranth
    from egru_accel import hw
    from egru_accel.quantize import memory

    sources = sorted(Path(hw.__file__).resolve().parent.glob("*.py")) + [Path(memory.__file__).resolve()]
    data = {"amaranth": amaranth.__version__,
            "sources": {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sources},
            "config": params.config.to_dict(), "layout": params.layout.to_dict(),
            "contents": {f"{int(mem)}.{lane}": [int(w) for w in words]
                         for (mem, lane), words in sorted(params.packed.contents.items())}}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def write_core_verilog(params: CoreParams, build_dir: str | os.PathLike[str]) -> Path:
    """Write the Verilog of ``EGRUCore(params)`` with the debug ports to ``{build_dir}/egru_core.v``.

    The file is reused when an earlier call wrote it for the same parameters (memory
    contents included) from the same ``hw/`` sources; returns its absolute path.
    """
    from egru_accel.hw.core import EGRUCore
    from .verilog import write_verilog

    build = Path(build_dir).resolve()
    path, key_file = build / f"{TOPLEVEL}.v", build / f"{TOPLEVEL}.key"
    params = params.replace_config(debug=True)
    key = _params_key(params)
    if path.is_file() and key_file.is_file() and key_file.read_text() == key:
        return path
    build.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    write_verilog(EGRUCore(params), path, name=TOPLEVEL)
    key_file.write_text(key)
    return path


def estimated_cycles(params: CoreParams, steps: int) -> int:
    """An upper bound of the clock cycles of ``steps`` steps (every row fetched at every step),
    for choosing the simulator (:func:`sim.runner.default_simulator`)."""
    lay = params.layout
    return steps * (lay.weight_depth + lay.rows + lay.const_depth + lay.outputs)


def run_sequences(params: CoreParams, sequences, *, build_dir: str | os.PathLike[str],
                  stall_probability: float = 0.0, seed: int = 0, waves: bool | str = False,
                  timeout_s: float | None = None, stats: dict | None = None,
                  simulator: str | None = None) -> list[CoreRecord]:
    """Simulate the sequences ``sequences`` [N, T, I] (layer-0 integers) on ``simulator``
    (``"icarus"`` or ``"verilator"``; ``None``: :func:`sim.runner.default_simulator`).

    Each sequence starts from reset cell states (a ``ctl.start`` pulse before it).
    ``stall_probability`` inserts random idle cycles on the input stream and back-pressure
    on the output stream (patterns seeded by ``seed``). ``waves`` as in
    :func:`sim.runner.run_cocotb`; ``timeout_s`` limits the simulation's wall-clock time.
    If ``stats`` is a dict, it receives ``cycles`` (clock cycles simulated),
    ``wall_time_s`` and ``cycles_per_second`` of the cocotb test (the simulation alone,
    without the build), ``simulator``, ``build_time_s`` and ``results`` (the
    :class:`sim.runner.SimResults`).

    Raises :class:`sim.runner.SimulationError` when the build or the simulation fails
    (e.g. a step that never ends), ``ValueError`` for inputs of the wrong shape.
    """
    x = np.asarray(sequences)
    lay = params.layout
    if x.ndim != 3 or x.shape[2] != lay.input_size or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"expected sequences [N, T, {lay.input_size}] with N, T >= 1, got {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"sequences must hold integers (see golden.quantize_input), not {x.dtype}")
    lo, hi = -(1 << (params.formats.input_bits - 1)), (1 << (params.formats.input_bits - 1)) - 1
    if x.min() < lo or x.max() > hi:
        raise ValueError(f"inputs must lie in [{lo}, {hi}] ({params.formats.input_bits}-bit signed)")
    if not 0.0 <= stall_probability < 1.0:
        raise ValueError(f"stall_probability must satisfy 0 <= p < 1, not {stall_probability!r}")

    build = Path(build_dir).resolve()
    verilog = write_core_verilog(params, build)
    results_file = build / "results.json"
    results_file.unlink(missing_ok=True)
    I, O = lay.input_size, lay.outputs
    # Generous bound on one step (cf. sim.amaranth_tb), stretched for the stalls.
    limit = 50 + 4 * (lay.weight_depth + lay.rows + lay.acc_depth + O + I)
    limit = int(limit / (1.0 - stall_probability) ** 2) + 1000
    config = {
        "inputs": x.astype(np.int64).tolist(), "lanes": params.lanes, "outputs": O, "input_size": I,
        "stall_probability": float(stall_probability), "seed": int(seed), "step_cycle_limit": limit,
        "results": str(results_file),
    }
    env = write_json_config(config, path=build / "config.json")
    simulator = simulator or default_simulator(cycles=estimated_cycles(params, x.shape[0] * x.shape[1]),
                                               lanes=params.lanes)
    sim = run_cocotb(verilog_sources=[verilog], toplevel=TOPLEVEL, test_module=TEST_MODULE,
                     build_dir=build / f"sim_{simulator}", extra_env=env, waves=waves, timeout_s=timeout_s,
                     simulator=simulator)
    data = json.loads(results_file.read_text())
    if stats is not None:
        stats.update({k: data[k] for k in ("cycles", "wall_time_s", "cycles_per_second")}, results=sim,
                     simulator=sim.simulator, build_time_s=sim.build_time_s)
    records = []
    for seq in data["sequences"]:
        records.append(CoreRecord(outputs=seq["outputs"], updates=[tuple(u) for u in seq["updates"]],
                                  step_cycles=seq["step_cycles"]))
    if len(records) != x.shape[0]:
        raise RuntimeError(f"the simulation returned {len(records)} sequences, expected {x.shape[0]}")
    return records
