"""exp, log, tanh, sub, div, scale, shift; sum and mean along an axis; reshape, transpose; softmax and log_softmax;
embedding: values and gradients against float64 (and PyTorch where installed), at odd sizes."""
import numpy as np
import pytest

import vkloss
from helpers import f32

try:
    import torch
except ImportError:
    torch = None


def value_and_grads(g, fn, arrays, upstream_seed=0):
    """fn's output and the gradients of sum(output * w) for random w, on the device."""
    tensors = [g.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    w = np.random.default_rng(upstream_seed).standard_normal(out.shape)
    g.backward(g.sum_all(g.mul(out, g.tensor(w))))
    return out.numpy().astype(np.float64), [t.grad.numpy().astype(np.float64) for t in tensors], f32(w)


ELEMENTWISE = {  # name: (vkloss, float64 value, float64 derivative(s) given x (, y)), operand ranges
    "exp": (lambda g, x: g.exp(x), np.exp, lambda x: np.exp(x)),
    "log": (lambda g, x: g.log(x), np.log, lambda x: 1 / x),
    "tanh": (lambda g, x: g.tanh(x), np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "scale": (lambda g, x: g.scale(x, s=-2.5), lambda x: -2.5 * x, lambda x: np.full_like(x, -2.5)),
    "shift": (lambda g, x: g.shift(x, s=0.75), lambda x: x + 0.75, lambda x: np.ones_like(x)),
}


@pytest.mark.parametrize("name", ELEMENTWISE)
@pytest.mark.parametrize("n", [1, 7, 8, 1001])
def test_unary_ops_and_their_gradients(g, rng, name, n):
    fn, value, derivative = ELEMENTWISE[name]
    x = rng.uniform(0.05, 3.0, n) if name == "log" else rng.uniform(-4, 4, n)
    out, (grad,), w = value_and_grads(g, lambda t: fn(g, t), [x])
    np.testing.assert_allclose(out, value(f32(x)), rtol=2e-7 if name != "exp" else 5e-7, atol=1e-7)
    # tanh's 1 - y^2 from its float32 output loses digits where y nears +-1, as PyTorch's does: a few ulps of 1
    np.testing.assert_allclose(grad, w * derivative(f32(x)), rtol=1e-6, atol=2e-6 if name == "tanh" else 1e-7)


@pytest.mark.parametrize("x, want", [(1 - 2 ** -24, -2 ** -24), (1 + 2 ** -23, 2 ** -23), (1e-30, np.log(1e-30))])
def test_log_keeps_float32_precision_near_one(g, x, want):
    assert g.log(g.tensor([x])).item() == pytest.approx(want, rel=1e-6)


def test_tanh_keeps_precision_at_small_values_and_saturates(g):
    x = np.array([1e-7, -1e-6, 0.2499, 0.2501, 20.0, -1e30, np.nan], np.float32)
    got = g.tanh(g.tensor(x)).numpy()
    np.testing.assert_allclose(got[:-1], np.tanh(x[:-1].astype(np.float64)), rtol=4e-7)
    assert np.isnan(got[-1])


@pytest.mark.parametrize("op", ["sub", "div"])
def test_binary_sub_and_div(g, rng, op):
    a, b = rng.uniform(-3, 3, (5, 3)), rng.uniform(0.5, 3, (5, 3))
    out, (ga, gb), w = value_and_grads(g, lambda x, y: getattr(g, op)(x, y), [a, b])
    a64, b64 = f32(a), f32(b)
    if op == "sub":
        want, want_a, want_b = a64 - b64, w, -w
    else:
        want, want_a, want_b = a64 / b64, w / b64, -w * a64 / b64 ** 2
    np.testing.assert_allclose(out, want, rtol=1e-6)
    np.testing.assert_allclose(ga, want_a, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, want_b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (4, 1, 6)])
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("kind", ["sum", "mean"])
def test_sum_and_mean_along_every_axis(g, rng, shape, keepdim, kind):
    x = rng.standard_normal(shape)
    for dim in [None, *range(-len(shape), len(shape))]:
        out, (grad,), w = value_and_grads(g, lambda t: getattr(g, kind)(t, dim=dim, keepdim=keepdim), [x])
        reduce = getattr(np, kind)
        if dim is None:
            want = np.array([reduce(f32(x))])
            want_grad = np.broadcast_to(w, x.shape) / (x.size if kind == "mean" else 1)
        else:
            want = reduce(f32(x), axis=dim, keepdims=keepdim)
            want = want if want.shape else want.reshape(1)
            want_grad = np.broadcast_to(np.expand_dims(w.reshape(np.sum(x, axis=dim, keepdims=True).shape), 0)
                                        [0], x.shape) / (x.shape[dim] if kind == "mean" else 1)
        np.testing.assert_allclose(out.reshape(want.shape), want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7)


def test_a_sum_along_a_long_axis_is_sliced_and_compensated(g):
    x = np.full((2, 40_000), 0.1, np.float32)  # three slices of 16,384; a plain float32 running sum drifts
    got = g.sum(g.tensor(x), dim=1).numpy()
    np.testing.assert_allclose(got, [x[0].astype(np.float64).sum()] * 2, rtol=1e-7)


def test_reshape_is_a_view_and_its_gradient_comes_back(g, rng):
    x = rng.standard_normal((4, 6))
    t = g.tensor(x, requires_grad=True)
    before = g.stats["dispatches"]
    r = g.reshape(t, shape=(3, -1, 2))
    assert r.shape == (3, 4, 2) and r.buffer is t.buffer
    g.flush()
    assert g.stats["dispatches"] == before  # no kernel, no copy
    w = rng.standard_normal((3, 4, 2))
    g.backward(g.sum_all(g.mul(r, g.tensor(w))))
    np.testing.assert_allclose(t.grad.numpy(), f32(w).reshape(4, 6), rtol=1e-7)
    with pytest.raises(ValueError, match=r"cannot take shape \(5, 5\)"):
        g.reshape(t, shape=(5, 5))


@pytest.mark.parametrize("shape, dims", [((3, 5), (0, 1)), ((2, 3, 4), (0, 2)), ((2, 3, 4, 5), (1, 3)),
                                         ((2, 3, 4), (-1, -2)), ((3, 4), (1, 1))])
def test_transpose_and_its_gradient(g, rng, shape, dims):
    x = rng.standard_normal(shape)
    out, (grad,), w = value_and_grads(g, lambda t: g.transpose(t, dim0=dims[0], dim1=dims[1]), [x])
    np.testing.assert_array_equal(out, np.swapaxes(f32(x), *dims))
    np.testing.assert_array_equal(grad, np.swapaxes(w, *dims))


def softmax64(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("shape, dim", [((4, 7), -1), ((3, 5, 6), 1), ((2, 1000), -1), ((5, 3), 0),
                                        ((2, 70_001), -1)])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_and_log_softmax_with_gradients(g, rng, shape, dim, log):
    x = rng.standard_normal(shape) * 3
    out, (grad,), w = value_and_grads(g, lambda t: (g.log_softmax if log else g.softmax)(t, dim=dim), [x])
    s = softmax64(f32(x), dim)
    if log:
        want, want_grad = np.log(s), w - s * w.sum(axis=dim, keepdims=True)
    else:
        want, want_grad = s, s * (w - (w * s).sum(axis=dim, keepdims=True))
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=2e-7)
    np.testing.assert_allclose(grad, want_grad, rtol=2e-5, atol=2e-7)


def test_softmax_of_masked_and_nan_rows_as_pytorch(g):
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf], [np.nan, 1.0, 2.0]])
    got = g.softmax(g.tensor(x)).numpy()
    np.testing.assert_allclose(got[0], [1 / (1 + np.e), 0.0, np.e / (1 + np.e)], rtol=1e-6)
    assert np.isnan(got[1:]).all()
    assert g.log_softmax(g.tensor(x)).numpy()[0, 1] == -np.inf


@pytest.mark.parametrize("indices_shape", [(5,), (3, 4)])
def test_embedding_lookups_and_their_deterministic_gradient(g, rng, indices_shape):
    weight = rng.standard_normal((11, 6))
    indices = rng.integers(0, 11, indices_shape)
    indices.flat[0] = indices.flat[-1]  # a row looked up twice: its gradient is the sum
    results = []
    for _ in range(2):
        w = g.tensor(weight, requires_grad=True)
        out = g.embedding(w, indices)
        up = np.random.default_rng(1).standard_normal(out.shape)
        g.backward(g.sum_all(g.mul(out, g.tensor(up))))
        results.append(w.grad.numpy())
    np.testing.assert_array_equal(out.numpy(), f32(weight)[indices])
    want = np.zeros_like(weight)
    np.add.at(want, indices.reshape(-1), f32(up).reshape(-1, 6))
    np.testing.assert_allclose(results[0], want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(results[0], results[1])  # bit for bit, run to run


def test_embedding_indices_out_of_range_raise_at_the_next_read(g):
    w = g.tensor(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"embedding: 2 indices \(shape \(3,\)\) are outside \[0, 4\)"):
        g.embedding(w, np.array([0, 4, -1])).numpy()
    assert g.embedding(w, np.array([3])).numpy().tolist() == [[1.0, 1.0, 1.0]]


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
def test_a_small_model_of_these_ops_matches_pytorch(g, rng):
    weight, idx, proj = rng.standard_normal((9, 4)), rng.integers(0, 9, (2, 5)), rng.standard_normal((4, 3))
    tw, tp = g.tensor(weight, requires_grad=True), g.tensor(proj, requires_grad=True)
    emb = g.embedding(tw, idx)  # [2, 5, 4]
    h = g.tanh(g.reshape(emb, shape=(10, 4)))
    scores = g.log_softmax(g.matmul(h, tp), dim=-1)
    loss = g.mean(g.sum(g.transpose(g.reshape(scores, shape=(2, 5, 3)), dim0=0, dim1=1), dim=1))
    loss.backward()
    W, P = (torch.tensor(f32(a), requires_grad=True) for a in (weight, proj))
    e = torch.nn.functional.embedding(torch.tensor(idx), W)
    s = torch.log_softmax(torch.tanh(e.reshape(10, 4)) @ P, dim=-1)
    ref = s.reshape(2, 5, 3).transpose(0, 1).sum(dim=1).mean()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    np.testing.assert_allclose(tw.grad.numpy(), W.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tp.grad.numpy(), P.grad.numpy(), rtol=1e-5, atol=1e-6)
