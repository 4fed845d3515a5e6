"""Float64 references and the device gradients of a function, shared by the tests."""
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
