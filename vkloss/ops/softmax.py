"""Softmax and log-softmax along one axis, fused over each row: shaders/softmax.comp."""
from __future__ import annotations

from ..kernels import Kernel
from ..implementations import ForwardKernel
from ..registry import register_op
from .axes import axis, split

SOFTMAX = Kernel(
    "softmax.comp", switches={"mode": ("FORWARD", "BACKWARD"), "log": (False, True)},
    bindings=lambda mode, log: (["x"], ["y"]) if mode == "FORWARD" else (["grad", "y"], ["dx"]),
    push="uint outer, uint size, uint inner",
)


def _rows(ctx, mode: str, log: bool, dim: int, **buffers):
    shape = ctx.shapes[0]
    outer, size, inner = split(shape, axis("softmax", dim, len(shape)))
    ctx.dispatch(SOFTMAX.variant(mode=mode, log=log), ctx.grid(outer * inner), workgroup=ctx.row_workgroup(size),
                 push=dict(outer=outer, size=size, inner=inner), **buffers)


def _declare(name: str, log: bool, formula: str, gradient: str):
    def forward(ctx, x, dim=-1):
        _rows(ctx, "FORWARD", log, dim, x=x, y=ctx.out)

    register_op(
        f"{name}(Tensor x, *, int dim=-1) -> Tensor",
        ForwardKernel(shape=lambda x, dim=-1: (axis(name, dim, len(x)), x)[1], forward=forward, kernels=(SOFTMAX,),
                      backward=lambda ctx, grad: (ctx.g.ops.softmax_backward(grad, ctx.output, dim=ctx.attrs["dim"],
                                                                             log=log),)),
        doc=f"{formula} along axis `dim` (default the last), PyTorch's torch.{name}: one kernel over each row, relative "
            f"to the row's max (a masked -inf element gives {'-inf' if log else '0'}; a row of only -inf, NaN). "
            f"d/dx = {gradient}, in one kernel too.",
    )


_declare("softmax", False, "exp(x) / sum exp(x)", "y (g - sum g y)")
_declare("log_softmax", True, "x - log sum exp(x)", "g - softmax(x) sum g")


def _backward_forward(ctx, grad, y, dim=-1, log=False):
    _rows(ctx, "BACKWARD", log, dim, grad=grad, y=y, dx=ctx.out)


def _backward_shape(grad, y, dim=-1, log=False):
    if grad != y:
        raise ValueError(f"softmax_backward: grad {grad} and y {y} must have one shape")
    axis("softmax_backward", dim, len(y))
    return y


register_op(
    "softmax_backward(Tensor grad, Tensor y, *, int dim=-1, bool log=False) -> Tensor",
    ForwardKernel(shape=_backward_shape, forward=_backward_forward, kernels=(SOFTMAX,)), internal=True,
    doc="The gradient of softmax (log: log_softmax) from its output y and the upstream gradient.",
)
