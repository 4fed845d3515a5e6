"""Float64 references and the device gradients of a function, shared by the tests."""
import re

import numpy as np
import pytest

from vkloss import reference


def f32(x):
    """The float32 values the device sees, as float64 for the reference."""
    return np.asarray(x, np.float32).astype(np.float64)


def sigmoid64(x):
    return 1.0 / (1.0 + np.exp(-x))


def device_gradients(g, fn, arrays):
    tensors = [g.tensor(a, requires_grad=True) for a in arrays]
    g.backward(fn(*tensors))
    return [t.grad.numpy().astype(np.float64) for t in tensors]


def dot_step(g, opt, w, x):
    """One training step on loss = sum(w * x) (d/dw = x), PyTorch's order: zero_grad, forward, backward, step.
    Returns the loss."""
    opt.zero_grad()
    loss = g.sum_all(g.mul(w, x))
    g.backward(loss)
    opt.step()
    return loss


def dispatched_widths(g, family):
    """The float32 values an access of each dispatched `family` variant moved (8, 4 or 1), in dispatch order, from
    the names conftest.py's `forced` Graph records in g.names."""
    found = []
    for name in g.names:
        source = name.split("[")[0]  # a family may span files: cross_entropy_row, cross_entropy_chunked
        if source == family or source.startswith(family + "_"):
            switches = dict(re.findall(r"(\w+)=(\d+)", name))
            found.append(8 if switches.get("WIDE") == "1" else 4 if switches.get("VEC4") == "1" else 1)
    return found


# Subprocesses in tests get this long before they count as hung: a guard, not a speed requirement (a busy CI machine
# compiling shaders for the first time may be slow, and a test must not fail for that).
HANG_GUARD = 1800


IGNORE = -100  # PyTorch's default ignore_index


def liger_reference(x, labels, scale=0.0, softcap=None, smoothing=0.0, reduction="mean"):
    """(loss, z_loss, d loss / d x) in float64 numpy: vkloss.reference.liger_cross_entropy."""
    return reference.liger_cross_entropy(x, labels, scale, softcap, smoothing, reduction, IGNORE)


def ulp(values, dtype):
    """One 16-bit rounding at each value's magnitude."""
    magnitude = np.abs(values)
    if dtype is np.float16:
        return np.spacing(magnitude.astype(np.float16)).astype(np.float64)
    return np.spacing(magnitude.astype(np.float32)).astype(np.float64) * 65536


def assert_within_one_rounding(got, exact, dtype):
    got = np.asarray(got, np.float64)
    bad = np.abs(got - exact) > ulp(exact, dtype) + 1e-12
    assert not bad.any(), (got[bad][:5], exact[bad][:5])


def adam64(params, grads_per_step, lr=0.1, betas=(0.9, 0.999), eps=1e-8):
    """torch.optim.Adam in float64 numpy: each parameter with a gradient counts its own step."""
    params = [p.astype(np.float64) for p in params]
    m, v, t = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params], [0] * len(params)
    for grads in grads_per_step:
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            t[i] += 1
            m[i] = betas[0] * m[i] + (1 - betas[0]) * grad
            v[i] = betas[1] * v[i] + (1 - betas[1]) * grad ** 2
            params[i] -= lr / (1 - betas[0] ** t[i]) * m[i] / (np.sqrt(v[i] / (1 - betas[1] ** t[i])) + eps)
    return params


def check_every_index_option(g, rng, classes, dtype):
    """Three rows of class indices (one ignored) with class weights and label smoothing, against float64: the loss
    within 1e-5 (16-bit 1e-4), the gradient within the dtype's rounding. Returns the float32 logits it used."""
    x = (rng.standard_normal((3, classes)) * 3).astype(np.float32)
    target = rng.integers(0, classes, 3)
    target[1] = 5  # ignored
    weight = rng.uniform(0.5, 2.0, classes)
    p = g.tensor(x, dtype=dtype, requires_grad=True)
    loss = g.cross_entropy_loss(p, target, weight=weight, label_smoothing=0.1, ignore_index=5)
    g.backward(loss)
    exact = p.numpy().astype(np.float64)
    ref_loss, ref_grad = reference.cross_entropy(exact, target, weight=weight, ignore_index=5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5 if dtype is np.float32 else 1e-4)
    tolerance = 1e-5 if dtype is np.float32 else 4e-3 if dtype is np.float16 else 2e-2
    np.testing.assert_allclose(p.grad.numpy().astype(np.float64), ref_grad, rtol=tolerance,
                               atol=tolerance * np.abs(ref_grad).max())
    return x


def gpu_row_once(vectors):
    """launch.row_once as a GPU with 1,024 invocations a workgroup answers it (lavapipe declines: its large
    workgroups run as coroutines): tests force it to reach the kernel that holds a row in registers."""
    from vkloss import launch

    for values in launch.ROW_ONCE_VALUES:
        workgroup = 32
        while workgroup * values < vectors:
            workgroup *= 2
        if workgroup <= 1024:
            return workgroup, values
    return None
