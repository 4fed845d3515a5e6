"""Losses. Cross-entropy and binary cross-entropy are fused kernels that compute the loss and its gradient in one
pass; MSE and L1 are composed from primitives and differentiated by the tape."""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from .. import shaders
from ..engine import WORKGROUP, ceil_div
from ..registry import FusedResult, register_op
from .reductions import tree_sum

CE_SHADER, BCE_SHADER = "cross_entropy.comp", "bce.comp"
REDUCTIONS = ("mean", "sum", "none")

SMALL_ROW = 64  # classes up to which one invocation handles a whole row
ROW_LIMIT = 1 << 18  # classes up to which one workgroup handles a row: 2 passes of at most 2^11 iterations each
                     # (engine.row_workgroup widens the workgroup to keep them there)
CHUNK = 64 * WORKGROUP  # classes one workgroup reduces in the chunked path: 64 loop iterations per invocation
BCE_ITEMS = 16  # loop iterations per invocation in bce.comp


@functools.cache
def _variant(shader: str, mode: str | None = None, **flags) -> shaders.Variant:
    """A variant of a loss shader: MODE_<mode>, and each flag that is on as its upper-case define."""
    defines = {f"MODE_{mode}": 1} if mode else {}
    defines.update({name.upper(): 1 for name, on in sorted(flags.items()) if on})
    return shaders.variant(shader, **defines)


def _ce_variants() -> list[shaders.Variant]:
    """Every cross_entropy.comp variant _ce_forward may dispatch."""
    found = []
    for index, weighted in itertools.product((False, True), repeat=2):
        target = dict(target_index=index, weighted=weighted)
        found.append(_variant(CE_SHADER, "STATS", **target))
        if index:
            found.append(_variant(CE_SHADER, "ROW_WEIGHT", **target))
        for norm in (False, True) if index else (False,):
            found.append(_variant(CE_SHADER, "COMBINE", target_index=index, norm_buffer=norm))
            for write_grad, inplace in ((False, False), (True, False), (True, True)):
                flags = dict(write_grad=write_grad, inplace=inplace, norm_buffer=norm, **target)
                found.append(_variant(CE_SHADER, "SMALL", **flags))
                found += [_variant(CE_SHADER, "ROW", vec4=vec4, **flags) for vec4 in (False, True)]
                if write_grad:
                    found.append(_variant(CE_SHADER, "GRAD", inplace=inplace, norm_buffer=norm, **target))
    return list(dict.fromkeys(found))


def _check_same(name, pred, target):
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred has shape {pred.shape} and target {target.shape}; they must match")


def _check_reduction(name, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")


# ---- cross-entropy ---------------------------------------------------------------------------------------------
def _ce_shape(pred, target, reduction="mean", weight=None, ignore_index=None, label_smoothing=0.0,
              inplace_grad=False):
    if len(pred) != 2 or (target != pred and target != pred[:1]):
        raise ValueError(f"cross_entropy_loss: needs logits [batch, classes] and a target of the same shape "
                         f"(probabilities) or of shape [batch] (class indices); got pred {pred} and target {target}")
    _check_reduction("cross_entropy_loss", reduction)
    if weight is not None and weight != pred[1:]:
        raise ValueError(f"cross_entropy_loss: weight must have shape ({pred[1]},), one per class; got {weight} "
                         f"beside pred {pred}")
    check_index_options("cross_entropy_loss", ignore_index, label_smoothing)
    if ignore_index is not None and target == pred:
        raise ValueError(f"cross_entropy_loss: ignore_index applies to class-index targets [batch]; the target "
                         f"{target} holds probabilities (as in PyTorch)")
    return (pred[0],) if reduction == "none" else (1,)


def check_index_options(name, ignore_index, label_smoothing):
    """ignore_index (None or an int32) and label_smoothing (in [0, 1]), as every cross-entropy op takes them."""
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise ValueError(f"{name}: ignore_index must be an int or None, got {ignore_index!r}")
        if not np.iinfo(np.int32).min <= ignore_index <= np.iinfo(np.int32).max:
            raise ValueError(f"{name}: ignore_index {ignore_index} does not fit int32")
    if not (isinstance(label_smoothing, (int, float, np.floating)) and 0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"{name}: label_smoothing must be a number in [0, 1], got {label_smoothing!r}")


def _ce_forward(engine, inputs, out, shapes, want_grad, reduction="mean", weight=None, ignore_index=None,
                label_smoothing=0.0, inplace_grad=False):
    pred, target = inputs
    rows, classes = shapes[0]
    index = len(shapes[1]) == 1
    if index != (target.dtype == np.int32):
        raise TypeError(f"cross_entropy_loss: a target of shape {shapes[1]} beside pred {shapes[0]} must be "
                        + ("integer class indices: an int32 tensor (g.tensor(labels, dtype=np.int32)) or an "
                           "integer numpy array" if index else "float32 probabilities, not int32"))
    inplace = want_grad and bool(inplace_grad)
    mean_over_counted = index and reduction == "mean"  # PyTorch divides by the counted rows' summed class weights
    options = dict(target_index=index, weighted=weight is not None)
    weights = [weight] if weight is not None else []
    checks, norm = [], []
    scale = 1.0 / rows if reduction == "mean" and not index else 1.0
    push = [rows, classes, 1, classes, scale, float(label_smoothing), ignore_index or 0, int(ignore_index is not None)]
    if index:
        check, normalizer = index_target_checks(engine, target, weight, push, ignore_index, mean_over_counted,
                                                f"cross_entropy_loss: {{count}} class indices of target (shape "
                                                f"{shapes[1]}) are outside {{allowed}}, beside pred {shapes[0]}")
        checks.append(check)
        norm = [normalizer] if normalizer is not None else []
    options["norm_buffer"] = bool(norm)
    row_loss = out if reduction == "none" else engine.alloc(rows)
    ins = [target, *weights, *norm] if inplace else [pred, target, *weights, *norm]
    grad = pred if inplace else engine.alloc(rows * classes) if want_grad else None
    writes = [grad] if want_grad else []
    flags = dict(write_grad=want_grad, inplace=inplace, **options)
    if classes <= SMALL_ROW:
        engine.dispatch(_variant(CE_SHADER, "SMALL", **flags), ins, [row_loss, *writes], push, engine.groups_for(rows))
    elif classes <= ROW_LIMIT:
        vec4 = classes % 4 == 0  # rows start on 16-byte boundaries: load four classes at a time
        workgroup = engine.row_workgroup(classes // 4 if vec4 else classes)
        engine.dispatch(_variant(CE_SHADER, "ROW", vec4=vec4, **flags), ins, [row_loss, *writes], push,
                        engine.grid(rows), workgroup=workgroup)
    else:
        chunks = ceil_div(classes, CHUNK)
        chunk = ceil_div(classes, chunks * WORKGROUP) * WORKGROUP  # even chunks, whole workgroups each
        push[2:4] = [chunks, chunk]
        partials = engine.alloc(rows * chunks * 4)
        row_stats = engine.alloc(rows * 4)
        engine.dispatch(_variant(CE_SHADER, "STATS", target_index=index, weighted=weight is not None),
                        [pred, target, *weights], [partials], push, engine.grid(rows * chunks))
        engine.dispatch(_variant(CE_SHADER, "COMBINE", target_index=index, norm_buffer=bool(norm)),
                        [partials, *([target] if index else []), *norm], [row_loss, row_stats], push,
                        engine.groups_for(rows))
        if want_grad:
            engine.dispatch(_variant(CE_SHADER, "GRAD", **{**flags, "write_grad": False}), ins + [row_stats], writes,
                            push, engine.groups_for(rows * classes))
    if reduction != "none":
        tree_sum(engine, row_loss, rows, out, 1.0 if norm else scale)
    return FusedResult(grad=grad, checks=checks)


def index_target_checks(engine, target, weight, push, ignore_index, want_norm: bool, message: str):
    """For class-index targets [rows] (push: cross_entropy.comp's constants, rows and classes first): the device-side
    check of indices outside [0, classes) that are not ignore_index, as (count buffer, message with {count}), and,
    with want_norm, a one-value buffer of PyTorch's mean divisor: the counted rows' summed weight[target]."""
    rows, classes = push[0], push[1]
    row_weight, bad = engine.alloc(rows), engine.alloc(rows)
    engine.dispatch(_variant(CE_SHADER, "ROW_WEIGHT", target_index=True, weighted=weight is not None),
                    [target, *([weight] if weight is not None else [])], [row_weight, bad], push,
                    engine.groups_for(rows))
    bad_count = engine.alloc(1)
    tree_sum(engine, bad, rows, bad_count, 1.0)
    allowed = f"[0, {classes})" + (f" or ignore_index {ignore_index}" if ignore_index is not None else "")
    norm = None
    if want_norm:
        norm = engine.alloc(1)
        tree_sum(engine, row_weight, rows, norm, 1.0)
    return (bad_count, message.replace("{allowed}", allowed)), norm


def _scaled_saved_grad(ctx, grad):
    """A fused loss's backward: its saved gradient, times the upstream gradient unless that is the seed 1. Upstream
    is one value for a reduced loss, one per row (CE) or per element (BCE) for reduction="none"."""
    if ctx.upstream_is_one:
        return ctx.saved, None
    if grad.shape == (1,):
        return ctx.g.mul_scalar(ctx.saved, grad), None
    if grad.shape == ctx.saved.shape:
        return ctx.g.mul(ctx.saved, grad), None
    return ctx.g.mul_rows(ctx.saved, grad), None


CE_OPTIONS = {
    "reduction": "'mean' (default) | 'sum' | 'none' ([batch])",
    "weight": "class weights [classes]: array or Tensor",
    "ignore_index": "int: rows with this class index count for nothing (index targets)",
    "label_smoothing": "float in [0, 1]",
    "inplace_grad": "bool: write the gradient over the logits (unreadable afterwards)",
}

register_op(
    "cross_entropy_loss", _variant(CE_SHADER, "STATS"), inputs=2, fused=True, options=CE_OPTIONS,
    tensor_attrs=("weight",), integer_inputs=(2,), inplace_attr="inplace_grad",
    doc="cross_entropy_loss(pred, target, *, reduction='mean', weight=None, ignore_index=None, label_smoothing=0.0, "
        "inplace_grad=False) -> (1,), or [batch] for reduction='none'. PyTorch's F.cross_entropy. pred are logits "
        "[batch, classes]; target is a distribution of the same shape (one-hot or soft; rows need not sum to 1) or "
        "class indices [batch] (an int32 Tensor or an integer numpy array, read directly by the kernel). Per row, "
        "loss = sum_c a_c (logsumexp(pred) - pred_c) with a_c = weight_c (t_c (1 - label_smoothing) + "
        "label_smoothing / classes), t the target row or the one-hot of its index; rows whose index is "
        "ignore_index count for nothing. 'mean' divides by batch for probability targets and by the summed "
        "weight[target] of the counted rows for index targets (NaN when none counts), as PyTorch does. One fused "
        "kernel family computes the loss and d/dpred = (softmax(pred) sum_c a_c - a) / that divisor in the same "
        "pass (log-sum-exp relative to the row maximum); backward scales that. inplace_grad=True writes the "
        "gradient over pred's buffer (pred must be an op's output and cannot be read afterwards), so the loss adds "
        "no buffer of pred's size. Class indices outside [0, classes) raise ValueError at the next host read. No "
        "gradient with respect to target or weight.",
    shape=_ce_shape, forward=_ce_forward, backward=_scaled_saved_grad, variants=_ce_variants,
)


# ---- binary cross-entropy --------------------------------------------------------------------------------------
def _broadcast_size(name, option, shape, pred):
    """Elements of a weight that broadcasts over pred's leading dimensions (its shape, less leading 1s, ends pred's
    shape): the kernel reads weight[i % size]."""
    trailing = tuple(shape)
    while len(trailing) > 0 and trailing[0] == 1:
        trailing = trailing[1:]
    if len(trailing) > len(pred) or tuple(pred[len(pred) - len(trailing):]) != trailing:
        raise ValueError(f"{name}: {option} of shape {shape} must match pred {pred} or its trailing dimensions "
                         f"(broadcast over the leading ones); expand other shapes first, e.g. "
                         f"np.broadcast_to({option}, {pred})")
    return math.prod(trailing)


def _bce_shape(name, pred, labels, reduction="mean", weight=None, pos_weight=None):
    if pred != labels:
        raise ValueError(f"{name}: pred has shape {pred} and labels {labels}; they must match")
    _check_reduction(name, reduction)
    for option, shape in (("weight", weight), ("pos_weight", pos_weight)):
        if shape is not None:
            _broadcast_size(name, option, shape, pred)
    return pred if reduction == "none" else (1,)


def _bce_forward(name, logits, engine, inputs, out, shapes, want_grad, reduction="mean", weight=None,
                 pos_weight=None):
    pred, labels = inputs
    n = math.prod(shapes[0])
    weights = [w for w in (weight, pos_weight) if w is not None]
    sizes = [w.size for w in (weight, pos_weight) if w is not None]  # broadcast: the shape rule checked them
    vec4 = all(size % 4 == 0 for size in [n, *sizes])
    width = 4 if vec4 else 1
    per_invocation = BCE_ITEMS * width
    workgroup = engine.row_workgroup()  # BCE_ITEMS loop iterations per invocation
    per_workgroup = per_invocation * workgroup
    groups = ceil_div(n, per_workgroup)
    per_element = reduction == "none"
    loss_out = out if per_element else engine.alloc(groups)
    bad_partials = engine.alloc(groups)
    grad = engine.alloc(n) if want_grad else None
    scale = 1.0 / n if reduction == "mean" else 1.0
    variant = _variant(BCE_SHADER, logits=logits, weighted=weight is not None, pos_weight=pos_weight is not None,
                       per_element=per_element, write_grad=want_grad, vec4=vec4)
    weight_sizes = [(weight.size if weight is not None else 1) // width,
                    (pos_weight.size if pos_weight is not None else 1) // width]
    engine.dispatch(variant, [pred, labels, *weights], [loss_out, bad_partials] + ([grad] if want_grad else []),
                    [n, scale, per_workgroup, *weight_sizes], engine.grid(groups), workgroup=workgroup)
    if not per_element:
        tree_sum(engine, loss_out, groups, out, scale)
    bad = engine.alloc(1)
    tree_sum(engine, bad_partials, groups, bad, 1.0)
    message = (f"{name}: {{count}} values of labels (shape {shapes[0]}) lie outside [0, 1] or are NaN" if logits else
               f"bce_loss: {{count}} values of pred or labels (shape {shapes[0]}) lie outside [0, 1] or are NaN; "
               "pred must be probabilities (apply g.sigmoid to logits, or use g.bce_with_logits_loss) and labels in "
               "[0, 1]")
    return FusedResult(grad=grad, checks=[(bad, message)])


def _bce_variants(logits: bool) -> list[shaders.Variant]:
    flags = ("weighted", "pos_weight", "per_element", "write_grad", "vec4") if logits else \
        ("weighted", "per_element", "write_grad", "vec4")
    return [_variant(BCE_SHADER, logits=logits, **dict(zip(flags, on)))
            for on in itertools.product((False, True), repeat=len(flags))]


BCE_OPTIONS = {
    "reduction": "'mean' (default) | 'sum' | 'none' (pred's shape)",
    "weight": "array or Tensor: pred's shape or its trailing dimensions",
}

register_op(
    "bce_loss", _variant(BCE_SHADER, write_grad=True), inputs=2, fused=True, options=BCE_OPTIONS,
    tensor_attrs=("weight",),
    doc="bce_loss(pred, labels, *, reduction='mean', weight=None) -> (1,), or pred's shape for reduction='none'. "
        "pred in (0, 1) (apply g.sigmoid to logits first, or use bce_with_logits_loss), labels in [0, 1], one shape "
        "of any rank. Per element -weight (y log p + (1 - y) log(1 - p)) with each log clamped at -100, PyTorch's "
        "F.binary_cross_entropy; 'mean' divides by the number of elements. weight has pred's shape or its trailing "
        "dimensions. One fused kernel computes the loss and d/dpred = weight (p - y) / max(p (1 - p), 1e-12) (/ n "
        "for a mean) in the same pass; backward scales that. Values outside [0, 1] (or NaN), counted on the device, "
        "raise ValueError at the next host read. No gradient with respect to labels or weight.",
    shape=functools.partial(_bce_shape, "bce_loss"), forward=functools.partial(_bce_forward, "bce_loss", False),
    backward=_scaled_saved_grad, variants=lambda: _bce_variants(False),
)
register_op(
    "bce_with_logits_loss", _variant(BCE_SHADER, logits=True, write_grad=True), inputs=2, fused=True,
    options={**BCE_OPTIONS, "pos_weight": "array or Tensor: weight of positives, labels' trailing dimensions"},
    tensor_attrs=("weight", "pos_weight"),
    doc="bce_with_logits_loss(logits, labels, *, reduction='mean', weight=None, pos_weight=None) -> (1,), or the "
        "logits' shape for reduction='none'. PyTorch's F.binary_cross_entropy_with_logits: sigmoid and BCE in one "
        "kernel, stable for logits of any magnitude. Per element, with l = 1 + (pos_weight - 1) y: weight ((1 - y) x "
        "- l log_sigmoid(x)), log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)); 'mean' divides by the number of "
        "elements. weight and pos_weight have the logits' shape or its trailing dimensions (pos_weight usually "
        "[classes]). d/dlogits = weight (l sigmoid(x) - pos_weight y) (/ n for a mean), computed in the same pass; "
        "backward scales that. Labels outside [0, 1] (or NaN) raise ValueError at the next host read. No gradient "
        "with respect to labels, weight or pos_weight.",
    shape=functools.partial(_bce_shape, "bce_with_logits_loss"),
    forward=functools.partial(_bce_forward, "bce_with_logits_loss", True),
    backward=_scaled_saved_grad, variants=lambda: _bce_variants(True),
)


# ---- composed from primitives ----------------------------------------------------------------------------------
def _reduce(g, values, reduction):
    return g.mean_all(values) if reduction == "mean" else g.sum_all(values) if reduction == "sum" else values


def _mse(g, pred, target, reduction="mean"):
    _check_same("mse_loss", pred, target)
    _check_reduction("mse_loss", reduction)
    d = g.add(pred, g.neg(target))
    return _reduce(g, g.mul(d, d), reduction)


def _l1(g, pred, target, reduction="mean"):
    _check_same("l1_loss", pred, target)
    _check_reduction("l1_loss", reduction)
    d = g.add(pred, g.neg(target))
    return _reduce(g, g.abs(d), reduction)


COMPOSED_OPTIONS = {"reduction": "'mean' (default) | 'sum' | 'none' (pred's shape)"}
register_op(
    "mse_loss", inputs=2, compose=_mse, options=COMPOSED_OPTIONS,
    doc="mse_loss(pred, target, *, reduction='mean') -> (1,), or pred's shape for reduction='none': "
        "(pred - target)^2, averaged (mean) or summed (sum); any shape, both the same. Composed as mean_all (or "
        "sum_all) of mul(d, d) with d = add(pred, neg(target)); the tape differentiates it: 2 d (/ n for a mean).",
)
register_op(
    "l1_loss", inputs=2, compose=_l1, options=COMPOSED_OPTIONS,
    doc="l1_loss(pred, target, *, reduction='mean') -> (1,), or pred's shape for reduction='none': |pred - target|, "
        "averaged (mean) or summed (sum); any shape, both the same. Composed as mean_all (or sum_all) of abs(d) "
        "with d = add(pred, neg(target)); gradient sign(d) (/ n for a mean), which is 0 where pred == target "
        "(PyTorch's convention for the undefined derivative of |x| at 0).",
)
