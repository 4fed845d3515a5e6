"""Property tests: Hypothesis draws shapes (1, sizes around powers of two and 65,535) and values (huge, tiny,
equal) and every op and loss, forward and gradient, is compared with float64 references, under synchronization
validation like the rest of the suite. Tolerances are float32's: relative 1e-5 to 1e-4, plus an absolute floor
at the scale of the values, since the device may flush float32 subnormals to zero."""
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import f32, sigmoid64

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
# 20 examples per property, the same ones every run (a CI run must not fail by the draw); VKLOSS_HYPOTHESIS_EXAMPLES=200
# for a longer, random search
SETTINGS = settings(max_examples=int(os.environ.get("VKLOSS_HYPOTHESIS_EXAMPLES", "20")), deadline=None,
                    derandomize="VKLOSS_HYPOTHESIS_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

EDGES = [1, 2, 3, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025, 4095, 4096, 4097, 65535, 65536, 65537]
sizes = st.one_of(st.sampled_from(EDGES), st.integers(1, 5000))
rows_st = st.sampled_from([1, 2, 3, 63, 64, 65, 255, 256, 257])
cols_st = st.sampled_from([1, 2, 3, 4, 5, 63, 64, 65, 255, 256, 257, 1023, 1024, 1025, 4097, 16385, 65535])
scales = st.sampled_from([1e-20, 1e-6, 1e-3, 1.0, 10.0, 1e3, 1e4])
patterns = st.sampled_from(["normal", "equal", "mixed"])


def values(shape, scale, pattern, seed):
    rng = np.random.default_rng(seed)
    if pattern == "equal":
        return np.full(shape, scale * 0.75, np.float32)
    x = rng.standard_normal(shape) * scale
    if pattern == "mixed":  # every scale at once
        x = x * 10.0 ** rng.integers(-20, 5, shape)
    return x.astype(np.float32)


def close(got, want, rtol, scale):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=max(1e-30, 1e-6 * scale))


UNARY = {"neg": (lambda x: -x, lambda x: -np.ones_like(x)), "abs": (np.abs, np.sign),
         "relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0),
         "sigmoid": (sigmoid64, lambda x: sigmoid64(x) * (1 - sigmoid64(x)))}


@SETTINGS
@given(name=st.sampled_from(sorted(UNARY)), n=sizes, scale=scales, pattern=patterns, seed=st.integers(0, 2**16))
def test_unary_ops(g, name, n, scale, pattern, seed):
    x = f32(values(n, scale, pattern, seed))
    t = g.tensor(x, requires_grad=True)
    out = getattr(g, name)(t)
    forward, derivative = UNARY[name]
    close(out.numpy(), forward(x), 1e-6, scale if name != "sigmoid" else 1.0)
    g.backward(g.sum_all(out))
    ulp = float(np.finfo(np.float32).eps)  # sigmoid's rule uses its float32 output, as PyTorch does
    np.testing.assert_allclose(t.grad.numpy(), derivative(x), rtol=1e-5, atol=2 * ulp)


@SETTINGS
@given(name=st.sampled_from(["add", "mul"]), n=sizes, scale=scales, pattern=patterns, seed=st.integers(0, 2**16))
def test_binary_ops(g, name, n, scale, pattern, seed):
    a, b = f32(values(n, scale, pattern, seed)), f32(values(n, scale, "normal", seed + 1))
    ta, tb = g.tensor(a, requires_grad=True), g.tensor(b, requires_grad=True)
    out = getattr(g, name)(ta, tb)
    want = a + b if name == "add" else a * b
    close(out.numpy(), want, 1e-6, scale * (scale if name == "mul" else 1.0))
    g.backward(g.sum_all(out))
    close(ta.grad.numpy(), np.ones(n) if name == "add" else b, 1e-6, scale)
    close(tb.grad.numpy(), np.ones(n) if name == "add" else a, 1e-6, scale)


@SETTINGS
@given(n=sizes, scale=scales, pattern=patterns, seed=st.integers(0, 2**16))
def test_mean_and_sum(g, n, scale, pattern, seed):
    x = f32(values(n, scale, pattern, seed))
    t = g.tensor(x, requires_grad=True)
    mean = g.mean_all(t)
    bound = 1e-6 * np.abs(x).mean() + 1e-37
    assert abs(mean.item() - x.mean()) <= bound
    assert abs(g.sum_all(t).item() - x.sum()) <= bound * n
    g.backward(mean)
    np.testing.assert_allclose(t.grad.numpy(), np.full(n, 1 / n), rtol=1e-6)


@SETTINGS
@given(rows=rows_st, cols=cols_st, scale=st.sampled_from([1e-3, 1.0, 10.0, 1e4]), pattern=patterns,
       soft=st.booleans(), seed=st.integers(0, 2**16))
def test_cross_entropy(g, rows, cols, scale, pattern, soft, seed):
    rng = np.random.default_rng(seed)
    p = f32(values((rows, cols), scale, pattern if pattern != "mixed" else "normal", seed))
    if soft:
        t = f32(rng.random((rows, cols)))
    else:
        t = np.zeros((rows, cols))
        t[np.arange(rows), rng.integers(0, cols, rows)] = 1.0
    tp = g.tensor(p, requires_grad=True)
    loss = g.cross_entropy_loss(tp, g.tensor(t))
    g.backward(loss)
    m = p.max(axis=1, keepdims=True)
    log_softmax = p - m - np.log(np.exp(p - m).sum(axis=1, keepdims=True))
    ref_loss = -(t * log_softmax).sum(axis=1).mean()
    ref_grad = (np.exp(log_softmax) * t.sum(axis=1, keepdims=True) - t) / rows
    # the loss is a difference of terms as large as the logits: its error scales with them
    assert abs(loss.item() - ref_loss) <= 1e-5 * abs(ref_loss) + 2e-6 * np.abs(p).max() * t.sum(axis=1).mean() + 1e-6
    # each gradient element is softmax A - a, a difference of terms up to A / rows: float32 rounds it to a few ulp of
    # those, 3.5e-8 where the result was 8.7e-5 (1 row, 2 classes, logits 10 apart)
    terms = t.sum(axis=1).max() / rows
    np.testing.assert_allclose(tp.grad.numpy(), ref_grad, rtol=1e-4,
                               atol=1e-5 * np.abs(ref_grad).max() + 1e-6 * terms + 1e-12)


@SETTINGS
@given(n=sizes, extreme=st.booleans(), hard=st.booleans(), seed=st.integers(0, 2**16))
def test_bce(g, n, extreme, hard, seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(1e-7, 1 - 1e-7, n) if extreme else rng.uniform(0.01, 0.99, n)
    if extreme:
        p[rng.random(n) < 0.2] = rng.choice([0.0, 1.0, 1e-30])
    y = np.round(rng.random(n)) if hard else rng.random(n)
    p, y = f32(p), f32(y)
    tp = g.tensor(p, requires_grad=True)
    loss = g.bce_loss(tp, g.tensor(y))
    g.backward(loss)
    with np.errstate(divide="ignore"):
        terms = -(y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log1p(-p), -100))
    ref_grad = (p - y) / np.maximum(p * (1 - p), 1e-12) / n
    assert loss.item() == pytest.approx(terms.mean(), rel=2e-5, abs=1e-6)
    np.testing.assert_allclose(tp.grad.numpy(), ref_grad, rtol=1e-4, atol=1e-6 * np.abs(ref_grad).max())


@SETTINGS
@given(name=st.sampled_from(["mse_loss", "l1_loss"]), n=sizes, scale=scales, pattern=patterns,
       seed=st.integers(0, 2**16))
def test_mse_and_l1(g, name, n, scale, pattern, seed):
    p, t = f32(values(n, scale, pattern, seed)), f32(values(n, scale, "normal", seed + 7))
    tp = g.tensor(p, requires_grad=True)
    loss = getattr(g, name)(tp, g.tensor(t))
    g.backward(loss)
    d = p - t
    if name == "mse_loss":
        want, grad = np.mean(d * d), 2 * d / n
    else:
        want, grad = np.mean(np.abs(d)), np.sign(d) / n
    assert abs(loss.item() - want) <= 2e-6 * (np.mean(d * d) if name == "mse_loss" else np.mean(np.abs(d))) + 1e-37
    close(tp.grad.numpy(), grad, 1e-5, np.abs(grad).max())


@SETTINGS
@given(m=st.integers(1, 70), k=st.sampled_from([1, 2, 3, 4, 5, 63, 64, 65, 255, 257, 1025]), n=st.integers(1, 70),
       seed=st.integers(0, 2**16))
def test_matmul(g, m, k, n, seed):
    rng = np.random.default_rng(seed)
    a, b = f32(rng.standard_normal((m, k))), f32(rng.standard_normal((k, n)))
    ta, tb = g.tensor(a, requires_grad=True), g.tensor(b, requires_grad=True)
    out = g.matmul(ta, tb)
    np.testing.assert_allclose(out.numpy(), a @ b, rtol=1e-5, atol=1e-5 * math.sqrt(k))
    g.backward(g.sum_all(out))
    np.testing.assert_allclose(ta.grad.numpy(), np.ones((m, n)) @ b.T, rtol=1e-5, atol=1e-5 * math.sqrt(n))
    np.testing.assert_allclose(tb.grad.numpy(), a.T @ np.ones((m, n)), rtol=1e-5, atol=1e-5 * math.sqrt(m))
