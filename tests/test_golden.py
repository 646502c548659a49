"""The integer golden model: agreement with the quantization-aware torch forward, bounds, MACs."""

import numpy as np
import pytest
import torch

from egru_accel.quantize import formats as F
from egru_accel.quantize import golden
from egru_accel.quantize.egru import EGRUNet
from egru_accel.quantize.formats import NumberFormats
from egru_accel.quantize.model import QuantModel
from egru_accel.quantize.prune import apply_masks
from egru_accel.quantize.qat import export, quant_forward_ints


def random_net(rng, *, inputs, hidden, outputs, sparsity=0.0, lanes=None):
    net = EGRUNet(inputs, hidden, outputs, seed=int(rng.integers(1 << 30))).double()
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    with torch.no_grad():
        for layer in net.layers:
            layer.kernel.mul_(float(rng.uniform(0.3, 3.0)))
            layer.recurrent_kernel.mul_(float(rng.uniform(0.3, 3.0)))
            layer.bias.normal_(0, float(rng.uniform(0, 1.5)), generator=gen)
            layer.recurrent_bias.normal_(0, float(rng.uniform(0, 1.5)), generator=gen)
            layer.thr.uniform_(0, float(rng.uniform(0.05, 1.0)), generator=gen)
        net.readout_bias.normal_(0, 0.5, generator=gen)
    if sparsity:
        apply_masks(net, sparsity, lanes=lanes)
    return net


def random_formats(rng, fine_tables=False):
    if fine_tables:
        # Tables indexed almost at accumulator resolution: every rounding LSB moves the index.
        return NumberFormats(sigmoid_lut_bits=14, sigmoid_lut_frac=11, tanh_lut_bits=14, tanh_lut_frac=12,
                             tanh_frac=12, sigmoid_frac=12, state_bits=18, state_frac=14)
    return NumberFormats(
        input_frac=int(rng.integers(3, 8)), state_bits=int(rng.integers(12, 19)),
        state_frac=int(rng.integers(9, 12)), sigmoid_frac=int(rng.integers(6, 10)),
        tanh_frac=int(rng.integers(6, 10)), sigmoid_lut_bits=int(rng.integers(5, 10)),
        sigmoid_lut_frac=int(rng.integers(2, 6)), tanh_lut_bits=int(rng.integers(5, 10)),
        tanh_lut_frac=int(rng.integers(3, 7)))


@pytest.mark.parametrize("seed", range(40))
def test_quant_torch_equals_golden(seed):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(1, 4))
    hidden = [int(rng.integers(1, 24)) for _ in range(L)]
    inputs, outputs = int(rng.integers(1, 12)), int(rng.integers(1, 6))
    sparsity = float(rng.choice([0.0, 0.5, 0.9]))
    net = random_net(rng, inputs=inputs, hidden=hidden, outputs=outputs, sparsity=sparsity)
    fmt = [NumberFormats(), random_formats(rng), random_formats(rng, fine_tables=True)][seed % 3]
    model = export(net, fmt)
    T, N = int(rng.integers(1, 12)), int(rng.integers(1, 5))
    x = rng.normal(0, float(rng.uniform(0.2, 3.0)), size=(T, N, inputs))
    x[rng.random(x.shape) < 0.3] = 0.0
    trace = golden.run(model, golden.quantize_input(model, x))
    ref = quant_forward_ints(net, fmt, torch.as_tensor(x))
    assert np.array_equal(trace.logits, ref["logits"])
    for l in range(L):
        assert np.array_equal(trace.y[l], ref["y"][l]), f"layer {l} outputs differ"
        assert np.array_equal(trace.c[l], ref["c"][l]), f"layer {l} states differ"
        assert np.array_equal(trace.events[l], ref["events"][l]), f"layer {l} events differ"
    # The accumulators never leave their worst-case bounds (so the widths derived
    # from them never overflow).
    for l in range(L):
        b = model.layer_bounds(l)
        for k, v in trace.acc_peak[l].items():
            assert v <= getattr(b, k), (l, k, v, getattr(b, k))


def test_quant_forward_is_on_grid_and_matches_after_save_load(tmp_path):
    rng = np.random.default_rng(7)
    net = random_net(rng, inputs=6, hidden=[10, 9], outputs=3, sparsity=0.5)
    model = export(net, NumberFormats())
    model.save(tmp_path / "m.npz")
    again = QuantModel.load(tmp_path / "m.npz")
    assert again == model
    x = golden.quantize_input(model, rng.normal(size=(7, 4, 6)))
    a, b = golden.run(model, x), golden.run(again, x)
    assert np.array_equal(a.logits, b.logits)


def test_bounds_hold_for_adversarial_inputs():
    rng = np.random.default_rng(11)
    net = random_net(rng, inputs=5, hidden=[8], outputs=2)
    model = export(net, NumberFormats())
    fmt = model.formats
    b = model.layer_bounds(0)
    for sign in (1, -1):
        # Inputs at the extremes, aligned with the weights' signs, push the input parts to their limits.
        W = model.layers[0].W
        x = np.where(W[:, 0] * sign >= 0, fmt.input_max, fmt.input_min)
        trace = golden.run(model, np.tile(x, (6, 1, 1)).astype(np.int64))
        for k, v in trace.acc_peak[0].items():
            assert v <= getattr(b, k)


def brute_force_macs(model, x):
    trace = golden.run(model, x)
    T, N, _ = x.shape
    out = np.zeros((T, N, len(model.layers) + 1), dtype=np.int64)
    src = x
    for l, layer in enumerate(model.layers):
        for t in range(T):
            for n in range(N):
                prev = trace.y[l][t - 1, n] if t else np.zeros(layer.hidden_size, dtype=np.int64)
                for j in range(layer.input_size):
                    if src[t, n, j]:
                        out[t, n, l] += sum(1 for v in layer.W[j] if v)
                for j in range(layer.hidden_size):
                    if prev[j]:
                        out[t, n, l] += sum(1 for v in layer.R[j] if v)
        src = trace.y[l]
    for t in range(T):
        for n in range(N):
            for j in range(model.hidden_sizes[-1]):
                if src[t, n, j]:
                    out[t, n, -1] += sum(1 for v in model.readout.W[j] if v)
    return trace, out


def test_effective_mac_counts():
    rng = np.random.default_rng(5)
    net = random_net(rng, inputs=4, hidden=[6, 5], outputs=3, sparsity=0.6)
    model = export(net, NumberFormats())
    x = golden.quantize_input(model, rng.normal(size=(5, 3, 4)) * (rng.random((5, 3, 4)) < 0.5))
    trace, expected = brute_force_macs(model, x)
    assert np.array_equal(trace.effective_macs, expected)
    assert expected.sum() > 0
    assert trace.dense_macs.tolist() == [3 * 6 * (4 + 6), 3 * 5 * (6 + 5), 5 * 3]


def test_golden_input_errors():
    rng = np.random.default_rng(0)
    model = export(random_net(rng, inputs=3, hidden=[4], outputs=2), NumberFormats())
    with pytest.raises(TypeError, match="integer inputs"):
        golden.run(model, np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match=r"shape \[T, N, 3\]"):
        golden.run(model, np.zeros((2, 1, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="inputs must lie in"):
        golden.run(model, np.full((2, 1, 3), 1000, dtype=np.int64))
    with pytest.raises(ValueError, match="NaN or Inf"):
        golden.quantize_input(model, np.full((1, 1, 3), np.nan))


def test_input_quantization_saturates_and_rounds_half_up():
    rng = np.random.default_rng(0)
    model = export(random_net(rng, inputs=1, hidden=[2], outputs=1), NumberFormats(input_frac=4))
    x = np.array([0.5 / 16, -0.5 / 16, 100.0, -100.0, 1.0]).reshape(5, 1, 1)
    assert golden.quantize_input(model, x).ravel().tolist() == [1, 0, 127, -128, 16]
