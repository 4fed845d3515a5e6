"""The op table: every op, built-in or a user's, is declared once, by `register_op`.

An entry holds the op's schema (its typed signature: see vkloss/schema.py), the rule that gives the output shape,
how it runs forward, how it differentiates (a `Backward` kind), and its docstring:

- Backward.COMPOSED: built from other ops in Python (`compose(g, *operands, **options)`); the tape records those ops,
  and the gradient comes from their rules. No kernel of its own.
- Backward.RULE: a kernel forward and a `backward(ctx, grad)` written with other ops, one gradient per operand.
- Backward.FUSED: the kernel computes the value and the gradients in the same pass (`ctx.save_for_backward`);
  backward scales them by the upstream gradient.
- Backward.NONE: helpers that backward rules use (the tape never records them).

Forward, one convention for every op: `forward(ctx, *operand_buffers, **options)`, where ctx (a ForwardContext)
allocates buffers, dispatches kernels, registers device-side checks and saves what backward needs, and `ctx.out` is
the output buffer. The simplest op is a shader with one invocation per output element: its bindings are the operands
in order, then the output; push constants come from `push(*operand_shapes, **options)` (default: the output's size).

Registering an op also makes it a method of `Graph` (with the schema's signature). Other packages register ops by
importing vkloss and calling `register_op`; `python -m vkloss.tools --import MODULE` and the entry-point group
"vkloss.ops" bring their ops to the tools.
"""
from __future__ import annotations

import enum
import functools
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import autodiff, kernels, schema as schemas, shaders
from .launch import WORKGROUP


class Backward(str, enum.Enum):
    """How an op differentiates. A str, so `tools list` prints the words."""

    FUSED = "fused kernel"
    COMPOSED = "primitive autodiff"
    RULE = "own rule"
    NONE = "not differentiable"

    def __str__(self) -> str:
        return self.value


NOT_DIFFERENTIABLE = Backward.NONE
BACKWARD_KINDS = tuple(kind.value for kind in Backward)


@dataclass(frozen=True, eq=False)
class Op:
    name: str
    schema: schemas.Schema
    backward_kind: Backward
    doc: str
    shape: Callable | None = None  # (*operand_shapes, **options) -> output shape; raises ValueError
    forward: Callable | None = None  # (ctx, *operand_buffers, **options) -> None
    backward: Callable | None = None  # (ctx, grad) -> one gradient Tensor (or None) per operand
    compose: Callable | None = None  # (g, *operands, **options) -> Tensor
    kernels: tuple = ()  # the kernels.Kernel families its forward dispatches (tools list)
    shader_variants: tuple = ()  # a user op's own shader variants, outside the kernel catalog (tools compile)
    inplace_option: str | None = None  # a fused op's option that writes its gradient over its first operand
    grad_inputs: tuple = ()  # the operands a fused kernel gives gradients for (default: the first)
    out_dtype: Callable | None = None  # (operand dtypes, **options) -> the output's dtype; None: float32
    module: str = ""  # where it was declared
    plannable: bool = False  # a repeated call may run its launch plan (vkloss/plans.py)
    view: bool = False  # its output is its first operand's buffer under another shape: no forward, no copy
    outputs_option: str | None = None  # a bool option without which an op of several outputs returns its first alone

    def output_count(self, options: dict) -> int:
        """How many outputs a call with these options returns (its shape rule gives as many shapes)."""
        return _output_count(self.schema.outputs, self.outputs_option, options)

    @functools.cached_property
    def operand_names(self) -> tuple:
        return tuple(p.name for p in self.schema.operands)

    @functools.cached_property
    def optional_operands(self) -> bool:
        """Whether an operand may be left out (None), as a linear layer's bias."""
        return any(p.optional for p in self.schema.operands)

    @property
    def shader(self) -> str | None:
        """The shader file(s) behind the op, for `tools list`."""
        names = [k.source for k in self.kernels] + [v.path.name for v in self.shader_variants]
        return ", ".join(dict.fromkeys(names)) or None

    @property
    def options(self) -> dict:
        return {p.name: p for p in self.schema.options}


class KernelContext:
    """Device work without an op around it: buffers, dispatches by kernel-catalog name, and the device's launch
    policy (vkloss/launch.py). Tools and benchmarks that run kernels themselves use one; every op's forward gets a
    ForwardContext, which is one too. It keeps the engine to itself."""

    def __init__(self, engine):
        self._engine = engine
        self.launch = engine.launch

    @property
    def device(self):
        return self._engine.device

    def alloc(self, size: int, dtype=np.float32):
        return self._engine.alloc(size, dtype)

    def upload(self, array: np.ndarray):
        return self._engine.upload(array)

    def copy(self, source, target) -> None:
        """target = source, by the device's copy engine (same size and dtype)."""
        self._engine.copy(source, target)

    def dispatch(self, variant: kernels.KernelVariant, grid, *, workgroup: int = WORKGROUP, push: dict | None = None,
                 constants: tuple = (), **buffers) -> None:
        """One kernel: buffers by the names of the variant's binding table, push constants by its block's names,
        specialization constants (after the workgroup size) in `constants`."""
        kernels.dispatch(self._engine, variant, grid, workgroup=workgroup, push=push, constants=constants, **buffers)

    def dispatch_shader(self, variant: shaders.Variant, reads: list, writes: list, push: list, grid) -> None:
        """A user op's own shader, bound positionally (reads, then writes)."""
        self._engine.dispatch(variant, reads, writes, push, grid)

    def grid(self, groups: int):
        return self.launch.grid(groups)

    def groups_for(self, invocations: int, workgroup: int = WORKGROUP):
        return self.launch.groups_for(invocations, workgroup)

    def row_workgroup(self, items: int = 0) -> int:
        return self.launch.row_workgroup(items)

    def reduction_workgroup(self) -> int:
        return self.launch.reduction_workgroup()

    def row_once(self, vectors: int):
        return self.launch.row_once(vectors)

    def wide_loads(self, *sizes: int) -> bool:
        """Whether a kernel over float32 arrays of these sizes moves eight values per access
        (shaders/include/access.glsl): where the device takes such accesses and every size is a multiple of 8."""
        return self.access_width(*sizes) == 8

    def access_width(self, *sizes: int) -> int:
        """Float32 values a kernel over arrays of these sizes moves per access: 8, 4 or 1 (LaunchPolicy)."""
        return self.launch.access_width(*sizes)


class ForwardContext(KernelContext):
    """What an op's forward gets besides its operands' buffers: the output buffer `out`, the operands' shapes,
    which operands need a gradient, and the device work it may do."""

    def __init__(self, engine, op: Op, shapes: tuple, outs, needs: tuple, dtypes: tuple = ()):
        super().__init__(engine)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        self.op, self.shapes, self.needs = op, shapes, needs
        self.out, self.outs = outs[0], tuple(outs)  # the output buffer, and every output's of a several-output op
        self.dtypes = dtypes  # the operands' dtypes: float32, int32, float16 or "bfloat16" (schema type Float)
        self.want_grad = any(needs)
        self.saved: dict = {}
        self.checks: list = []  # (count buffer, message): a non-zero count raises ValueError at the next read

    def check(self, count, message: str) -> None:
        """A device-side check: a non-zero count in `count` raises ValueError(message.format(count=...)) at the
        next host read."""
        self.checks.append((count, message))

    def save_for_backward(self, *grads, **named) -> None:
        """A fused kernel's gradient buffers, one per operand in order, or by operand name (None where none)."""
        names = [p.name for p in self.op.schema.operands]
        unknown = sorted(set(named) - set(names))
        if unknown or len(grads) > len(names):
            raise ValueError(f"{self.op.name}: save_for_backward got {len(grads)} gradients and {unknown or 'no'} "
                             f"unknown names for the operands {names}")
        self.saved.update(zip(names, grads), **named)


_OPS: dict[str, Op] = {}
_listeners: list[Callable] = []


def on_register(listener: Callable) -> None:
    """`listener(op)` for every op registered so far and every later one; `listener(op, removed=True)` when one is
    unregistered. Graph installs its methods this way."""
    _listeners.append(listener)
    for op in list(_OPS.values()):
        listener(op)


def _user_shader(name: str, shader) -> Path:
    """A `.comp` path, or GLSL source text written once into the cache, named by its hash."""
    text = str(shader)
    if "\n" in text or "void main" in text:
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = shaders.cache_dir() / "sources" / f"{name}-{digest}.comp"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return path
    if not Path(text).is_file():
        raise ValueError(f"register_op {name}: shader file {text} not found (give a .comp path or GLSL source)")
    return Path(text).resolve()


def register_op(name: str, shader=None, *, schema: str | None = None, inputs: int | None = None,
                shape: Callable | None = None, push: Callable | None = None, invocations: Callable | None = None,
                defines: dict | None = None, backward=Backward.NONE, forward: Callable | None = None,
                compose: Callable | None = None, kernels: tuple = (), doc: str = "", validate: bool = True,
                inplace_option: str | None = None, grad_inputs: tuple = (), out_dtype: Callable | None = None,
                view: bool = False, outputs_option: str | None = None) -> Op:
    """Declare an op; it then exists as the method `Graph.<name>` and in `python -m vkloss.tools list`.

    name: a Python identifier that neither an op nor Graph uses yet.
    schema: the typed signature, e.g. "huber(Tensor pred, Tensor target, *, float delta=1.0) -> Tensor" (see
        vkloss/schema.py). Without one, `inputs` says how many tensor operands the op takes, and their names and the
        options' defaults are read from the shape rule or compose function (options then go unchecked).
    shader: a user op's `.comp` path or GLSL source text (it may `#include "common.glsl"`: the workgroup size WG,
        `global_index()`), one invocation per output element. Bindings: the operands in order, then the output.
    shape(*operand_shapes, **options): the output shape (a tuple of shapes for an op of several outputs, whose
        schema returns `(Tensor, Tensor)`); raise ValueError for shapes the op does not take.
    push(*operand_shapes, **options): the shader's push constants, ints and floats (default: [output size]).
    invocations(*operand_shapes, **options): how many invocations to dispatch (default: the output size).
    defines: preprocessor defines for the shader.
    backward: `backward(ctx, grad)`, one gradient per operand (None where ctx.needs says none is wanted), written
        with other ops; Backward.NONE ("not differentiable"); or Backward.FUSED for an op whose forward saves its
        gradients (ctx.save_for_backward), which backward then scales by the upstream gradient.
    forward(ctx, *operand_buffers, **options): an op that runs its own dispatches (the built-in ops), with
        `kernels` the kernels.Kernel families it uses. compose(g, *operands, **options): an op built from others.
    validate: compile the user's shader now and check its bindings, so a mistake shows at registration.
    inplace_option: a fused op's option that, when true, makes it write its gradient over its first operand (which
        must be an op's output; it is unreadable afterwards). grad_inputs: the operands a fused op gives gradients
        for (default: the first).
    out_dtype(operand_dtypes, **options): the output's dtype, for an op whose forward writes 16-bit values into
        `ctx.out` (two to a uint32 word); default float32.
    view: the output is the first operand's buffer under the shape the shape rule gives (reshape): no forward.
    outputs_option: for an op of several outputs, a bool option that must be true for it to return them all (its
        shape rule then gives them all); otherwise it returns its first alone (Liger's return_z_loss).
    """
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"register_op: {name!r} is not a valid op name (a Python identifier, no leading _)")
    if name in _OPS:
        raise ValueError(f"register_op: an op named {name!r} is already registered")
    if name in _graph_names():
        raise ValueError(f"register_op: {name!r} is already a Graph attribute (g.{name}), so an op of that name "
                         "could never be called; choose another name")
    if compose is None and shader is None and forward is None and not view:
        raise ValueError(f"register_op {name}: give a shader, a forward (with its kernels), or compose=")
    if compose is None and shape is None:
        raise ValueError(f"register_op {name}: give shape=, the rule (*operand_shapes, **options) -> output shape")
    if isinstance(backward, str) and backward in BACKWARD_KINDS:
        backward = Backward(backward)
    if not (callable(backward) or backward in (Backward.NONE, Backward.FUSED)):
        raise ValueError(f"register_op {name}: backward must be a function (ctx, grad) -> gradients, "
                         f"Backward.FUSED or {Backward.NONE.value!r}")
    if schema is not None:
        signature = schemas.parse(schema)
        if signature.name != name:
            raise ValueError(f"register_op {name}: its schema names {signature.name!r}")
    elif inputs is not None:
        signature = schemas.derived(name, inputs, compose, shape, push)
    else:
        raise ValueError(f"register_op {name}: give schema= (or inputs=, the number of tensor operands)")
    kind = (Backward.COMPOSED if compose else Backward.FUSED if backward is Backward.FUSED else
            Backward.RULE if callable(backward) else Backward.NONE)
    variants = ()
    if shader is not None and compose is None and forward is None:
        variant = shaders.variant(_user_shader(name, shader), **(defines or {}))
        forward, variants = _one_dispatch(variant, push, invocations), (variant,)
        if validate:
            _check_bindings(name, variant, len(signature.operands) + 1)
    module = sys._getframe(1).f_globals.get("__name__", "")
    operand_names = [p.name for p in signature.operands]
    grad_inputs = tuple(grad_inputs) or tuple(operand_names[:1])
    unknown = [n for n in (*grad_inputs, *([inplace_option] if inplace_option else []),
                           *([outputs_option] if outputs_option else []))
               if n not in {p.name for p in signature.params}]
    if unknown:
        raise ValueError(f"register_op {name}: {', '.join(unknown)} not in its schema {signature.text()}")
    op = Op(name=name, schema=signature, backward_kind=kind, doc=_doc(signature, doc),
            shape=_explained(name, shape, signature.outputs, outputs_option),
            forward=forward, backward=_scaled_saved_grads if kind is Backward.FUSED else backward if callable(backward)
            else None, compose=compose, kernels=tuple(kernels), shader_variants=variants, inplace_option=inplace_option,
            grad_inputs=grad_inputs, out_dtype=out_dtype, module=module, view=view, outputs_option=outputs_option,
            # vkloss's own forwards and a user's shader go through their context alone; a user's forward may not
            plannable=compose is None and not view and (bool(variants) or module.split(".")[0] == __package__))
    _OPS[name] = op
    for listener in _listeners:
        listener(op)
    return op


def unregister_op(name: str) -> None:
    """Remove a user's op from the table and from Graph."""
    op = _OPS.pop(name)
    for listener in _listeners:
        listener(op, removed=True)


def _doc(signature, doc: str) -> str:
    text = doc or "A registered op."
    return f"{signature.text()}\n\n{text}"


def _graph_names() -> set[str]:
    """Names Graph uses for itself (not op methods). The registry does not import graph (graph imports it); before
    graph is imported no Graph exists to clash with."""
    graph = sys.modules.get(__package__ + ".graph")
    return graph.reserved_names() - set(_OPS) if graph is not None else set()


def is_shape(value) -> bool:
    return isinstance(value, (tuple, list)) and bool(value) and all(isinstance(d, int) and d > 0 for d in value)


def _output_count(most: int, outputs_option: str | None, options: dict) -> int:
    """An op of `most` outputs returns its first alone unless its outputs_option is set (None: always all)."""
    return 1 if outputs_option is not None and not options.get(outputs_option) else most


def _explained(name, rule, most: int = 1, outputs_option: str | None = None):
    """A shape rule whose failures name the op and the shapes it was given."""
    if rule is None:
        return None

    def shape(*shapes, **options):
        outputs = _output_count(most, outputs_option, options)
        try:
            out = rule(*shapes, **options)
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(f"{name}: its shape rule failed for input shapes {shapes}: {type(e).__name__}: {e}") from e
        if outputs > 1:
            if not isinstance(out, (tuple, list)) or len(out) != outputs or not all(map(is_shape, out)):
                raise ValueError(f"{name}: its shape rule returned {out!r} for input shapes {shapes}; expected "
                                 f"{outputs} tuples of positive ints")
            return tuple(tuple(o) for o in out)
        if not is_shape(out):
            raise ValueError(f"{name}: its shape rule returned {out!r} for input shapes {shapes}; "
                             "expected a tuple of positive ints")
        return tuple(out)

    return shape


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


def _scaled_saved_grads(ctx, grad):
    """A fused op's backward: the gradients its kernel saved, times the upstream gradient unless that is the seed 1.
    Upstream is one value for a reduced loss, or one per row or element of the saved gradient (reduction='none')."""
    return tuple(None if saved is None or not need else saved if ctx.upstream_is_one else _scaled(ctx.g, saved, grad)
                 for saved, need in zip(ctx.saved, ctx.needs))


def _scaled(g, saved, grad):
    """saved * grad; a 16-bit saved gradient is scaled in float32 and returned in its own dtype."""
    multiply = g.mul_scalar if grad.shape == (1,) else g.mul if grad.shape == saved.shape else g.mul_rows
    return autodiff.in_float32(g, lambda s: multiply(s, grad), saved)


def get(name: str) -> Op:
    op = _OPS.get(name)
    if op is None:
        _load_plugins()  # a plugin's op, declared on first use
        op = _OPS.get(name)
        if op is None:
            raise AttributeError(f"no op named {name!r}")
    return op


def all_ops() -> list[Op]:
    _load_plugins()
    return list(_OPS.values())


_plugins_loaded = False


def _load_plugins() -> None:
    """Every entry point in the group "vkloss.ops" (other packages' ops), once. The built-in families are imported
    by vkloss itself."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        from importlib.metadata import entry_points

        for entry in entry_points(group="vkloss.ops"):
            entry.load()


__all__ = ["Backward", "ForwardContext", "KernelContext", "Op", "register_op", "unregister_op", "get", "all_ops", "on_register",
           "NOT_DIFFERENTIABLE"]
