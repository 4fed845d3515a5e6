"""Composed ops that fuse (vkloss/fusion.py): mse_loss and l1_loss, and a user's composition, run as one generated
kernel whose values and gradients are the ones the primitives' rules give op by op (Graph(fuse=False)), and the
float64 ones; compositions that do not fuse run op by op."""
import itertools

import numpy as np
import pytest

import vkloss
from helpers import f32

_names = itertools.count()


def loss_and_grads(g, name, p, t, needs=(True, True), upstream=None, **options):
    P, T = g.tensor(p, requires_grad=needs[0]), g.tensor(t, requires_grad=needs[1])
    loss = getattr(g, name)(P, T, **options)
    root = loss if upstream is None else g.sum_all(g.mul(loss, g.tensor(upstream)))
    g.backward(root)
    return loss.numpy(), *(X.grad.numpy() if need else None for X, need in zip((P, T), needs))


def reference(name, p, t, reduction, upstream=None):
    d = f32(p) - f32(t)
    terms, grad = (d * d, 2 * d) if name == "mse_loss" else (np.abs(d), np.sign(d))
    if reduction == "none":
        return terms, grad * (1.0 if upstream is None else f32(upstream))
    scale = 1.0 / d.size if reduction == "mean" else 1.0
    return np.array([terms.sum() * scale]), grad * scale * (1.0 if upstream is None else f32(upstream)[0])


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (2, 3, 4), (100_003,)])
def test_fused_losses_match_the_tape_and_float64(rng, name, reduction, shape):
    p, t = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    t.reshape(-1)[0] = p.reshape(-1)[0]  # a zero difference: l1's gradient 0 there, as PyTorch's
    upstream = rng.standard_normal(shape if reduction == "none" else (1,)).astype(np.float32)
    with vkloss.Graph() as fused, vkloss.Graph(fuse=False) as composed:
        got = loss_and_grads(fused, name, p, t, upstream=upstream, reduction=reduction)
        tape = loss_and_grads(composed, name, p, t, upstream=upstream, reduction=reduction)
    value, grad = reference(name, p, t, reduction, upstream)
    for a, b in zip(got, tape):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7 / p.size)
    np.testing.assert_allclose(got[0], value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got[2], -grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name, unfused", [("mse_loss", 8), ("l1_loss", 6)])
def test_a_fused_loss_and_its_gradient_are_two_dispatches(rng, name, unfused):
    """One kernel writes the per-element values and the gradients, one tree sum gives the loss; backward from the
    loss hands the saved gradients on. The tape ran neg, add, mul (or abs), the sum, and their rules."""
    p, t = rng.standard_normal(50).astype(np.float32), rng.standard_normal(50).astype(np.float32)
    for fuse, count in ((True, 2), (False, unfused)):
        with vkloss.Graph(fuse=fuse) as g:
            P = g.tensor(p, requires_grad=True)
            T = g.tensor(t)
            g.flush()
            before = g.stats["dispatches"]
            g.backward(getattr(g, name)(P, T))
            P.grad.numpy()
            assert g.stats["dispatches"] - before == count


def test_nan_and_infinity_flow_through_a_fused_loss_as_through_the_tape(rng):
    p = np.array([1.0, np.nan, 3.0, np.inf], np.float32)
    t = np.array([0.5, 0.0, np.inf, 1.0], np.float32)
    with vkloss.Graph() as fused, vkloss.Graph(fuse=False) as composed:
        for name in ("mse_loss", "l1_loss"):
            got = loss_and_grads(fused, name, p, t, upstream=np.ones(4, np.float32), reduction="none")
            tape = loss_and_grads(composed, name, p, t, upstream=np.ones(4, np.float32), reduction="none")
            for a, b in zip(got, tape):
                np.testing.assert_array_equal(a, b)


def compose_logcosh(g, pred, target):
    """log(cosh(d)) written with the primitives: d + log(1 + exp(-2 d)) - log 2, meaned."""
    d = g.sub(pred, target)
    return g.mean_all(g.shift(g.add(d, g.log(g.shift(g.exp(g.scale(d, s=-2.0)), s=1.0))), s=-float(np.log(2.0))))


def compose_with_a_product(g, pred, target):
    return g.mean_all(g.matmul(pred, g.transpose(target, dim0=0, dim1=1)))  # not elementwise: runs op by op


@pytest.mark.parametrize("compose, fuses", [(compose_logcosh, True), (compose_with_a_product, False)])
def test_a_users_composition_fuses_where_it_is_elementwise(rng, compose, fuses):
    name = f"user_loss_{next(_names)}"
    vkloss.register_op(f"{name}(Tensor pred, Tensor target) -> Tensor", vkloss.Composed(compose, fuse=True))
    try:
        p, t = rng.standard_normal((4, 4)).astype(np.float32), rng.standard_normal((4, 4)).astype(np.float32)
        with vkloss.Graph() as fused, vkloss.Graph(fuse=False) as composed:
            P, T = fused.tensor(p, requires_grad=True), fused.tensor(t)
            fused.flush()
            before = fused.stats["dispatches"]
            loss = getattr(fused, name)(P, T)
            fused.backward(loss)
            got = loss.item(), P.grad.numpy()
            assert (fused.stats["dispatches"] - before == 2) == fuses
            P2 = composed.tensor(p, requires_grad=True)
            loss2 = getattr(composed, name)(P2, composed.tensor(t))
            composed.backward(loss2)
            want = loss2.item(), P2.grad.numpy()
        assert got[0] == pytest.approx(want[0], rel=1e-6)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-8)
        if compose is compose_logcosh:
            d = f32(p) - f32(t)
            assert got[0] == pytest.approx(np.mean(np.log(np.cosh(d))), rel=1e-5)
            np.testing.assert_allclose(got[1], np.tanh(d) / d.size, rtol=1e-4, atol=1e-7)
    finally:
        vkloss.registry.unregister_op(name)


def test_a_shape_mismatch_names_both_shapes_before_anything_is_traced(g):
    with pytest.raises(ValueError, match=r"mse_loss.*\(3, 4\).*\(4, 3\)"):
        g.mse_loss(g.tensor(np.ones((3, 4))), g.tensor(np.ones((4, 3))))
