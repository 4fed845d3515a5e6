"""Float64 references and the device gradients of a function, shared by the tests."""
import re

import numpy as np

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