"""The elementwise ops and the reductions at every access width (shaders/include/access.glsl): eight floats an access
where the engine takes wide loads and the sizes are multiples of 8, a vec4 where they are multiples of 4, else one
float. Each test runs with wide loads forced off and on (conftest.py's `forced`), at sizes on both sides of each
threshold, against float64, and checks which width was dispatched."""
import numpy as np
import pytest

import vkloss
from vkloss.ops import matmul
from helpers import dispatched_widths as widths, f32, sigmoid64
from test_training_ops import adam64


def width_for(g, *sizes):
    if g.wide and all(s % 8 == 0 for s in sizes):
        return 8
    return 4 if all(s % 4 == 0 for s in sizes) else 1


def special(rng, shape):
    """Normal values with zeros, signed zeros and infinities where the vector lanes are: the first, fifth and last."""
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[0], flat[-1] = 0.0, -0.0
    if flat.size > 5:
        flat[4], flat[5] = np.inf, -np.inf
    return x


UNARY = {"neg": lambda x: -x, "abs": np.abs, "relu": lambda x: np.maximum(x, 0), "sigmoid": sigmoid64}
BINARY = {
    "add": lambda a, b: a + b, "mul": lambda a, b: a * b,
    "abs_backward": lambda grad, x: grad * np.sign(x),
    "relu_backward": lambda grad, x: np.where(x > 0, grad, 0.0),
    "sigmoid_backward": lambda grad, y: grad * y * (1 - y),
}


# n = 24 (eight), 20 (four), 21 (one), and 3 x 1000 (eight: several workgroups)
@pytest.mark.parametrize("shape", [(3, 8), (5, 4), (3, 7), (3, 1000)])
def test_elementwise_ops_at_every_width(forced, rng, shape):
    g = forced
    x, other = special(rng, shape), rng.standard_normal(shape).astype(np.float32)
    tx, tother = g.tensor(x), g.tensor(other)
    x64, other64 = x.astype(np.float64), other.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for name, reference in UNARY.items():
            rtol = 1e-6 if name == "sigmoid" else 2e-7  # exp's error, not the access's
            np.testing.assert_allclose(getattr(g, name)(tx).numpy(), reference(x64), rtol=rtol, err_msg=name)
        for name, reference in BINARY.items():
            got = getattr(g.ops, name)(tother, tx).numpy()
            np.testing.assert_allclose(got, reference(other64, x64), rtol=2e-7, atol=1e-30, err_msg=name)
    assert np.signbit(g.neg(tx).numpy().reshape(-1)[-1]) == 0  # -(-0) = +0
    assert set(widths(g, "elementwise")) == {width_for(g, x.size)}


# a bias row [cols] added to every row, and a scale per row: an access must stay within a row, so cols decides too.
# (3, 8): eight; (6, 4): n = 24 but cols 4: four; (8, 3): n = 24 but cols 3: one; (16, 12): four
@pytest.mark.parametrize("rows, cols", [(3, 8), (6, 4), (8, 3), (16, 12)])
def test_broadcast_ops_keep_each_access_within_a_row(forced, rng, rows, cols):
    g = forced
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    bias, scales = rng.standard_normal(cols).astype(np.float32), rng.standard_normal(rows).astype(np.float32)
    tx = g.tensor(x)
    np.testing.assert_allclose(g.add(tx, g.tensor(bias)).numpy(), x.astype(np.float64) + bias, rtol=2e-7)
    np.testing.assert_allclose(g.ops.mul_rows(tx, g.tensor(scales)).numpy(), x.astype(np.float64) * scales[:, None],
                               rtol=2e-7)
    assert widths(g, "elementwise") == [width_for(g, rows * cols, cols)] * 2
    g.names.clear()
    np.testing.assert_allclose(g.mul_scalar(tx, g.tensor(-0.5)).numpy(), x.astype(np.float64) * -0.5, rtol=2e-7)
    assert widths(g, "elementwise") == [width_for(g, rows * cols)]  # one scale for everything: n alone decides


# one pass (8, 12, 13 values) and three (2^17 + 8, + 4, + 1: the first pass eight, four or one float an access,
# the later ones whatever their partial counts allow)
@pytest.mark.parametrize("n", [8, 12, 13, (1 << 17) + 8, (1 << 17) + 4, (1 << 17) + 1])
def test_sums_counts_and_fills_at_every_width(forced, rng, n):
    g = forced
    x = rng.standard_normal(n).astype(np.float32) + 0.25
    tx = g.tensor(x)
    exact = x.astype(np.float64)
    scale = 1e-6 * np.abs(exact).sum()  # a float32 pairwise tree, against float64
    assert g.mean_all(tx).item() == pytest.approx(exact.mean(), abs=scale / n)
    assert g.sum_all(tx, scale=-2.0).item() == pytest.approx(-2 * exact.sum(), abs=2 * scale)
    assert widths(g, "reductions")[0] == width_for(g, n)
    g.names.clear()
    np.testing.assert_array_equal(g.expand(g.tensor(1.5), shape=(n,), scale=-2.0).numpy(), np.full(n, -3.0))
    assert widths(g, "reductions") == [width_for(g, n)]
    bad = x.copy()
    bad[[1, 5, n - 1]] = [np.nan, np.inf, -np.inf]  # in either half of an eight-float access, and the last
    assert g.ops.count_nonfinite(g.tensor(bad)).item() == (3 if n > 5 else 2)


# whole accesses only, four-float accesses and a tail of one, eight-float accesses and a tail of five
@pytest.mark.parametrize("shape", [(3, 8), (5, 4), (3, 7)])
def test_optimizer_updates_at_every_width(forced, rng, shape):
    g = forced
    w0 = rng.standard_normal(shape).astype(np.float32)
    for name in ("sgd", "adam"):
        w = g.tensor(w0, requires_grad=True)
        opt = vkloss.optim.SGD([w], lr=0.1, momentum=0.9) if name == "sgd" else vkloss.optim.Adam([w], lr=0.1)
        grads, exact, velocity = [], w0.astype(np.float64), 0.0
        for _ in range(3):
            opt.zero_grad()
            grads.append([2 * w.numpy().astype(np.float64)])  # the gradient of sum(w * w), at this step's w
            g.backward(g.sum_all(g.mul(w, w)))
            opt.step()
            velocity = 0.9 * velocity + grads[-1][0]
            exact = exact - 0.1 * velocity
        want = exact if name == "sgd" else adam64([w0], grads)[0]
        # Adam's m / sqrt(v) cancels where the gradient changed sign: 1e-4 of a step of 0.1
        np.testing.assert_allclose(w.numpy(), want, rtol=1e-5, atol=1e-6 if name == "sgd" else 1e-5, err_msg=name)
    assert set(widths(g, "optim")) == {8 if g.wide else 4}  # a size's tail goes element by element


# The register-block matmul (CPU devices) reads each operand as many floats an access as its offset and its row
# length along the way it is stored allow: all multiples of 8; of 4; m odd (scalar where a is transposed); k odd
# (scalar where k is contiguous; else zeros past k_end in the last access of k); and k in three slices.
@pytest.mark.parametrize("m, k, n", [(16, 24, 32), (12, 20, 28), (9, 16, 24), (16, 13, 24), (8, 120, 16)])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_at_every_width(forced, rng, monkeypatch, m, k, n, trans_a, trans_b):
    g = forced
    if k == 120:
        monkeypatch.setattr(matmul, "K_SLICE", 48)  # three dispatches, each added to the last
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    out = g.matmul_transposed(g.tensor(a.T if trans_a else a), g.tensor(b.T if trans_b else b), trans_a=trans_a,
                              trans_b=trans_b)
    np.testing.assert_allclose(out.numpy(), f32(a) @ f32(b), rtol=1e-5, atol=1e-5)
    want = 1 if matmul.use_tiles(g.device) else width_for(g, m if trans_a else k, k if trans_b else n)
    assert set(widths(g, "matmul")) == {want}
