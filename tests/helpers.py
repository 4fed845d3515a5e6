"""Float64 references and a finite-difference gradient check, shared by the tests."""
import numpy as np


def f32(x):
    """The float32 values the device sees, as float64 for the reference."""
    return np.asarray(x, np.float32).astype(np.float64)


def sigmoid64(x):
    return 1.0 / (1.0 + np.exp(-x))


def finite_difference_gradients(g, fn, arrays, eps=1e-2):
    """Central differences of the scalar `fn(*tensors)` evaluated on the device, one element at a time."""
    grads = []
    for i, base in enumerate(arrays):
        grad = np.zeros(base.shape)
        for idx in np.ndindex(base.shape):
            values = []
            for step in (eps, -eps):
                moved = [a.copy() for a in arrays]
                moved[i][idx] += step
                values.append(fn(*[g.tensor(a) for a in moved]).item())
            grad[idx] = (values[0] - values[1]) / (2 * eps)
        grads.append(grad)
    return grads


def device_gradients(g, fn, arrays):
    tensors = [g.tensor(a, requires_grad=True) for a in arrays]
    g.backward(fn(*tensors))
    return [t.grad.numpy().astype(np.float64) for t in tensors]
