"""Every kernel is right for any size: 1 element, odd sizes, and sizes past the 65535-workgroup dispatch limit and
lavapipe's silent per-invocation loop limit. Every element of every result is checked, since lavapipe drops work
without an error."""
import numpy as np
import pytest

import vkloss
from helpers import f32

WORKGROUP = 256
PAST_DISPATCH_LIMIT = 65535 * WORKGROUP + 40_000  # 16,816,960 elements: more than 65535 workgroups along x
ODD_SIZES = [1, 2, 3, 255, 256, 257, 511, 512, 513, 1023, 65535, 65537, 131073]


@pytest.fixture(scope="module")
def big(g):
    rng = np.random.default_rng(7)
    a = rng.standard_normal(PAST_DISPATCH_LIMIT, dtype=np.float32)
    b = rng.standard_normal(PAST_DISPATCH_LIMIT, dtype=np.float32)
    return a, b, g.tensor(a), g.tensor(b)


def test_binary_ops_past_the_dispatch_limit(g, big):
    a, b, ta, tb = big
    np.testing.assert_array_equal(g.add(ta, tb).numpy(), a + b)
    np.testing.assert_array_equal(g.mul(ta, tb).numpy(), a * b)


def test_unary_ops_past_the_dispatch_limit(g, big):
    a, _, ta, _ = big
    np.testing.assert_array_equal(g.neg(ta).numpy(), -a)
    np.testing.assert_array_equal(g.abs(ta).numpy(), np.abs(a))
    s = g.sigmoid(ta).numpy()
    assert np.all(np.abs(s - 1 / (1 + np.exp(-f32(a)))) <= 2e-7)


def test_mean_all_past_the_dispatch_limit(g, big):
    a, _, ta, _ = big
    assert abs(g.mean_all(ta).item() - f32(a).mean()) <= 1e-6 * np.abs(f32(a)).mean()


def test_expand_past_the_dispatch_limit(g):
    out = g.expand(g.tensor([2.5]), shape=(PAST_DISPATCH_LIMIT,), scale=2.0).numpy()
    assert out.shape == (PAST_DISPATCH_LIMIT,) and np.all(out == 5.0)


def test_mse_forward_and_backward_on_5_million_elements(g):
    rng = np.random.default_rng(3)
    n = 5_000_001
    p, t = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    tp = g.tensor(p, requires_grad=True)
    loss = g.mse_loss(tp, g.tensor(t))
    g.backward(loss)
    d = f32(p) - f32(t)
    assert abs(loss.item() - np.mean(d * d)) <= 1e-6 * np.mean(d * d)
    grad = tp.grad.numpy()
    assert grad.shape == (n,)
    np.testing.assert_allclose(grad, 2 * d / n, rtol=2e-6, atol=1e-13)


@pytest.mark.parametrize("data", ["normal", "uniform", "offset"])
def test_mean_of_ten_million_is_within_a_millionth_of_float64(g, data):
    rng = np.random.default_rng(11)
    n = 10_000_000
    x = {"normal": lambda: rng.standard_normal(n), "uniform": lambda: rng.uniform(0, 1, n),
         "offset": lambda: 1000.0 + rng.standard_normal(n)}[data]().astype(np.float32)
    got = g.mean_all(g.tensor(x)).item()
    want = f32(x).mean()
    assert abs(got - want) <= 1e-6 * np.abs(f32(x)).mean(), (got, want)


def test_same_input_gives_bit_identical_results(g):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(3_000_001).astype(np.float32)
    results = []
    for _ in range(3):
        t = g.tensor(x, requires_grad=True)
        loss = g.mean_all(g.mul(t, g.abs(t)))
        g.backward(loss)
        results.append((loss.numpy().tobytes(), t.grad.numpy().tobytes()))
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("n", ODD_SIZES)
def test_every_op_at_odd_sizes(g, n):
    rng = np.random.default_rng(n)
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    ta, tb = g.tensor(a, requires_grad=True), g.tensor(b)
    np.testing.assert_array_equal(g.add(ta, tb).numpy(), a + b)
    np.testing.assert_array_equal(g.mul(ta, tb).numpy(), a * b)
    loss = g.mean_all(g.mul(ta, tb))
    assert loss.item() == pytest.approx(np.mean(f32(a) * f32(b)), rel=1e-5, abs=1e-7)
    g.backward(loss)
    np.testing.assert_allclose(ta.grad.numpy(), f32(b) / n, rtol=1e-6)


def test_two_dimensional_grid_when_the_device_allows_few_workgroups_per_dimension():
    # Shrink the per-dimension limit so that small sizes take the 2-D grid path large ones take on real limits.
    with vkloss.Graph() as g:
        g.engine.launch.max_groups_x = 3  # shrink the limit the engine sizes dispatches by
        rng = np.random.default_rng(0)
        n = 10_007
        a = rng.standard_normal(n).astype(np.float32)
        ta = g.tensor(a, requires_grad=True)
        np.testing.assert_array_equal(g.neg(ta).numpy(), -a)
        loss = g.mean_all(g.mul(ta, ta))
        assert loss.item() == pytest.approx(np.mean(f32(a) ** 2), rel=1e-6)
        g.backward(loss)
        np.testing.assert_allclose(ta.grad.numpy(), 2 * f32(a) / n, rtol=1e-6)
