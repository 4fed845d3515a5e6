"""The float64 numpy twin of a vkloss training run: the same MLP, losses and optimizers, written out by hand.

It shares no code with the device path (no registry, no tape), so agreement between the two is evidence, not an
echo. `python -m vkloss.train` runs both from the same initial weights on the same batches.
"""
from __future__ import annotations

import numpy as np


def forward(weights, x):
    """Layer inputs and pre-activations of an MLP with relu between layers; returns (activations, output)."""
    inputs, h = [], x
    for i, (w, b) in enumerate(weights):
        inputs.append(h)
        z = h @ w + b
        h = np.maximum(z, 0.0) if i < len(weights) - 1 else z
    return inputs, h


def cross_entropy(logits, target, reduction="mean", weight=None, ignore_index=-100, label_smoothing=0.0):
    """PyTorch's F.cross_entropy and its gradient with respect to the logits (of the sum of the output, for
    reduction="none"). target: probabilities of the logits' shape, or class indices [batch].

    Written from PyTorch's definition: per row, -sum_c w_c t'_c log_softmax_c with t' = t (1 - eps) + eps / C (t the
    one-hot of the index); rows whose index is ignore_index count for nothing; a mean divides by the batch
    (probabilities) or by the summed w[target] of the counted rows (indices), a zero sum giving what the division
    gives (NaN or +-inf) in the loss and in the counted rows' gradient."""
    logits = np.asarray(logits, np.float64)
    rows, classes = logits.shape
    target = np.asarray(target)
    weight = np.ones(classes) if weight is None else np.asarray(weight, np.float64)
    counted = np.ones(rows, bool)
    if target.ndim == 1:
        counted = target != ignore_index if ignore_index is not None else counted
        one_hot = np.zeros((rows, classes))
        one_hot[np.flatnonzero(counted), target[counted]] = 1.0
        divisor = weight[target[counted]].sum()
    else:
        one_hot, divisor = np.asarray(target, np.float64), rows
    coefficient = weight * (one_hot * (1 - label_smoothing) + label_smoothing / classes) * counted[:, None]
    m = logits.max(axis=1, keepdims=True)
    log_softmax = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    row_loss = -(coefficient * np.where(counted[:, None], log_softmax, 0.0)).sum(axis=1)
    grad = np.exp(log_softmax) * coefficient.sum(axis=1, keepdims=True) - coefficient
    if reduction == "none":
        return row_loss, grad
    if reduction == "sum":
        return row_loss.sum(), grad
    with np.errstate(invalid="ignore", divide="ignore"):
        return row_loss.sum() / divisor, np.where(counted[:, None], grad / divisor, 0.0)


def liger_cross_entropy(x, labels, scale=0.0, softcap=None, smoothing=0.0, reduction="mean", ignore_index=-100):
    """Liger-Kernel's cross-entropy with its options, (loss, z_loss, d loss / d x): written from Liger's reference
    formulas, CrossEntropyWithZLoss (z = scale lse^2 on the rows that count, reduced as the loss is, and included in
    it) and its softcap (cross-entropy of softcap tanh(x / softcap)). Class indices `labels`."""
    x = x.astype(np.float64)
    y = softcap * np.tanh(x / softcap) if softcap else x
    m = y.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(y - m).sum(axis=1))
    softmax = np.exp(y - lse[:, None])
    rows, classes = x.shape
    counted = labels != ignore_index
    a = np.full(x.shape, smoothing / classes)
    a[np.arange(rows), np.where(counted, labels, 0)] += 1 - smoothing
    a[~counted] = 0.0
    row_loss = -(a * (y - lse[:, None])).sum(axis=1)
    row_z = np.where(counted, scale * lse ** 2, 0.0)
    d_y = (softmax * a.sum(axis=1, keepdims=True) - a + 2 * scale * lse[:, None] * softmax) * counted[:, None]
    divisor = counted.sum() if reduction == "mean" else 1.0
    d_x = d_y * (1 - (y / softcap) ** 2 if softcap else 1.0) / divisor
    if reduction == "none":
        return row_loss + row_z, row_z, d_x
    return (row_loss + row_z).sum() / divisor, row_z.sum() / divisor, d_x


def binary_cross_entropy(p, y, reduction="mean", weight=None):
    """PyTorch's F.binary_cross_entropy of probabilities p, logs clamped at -100, and its gradient with respect to
    p (of the sum of the output, for reduction="none")."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    weight = 1.0 if weight is None else np.asarray(weight, np.float64)
    with np.errstate(divide="ignore"):
        terms = -weight * (y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log1p(-p), -100))
    grad = weight * (p - y) / np.maximum(p * (1 - p), 1e-12) + np.zeros_like(p)
    return _reduced(terms, grad, reduction)


def binary_cross_entropy_with_logits(x, y, reduction="mean", weight=None, pos_weight=None):
    """PyTorch's F.binary_cross_entropy_with_logits and its gradient with respect to the logits x."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    weight = 1.0 if weight is None else np.asarray(weight, np.float64)
    pos_weight = 1.0 if pos_weight is None else np.asarray(pos_weight, np.float64)
    log_weight = 1 + (pos_weight - 1) * y
    log_sigmoid = np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))
    terms = weight * ((1 - y) * x - log_weight * log_sigmoid)
    grad = weight * (log_weight / (1 + np.exp(-x)) - pos_weight * y)
    return _reduced(terms, grad, reduction)


def _reduced(terms, grad, reduction):
    if reduction == "none":
        return terms, grad
    if reduction == "sum":
        return terms.sum(), grad
    return terms.mean(), grad / terms.size


def loss_and_output_grad(loss: str, z, target):
    """The loss (as vkloss defines it, PyTorch's numbers) and its gradient with respect to the network's output z.
    For bce_loss, z are logits passed through a sigmoid first."""
    n = z.size
    if loss == "cross_entropy_loss":
        return cross_entropy(z, target)
    if loss == "bce_loss":
        p = 1.0 / (1.0 + np.exp(-z))
        value, grad_p = binary_cross_entropy(p, target)
        return value, grad_p * p * (1 - p)
    d = z - target
    if loss == "mse_loss":
        return np.mean(d * d), 2 * d / n
    if loss == "l1_loss":
        return np.mean(np.abs(d)), np.sign(d) / n
    raise ValueError(f"unknown loss {loss!r}")


def gradients(weights, x, target, loss: str):
    """Loss and [(dW, db)] for every layer."""
    inputs, z = forward(weights, x)
    value, grad = loss_and_output_grad(loss, z, target)
    grads = [None] * len(weights)
    for i in reversed(range(len(weights))):
        w, _ = weights[i]
        grads[i] = (inputs[i].T @ grad, grad.sum(axis=0))
        if i > 0:
            grad = (grad @ w.T) * (inputs[i] > 0)  # relu's gradient, 0 at 0
    return value, grads


class SGD:
    def __init__(self, params, lr, momentum=0.0):
        self.params, self.lr, self.momentum = params, lr, momentum
        self.velocity = [np.zeros_like(p) for p in params]

    def step(self, grads):
        for p, v, g in zip(self.params, self.velocity, grads):
            v *= self.momentum
            v += g
            p -= self.lr * v


class Adam:
    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, (self.beta1, self.beta2), self.eps = params, lr, betas, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.steps = 0

    def step(self, grads):
        self.steps += 1
        bias1, bias2 = 1 - self.beta1 ** self.steps, 1 - self.beta2 ** self.steps
        for p, m, v, g in zip(self.params, self.m, self.v, grads):
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            p -= (self.lr / bias1) * m / (np.sqrt(v) / np.sqrt(bias2) + self.eps)
