"""Reductions to one value and their broadcast back: shaders/reductions.comp."""
from __future__ import annotations

import math

from ..launch import ceil_div
from ..kernels import ACCESS_SWITCHES, Kernel, access_allowed, access_switches
from ..implementations import ForwardKernel
from ..registry import register_op

ITEMS = 16  # accesses each invocation sums before the workgroup's tree: the shader's ITEMS define comes from here
REDUCTIONS = Kernel(
    "reductions.comp", push="uint n, float scale", defines={"ITEMS": ITEMS},
    switches={"mode": ("SUM", "FILL"), "count_nonfinite": (False, True), "divide": (False, True), **ACCESS_SWITCHES},
    # counting is a first pass of a sum, dividing its last
    allowed=lambda mode, count_nonfinite, divide, vec4, wide: ((mode == "SUM" or not (count_nonfinite or divide))
                                                               and access_allowed(vec4, wide)),
    bindings=lambda divide, **_: (["src", *(["norm"] if divide else [])], ["dst"]),
)


def _access(ctx, n: int, **switches):
    """The variant that moves as many floats an access as n allows (ForwardContext.access_width), and n in accesses."""
    width = ctx.access_width(n)
    return REDUCTIONS.variant(**switches, **access_switches(width)), n // width


def tree_sum(ctx, source, n: int, out, scale: float, count_nonfinite: bool = False, divide=None) -> None:
    """out[0] = scale * sum(source[:n]) (/ divide[0], a one-value buffer), by passes of a pairwise tree:
    n -> n/(16 WG width) -> ... -> 1, each pass reading `width` floats an access as far as its n allows.

    Each pass is one dispatch with 16 unrolled loads per invocation (no lavapipe loop limit), its workgroups
    spread over a 2-D grid (no 65535-workgroup limit); the engine orders the passes. With `count_nonfinite` the
    first pass counts NaN and infinite values instead of summing. ctx: an op's ForwardContext."""
    workgroup = ctx.reduction_workgroup()
    while True:
        accesses = n // ctx.access_width(n)
        groups = ceil_div(accesses, ITEMS * workgroup)
        last = groups == 1
        variant, accesses = _access(ctx, n, mode="SUM", count_nonfinite=count_nonfinite,
                                    divide=last and divide is not None)
        target = out if last else ctx.alloc(groups)
        ctx.dispatch(variant, ctx.grid(groups), workgroup=workgroup,
                     push={"n": accesses, "scale": scale if last else 1.0}, src=source, dst=target,
                     norm=divide if last else None)
        if last:
            return
        source, n, count_nonfinite = target, groups, False


def _expand_shape(s, shape, scale=1.0):
    if s != (1,):
        raise ValueError(f"expand: needs a tensor of shape (1,), got {s}")
    if not shape or min(shape) <= 0:
        raise ValueError(f"expand: target shape {shape} must have positive dimensions")
    return shape


def _expand_forward(ctx, s, shape, scale=1.0):
    variant, accesses = _access(ctx, ctx.out.size, mode="FILL")
    ctx.dispatch(variant, ctx.groups_for(accesses), push={"n": accesses, "scale": scale}, src=s, dst=ctx.out)


register_op(
    "mean_all(Tensor x) -> Tensor",
    ForwardKernel(shape=lambda s: (1,), forward=lambda ctx, x: tree_sum(ctx, x, x.size, ctx.out, 1.0 / x.size),
                  backward=lambda ctx, grad: (ctx.g.expand(grad, shape=ctx.inputs[0].shape,
                                                           scale=1.0 / math.prod(ctx.inputs[0].shape)),),
                  kernels=(REDUCTIONS,)),
    doc="(1,): the mean of every element, summed as a pairwise tree (deterministic; error grows with log2 n). "
        "d/dx = 1/n everywhere.",
)
register_op(
    "sum_all(Tensor x, *, float scale=1.0) -> Tensor",
    ForwardKernel(shape=lambda s, scale: (1,), forward=lambda ctx, x, scale: tree_sum(ctx, x, x.size, ctx.out, scale),
                  backward=lambda ctx, grad: (ctx.g.expand(grad, shape=ctx.inputs[0].shape, scale=ctx.attrs["scale"]),),
                  kernels=(REDUCTIONS,)),
    doc="(1,): scale * the sum of every element (pairwise tree). d/dx = scale.",
)
register_op(
    "expand(Tensor s, *, int[] shape, float scale=1.0) -> Tensor",
    ForwardKernel(shape=_expand_shape, forward=_expand_forward, kernels=(REDUCTIONS,),
                  backward=lambda ctx, grad: (ctx.g.sum_all(grad, scale=ctx.attrs["scale"]),)),
    doc="shape: s of shape (1,) repeated, times scale. d/ds = scale * sum(grad).",
)
register_op(
    "count_nonfinite(Tensor x) -> Tensor",
    ForwardKernel(shape=lambda s: (1,), kernels=(REDUCTIONS,),
                  forward=lambda ctx, x: tree_sum(ctx, x, x.size, ctx.out, 1.0, count_nonfinite=True)),
    internal=True,
    doc="(1,): how many elements of x are NaN or infinite (Graph(check_finite=True) runs it after every op).",
)
