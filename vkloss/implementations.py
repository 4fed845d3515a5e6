"""How an op runs and differentiates: one implementation object per kind, given to `register_op(schema, impl)`.

- FusedKernel: the kernel computes the value and the gradients in the same pass (`ctx.save_for_backward`); backward
  scales them by the upstream gradient.
- ForwardKernel: a kernel forward and, if the op is differentiable, a `backward(ctx, grad)` written with other ops,
  one gradient per operand. Without one, backward reaching the op raises.
- Composed: built from other ops in Python (`compose(g, *operands, **options)`); the tape records those ops, and the
  gradient comes from their rules. No kernel of its own.
- View: the output is the first operand's buffer under the shape the shape rule gives (reshape): no forward.
- UserShader: a user's `.comp` file or GLSL source, one invocation per output element; bindings are the operands in
  order, then the output.

Forward, one convention for every kind: `forward(ctx, *operand_buffers, **options)`, where ctx (a ForwardContext)
allocates buffers, dispatches kernels, registers device-side checks and saves what backward needs, and `ctx.out` is
the output buffer. `shape(*operand_shapes, **options)` gives the output shape (a tuple of shapes for an op of several
outputs) and raises ValueError for shapes the op does not take.

Each kind turns itself into the fields of the registry's Op record (`op_fields`); the registry checks what every
kind shares.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import autodiff, shaders


class Backward(str, enum.Enum):
    """How an op differentiates. A str, so `tools list` prints the words."""

    FUSED = "fused kernel"
    COMPOSED = "primitive autodiff"
    RULE = "own rule"
    NONE = "not differentiable"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FusedKernel:
    """forward saves each operand's gradient (ctx.save_for_backward) while it computes the value.
    grad_inputs: the operands it gives gradients for (default: the first). inplace_option: a bool option that makes
    it write its gradient over its first operand. outputs_option: for an op of several outputs, a bool option
    without which it returns its first alone (Liger's return_z_loss). out_dtype(operand_dtypes, **options): the
    output's dtype where not float32."""

    shape: Callable
    forward: Callable
    kernels: tuple = ()  # the kernels.Kernel families forward dispatches (tools list, tools compile)
    grad_inputs: tuple = ()
    inplace_option: str | None = None
    outputs_option: str | None = None
    out_dtype: Callable | None = None

    def op_fields(self, name: str, signature) -> dict:
        return dict(backward_kind=Backward.FUSED, shape=self.shape, forward=self.forward, backward=scaled_saved_grads,
                    kernels=tuple(self.kernels), grad_inputs=tuple(self.grad_inputs) or _first(signature),
                    inplace_option=self.inplace_option, outputs_option=self.outputs_option, out_dtype=self.out_dtype)


@dataclass(frozen=True)
class ForwardKernel:
    """A kernel forward, and `backward(ctx, grad)` -> one gradient (or None) per operand; backward=None: not
    differentiable (a backward that reaches it raises). outputs_option and out_dtype as for FusedKernel."""

    shape: Callable
    forward: Callable
    backward: Callable | None = None
    kernels: tuple = ()
    outputs_option: str | None = None
    out_dtype: Callable | None = None

    def op_fields(self, name: str, signature) -> dict:
        _check_rule(name, self.backward)
        return dict(backward_kind=Backward.RULE if self.backward else Backward.NONE, shape=self.shape,
                    forward=self.forward, backward=self.backward, kernels=tuple(self.kernels),
                    outputs_option=self.outputs_option, out_dtype=self.out_dtype, grad_inputs=_first(signature))


@dataclass(frozen=True)
class Composed:
    """compose(g, *operands, **options) -> Tensor (or a tuple, with outputs_option set), written with other ops.
    fuse: where the composition is elementwise ops of its float32 operands (and perhaps a final mean_all or
    sum_all), run it as one generated kernel that computes the value and the gradient the ops' rules give
    (vkloss/fusion.py); elsewhere, and on a Graph(fuse=False), op by op."""

    compose: Callable
    outputs_option: str | None = None
    fuse: bool = False

    def op_fields(self, name: str, signature) -> dict:
        return dict(backward_kind=Backward.COMPOSED, compose=self.compose, outputs_option=self.outputs_option)


@dataclass(frozen=True)
class View:
    """The first operand's buffer under the shape `shape` gives; backward(ctx, grad) as ForwardKernel's."""

    shape: Callable
    backward: Callable

    def op_fields(self, name: str, signature) -> dict:
        _check_rule(name, self.backward)
        return dict(backward_kind=Backward.RULE, shape=self.shape, backward=self.backward, view=True,
                    grad_inputs=_first(signature))


@dataclass(frozen=True)
class UserShader:
    """A user's shader: `source` a `.comp` path or GLSL source text (it may `#include "common.glsl"`: the workgroup
    size WG, `global_index()`). push(*operand_shapes, **options): its push constants, ints and floats (default: the
    output's size); invocations(*operand_shapes, **options): how many to dispatch (default: the output's size);
    defines: preprocessor defines; backward as ForwardKernel's. validate: compile it now and check its bindings, so
    a mistake shows at registration."""

    source: str | Path
    shape: Callable
    push: Callable | None = None
    invocations: Callable | None = None
    defines: dict | None = None
    backward: Callable | None = None
    validate: bool = True

    def op_fields(self, name: str, signature) -> dict:
        _check_rule(name, self.backward)
        variant = shaders.variant(_shader_path(name, self.source), **(self.defines or {}))
        if self.validate:
            _check_bindings(name, variant, len(signature.operands) + 1)
        return dict(backward_kind=Backward.RULE if self.backward else Backward.NONE, shape=self.shape,
                    forward=_one_dispatch(variant, self.push, self.invocations), backward=self.backward,
                    shader_variants=(variant,), grad_inputs=_first(signature))


KINDS = (FusedKernel, ForwardKernel, Composed, View, UserShader)


def _first(signature) -> tuple:
    return tuple(p.name for p in signature.operands[:1])


def _check_rule(name: str, backward) -> None:
    if backward is not None and not callable(backward):
        raise ValueError(f"register_op {name}: backward must be a function (ctx, grad) -> one gradient per operand, "
                         f"or None for an op that is not differentiable; got {backward!r}")


def _shader_path(name: str, shader) -> Path:
    """A `.comp` path, or GLSL source text written once into the cache, named by its hash."""
    text = str(shader)
    if "\n" in text or "void main" in text:
        return shaders.written_source(name, text)
    if not Path(text).is_file():
        raise ValueError(f"register_op {name}: shader file {text} not found (give a .comp path or GLSL source)")
    return Path(text).resolve()


def _one_dispatch(variant, push, invocations):
    def forward(ctx, *operands, **options):
        constants = push(*ctx.shapes, **options) if push else [ctx.out.size]
        count = invocations(*ctx.shapes, **options) if invocations else ctx.out.size
        ctx.dispatch_shader(variant, list(operands), [ctx.out], list(constants), ctx.groups_for(count))

    return forward


def _check_bindings(name, variant, expected):
    declared = shaders.binding_count(shaders.load(variant))  # compiles now: a GLSL error names file and line
    if declared != expected:
        raise ValueError(f"register_op {name}: {variant.path.name} declares {declared} buffer bindings, but an op "
                         f"with {expected - 1} input(s) and one output binds {expected} (inputs first, then output)")


def scaled_saved_grads(ctx, grad):
    """A fused op's backward: the gradients its kernel saved, times the upstream gradient unless that is the seed 1.
    Upstream is one value for a reduced loss, or one per row or element of the saved gradient (reduction='none')."""
    return tuple(None if saved is None or not need else saved if ctx.upstream_is_one else _scaled(ctx.g, saved, grad)
                 for saved, need in zip(ctx.saved, ctx.needs))


def _scaled(g, saved, grad):
    """saved * grad; a 16-bit saved gradient is scaled in float32 and returned in its own dtype."""
    multiply = g.mul_scalar if grad.shape == (1,) else g.mul if grad.shape == saved.shape else g.ops.mul_rows
    return autodiff.in_float32(g, lambda s: multiply(s, grad), saved)
