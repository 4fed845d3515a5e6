"""Matrix products: shaders/matmul.comp."""
from __future__ import annotations

import numpy as np

from .. import shaders
from ..engine import ceil_div
from ..registry import register_op

SHADER = "matmul.comp"
BLOCK = 8  # each invocation computes a BLOCK x BLOCK block of the product (the shader's BLOCK define)
MATMUL = shaders.variant(SHADER, BLOCK=BLOCK)
K_SLICE = 16384  # k one dispatch sums: one loop iteration each, far below lavapipe's limit of about 65,535


def matmul_into(engine, a, b, out, m: int, n: int, k: int, trans_a=False, trans_b=False, accumulate=False,
                offsets=(0, 0, 0)) -> None:
    """out[m, n] (+)= op(a) @ op(b) on the device, k split into slices of K_SLICE, each added to the last.
    `offsets`: where a, b and out start in their buffers (in elements), so row blocks are operands."""
    for k_begin in range(0, k, K_SLICE):
        push = [m, n, k, k_begin, min(k, k_begin + K_SLICE), int(trans_a), int(trans_b),
                int(accumulate or k_begin > 0), *offsets]
        # out is read too when accumulating: list it as written, so the engine orders the slices
        engine.dispatch(MATMUL, [a, b], [out], push, engine.groups_for(ceil_div(m, BLOCK) * ceil_div(n, BLOCK)))


def _matmul_shape(a, b):
    if len(a) != 2 or len(b) != 2 or a[1] != b[0]:
        raise ValueError(f"matmul: needs [m, k] @ [k, n]; got shapes {a} and {b}")
    return (a[0], b[1])


def _matmul_forward(engine, inputs, out, shapes):
    (m, k), (_, n) = shapes
    matmul_into(engine, inputs[0], inputs[1], out, m, n, k)


def _matmul_backward(ctx, grad):
    a, b = ctx.inputs
    return (ctx.g.matmul_transposed(grad, b, trans_b=True) if ctx.needs[0] else None,  # grad @ b^T
            ctx.g.matmul_transposed(a, grad, trans_a=True) if ctx.needs[1] else None)  # a^T @ grad


def _transposed_shape(a, b, trans_a=False, trans_b=False):
    m, k = (a[1], a[0]) if trans_a else a
    k2, n = (b[1], b[0]) if trans_b else b
    if len(a) != 2 or len(b) != 2 or k != k2:
        raise ValueError(f"matmul_transposed: shapes {a} (transposed: {trans_a}) and {b} (transposed: {trans_b}) "
                         "do not chain")
    return (m, n)


def _transposed_forward(engine, inputs, out, shapes, trans_a=False, trans_b=False):
    m, n = _transposed_shape(*shapes, trans_a=trans_a, trans_b=trans_b)
    k = shapes[0][0] if trans_a else shapes[0][1]
    matmul_into(engine, inputs[0], inputs[1], out, m, n, k, trans_a, trans_b)


def _sum_rows_shape(x):
    if len(x) != 2:
        raise ValueError(f"sum_rows: needs a matrix [batch, n], got shape {x}")
    return (x[1],)


def _sum_rows_forward(engine, inputs, out, shapes):
    batch, n = shapes[0]
    ones = engine.upload(np.ones(batch, np.float32))
    matmul_into(engine, ones, inputs[0], out, 1, n, batch)  # [1, batch] @ [batch, n]


register_op(
    "matmul", MATMUL, inputs=2, shape=_matmul_shape, forward=_matmul_forward, backward=_matmul_backward,
    doc="matmul(a, b) -> a @ b for a [m, k] and b [k, n]. d/da = grad @ b^T, d/db = a^T @ grad (the same kernel, "
        "reading the operands transposed).",
)
register_op(
    "matmul_transposed", MATMUL, inputs=2, shape=_transposed_shape, forward=_transposed_forward,
    doc="matmul_transposed(a, b, trans_a=False, trans_b=False) -> op(a) @ op(b): the products matmul's backward needs.",
)
register_op(
    "sum_rows", MATMUL, inputs=1, shape=_sum_rows_shape, forward=_sum_rows_forward,
    doc="sum_rows(x) -> [n]: the sum over the batch of a [batch, n] matrix (the gradient of a broadcast bias), "
        "computed as ones[1, batch] @ x.",
)
