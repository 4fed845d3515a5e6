"""linear_cross_entropy: PyTorch's F.cross_entropy(F.linear(hidden, weight, bias), target), the logits never held at
once. Against PyTorch in float64 where installed, else a float64 numpy twin; chunking forced small so every test
sweeps several chunks."""
import numpy as np
import pytest

import vkloss
import vkloss.ops.linear_cross_entropy as linear
from helpers import f32, liger_reference

try:
    import torch
except ImportError:
    torch = None


@pytest.fixture(autouse=True, params=["rows", "vocabulary"])
def small_workspace(monkeypatch, request):
    """Blocks of whole rows (11 rows of 1,003 classes a block, the last of 4), or, where not one row fits, the
    vocabulary in chunks for every row (25 classes at 37 rows)."""
    monkeypatch.setattr(linear, "WORKSPACE_BYTES", 37 * 4 * 300 if request.param == "rows" else 37 * 4 * 25)
    return request.param


def test_rows_per_block_fills_whole_tiles_or_takes_everything(monkeypatch):
    class Ctx:
        device = type("Device", (), {"type": "cpu", "max_storage_buffer_range": 1 << 27, "device_memory": 1 << 31})
    monkeypatch.setattr(linear, "WORKSPACE_BYTES", 4 * 1000 * 150)  # 150 rows of 1,000 classes
    assert linear.rows_per_block(Ctx, 100, 1000) == 100  # all rows fit
    assert linear.rows_per_block(Ctx, 1000, 1000) == 128  # whole 64-row tiles of the products
    assert linear.rows_per_block(Ctx, 1000, 4000) == 37 and linear.rows_per_block(Ctx, 1000, 700_000) == 0


def reference(hidden, weight, target, bias=None, reduction="mean", ignore_index=-100, label_smoothing=0.0,
              weight_classes=None):
    """Loss and gradients (hidden, weight, bias) in float64 numpy: PyTorch's formulas."""
    h, w = f32(hidden), f32(weight)
    b = f32(bias) if bias is not None else np.zeros(len(w))
    z = h @ w.T + b
    rows, classes = z.shape
    wc = f32(weight_classes) if weight_classes is not None else np.ones(classes)
    counted = target != ignore_index
    one_hot = np.zeros_like(z)
    one_hot[np.arange(rows)[counted], target[counted]] = 1
    a = wc * (one_hot * (1 - label_smoothing) + label_smoothing / classes) * counted[:, None]
    log_softmax = z - z.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    divisor = (wc[target[counted]]).sum() if reduction == "mean" else 1.0
    loss = -(a * log_softmax).sum() / divisor
    grad_z = (np.exp(log_softmax) * a.sum(1, keepdims=True) - a) / divisor
    return loss, grad_z @ w, grad_z.T @ h, grad_z.sum(0)


def close(got, want, tolerance=2e-5):
    scale = max(np.abs(want).max(), 1e-30)
    assert np.abs(np.asarray(got, np.float64) - want).max() / scale < tolerance


def inputs(rng, rows=37, features=16, classes=1003):
    hidden = rng.standard_normal((rows, features)).astype(np.float32)
    weight = (rng.standard_normal((classes, features)) * 0.3).astype(np.float32)
    bias = rng.standard_normal(classes).astype(np.float32)
    target = rng.integers(0, classes, rows)
    target[3] = -100
    return hidden, weight, bias, target


@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}, {"reduction": "sum"}, {"ignore_index": 7},
                                     {"weight_classes": "random"}, {"label_smoothing": 0.2, "weight_classes": "random",
                                                                    "reduction": "sum"}])
def test_loss_and_gradients_match_float64(g, rng, options):
    hidden, weight, bias, target = inputs(rng)
    if options.get("weight_classes") == "random":
        options = {**options, "weight_classes": rng.uniform(0.5, 2, len(weight)).astype(np.float32)}
    if "ignore_index" in options:
        target[3], target[5] = 0, options["ignore_index"]  # -100 is then an index out of range
    h, w, b = g.parameter(hidden), g.parameter(weight), g.parameter(bias)
    loss = g.linear_cross_entropy(h, w, target, bias=b, **options)
    g.backward(loss)
    want = reference(hidden, weight, target, bias, **options)
    close(loss.item(), want[0])
    for got, expected in zip((h.grad, w.grad, b.grad), want[1:]):
        close(got.numpy(), expected)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
def test_the_reference_is_pytorchs_cross_entropy_of_linear(rng):
    hidden, weight, bias, target = inputs(rng)
    wc = rng.uniform(0.5, 2, len(weight))
    th, tw, tb = (torch.tensor(f32(a), requires_grad=True) for a in (hidden, weight, bias))
    loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(th, tw, tb), torch.tensor(target),
                                             weight=torch.tensor(f32(wc)), label_smoothing=0.1)
    loss.backward()
    want = reference(hidden, weight, target, bias, label_smoothing=0.1, weight_classes=wc)
    assert loss.item() == pytest.approx(want[0], rel=1e-12)
    for got, expected in zip((th.grad, tw.grad, tb.grad), want[1:]):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-14)


def test_without_bias_and_with_an_int32_target_tensor(g, rng):
    hidden, weight, _, target = inputs(rng)
    target[3] = 0
    h, w = g.parameter(hidden), g.parameter(weight)
    loss = g.linear_cross_entropy(h, w, g.tensor(target, dtype=np.int32))
    g.backward(loss)
    want = reference(hidden, weight, target)
    close(loss.item(), want[0])
    close(h.grad.numpy(), want[1])
    close(w.grad.numpy(), want[2])


def test_gradients_flow_back_through_a_network_and_scale_with_the_upstream_gradient(g, rng):
    hidden, weight, _, target = inputs(rng)
    x = g.parameter(hidden)
    w = g.parameter(weight)
    h = g.relu(x)  # the hidden state is an op's output
    loss = g.mul_scalar(g.linear_cross_entropy(h, w, target), g.tensor([3.0]))
    g.backward(loss)
    want = reference(np.maximum(hidden, 0), weight, target)
    close(loss.item(), 3 * want[0])
    close(x.grad.numpy(), 3 * want[1] * (hidden > 0))
    close(w.grad.numpy(), 3 * want[2])


def test_a_weight_without_gradient_gets_none(g, rng):
    hidden, weight, _, target = inputs(rng)
    h, w = g.parameter(hidden), g.tensor(weight)
    g.backward(g.linear_cross_entropy(h, w, target))
    assert w.grad is None
    close(h.grad.numpy(), reference(hidden, weight, target)[1])


def test_peak_memory_holds_one_chunk_of_logits_not_all(rng, small_workspace):
    # 4.4 MB of logits in 30,000-class rows, none of which fits the workspace (44 KB or 3.7 KB); or 1.5 MB of
    # logits in 1,003-class rows, 11 to a block
    rows, features, classes = (37, 16, 30_000) if small_workspace == "vocabulary" else (370, 16, 1003)
    hidden, weight, _, target = inputs(rng, rows, features, classes)
    with vkloss.Graph() as g:
        h, w = g.parameter(hidden), g.parameter(weight)
        g.flush()
        loss = g.linear_cross_entropy(h, w, target)
        g.backward(loss)
        loss.item()
        inputs_and_gradients = 2 * (rows * features + classes * features) * 4 + rows * 4
        logits = rows * classes * 4
        extra = g.stats["peak_device_bytes"] - inputs_and_gradients
        assert extra < 0.2 * logits, (extra, logits)
        close(w.grad.numpy(), reference(hidden, weight, target)[2])


def liger(hidden, weight, bias, target, **options):
    """Liger's reference (loss, z_loss) and the gradients (hidden, weight, bias) of the summed loss, in float64."""
    h, w, b = f32(hidden), f32(weight), f32(bias)
    loss, z_loss, grad_logits = liger_reference(h @ w.T + b, target, **options)
    return loss, z_loss, grad_logits @ w, grad_logits.T @ h, grad_logits.sum(0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("softcap, scale, smoothing", [(None, 1e-3, 0.0), (2.5, 0.0, 0.0), (2.5, 1e-2, 0.1)])
def test_softcap_z_loss_and_reductions_match_ligers_reference(g, rng, reduction, softcap, scale, smoothing):
    hidden, weight, bias, target = inputs(rng)
    hidden *= 3  # logits of a few units, where the softcap bends them
    h, w, b = g.parameter(hidden), g.parameter(weight), g.parameter(bias)
    loss, z_loss = g.linear_cross_entropy(h, w, target, bias=b, reduction=reduction, softcap=softcap,
                                          lse_square_scale=scale, label_smoothing=smoothing, return_z_loss=True)
    upstream = rng.uniform(0.5, 2.0, len(target)).astype(np.float32)  # 'none': each row's own upstream gradient
    g.backward(g.sum(g.mul(loss, g.tensor(upstream))) if reduction == "none" else loss)
    want = liger(hidden, weight, bias, target, scale=scale, softcap=softcap, smoothing=smoothing, reduction=reduction)
    close(loss.numpy(), want[0], 1e-5)
    if scale:
        close(z_loss.numpy(), want[1], 1e-5)
    else:
        np.testing.assert_array_equal(z_loss.numpy(), 0.0)
    if reduction == "none":  # per-row upstream: recompute with the logits' gradient scaled row by row
        grad_logits = liger_reference(f32(hidden) @ f32(weight).T + f32(bias), target, scale, softcap, smoothing,
                                      "none")[2] * f32(upstream)[:, None]
        want = want[:2] + (grad_logits @ f32(weight), grad_logits.T @ f32(hidden), grad_logits.sum(0))
    for got, expected in zip((h.grad, w.grad, b.grad), want[2:]):
        close(got.numpy(), expected)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
def test_reduction_none_with_class_weights_and_smoothing_matches_pytorch(g, rng):
    hidden, weight, bias, target = inputs(rng)
    wc = rng.uniform(0.5, 2, len(weight)).astype(np.float32)
    upstream = rng.uniform(0.5, 2, len(target)).astype(np.float32)
    h, w, b = g.parameter(hidden), g.parameter(weight), g.parameter(bias)
    loss = g.linear_cross_entropy(h, w, target, bias=b, reduction="none", weight_classes=wc, label_smoothing=0.1)
    g.backward(g.sum(g.mul(loss, g.tensor(upstream))))
    th, tw, tb = (torch.tensor(f32(a), requires_grad=True) for a in (hidden, weight, bias))
    theirs = torch.nn.functional.cross_entropy(torch.nn.functional.linear(th, tw, tb), torch.tensor(target),
                                               weight=torch.tensor(f32(wc)), reduction="none", label_smoothing=0.1)
    (theirs * torch.tensor(f32(upstream))).sum().backward()
    close(loss.numpy(), theirs.detach().numpy(), 1e-5)
    for got, expected in zip((h.grad, w.grad, b.grad), (th.grad, tw.grad, tb.grad)):
        close(got.numpy(), expected.numpy())


def test_reduction_none_from_16_bit_operands_gives_gradients_in_their_dtype(g, rng):
    hidden, weight, bias, target = inputs(rng, rows=9, classes=70)
    h = g.tensor(hidden, dtype="bfloat16", requires_grad=True)
    w = g.tensor(weight, dtype="bfloat16", requires_grad=True)
    loss = g.linear_cross_entropy(h, w, target, reduction="none")
    g.backward(g.sum(loss))
    assert loss.shape == (9,) and h.grad.dtype == h.dtype and w.grad.dtype == w.dtype
    stored_h, stored_w = h.numpy().astype(np.float64), w.numpy().astype(np.float64)
    want = liger(stored_h, stored_w, np.zeros(70), target, reduction="none")
    close(loss.numpy(), want[0], 1e-5)
    close(h.grad.numpy().astype(np.float64), want[2], 1e-2)
    close(w.grad.numpy().astype(np.float64), want[3], 1e-2)


@pytest.mark.parametrize("call, error, says", [
    (lambda g, h, w, t: g.linear_cross_entropy(h, g.tensor(np.ones((5, 3))), t), ValueError, r"weight \[classes"),
    (lambda g, h, w, t: g.linear_cross_entropy(h, w, t[:5]), ValueError, r"target must be class indices \[rows\]"),
    (lambda g, h, w, t: g.linear_cross_entropy(h, w, t, reduction="avg"), ValueError, "reduction"),
    (lambda g, h, w, t: g.linear_cross_entropy(h, w, t, softcap=-2.0), ValueError, "softcap must be None or a pos"),
    (lambda g, h, w, t: g.linear_cross_entropy(h, w, t, lse_square_scale=1e-4, weight_classes=np.ones(1003)),
     ValueError, "lse_square_scale with class weights"),
    (lambda g, h, w, t: g.linear_cross_entropy(h, w, t, bias=np.ones(4)), ValueError, "bias must have shape"),
    (lambda g, h, w, t: g.linear_cross_entropy(h, w, t.astype(np.float32)), TypeError, "takes class indices"),
    (lambda g, h, w, t: g.linear_cross_entropy(h, w, t, foo=1), TypeError, "unexpected keyword argument 'foo'"),
    (lambda g, h, w, t: g.linear_cross_entropy(h, w, t + 5000).item(), ValueError, "outside"),
])
def test_bad_input_is_refused_and_the_graph_stays_usable(g, rng, call, error, says):
    hidden, weight, _, target = inputs(rng)
    h, w = g.parameter(hidden), g.parameter(weight)
    with pytest.raises(error, match=says):
        call(g, h, w, target)
    assert g.add(g.tensor([1.0]), g.tensor([2.0])).item() == 3.0
