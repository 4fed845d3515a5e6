"""Elementwise ops: one shader family (shaders/elementwise.comp), one variant per op."""
from __future__ import annotations

from functools import partial

from .. import shaders
from ..registry import Op, register

SHADER = "elementwise.comp"


def same_shape(name, a, b):
    if a != b:
        raise ValueError(f"{name}: shapes {a} and {b} differ; elementwise ops need operands of the same shape")
    return a


def _variant(op_name: str, arity: int):
    return shaders.variant(SHADER, ARITY=arity, **{f"OP_{op_name.upper()}": 1})


def _forward(op_name, arity, engine, inputs, out, shapes):
    engine.dispatch(_variant(op_name, arity), inputs, [out], [out.size], engine.groups_for(out.size))


def scalar_second(name, a, s):
    if s != (1,):
        raise ValueError(f"{name}: the scale must have shape (1,), got {s} (beside {a})")
    return a


def elementwise(name, arity, doc, backward=None, shape=None):
    """Declare one elementwise op: its kernel is the OP_<NAME> variant of elementwise.comp."""
    return register(Op(
        name=name, arity=arity, doc=doc, shader=SHADER,
        backward_kind="own rule" if backward else "not differentiable",
        shape=shape or ((lambda x: x) if arity == 1 else partial(same_shape, name)),
        forward=partial(_forward, name, arity), backward=backward,
        variants=lambda: [_variant(name, arity)],
    ))


elementwise("neg", 1, "neg(x) -> -x, same shape. d/dx = -1.",
            backward=lambda ctx, grad: (ctx.g.neg(grad),))
elementwise("abs", 1, "abs(x) -> |x|, same shape. d/dx = sign(x), and 0 at x = 0 as in PyTorch.",
            backward=lambda ctx, grad: (ctx.g.abs_backward(grad, ctx.inputs[0]),))
elementwise("sigmoid", 1, "sigmoid(x) -> 1 / (1 + exp(-x)), same shape. d/dx = y (1 - y), from the saved output y.",
            backward=lambda ctx, grad: (ctx.g.sigmoid_backward(grad, ctx.output),))
elementwise("add", 2, "add(a, b) -> a + b, operands of one shape. d/da = d/db = 1.",
            backward=lambda ctx, grad: (grad, grad))
elementwise("mul", 2, "mul(a, b) -> a * b, operands of one shape. d/da = b, d/db = a.",
            backward=lambda ctx, grad: (ctx.g.mul(grad, ctx.inputs[1]) if ctx.needs[0] else None,
                                        ctx.g.mul(grad, ctx.inputs[0]) if ctx.needs[1] else None))
elementwise("mul_scalar", 2, "mul_scalar(x, s) -> x * s[0], s of shape (1,). d/dx = s, d/ds = sum(grad * x).",
            shape=partial(scalar_second, "mul_scalar"),
            backward=lambda ctx, grad: (ctx.g.mul_scalar(grad, ctx.inputs[1]) if ctx.needs[0] else None,
                                        ctx.g.sum_all(ctx.g.mul(grad, ctx.inputs[0])) if ctx.needs[1] else None))
elementwise("abs_backward", 2, "abs_backward(grad, x) -> grad * sign(x) (sign(0) = 0): the gradient of abs.")
elementwise("sigmoid_backward", 2, "sigmoid_backward(grad, y) -> grad * y * (1 - y), y = sigmoid(x).")
