"""Cross-entropy where PyTorch's and Liger-Kernel's own tests found it apart from PyTorch: label smoothing at large
vocabularies, a weighted mean over a zero total weight, and ignore_index's default."""
import numpy as np
import pytest

from vkloss import reference

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def smoothed64(logits, labels, smoothing):
    """Per-row loss with label smoothing, in float64 from the float32 logits."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    log_softmax = x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    classes = x.shape[1]
    target = np.full(x.shape, smoothing / classes)
    target[np.arange(len(labels)), labels] += 1 - smoothing
    return -(target * log_softmax).sum(axis=1)


# float32 sums of a row's terms lost the smoothing terms' low bits: 3.5e-6 of the loss at 32,000 classes and 2e-5 at
# 128,256 (PyTorch float32: 1e-7 to 2e-7 at worst over rows); now within 2x of PyTorch's worst
@pytest.mark.parametrize("classes, rows", [(32_000, 16), (128_256, 4)])
@pytest.mark.parametrize("smoothing", [0.1, 0.2])
def test_label_smoothing_keeps_float32_precision_at_large_vocabularies(g, classes, rows, smoothing):
    rng = np.random.default_rng(classes)
    logits = (rng.standard_normal((rows, classes)) * 2).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    got = g.cross_entropy_loss(g.tensor(logits), labels, label_smoothing=smoothing, reduction="none").numpy()
    want = smoothed64(logits, labels, smoothing)
    assert np.max(np.abs(got - want) / np.abs(want)) < 4e-7


def test_label_smoothing_with_weights_and_ignore_index_at_32000_classes(g):
    rng = np.random.default_rng(3)
    rows, classes = 32, 32_000
    logits = (rng.standard_normal((rows, classes)) * 2).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    labels[[3, 17]] = -300
    weight = rng.uniform(0.5, 1.5, classes).astype(np.float32)
    got = g.cross_entropy_loss(g.tensor(logits), labels, weight=weight, ignore_index=-300, label_smoothing=0.1,
                               reduction="none").numpy()
    want, _ = reference.cross_entropy(logits, labels, "none", weight=weight.astype(np.float64), ignore_index=-300,
                                      label_smoothing=0.1)
    counted = labels != -300
    assert np.max(np.abs(got[counted] - want[counted]) / np.abs(want[counted])) < 4e-7
    np.testing.assert_array_equal(got[~counted], 0.0)


ZERO_TOTAL = {  # labels, class weights: where the counted rows' weights sum to 0
    "zero weights": (np.array([0, 1]), np.zeros(3)),
    "cancelling weights": (np.array([0, 1]), np.array([1.0, -1.0, 1.0])),
    "every row ignored": (np.array([-100, -100]), np.ones(3)),
    "cancelling, a row ignored": (np.array([0, 1, -100]), np.array([1.0, -1.0, 1.0])),
}


@pytest.mark.parametrize("case", ZERO_TOTAL)
def test_a_mean_over_a_zero_total_weight_is_not_finite_as_in_pytorch(g, case):
    labels, weight = ZERO_TOTAL[case]
    logits = np.random.default_rng(0).standard_normal((len(labels), 3)).astype(np.float32)
    pred = g.tensor(logits, requires_grad=True)
    loss = g.cross_entropy_loss(pred, labels, weight=weight)
    g.backward(loss)
    want_loss, want_grad = reference.cross_entropy(logits, labels, weight=weight)
    np.testing.assert_array_equal(loss.item(), want_loss)  # NaN, or -inf / +inf as the division gives
    grad = pred.grad.numpy()
    counted = labels != -100
    assert not np.isfinite(grad[counted]).any()  # NaN or +-inf, as PyTorch's; which of the two may differ
    np.testing.assert_array_equal(grad[~counted], 0.0)  # an ignored row's gradient stays 0
    if torch is not None:
        x = torch.tensor(logits, requires_grad=True)
        theirs = F.cross_entropy(x, torch.tensor(labels), weight=torch.tensor(weight, dtype=torch.float32))
        theirs.backward()
        np.testing.assert_array_equal(loss.item(), theirs.item())
        np.testing.assert_array_equal(np.isfinite(grad), np.isfinite(x.grad.numpy()))


def test_ignore_index_defaults_to_pytorchs_padding_label(g):
    logits = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    labels = np.array([1, -100, 3, -100])
    got = g.cross_entropy_loss(g.tensor(logits), labels).item()
    want, _ = reference.cross_entropy(logits, labels)
    assert got == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match=r"outside \[0, 5\) or ignore_index -100"):
        g.cross_entropy_loss(g.tensor(logits), np.array([1, -1, 3, 0])).item()
    # ignore_index=None: no label is ignored, so -100 is out of range
    with pytest.raises(ValueError, match="class indices"):
        g.cross_entropy_loss(g.tensor(logits), labels, ignore_index=None).item()
    assert g.linear_cross_entropy(g.tensor(logits[:, :3]), g.tensor(np.eye(5, 3)), labels).item() > 0
