"""matmul, the broadcast bias add, relu and the optimizers: against float64 numpy, PyTorch where installed, and
finite differences."""
import numpy as np
import pytest

import vkloss
from helpers import adam64, device_gradients, f32

try:
    import torch
except ImportError:
    torch = None


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (3, 5, 2), (64, 64, 10), (7, 130_001, 3)])
def test_matmul_forward_and_gradients(g, rng, m, k, n):
    a, b, w = (f32(rng.standard_normal(s)) for s in ((m, k), (k, n), (m, n)))
    out = g.matmul(g.tensor(a), g.tensor(b))
    assert out.shape == (m, n)
    np.testing.assert_allclose(out.numpy(), a @ b, rtol=1e-5, atol=1e-5 * np.sqrt(k))
    ga, gb = device_gradients(g, lambda ta, tb: g.mean_all(g.mul(g.matmul(ta, tb), g.tensor(w))), [a, b])
    for got, want in ((ga, (w / w.size) @ b.T), (gb, a.T @ (w / w.size))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_bias_add_broadcasts_and_sums_its_gradient_over_the_batch(g, rng):
    x, bias, w = f32(rng.standard_normal((6, 4))), f32(rng.standard_normal(4)), f32(rng.standard_normal((6, 4)))
    np.testing.assert_allclose(g.add(g.tensor(x), g.tensor(bias)).numpy(), x + bias, rtol=1e-6)
    gx, gb = device_gradients(g, lambda tx, tb: g.mean_all(g.mul(g.add(tx, tb), g.tensor(w))), [x, bias])
    np.testing.assert_allclose(gx, w / w.size, rtol=1e-6)
    np.testing.assert_allclose(gb, w.sum(axis=0) / w.size, rtol=1e-5)


def test_relu_forward_and_gradient_zero_at_zero(g):
    x = np.array([-2.0, -0.0, 0.0, 0.5, 3.0], np.float32)
    np.testing.assert_array_equal(g.relu(g.tensor(x)).numpy(), np.maximum(x, 0))
    (grad,) = device_gradients(g, lambda t: g.sum_all(g.relu(t)), [x])
    np.testing.assert_array_equal(grad, [0.0, 0.0, 0.0, 1.0, 1.0])


@pytest.mark.parametrize("a, b", [((2, 3), (2, 3, 1)), ((2, 3), (2, 4)), ((3,), (3, 1)), ((2, 3), (4, 5))])
def test_matmul_shape_errors_name_both_shapes(g, a, b):
    with pytest.raises(ValueError, match=rf"matmul.*{a[0]}.*{b[0]}"):
        g.matmul(g.tensor(np.ones(a)), g.tensor(np.ones(b)))


@pytest.mark.parametrize("a, b", [((2, 3), (2,)), ((3,), (2, 3)), ((2, 3), (1, 3))])
def test_add_refuses_other_broadcasts(g, a, b):
    with pytest.raises(ValueError, match="add: shapes"):
        g.add(g.tensor(np.ones(a)), g.tensor(np.ones(b)))


def make_problem(rng):
    return (rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((8, 5)).astype(np.float32),
            rng.standard_normal((8, 3)).astype(np.float32))


def test_adam_counts_steps_per_parameter_as_pytorch_does(g, rng):
    # b gets no gradient in the first two steps: it is not updated then, and its bias correction starts at step 1
    a0, b0 = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    a, b = g.parameter(a0), g.parameter(b0)
    opt = vkloss.optim.Adam([a, b], lr=0.1)
    grads = []
    for step in range(5):
        opt.zero_grad()
        loss = g.sum_all(g.mul(a, a))
        if step >= 2:
            loss = g.add(loss, g.sum_all(g.mul(b, b)))
        grads.append([2 * f32(a.numpy()), 2 * f32(b.numpy()) if step >= 2 else None])
        g.backward(loss)
        opt.step()
    want_a, want_b = adam64([a0, b0], grads)
    np.testing.assert_allclose(a.numpy(), want_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), want_b, rtol=1e-5, atol=1e-6)
    if torch is not None:
        ta, tb = torch.tensor(f32(a0), requires_grad=True), torch.tensor(f32(b0), requires_grad=True)
        topt = torch.optim.Adam([ta, tb], lr=0.1)
        for step in range(5):
            topt.zero_grad()
            ((ta * ta).sum() + ((tb * tb).sum() if step >= 2 else 0)).backward()
            topt.step()
        np.testing.assert_allclose(b.numpy(), tb.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("name", ["sgd", "sgd_momentum", "adam"])
def test_optimizers_follow_pytorch(g, rng, name):
    w0, x, y = make_problem(rng)
    make = {"sgd": (lambda p: vkloss.optim.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
            "sgd_momentum": (lambda p: vkloss.optim.SGD(p, lr=0.1, momentum=0.9),
                             lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
            "adam": (lambda p: vkloss.optim.Adam(p, lr=0.05), lambda p: torch.optim.Adam(p, lr=0.05))}[name]
    w = g.parameter(w0)
    buffer = w.buffer
    opt = make[0]([w])
    tw = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    topt = make[1]([tw])
    tx, ty = g.tensor(x), g.tensor(y)
    for _ in range(15):
        opt.zero_grad()
        g.backward(g.mse_loss(g.matmul(tx, w), ty))
        opt.step()
        topt.zero_grad()
        ((torch.tensor(x, dtype=torch.float64) @ tw - torch.tensor(y, dtype=torch.float64)) ** 2).mean().backward()
        topt.step()
    assert w.buffer is buffer  # updated in place
    np.testing.assert_allclose(w.numpy(), tw.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_optimizer_argument_errors(g):
    w = g.parameter(np.ones(3))
    with pytest.raises(ValueError, match="requires_grad=True"):
        vkloss.optim.SGD([g.tensor(np.ones(3))])
    with pytest.raises(ValueError, match="lr must be positive"):
        vkloss.optim.Adam([w], lr=0)
    with pytest.raises(ValueError, match="momentum"):
        vkloss.optim.SGD([w], momentum=1.5)
    with pytest.raises(ValueError, match="no parameters"):
        vkloss.optim.Adam([])
    # a 16-bit parameter (its gradient comes back 16-bit from cross-entropy) would be read as float32: refused
    half = g.tensor(np.ones((2, 4)), dtype="bfloat16", requires_grad=True)
    with pytest.raises(TypeError, match=r"SGD: parameter 1, of shape \(2, 4\), is bfloat16; optimizers update float32"):
        vkloss.optim.SGD([w, half], lr=0.1)
    w.grad = None
    vkloss.optim.SGD([w], lr=0.1).step()  # the Graph and the parameter still work


def test_copy_refills_a_tensor_in_place(g):
    t = g.tensor(np.zeros((2, 2)))
    buffer = t.buffer
    doubled = g.add(t, t)
    t.copy_(np.ones((2, 2)))
    np.testing.assert_array_equal(doubled.numpy(), np.zeros((2, 2)))  # recorded before the copy: old values
    np.testing.assert_array_equal(g.add(t, t).numpy(), np.full((2, 2), 2.0))
    assert t.buffer is buffer
    with pytest.raises(ValueError, match=r"copy_: data of shape \(3,\) into a tensor of shape \(2, 2\)"):
        t.copy_(np.ones(3))


@pytest.mark.parametrize("make, says", [
    (lambda p: vkloss.optim.Adam(p, eps=-1), "eps"), (lambda p: vkloss.optim.Adam(p, eps=float("nan")), "eps"),
    (lambda p: vkloss.optim.Adam(p, lr=float("nan")), "lr"), (lambda p: vkloss.optim.Adam(p, lr=float("inf")), "lr"),
    (lambda p: vkloss.optim.Adam(p, betas=(1.0, 0.9)), "betas"), (lambda p: vkloss.optim.SGD(p, momentum=-0.1), "momentum"),
])
def test_nonsense_hyperparameters_are_refused(g, make, says):
    with pytest.raises(ValueError, match=says):
        make([g.parameter([1.0])])
