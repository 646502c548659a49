"""Run the EGRU core's Verilog in Icarus Verilog under cocotb, sequence by sequence.

:func:`run_sequences` is the cocotb counterpart of :func:`sim.amaranth_tb.run_core`: it
writes the Verilog of ``EGRUCore(params, debug=True)``, runs the cocotb test module
:mod:`sim.core_cocotb_test` on it (one simulator process for all sequences) and returns
one :class:`~sim.compare.CoreRecord` per sequence, to be checked with
:func:`sim.compare.compare_run` against the golden model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from hw.params import CoreParams

from .compare import CoreRecord
from .runner import run_cocotb, write_json_config

__all__ = ["run_sequences", "write_core_verilog", "TEST_MODULE", "TOPLEVEL"]

TEST_MODULE = "sim.core_cocotb_test"
TOPLEVEL = "egru_core"


def _params_key(params: CoreParams) -> str:
    """Digest of everything the generated Verilog depends on: ``params`` (memory contents
    included), the generator's source (``hw/*.py``) and the Amaranth version."""
    import amaranth
    import hw

    hw_dir = Path(hw.__file__).resolve().parent
    data = {"amaranth": amaranth.__version__,
            "hw": {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(hw_dir.glob("*.py"))}}
    for f in dataclasses.fields(params):
        if f.name == "model":
            continue
        value = getattr(params, f.name)
        data[f.name] = value.to_dict() if f.name == "formats" else value
    text = json.dumps(data, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    return hashlib.sha256(text.encode()).hexdigest()


def write_core_verilog(params: CoreParams, build_dir: str | os.PathLike[str]) -> Path:
    """Write the Verilog of ``EGRUCore(params, debug=True)`` to ``{build_dir}/egru_core.v``.

    The file is reused when an earlier call wrote it for the same parameters (memory
    contents included) from the same ``hw/`` sources; returns its absolute path.
    """
    from hw.core import EGRUCore
    from .verilog import write_verilog

    build = Path(build_dir).resolve()
    path, key_file = build / f"{TOPLEVEL}.v", build / f"{TOPLEVEL}.key"
    key = _params_key(params)
    if path.is_file() and key_file.is_file() and key_file.read_text() == key:
        return path
    build.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    write_verilog(EGRUCore(params, debug=True), path, name=TOPLEVEL)
    key_file.write_text(key)
    return path


def run_sequences(params: CoreParams, sequences, *, build_dir: str | os.PathLike[str],
                  stall_probability: float = 0.0, seed: int = 0, waves: bool | str = False,
                  timeout_s: float | None = None, stats: dict | None = None) -> list[CoreRecord]:
    """Simulate the sequences ``sequences`` [N, T, I] (layer-0 integers) in Icarus Verilog.

    Each sequence starts from reset cell states (a ``ctl.start`` pulse before it).
    ``stall_probability`` inserts random idle cycles on the input stream and back-pressure
    on the output stream (patterns seeded by ``seed``). ``waves`` as in
    :func:`sim.runner.run_cocotb`; ``timeout_s`` limits the simulation's wall-clock time.
    If ``stats`` is a dict, it receives ``cycles`` (clock cycles simulated),
    ``wall_time_s`` and ``cycles_per_second`` of the cocotb test, and ``results`` (the
    :class:`sim.runner.SimResults`).

    Raises :class:`sim.runner.SimulationError` when the build or the simulation fails
    (e.g. a step that never ends), ``ValueError`` for inputs of the wrong shape.
    """
    x = np.asarray(sequences)
    if x.ndim != 3 or x.shape[2] != params.input_size or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"expected sequences [N, T, {params.input_size}] with N, T >= 1, got {list(x.shape)}")
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
    I, O = params.input_size, params.outputs
    # Generous bound on one step (cf. sim.amaranth_tb), stretched for the stalls.
    limit = 50 + 4 * (params.weight_depth + params.rows + params.acc_depth + O + I)
    limit = int(limit / (1.0 - stall_probability) ** 2) + 1000
    config = {
        "inputs": x.astype(np.int64).tolist(), "lanes": params.lanes, "outputs": O, "input_size": I,
        "stall_probability": float(stall_probability), "seed": int(seed), "step_cycle_limit": limit,
        "results": str(results_file),
    }
    env = write_json_config(config, path=build / "config.json")
    sim = run_cocotb(verilog_sources=[verilog], toplevel=TOPLEVEL, test_module=TEST_MODULE,
                     build_dir=build / "sim", extra_env=env, waves=waves, timeout_s=timeout_s)
    data = json.loads(results_file.read_text())
    if stats is not None:
        stats.update({k: data[k] for k in ("cycles", "wall_time_s", "cycles_per_second")}, results=sim)
    records = []
    for seq in data["sequences"]:
        records.append(CoreRecord(outputs=seq["outputs"], updates=[tuple(u) for u in seq["updates"]],
                                  step_cycles=seq["step_cycles"]))
    if len(records) != x.shape[0]:
        raise RuntimeError(f"the simulation returned {len(records)} sequences, expected {x.shape[0]}")
    return records
