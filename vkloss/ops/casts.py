"""16-bit tensors (float16, bfloat16) <-> float32 on the device: shaders/casts.comp.

A 16-bit tensor of n elements lives in ceil(n / 2) 32-bit words, two elements to a word (see
shaders/include/storage16.glsl). The ops that take 16-bit inputs without reading them natively widen them to float32
here, do their maths in float32, and narrow the gradient back to the input's 16-bit type."""
from __future__ import annotations

import math

import numpy as np

from ..kernels import Kernel
from ..implementations import ForwardKernel
from ..registry import register_op
from ..tensor import BFLOAT16, buffer_layout, dtype_name, packed_words

STORAGE = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", BFLOAT16: "BF16"}
STORED_DTYPE = {switch: dtype for dtype, switch in STORAGE.items()}  # a storage switch's tensor dtype
DTYPES = {dtype_name(dtype): dtype for dtype in STORAGE}  # astype's names: float32, float16, bfloat16

CASTS = Kernel(
    "casts.comp", push="uint n", switches={"mode": ("WIDEN", "NARROW"), "storage": ("F16", "BF16")},
    bindings=lambda mode, storage: (["words"], ["values"]) if mode == "WIDEN" else (["values"], ["words"]),
)


def storage(dtype) -> str:
    """A tensor dtype's storage switch: F32, F16 or BF16 (the 16-bit kernels' switch values)."""
    return STORAGE[dtype if dtype == BFLOAT16 else np.dtype(dtype)]


def alloc(ctx, n: int, storage_switch: str):
    """A buffer for n values stored as `storage_switch` (F32, or F16/BF16 packed two to a word)."""
    return ctx.alloc(*buffer_layout(n, STORED_DTYPE[storage_switch]))


def widen(ctx, packed, n: int, dtype, values=None):
    """A float32 buffer (`values`, else a new one) of the n 16-bit elements in `packed`."""
    values = ctx.alloc(n) if values is None else values
    ctx.dispatch(CASTS.variant(mode="WIDEN", storage=storage(dtype)), ctx.groups_for(packed_words(n)), push={"n": n},
                 words=packed, values=values)
    return values


def narrow(ctx, values, n: int, dtype, packed=None):
    """The n float32 values of `values`, rounded to `dtype` (float16 or bfloat16), packed two to a word (into
    `packed`, else a new buffer)."""
    packed = alloc(ctx, n, storage(dtype)) if packed is None else packed
    ctx.dispatch(CASTS.variant(mode="NARROW", storage=storage(dtype)), ctx.groups_for(packed_words(n)), push={"n": n},
                 values=values, words=packed)
    return packed


def float32(ctx, buffer, n: int, dtype):
    """`buffer` as float32: itself, or widened from 16 bits."""
    return buffer if storage(dtype) == "F32" else widen(ctx, buffer, n, dtype)


def in_dtype(ctx, values, n: int, dtype):
    """float32 `values` in `dtype`: themselves, or narrowed to 16 bits (the inverse of float32)."""
    return values if storage(dtype) == "F32" else narrow(ctx, values, n, dtype)


def _astype_forward(ctx, x, dtype):
    source, target, n = ctx.dtypes[0], DTYPES[dtype], math.prod(ctx.shapes[0])
    if storage(source) == storage(target):
        ctx.copy(x, ctx.out)
    elif storage(target) == "F32":
        widen(ctx, x, n, source, values=ctx.out)
    else:
        narrow(ctx, float32(ctx, x, n, source), n, target, packed=ctx.out)


register_op(
    "astype(Float x, *, dtype{float32|float16|bfloat16} dtype) -> Tensor",
    ForwardKernel(shape=lambda x, dtype: x, forward=_astype_forward, kernels=(CASTS,),
                  backward=lambda ctx, grad: (ctx.g.astype(grad, dtype=dtype_name(ctx.inputs[0].dtype)),),
                  out_dtype=lambda dtypes, dtype: DTYPES[dtype]),
    doc="x as float32, float16 or bfloat16 (rounded to nearest even), as PyTorch's x.to(dtype): how a 16-bit "
        "tensor reaches the float32 ops, and back. The gradient comes back in x's dtype.",
)
