"""vkloss.gradcheck: check an op's (or any function's) device gradient against finite differences.

    vkloss.gradcheck(lambda a, b: g.huber(a, b), [g.tensor(x), g.tensor(y)])

The device computes in float32, so the check is shaped for float32: central differences with a step of `eps`
relative to each value's magnitude, taken from device evaluations and accumulated in float64 on the host, compared
with the device's gradient within `rtol` and an `atol` relative to the largest gradient. A function whose output is
not a scalar is checked through sum(output * w) for random weights w, which covers every output element.

Inputs that are not floating point (int32 class indices) are passed as they are and not differentiated, as
torch.autograd.gradcheck does. 16-bit inputs (float16, bfloat16) are checked in float32: fn gets float32 copies of
their values, so the check covers the maths, not the 16-bit rounding.
"""
from __future__ import annotations

import numpy as np

from .errors import VkLossError
from .tensor import Tensor


class GradcheckError(VkLossError, AssertionError):
    """A device gradient differs from finite differences."""


def gradcheck(fn, inputs, *, eps: float = 1e-2, rtol: float = 2e-3, atol: float = 2e-4, seed: int = 0) -> bool:
    """True when the gradient of `fn(*inputs)` with respect to every floating-point input matches finite
    differences; otherwise GradcheckError naming the input, the element and both values. `inputs` are Tensors of one
    Graph (their values are the point of the check; their requires_grad is ignored; int32 ones are passed as they
    are, 16-bit ones as float32 copies)."""
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError("gradcheck takes a list of vkloss Tensors as inputs")
    g = inputs[0].graph
    checked = [t.dtype != np.int32 for t in inputs]
    if not any(checked):
        raise ValueError("gradcheck: no input is floating point, so there is no gradient to check")
    points = [t.numpy().astype(np.float64) if c else t for t, c in zip(inputs, checked)]
    probe = fn(*inputs)
    if not isinstance(probe, Tensor):
        raise TypeError(f"gradcheck: fn must return a vkloss Tensor, got {type(probe).__name__}")
    weights = None
    if probe.shape != (1,):
        weights = g.tensor(np.random.default_rng(seed).standard_normal(probe.shape))

    def scalar(*tensors):
        out = fn(*tensors)
        return out if weights is None else g.sum_all(g.mul(out, weights))

    def as_inputs(arrays):  # the floating-point points as new tensors, the others as they are
        return [g.tensor(a, requires_grad=True) if c else a for a, c in zip(arrays, checked)]

    leaves = as_inputs(points)
    g.backward(scalar(*leaves))
    analytic = [None if not c else np.zeros(p.shape) if t.grad is None else t.grad.numpy().astype(np.float64)
                for p, t, c in zip(points, leaves, checked)]
    with g.no_grad():
        for i, point in enumerate(points):
            if not checked[i]:
                continue
            numeric = _finite_differences(g, scalar, points, checked, i, eps)
            scale = max(np.abs(numeric).max(), np.abs(analytic[i]).max(), 1e-30)
            bad = np.abs(analytic[i] - numeric) > atol * scale + rtol * np.abs(numeric)
            if bad.any():
                idx = tuple(int(k) for k in np.argwhere(bad)[0])
                raise GradcheckError(f"gradcheck: input {i} (shape {point.shape}) element {idx}: device gradient "
                                     f"{analytic[i][idx]:.6g}, finite differences {numeric[idx]:.6g} "
                                     f"({int(bad.sum())} of {bad.size} elements off)")
    return True


def _finite_differences(g, scalar, points, checked, i, eps):
    """d scalar / d points[i] by central differences, each step eps relative to the element (at least eps)."""
    point = points[i]
    numeric = np.zeros(point.shape)
    for idx in np.ndindex(point.shape):
        step = eps * max(1.0, abs(point[idx]))
        values = []
        for sign in (1, -1):
            moved = [p.copy() if c else p for p, c in zip(points, checked)]
            moved[i][idx] += sign * step
            values.append(float(scalar(*[g.tensor(m) if c else m for m, c in zip(moved, checked)]).item()))
        numeric[idx] = (values[0] - values[1]) / (2 * step)
    return numeric
