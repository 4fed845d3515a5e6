"""Liger-Kernel's cross-entropy options, softcap and z-loss (lse_square_scale, return_z_loss), against Liger's own
reference formulas: CrossEntropyWithZLoss of its test_cross_entropy.py (z = scale lse^2 on the rows that count, a
mean over those rows) and its softcap test (cross-entropy of softcap tanh(logits / softcap)). Computed here in
float64 numpy, gradients included, and checked against PyTorch float64 autograd of the same formula where installed.
Sizes reach every kernel path: one invocation per row (5), a workgroup per row (37, 96 with wide loads, 1000) and
the chunked vocabulary (300,000)."""
import numpy as np
import pytest

from helpers import IGNORE, liger_reference

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def torch_reference(x, labels, scale, softcap, smoothing, reduction):
    """Liger's CrossEntropyWithZLoss (and its softcap), in PyTorch float64."""
    logits = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    capped = softcap * torch.tanh(logits / softcap) if softcap else logits
    target = torch.tensor(labels)
    ce = F.cross_entropy(capped, target, reduction=reduction, label_smoothing=smoothing, ignore_index=IGNORE)
    lse = torch.logsumexp(capped, dim=-1)
    z = torch.where(target != IGNORE, scale * lse ** 2, 0.0)
    z = {"mean": z.sum() / (target != IGNORE).sum(), "sum": z.sum(), "none": z}[reduction]
    total = ce + z
    total.sum().backward()
    return total.detach().numpy(), z.detach().numpy(), logits.grad.numpy()


def case(classes, rows, seed=0):
    rng = np.random.default_rng(seed + classes)
    logits = (rng.standard_normal((rows, classes)) * 4).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    labels[1] = IGNORE
    return logits, labels


def close(got, want, tolerance):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.max(np.abs(got - want)) <= tolerance * np.max(np.abs(want)), (got, want)


@pytest.mark.parametrize("classes, rows", [(5, 7), (37, 7), (96, 5), (1000, 3), (300_000, 2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("softcap, scale, smoothing", [(None, 1e-4, 0.0), (3.0, 0.0, 0.0), (3.0, 1e-3, 0.1)])
def test_softcap_and_z_loss_match_ligers_reference(g, classes, rows, reduction, softcap, scale, smoothing):
    logits, labels = case(classes, rows)
    pred = g.tensor(logits, requires_grad=True)
    loss, z_loss = g.cross_entropy_loss(pred, labels, reduction=reduction, label_smoothing=smoothing,
                                        lse_square_scale=scale, softcap=softcap, return_z_loss=True)
    g.backward(loss if reduction != "none" else g.sum(loss))
    want_loss, want_z, want_grad = liger_reference(logits, labels, scale, softcap, smoothing, reduction)
    loose = 4e-6 if classes > 100_000 else 1e-6  # float32 sums over 300,000 classes
    close(loss.numpy(), want_loss, loose)
    if scale:
        close(z_loss.numpy(), want_z, loose)
    else:
        np.testing.assert_array_equal(z_loss.numpy(), 0.0)
    close(pred.grad.numpy(), want_grad, 1e-5)
    assert not pred.grad.numpy()[1].any()  # the ignored row: no gradient
    if torch is not None and classes < 100_000:
        theirs = torch_reference(logits, labels, scale, softcap, smoothing, reduction)
        for mine, reference in zip((want_loss, want_z, want_grad), theirs):
            np.testing.assert_allclose(mine, reference, rtol=1e-10, atol=1e-14)


def test_without_return_z_loss_the_loss_alone_includes_the_z_loss(g):
    logits, labels = case(50, 6)
    loss = g.cross_entropy_loss(g.tensor(logits), labels, lse_square_scale=0.01)
    assert loss.shape == (1,)
    close(loss.item(), liger_reference(logits, labels, 0.01)[0], 1e-6)


def test_the_z_loss_returned_is_not_differentiable_and_the_loss_is(g):
    logits, labels = case(20, 4)
    pred = g.tensor(logits, requires_grad=True)
    loss, z_loss = g.cross_entropy_loss(pred, labels, lse_square_scale=0.5, return_z_loss=True)
    assert loss.requires_grad and not z_loss.requires_grad


def test_softcap_on_probability_targets_matches_pytorch_on_capped_logits(g):
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((6, 130)) * 10).astype(np.float32)
    target = rng.dirichlet(np.ones(130), 6).astype(np.float32)
    pred = g.tensor(logits, requires_grad=True)
    loss, z_loss = g.cross_entropy_loss(pred, g.tensor(target), softcap=5.0, lse_square_scale=1e-3, return_z_loss=True)
    g.backward(loss)
    x = logits.astype(np.float64)
    y = 5.0 * np.tanh(x / 5.0)
    lse = np.log(np.exp(y - y.max(1, keepdims=True)).sum(1)) + y.max(1)
    softmax = np.exp(y - lse[:, None])
    want_loss = (-(target * (y - lse[:, None])).sum(1) + 1e-3 * lse ** 2).mean()
    want_grad = ((softmax * target.sum(1, keepdims=True) - target + 2e-3 * lse[:, None] * softmax)
                 * (1 - (y / 5.0) ** 2) / 6)
    close(loss.item(), want_loss, 1e-6)
    close(z_loss.item(), (1e-3 * lse ** 2).mean(), 1e-6)
    close(pred.grad.numpy(), want_grad, 1e-5)


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_softcap_and_z_loss_on_16_bit_logits(g, dtype):
    logits, labels = case(264, 5)
    pred = g.tensor(logits, dtype=dtype, requires_grad=True)
    stored = pred.numpy().astype(np.float64)  # the 16-bit values the kernel reads
    loss, z_loss = g.cross_entropy_loss(pred, labels, softcap=2.0, lse_square_scale=1e-2, return_z_loss=True)
    g.backward(loss)
    want_loss, want_z, want_grad = liger_reference(stored, labels, 1e-2, 2.0)
    close(loss.item(), want_loss, 1e-6)
    close(z_loss.item(), want_z, 1e-6)
    close(pred.grad.numpy().astype(np.float64), want_grad, 1e-2)  # a 16-bit gradient


def test_gradient_written_in_place_with_softcap_and_z_loss(g):
    logits, labels = case(300, 4)
    pred = g.tensor(logits, requires_grad=True)
    hidden = g.scale(pred, s=1.0)  # an op's output, which the gradient may overwrite
    loss, z_loss = g.cross_entropy_loss(hidden, labels, softcap=4.0, lse_square_scale=1e-3, return_z_loss=True,
                                        inplace_grad=True)
    g.backward(loss)
    want_loss, want_z, want_grad = liger_reference(logits, labels, 1e-3, 4.0)
    close(loss.item(), want_loss, 1e-6)
    close(z_loss.item(), want_z, 1e-6)  # computed before the gradient overwrote the logits
    close(pred.grad.numpy(), want_grad, 1e-5)


@pytest.mark.parametrize("options, message", [
    (dict(softcap=0.0), "softcap must be None or a positive finite number, got 0.0"),
    (dict(softcap=-1.0), "softcap must be None or a positive finite number"),
    (dict(softcap=float("inf")), "softcap must be None or a positive finite number"),
    (dict(lse_square_scale=float("nan")), "lse_square_scale must be finite"),
    (dict(lse_square_scale=1e-4, weight=np.ones(8)), "lse_square_scale with class weights is not supported"),
])
def test_bad_liger_options_raise_and_leave_the_graph_usable(g, options, message):
    logits, labels = case(8, 3)
    with pytest.raises(ValueError, match=message):
        g.cross_entropy_loss(g.tensor(logits), labels, **options)
    close(g.cross_entropy_loss(g.tensor(logits), labels).item(), liger_reference(logits, labels)[0], 1e-6)
