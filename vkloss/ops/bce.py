"""Binary cross-entropy, on probabilities and on logits: one fused kernel family (shaders/bce.comp) that computes the
loss and its gradient in one pass, PyTorch's F.binary_cross_entropy and F.binary_cross_entropy_with_logits."""
from __future__ import annotations

import functools
import math

from ..launch import ceil_div
from ..kernels import Kernel, access_allowed
from ..implementations import FusedKernel
from ..registry import register_op
from . import casts
from .reductions import tree_sum

ITEMS = 16  # loop iterations per invocation in bce.comp

def _allowed(logits, pos_weight, vec4, wide, storage, labels_packed, **_):
    # 16-bit logits are read four at a time (and their labels with them, where of the same dtype); eight at a time
    # (wide) only on top of four
    return ((logits or not pos_weight) and (storage == "F32" or (logits and vec4)) and
            (storage != "F32" or not labels_packed) and access_allowed(vec4, wide))


BCE = Kernel(
    "bce.comp", push="uint n, float scale, uint per_workgroup, uint weight_size = 1, uint pos_weight_size = 1, "
                     "float partial_scale = 1.0",
    switches={**{flag: (False, True) for flag in ("logits", "weighted", "pos_weight", "per_element", "write_grad",
                                                   "vec4", "wide", "labels_packed")},
              "storage": ("F32", "F16", "BF16")},
    allowed=_allowed,
    bindings=lambda weighted, pos_weight, per_element, write_grad, **_: (
        ["pred", "labels", *(["weight"] if weighted else []), *(["pos_weight"] if pos_weight else [])],
        ["element_loss" if per_element else "loss_partials", "bad_partials", *(["grad"] if write_grad else [])]),
)


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


def _shape(name, pred, labels, weight=None, reduction="mean", pos_weight=None):
    if pred != labels:
        raise ValueError(f"{name}: pred has shape {pred} and labels {labels}; they must match")
    for option, shape in (("weight", weight), ("pos_weight", pos_weight)):
        if shape is not None:
            _broadcast_size(name, option, shape, pred)
    return pred if reduction == "none" else (1,)


def _forward(name, logits, ctx, pred, labels, weight=None, reduction="mean", pos_weight=None):
    n = math.prod(ctx.shapes[0])
    sizes = [w.size for w in (weight, pos_weight) if w is not None]  # broadcast: the shape rule checked them
    vec4 = all(size % 4 == 0 for size in [n, *sizes])
    storage = casts.storage(ctx.dtypes[0]) if vec4 else "F32"  # 16-bit logits read natively four at a time
    labels_packed = storage != "F32" and ctx.dtypes[1] == ctx.dtypes[0]
    if storage == "F32":
        pred = casts.float32(ctx, pred, n, ctx.dtypes[0])  # else 16-bit: widened first
    if not labels_packed:
        labels = casts.float32(ctx, labels, n, ctx.dtypes[1])
    wide = vec4 and ctx.wide_loads(n, *sizes)  # float32: 32 bytes an access; 16-bit: 16
    width = 8 if wide else 4 if vec4 else 1  # elements per access
    workgroup = ctx.row_workgroup()  # ITEMS loop iterations per invocation
    per_workgroup = ITEMS * width * workgroup
    groups = ceil_div(n, per_workgroup)
    per_element = reduction == "none"
    # one workgroup: its sums are the results (the loss scaled in the kernel), and no tree sum runs after it
    loss = ctx.out if per_element or groups == 1 else ctx.alloc(groups)
    bad_partials = ctx.alloc(groups)
    grad = casts.alloc(ctx, n, storage) if ctx.want_grad else None
    scale = 1.0 / n if reduction == "mean" else 1.0
    variant = BCE.variant(logits=logits, weighted=weight is not None, pos_weight=pos_weight is not None,
                          per_element=per_element, write_grad=ctx.want_grad, vec4=vec4, wide=wide, storage=storage,
                          labels_packed=labels_packed)
    push = dict(n=n, scale=scale, per_workgroup=per_workgroup,
                weight_size=(weight.size if weight is not None else 1) // width,
                pos_weight_size=(pos_weight.size if pos_weight is not None else 1) // width,
                partial_scale=scale if groups == 1 else 1.0)
    ctx.dispatch(variant, ctx.grid(groups), workgroup=workgroup, push=push, pred=pred, labels=labels, weight=weight,
                 pos_weight=pos_weight, bad_partials=bad_partials, grad=grad,
                 **{"element_loss" if per_element else "loss_partials": loss})
    if not per_element and groups > 1:
        tree_sum(ctx, loss, groups, ctx.out, scale)
    bad = bad_partials
    if groups > 1:
        bad = ctx.alloc(1)
        tree_sum(ctx, bad_partials, groups, bad, 1.0)
    ctx.check(bad, f"{name}: {{count}} values of labels (shape {ctx.shapes[0]}) lie outside [0, 1] or are NaN" if logits
              else f"bce_loss: {{count}} values of pred or labels (shape {ctx.shapes[0]}) lie outside [0, 1] or are "
                   "NaN; pred must be probabilities (apply g.sigmoid to logits, or use g.bce_with_logits_loss) and "
                   "labels in [0, 1]")
    if grad is not None and storage == "F32":
        grad = casts.in_dtype(ctx, grad, n, ctx.dtypes[0])  # 16-bit logits widened above: their gradient narrowed
    ctx.save_for_backward(grad)


def _declare(name: str, logits: bool, schema: str, doc: str) -> None:
    """One of the two BCE ops: the kernel family, its shape rule and forward, told apart by `logits`."""
    forward = functools.partial(_forward, name, logits)
    register_op(schema, FusedKernel(shape=functools.partial(_shape, name), forward=forward, kernels=(BCE,)), doc=doc)


_declare(
    "bce_loss", False,
    schema="bce_loss(Tensor pred, Tensor labels, *, Tensor? weight=None, str{mean|sum|none} reduction='mean') "
           "-> Tensor",
    doc="(1,), or pred's shape for reduction='none'. pred in (0, 1) (apply g.sigmoid to logits first, or use "
        "bce_with_logits_loss), labels in [0, 1], one shape of any rank. Per element -weight (y log p + (1 - y) "
        "log(1 - p)) with each log clamped at -100, PyTorch's F.binary_cross_entropy; 'mean' divides by the number "
        "of elements. weight has pred's shape or its trailing dimensions. One fused kernel computes the loss and "
        "d/dpred = weight (p - y) / max(p (1 - p), 1e-12) (/ n for a mean) in the same pass; backward scales that. "
        "Values outside [0, 1] (or NaN), counted on the device, raise ValueError at the next host read. No gradient "
        "with respect to labels or weight.",
)
_declare(
    "bce_with_logits_loss", True,
    schema="bce_with_logits_loss(Float logits, Float labels, *, Tensor? weight=None, "
           "str{mean|sum|none} reduction='mean', Tensor? pos_weight=None) -> Tensor",
    doc="(1,), or the logits' shape for reduction='none'. PyTorch's F.binary_cross_entropy_with_logits: sigmoid "
        "and BCE in one kernel, stable for logits of any magnitude; pred are logits. Per element, with l = 1 + "
        "(pos_weight - 1) y: weight ((1 - y) x - l log_sigmoid(x)), log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)); "
        "'mean' divides by the number of elements. weight and pos_weight have the logits' shape or its trailing "
        "dimensions (pos_weight usually [classes]). d/dlogits = weight (l sigmoid(x) - pos_weight y) (/ n for a "
        "mean), computed in the same pass; backward scales that. Labels outside [0, 1] (or NaN) raise ValueError at "
        "the next host read. No gradient with respect to labels, weight or pos_weight. logits and labels may be 16-bit "
        "tensors (float16, bfloat16): the kernel reads them four at a time where every size is a multiple of 4 "
        "(otherwise widened to float32 first), computes in float32, and writes the gradient in the logits' dtype.",
)
