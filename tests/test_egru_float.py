"""The float EGRU against an independent step-by-step evaluation of the EGRU equations."""

import numpy as np
import pytest
import torch

from egru_accel.quantize.egru import (EGRULayer, EGRUNet, StateDictError, layer_from_evnn_state_dict, run_egru)


def reference_egru(x, W, R, bx, bh, thr):
    """The equations of the issue, one neuron at a time, in float64."""
    T, N, I = x.shape
    H = R.shape[0]
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))
    ys = np.zeros((T, N, H))
    cs = np.zeros((T, N, H))
    os_ = np.zeros((T, N, H))
    for b in range(N):
        y = np.zeros(H)
        c = np.zeros(H)
        for t in range(T):
            a = x[t, b] @ W + bx
            h = y @ R + bh
            y_new, c_new, o_new = np.zeros(H), np.zeros(H), np.zeros(H)
            for n in range(H):
                z = sig(a[n] + h[n])
                r = sig(a[H + n] + h[H + n])
                g = np.tanh(a[2 * H + n] + r * h[2 * H + n])
                ct = z * c[n] + (1 - z) * g
                o = 1.0 if ct > thr[n] else 0.0
                y_new[n] = o * ct
                c_new[n] = ct - o * thr[n]
                o_new[n] = o
            y, c = y_new, c_new
            ys[t, b], cs[t, b], os_[t, b] = y, c, o_new
    return ys, cs, os_


def test_float_layer_matches_equations():
    gen = torch.Generator().manual_seed(3)
    layer = EGRULayer(5, 7, generator=gen).double()
    with torch.no_grad():
        layer.bias.normal_(0, 0.5, generator=gen)
        layer.recurrent_bias.normal_(0, 0.5, generator=gen)
        layer.thr.uniform_(0, 0.4, generator=gen)
    x = torch.randn(9, 3, 5, generator=gen, dtype=torch.float64)
    y, c, o = layer(x)
    p = {k: v.detach().numpy() for k, v in layer.named_parameters()}
    ry, rc, ro = reference_egru(x.numpy(), p["kernel"], p["recurrent_kernel"], p["bias"],
                                p["recurrent_bias"], p["thr"])
    assert np.array_equal(o.detach().numpy(), ro)
    assert ro.sum() > 0 and (1 - ro).sum() > 0, "the fixture should have both events and silence"
    np.testing.assert_allclose(y.detach().numpy(), ry, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c.detach().numpy(), rc, rtol=0, atol=1e-12)


def test_event_carries_candidate_value_and_resets_by_threshold():
    layer = EGRULayer(1, 1, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        for p in (layer.kernel, layer.recurrent_kernel, layer.bias, layer.recurrent_bias):
            p.zero_()
        layer.bias[0] = -30.0  # z ~ 0: the candidate takes g
        layer.bias[2] = 2.0     # g = tanh(2)
        layer.thr.fill_(0.25)
    y, c, o = layer(torch.zeros(2, 1, 1, dtype=torch.float64))
    ct = (1 - 1 / (1 + np.exp(30.0))) * np.tanh(2.0)
    assert o[0, 0, 0] == 1
    assert y[0, 0, 0].item() == pytest.approx(ct, abs=1e-12)
    assert c[0, 0, 0].item() == pytest.approx(ct - 0.25, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_candidate_equal_to_threshold_does_not_fire(dtype):
    layer = EGRULayer(1, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.no_grad():
        for p in (layer.kernel, layer.recurrent_kernel, layer.bias, layer.recurrent_bias):
            p.zero_()
        layer.bias[6:9] = torch.tensor([0.3, 0.5, 0.7], dtype=dtype)
        # z = sigmoid(0) = 0.5 exactly and c_0 = 0, so c~ = 0.5 * tanh(b_g) exactly.
        layer.thr.copy_(0.5 * torch.tanh(layer.bias[6:9]))
        layer.thr[2] -= 1e-3  # this one is below c~ and must fire
    y, c, o = layer(torch.zeros(1, 1, 1, dtype=dtype))
    assert o[0, 0].tolist() == [0.0, 0.0, 1.0]
    assert y[0, 0, 0] == 0 and y[0, 0, 1] == 0


def test_threshold_used_clamped_to_unit_interval_like_evnn():
    layer = EGRULayer(2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.thr.copy_(torch.tensor([-0.5, 1.5]))
    assert layer.threshold().tolist() == [0.0, 1.0]


def test_pseudo_derivative():
    layer = EGRULayer(1, 1, dampening_factor=0.7, pseudo_derivative_support=2.0,
                      generator=torch.Generator().manual_seed(0)).double()
    from egru_accel.quantize.egru import SpikeFunction
    v = torch.tensor([-1.0, -0.25, 0.0, 0.25, 1.0], dtype=torch.float64, requires_grad=True)
    SpikeFunction.apply(v, 0.7, 2.0).sum().backward()
    expected = 0.7 * np.maximum(0.0, 1 - 2.0 * np.abs(v.detach().numpy()))
    np.testing.assert_allclose(v.grad.numpy(), expected)


def evnn_state_dict(I=4, H=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "_max_norm": torch.tensor([-1.0]),
        "kernel": torch.randn(I, 3 * H, generator=g),
        "recurrent_kernel": torch.randn(H, 3 * H, generator=g),
        "bias": torch.randn(3 * H, generator=g),
        "recurrent_bias": torch.randn(3 * H, generator=g),
        "dampening_factor": torch.tensor([0.7]),
        "pseudo_derivative_support": torch.tensor([1.0]),
        "thr": torch.rand(H, generator=g),
    }


def test_load_evnn_state_dict_unchanged_and_run():
    sd = evnn_state_dict()
    layer = layer_from_evnn_state_dict(sd)
    assert (layer.input_size, layer.hidden_size) == (4, 6)
    for k in ("kernel", "recurrent_kernel", "bias", "recurrent_bias", "thr"):
        assert torch.equal(getattr(layer, k).detach(), sd[k])
    # Our own state_dict loads back into EvNN-named keys (masks are not persisted).
    assert set(layer.state_dict()) == {"kernel", "recurrent_kernel", "bias", "recurrent_bias", "thr",
                                       "dampening_factor", "pseudo_derivative_support"}
    x = torch.randn(5, 2, 4, generator=torch.Generator().manual_seed(1))
    y = run_egru(sd, x)
    assert y.shape == (5, 2, 6)
    p = {k: v.double().numpy() for k, v in sd.items()}
    ry, _, _ = reference_egru(x.double().numpy(), p["kernel"], p["recurrent_kernel"], p["bias"],
                              p["recurrent_bias"], np.clip(p["thr"], 0, 1))
    np.testing.assert_allclose(y.numpy(), ry, atol=1e-5)


@pytest.mark.parametrize("mutate, message", [
    (lambda sd: sd.pop("thr"), r"missing keys \['thr'\]"),
    (lambda sd: sd.update(extra=torch.zeros(1)), r"unknown keys \['extra'\]"),
    (lambda sd: sd.update(recurrent_kernel=torch.zeros(6, 17)), r"'recurrent_kernel' must have shape \[6, 18\]"),
    (lambda sd: sd.update(kernel=torch.zeros(4, 17)), r"'kernel' must be \[I, 3H\]"),
    (lambda sd: sd["bias"].__setitem__(3, float("nan")), r"'bias' holds NaN or Inf"),
    (lambda sd: sd["kernel"].__setitem__((0, 0), float("inf")), r"'kernel' holds NaN or Inf"),
    (lambda sd: sd.update(thr=[0.1] * 6), r"'thr' is a list, not a tensor"),
])
def test_bad_evnn_state_dicts(mutate, message):
    sd = evnn_state_dict()
    mutate(sd)
    with pytest.raises(StateDictError, match=message):
        layer_from_evnn_state_dict(sd)


def test_constructor_errors():
    with pytest.raises(TypeError, match="hidden_size must be an integer"):
        EGRULayer(3, 2.5)
    with pytest.raises(ValueError, match="input_size must be at least 1"):
        EGRULayer(0, 2)
    with pytest.raises(ValueError, match="thr_mean must be in"):
        EGRULayer(2, 2, thr_mean=1.0)
    with pytest.raises(ValueError, match="hidden_sizes must name at least one layer"):
        EGRUNet(2, [], 3)
    net = EGRUNet(2, [3], 4, seed=0)
    with pytest.raises(ValueError, match=r"expected input of shape \[T, N, 2\]"):
        net(torch.zeros(3, 2, 5))
