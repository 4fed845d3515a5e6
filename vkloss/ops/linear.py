"""A linear layer in nn.Linear's layout, its bias and activation in the matmul's epilogue: one dispatch forward, and
one backward (the weight's gradient with the bias's beside it, then the input's, in matmul.comp's PAIR variant).
shaders/matmul.comp."""
from __future__ import annotations

from ..implementations import ForwardKernel
from ..registry import register_op
from .matmul import MATMUL, linear_grads_into, matmul_into

ACTIVATIONS = ("none", "relu")


def _shape(x, weight, bias=None, activation="none"):
    if len(x) != 2 or len(weight) != 2 or x[1] != weight[1]:
        raise ValueError(f"linear: needs x [batch, in_features] and weight [out_features, in_features] (nn.Linear's "
                         f"layout); got x {x} and weight {weight}")
    if bias is not None and bias != weight[:1]:
        raise ValueError(f"linear: bias must have shape ({weight[0]},), one per output feature; got {bias} beside "
                         f"weight {weight}")
    return (x[0], weight[0])


def _forward(ctx, x, weight, bias=None, activation="none"):
    (batch, features), (outputs, _) = ctx.shapes[0], ctx.shapes[1]
    matmul_into(ctx, x, weight, ctx.out, batch, outputs, features, trans_b=True, bias=bias,
                relu=activation == "relu")


def _backward(ctx, grad):
    x, weight, bias = ctx.inputs
    g = ctx.g
    mask = ctx.output if ctx.attrs["activation"] == "relu" else None  # y > 0 where the relu let the gradient through
    grad_x = grad_weight = grad_bias = None
    if ctx.needs[0] and (ctx.needs[1] or ctx.needs[2]):
        grad_x, grad_weight, grad_bias = g.ops.linear_grads(grad, x, weight, mask)
    elif ctx.needs[0]:
        grad_x = g.ops.linear_grad_input(grad, weight, mask)
    elif ctx.needs[1] or ctx.needs[2]:
        grad_weight, grad_bias = g.ops.linear_grad_weight(grad, x, mask)
    return grad_x, grad_weight if ctx.needs[1] else None, grad_bias if ctx.needs[2] else None


register_op(
    "linear(Tensor x, Tensor weight, Tensor? bias=None, *, str{none|relu} activation='none') -> Tensor",
    ForwardKernel(shape=_shape, forward=_forward, backward=_backward, kernels=(MATMUL,)),
    doc="[batch, out_features]: activation(x @ weight.T + bias), PyTorch's F.linear (then F.relu): x [batch, "
        "in_features], weight [out_features, in_features] (nn.Linear's layout), bias [out_features] or None. One "
        "dispatch: the bias and the relu are the product's epilogue. d/dx = g @ weight, d/dweight = g.T @ x, "
        "d/dbias = g summed over the batch, with g the upstream gradient where the output is positive (relu) or "
        "everywhere (none); all three gradients come from one dispatch.",
)


def _grad_input_shape(grad, weight, mask=None):
    if len(grad) != 2 or len(weight) != 2 or grad[1] != weight[0] or mask not in (None, grad):
        raise ValueError(f"linear_grad_input: needs grad [batch, out_features], weight [out_features, in_features] "
                         f"and a mask like grad; got {grad}, {weight} and {mask}")
    return (grad[0], weight[1])


def _grad_input_forward(ctx, grad, weight, mask=None):
    (batch, outputs), (_, features) = ctx.shapes[0], ctx.shapes[1]
    matmul_into(ctx, grad, weight, ctx.out, batch, features, outputs, mask=mask)


def _grad_weight_shape(grad, x, mask=None):
    if len(grad) != 2 or len(x) != 2 or grad[0] != x[0] or mask not in (None, grad):
        raise ValueError(f"linear_grad_weight: needs grad [batch, out_features], x [batch, in_features] and a mask "
                         f"like grad; got {grad}, {x} and {mask}")
    return (grad[1], x[1]), (grad[1],)


def _grad_weight_forward(ctx, grad, x, mask=None):
    (batch, outputs), (_, features) = ctx.shapes[0], ctx.shapes[1]
    grad_weight, grad_bias = ctx.outs
    matmul_into(ctx, grad, x, grad_weight, outputs, features, batch, trans_a=True, mask=mask, bias_grad=grad_bias)


register_op(
    "linear_grad_input(Tensor grad, Tensor weight, Tensor? mask=None) -> Tensor",
    ForwardKernel(shape=_grad_input_shape, forward=_grad_input_forward, kernels=(MATMUL,)), internal=True,
    doc="[batch, in_features]: g @ weight, g = grad where mask > 0 (mask None: everywhere): linear's backward to its "
        "input.",
)
register_op(
    "linear_grad_weight(Tensor grad, Tensor x, Tensor? mask=None) -> (Tensor, Tensor)",
    ForwardKernel(shape=_grad_weight_shape, forward=_grad_weight_forward, kernels=(MATMUL,)), internal=True,
    doc="(g.T @ x [out_features, in_features], g summed over the batch [out_features]), g = grad where mask > 0: "
        "linear's backward to its weight and bias, in one dispatch.",
)


def _grads_shape(grad, x, weight, mask=None):
    if (len(grad) != 2 or len(x) != 2 or len(weight) != 2 or grad[0] != x[0] or grad[1] != weight[0]
            or x[1] != weight[1] or mask not in (None, grad)):
        raise ValueError(f"linear_grads: needs grad [batch, out_features], x [batch, in_features], weight "
                         f"[out_features, in_features] and a mask like grad; got {grad}, {x}, {weight} and {mask}")
    return x, weight, (weight[0],)


def _grads_forward(ctx, grad, x, weight, mask=None):
    (batch, outputs), (_, features) = ctx.shapes[0], ctx.shapes[1]
    grad_x, grad_weight, grad_bias = ctx.outs
    linear_grads_into(ctx, grad, x, weight, grad_x, grad_weight, grad_bias, batch, outputs, features, mask)


register_op(
    "linear_grads(Tensor grad, Tensor x, Tensor weight, Tensor? mask=None) -> (Tensor, Tensor, Tensor)",
    ForwardKernel(shape=_grads_shape, forward=_grads_forward, kernels=(MATMUL,)), internal=True,
    doc="(g @ weight [batch, in_features], g.T @ x [out_features, in_features], g summed over the batch "
        "[out_features]), g = grad where mask > 0: linear's backward to its input, weight and bias, in one dispatch.",
)
