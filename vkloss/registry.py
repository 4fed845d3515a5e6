"""The op table: every op, built-in or a user's, is declared once, by `register_op`.

An entry holds the op's name, its shader, how many tensors it takes, the rule that gives the output shape from the
input shapes, how it runs forward, and how it differentiates:

- "primitive autodiff": composed from other ops in Python (`compose`); the tape records those ops, and the
  gradient comes from their rules. No shader of its own.
- "own rule": a kernel forward and a `backward(ctx, grad)` written with other ops, one gradient per input.
- "fused kernel": one kernel computes the value and the gradient in the same pass; backward scales that.
- "not differentiable": helpers that backward rules use (the tape never records them).

The simplest op is a shader with one invocation per output element: bindings are the inputs in order, then the
output; push constants come from `push(*input_shapes, **attrs)` (default: the output's size). An op that needs
several dispatches passes its own `forward(engine, input_buffers, output_buffer, input_shapes, **attrs)`.
Other packages register ops by importing vkloss and calling `register_op`; `python -m vkloss.tools --import MODULE`
and the entry-point group "vkloss.ops" bring their ops to the tools.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import shaders

BACKWARD_KINDS = ("fused kernel", "primitive autodiff", "own rule", "not differentiable")
NOT_DIFFERENTIABLE = "not differentiable"


@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    backward_kind: str
    doc: str
    shader: str | None = None  # the .comp file, for `tools list`
    shape: Callable | None = None  # (*input_shapes, **attrs) -> output shape; raises ValueError
    # (engine, input buffers, output buffer, input shapes, **attrs) -> None, or for a fused kernel
    # (..., want_grad=bool, **attrs) -> FusedResult
    forward: Callable | None = None
    backward: Callable | None = None  # (ctx, grad) -> one gradient Tensor (or None) per input
    compose: Callable | None = None  # (graph, *tensors, **attrs) -> Tensor, for composed ops
    variants: Callable | None = None  # () -> the shader variants this op may use, for `tools compile/check`
    options: dict | None = None  # keyword options the op takes -> what each accepts, for `tools list`
    tensor_attrs: tuple = ()  # options whose value is a tensor (a numpy array is uploaded); forward gets its buffer
    integer_inputs: tuple = ()  # 1-based positions that also take int32 tensors (class indices)
    inplace_attr: str | None = None  # the option with which a fused op writes its gradient over its first input
    grad_inputs: tuple = (1,)  # 1-based positions a fused kernel gives gradients for


@dataclass
class FusedResult:
    """What a fused kernel's forward leaves beside its value: the gradient with respect to its first input (None
    when that input needs none), and device-side checks, each a (count buffer, message) pair: a non-zero count
    raises ValueError(message.format(count=...)) at the next host read, read back in the same flush."""

    grad: object = None
    checks: list = field(default_factory=list)
    grads: list | None = None  # instead of grad, for an op with several grad_inputs: one buffer (or None) per input


_OPS: dict[str, Op] = {}


def _shader_variant(name: str, shader, defines: dict) -> shaders.Variant:
    """A variant for a .comp path, or for GLSL source text (written once into the cache, named by its hash)."""
    if isinstance(shader, shaders.Variant):
        return shader
    text = str(shader)
    if "\n" in text or "void main" in text:
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = shaders.cache_dir() / "sources" / f"{name}-{digest}.comp"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        shader = path
    elif not Path(text).is_file():
        raise ValueError(f"register_op {name}: shader file {text} not found (give a .comp path or GLSL source)")
    else:
        shader = Path(text).resolve()
    return shaders.variant(shader, **defines)


def register_op(name: str, shader=None, *, inputs: int, shape: Callable | None = None, push: Callable | None = None,
                invocations: Callable | None = None, defines: dict | None = None, backward=NOT_DIFFERENTIABLE,
                forward: Callable | None = None, compose: Callable | None = None, fused: bool = False,
                variants: Callable | None = None, doc: str = "", validate: bool = True, options: dict | None = None,
                tensor_attrs: tuple = (), integer_inputs: tuple = (), inplace_attr: str | None = None,
                grad_inputs: tuple = (1,)) -> Op:
    """Declare an op; it then exists as `g.<name>` on every Graph and in `python -m vkloss.tools list`.

    name: a Python identifier not taken yet.
    shader: a `.comp` path or GLSL source text (it may `#include "common.glsl"`: the workgroup size WG,
        `global_index()`). Bindings: the inputs in order, then the output.
    inputs: how many tensors the op takes.
    shape(*input_shapes, **attrs): the output shape; raise ValueError for shapes the op does not take.
    push(*input_shapes, **attrs): the push constants, ints and floats (default: [output size]).
    invocations(*input_shapes, **attrs): how many invocations to dispatch (default: the output size).
    defines: preprocessor defines for the shader.
    backward(ctx, grad): one gradient per input (None where ctx.needs says none is wanted), written with other
        ops; or "not differentiable".
    forward / compose / fused: an op that runs several dispatches itself, one built from other ops, one whose
        forward also returns its gradient (see FusedResult). The built-in ops use these.
    validate: compile the shader now and check its bindings, so a mistake shows at registration.
    options: the keyword options the op takes, each with a short description of its values (shown by
        `tools list`); others then raise TypeError. tensor_attrs: those whose value is a tensor or numpy array (the
        shape rule gets its shape, forward its buffer). integer_inputs: 1-based positions that also take int32
        tensors or integer numpy arrays (class indices). inplace_attr: a fused op's option that, when true, makes it
        write its gradient over its first input (which must be an op's output; it is unreadable afterwards).
        grad_inputs: the 1-based positions a fused op's forward gives gradients for (FusedResult.grads); default
        the first only (FusedResult.grad).
    """
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"register_op: {name!r} is not a valid op name (a Python identifier, no leading _)")
    if name in _OPS:
        raise ValueError(f"register_op: an op named {name!r} is already registered")
    if name in _graph_names():
        raise ValueError(f"register_op: {name!r} is already a Graph attribute (g.{name}), so an op of that name "
                         "could never be called; choose another name")
    if compose is None and shader is None:
        raise ValueError(f"register_op {name}: give a shader (or compose=, for an op built from other ops)")
    if backward != NOT_DIFFERENTIABLE and not callable(backward):
        raise ValueError(f"register_op {name}: backward must be a function (ctx, grad) -> gradients, "
                         f"or {NOT_DIFFERENTIABLE!r}")
    backward_fn = backward if callable(backward) else None
    kind = ("primitive autodiff" if compose else "fused kernel" if fused else
            "own rule" if backward_fn else NOT_DIFFERENTIABLE)
    variant = _shader_variant(name, shader, defines or {}) if shader is not None else None
    if shape is not None:
        shape = _explained(name, shape)
    if compose is None and forward is None:
        forward = _one_dispatch(variant, push, invocations)
        if validate:
            _check_bindings(name, variant, inputs + 1)
    op = Op(name=name, arity=inputs, backward_kind=kind, doc=doc or f"{name}: a registered op.",
            shader=variant.path.name if variant else None, shape=shape, forward=forward, backward=backward_fn,
            compose=compose, variants=variants or ((lambda: [variant]) if variant else None), options=options,
            tensor_attrs=tuple(tensor_attrs), integer_inputs=tuple(integer_inputs), inplace_attr=inplace_attr,
            grad_inputs=tuple(grad_inputs))
    _OPS[name] = op
    return op


def _graph_names() -> set[str]:
    """Names Graph defines itself. The built-in ops register while vkloss.graph is still being imported, before the
    class exists; their names are known not to clash."""
    import sys

    graph = getattr(sys.modules.get(__package__ + ".graph"), "Graph", None)
    return set(dir(graph)) if graph is not None else set()


def _explained(name, rule):
    """A shape rule whose failures name the op and the shapes it was given."""
    def shape(*shapes, **attrs):
        try:
            out = rule(*shapes, **attrs)
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(f"{name}: its shape rule failed for input shapes {shapes}: {type(e).__name__}: {e}") from e
        if not isinstance(out, (tuple, list)) or not all(isinstance(d, int) and d > 0 for d in out) or not out:
            raise ValueError(f"{name}: its shape rule returned {out!r} for input shapes {shapes}; "
                             "expected a tuple of positive ints")
        return tuple(out)

    return shape


def _one_dispatch(variant, push, invocations):
    def forward(engine, inputs, out, shapes, **attrs):
        constants = push(*shapes, **attrs) if push else [out.size]
        count = invocations(*shapes, **attrs) if invocations else out.size
        engine.dispatch(variant, inputs, [out], list(constants), engine.groups_for(count))

    return forward


def _check_bindings(name, variant, expected):
    declared = shaders.binding_count(shaders.load(variant))  # compiles now: a GLSL error names file and line
    if declared != expected:
        raise ValueError(f"register_op {name}: {variant.path.name} declares {declared} buffer bindings, but an op "
                         f"with {expected - 1} input(s) and one output binds {expected} (inputs first, then output)")


def get(name: str) -> Op:
    _load_ops()
    try:
        return _OPS[name]
    except KeyError:
        raise AttributeError(f"no op named {name!r}") from None


def all_ops() -> list[Op]:
    _load_ops()
    return list(_OPS.values())


_plugins_loaded = False


def _load_ops() -> None:
    """The built-in families, then every entry point in the group "vkloss.ops" (other packages' ops)."""
    global _plugins_loaded
    from . import ops  # noqa: F401  (importing the families registers them)

    if not _plugins_loaded:
        _plugins_loaded = True
        from importlib.metadata import entry_points

        for entry in entry_points(group="vkloss.ops"):
            entry.load()

