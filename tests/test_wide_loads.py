"""Eight float32 values per access (shaders/include/wide.glsl), which the cross-entropy row kernel and BCE take on CPU
devices with 64-bit shader integers where the sizes are multiples of 8, and four (vec4) otherwise: both sides of
that choice, forced either way (conftest.py's `forced`), against float64 and PyTorch, with every option that reads a
row buffer."""
import numpy as np
import pytest

from vkloss import reference
from test_row_once import check_every_index_option
from test_sixteen_bit import assert_within_one_rounding
from helpers import dispatched_widths

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def eight_wide(g, family):
    """Whether any dispatched `family` variant moved eight values an access."""
    return 8 in dispatched_widths(g, family)


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
