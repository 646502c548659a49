"""Core v2's Verilog (hw/shared_core.py) under cocotb on Icarus Verilog and on Verilator: bit-exact
with the golden model under random input idles and output back-pressure, cycle for cycle with the
Amaranth simulator without them, and the two simulators identical.

Every model's Verilog is written once and built once per simulator (module-scoped cache): one
simulation runs both of its jobs, the stalled one and the free one.
"""

import dataclasses
import functools

import numpy as np
import pytest

from egru_accel.hw.shared_core import SharedCoreConfig
from egru_accel.quantize.random_model import random_inputs, random_model
from egru_accel.quantize.shared_rows import pack_shared_rows
from egru_accel.sim.runner import available_simulators
from egru_accel.sim.shared_core_cocotb import Job, run_shared_core_jobs, write_shared_core_verilog
from egru_accel.sim.shared_core_tb import SharedCoreRecord, compare_with_golden, run_shared_core

#: (lanes, hidden sizes, outputs, lane kind, update multipliers, dense baseline, threshold mode[,
#: weight memory: "wide" packs the image lane-window])
MODELS = [
    (1, [5], 6, "fabric", "dsp", False, "mixed"),
    (3, [7, 4], 6, "dsp_model", "logic", False, "random"),
    (8, [9], 9, "fabric", "logic", False, "mixed"),
    # Dense, with 2 * neurons a power of two: every step writes the event buffer to its very
    # end (a follow-the-writer source must see the end address).
    (3, [8], 8, "dsp_model", "dsp", True, "mixed"),
    (8, [20], 9, "fabric", "logic", False, "mixed", "wide"),
]
IDS = [f"p{m[0]}-{'x'.join(map(str, m[1]))}-{m[3]}-{m[4]}{'-dense' if m[5] else ''}{''.join('-' + e for e in m[7:])}"
       for m in MODELS]
STALLS = 0.3


def _needs(simulator):
    name = {"icarus": "Icarus Verilog", "verilator": "Verilator >= 5.036"}[simulator]
    return pytest.mark.skipif(simulator not in available_simulators(),
                              reason=f"{name} is not installed (scripts/setup.sh installs Icarus Verilog and Verilator)")


SIMULATORS = [pytest.param(s, marks=_needs(s)) for s in ("icarus", "verilator")]
needs_both = pytest.mark.skipif(
    set(available_simulators()) != {"icarus", "verilator"},
    reason="needs Icarus Verilog and Verilator >= 5.036 (scripts/setup.sh installs both)")


@functools.cache
def case(k):
    """Model ``k``: (model, image, config, inputs [S, T, I])."""
    lanes, hidden, outputs, lane, multipliers, dense, mode, *extra = MODELS[k]
    memory = extra[0] if extra else "lanes"
    model = random_model(inputs=5, hidden=hidden, outputs=outputs, weight_sparsity=0.5, seed=40 + k,
                         threshold_mode=mode)
    x = np.asarray(random_inputs(model, steps=5, sequences=2, seed=k))
    image = pack_shared_rows(model, lanes, dense=dense, structure="lane-window" if memory == "wide" else "unstructured")
    return model, image, SharedCoreConfig(lane=lane, multipliers=multipliers, weight_memory=memory, debug=True), x


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(k, simulator)``: (stalled, free) records of model ``k`` and the run's stats, simulated
    once per module; both simulators share the model's Verilog (one build directory per model)."""
    cache, builds = {}, {}

    def get(k, simulator):
        if (k, simulator) not in cache:
            model, image, config, x = case(k)
            if k not in builds:
                builds[k] = tmp_path_factory.mktemp(f"model{k}")
            stats = {}
            cache[k, simulator] = tuple(run_shared_core_jobs(
                image, [Job(x, STALLS, seed=k), Job(x, 0.0)], config=config, build_dir=builds[k],
                simulator=simulator, timeout_s=120, stats=stats)), stats
        return cache[k, simulator]
    return get


@functools.cache
def amaranth_free_run(k):
    model, image, config, x = case(k)
    return run_shared_core(image, x, config=config)


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("k", range(len(MODELS)), ids=IDS)
def test_verilog_is_bit_exact_with_stalls_and_cycle_exact_without(runs, k, simulator):
    model, image, config, x = case(k)
    (stalled, free), stats = runs(k, simulator)
    assert stats["simulator"] == simulator and stats["cycles"] > 0
    S, T = x.shape[:2]
    for name, rec in (("stalled", stalled), ("free", free)):
        diffs = compare_with_golden(model, image, x, rec)
        assert diffs == [], f"{simulator}, {name} run:\n" + "\n".join(diffs[:10])
        assert [len(c) for c in rec.step_cycles] == [T] * S
    fired = sum(u[2] for seq in free.updates for step in seq for u in step)
    assert fired > 0, "the fixture should fire"
    # Without stalls the cycles are the hardware's alone: those of the Amaranth simulator.
    reference = amaranth_free_run(k)
    assert free.step_cycles == reference.step_cycles
    assert all(np.array_equal(a, b) for a, b in zip(free.outputs, reference.outputs))
    assert free.updates == reference.updates
    # The core saw idles and back-pressure in the stalled run, and none in the free one.
    bit, none = stats["stalls"]
    assert bit["input_idles"] > 0 and bit["output_backpressure"] > 0, bit
    assert none == {"input_idles": 0, "output_backpressure": 0}
    # With one accumulator bank (a step's inputs taken only once the step before has ended)
    # stalls can only make a step longer.
    if getattr(config, "banks", 1) == 1:
        for s, f in zip(stalled.step_cycles, free.step_cycles):
            assert all(a >= b for a, b in zip(s, f))
    if image.layout.dense:
        # The dense baseline's steps all take the same cycles.
        assert len({c for seq in free.step_cycles for c in seq}) == 1


@needs_both
@pytest.mark.parametrize("k", range(len(MODELS)), ids=IDS)
def test_icarus_and_verilator_agree_cycle_for_cycle(runs, k):
    (si, fi), _ = runs(k, "icarus")
    (sv, fv), _ = runs(k, "verilator")
    for a, b in ((si, sv), (fi, fv)):
        assert a.step_cycles == b.step_cycles
        assert a.updates == b.updates
        assert all(np.array_equal(p, q) for p, q in zip(a.outputs, b.outputs))


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_the_comparison_sees_a_changed_output_and_a_changed_update(runs, simulator):
    model, image, config, x = case(1)
    (stalled, _), _ = runs(1, simulator)
    bad = SharedCoreRecord(outputs=[o.copy() for o in stalled.outputs],
                           updates=[[list(step) for step in seq] for seq in stalled.updates],
                           step_cycles=stalled.step_cycles)
    bad.outputs[1][3, 2] += 1
    n, c, f, y = bad.updates[0][2][4]
    bad.updates[0][2][4] = (n, c - 1, f, y)
    diffs = compare_with_golden(model, image, x, bad)
    assert len(diffs) == 2
    assert diffs[0].startswith("sequence 0 step 2: update 4: core") and diffs[1].startswith("sequence 1 step 3: outputs")


@_needs("icarus")
def test_a_core_with_other_thresholds_fails_the_comparison(tmp_path):
    # The whole path (Verilog, simulation, record) against the golden model of another model:
    # the same layout, the thresholds halved.
    model, image, config, x = case(0)
    layer = dataclasses.replace(model.layers[0], theta=model.layers[0].theta // 2)
    other = pack_shared_rows(dataclasses.replace(model, layers=[layer]), image.layout.lanes)
    rec = run_shared_core_jobs(other, [Job(x, STALLS, seed=3)], config=config, build_dir=tmp_path,
                               simulator="icarus", timeout_s=120)[0]
    diffs = compare_with_golden(model, image, x, rec)
    assert diffs and any(": update " in d for d in diffs)


def test_the_verilog_is_reused_until_the_image_changes(tmp_path):
    model, image, config, x = case(0)
    path = write_shared_core_verilog(image, config, tmp_path)
    written = path.stat().st_mtime_ns
    assert "module shared_core(" in path.read_text()
    assert write_shared_core_verilog(image, config, tmp_path).stat().st_mtime_ns == written
    # Another threshold: the same layout, another memory content.
    layer = dataclasses.replace(model.layers[0], theta=model.layers[0].theta // 2)
    changed = pack_shared_rows(dataclasses.replace(model, layers=[layer]), image.layout.lanes)
    assert changed.layout == image.layout
    assert write_shared_core_verilog(changed, config, tmp_path).stat().st_mtime_ns != written
    # Another configuration of the same image.
    again = write_shared_core_verilog(image, config, tmp_path).stat().st_mtime_ns
    other = SharedCoreConfig(lane="dsp_model", multipliers="logic", debug=True)
    assert write_shared_core_verilog(image, other, tmp_path).stat().st_mtime_ns != again


@pytest.mark.parametrize("change, message", [
    (lambda x: x[0], r"expected sequences \[S, T, 5\]"),
    (lambda x: x.astype(float), "integers"),
    (lambda x: x * 0 + 128, r"inputs must lie in \[-128, 127\]"),
])
def test_bad_inputs_are_rejected(tmp_path, change, message):
    model, image, config, x = case(0)
    with pytest.raises(ValueError, match=message):
        run_shared_core_jobs(image, [Job(change(x))], config=config, build_dir=tmp_path)
    with pytest.raises(ValueError, match="stall_probability"):
        run_shared_core_jobs(image, [Job(x, 1.0)], config=config, build_dir=tmp_path)


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_the_ice40_build_loads_its_models_through_the_load_port(tmp_path, simulator):
    # The UP5K's core: SB_MAC16 lanes and the wide weight memory in SB_SPRAM256KA, both simulated
    # with yosys's models of the primitives. It starts without a model; one is loaded, runs
    # (stalled, then free), then another of the same layout is loaded and runs.
    from test_shared_core_load import _same_layout_variant

    model = random_model(inputs=5, hidden=[20], outputs=9, weight_sparsity=0.5, seed=45, threshold_mode="mixed")
    other = _same_layout_variant(model, 2)
    first, second = (pack_shared_rows(m, 8, structure="lane-window") for m in (model, other))
    assert first.layout == second.layout
    x = np.asarray(random_inputs(model, steps=5, sequences=2, seed=5))
    config = SharedCoreConfig(lane="sb_mac16", multipliers="logic", weight_memory="wide", weight_ram="ice40_spram",
                              model_at_reset=False, debug=True)
    stats = {}
    records = run_shared_core_jobs(first, [Job(x, STALLS, seed=1, load=first), Job(x, 0.0),
                                           Job(x, STALLS, seed=2, load=second)],
                                   config=config, build_dir=tmp_path, simulator=simulator, timeout_s=300, stats=stats)
    assert "SB_SPRAM256KA" in (tmp_path / "shared_core.v").read_text()
    for rec, (m, image) in zip(records, [(model, first), (model, first), (other, second)]):
        diffs = compare_with_golden(m, image, x, rec)
        assert diffs == [], f"{simulator}:\n" + "\n".join(diffs[:10])
    assert compare_with_golden(model, first, x, records[2]) != []
    # The same hardware as the Amaranth model of it (block RAM weights, the DSP's model), cycle for cycle.
    reference = run_shared_core(first, x, config=dataclasses.replace(config, lane="dsp_model", weight_ram="inferred"),
                                load=first.load_writes("wide"))
    assert records[1].step_cycles == reference.step_cycles
