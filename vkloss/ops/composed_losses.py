"""Losses composed from primitives (neg, add, mul, abs, mean_all, sum_all) and differentiated by the primitives' rules:
no kernel of their own. fuse=True: on float32 operands the composition and the gradient its rules give run as one
generated kernel and a tree sum (vkloss/fusion.py); Graph(fuse=False) runs them op by op, as the tape records them."""
from __future__ import annotations

from ..implementations import Composed
from ..registry import register_op


def _check_same(name, pred, target):
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred has shape {pred.shape} and target {target.shape}; they must match")


def _reduce(g, values, reduction):
    return g.mean_all(values) if reduction == "mean" else g.sum_all(values) if reduction == "sum" else values


def _mse(g, pred, target, reduction):
    _check_same("mse_loss", pred, target)
    d = g.add(pred, g.neg(target))
    return _reduce(g, g.mul(d, d), reduction)


def _l1(g, pred, target, reduction):
    _check_same("l1_loss", pred, target)
    d = g.add(pred, g.neg(target))
    return _reduce(g, g.abs(d), reduction)


register_op(
    "mse_loss(Tensor pred, Tensor target, *, str{mean|sum|none} reduction='mean') -> Tensor",
    Composed(_mse, fuse=True),
    doc="(1,), or pred's shape for reduction='none': (pred - target)^2, averaged (mean) or summed (sum); any shape, "
        "both the same. Composed as mean_all (or sum_all) of mul(d, d) with d = add(pred, neg(target)), "
        "differentiated by those ops' rules: 2 d (/ n for a mean). Fused: one generated kernel and a tree sum.",
)
register_op(
    "l1_loss(Tensor pred, Tensor target, *, str{mean|sum|none} reduction='mean') -> Tensor",
    Composed(_l1, fuse=True),
    doc="(1,), or pred's shape for reduction='none': |pred - target|, averaged (mean) or summed (sum); any shape, "
        "both the same. Composed as mean_all (or sum_all) of abs(d) with d = add(pred, neg(target)); gradient "
        "sign(d) (/ n for a mean), which is 0 where pred == target (PyTorch's convention for the undefined "
        "derivative of |x| at 0). Fused: one generated kernel and a tree sum.",
)
