"""Ops along an axis, and on a tensor's shape: sum and mean along one axis or all, reshape (a view, no copy),
transpose. shaders/axes.comp."""
from __future__ import annotations

import math

from ..kernels import Kernel
from ..implementations import ForwardKernel, View
from ..registry import register_op
from .reductions import tree_sum

SLICE = 16384  # steps of an axis one dispatch sums: far under lavapipe's loop limit of about 65,535

AXES = Kernel(
    "axes.comp", switches={"mode": ("SUM", "BROADCAST", "TRANSPOSE")}, bindings=lambda mode: (["x"], ["y"]),
    push="uint outer, uint size, uint inner, uint middle = 1, uint size2 = 1, uint d_begin = 0, uint d_end = 0, "
         "float scale = 1.0, uint accumulate = 0",
)


def axis(name: str, dim: int, ndim: int) -> int:
    """`dim` as an axis of a tensor of `ndim` dimensions (negative from the end), or ValueError naming the op."""
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name}: dim {dim} is out of range for a tensor of {ndim} dimension(s)")
    return dim % ndim


def split(shape: tuple, dim: int) -> tuple[int, int, int]:
    """(outer, size, inner): the tensor viewed around axis `dim`."""
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])


def _reduced_shape(name):
    def shape(x, dim=None, keepdim=False):
        if dim is None:
            return (1,)
        d = axis(name, dim, len(x))
        kept = [1 if k == d else size for k, size in enumerate(x)] if keepdim else [s for k, s in enumerate(x) if k != d]
        return tuple(kept) or (1,)

    return shape


def _reduce(mean: bool):
    def forward(ctx, x, dim=None, keepdim=False):
        shape = ctx.shapes[0]
        if dim is None:
            n = math.prod(shape)
            tree_sum(ctx, x, n, ctx.out, 1.0 / n if mean else 1.0)
            return
        outer, size, inner = split(shape, axis("sum", dim, len(shape)))
        for begin in range(0, size, SLICE):
            ctx.dispatch(AXES.variant(mode="SUM"), ctx.groups_for(outer * inner),
                         push=dict(outer=outer, size=size, inner=inner, d_begin=begin, d_end=min(size, begin + SLICE),
                                   scale=1.0 / size if mean else 1.0, accumulate=begin > 0), x=x, y=ctx.out)

    return forward


def _reduce_backward(mean: bool):
    def backward(ctx, grad):
        shape, dim = ctx.inputs[0].shape, ctx.attrs["dim"]
        if dim is None:
            return (ctx.g.expand(grad, shape=shape, scale=1.0 / math.prod(shape) if mean else 1.0),)
        d = axis("sum", dim, len(shape))
        return (ctx.g.broadcast_axis(grad, shape=shape, dim=d, scale=1.0 / shape[d] if mean else 1.0),)

    return backward


for _name, _mean in (("sum", False), ("mean", True)):
    register_op(
        f"{_name}(Tensor x, *, int? dim=None, bool keepdim=False) -> Tensor",
        ForwardKernel(shape=_reduced_shape(_name), forward=_reduce(_mean), backward=_reduce_backward(_mean),
                      kernels=(AXES,)),
        doc=f"The {'mean' if _mean else 'sum'} of x along axis `dim` (negative from the end), the axis left out (kept "
            f"as 1 with keepdim), or of every element with dim=None: shape (1,). PyTorch's torch.{_name}. Along an "
            "axis each output element sums its terms in order with a compensated (Kahan) sum; over everything, a "
            f"pairwise tree. d/dx: the upstream gradient broadcast back along the axis{' / its size' if _mean else ''}.",
    )


def _broadcast_shape(grad, shape, dim, scale=1.0):
    shape = tuple(shape)
    if not shape or not 0 <= dim < len(shape) or math.prod(grad) * shape[dim] != math.prod(shape):
        raise ValueError(f"broadcast_axis: a gradient of shape {grad} does not broadcast to {shape} along dim {dim}")
    return shape


def _broadcast_forward(ctx, grad, shape, dim, scale=1.0):
    outer, size, inner = split(tuple(shape), dim)
    ctx.dispatch(AXES.variant(mode="BROADCAST"), ctx.groups_for(outer * size * inner),
                 push=dict(outer=outer, size=size, inner=inner, scale=scale), x=grad, y=ctx.out)


def _broadcast_backward(ctx, grad):
    summed = ctx.g.reshape(ctx.g.sum(grad, dim=ctx.attrs["dim"]), shape=ctx.inputs[0].shape)
    return (summed if ctx.attrs["scale"] == 1.0 else ctx.g.scale(summed, s=ctx.attrs["scale"]),)


register_op(
    "broadcast_axis(Tensor grad, *, int[] shape, int dim, float scale=1.0) -> Tensor",
    ForwardKernel(shape=_broadcast_shape, forward=_broadcast_forward, backward=_broadcast_backward, kernels=(AXES,)),
    doc="`shape`: grad (shape without the axis `dim`, or with it as 1) repeated along that axis, times scale: the "
        "backward of sum and mean along an axis. d/dgrad: the sum along the axis, times scale.",
)


def _reshape_shape(x, shape):
    shape = tuple(shape)
    n = math.prod(x)
    if shape.count(-1) > 1 or any(d == 0 or d < -1 for d in shape):
        raise ValueError(f"reshape: shape {shape} must be positive sizes, with at most one -1 to infer")
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if n % known:
            raise ValueError(f"reshape: a tensor of shape {x} ({n} elements) cannot take shape {shape}")
        shape = tuple(n // known if d == -1 else d for d in shape)
    if math.prod(shape) != n:
        raise ValueError(f"reshape: a tensor of shape {x} ({n} elements) cannot take shape {shape}")
    return shape


register_op(
    "reshape(Float x, *, int[] shape) -> Tensor",
    View(shape=_reshape_shape, backward=lambda ctx, grad: (ctx.g.reshape(grad, shape=ctx.inputs[0].shape),)),
    doc="x with another shape of as many elements (one size may be -1, inferred): a view of x's buffer, no copy, as "
        "PyTorch's reshape of a contiguous tensor. d/dx: the gradient reshaped back.",
)


def _transpose_shape(x, dim0, dim1):
    a, b = axis("transpose", dim0, len(x)), axis("transpose", dim1, len(x))
    swapped = list(x)
    swapped[a], swapped[b] = swapped[b], swapped[a]
    return tuple(swapped)


def _transpose_forward(ctx, x, dim0, dim1):
    shape = ctx.shapes[0]
    a, b = sorted((axis("transpose", dim0, len(shape)), axis("transpose", dim1, len(shape))))
    n = math.prod(shape)
    if a == b:
        ctx.copy(x, ctx.out)
        return
    push = dict(outer=math.prod(shape[:a]), size=shape[a], middle=math.prod(shape[a + 1:b]), size2=shape[b],
                inner=math.prod(shape[b + 1:]))
    ctx.dispatch(AXES.variant(mode="TRANSPOSE"), ctx.groups_for(n), push=push, x=x, y=ctx.out)


register_op(
    "transpose(Tensor x, *, int dim0, int dim1) -> Tensor",
    ForwardKernel(shape=_transpose_shape, forward=_transpose_forward, kernels=(AXES,),
                  backward=lambda ctx, grad: (ctx.g.transpose(grad, dim0=ctx.attrs["dim0"], dim1=ctx.attrs["dim1"]),)),
    doc="x with axes dim0 and dim1 swapped (PyTorch's transpose), as a new tensor: vkloss's tensors are contiguous. "
        "d/dx: the gradient transposed back.",
)
