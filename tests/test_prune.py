"""Magnitude pruning: sparsity reached, lane balance, schedule, masks held while training."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egru_accel.quantize.egru import EGRUNet
from egru_accel.quantize.lanes import lane_columns
from egru_accel.quantize.prune import (WINDOW, PruningSchedule, apply_masks, block_mask, check_structure,
                                       magnitude_mask, window_mask)


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


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 6), H=st.integers(1, 20), lanes=st.integers(1, 8),
       sparsity=st.floats(0.0, 0.95))
def test_block_mask_keeps_whole_blocks_with_the_largest_norm(seed, rows, H, lanes, sparsity):
    """Lane-block: a block is one row, one gate and the neurons b*P .. b*P+P-1; kept whole or not at all."""
    w = torch.randn(rows, 3 * H, generator=torch.Generator().manual_seed(seed))
    mask = block_mask(w, sparsity, lanes=lanes).numpy().astype(bool)
    nblocks = -(-H // lanes)
    kept, dropped = [], []
    for j in range(rows):
        for k in range(3):
            for b in range(nblocks):
                cols = [k * H + n for n in range(b * lanes, min(H, (b + 1) * lanes))]
                block = mask[j, cols]
                assert block.all() or not block.any(), (j, k, b)
                (kept if block.all() else dropped).append(float(w[j, cols].abs().sum()))
    assert len(kept) == int(np.floor((1 - sparsity) * rows * 3 * nblocks + 1e-9))
    if kept and dropped:
        assert min(kept) >= max(dropped)


def test_lane_block_masks_on_a_network():
    net = EGRUNet(4, [16], 10, seed=0)
    apply_masks(net, 0.75, lanes=8, readout_sparsity=0.5, structure="lane-block")
    layer = net.layers[0]
    for w in (layer.kernel, layer.recurrent_kernel):
        blocks = (w != 0).reshape(w.shape[0], 3, 2, 8)
        assert torch.all(blocks.all(dim=3) == blocks.any(dim=3))   # whole blocks
        assert float((w == 0).float().mean()) == 0.75
    # The readout: blocks of 8 outputs (outputs 8 and 9 form the second, partial block).
    ro = (net.masked_readout() != 0)
    assert torch.all(ro[:, :8].all(dim=1) == ro[:, :8].any(dim=1))
    assert torch.all(ro[:, 8:].all(dim=1) == ro[:, 8:].any(dim=1))


def test_sparsity_structure_is_checked():
    with pytest.raises(ValueError, match=r"^sparsity structure must be one of unstructured, lane-block, lane-window, not 'blocks'$"):
        check_structure("blocks", 8)
    with pytest.raises(ValueError, match=r"^lane-block sparsity needs a lane count$"):
        PruningSchedule(0.5, begin=0, end=10, structure="lane-block")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 5), H=st.integers(1, 70), lanes=st.integers(1, 8),
       sparsity=st.floats(0.0, 0.95))
def test_window_mask_is_balanced_in_every_window(seed, rows, H, lanes, sparsity):
    """Lane-window: in every (row, gate, window), every lane keeps the same number of weights
    (lanes that own fewer neurons in a partial window can only lower that number)."""
    w = torch.randn(rows, 3 * H, generator=torch.Generator().manual_seed(seed))
    mask = window_mask(w, sparsity, lanes=lanes).numpy().astype(bool)
    span = WINDOW * lanes
    for j in range(rows):
        for k in range(3):
            for b in range(-(-H // span)):
                owned = [range(b * span + p, min(H, (b + 1) * span), lanes) for p in range(lanes)]
                counts = [sum(mask[j, k * H + n] for n in o) for o in owned]
                full = {c for c, o in zip(counts, owned) if len(o) == WINDOW}
                assert len(full) <= 1 and all(c <= max(counts) for c in counts), (j, k, b, counts)
                if full:
                    assert max(counts) == full.pop(), (j, k, b, counts)
    assert mask.sum() <= int(np.floor((1 - sparsity) * w.numel())) + lanes
