"""The fused losses at the edges of float32, each against PyTorch's behaviour or float64: masked and extreme logits,
rows of nothing but -inf, negative class weights, BCE near p = 1."""
import numpy as np
import pytest

from helpers import f32

try:
    import torch
except ImportError:
    torch = None

NEG_INF = -np.inf


def one_hot(labels, classes, dtype=np.float64):
    rows = np.zeros((len(labels), classes), dtype)
    rows[np.arange(len(labels)), labels] = 1
    return rows


def ce64(logits, targets):
    """Cross-entropy (mean over rows) and its gradient in float64, for masked logits too: a masked class (-inf)
    with no target mass adds nothing (PyTorch's convention), a row of nothing but -inf gives NaN."""
    p = f32(logits)
    rows, classes = p.shape
    t = one_hot(targets, classes) if targets.ndim == 1 else f32(targets)
    m = p.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_softmax = p - m - np.log(np.exp(p - m).sum(axis=1, keepdims=True))
        rows_loss = -np.where(t > 0, t * log_softmax, 0.0).sum(axis=1)
        grad = (np.exp(log_softmax) * t.sum(axis=1, keepdims=True) - t) / rows
    return rows_loss.mean(), grad


def ce_device(g, logits, targets):
    pred = g.tensor(logits, requires_grad=True)
    target = targets if targets.ndim == 1 else g.tensor(targets)
    loss = g.cross_entropy_loss(pred, target)
    g.backward(loss)
    return loss.item(), pred.grad.numpy()


# ---- masked logits -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [5, 65, 128, 130, 1000, 300_000, (1 << 18) + 3])
@pytest.mark.parametrize("targets", ["index", "one-hot"])
def test_masked_logits_give_finite_loss_and_gradient(g, rng, classes, targets):
    rows = 3
    logits = rng.standard_normal((rows, classes)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    mask = rng.random((rows, classes)) < 0.5
    mask[:, :16] = True  # an invocation's first values
    mask[0, : min(classes, 20_000)] = True  # for long rows, whole chunks
    mask[np.arange(rows), labels] = False  # the target stays visible
    logits[mask] = NEG_INF
    t = labels if targets == "index" else one_hot(labels, classes, np.float32)
    loss, grad = ce_device(g, logits, t)
    want_loss, want_grad = ce64(logits, labels if targets == "index" else t)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert loss == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
    assert (grad[mask] == 0).all()


def test_extreme_logits_with_an_index_target_give_pytorchs_values(g):
    logits = np.array([[3e38, -3e38, 0.0], [-3e38, 3e38, 1.0]], np.float32)
    loss, grad = ce_device(g, logits, np.array([0, 1]))
    assert loss == 0.0 and np.isfinite(grad).all()
    if torch is not None:
        pred = torch.tensor(logits, requires_grad=True)
        want = torch.nn.functional.cross_entropy(pred, torch.tensor([0, 1]))
        want.backward()
        assert loss == want.item()
        np.testing.assert_array_equal(grad, pred.grad.numpy())


@pytest.mark.parametrize("classes", [5, 100, 300_000])
def test_a_row_of_nothing_but_minus_infinity_is_nan_as_in_pytorch(g, classes):
    logits = np.zeros((2, classes), np.float32)
    logits[1] = NEG_INF
    loss, _ = ce_device(g, logits, np.array([0, 0]))
    assert np.isnan(loss)
    if torch is not None:
        assert np.isnan(torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor([0, 0])).item())


# ---- negative class weights ---------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [6, 200, 300_000])
def test_negative_class_weights_follow_pytorch(g, rng, classes):
    logits = rng.standard_normal((4, classes)).astype(np.float32)
    labels = np.array([0, 1, 2, 1])
    weight = np.ones(classes, np.float32)
    weight[:3] = [-2.0, 0.5, -1.0]  # summed over the targets: -2 + 0.5 - 1 + 0.5 = -2
    pred = g.tensor(logits, requires_grad=True)
    loss = g.cross_entropy_loss(pred, labels, weight=weight)
    g.backward(loss)
    p = f32(logits)
    log_softmax = p - p.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    w = f32(weight)[labels]
    want = -(w * log_softmax[np.arange(4), labels]).sum() / w.sum()
    assert loss.item() == pytest.approx(want, rel=1e-5)
    want_grad = (np.exp(log_softmax) - one_hot(labels, classes)) * w[:, None] / w.sum()
    np.testing.assert_allclose(pred.grad.numpy(), want_grad, rtol=1e-4, atol=1e-7)


# ---- BCE near p = 1 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.999, 0.9999, 1 - 2 ** -24, 0.5, 0.7, 1.5e-3])
@pytest.mark.parametrize("y", [1.0, 0.0])
def test_bce_keeps_float32_precision_near_the_ends(g, p, y):
    p32 = np.float32(p)
    got = g.bce_loss(g.tensor([p32]), g.tensor([y])).item()
    want = -(y * np.log(float(p32)) + (1 - y) * np.log1p(-float(p32)))
    assert got == pytest.approx(want, rel=3e-7)
