"""Each primitive's forward values and gradients against float64 numpy, and a finite-difference check of each."""

import numpy as np
import pytest

from helpers import device_gradients, f32, sigmoid64

SHAPES = [(1,), (7,), (3, 5), (2, 3, 4), (513,)]

# name -> (forward, derivative), both float64
UNARY = {
    "neg": (lambda x: -x, lambda x: -np.ones_like(x)),
    "abs": (np.abs, np.sign),
    "sigmoid": (sigmoid64, lambda x: sigmoid64(x) * (1 - sigmoid64(x))),
}
BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: (np.ones_like(a), np.ones_like(b))),
    "mul": (lambda a, b: a * b, lambda a, b: (b, a)),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", UNARY)
def test_unary_forward_matches_float64(g, rng, name, shape):
    x = f32(rng.standard_normal(shape) * 3)
    y = getattr(g, name)(g.tensor(x))
    assert y.shape == shape
    np.testing.assert_allclose(y.numpy(), UNARY[name][0](x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", UNARY)
def test_unary_gradient_matches_float64(g, rng, name, shape):
    x, w = f32(rng.standard_normal(shape) * 3), f32(rng.standard_normal(shape))
    (grad,) = device_gradients(g, lambda t: g.mean_all(g.mul(getattr(g, name)(t), g.tensor(w))), [x])
    # sigmoid's rule uses the saved float32 output y, as PyTorch does: 1 - y is then off by up to an ulp of 1
    ulp_of_one = float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(grad, UNARY[name][1](x) * w / x.size, rtol=1e-5,
                               atol=2 * ulp_of_one * np.abs(w).max() / x.size)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", BINARY)
def test_binary_forward_and_gradients_match_float64(g, rng, name, shape):
    a, b, w = (f32(rng.standard_normal(shape)) for _ in range(3))
    out = getattr(g, name)(g.tensor(a), g.tensor(b))
    np.testing.assert_allclose(out.numpy(), BINARY[name][0](a, b), rtol=1e-6, atol=1e-7)
    grads = device_gradients(g, lambda ta, tb: g.mean_all(g.mul(getattr(g, name)(ta, tb), g.tensor(w))), [a, b])
    for got, want in zip(grads, BINARY[name][1](a, b)):
        np.testing.assert_allclose(got, want * w / a.size, rtol=1e-5, atol=1e-9)


def test_sigmoid_saturates_without_nan(g):
    x = np.array([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4], np.float32)
    y = g.sigmoid(g.tensor(x)).numpy()
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(y, sigmoid64(f32(x)), rtol=1e-6, atol=1e-30)
    assert y[0] == 0.0 and y[-1] == 1.0


@pytest.mark.parametrize("shape", SHAPES)
def test_mean_all_and_sum_all_match_float64(g, rng, shape):
    x = f32(rng.standard_normal(shape))
    t = g.tensor(x, requires_grad=True)
    mean, total = g.mean_all(t), g.sum_all(t, scale=0.5)
    assert mean.shape == (1,) and total.shape == (1,)
    assert mean.item() == pytest.approx(x.mean(), rel=1e-6, abs=1e-7)
    assert total.item() == pytest.approx(0.5 * x.sum(), rel=1e-6, abs=1e-7)
    g.backward(g.add(mean, total))
    np.testing.assert_allclose(t.grad.numpy(), np.full(shape, 1 / x.size + 0.5), rtol=1e-6)


def test_expand_repeats_and_its_gradient_sums(g, rng):
    s, w = np.array([1.5], np.float32), f32(rng.standard_normal((4, 3)))
    t = g.tensor(s, requires_grad=True)
    e = g.expand(t, shape=(4, 3), scale=2.0)
    np.testing.assert_array_equal(e.numpy(), np.full((4, 3), 3.0, np.float32))
    g.backward(g.sum_all(g.mul(e, g.tensor(w))))
    assert t.grad.item() == pytest.approx(2.0 * w.sum(), rel=1e-6)


# Finite-difference checks of every differentiable op: tests/api/test_custom_ops.py, through vkloss.gradcheck.


@pytest.mark.parametrize("name", ["add", "mul"])
def test_elementwise_shape_mismatch_names_both_shapes(g, name):
    a, b = g.tensor(np.ones((2, 3))), g.tensor(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        getattr(g, name)(a, b)


def test_expand_rejects_a_non_scalar_source(g):
    with pytest.raises(ValueError, match=r"expand.*\(2,\)"):
        g.expand(g.tensor(np.ones(2)), shape=(4,))


def test_ops_reject_arrays_and_wrong_arity(g):
    with pytest.raises(TypeError, match="not a vkloss Tensor"):
        g.add(g.tensor(np.ones(2)), np.ones(2))
    with pytest.raises(TypeError, match=r"Graph\.add\(\) missing 1 required positional argument: 'b'"):
        g.add(g.tensor(np.ones(2)))


def test_unknown_op_is_an_attribute_error(g):
    with pytest.raises(AttributeError, match="no op named 'softmaxx'"):
        g.softmaxx
