"""One bitstream, many models, at the bit level: a capacity build (UART, bridge, core v2) in
cocotb, driven through the unchanged host driver (sim/capacity_round_trip.py): models loaded in
turn and run against their golden models, a model over the capacity refused by the driver
before a byte goes out, images the device must refuse, the model before answering after each."""

import pytest

from egru_accel.hw.shared_core import SharedCoreConfig
from egru_accel.quantize.capacity import Capacity
from egru_accel.quantize.random_model import random_inputs, random_model
from egru_accel.sim.capacity_round_trip import run_capacity_round_trip
from helpers import simulator_params, three_models


def small_models():
    """Two small models (one of two layers) whose images are short enough for Icarus."""
    return [random_model(inputs=3, hidden=[4], outputs=2, weight_sparsity=0.5, seed=5, threshold_mode="random"),
            random_model(inputs=2, hidden=[4, 4], outputs=3, weight_sparsity=0.3, seed=6, threshold_mode="mixed")]


@pytest.mark.parametrize("simulator", simulator_params())
def test_one_bitstream_many_models_through_the_driver(tmp_path, simulator):
    # Verilator runs the three models of the Amaranth tests; Icarus, about 8x slower here, two small ones.
    models = three_models() if simulator == "verilator" else small_models()
    lanes = 4 if simulator == "verilator" else 2
    named = {f"M{k}": m for k, m in enumerate(models)}
    capacity = Capacity.covering(models, lanes=lanes)
    seqs = {n: random_inputs(m, steps=4, sequences=1, seed=k) for k, (n, m) in enumerate(named.items())}
    report = run_capacity_round_trip(capacity, SharedCoreConfig(model_at_reset=False), named,
                                     build_dir=tmp_path, sequences=seqs, simulator=simulator, divisor=4,
                                     timeout_s=900)
    assert report["error"] is None and report["missing_phases"] == 0
    assert report["mismatches"] == {"outputs": 0, "refusals": 0, "loads": 0, "bytes": 0, "info": 0}, report["refusals"]
    assert {r["model"] for r in report["runs"]} == set(named)
    # Every model ran, the first twice (loaded again at the end), the last after each refusal.
    assert len(report["runs"]) == len(named) + 1 + 4
    assert [r["expected"] for r in report["refusals"]] == [
        "NO_MODEL", "CapacityError", "IMAGE_SIGNATURE", "IMAGE_CAPACITY", "IMAGE_CRC"]
    assert all(r["step_cycles"] > 0 for r in report["runs"])
