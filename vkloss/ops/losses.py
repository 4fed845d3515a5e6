"""Losses. Cross-entropy and binary cross-entropy are fused kernels that compute the loss and its gradient in one
pass; MSE and L1 are composed from primitives and differentiated by the tape."""
from __future__ import annotations

import math

from .. import shaders
from ..engine import WORKGROUP
from ..registry import FusedResult, register_op
from .reductions import tree_sum

CE_SHADER, BCE_SHADER = "cross_entropy.comp", "bce.comp"
CE_SMALL = {want: shaders.variant(CE_SHADER, MODE_SMALL=1, WRITE_GRAD=int(want)) for want in (False, True)}
CE_ROW = {(want, vec4): shaders.variant(CE_SHADER, MODE_ROW=1, WRITE_GRAD=int(want), VEC4=int(vec4))
          for want in (False, True) for vec4 in (False, True)}
CE_STATS = shaders.variant(CE_SHADER, MODE_STATS=1)
CE_COMBINE = shaders.variant(CE_SHADER, MODE_COMBINE=1)
CE_GRAD = shaders.variant(CE_SHADER, MODE_GRAD=1)
BCE = {(want, vec4): shaders.variant(BCE_SHADER, WRITE_GRAD=int(want), VEC4=int(vec4))
       for want in (False, True) for vec4 in (False, True)}

SMALL_ROW = 64  # classes up to which one invocation handles a whole row
ROW_LIMIT = 1 << 18  # classes up to which one workgroup handles a row: at most 2 passes x 2^18 / 32 iterations
CHUNK = 64 * WORKGROUP  # classes one workgroup reduces in the chunked path: 64 loop iterations per invocation
BCE_ITEMS = 16  # loop iterations per invocation in bce.comp


def _check_same(name, pred, target):
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred has shape {pred.shape} and target {target.shape}; they must match")


# ---- cross-entropy ---------------------------------------------------------------------------------------------
def _ce_shape(pred, target):
    if len(pred) != 2 or pred != target:
        raise ValueError(f"cross_entropy_loss: needs logits and a target of one shape [batch, classes]; "
                         f"got pred {pred} and target {target}")
    return (1,)


def _ce_forward(engine, inputs, out, shapes, want_grad):
    pred, target = inputs
    rows, classes = shapes[0]
    grad = engine.alloc(rows * classes) if want_grad else None
    row_loss = engine.alloc(rows)
    if classes <= SMALL_ROW:
        push = [rows, classes, 1, classes, 1.0 / rows]
        engine.dispatch(CE_SMALL[want_grad], [pred, target], [row_loss] + ([grad] if want_grad else []), push,
                        engine.groups_for(rows))
    elif classes <= ROW_LIMIT:
        vec4 = classes % 4 == 0  # rows start on 16-byte boundaries: load four classes at a time
        push = [rows, classes, 1, classes, 1.0 / rows]
        workgroup = engine.reduction_workgroup(classes // 4 if vec4 else classes, classes * 8)
        engine.dispatch(CE_ROW[want_grad, vec4], [pred, target], [row_loss] + ([grad] if want_grad else []), push,
                        engine.grid(rows), workgroup=workgroup)
    else:
        chunks = -(-classes // CHUNK)
        chunk = -(-classes // (chunks * WORKGROUP)) * WORKGROUP  # even chunks, whole workgroups each
        push = [rows, classes, chunks, chunk, 1.0 / rows]
        partials = engine.alloc(rows * chunks * 4)
        row_stats = engine.alloc(rows * 4)
        engine.dispatch(CE_STATS, [pred, target], [partials], push, engine.grid(rows * chunks))
        engine.dispatch(CE_COMBINE, [partials], [row_loss, row_stats], push, engine.groups_for(rows))
        if want_grad:
            engine.dispatch(CE_GRAD, [pred, target, row_stats], [grad], push, engine.groups_for(rows * classes))
    tree_sum(engine, row_loss, rows, out, 1.0 / rows)
    return FusedResult(grad=grad)


def _scaled_saved_grad(ctx, grad):
    """A fused loss's backward: its saved gradient, times the upstream gradient unless that is the seed 1."""
    return (ctx.saved if ctx.upstream_is_one else ctx.g.mul_scalar(ctx.saved, grad)), None


register_op(
    "cross_entropy_loss", CE_STATS, inputs=2, fused=True,
    doc="cross_entropy_loss(pred, target) -> (1,): pred are logits [batch, classes], target a distribution of the "
        "same shape (one-hot or soft; rows need not sum to 1). The mean over rows of -sum_c target * "
        "log_softmax(pred), PyTorch's F.cross_entropy with probability targets. One fused kernel family computes "
        "the loss and d/dpred = (softmax(pred) * sum_c target - target) / batch in the same pass (log-sum-exp "
        "relative to the row maximum); backward scales that. No gradient with respect to target.",
    shape=_ce_shape, forward=_ce_forward, backward=_scaled_saved_grad,
    variants=lambda: [*CE_SMALL.values(), *CE_ROW.values(), CE_STATS, CE_COMBINE, CE_GRAD],
)


# ---- binary cross-entropy --------------------------------------------------------------------------------------
def _bce_shape(pred, labels):
    if pred != labels:
        raise ValueError(f"bce_loss: pred has shape {pred} and labels {labels}; they must match")
    return (1,)


def _bce_forward(engine, inputs, out, shapes, want_grad):
    pred, labels = inputs
    n = math.prod(shapes[0])
    vec4 = n % 4 == 0
    per_invocation = BCE_ITEMS * (4 if vec4 else 1)
    workgroup = engine.reduction_workgroup(per_invocation * WORKGROUP, per_invocation * WORKGROUP * 12)
    per_workgroup = per_invocation * workgroup
    groups = -(-n // per_workgroup)
    loss_partials, bad_partials = engine.alloc(groups), engine.alloc(groups)
    grad = engine.alloc(n) if want_grad else None
    engine.dispatch(BCE[want_grad, vec4], [pred, labels], [loss_partials, bad_partials] + ([grad] if want_grad else []),
                    [n, 1.0 / n, per_workgroup], engine.grid(groups), workgroup=workgroup)
    tree_sum(engine, loss_partials, groups, out, 1.0 / n)
    bad = engine.alloc(1)
    tree_sum(engine, bad_partials, groups, bad, 1.0)
    message = (f"bce_loss: {{count}} values of pred or labels (shape {shapes[0]}) lie outside [0, 1] or are NaN; "
               "pred must be probabilities (apply g.sigmoid to logits) and labels in [0, 1]")
    return FusedResult(grad=grad, checks=[(bad, message)])


register_op(
    "bce_loss", BCE[True, False], inputs=2, fused=True,
    doc="bce_loss(pred, labels) -> (1,): pred in (0, 1) (apply g.sigmoid to logits first), labels in [0, 1], one "
        "shape of any rank. The mean of -(y log p + (1 - y) log(1 - p)) with each log clamped at -100, PyTorch's "
        "F.binary_cross_entropy. One fused kernel computes the loss and d/dpred = (p - y) / max(p (1 - p), 1e-12) "
        "/ n in the same pass; backward scales that. Values outside [0, 1] (or NaN), counted on the device, raise "
        "ValueError at the next host read. No gradient with respect to labels.",
    shape=_bce_shape, forward=_bce_forward, backward=_scaled_saved_grad,
    variants=lambda: [*BCE.values()],
)


# ---- composed from primitives ----------------------------------------------------------------------------------
def _mse(g, pred, target):
    _check_same("mse_loss", pred, target)
    d = g.add(pred, g.neg(target))
    return g.mean_all(g.mul(d, d))


def _l1(g, pred, target):
    _check_same("l1_loss", pred, target)
    d = g.add(pred, g.neg(target))
    return g.mean_all(g.abs(d))


register_op(
    "mse_loss", inputs=2, compose=_mse,
    doc="mse_loss(pred, target) -> (1,): mean((pred - target)^2), any shape, both the same. Composed as "
        "mean_all(mul(d, d)) with d = add(pred, neg(target)); the tape differentiates it: 2 d / n.",
)
register_op(
    "l1_loss", inputs=2, compose=_l1,
    doc="l1_loss(pred, target) -> (1,): mean(|pred - target|), any shape, both the same. Composed as "
        "mean_all(abs(d)) with d = add(pred, neg(target)); gradient sign(d) / n, which is 0 where pred == "
        "target (PyTorch's convention for the undefined derivative of |x| at 0).",
)
