"""Run core v2 (:class:`~egru_accel.hw.shared_core.SharedCore`) as Verilog under cocotb (Icarus
Verilog or Verilator).

The cocotb counterpart of :func:`sim.shared_core_tb.run_shared_core`: :func:`write_shared_core_verilog`
writes the Verilog of the core with its ``dbg`` port (reused while the image, the configuration
and the generator's sources stay the same), :func:`run_shared_core_jobs` runs one simulator process
on it (the cocotb test module :mod:`sim.shared_core_cocotb_test`) for any number of *jobs*, each a
batch of sequences with its own random input idles and output back-pressure, and returns one
:class:`~sim.shared_core_tb.SharedCoreRecord` per job, to be checked with
:func:`sim.shared_core_tb.compare_with_golden`. :func:`run_shared_core_cocotb` is the one-job
shorthand.

Data goes to the simulation as a JSON config (:func:`sim.runner.write_json_config`) and comes back
as a JSON results file, both in the build directory. One build directory per design: Icarus
rebuilds at every run (a fraction of a second); Verilator reruns ``verilator`` and ``make``, which
recompiles only what changed (nothing, for the same Verilog).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from egru_accel.hw.shared_core import SharedCoreConfig
from egru_accel.quantize.shared_rows import SharedRowImage

from .runner import default_simulator, run_cocotb, write_json_config
from .shared_core_tb import SharedCoreRecord
from .verilog import primitive_sources

__all__ = ["Job", "run_shared_core_cocotb", "run_shared_core_jobs", "write_shared_core_verilog",
           "estimated_cycles", "TEST_MODULE", "TOPLEVEL"]

TEST_MODULE = "egru_accel.sim.shared_core_cocotb_test"
TOPLEVEL = "shared_core"


@dataclasses.dataclass(frozen=True)
class Job:
    """Sequences ``x`` [S, T, I] (layer-0 integers), each after a ``start`` pulse, with input idles
    and output back-pressure of probability ``stall_probability`` (independent patterns seeded by
    ``seed`` and ``seed + 1``; 0: none). ``load``: an image whose
    :meth:`~quantize.shared_rows.SharedRowImage.load_writes` go through the core's ``load`` port
    first (it must have the layout of the image the core was built for); the job runs the model
    loaded last (of a capacity build: with that model's sizes)."""
    x: np.ndarray
    stall_probability: float = 0.0
    seed: int = 0
    load: SharedRowImage | None = None


def _image_key(image: SharedRowImage, config: SharedCoreConfig) -> str:
    """Digest of everything the Verilog depends on: the image (layout and every memory), the
    configuration, the generator's sources (``hw/*.py``, ``quantize/shared_rows.py``) and the
    Amaranth version."""
    import amaranth
    from egru_accel import hw
    from egru_accel.quantize import shared_rows

    sources = sorted(Path(hw.__file__).resolve().parent.glob("*.py")) + [Path(shared_rows.__file__).resolve()]
    arrays = {"weights": [np.asarray(w, dtype=np.int64).tolist() for w in image.weights],
              "rows": np.asarray(image.rows, dtype=np.int64).tolist(),
              "init": {k: np.asarray(v, dtype=np.int64).tolist() for k, v in sorted(image.init.items())},
              "theta": np.asarray(image.theta, dtype=np.int64).tolist(),
              "readout_bias": np.asarray(image.readout_bias, dtype=np.int64).tolist(),
              "params": None if image.params is None else image.params.to_dict()}
    from egru_accel.hw.pipeline import collisions_poisoned
    data = {"amaranth": amaranth.__version__, "poisoned_collisions": collisions_poisoned(),
            "sources": {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sources},
            "config": dataclasses.asdict(config), "layout": image.layout.to_dict(), "image": arrays}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def write_shared_core_verilog(image: SharedRowImage, config: SharedCoreConfig | None,
                              build_dir: str | os.PathLike[str]) -> Path:
    """Write the Verilog of ``SharedCore(image, config)`` with the ``dbg`` port to
    ``{build_dir}/shared_core.v`` (module ``shared_core``); an earlier file for the same image,
    configuration and generator sources is reused. Returns its absolute path."""
    from egru_accel.hw.shared_core import SharedCore
    from .verilog import write_verilog

    config = dataclasses.replace(config or SharedCoreConfig(), debug=True)
    build = Path(build_dir).resolve()
    path, key_file = build / f"{TOPLEVEL}.v", build / f"{TOPLEVEL}.key"
    key = _image_key(image, config)
    if path.is_file() and key_file.is_file() and key_file.read_text() == key:
        return path
    build.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)
    write_verilog(SharedCore(image, config), path, name=TOPLEVEL)
    key_file.write_text(key)
    return path


def _step_bound(image: SharedRowImage) -> int:
    """Generous bound on one step's cycles without stalls (every entry of every row fetched)."""
    lay = image.layout
    return 200 + 2 * (lay.entries + lay.rows + 4 * lay.neurons + lay.outputs + lay.input_size) + 40 * lay.n_layers


def estimated_cycles(image: SharedRowImage, steps: int) -> int:
    """An upper bound of the cycles of ``steps`` steps without stalls (for choosing the simulator)."""
    return steps * _step_bound(image)


def _check_job(image: SharedRowImage, job: Job) -> np.ndarray:
    """``job``'s inputs, checked against ``image``, the model the job runs."""
    lay = image.layout
    x = np.asarray(job.x)
    if x.ndim != 3 or x.shape[2] != image.input_size or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"expected sequences [S, T, {image.input_size}] with S, T >= 1, got {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"sequences must hold integers (see golden.quantize_input), not {x.dtype}")
    fmt = lay.formats
    if x.min() < fmt.input_min or x.max() > fmt.input_max:
        raise ValueError(f"inputs must lie in [{fmt.input_min}, {fmt.input_max}] ({fmt.input_bits}-bit signed)")
    if not 0.0 <= float(job.stall_probability) < 1.0:
        raise ValueError(f"stall_probability must satisfy 0 <= p < 1, not {job.stall_probability!r}")
    return x.astype(np.int64)


def run_shared_core_jobs(image: SharedRowImage, jobs, *, config: SharedCoreConfig | None = None,
                         build_dir: str | os.PathLike[str], simulator: str | None = None,
                         timeout_s: float | None = None, waves: bool | str = False,
                         stats: dict | None = None) -> list[SharedCoreRecord]:
    """Run ``jobs`` (:class:`Job` s, in order) in one simulation of ``SharedCore(image, config)``
    on ``simulator`` (``"icarus"``, ``"verilator"``; ``None``: :func:`sim.runner.default_simulator`).

    Returns one :class:`SharedCoreRecord` per job: ``outputs[s]`` [T, O] (numpy), ``updates[s][t]``
    the (neuron, candidate, fire, y) of every ``dbg`` beat while ``status.steps`` read ``t``, in
    order, and ``step_cycles[s][t]`` the ``status.step_cycles`` at the end of step ``t``. If
    ``stats`` is a dict it receives ``cycles`` (clock cycles simulated), ``wall_time_s`` and
    ``cycles_per_second`` of the cocotb test, ``stalls`` (per job: ``input_idles``, the cycles the
    core was ready for an input that the source's idles withheld, and ``output_backpressure``, the
    cycles an output waited for the sink), ``build_time_s``, ``simulator`` and ``results`` (the
    :class:`sim.runner.SimResults`).

    Raises :class:`sim.runner.SimulationError` when the build or the simulation fails (the cocotb
    test fails a step that takes too long, outputs with X/Z bits, a wrong ``status.steps``, or
    inputs left over), ``ValueError`` for bad inputs.
    """
    jobs = list(jobs)
    if not jobs:
        raise ValueError("jobs is empty")
    if not all(isinstance(j, Job) for j in jobs):
        raise TypeError("jobs must be sim.shared_core_cocotb.Job instances")
    running, current = [], image          # the model each job runs: the one loaded last
    for j in jobs:
        current = j.load if j.load is not None else current
        running.append(current)
    xs = [_check_job(run, j) for run, j in zip(running, jobs)]
    config = config or SharedCoreConfig()
    lay = image.layout
    build = Path(build_dir).resolve()
    verilog = write_shared_core_verilog(image, config, build)
    results_file = build / "results.json"
    results_file.unlink(missing_ok=True)
    worst = max(float(j.stall_probability) for j in jobs)
    limit = int(_step_bound(image) / (1.0 - worst) ** 2) + 1000
    def load_words(job):
        if job.load is None:
            return []
        if job.load.layout != lay:
            raise ValueError("a job's load image must have the layout of the image the core is built for")
        return job.load.load_payloads(config.weight_memory, config.load_macs)

    cfg = {"jobs": [{"inputs": x.tolist(), "stall_probability": float(j.stall_probability), "seed": int(j.seed),
                     "load": load_words(j), "input_size": run.input_size, "outputs": run.outputs,
                     "neurons": sum(run.hidden)} for x, j, run in zip(xs, jobs, running)],
           "step_cycle_limit": limit, "results": str(results_file)}
    env = write_json_config(cfg, path=build / "config.json")
    steps = sum(x.shape[0] * x.shape[1] for x in xs)
    simulator = simulator or default_simulator(cycles=estimated_cycles(image, steps), lanes=lay.lanes)
    # SB_SPRAM256KA or SB_MAC16 instances: yosys's simulation models of the primitives.
    cells, defines = primitive_sources(config)
    sources = [verilog] + cells
    sim = run_cocotb(verilog_sources=sources, toplevel=TOPLEVEL, test_module=TEST_MODULE,
                     build_dir=build / f"sim_{simulator}", extra_env=env, waves=waves, timeout_s=timeout_s,
                     simulator=simulator, defines=defines)
    data = json.loads(results_file.read_text())
    if stats is not None:
        stats.update({k: data[k] for k in ("cycles", "wall_time_s", "cycles_per_second", "stalls")}, results=sim,
                     simulator=sim.simulator, build_time_s=sim.build_time_s)
    if len(data["jobs"]) != len(jobs):
        raise RuntimeError(f"the simulation returned {len(data['jobs'])} jobs, expected {len(jobs)}")
    records = []
    for x, job, run in zip(xs, data["jobs"], running):
        if len(job) != x.shape[0]:
            raise RuntimeError(f"the simulation returned {len(job)} sequences, expected {x.shape[0]}")
        rec = SharedCoreRecord()
        for seq in job:
            rec.outputs.append(np.asarray(seq["outputs"], dtype=np.int64).reshape(x.shape[1], run.outputs))
            rec.updates.append([[tuple(u) for u in step] for step in seq["updates"]])
            rec.step_cycles.append(list(seq["step_cycles"]))
        records.append(rec)
    return records


def run_shared_core_cocotb(image: SharedRowImage, x, *, config: SharedCoreConfig | None = None,
                           build_dir: str | os.PathLike[str], stall_probability: float = 0.0, seed: int = 0,
                           simulator: str | None = None, timeout_s: float | None = None,
                           waves: bool | str = False, stats: dict | None = None) -> SharedCoreRecord:
    """:func:`sim.shared_core_tb.run_shared_core` on generated Verilog: one :class:`Job`."""
    return run_shared_core_jobs(image, [Job(x=np.asarray(x), stall_probability=stall_probability, seed=seed)],
                                config=config, build_dir=build_dir, simulator=simulator, timeout_s=timeout_s,
                                waves=waves, stats=stats)[0]
