"""g.linear: nn.Linear's layout, its bias and relu in the product's epilogue, its gradients in one dispatch; at odd
sizes, on both matmul kernels, at every access width and across k slices, against float64 (and PyTorch where
installed)."""
import numpy as np
import pytest

import vkloss
from vkloss.ops import matmul
from helpers import f32

try:
    import torch
except ImportError:
    torch = None


def linear64(x, weight, bias, activation, upstream):
    """Output and gradients of sum(upstream * activation(x @ weight.T + bias)) in float64."""
    pre = x @ weight.T + (0 if bias is None else bias)
    out = np.maximum(pre, 0) if activation == "relu" else pre
    grad = upstream * (out > 0) if activation == "relu" else upstream
    return out, grad @ weight, grad.T @ x, grad.sum(0)


def run(g, rng, batch, features, outputs, activation, with_bias):
    x, weight = rng.standard_normal((batch, features)), rng.standard_normal((outputs, features))
    bias, upstream = rng.standard_normal(outputs), rng.standard_normal((batch, outputs))
    tx, tw = g.tensor(x, requires_grad=True), g.tensor(weight, requires_grad=True)
    tb = g.tensor(bias, requires_grad=True) if with_bias else None
    out = g.linear(tx, tw, tb, activation=activation)
    g.backward(g.sum_all(g.mul(out, g.tensor(upstream))))
    want = linear64(f32(x), f32(weight), f32(bias) if with_bias else None, activation, f32(upstream))
    scale = np.sqrt(features) * 2
    np.testing.assert_allclose(out.numpy(), want[0], rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(tx.grad.numpy(), want[1], rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(tw.grad.numpy(), want[2], rtol=1e-5, atol=1e-5 * np.sqrt(batch) * 2)
    if with_bias:
        np.testing.assert_allclose(tb.grad.numpy(), want[3], rtol=1e-5, atol=1e-5 * np.sqrt(batch) * 2)
    return out


@pytest.fixture(params=[False, True], ids=["register blocks", "tiles"])
def tiles(request, monkeypatch):
    monkeypatch.setattr(matmul, "use_tiles", lambda device: request.param)
    return request.param


@pytest.mark.parametrize("batch, features, outputs", [(1, 1, 1), (5, 7, 3), (64, 64, 10), (65, 17, 63),
                                                      (130, 33, 257)])
@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no bias"])
def test_output_and_gradients(g, rng, tiles, batch, features, outputs, activation, with_bias):
    run(g, rng, batch, features, outputs, activation, with_bias)


@pytest.mark.parametrize("batch, features, outputs", [(16, 24, 32), (12, 20, 28), (9, 16, 8), (8, 13, 24)])
def test_every_access_width(forced, rng, batch, features, outputs):
    run(forced, rng, batch, features, outputs, "relu", True)


def test_k_in_slices_keeps_the_epilogue_for_the_last(g, rng, tiles, monkeypatch):
    monkeypatch.setattr(matmul, "K_SLICE", 40)  # features and batch in three slices: bias and relu once, at the end
    run(g, rng, 100, 100, 30, "relu", True)


@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, True),
                                   (True, False, True)], ids=["all", "x only", "weight and bias", "x and bias"])
def test_forward_is_one_dispatch_and_backward_one(rng, needs):
    """Whatever needs a gradient: the input's, weight's and bias's come from one dispatch (matmul.comp's PAIR where
    the input's and the weight's or bias's both do)."""
    x, weight, bias, upstream = (rng.standard_normal(shape) for shape in ((8, 5), (4, 5), (4,), (8, 4)))
    with vkloss.Graph() as g:
        tx, tw, tb = (g.tensor(a, requires_grad=need) for a, need in zip((x, weight, bias), needs))
        tu = g.tensor(upstream)
        g.flush()
        before = g.stats["dispatches"]
        out = g.linear(tx, tw, tb, activation="relu")
        g.flush()
        assert g.stats["dispatches"] - before == 1
        before = g.stats["dispatches"]
        g.backward(g.sum_all(g.mul(out, tu)))  # mul, sum_all, its expand and mul's backward: four of them
        g.flush()
        assert g.stats["dispatches"] - before == 4 + 1
        want = linear64(f32(x), f32(weight), f32(bias), "relu", f32(upstream))[1:]
        for tensor, need, value in zip((tx, tw, tb), needs, want):
            if need:
                np.testing.assert_allclose(tensor.grad.numpy(), value, rtol=1e-5, atol=1e-5)
            else:
                assert tensor.grad is None


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
def test_matches_torch_linear_and_relu(g, rng):
    x, weight, bias = rng.standard_normal((9, 6)), rng.standard_normal((5, 6)), rng.standard_normal(5)
    tx, tw, tb = (g.tensor(a, requires_grad=True) for a in (x, weight, bias))
    g.backward(g.mean_all(g.linear(tx, tw, tb, activation="relu")))
    X, W, B = (torch.tensor(f32(a), requires_grad=True) for a in (x, weight, bias))
    torch.relu(torch.nn.functional.linear(X, W, B)).mean().backward()
    for mine, theirs in ((tx, X), (tw, W), (tb, B)):
        np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_nan_passes_through_relu_and_a_masked_gradient_is_zero_as_in_pytorch(g):
    x = g.tensor(np.array([[np.nan, 1.0], [-1.0, 1.0]]), requires_grad=True)
    w, b = g.tensor(np.eye(2), requires_grad=True), g.tensor(np.zeros(2), requires_grad=True)
    out = g.linear(x, w, b, activation="relu")
    assert np.isnan(out.numpy()[0, 0]) and out.numpy()[1, 0] == 0.0
    g.backward(g.sum_all(g.mul(out, g.tensor(np.array([[1.0, 1.0], [np.nan, 1.0]])))))  # NaN where relu cut: 0
    np.testing.assert_array_equal(x.grad.numpy(), [[1.0, 1.0], [0.0, 1.0]])
    np.testing.assert_array_equal(b.grad.numpy(), [1.0, 2.0])  # the NaN output's gradient passes, as PyTorch's


@pytest.mark.parametrize("x_shape, w_shape, b_shape, says", [
    ((3, 4), (5, 3), (5,), r"weight \[out_features, in_features\]"),
    ((3,), (5, 3), (5,), r"x \[batch, in_features\]"),
    ((3, 4), (5, 4), (4,), r"bias must have shape \(5,\)"),
])
def test_bad_shapes_name_the_shapes(g, x_shape, w_shape, b_shape, says):
    with pytest.raises(ValueError, match=says):
        g.linear(g.tensor(np.ones(x_shape)), g.tensor(np.ones(w_shape)), g.tensor(np.ones(b_shape)))
    assert g.linear(g.tensor(np.ones((2, 3))), g.tensor(np.ones((4, 3)))).numpy().tolist() == [[3.0] * 4] * 2


def test_an_unknown_activation_is_refused(g):
    with pytest.raises(ValueError, match="activation must be one of 'none', 'relu'"):
        g.linear(g.tensor(np.ones((2, 3))), g.tensor(np.ones((4, 3))), activation="gelu")
