"""Embedding lookups, PyTorch's F.embedding, and their deterministic gradient: shaders/embedding.comp."""
from __future__ import annotations

import math

from ..kernels import Kernel
from ..implementations import ForwardKernel
from ..registry import register_op
from .reductions import tree_sum

SLICE = 16384  # indices one scatter dispatch goes through: under lavapipe's loop limit

EMBEDDING = Kernel(
    "embedding.comp", switches={"mode": ("GATHER", "SCATTER")},
    bindings=lambda mode: ((["indices", "weight"], ["out", "bad"]) if mode == "GATHER" else
                           (["indices", "grad"], ["grad_weight"])),
    push="uint rows, uint dim, uint classes, uint n_begin = 0, uint n_end = 0, uint accumulate = 0",
)


def _shape(weight, indices):
    if len(weight) != 2:
        raise ValueError(f"embedding: weight must be [classes, dim], got shape {weight}")
    return tuple(indices) + (weight[1],)


def _forward(ctx, weight, indices):
    (classes, dim), rows = ctx.shapes[0], math.prod(ctx.shapes[1])
    bad, count = ctx.alloc(rows), ctx.alloc(1)
    ctx.dispatch(EMBEDDING.variant(mode="GATHER"), ctx.groups_for(rows * dim),
                 push=dict(rows=rows, dim=dim, classes=classes), indices=indices, weight=weight, out=ctx.out, bad=bad)
    tree_sum(ctx, bad, rows, count, 1.0)
    ctx.check(count, f"embedding: {{count}} indices (shape {ctx.shapes[1]}) are outside [0, {classes}), beside "
                     f"weight {ctx.shapes[0]}")


def _backward(ctx, grad):
    weight, indices = ctx.inputs
    return ctx.g.ops.embedding_backward(grad, indices, classes=weight.shape[0]), None


register_op(
    "embedding(Tensor weight, Index indices) -> Tensor",
    ForwardKernel(shape=_shape, forward=_forward, backward=_backward, kernels=(EMBEDDING,)),
    doc="indices' shape + [dim]: the rows of weight [classes, dim] that indices (an int32 Tensor or an integer numpy "
        "array, any shape) name, PyTorch's F.embedding(indices, weight). An index outside [0, classes) raises "
        "ValueError at the next host read. d/dweight: each row the sum of the upstream gradient's rows that looked it "
        "up, added in index order by one invocation per element (no atomics: the same on every run); that costs "
        "classes x indices comparisons per feature, fine for the vocabularies of the examples.",
)


def _backward_shape(grad, indices, classes):
    rows = math.prod(indices)
    if math.prod(grad) % rows or tuple(grad[:-1]) != tuple(indices) or classes < 1:
        raise ValueError(f"embedding_backward: grad {grad} does not match indices {indices}")
    return (classes, grad[-1])


def _backward_forward(ctx, grad, indices, classes):
    rows, dim = math.prod(ctx.shapes[1]), ctx.shapes[0][-1]
    for begin in range(0, rows, SLICE):
        ctx.dispatch(EMBEDDING.variant(mode="SCATTER"), ctx.groups_for(classes * dim),
                     push=dict(rows=rows, dim=dim, classes=classes, n_begin=begin, n_end=min(rows, begin + SLICE),
                               accumulate=begin > 0), indices=indices, grad=grad, grad_weight=ctx.out)


register_op(
    "embedding_backward(Tensor grad, Index indices, *, int classes) -> Tensor",
    ForwardKernel(shape=_backward_shape, forward=_backward_forward, kernels=(EMBEDDING,)), internal=True,
    doc="[classes, dim]: the gradient of embedding's weight, the rows of grad summed per index in a fixed order.",
)
