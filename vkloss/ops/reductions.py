"""Reductions to one value and their broadcast back: shaders/reduce.comp."""
from __future__ import annotations

import math

from .. import shaders
from ..engine import WORKGROUP, ceil_div
from ..registry import register_op

SHADER = "reduce.comp"
ITEMS = 16  # values each invocation sums before the workgroup's tree: the shader's ITEMS define comes from here
SUM_PASS = shaders.variant(SHADER, MODE_SUM=1, ITEMS=ITEMS)
COUNT_NONFINITE_PASS = shaders.variant(SHADER, MODE_SUM=1, COUNT_NONFINITE=1, ITEMS=ITEMS)
FILL = shaders.variant(SHADER, MODE_FILL=1)


def tree_sum(engine, source, n: int, out, scale: float, first_pass=SUM_PASS) -> None:
    """out[0] = scale * sum(source[:n]), by passes of a pairwise tree: n -> n/(16 WG) -> ... -> 1.

    Each pass is one dispatch with 16 unrolled loads per invocation (no lavapipe loop limit), its workgroups
    spread over a 2-D grid (no 65535-workgroup limit); the engine orders the passes. `first_pass` may count
    instead of sum (COUNT_NONFINITE_PASS)."""
    workgroup = engine.reduction_workgroup()
    variant = first_pass
    while True:
        groups = ceil_div(n, ITEMS * workgroup)
        last = groups == 1
        target = out if last else engine.alloc(groups)
        engine.dispatch(variant, [source], [target], [n, scale if last else 1.0], engine.grid(groups),
                        workgroup=workgroup)
        variant = SUM_PASS
        if last:
            return
        source, n = target, groups


def count_nonfinite(engine, source, n: int):
    """A one-element buffer that will hold how many of source[:n] are NaN or infinite."""
    count = engine.alloc(1)
    tree_sum(engine, source, n, count, 1.0, first_pass=COUNT_NONFINITE_PASS)
    return count


def _sum_forward(engine, inputs, out, shapes, scale=1.0):
    tree_sum(engine, inputs[0], math.prod(shapes[0]), out, float(scale))


def _mean_all_forward(engine, inputs, out, shapes):
    tree_sum(engine, inputs[0], math.prod(shapes[0]), out, 1.0 / math.prod(shapes[0]))


def _expand_forward(engine, inputs, out, shapes, shape, scale=1.0):
    engine.dispatch(FILL, inputs, [out], [out.size, float(scale)], engine.groups_for(out.size))


def _expand_shape(s, shape, scale=1.0):
    if s != (1,):
        raise ValueError(f"expand: needs a tensor of shape (1,), got {s}")
    shape = tuple(int(d) for d in shape)
    if not shape or min(shape) <= 0:
        raise ValueError(f"expand: target shape {shape} must have positive dimensions")
    return shape


register_op(
    "mean_all", SUM_PASS, inputs=1,
    doc="mean_all(x) -> (1,): the mean of every element, summed as a pairwise tree (deterministic; error grows "
        "with log2 n). d/dx = 1/n everywhere.",
    shape=lambda s: (1,), forward=_mean_all_forward,
    backward=lambda ctx, grad: (ctx.g.expand(grad, shape=ctx.inputs[0].shape,
                                             scale=1.0 / math.prod(ctx.inputs[0].shape)),),
    variants=lambda: [SUM_PASS, COUNT_NONFINITE_PASS],
)
register_op(
    "sum_all", SUM_PASS, inputs=1,
    doc="sum_all(x, scale=1.0) -> (1,): scale * the sum of every element (pairwise tree). d/dx = scale.",
    shape=lambda s, scale=1.0: (1,), forward=_sum_forward, options={"scale": "float (default 1.0)"},
    backward=lambda ctx, grad: (ctx.g.expand(grad, shape=ctx.inputs[0].shape, scale=ctx.attrs.get("scale", 1.0)),),
    variants=lambda: [SUM_PASS],
)
register_op(
    "expand", FILL, inputs=1,
    doc="expand(s, shape=, scale=1.0) -> shape: s of shape (1,) repeated, times scale. d/ds = scale * sum(grad).",
    shape=_expand_shape, forward=_expand_forward,
    options={"shape": "the output shape", "scale": "float (default 1.0)"},
    backward=lambda ctx, grad: (ctx.g.sum_all(grad, scale=ctx.attrs.get("scale", 1.0)),),
    variants=lambda: [FILL],
)
