"""Reductions to one value and their broadcast back: shaders/reductions.comp."""
from __future__ import annotations

import math

from ..engine import ceil_div
from ..kernels import Kernel
from ..registry import register_op

ITEMS = 16  # values each invocation sums before the workgroup's tree: the shader's ITEMS define comes from here
REDUCTIONS = Kernel(
    "reductions.comp", push="uint n, float scale", defines={"ITEMS": ITEMS},
    switches={"mode": ("SUM", "FILL"), "count_nonfinite": (False, True)},
    allowed=lambda mode, count_nonfinite: mode == "SUM" or not count_nonfinite,
    bindings=lambda **_: (["src"], ["dst"]),
)
SUM_PASS = REDUCTIONS.variant(mode="SUM")


def tree_sum(ctx, source, n: int, out, scale: float, first_pass=SUM_PASS) -> None:
    """out[0] = scale * sum(source[:n]), by passes of a pairwise tree: n -> n/(16 WG) -> ... -> 1.

    Each pass is one dispatch with 16 unrolled loads per invocation (no lavapipe loop limit), its workgroups
    spread over a 2-D grid (no 65535-workgroup limit); the engine orders the passes. `first_pass` may count
    instead of sum (REDUCTIONS.variant(count_nonfinite=True)). ctx: an op's ForwardContext."""
    workgroup = ctx.reduction_workgroup()
    variant = first_pass
    while True:
        groups = ceil_div(n, ITEMS * workgroup)
        last = groups == 1
        target = out if last else ctx.alloc(groups)
        ctx.dispatch(variant, ctx.grid(groups), workgroup=workgroup, push={"n": n, "scale": scale if last else 1.0},
                     src=source, dst=target)
        variant = SUM_PASS
        if last:
            return
        source, n = target, groups


def _expand_shape(s, shape, scale=1.0):
    if s != (1,):
        raise ValueError(f"expand: needs a tensor of shape (1,), got {s}")
    if not shape or min(shape) <= 0:
        raise ValueError(f"expand: target shape {shape} must have positive dimensions")
    return shape


def _expand_forward(ctx, s, shape, scale=1.0):
    n = ctx.out.size
    ctx.dispatch(REDUCTIONS.variant(mode="FILL"), ctx.groups_for(n), push={"n": n, "scale": scale}, src=s, dst=ctx.out)


register_op(
    "mean_all", schema="mean_all(Tensor x) -> Tensor", kernels=(REDUCTIONS,),
    doc="(1,): the mean of every element, summed as a pairwise tree (deterministic; error grows with log2 n). "
        "d/dx = 1/n everywhere.",
    shape=lambda s: (1,), forward=lambda ctx, x: tree_sum(ctx, x, x.size, ctx.out, 1.0 / x.size),
    backward=lambda ctx, grad: (ctx.g.expand(grad, shape=ctx.inputs[0].shape,
                                             scale=1.0 / math.prod(ctx.inputs[0].shape)),),
)
register_op(
    "sum_all", schema="sum_all(Tensor x, *, float scale=1.0) -> Tensor", kernels=(REDUCTIONS,),
    doc="(1,): scale * the sum of every element (pairwise tree). d/dx = scale.",
    shape=lambda s, scale: (1,), forward=lambda ctx, x, scale: tree_sum(ctx, x, x.size, ctx.out, scale),
    backward=lambda ctx, grad: (ctx.g.expand(grad, shape=ctx.inputs[0].shape, scale=ctx.attrs["scale"]),),
)
register_op(
    "expand", schema="expand(Tensor s, *, int[] shape, float scale=1.0) -> Tensor", kernels=(REDUCTIONS,),
    doc="shape: s of shape (1,) repeated, times scale. d/ds = scale * sum(grad).",
    shape=_expand_shape, forward=_expand_forward,
    backward=lambda ctx, grad: (ctx.g.sum_all(grad, scale=ctx.attrs["scale"]),),
)
register_op(
    "count_nonfinite", schema="count_nonfinite(Tensor x) -> Tensor", kernels=(REDUCTIONS,),
    doc="(1,): how many elements of x are NaN or infinite (Graph(check_finite=True) runs it after every op). Not "
        "differentiable.",
    shape=lambda s: (1,),
    forward=lambda ctx, x: tree_sum(ctx, x, x.size, ctx.out, 1.0, REDUCTIONS.variant(count_nonfinite=True)),
)
