"""A user-defined op, registered from outside vkloss: Huber loss (smooth L1).

Importing this module declares three ops on every vkloss Graph:
  g.huber(pred, target, delta=1.0)          elementwise Huber terms: one kernel, huber.comp's forward
  g.ops.huber_backward(grad, pred, ...)     its gradient: one kernel, huber.comp's backward (internal: no
                                            Graph method, since backward rules alone call it)
  g.huber_loss(pred, target, delta=1.0)     mean_all(huber(...)), PyTorch's F.huber_loss
The tools see them with `python -m vkloss.tools --import huber list` (run from this folder).
"""
import math
from pathlib import Path

import vkloss

SHADER = str(Path(__file__).resolve().parent / "huber.comp")


def same_shape(pred, target, *rest, delta=1.0):
    if pred != target or any(shape != pred for shape in rest):
        raise ValueError(f"huber: shapes {pred}, {target}{''.join(f', {s}' for s in rest)} must match")
    if not delta > 0:
        raise ValueError(f"huber: delta must be positive, got {delta}")
    return pred


def push(pred, *rest, delta=1.0):
    return [math.prod(pred), float(delta)]  # matches huber.comp's push-constant block: uint n; float delta


def huber_backward(ctx, grad):
    pred, target = ctx.inputs
    grad_pred = ctx.g.ops.huber_backward(grad, pred, target, delta=ctx.attrs.get("delta", 1.0))
    return grad_pred, (ctx.g.neg(grad_pred) if ctx.needs[1] else None)


vkloss.register_op("huber(Tensor pred, Tensor target, *, float delta=1.0) -> Tensor",
                   vkloss.UserShader(SHADER, defines={"MODE_FORWARD": 1}, shape=same_shape, push=push,
                                     backward=huber_backward),
                   doc="Per-element Huber terms, the shape of pred.")
vkloss.register_op("huber_backward(Tensor grad, Tensor pred, Tensor target, *, float delta=1.0) -> Tensor",
                   vkloss.UserShader(SHADER, defines={"MODE_BACKWARD": 1},
                                     shape=lambda grad, pred, target, delta: same_shape(pred, target, grad,
                                                                                          delta=delta),
                                     push=lambda grad, pred, target, delta: push(pred, delta=delta)),
                   doc="grad * d huber / d pred.", internal=True)
vkloss.register_op("huber_loss(Tensor pred, Tensor target, *, float delta=1.0) -> Tensor",
                   vkloss.Composed(lambda g, pred, target, delta: g.mean_all(g.huber(pred, target, delta=delta))),
                   doc="(1,): the mean Huber term, PyTorch's F.huber_loss.")
