"""Matrix products: shaders/matmul.comp."""
from __future__ import annotations

import numpy as np

from ..launch import ceil_div
from ..kernels import ACCESS_SWITCHES, Kernel, access_allowed, access_switches
from ..implementations import ForwardKernel
from ..registry import register_op

BLOCK = 8  # each invocation computes a BLOCK x BLOCK block of the product (the shader's BLOCK define)
TILE = 64  # the tiled variant's output tile per workgroup of 256 (the shader's TILE)
def _allowed(tiled, vec4, wide, bias, mask, bias_sum, pair):
    # wider accesses: the register-block kernel only; an epilogue (a forward) and a masked or bias-summing product
    # (a backward) are never one dispatch; a pair is a linear layer's backward: the weight's gradient with the bias's
    # beside it, then the input's
    return (not (tiled and vec4) and access_allowed(vec4, wide) and not (bias and (mask or bias_sum))
            and (not pair or bias_sum))


def _bindings(mask, bias, bias_sum, pair, **_):
    return (["a", "b", *(["mask"] if mask else []), *(["bias"] if bias else []), *(["b2"] if pair else [])],
            ["out", *(["bias_grad"] if bias_sum else []), *(["out2"] if pair else [])])


MATMUL = Kernel(
    "matmul.comp", defines={"BLOCK": BLOCK}, allowed=_allowed, bindings=_bindings,
    switches={"tiled": (False, True), **ACCESS_SWITCHES, "bias": (False, True),
              "mask": (False, True), "bias_sum": (False, True), "pair": (False, True)},
    push="uint m, uint n, uint k, uint k_begin, uint k_end, uint trans_a, uint trans_b, uint accumulate, "
         "uint a_offset, uint b_offset, uint out_offset, uint relu = 0, "
         "uint m2 = 0, uint n2 = 0, uint k2 = 0, uint trans_a2 = 0, uint trans_b2 = 0",
)
K_SLICE = 16384  # k one dispatch sums: at most one loop iteration each, far below lavapipe's limit of about 65,535


def use_tiles(device) -> bool:
    """Shared-memory tiles on GPUs; register blocks on CPU implementations, where lavapipe runs a 256-wide
    workgroup as coroutines switched at each of its 2 barriers per 16 steps of k."""
    return device.type != "cpu"


def operand_width(ctx, m: int, n: int, k: int, trans_a: bool, trans_b: bool, offsets) -> int:
    """Floats an access the register-block kernel may read of both operands (ForwardContext.access_width: 8, 4 or
    1): each operand's offset, and its row length along the way it is stored (k for a [m, k] a or a transposed b,
    else m or n), must be multiples of it."""
    slices = [K_SLICE] if k > K_SLICE else []  # a slice's first step of k starts an access of a k-contiguous operand
    return ctx.access_width(m if trans_a else k, k if trans_b else n, offsets[0], offsets[1], *slices)


def matmul_into(ctx, a, b, out, m: int, n: int, k: int, trans_a=False, trans_b=False, accumulate=False,
                offsets=(0, 0, 0), *, bias=None, relu=False, mask=None, bias_grad=None) -> None:
    """out[m, n] (+)= op(a) @ op(b) on the device, k split into slices of K_SLICE, each added to the last.
    `offsets`: where a, b and out start in their buffers (in elements), so row blocks are operands.

    A linear layer's parts (matmul.comp): `bias` [n] and `relu`, the epilogue relu(product + bias) (applied with the
    last slice); `mask`, stored as a is, reads a as (mask <= 0 ? 0 : a); `bias_grad` [m] (+)= the sums of op(a)'s
    rows, in the same dispatches (offsets must be 0 then)."""
    tiled = use_tiles(ctx.device)
    width = 1 if tiled else operand_width(ctx, m, n, k, trans_a, trans_b, offsets)
    switches = dict(tiled=tiled, **access_switches(width), mask=mask is not None)
    plain = MATMUL.variant(**switches, bias_sum=bias_grad is not None)
    last = MATMUL.variant(**switches, bias_sum=bias_grad is not None, bias=bias is not None)
    if tiled:  # workgroups of 256 (the shader's tiles are laid out for it)
        workgroup = 256
        grid = ctx.grid(ceil_div(m, TILE) * ceil_div(n, TILE) + (ceil_div(m, 256) if bias_grad is not None else 0))
    else:  # bias sums: one row an invocation where a is stored with k contiguous, else `width` rows
        workgroup = ctx.block_workgroup()
        sums = (m if not trans_a else m // width) if bias_grad is not None else 0
        grid = ctx.groups_for(ceil_div(m, BLOCK) * ceil_div(n, BLOCK) + sums, workgroup)
    for k_begin in range(0, k, K_SLICE):
        k_end = min(k, k_begin + K_SLICE)
        push = dict(m=m, n=n, k=k, k_begin=k_begin, k_end=k_end, trans_a=trans_a, trans_b=trans_b,
                    accumulate=accumulate or k_begin > 0, a_offset=offsets[0], b_offset=offsets[1],
                    out_offset=offsets[2], relu=relu and k_end == k)
        # out is read too when accumulating: the binding table lists it as written, so the engine orders the slices
        ctx.dispatch(last if k_end == k else plain, grid, workgroup=workgroup, push=push, a=a, b=b, out=out,
                     mask=mask, bias=bias if k_end == k else None, bias_grad=bias_grad)


def linear_grads_into(ctx, grad, x, weight, grad_x, grad_weight, grad_bias, batch: int, outputs: int,
                      features: int, mask=None) -> None:
    """A linear layer's backward: grad_weight [outputs, features] = g.T @ x with grad_bias [outputs] = g summed over
    the batch, and grad_x [batch, features] = g @ weight, g = grad [batch, outputs] where mask > 0. One dispatch (the
    PAIR variant) where neither product's k needs slices; else the two products apart."""
    if max(batch, outputs) > K_SLICE:
        matmul_into(ctx, grad, x, grad_weight, outputs, features, batch, trans_a=True, mask=mask, bias_grad=grad_bias)
        matmul_into(ctx, grad, weight, grad_x, batch, features, outputs, mask=mask)
        return
    tiled = use_tiles(ctx.device)
    width = 1 if tiled else min(operand_width(ctx, outputs, features, batch, True, False, (0, 0)),
                                operand_width(ctx, batch, features, outputs, False, False, (0, 0)))
    variant = MATMUL.variant(tiled=tiled, **access_switches(width), mask=mask is not None, bias_sum=True, pair=True)
    if tiled:  # the weight's tiles, its bias sums (256 rows a workgroup), the input's tiles
        workgroup = 256
        grid = ctx.grid(ceil_div(outputs, TILE) * ceil_div(features, TILE) + ceil_div(outputs, 256)
                        + ceil_div(batch, TILE) * ceil_div(features, TILE))
    else:  # the weight's blocks, its bias sums (`width` rows an invocation: g is read transposed), the input's
        workgroup = ctx.block_workgroup()
        grid = ctx.groups_for(ceil_div(outputs, BLOCK) * ceil_div(features, BLOCK) + outputs // width
                              + ceil_div(batch, BLOCK) * ceil_div(features, BLOCK), workgroup)
    push = dict(m=outputs, n=features, k=batch, k_begin=0, k_end=batch, trans_a=True, trans_b=False,
                accumulate=False, a_offset=0, b_offset=0, out_offset=0, m2=batch, n2=features, k2=outputs)
    ctx.dispatch(variant, grid, workgroup=workgroup, push=push, a=grad, b=x, b2=weight, out=grad_weight,
                 out2=grad_x, mask=mask, bias_grad=grad_bias)


def _matmul_shape(a, b):
    if len(a) != 2 or len(b) != 2 or a[1] != b[0]:
        raise ValueError(f"matmul: needs [m, k] @ [k, n]; got shapes {a} and {b}")
    return (a[0], b[1])


def _matmul_forward(ctx, a, b):
    (m, k), (_, n) = ctx.shapes
    matmul_into(ctx, a, b, ctx.out, m, n, k)


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


def _transposed_forward(ctx, a, b, trans_a=False, trans_b=False):
    m, n = _transposed_shape(*ctx.shapes, trans_a=trans_a, trans_b=trans_b)
    k = ctx.shapes[0][0] if trans_a else ctx.shapes[0][1]
    matmul_into(ctx, a, b, ctx.out, m, n, k, trans_a, trans_b)


def _transposed_backward(ctx, grad):
    """C = op(a) @ op(b): d op(a) = G @ op(b)^T and d op(b) = op(a)^T @ G, each transposed back where a or b was."""
    (a, b), (trans_a, trans_b), g = ctx.inputs, (ctx.attrs["trans_a"], ctx.attrs["trans_b"]), ctx.g
    grad_a = grad_b = None
    if ctx.needs[0]:
        grad_a = (g.matmul_transposed(b, grad, trans_a=trans_b, trans_b=True) if trans_a else
                  g.matmul_transposed(grad, b, trans_b=not trans_b))
    if ctx.needs[1]:
        grad_b = (g.matmul_transposed(grad, a, trans_a=True, trans_b=trans_a) if trans_b else
                  g.matmul_transposed(a, grad, trans_a=not trans_a))
    return grad_a, grad_b


def _sum_rows_shape(x):
    if len(x) != 2:
        raise ValueError(f"sum_rows: needs a matrix [batch, n], got shape {x}")
    return (x[1],)


def _sum_rows_forward(ctx, x):
    batch, n = ctx.shapes[0]
    ones = ctx.upload(np.ones(batch, np.float32))
    matmul_into(ctx, ones, x, ctx.out, 1, n, batch)  # [1, batch] @ [batch, n]


register_op(
    "matmul(Tensor a, Tensor b) -> Tensor",
    ForwardKernel(shape=_matmul_shape, forward=_matmul_forward, backward=_matmul_backward, kernels=(MATMUL,)),
    doc="a @ b for a [m, k] and b [k, n]. d/da = grad @ b^T, d/db = a^T @ grad (the same kernel, reading the "
        "operands transposed).",
)
register_op(
    "matmul_transposed(Tensor a, Tensor b, *, bool trans_a=False, bool trans_b=False) -> Tensor",
    ForwardKernel(shape=_transposed_shape, forward=_transposed_forward, backward=_transposed_backward,
                  kernels=(MATMUL,)),
    doc="op(a) @ op(b), op a transpose where asked (the products matmul's backward needs): a @ b.T is "
        "matmul_transposed(a, b, trans_b=True). d/da and d/db are products of the same kind.",
)
register_op(
    "sum_rows(Tensor x) -> Tensor",
    ForwardKernel(shape=_sum_rows_shape, forward=_sum_rows_forward, kernels=(MATMUL,),
                  backward=lambda ctx, grad: (ctx.g.broadcast_axis(grad, shape=ctx.inputs[0].shape, dim=0),)),
    doc="[n]: the sum over the batch of a [batch, n] matrix (the gradient of a broadcast bias), computed as "
        "ones[1, batch] @ x. d/dx: grad repeated over the rows.",
)
