"""Magnitude pruning: sparsity reached, lane balance, schedule, masks held while training."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egru_accel.quantize.egru import EGRUNet
from egru_accel.quantize.lanes import lane_columns
from egru_accel.quantize.prune import PruningSchedule, apply_masks, magnitude_mask


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 1 << 30), st.integers(1, 12), st.integers(1, 20), st.integers(1, 8),
       st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99]))
def test_balanced_mask(seed, rows, H, lanes, sparsity):
    lanes = min(lanes, H)
    w = torch.randn(rows, 3 * H, generator=torch.Generator().manual_seed(seed))
    mask = magnitude_mask(w, sparsity, lanes=lanes)
    kept = int(mask.sum())
    assert kept <= (1 - sparsity) * w.numel() + 1e-9, "never denser than asked"
    # Each row keeps the same count in every lane's columns.
    for j in range(rows):
        counts = {int(mask[j, lane_columns(H, lanes, p)].sum()) for p in range(lanes)}
        assert len(counts) == 1, (j, counts)
    # Nothing lost: no more than one group of `lanes` weights short of the target.
    if H % lanes == 0:
        assert kept > (1 - sparsity) * w.numel() - lanes


def test_unbalanced_mask_keeps_largest():
    w = torch.tensor([[0.1, -5.0, 0.2, 3.0, -0.05, 0.0]])
    mask = magnitude_mask(w, 0.5)
    assert mask.tolist() == [[0, 1, 1, 1, 0, 0]]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match=r"weight sparsity must be in \[0, 1\)"):
        magnitude_mask(torch.ones(2, 3), bad)


def test_schedule_is_cubic_and_held():
    s = PruningSchedule(0.9, begin=10, end=20, every=2)
    assert s.sparsity_at(0) == 0.0 and s.sparsity_at(10) == 0.0
    assert s.sparsity_at(15) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    assert s.sparsity_at(20) == pytest.approx(0.9) and s.sparsity_at(99) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="begin < end"):
        PruningSchedule(0.5, begin=5, end=5)


def test_masks_hold_during_training():
    torch.manual_seed(0)
    net = EGRUNet(4, [8], 3, seed=0)
    apply_masks(net, 0.8, lanes=2)
    zero_before = [(l.kernel == 0).clone() for l in net.layers]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(5):
        loss = net(torch.randn(5, 6, 4)).logits.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for layer, z in zip(net.layers, zero_before):
        assert torch.all(layer.kernel[z] == 0)
        assert float((layer.kernel == 0).float().mean()) >= 0.8


def test_balanced_readout_mask():
    """10 outputs on 8 lanes: at 20% sparsity every row keeps exactly one weight per lane."""
    w = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    mask = magnitude_mask(w, 0.2, lanes=8, gates=1)
    for j in range(16):
        assert [int(mask[j, lane_columns(10, 8, p, 1)].sum()) for p in range(8)] == [1] * 8
