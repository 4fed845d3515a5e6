"""16-bit tensors (float16, bfloat16): storage, reads, and the losses that take them (cross_entropy_loss,
bce_with_logits_loss, linear_cross_entropy), against float64 and PyTorch on the same 16-bit values: the loss within
1e-4, the gradient within one 16-bit rounding of the exact one."""
import numpy as np
import pytest

from vkloss import reference
from helpers import assert_within_one_rounding, ulp

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None

DTYPES = [np.float16, "bfloat16"]


def to_bfloat16(x):
    """float32 -> bfloat16 (round to nearest even), as float32: an independent twin of the upload's rounding."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def as_16(x, dtype):
    """The 16-bit values a tensor of `dtype` holds for `x`, as float64."""
    return (x.astype(np.float16) if dtype is np.float16 else to_bfloat16(x)).astype(np.float64)


# ---- storage ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (3,), (2, 5), (1001,)])
def test_values_round_trip_in_16_bits(g, rng, dtype, shape):
    x = (rng.standard_normal(shape) * 100).astype(np.float32)
    t = g.tensor(x, dtype=dtype)
    back = t.numpy()
    assert back.dtype == (np.float16 if dtype is np.float16 else np.float32) and back.shape == shape
    np.testing.assert_array_equal(back.astype(np.float64), as_16(x, dtype))
    assert t.dtype == (np.dtype(np.float16) if dtype is np.float16 else "bfloat16")


def test_bfloat16_rounds_to_nearest_even_and_keeps_specials(g):
    halfway_down = np.array([0x3F808000], np.uint32).view(np.float32)  # 1.00390625: ties to 1.0 (even)
    halfway_up = np.array([0x3F818000], np.uint32).view(np.float32)  # ties up to 0x3f82
    x = np.concatenate([halfway_down, halfway_up, [np.inf, -np.inf, np.nan, 3.4e38, -0.0]]).astype(np.float32)
    back = g.tensor(x, dtype="bfloat16").numpy()
    assert back.view(np.uint32)[0] == 0x3F800000 and back.view(np.uint32)[1] == 0x3F820000
    assert back[2] == np.inf and back[3] == -np.inf and np.isnan(back[4])
    assert back[5] == np.inf  # 3.4e38 rounds past bfloat16's largest finite value
    if torch is not None:
        np.testing.assert_array_equal(back, torch.tensor(x).to(torch.bfloat16).float().numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_copy_into_and_item_of_a_16_bit_tensor(g, dtype):
    t = g.tensor(np.zeros(3), dtype=dtype)
    t.copy_(np.array([1.5, -2.25, 3.0]))
    np.testing.assert_array_equal(t.numpy().astype(np.float64), [1.5, -2.25, 3.0])
    assert g.tensor([0.1], dtype=dtype).item() == pytest.approx(as_16(np.float32([0.1]), dtype)[0])


def test_other_ops_refuse_16_bit_tensors_and_the_graph_stays_usable(g):
    half = g.tensor(np.ones((2, 3)), dtype=np.float16)
    full = g.tensor(np.ones((2, 3)))
    for call, says in [(lambda: g.add(half, full), r"g\.add: argument 1 is a float16 tensor"),
                       (lambda: g.mse_loss(full, half), r"g\.mse_loss: argument 2 is a float16 tensor"),
                       (lambda: g.bce_loss(half, full), r"16-bit tensors go to .*cross_entropy_loss\(pred\)"),
                       (lambda: g.cross_entropy_loss(full, half), r"argument 2 is a float16 tensor .*\(target\)"),
                       (lambda: g.matmul(g.tensor(np.ones((2, 2)), dtype="bfloat16"), full),
                        "argument 1 is a bfloat16 tensor")]:
        with pytest.raises(TypeError, match=says):
            call()
    with pytest.raises(TypeError, match="dtype must be float32, int32, float16 or 'bfloat16'"):
        g.tensor([1.0], dtype=np.float64)
    assert g.add(full, full).numpy().sum() == 12.0


# ---- astype, and 16-bit gradients past the seed ------------------------------------------------------------------
@pytest.mark.parametrize("source", [np.float32, *DTYPES])
@pytest.mark.parametrize("target", ["float32", "float16", "bfloat16"])
def test_astype_rounds_as_an_upload_does(g, rng, source, target):
    x = np.concatenate([rng.standard_normal(1001) * 100, [np.inf, -np.inf, np.nan, 1e5, -0.0]]).astype(np.float32)
    t = g.tensor(x, dtype=source)
    held = t.numpy().astype(np.float32)  # the source's own values
    cast = g.astype(t, dtype=target)
    want = g.tensor(held, dtype=target if target != "float32" else np.float32).numpy()
    assert str(cast.dtype) == target and cast.shape == t.shape
    np.testing.assert_array_equal(cast.numpy(), want)  # NaN == NaN here
    if torch is not None and target != "float32":
        torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[target]
        np.testing.assert_array_equal(cast.numpy().astype(np.float32),
                                      torch.tensor(held).to(torch_dtype).float().numpy())


def test_astype_gradient_comes_back_in_the_input_dtype(g, rng):
    x = rng.standard_normal((3, 8)).astype(np.float32)
    leaf = g.tensor(x, requires_grad=True)
    half = g.astype(leaf, dtype="float16")  # float32 -> float16 -> the loss
    g.backward(g.cross_entropy_loss(half, np.array([1, 2, 7])))
    assert leaf.grad.dtype == np.float32
    _, exact = ce_reference(as_16(x, np.float16), np.array([1, 2, 7]))
    assert_within_one_rounding(leaf.grad.numpy(), exact, np.float16)  # the float16 gradient, widened exactly
    low = g.tensor(x, dtype="bfloat16", requires_grad=True)
    g.backward(g.mse_loss(g.astype(low, dtype="float32"), g.tensor(np.zeros_like(x))))  # a float32 op on bfloat16
    assert low.grad.dtype == "bfloat16"
    assert_within_one_rounding(low.grad.numpy(), 2 * as_16(x, "bfloat16") / x.size, "bfloat16")


@pytest.mark.parametrize("dtype", DTYPES)
def test_16_bit_gradients_past_the_seed_and_accumulated(g, rng, dtype):
    """What backward does with a loss that is not where it starts: scaled, summed over rows, added up over two
    backward passes, as PyTorch does (in float32, the result in the logits' dtype)."""
    x = rng.standard_normal((4, 8)).astype(np.float32)
    labels = np.array([1, 2, 3, 0])
    _, mean_grad = ce_reference(as_16(x, dtype), labels)
    for make, factor in [(lambda p: g.mul_scalar(g.cross_entropy_loss(p, labels), g.tensor([2.0])), 2.0),
                         (lambda p: g.sum_all(g.cross_entropy_loss(p, labels, reduction="none")), 4.0),
                         (lambda p: g.add(g.cross_entropy_loss(p, labels), g.cross_entropy_loss(p, labels)), 2.0),
                         (lambda p: g.mean_all(g.bce_with_logits_loss(p, g.tensor(np.zeros_like(x), dtype=dtype),
                                                                      reduction="none")), None)]:
        p = g.tensor(x, dtype=dtype, requires_grad=True)
        g.backward(make(p))
        assert p.grad.dtype == p.dtype
        exact = (mean_grad * factor if factor is not None else
                 1 / (1 + np.exp(-as_16(x, dtype))) / x.size)  # d mean(softplus(x)) / dx
        # a 16-bit gradient, scaled in float32 and rounded again: within two roundings of the largest
        np.testing.assert_allclose(p.grad.numpy().astype(np.float64), exact, rtol=0,
                                   atol=float(2 * ulp(np.abs(exact).max(), dtype)))
    p = g.tensor(x, dtype=dtype, requires_grad=True)
    for _ in range(2):  # .grad adds up over backward passes
        g.backward(g.cross_entropy_loss(p, labels))
    np.testing.assert_allclose(p.grad.numpy().astype(np.float64), 2 * mean_grad, rtol=0,
                               atol=float(2 * ulp(np.abs(mean_grad).max() * 2, dtype)))


def test_astype_refuses_what_it_cannot_cast(g):
    with pytest.raises(ValueError, match="dtype"):
        g.astype(g.tensor([1.0]), dtype="float64")
    with pytest.raises(TypeError, match="int32"):
        g.astype(g.tensor([1], dtype=np.int32), dtype="float32")
    assert g.astype(g.tensor([1.5]), dtype="float16").numpy()[0] == 1.5  # the graph goes on


def test_check_finite_sees_a_16_bit_overflow():
    import vkloss
    with vkloss.Graph(check_finite=True) as g:
        big = g.astype(g.tensor([1.0, 1e5]), dtype="float16")  # 1e5 is past float16's 65,504
        with pytest.raises(FloatingPointError, match="astype produced 1 NaN or infinite"):
            big.numpy()
        assert g.astype(g.tensor([1.0, 2.0]), dtype="bfloat16").numpy().tolist() == [1.0, 2.0]


# ---- the losses ---------------------------------------------------------------------------------------------------
def ce_reference(x, target, weight=None, smoothing=0.0, ignore_index=None):
    """float64 loss and gradient (mean reduction) for logits x."""
    if torch is not None:
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        kwargs = dict(label_smoothing=smoothing, weight=None if weight is None else torch.tensor(weight))
        if ignore_index is not None:
            kwargs["ignore_index"] = ignore_index
        loss = F.cross_entropy(xt, torch.tensor(target), **kwargs)
        loss.backward()
        return loss.item(), xt.grad.numpy()
    rows, classes = x.shape
    onehot = np.zeros((rows, classes))
    onehot[np.arange(rows), target] = 1.0
    return reference.cross_entropy(x, onehot)


@pytest.mark.parametrize("dtype", DTYPES)
# classes % 4 == 0: the row kernel, four classes (two words) at a time; otherwise the chunked kernels (40,003 spans
# three chunks of 16,384)
@pytest.mark.parametrize("rows, classes", [(3, 5), (5, 8), (7, 301), (6, 1000), (4, 40_003), (2, 70_000)])
def test_cross_entropy_on_16_bit_logits(g, rng, dtype, rows, classes):
    x = (rng.standard_normal((rows, classes)) * 4).astype(np.float32)
    exact = as_16(x, dtype)
    target = rng.integers(0, classes, rows)
    p = g.tensor(x, dtype=dtype, requires_grad=True)
    loss = g.cross_entropy_loss(p, target)
    g.backward(loss)
    ref_loss, ref_grad = ce_reference(exact, target)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-4)
    assert p.grad.dtype == p.dtype and p.grad.shape == (rows, classes)
    assert_within_one_rounding(p.grad.numpy(), ref_grad, dtype)


@pytest.mark.skipif(torch is None, reason="PyTorch gives the reference for the options")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [130, 128])  # the chunked kernels, the row kernel
def test_cross_entropy_options_on_16_bit_logits(g, rng, dtype, classes):
    rows = 9
    x = (rng.standard_normal((rows, classes)) * 3).astype(np.float32)
    target = rng.integers(0, classes, rows)
    target[2] = 7
    weight = rng.uniform(0.5, 2.0, classes)
    p = g.tensor(x, dtype=dtype, requires_grad=True)
    loss = g.cross_entropy_loss(p, target, weight=weight, label_smoothing=0.2, ignore_index=7)
    g.backward(loss)
    ref_loss, ref_grad = ce_reference(as_16(x, dtype), target, weight, 0.2, 7)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-4)
    assert_within_one_rounding(p.grad.numpy(), ref_grad, dtype)
    # probability targets, sum
    soft = rng.dirichlet(np.ones(classes), rows).astype(np.float32)
    q = g.tensor(x, dtype=dtype, requires_grad=True)
    loss = g.cross_entropy_loss(q, g.tensor(soft), reduction="sum")
    g.backward(loss)
    xt = torch.tensor(as_16(x, dtype), requires_grad=True)
    ref = F.cross_entropy(xt, torch.tensor(soft, dtype=torch.float64), reduction="sum")
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    assert_within_one_rounding(q.grad.numpy(), xt.grad.numpy(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
# sizes and pos_weight all multiples of 4: read natively four at a time; otherwise widened first (odd sizes: a last
# word half padding)
@pytest.mark.parametrize("shape", [(5,), (3, 7), (64, 33), (16, 8), (2, 4096)])
@pytest.mark.parametrize("labels_dtype", ["same", np.float32, "other"])
def test_bce_with_logits_on_16_bit_inputs(g, rng, dtype, shape, labels_dtype):
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    y = rng.uniform(0, 1, shape).astype(np.float32)
    pos_weight = rng.uniform(0.5, 3.0, shape[-1])
    y_dtype = {"same": dtype, "other": "bfloat16" if dtype is np.float16 else np.float16}.get(labels_dtype,
                                                                                               labels_dtype)
    p = g.tensor(x, dtype=dtype, requires_grad=True)
    labels = g.tensor(y, dtype=y_dtype)
    loss = g.bce_with_logits_loss(p, labels, pos_weight=pos_weight)
    g.backward(loss)
    xv, yv = as_16(x, dtype), labels.numpy().astype(np.float64)
    log_sigmoid = np.minimum(xv, 0) - np.log1p(np.exp(-np.abs(xv)))
    weight_l = 1 + (pos_weight - 1) * yv
    ref = np.mean((1 - yv) * xv - weight_l * log_sigmoid)
    ref_grad = (weight_l / (1 + np.exp(-xv)) - pos_weight * yv) / xv.size
    assert loss.item() == pytest.approx(ref, rel=1e-4)
    assert p.grad.dtype == p.dtype
    assert_within_one_rounding(p.grad.numpy(), ref_grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_cross_entropy_on_16_bit_inputs(g, rng, dtype):
    rows, features, classes = 6, 8, 37
    hidden = rng.standard_normal((rows, features)).astype(np.float32)
    weight = (rng.standard_normal((classes, features)) * 0.5).astype(np.float32)
    bias = rng.standard_normal(classes).astype(np.float32)
    target = rng.integers(0, classes, rows)
    h, w = g.tensor(hidden, dtype=dtype, requires_grad=True), g.tensor(weight, dtype=dtype, requires_grad=True)
    b = g.tensor(bias, dtype=dtype, requires_grad=True)
    loss = g.linear_cross_entropy(h, w, target, b, label_smoothing=0.1)
    g.backward(loss)
    hv, wv, bv = as_16(hidden, dtype), as_16(weight, dtype), as_16(bias, dtype)
    logits = hv @ wv.T + bv
    ref_loss, grad_logits = ce_reference(logits, target, smoothing=0.1) if torch is not None else (None, None)
    if torch is None:
        pytest.skip("PyTorch gives the smoothed reference")
    assert loss.item() == pytest.approx(ref_loss, rel=1e-4)
    for tensor, exact in ((h, grad_logits @ wv), (w, grad_logits.T @ hv), (b, grad_logits.sum(0))):
        assert tensor.grad.dtype == tensor.dtype
        assert_within_one_rounding(tensor.grad.numpy(), exact, dtype)
