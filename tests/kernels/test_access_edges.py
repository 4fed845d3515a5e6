"""Each access width's edges, forced either way (conftest.py's `forced`: wide loads off, then on) against float64
and PyTorch: values in every vector lane (signed zeros, infinities, NaN), broadcast rows an access must not cross,
sums, counts and fills over one pass and three, optimizer tails, products whose operands allow different widths, and
every option of the losses that read row buffers, in float32 and 16 bits. Eight float32 values an access
(shaders/include/wide.glsl) are what CPU devices with 64-bit shader integers take where sizes are multiples of 8;
four (a vec4) where they are multiples of 4; else one. tests/kernels/test_variants.py runs every mode at every
width once; these are the cases that break an access layer."""
import numpy as np
import pytest

import vkloss
from vkloss import reference
from vkloss.ops import matmul
from helpers import (adam64, assert_within_one_rounding, check_every_index_option, dispatched_widths as widths, f32,
                     sigmoid64)

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


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
        for name, exact in UNARY.items():
            rtol = 1e-6 if name == "sigmoid" else 2e-7  # exp's error, not the access's
            np.testing.assert_allclose(getattr(g, name)(tx).numpy(), exact(x64), rtol=rtol, err_msg=name)
        for name, exact in BINARY.items():
            got = getattr(g.ops, name)(tother, tx).numpy()
            np.testing.assert_allclose(got, exact(other64, x64), rtol=2e-7, atol=1e-30, err_msg=name)
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


def eight_wide(g, family):
    """Whether any dispatched `family` variant moved eight values an access."""
    return 8 in widths(g, family)


def test_cpu_devices_with_int64_take_eight(g):
    assert g.engine.launch.wide_loads() == (g.device.type == "cpu" and g.device.shader_int64)


# 72 and 4000 classes: eight at a time where allowed; 76 and 4004: four
@pytest.mark.parametrize("classes", [72, 76, 4000, 4004])
def test_cross_entropy_probability_targets_with_weights_and_smoothing(forced, rng, classes):
    g = forced
    x = (rng.standard_normal((5, classes)) * 3).astype(np.float32)
    x[0, 3] = -np.inf  # a masked class
    soft = rng.dirichlet(np.ones(classes), 5).astype(np.float32)
    soft[1] *= 2.5  # rows need not sum to 1
    soft[0, 3] = 0
    weight = rng.uniform(0.5, 2.0, classes).astype(np.float32)
    p = g.tensor(x, requires_grad=True)
    loss = g.cross_entropy_loss(p, g.tensor(soft), weight=weight, label_smoothing=0.2, reduction="sum")
    g.backward(loss)
    ref_loss, ref_grad = reference.cross_entropy(x.astype(np.float64), soft.astype(np.float64),
                                                 weight=weight.astype(np.float64), reduction="sum",
                                                 label_smoothing=0.2)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(p.grad.numpy(), ref_grad, rtol=1e-4, atol=1e-6 * np.abs(ref_grad).max())
    if torch is not None:
        t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        F.cross_entropy(t, torch.tensor(soft, dtype=torch.float64), weight=torch.tensor(weight, dtype=torch.float64),
                        label_smoothing=0.2, reduction="sum").backward()
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=1e-4, atol=1e-6 * np.abs(ref_grad).max())
    assert eight_wide(g, "cross_entropy") == (g.wide and classes % 8 == 0)


@pytest.mark.parametrize("classes", [72, 76, 4000])
def test_cross_entropy_index_targets_with_every_option(forced, rng, classes):
    check_every_index_option(forced, rng, classes, np.float32)
    assert eight_wide(forced, "cross_entropy") == (forced.wide and classes % 8 == 0)


def test_cross_entropy_gradient_in_place(forced, rng):
    x = rng.standard_normal((3, 800)).astype(np.float32)
    target = rng.integers(0, 800, 3)
    leaf = forced.tensor(x, requires_grad=True)
    loss = forced.cross_entropy_loss(forced.neg(forced.neg(leaf)), target, inplace_grad=True)
    forced.backward(loss)
    ref_loss, ref_grad = reference.cross_entropy(x.astype(np.float64), target)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(leaf.grad.numpy(), ref_grad, rtol=1e-4, atol=1e-6 * np.abs(ref_grad).max())
    assert eight_wide(forced, "cross_entropy") == forced.wide


# pred [rows, size] with weights of shape (size,), broadcast over the rows: eight at a time where n and size are
# multiples of 8 (512 x 8), else four (1024 x 4: the weights; 1025 x 4: both)
@pytest.mark.parametrize("rows, size", [(512, 8), (1024, 4), (1025, 4)])
def test_bce_on_probabilities_and_logits_with_broadcast_weights(forced, rng, rows, size):
    g, n = forced, rows * size
    p = rng.uniform(0.0, 1.0, (rows, size)).astype(np.float32)
    p[0, :3] = [0.0, 1.0, 1 - 2 ** -24]
    y = rng.random((rows, size)).astype(np.float32)
    weight = rng.uniform(0.5, 2.0, size).astype(np.float32)
    tp = g.tensor(p, requires_grad=True)
    loss = g.bce_loss(tp, g.tensor(y), weight=weight)
    g.backward(loss)
    x, w = p.astype(np.float64), weight.astype(np.float64)
    with np.errstate(divide="ignore"):
        terms = -(y * np.maximum(np.log(x), -100) + (1 - y) * np.maximum(np.log1p(-x), -100))
    assert loss.item() == pytest.approx((w * terms).mean(), rel=1e-5)
    grad = w * (x - y) / np.maximum(x * (1 - x), 1e-12) / n
    np.testing.assert_allclose(tp.grad.numpy(), grad, rtol=1e-4, atol=1e-6 * np.abs(grad).max())

    z = (rng.standard_normal((rows, size)) * 8).astype(np.float32)
    z[0, 0], y[0, 0] = -33.25, 0.0  # a loss of 3.6e-15, not x - (x - 3.6e-15) rounded to 0
    pos_weight = rng.uniform(0.5, 3.0, size).astype(np.float32)
    tz = g.tensor(z, requires_grad=True)
    per_element = g.bce_with_logits_loss(tz, g.tensor(y), pos_weight=pos_weight, reduction="none")
    g.backward(g.mean_all(per_element))
    zz, pw = z.astype(np.float64), pos_weight.astype(np.float64)
    log_weight = 1 + (pw - 1) * y
    ref = (1 - y) * zz + log_weight * (np.maximum(-zz, 0) + np.log1p(np.exp(-np.abs(zz))))
    np.testing.assert_allclose(per_element.numpy(), ref, rtol=1e-5, atol=1e-6 * np.abs(zz).max())  # (1 - y) x cancels
    assert per_element.numpy()[0, 0] == pytest.approx(np.exp(-33.25), rel=1e-5)
    ref_grad = (log_weight / (1 + np.exp(-zz)) - pw * y) / n
    np.testing.assert_allclose(tz.grad.numpy(), ref_grad, rtol=1e-4, atol=1e-6 * np.abs(ref_grad).max())
    if torch is not None:
        want = F.binary_cross_entropy_with_logits(torch.tensor(zz), torch.tensor(y, dtype=torch.float64),
                                                  pos_weight=torch.tensor(pw), reduction="none")
        np.testing.assert_allclose(per_element.numpy(), want.numpy(), rtol=1e-5, atol=1e-6 * np.abs(zz).max())
    assert eight_wide(g, "bce") == (g.wide and n % 8 == 0 and size % 8 == 0)


# 16-bit logits: eight values (four words, 16 bytes) an access where the class count, or every size, is a multiple of
# 8; four (two words) where it is a multiple of 4
@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
@pytest.mark.parametrize("classes", [72, 76])
def test_cross_entropy_on_16_bit_logits(forced, rng, dtype, classes):
    g = forced
    x = (rng.standard_normal((5, classes)) * 3).astype(np.float32)
    labels = rng.integers(0, classes, 5)
    p = g.tensor(x, dtype=dtype, requires_grad=True)
    loss = g.cross_entropy_loss(p, labels, label_smoothing=0.1)
    g.backward(loss)
    ref_loss, ref_grad = reference.cross_entropy(p.numpy().astype(np.float64), labels, label_smoothing=0.1)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    assert_within_one_rounding(p.grad.numpy(), ref_grad, dtype)
    assert eight_wide(g, "cross_entropy") == (g.wide and classes % 8 == 0)


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
@pytest.mark.parametrize("rows, size", [(64, 8), (65, 4)])  # eight at a time; four (260 values, pos_weight of 4)
def test_bce_with_logits_on_16_bit_inputs(forced, rng, dtype, rows, size):
    g = forced
    z = (rng.standard_normal((rows, size)) * 4).astype(np.float32)
    y = rng.random((rows, size)).astype(np.float32)
    pos_weight = rng.uniform(0.5, 3.0, size).astype(np.float32)
    tz, ty = g.tensor(z, dtype=dtype, requires_grad=True), g.tensor(y, dtype=dtype)  # labels packed like the logits
    loss = g.bce_with_logits_loss(tz, ty, pos_weight=pos_weight)
    g.backward(loss)
    ref_loss, ref_grad = reference.binary_cross_entropy_with_logits(tz.numpy(), ty.numpy(), pos_weight=pos_weight)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    assert_within_one_rounding(tz.grad.numpy(), ref_grad, dtype)
    assert eight_wide(g, "bce") == (g.wide and size % 8 == 0)
