"""The tape: composed chains, accumulation, which tensors get gradients, and its errors."""
import numpy as np
import pytest

import vkloss

from helpers import device_gradients, f32


def test_composed_chain_mean_of_d_times_abs_d(g, rng):
    x, y = f32(rng.standard_normal((16, 9))), f32(rng.standard_normal((16, 9)))
    d = x - y
    tx, ty = g.tensor(x, requires_grad=True), g.tensor(y, requires_grad=True)
    dt = g.add(tx, g.neg(ty))
    loss = g.mean_all(g.mul(dt, g.abs(dt)))
    assert loss.item() == pytest.approx(np.mean(d * np.abs(d)), rel=1e-5)
    g.backward(loss)
    np.testing.assert_allclose(tx.grad.numpy(), 2 * np.abs(d) / d.size, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ty.grad.numpy(), -2 * np.abs(d) / d.size, rtol=1e-5, atol=1e-9)


def test_tensor_used_twice_gets_the_sum_of_its_gradients(g, rng):
    x = f32(rng.standard_normal(50))
    (grad,) = device_gradients(g, lambda t: g.mean_all(g.add(g.mul(t, t), t)), [x])
    np.testing.assert_allclose(grad, (2 * x + 1) / x.size, rtol=1e-5, atol=1e-9)


def test_diamond_graph_accumulates_through_both_paths(g, rng):
    x = f32(rng.uniform(0.5, 2.0, 20))
    # s = sigmoid(x) feeds both a mul and an add
    (grad,) = device_gradients(g, lambda t: g.mean_all(g.mul(g.sigmoid(t), g.add(g.sigmoid(t), t))), [x])
    s = 1 / (1 + np.exp(-x))
    ds = s * (1 - s)
    np.testing.assert_allclose(grad, (ds * (s + x) + s * (ds + 1)) / x.size, rtol=1e-5, atol=1e-9)


def test_grad_accumulates_across_backward_calls_like_pytorch(g, rng):
    x = f32(rng.standard_normal(8))
    t = g.tensor(x, requires_grad=True)
    g.backward(g.mean_all(t))
    g.backward(g.mean_all(g.mul(t, t)))
    np.testing.assert_allclose(t.grad.numpy(), 1 / 8 + 2 * x / 8, rtol=1e-5)


def test_no_gradient_for_tensors_that_do_not_require_one(g, rng):
    x, y = g.tensor(rng.standard_normal(5), requires_grad=True), g.tensor(rng.standard_normal(5))
    loss = g.mse_loss(x, y)
    g.backward(loss)
    assert y.grad is None and not y.requires_grad
    assert x.grad is not None
    neg_y = g.neg(y)
    assert not neg_y.requires_grad and neg_y.node is None


def test_backward_rejects_a_non_scalar_root(g):
    x = g.tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(ValueError, match=r"shape \(1,\).*\(2, 2\)"):
        g.backward(g.mul(x, x))


def test_backward_rejects_a_root_without_gradient(g):
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        g.backward(g.mean_all(g.tensor(np.ones(3))))


def test_second_backward_through_a_freed_tape_is_an_error(g):
    x = g.tensor(np.ones(3), requires_grad=True)
    loss = g.mean_all(g.mul(x, x))
    g.backward(loss)
    with pytest.raises(RuntimeError, match="already used and freed"):
        g.backward(loss)


def test_loss_backward_method(g, rng):
    x = g.tensor(rng.standard_normal(4), requires_grad=True)
    g.mean_all(x).backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full(4, 0.25))


def test_leaf_root_gets_gradient_one(g):
    x = g.tensor([2.0], requires_grad=True)
    g.backward(x)
    assert x.grad.item() == 1.0


def test_no_grad_records_no_tape(g):
    x = g.tensor(np.ones(3), requires_grad=True)
    with g.no_grad():
        y = g.mul(x, x)
    assert not y.requires_grad


def test_tensors_from_two_graphs_are_refused(g):
    import vkloss

    with vkloss.Graph() as other:
        with pytest.raises(ValueError, match="another Graph"):
            g.add(g.tensor(np.ones(2)), other.tensor(np.ones(2)))


def test_the_seed_one_is_shared_by_backward_passes_but_never_handed_out(g, rng):
    """backward seeds every pass with the same device tensor 1; a gradient that is that seed unchanged (the loss is
    the leaf, or identity rules pass it down) is a copy, so writing into it cannot change later passes."""
    p, q = g.parameter(np.array([2.0])), g.parameter(np.array([3.0]))
    g.backward(p)
    g.backward(g.add(p, q))
    assert p.grad.item() == 2.0 and q.grad.item() == 1.0
    p.grad.copy_(np.array([50.0]))
    q.grad.copy_(np.array([70.0]))
    x = g.parameter(rng.standard_normal(4))
    g.backward(g.mean_all(g.mul(x, x)))  # d/dx mean(x^2) = 2x / 4: needs the seed to be 1
    np.testing.assert_allclose(x.grad.numpy(), x.numpy() / 2, rtol=1e-6)
    r = g.parameter(np.array([1.0]))
    g.backward(r)
    assert r.grad.item() == 1.0


# sum_rows and matmul_transposed were public and not differentiable: put through a loss, they gave x a wrong
# gradient (1/6 where PyTorch gives 1/2) or W none at all, without a word
def test_sum_rows_is_differentiable(g, rng):
    x = f32(rng.standard_normal((6, 5)))
    (grad,) = device_gradients(g, lambda t: g.mean_all(g.sum_rows(t)), [x])
    np.testing.assert_allclose(grad, np.full(x.shape, 1 / 5), rtol=1e-6)  # d mean_j sum_i x_ij / d x = 1/n


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False), (True, True)])
def test_matmul_transposed_is_differentiable(g, rng, trans_a, trans_b):
    a = f32(rng.standard_normal((7, 5) if trans_a else (5, 7)))
    b = f32(rng.standard_normal((3, 7) if trans_b else (7, 3)))
    u = f32(rng.standard_normal((5, 3)))  # d sum(u * C) / dC = u
    op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
    grad_a, grad_b = device_gradients(g, lambda ta, tb: g.sum(g.mul(
        g.matmul_transposed(ta, tb, trans_a=trans_a, trans_b=trans_b), g.tensor(u))), [a, b])
    want_a, want_b = u @ op_b.T, op_a.T @ u
    np.testing.assert_allclose(grad_a, want_a.T if trans_a else want_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_b, want_b.T if trans_b else want_b, rtol=1e-5, atol=1e-6)


def test_backward_through_an_op_without_a_gradient_raises_naming_it(g, rng):
    x = g.tensor(f32(rng.standard_normal((4, 3))), requires_grad=True)
    loss = g.mean_all(g.ops.relu_backward(g.tensor(np.ones((4, 3))), x))
    with pytest.raises(RuntimeError, match=r"backward reached g.ops.relu_backward, which is not differentiable.*"
                                           r"\(4, 3\)"):
        g.backward(loss)
    with g.no_grad():  # what a step computes for itself needs no gradient
        assert g.mean_all(g.ops.relu_backward(g.tensor(np.ones((4, 3))), x)).item() >= 0
    assert g.add(g.tensor([1.0]), g.tensor([2.0])).item() == 3.0


# ---- a second backward through a freed graph --------------------------------------------------------------------
def two_heads(g, rng):
    w = g.parameter(rng.standard_normal((4, 3)))
    x = g.tensor(rng.standard_normal((5, 4)))
    h = g.matmul(x, w)
    return w, x, h, g.mean_all(g.mul(h, h)), g.sum_all(h)


def test_a_second_backward_through_a_freed_trunk_raises_and_names_the_fixes(g, rng):
    w, x, h, l1, l2 = two_heads(g, rng)
    l1.backward()
    with pytest.raises(RuntimeError, match=r"second time.*g\.add\(loss1, loss2\).*retain_graph=True"):
        l2.backward()
    with pytest.raises(RuntimeError, match="second time"):  # a new loss from the freed trunk too
        g.backward(g.sum_all(g.mul(h, h)))
    assert g.add(g.tensor([1.0]), g.tensor([2.0])).item() == 3.0


def test_retain_graph_gives_both_heads_their_share(g, rng):
    w, x, h, l1, l2 = two_heads(g, rng)
    g.backward(l1, retain_graph=True)
    l2.backward()
    x64, w64 = f32(x.numpy()), f32(w.numpy())
    h64 = x64 @ w64
    want = x64.T @ (2 * h64 / h64.size) + x64.T @ np.ones_like(h64)
    np.testing.assert_allclose(w.grad.numpy(), want, rtol=1e-5, atol=1e-6)


# ---- in-place changes of what backward needs ----------------------------------------------------------------
def test_copy_into_an_input_backward_still_needs_raises(g, rng):
    w = g.parameter(rng.standard_normal((4, 3)))
    x = g.tensor(rng.standard_normal((5, 4)))
    loss = g.mse_loss(g.matmul(x, w), g.tensor(np.zeros((5, 3))))
    x.copy_(rng.standard_normal((5, 4)))  # prefetching the next batch before backward
    with pytest.raises(RuntimeError, match=r"modified in place.*version 1, expected 0"):
        g.backward(loss)
    assert g.add(g.tensor([1.0]), g.tensor([2.0])).item() == 3.0


def test_an_optimizer_step_before_a_pending_backward_raises(g, rng):
    w = g.parameter(rng.standard_normal((4, 3)))
    x = g.parameter(rng.standard_normal((5, 4)))  # its gradient, x.grad = grad @ w.T, needs w
    opt = vkloss.optim.SGD([w], lr=0.1)
    first = g.mse_loss(g.matmul(x, w), g.tensor(np.zeros((5, 3))))
    second = g.mse_loss(g.matmul(x, w), g.tensor(np.ones((5, 3))))
    g.backward(first)
    opt.step()  # w changes in place; second's backward needs the old w
    with pytest.raises(RuntimeError, match="modified in place"):
        g.backward(second)


def test_copy_into_an_input_whose_op_does_not_need_it_is_fine(g):
    x = g.tensor([1.0, 2.0])
    w = g.parameter([3.0, 4.0])
    loss = g.sum_all(g.add(w, x))  # add's gradient does not read x
    x.copy_([5.0, 6.0])
    g.backward(loss)
    np.testing.assert_array_equal(w.grad.numpy(), [1.0, 1.0])
