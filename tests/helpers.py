"""Float64 references and the device gradients of a function, shared by the tests."""
import re

import numpy as np


def f32(x):
    """The float32 values the device sees, as float64 for the reference."""
    return np.asarray(x, np.float32).astype(np.float64)


def sigmoid64(x):
    return 1.0 / (1.0 + np.exp(-x))


def device_gradients(g, fn, arrays):
    tensors = [g.tensor(a, requires_grad=True) for a in arrays]
    g.backward(fn(*tensors))
    return [t.grad.numpy().astype(np.float64) for t in tensors]


def dispatched_widths(g, family):
    """The float32 values an access of each dispatched `family` variant moved (8, 4 or 1), in dispatch order, from
    the names conftest.py's `forced` Graph records in g.names."""
    found = []
    for name in g.names:
        if name.startswith(family + "["):
            switches = dict(re.findall(r"(\w+)=(\d+)", name))
            found.append(8 if switches.get("WIDE") == "1" else 4 if switches.get("VEC4") == "1" else 1)
    return found


# Subprocesses in tests get this long before they count as hung: a guard, not a speed requirement (a busy CI machine
# compiling shaders for the first time may be slow, and a test must not fail for that).
HANG_GUARD = 1800


IGNORE = -100  # PyTorch's default ignore_index


def liger_reference(x, labels, scale=0.0, softcap=None, smoothing=0.0, reduction="mean"):
    """(loss, z_loss, d loss / d x) in float64: the z-loss included in the loss, as Liger adds it."""
    x = x.astype(np.float64)
    y = softcap * np.tanh(x / softcap) if softcap else x
    m = y.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(y - m).sum(axis=1))
    softmax = np.exp(y - lse[:, None])
    rows, classes = x.shape
    counted = labels != IGNORE
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
