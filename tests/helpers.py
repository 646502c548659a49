"""Helpers shared by test modules (imported as ``helpers``: pytest puts tests/ on sys.path)."""

import shutil

import pytest

from egru_accel.sim.runner import SimulatorNotFoundError, available_simulators, default_simulator


def chosen_simulator() -> str | None:
    """The simulator of this test session (``--simulator``, ``$EGRU_SIMULATOR`` or the fastest
    installed), or ``None`` if it is not installed."""
    try:
        simulator = default_simulator()
    except SimulatorNotFoundError:
        return None
    return simulator if simulator in available_simulators() else None


#: Skips a test that runs cocotb when the session's simulator is not installed.
needs_simulator = pytest.mark.skipif(
    chosen_simulator() is None,
    reason="the chosen simulator is not installed (scripts/setup.sh installs Icarus Verilog and Verilator)")

#: Skips a test that compares both simulators unless both are installed.
needs_both_simulators = pytest.mark.skipif(
    set(available_simulators()) != {"icarus", "verilator"},
    reason="needs Icarus Verilog and Verilator >= 5.036 (scripts/setup.sh installs both)")

def simulator_params():
    """``icarus`` and ``verilator`` as pytest params, each skipped with the reason when it is not installed."""
    names = {"icarus": "Icarus Verilog", "verilator": "Verilator >= 5.036"}
    return [pytest.param(s, marks=pytest.mark.skipif(
        s not in available_simulators(),
        reason=f"{names[s]} is not installed (scripts/setup.sh installs Icarus Verilog and Verilator)"))
        for s in names]


#: Skips a test that runs iverilog directly (not through cocotb).
needs_iverilog = pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog is not installed (scripts/setup.sh installs it)")


def check_memory_bits(params):
    """The packer's bits, memory by memory and lane by lane, against the generated Verilog's."""
    from amaranth.back import verilog

    from egru_accel.hw.core import EGRUCore
    from egru_accel.quantize.memory import MemoryId
    from egru_accel.sim.verilog import verilog_memories

    lay = params.layout
    text = verilog.convert(EGRUCore(params), name="egru_core", emit_src=False)
    found = verilog_memories(text)
    built = {}
    for (module, name), (width, depth) in found.items():
        assert module.startswith("egru_core.lane"), module   # every memory lives in a lane
        built.setdefault(name, []).append(width * depth)
        mem = MemoryId[name.upper()]
        assert (width, depth) == (lay.word(mem).width, lay.depth(mem)), (module, name)
    bits = lay.memory_bits()
    assert set(built) == {m.label for m in MemoryId}
    assert {name: sum(b) for name, b in built.items()} == {m.label: bits[m.label] for m in MemoryId}
    assert sum(w * d for w, d in found.values()) == bits["total"] == params.summary()["memory_bits_total"]
    assert all(len(b) == params.lanes for b in built.values())


def simulate(dut, main, *background, period=1e-6):
    """Run ``dut`` in the Amaranth simulator with one clock: ``main`` and the ``background``
    testbenches (async functions of ``ctx``) until ``main`` returns."""
    from amaranth.sim import Simulator
    sim = Simulator(dut)
    sim.add_clock(period)
    for bench in background:
        sim.add_testbench(bench, background=True)
    sim.add_testbench(main)
    sim.run()


def three_models():
    """Different seeds, sizes, sparsities and threshold modes; the second has one layer."""
    from egru_accel.quantize.random_model import random_model
    return [random_model(inputs=5, hidden=[10, 7], outputs=3, weight_sparsity=0.5, seed=1, threshold_mode="random"),
            random_model(inputs=6, hidden=[12], outputs=4, weight_sparsity=0.7, seed=2, threshold_mode="mixed"),
            random_model(inputs=4, hidden=[8, 8], outputs=2, weight_sparsity=0.3, seed=3, threshold_mode="fire")]


def capacity_for(models, **changes):
    """A capacity of 4 lanes, (12, 8) neurons, that the models' grids fit (and ``changes``)."""
    from egru_accel.quantize.capacity import Capacity
    grids = tuple(sorted({m.acc_frac(l) for m in models for l in range(len(m.layers))}))
    args = dict(formats=models[0].formats, lanes=4, inputs=6, hidden=(12, 8), outputs=4, entries=400,
                max_row_length=40, grids=grids, max_align=8, max_bias_shift=8)
    args.update(changes)
    return Capacity(**args)
