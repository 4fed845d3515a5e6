"""Losses. MSE and L1 are composed from primitives and differentiated by the tape."""
from __future__ import annotations

from ..registry import Op, register


def _check_same(name, pred, target):
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred has shape {pred.shape} and target {target.shape}; they must match")


def _mse(g, pred, target):
    _check_same("mse_loss", pred, target)
    d = g.add(pred, g.neg(target))
    return g.mean_all(g.mul(d, d))


def _l1(g, pred, target):
    _check_same("l1_loss", pred, target)
    d = g.add(pred, g.neg(target))
    return g.mean_all(g.abs(d))


register(Op(
    name="mse_loss", arity=2, backward_kind="primitive autodiff", compose=_mse,
    doc="mse_loss(pred, target) -> (1,): mean((pred - target)^2), any shape, both the same. Composed as "
        "mean_all(mul(d, d)) with d = add(pred, neg(target)); the tape differentiates it: 2 d / n.",
))
register(Op(
    name="l1_loss", arity=2, backward_kind="primitive autodiff", compose=_l1,
    doc="l1_loss(pred, target) -> (1,): mean(|pred - target|), any shape, both the same. Composed as "
        "mean_all(abs(d)) with d = add(pred, neg(target)); gradient sign(d) / n, which is 0 where pred == "
        "target (PyTorch's convention for the undefined derivative of |x| at 0).",
))
