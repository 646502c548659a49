"""Core v2 (hw/shared_core.py) in the Amaranth simulator: bit-exact with the golden model."""

import numpy as np
import pytest

from egru_accel.hw.shared_core import SharedCore, SharedCoreConfig, sweep_classes, sweep_slots
from egru_accel.quantize.random_model import random_inputs, random_model
from egru_accel.quantize.shared_rows import pack_shared_rows
from egru_accel.sim.shared_core_tb import compare_with_golden, run_shared_core

# (lanes, hidden sizes, lane kind, update multipliers, dense baseline, threshold mode, banks[, units[, readout]])
CASES = [
    (1, [5], "fabric", "dsp", False, "mixed", 1),
    (2, [7, 4], "dsp_model", "dsp", False, "random", 1),
    (3, [9, 6], "fabric", "logic", False, "fire", 1),
    (8, [17], "dsp_model", "dsp", False, "mixed", 1),
    (4, [9, 5], "fabric", "dsp", True, "mixed", 1),
    (2, [6, 5, 4], "dsp_model", "dsp", False, "zero", 1),
    (5, [11, 7], "fabric", "dsp", True, "random", 1),
    (1, [5], "dsp_model", "dsp", False, "mixed", 2),
    (3, [9, 6], "fabric", "dsp", False, "fire", 2),
    (8, [17], "dsp_model", "logic", False, "mixed", 2),
    (4, [9, 5], "dsp_model", "dsp", True, "mixed", 2),
    (2, [6, 5, 4], "fabric", "dsp", False, "random", 2),
    (8, [17], "dsp_model", "dsp", False, "fire", 2, 2),
    (5, [11, 7], "fabric", "dsp", True, "mixed", 2, 2),
    (6, [9, 8], "dsp_model", "logic", False, "random", 1, 3),
    (8, [17], "fabric", "dsp", False, "mixed", 2, 2, "engine"),
    (3, [9, 6], "dsp_model", "dsp", True, "random", 2, 1, "engine"),
    (4, [7], "fabric", "logic", False, "fire", 1, 1, "engine"),
    # The ECP5 build's registered biases and sweep addresses.
    (8, [17], "fabric", "dsp", False, "mixed", 2, 2, "engine", True, 2),
    (3, [9, 6], "dsp_model", "logic", False, "random", 1, 1, "lanes", True),
    (5, [11, 7], "fabric", "dsp", True, "fire", 1, 1, "lanes", False, 2),
    (4, [9, 5], "fabric", "dsp", False, "mixed", 2, 1, "engine", True, 2),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_shared_core_is_bit_exact_with_the_golden_model(case):
    lanes, hidden, lane, multipliers, dense, mode, banks, *extra = CASES[case]
    units, readout, register_bias, address_stages = (list(extra) + [1, "lanes", False, 1][len(extra):])[:4]
    model = random_model(inputs=5, hidden=hidden, outputs=3, weight_sparsity=0.5, seed=10 + case,
                         threshold_mode=mode)
    # Three sequences: with two banks, each new sequence clears the bank the last one left rows in.
    x = np.asarray(random_inputs(model, steps=5, sequences=3 if banks == 2 else 2, seed=case))
    image = pack_shared_rows(model, lanes, dense=dense)
    rec = run_shared_core(image, x, config=SharedCoreConfig(debug=True, lane=lane, multipliers=multipliers,
                                                            banks=banks, units=units, readout=readout,
                                                            register_bias=register_bias,
                                                            sweep_address_stages=address_stages),
                          stall_probability=0.2, seed=case)
    assert compare_with_golden(model, image, x, rec) == []
    fired = sum(u[2] for seq in rec.updates for step in seq for u in step)
    if mode in ("mixed", "fire", "random"):
        assert fired > 0            # events flowed, not only silence


# (lanes, hidden sizes, threshold mode, banks, readout): a host that takes an output one cycle in 30
SLOW_SINK_CASES = [
    (2, [6, 5], "unreachable", 1, "lanes"),     # silent: no readout rows wait for the outputs before them
    (4, [9], "fire", 1, "lanes"),               # every neuron fires: the readout's rows wait for them
    (3, [7, 4], "mixed", 2, "lanes"),
    (8, [17], "fire", 2, "lanes"),
    (4, [9], "fire", 2, "engine"),
]


@pytest.mark.parametrize("case", range(len(SLOW_SINK_CASES)))
def test_a_slow_host_loses_no_output(case):
    # The outputs of a step stream while the next step runs; when the host takes them slowly,
    # the next step's readout must wait for them, and so must its end.
    lanes, hidden, mode, banks, readout = SLOW_SINK_CASES[case]
    # More outputs than the output queue holds, so that they are still being read.
    model = random_model(inputs=4, hidden=hidden, outputs=9, weight_sparsity=0.5, seed=40 + case,
                         threshold_mode=mode)
    x = np.asarray(random_inputs(model, steps=4, sequences=2, seed=case))
    image = pack_shared_rows(model, lanes)
    config = SharedCoreConfig(debug=True, lane="dsp_model", banks=banks, readout=readout)
    rec = run_shared_core(image, x, config=config,
                          stall_probability=0.0, sink_stall_probability=29 / 30, seed=case)
    assert compare_with_golden(model, image, x, rec) == []


def test_dense_baseline_takes_the_same_cycles_every_step():
    model = random_model(inputs=4, hidden=[6], outputs=2, weight_sparsity=0.5, seed=3)
    x = np.asarray(random_inputs(model, steps=4, sequences=1, seed=3))
    image = pack_shared_rows(model, 2, dense=True)
    rec = run_shared_core(image, x)
    assert compare_with_golden(model, image, x, rec) == []
    assert len(set(rec.step_cycles[0])) == 1


def test_the_sparse_core_skips_what_the_dense_baseline_computes():
    model = random_model(inputs=6, hidden=[12], outputs=3, weight_sparsity=0.8, seed=4, threshold_mode="mixed")
    x = np.asarray(random_inputs(model, steps=4, sequences=1, seed=4))
    sparse, dense = pack_shared_rows(model, 4), pack_shared_rows(model, 4, dense=True)
    rs, rd = run_shared_core(sparse, x), run_shared_core(dense, x)
    assert compare_with_golden(model, sparse, x, rs) == [] and compare_with_golden(model, dense, x, rd) == []
    assert sum(rs.step_cycles[0]) < sum(rd.step_cycles[0])


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(lane="lut"), ValueError, "lane must be one of fabric, dsp_model, sb_mac16, not 'lut'"),
    (dict(multipliers="booth"), ValueError, "multipliers must be one of dsp, logic, not 'booth'"),
    (dict(debug=1), TypeError, "debug must be True or False, not 1"),
    (dict(register_bias="yes"), TypeError, "register_bias must be True or False, not 'yes'"),
    (dict(sweep_address_stages=3), ValueError, "sweep_address_stages must be 1 or 2, not 3"),
    (dict(banks=3), ValueError, "banks must be 1 or 2, not 3"),
    (dict(units=0), ValueError, "units must be a positive integer, not 0"),
    (dict(readout="dsp"), ValueError, "readout must be one of lanes, engine, not 'dsp'"),
    (dict(readout_macs=0), ValueError, "readout_macs must be a positive integer, not 0"),
])
def test_config_arguments_are_checked(kwargs, error, message):
    with pytest.raises(error, match="^" + message + "$"):
        SharedCoreConfig(**kwargs)


def test_core_arguments_are_checked():
    with pytest.raises(TypeError, match="^image must be a SharedRowImage, not int$"):
        SharedCore(3)
    model = random_model(inputs=4, hidden=[4], outputs=2, seed=0)
    with pytest.raises(TypeError, match="^config must be a SharedCoreConfig, not dict$"):
        SharedCore(pack_shared_rows(model, 2), {})
    with pytest.raises(ValueError, match=r"^units \(3\) must not exceed the lanes \(2\)$"):
        SharedCore(pack_shared_rows(model, 2), SharedCoreConfig(units=3))


@pytest.mark.parametrize("hidden,lanes,dense,mode,banks,readout", [
    ([1], 1, True, "mixed", 1, "lanes"), ([8], 2, True, "mixed", 2, "lanes"), ([8], 4, False, "fire", 1, "engine"),
    ([4, 4], 3, False, "fire", 2, "lanes")])
def test_events_filling_the_buffer_to_its_end(hidden, lanes, dense, mode, banks, readout):
    # The last layer's half of the event buffer full up to the buffer's last word (2 x neurons a
    # power of two, every neuron firing): the source's address must reach the end as the unit's
    # write pointer does, or the follow never ends.
    model = random_model(inputs=2, hidden=hidden, outputs=2, weight_sparsity=0.0, seed=28, threshold_mode=mode)
    x = np.asarray(random_inputs(model, steps=3, sequences=1, seed=0))
    image = pack_shared_rows(model, lanes, dense=dense)
    rec = run_shared_core(image, x, config=SharedCoreConfig(debug=True, banks=banks, readout=readout))
    assert compare_with_golden(model, image, x, rec) == []


@pytest.mark.parametrize("lanes, units, spacing", [(8, 1, 1), (16, 2, 1), (16, 1, 1), (6, 1, 1), (2, 1, 2), (3, 3, 4)])
def test_sweep_classes_never_hold_two_lanes_read_in_one_cycle(lanes, units, spacing):
    classes = sweep_classes(lanes, units, spacing)
    assert sorted(p for c in classes for p in c) == list(range(lanes))
    for gap in range(spacing, 3 * spacing + 1):          # groups issued at the spacing or further apart
        read = {}
        for g in range(2 * lanes):
            for u in range(units):
                for k in range(4):
                    read.setdefault(g * gap + k, set()).add((g * units + u) % lanes)
        for lanes_now in read.values():
            for c in classes:
                assert len(lanes_now & set(c)) <= 1
    if (lanes, units) == (8, 1):
        assert len(classes) == 4          # the OR buses save muxes: lanes p and p + 4 share one


LOGIC_OFFSETS, DSP_OFFSETS = {"z": 0, "r": 0, "ag": 4, "hg": 4}, {"z": 0, "r": 0, "ag": 6, "hg": 3}


@pytest.mark.parametrize("offsets, lanes, units, spacing, slots", [
    (LOGIC_OFFSETS, 8, 1, 1, (0, 1, 4, 5)),      # z, r first; ag, hg as late as the unit takes them
    (DSP_OFFSETS, 8, 1, 1, (0, 1, 6, 3)),
    (LOGIC_OFFSETS, 4, 1, 1, (0, 1, 2, 3)),      # a lane's next neuron 4 cycles on: no room to spread
    (LOGIC_OFFSETS, 8, 2, 1, (0, 1, 2, 3)),      # several units: groups may wait
    (DSP_OFFSETS, 2, 1, 2, (0, 1, 2, 3)),
])
def test_sweep_slots(offsets, lanes, units, spacing, slots):
    assert sweep_slots(offsets, lanes, units, spacing) == slots


@pytest.mark.parametrize("offsets, lanes", [(LOGIC_OFFSETS, 8), (DSP_OFFSETS, 8), (LOGIC_OFFSETS, 16), (DSP_OFFSETS, 5)])
def test_spread_slots_read_no_lane_twice_and_keep_classes_apart(offsets, lanes):
    slots = sweep_slots(offsets, lanes, 1, 1)
    classes = sweep_classes(lanes, 1, 1, slots)
    read = {}
    for g in range(3 * lanes):
        for k in range(4):
            read.setdefault(g + slots[k], []).append(g % lanes)
    for lanes_now in read.values():
        assert len(lanes_now) == len(set(lanes_now))          # one read per lane and cycle
        for c in classes:
            assert len(set(lanes_now) & set(c)) <= 1
