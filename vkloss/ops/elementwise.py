"""Elementwise ops: one kernel family, shaders/elementwise.comp, one variant per op (its OP switch)."""
from __future__ import annotations

from ..kernels import ACCESS_SWITCHES, Kernel, access_allowed, access_switches
from ..implementations import ForwardKernel
from ..registry import register_op

UNARY = ("neg", "abs", "sigmoid", "relu", "exp", "log", "tanh", "scale", "shift")
BINARY = ("add", "add_row", "sub", "mul", "div", "mul_scalar", "mul_rows", "abs_backward", "relu_backward",
          "sigmoid_backward", "tanh_backward")

BROADCAST = {"add_row": "add", "mul_scalar": "mul", "mul_rows": "mul"}  # the same maths over a broadcast b
ELEMENTWISE = Kernel(
    "elementwise.comp", push="uint n, uint cols = 0, float s = 0.0",
    switches={"op": UNARY + BINARY, **ACCESS_SWITCHES}, allowed=lambda op, vec4, wide: access_allowed(vec4, wide),
    bindings=lambda op, **_: ((["x"] if op in UNARY else ["a", "b"]), ["y"]),
    # the op's maths: op_<name> of shaders/include/elementwise_ops.glsl, which fused compositions call too
    defines=lambda op, **_: {"APPLY": f"op_{BROADCAST.get(op, op)}"},
)


def same_shape(name, a, b):
    if a != b:
        raise ValueError(f"{name}: shapes {a} and {b} differ; elementwise ops need operands of the same shape")
    return a


def _dispatch(ctx, op: str, cols: int = 0, s: float = 0.0, **operands):
    """One invocation per access of `width` elements: a broadcast row of `cols` (add_row's bias, mul_rows' rows)
    must hold whole accesses."""
    n = ctx.out.size
    width = ctx.access_width(n, *([cols] if cols else []))
    ctx.dispatch(ELEMENTWISE.variant(op=op, **access_switches(width)), ctx.groups_for(n // width),
                 push={"n": n // width, "cols": cols // width, "s": s}, y=ctx.out, **operands)


def elementwise(schema, doc, backward=None, shape=None, internal=False):
    """Declare one elementwise op: the OP_<NAME> variant of elementwise.comp, one invocation per output element
    (its float option `s`, if the schema has one, the kernel's scalar). Without a backward rule it is internal: a
    kernel other ops' backward rules call."""
    name = schema.split("(")[0]
    unary = name in UNARY

    def forward(ctx, *operands, s=0.0):
        _dispatch(ctx, name, s=s, **dict(zip(("x",) if unary else ("a", "b"), operands)))

    if shape is None and "float s" in schema:
        shape = lambda x, s: x  # noqa: E731
    shape = shape or ((lambda x: x) if unary else (lambda a, b: same_shape(name, a, b)))
    return register_op(schema, ForwardKernel(shape=shape, forward=forward, backward=backward, kernels=(ELEMENTWISE,)),
                       doc=doc, internal=backward is None)


def _add_shape(a, b):
    if a == b or (len(a) == 2 and b == (a[1],)):
        return a
    raise ValueError(f"add: shapes {a} and {b} differ; add takes operands of the same shape, or a matrix [batch, n] "
                     f"and a vector [n] that is added to every row")


def _add_forward(ctx, a, b):
    if ctx.shapes[0] != ctx.shapes[1]:  # b broadcast over the rows
        _dispatch(ctx, "add_row", cols=ctx.shapes[0][-1], a=a, b=b)
    else:
        _dispatch(ctx, "add", a=a, b=b)


def _add_backward(ctx, grad):
    a, b = ctx.inputs
    if a.shape == b.shape:
        return grad, grad
    return grad, (ctx.g.sum_rows(grad) if ctx.needs[1] else None)  # the bias gets the sum over the batch


def _scalar_second(a, s):
    if s != (1,):
        raise ValueError(f"mul_scalar: the scale must have shape (1,), got {s} (beside {a})")
    return a


def _rows_shape(a, s):
    if len(a) == 2 and s == a[:1]:
        return a
    raise ValueError(f"mul_rows: needs a matrix [rows, cols] and a vector [rows]; got {a} and {s}")


elementwise("neg(Tensor x) -> Tensor", "-x, same shape. d/dx = -1.",
            backward=lambda ctx, grad: (ctx.g.neg(grad),))
elementwise("abs(Tensor x) -> Tensor", "|x|, same shape. d/dx = sign(x), and 0 at x = 0 as in PyTorch.",
            backward=lambda ctx, grad: (ctx.g.ops.abs_backward(grad, ctx.inputs[0]),))
elementwise("sigmoid(Tensor x) -> Tensor",
            "1 / (1 + exp(-x)), same shape. d/dx = y (1 - y), from the saved output y.",
            backward=lambda ctx, grad: (ctx.g.ops.sigmoid_backward(grad, ctx.output),))
register_op(
    "add(Tensor a, Tensor b) -> Tensor",
    ForwardKernel(shape=_add_shape, forward=_add_forward, backward=_add_backward, kernels=(ELEMENTWISE,)),
    doc="a + b: operands of one shape, or a [batch, n] and a vector [n] added to every row (a bias). d/da = 1; "
        "d/db = 1, summed over the batch when b was broadcast.",
)
elementwise("relu(Tensor x) -> Tensor",
            "max(x, 0), same shape. d/dx = 1 where x > 0, else 0 (0 at x = 0, as in PyTorch).",
            backward=lambda ctx, grad: (ctx.g.ops.relu_backward(grad, ctx.inputs[0]),))
elementwise("mul(Tensor a, Tensor b) -> Tensor", "a * b, operands of one shape. d/da = b, d/db = a.",
            backward=lambda ctx, grad: (ctx.g.mul(grad, ctx.inputs[1]) if ctx.needs[0] else None,
                                        ctx.g.mul(grad, ctx.inputs[0]) if ctx.needs[1] else None))
elementwise("mul_scalar(Tensor x, Tensor s) -> Tensor",
            "x * s[0], s of shape (1,). d/dx = s, d/ds = sum(grad * x).", shape=_scalar_second,
            backward=lambda ctx, grad: (ctx.g.mul_scalar(grad, ctx.inputs[1]) if ctx.needs[0] else None,
                                        ctx.g.sum_all(ctx.g.mul(grad, ctx.inputs[0])) if ctx.needs[1] else None))
register_op(
    "mul_rows(Tensor x, Tensor s) -> Tensor",
    ForwardKernel(shape=_rows_shape, kernels=(ELEMENTWISE,),
                  forward=lambda ctx, x, s: _dispatch(ctx, "mul_rows", cols=ctx.shapes[0][1], a=x, b=s)),
    internal=True,
    doc="x * s[row]: x [rows, cols], s [rows], each row of x times its entry of s (the backward of a per-row loss "
        "such as cross_entropy_loss(reduction='none')).",
)
elementwise("sub(Tensor a, Tensor b) -> Tensor", "a - b, operands of one shape. d/da = 1, d/db = -1.",
            backward=lambda ctx, grad: (grad, ctx.g.neg(grad) if ctx.needs[1] else None))
elementwise("div(Tensor a, Tensor b) -> Tensor", "a / b, operands of one shape. d/da = 1 / b, d/db = -a / b^2.",
            backward=lambda ctx, grad: (ctx.g.div(grad, ctx.inputs[1]) if ctx.needs[0] else None,
                                        ctx.g.neg(ctx.g.div(ctx.g.mul(grad, ctx.output), ctx.inputs[1]))
                                        if ctx.needs[1] else None))
elementwise("exp(Tensor x) -> Tensor", "e^x, same shape. d/dx = e^x, from the saved output.",
            backward=lambda ctx, grad: (ctx.g.mul(grad, ctx.output),))
elementwise("log(Tensor x) -> Tensor", "The natural log, same shape (-inf at 0, NaN below, as PyTorch). d/dx = 1/x.",
            backward=lambda ctx, grad: (ctx.g.div(grad, ctx.inputs[0]),))
elementwise("tanh(Tensor x) -> Tensor", "tanh(x), same shape. d/dx = 1 - y^2, from the saved output y.",
            backward=lambda ctx, grad: (ctx.g.ops.tanh_backward(grad, ctx.output),))
elementwise("scale(Tensor x, *, float s) -> Tensor", "x * s for a number s (x * 2.0), same shape. d/dx = s.",
            backward=lambda ctx, grad: (ctx.g.scale(grad, s=ctx.attrs["s"]),))
elementwise("shift(Tensor x, *, float s) -> Tensor", "x + s for a number s (x + 1.0), same shape. d/dx = 1.",
            backward=lambda ctx, grad: (grad,))
elementwise("tanh_backward(Tensor grad, Tensor y) -> Tensor", "grad * (1 - y^2), y = tanh(x).")
elementwise("abs_backward(Tensor grad, Tensor x) -> Tensor",
            "grad * sign(x) (sign(0) = 0): the gradient of abs.")
elementwise("relu_backward(Tensor grad, Tensor x) -> Tensor",
            "grad where x > 0, else 0: the gradient of relu.")
elementwise("sigmoid_backward(Tensor grad, Tensor y) -> Tensor",
            "grad * y * (1 - y), y = sigmoid(x).")
