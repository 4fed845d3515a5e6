"""Elementwise ops: one shader family (shaders/elementwise.comp), one variant per op."""
from __future__ import annotations

import math
from functools import partial

from .. import shaders
from ..registry import NOT_DIFFERENTIABLE, register_op

SHADER = "elementwise.comp"


def same_shape(name, a, b):
    if a != b:
        raise ValueError(f"{name}: shapes {a} and {b} differ; elementwise ops need operands of the same shape")
    return a


def _variant(op_name: str, arity: int):
    return shaders.variant(SHADER, ARITY=arity, **{f"OP_{op_name.upper()}": 1})


def _add_shape(a, b):
    if a == b or (len(a) == 2 and b == (a[1],)):
        return a
    raise ValueError(f"add: shapes {a} and {b} differ; add takes operands of the same shape, or a matrix [batch, n] "
                     f"and a vector [n] that is added to every row")


ADD, ADD_ROW = _variant("add", 2), _variant("add_row", 2)  # once: variant() resolves the path on disk


def _add_forward(engine, inputs, out, shapes):
    variant = ADD_ROW if shapes[0] != shapes[1] else ADD
    engine.dispatch(variant, inputs, [out], [out.size, shapes[0][-1]], engine.groups_for(out.size))


def _add_backward(ctx, grad):
    a, b = ctx.inputs
    if a.shape == b.shape:
        return grad, grad
    return grad, (ctx.g.sum_rows(grad) if ctx.needs[1] else None)  # the bias gets the sum over the batch


def _raise(error):
    raise error


def scalar_second(name, a, s):
    if s != (1,):
        raise ValueError(f"{name}: the scale must have shape (1,), got {s} (beside {a})")
    return a


def elementwise(name, arity, doc, backward=NOT_DIFFERENTIABLE, shape=None):
    """Declare one elementwise op: its kernel is the OP_<NAME> variant of elementwise.comp, one invocation per
    output element, push constants (n, cols)."""
    return register_op(name, _variant(name, arity), inputs=arity, doc=doc, backward=backward,
                       shape=shape or ((lambda x: x) if arity == 1 else partial(same_shape, name)),
                       push=lambda *shapes: [math.prod(shapes[0]), 0], validate=False)


elementwise("neg", 1, "neg(x) -> -x, same shape. d/dx = -1.",
            backward=lambda ctx, grad: (ctx.g.neg(grad),))
elementwise("abs", 1, "abs(x) -> |x|, same shape. d/dx = sign(x), and 0 at x = 0 as in PyTorch.",
            backward=lambda ctx, grad: (ctx.g.abs_backward(grad, ctx.inputs[0]),))
elementwise("sigmoid", 1, "sigmoid(x) -> 1 / (1 + exp(-x)), same shape. d/dx = y (1 - y), from the saved output y.",
            backward=lambda ctx, grad: (ctx.g.sigmoid_backward(grad, ctx.output),))
register_op(
    "add", ADD, inputs=2, shape=_add_shape, forward=_add_forward, backward=_add_backward,
    variants=lambda: [ADD, ADD_ROW],
    doc="add(a, b) -> a + b: operands of one shape, or a [batch, n] and a vector [n] added to every row (a bias). "
        "d/da = 1; d/db = 1, summed over the batch when b was broadcast.",
)
elementwise("relu", 1, "relu(x) -> max(x, 0), same shape. d/dx = 1 where x > 0, else 0 (0 at x = 0, as in PyTorch).",
            backward=lambda ctx, grad: (ctx.g.relu_backward(grad, ctx.inputs[0]),))
elementwise("mul", 2, "mul(a, b) -> a * b, operands of one shape. d/da = b, d/db = a.",
            backward=lambda ctx, grad: (ctx.g.mul(grad, ctx.inputs[1]) if ctx.needs[0] else None,
                                        ctx.g.mul(grad, ctx.inputs[0]) if ctx.needs[1] else None))
elementwise("mul_scalar", 2, "mul_scalar(x, s) -> x * s[0], s of shape (1,). d/dx = s, d/ds = sum(grad * x).",
            shape=partial(scalar_second, "mul_scalar"),
            backward=lambda ctx, grad: (ctx.g.mul_scalar(grad, ctx.inputs[1]) if ctx.needs[0] else None,
                                        ctx.g.sum_all(ctx.g.mul(grad, ctx.inputs[0])) if ctx.needs[1] else None))
MUL_ROWS = _variant("mul_rows", 2)
register_op(
    "mul_rows", MUL_ROWS, inputs=2, validate=False,
    shape=lambda a, s: a if len(a) == 2 and s == a[:1] else _raise(
        ValueError(f"mul_rows: needs a matrix [rows, cols] and a vector [rows]; got {a} and {s}")),
    push=lambda a, s: [math.prod(a), a[1]],
    doc="mul_rows(x, s) -> x * s[row]: x [rows, cols], s [rows], each row of x times its entry of s (the "
        "backward of a per-row loss such as cross_entropy_loss(reduction='none')). Not differentiable.",
)
elementwise("abs_backward", 2, "abs_backward(grad, x) -> grad * sign(x) (sign(0) = 0): the gradient of abs.")
elementwise("relu_backward", 2, "relu_backward(grad, x) -> grad where x > 0, else 0: the gradient of relu.")
elementwise("sigmoid_backward", 2, "sigmoid_backward(grad, y) -> grad * y * (1 - y), y = sigmoid(x).")
