"""The op table: every op vkloss knows is declared here once, by `register`.

An entry holds the op's name, its shader family, how many tensors it takes, the rule that gives the output shape
from the input shapes, how it runs forward, and how it differentiates:

- "primitive autodiff": composed from other ops in Python (`compose`); the tape records those ops, and the
  gradient comes from their rules. No shader of its own.
- "own rule": a kernel forward and a `backward(ctx, grad)` written with other ops, one gradient per input.
- "fused kernel": one kernel computes the value and the gradient in the same pass; backward scales that.
- "not differentiable": helpers that backward rules use (the tape never records them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

BACKWARD_KINDS = ("fused kernel", "primitive autodiff", "own rule", "not differentiable")


@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    backward_kind: str
    doc: str
    shader: str | None = None  # the .comp family, for `tools list`
    shape: Callable | None = None  # (*input_shapes, **attrs) -> output shape; raises ValueError
    # (engine, input buffers, output buffer, input shapes, **attrs) -> None, or for a fused kernel
    # (..., want_grad=bool, **attrs) -> FusedResult
    forward: Callable | None = None
    backward: Callable | None = None  # (ctx, grad) -> one gradient Tensor (or None) per input
    compose: Callable | None = None  # (graph, *tensors, **attrs) -> Tensor, for composed ops
    variants: Callable | None = None  # () -> the shader variants this op may use, for `tools compile/check`
    attrs: tuple = field(default=())


@dataclass
class FusedResult:
    """What a fused kernel's forward leaves beside its value: the gradient with respect to its first input (None
    when that input needs none), and device-side checks, each a (count buffer, message) pair: a non-zero count
    raises ValueError(message.format(count=...)) at the next host read, read back in the same flush."""

    grad: object = None
    checks: list = field(default_factory=list)


_OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    if op.name in _OPS:
        raise ValueError(f"an op named {op.name!r} is already registered")
    if op.backward_kind not in BACKWARD_KINDS:
        raise ValueError(f"{op.name}: backward_kind must be one of {BACKWARD_KINDS}, got {op.backward_kind!r}")
    if (op.compose is None) == (op.forward is None):
        raise ValueError(f"{op.name}: give exactly one of forward (a kernel) or compose (other ops)")
    if op.backward_kind == "own rule" and op.backward is None:
        raise ValueError(f"{op.name}: an 'own rule' op needs a backward rule")
    _OPS[op.name] = op
    return op


def get(name: str) -> Op:
    _load_builtin_ops()
    try:
        return _OPS[name]
    except KeyError:
        raise AttributeError(f"no op named {name!r}") from None


def all_ops() -> list[Op]:
    _load_builtin_ops()
    return list(_OPS.values())


def _load_builtin_ops() -> None:
    from . import ops  # noqa: F401  (importing the families registers them)
