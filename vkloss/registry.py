"""The op table: every op, built-in or a user's, is declared once, by `register_op(schema, impl)`.

The schema is the op's typed signature (vkloss/schema.py); the implementation object says how it runs and
differentiates, one kind each (vkloss/implementations.py): FusedKernel, ForwardKernel (a kernel plus a backward
rule), Composed, View or UserShader. The registry turns the two into an Op record.

Registering an op makes it a method of `Graph` (with the schema's signature), unless it is internal: a kernel that
backward rules call (`g.ops.<name>`, where every op is). Other packages register ops by importing vkloss and calling
`register_op`; `python -m vkloss.tools --import MODULE` and the entry-point group "vkloss.ops" bring their ops to the
tools.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import kernels, schema as schemas, shaders
from .implementations import KINDS, Backward
from .launch import WORKGROUP


@dataclass(frozen=True, eq=False)
class Op:
    """One registered op: what register_op made of its schema and implementation."""

    name: str
    schema: schemas.Schema
    impl: object  # the implementation object it was declared with
    backward_kind: Backward
    doc: str
    internal: bool = False  # a kernel for backward rules: g.ops.<name>, not a Graph method
    shape: Callable | None = None  # (*operand_shapes, **options) -> output shape; raises ValueError
    forward: Callable | None = None  # (ctx, *operand_buffers, **options) -> None
    backward: Callable | None = None  # (ctx, grad) -> one gradient Tensor (or None) per operand
    compose: Callable | None = None  # (g, *operands, **options) -> Tensor
    kernels: tuple = ()  # the kernels.Kernel families its forward dispatches (tools list)
    shader_variants: tuple = ()  # a user op's own shader variants, outside the kernel catalog (tools compile)
    inplace_option: str | None = None  # a fused op's option that writes its gradient over its first operand
    grad_inputs: tuple = ()  # the operands a fused kernel gives gradients for
    out_dtype: Callable | None = None  # (operand dtypes, **options) -> the output's dtype; None: float32
    module: str = ""  # where it was declared
    plannable: bool = False  # a repeated call may run its launch plan (vkloss/plans.py)
    view: bool = False  # its output is its first operand's buffer under another shape: no forward, no copy
    outputs_option: str | None = None  # a bool option without which an op of several outputs returns its first alone

    def output_count(self, options: dict) -> int:
        """How many outputs a call with these options returns (its shape rule gives as many shapes)."""
        return _output_count(self.schema.outputs, self.outputs_option, options)

    @functools.cached_property
    def fused(self) -> "Op | None":
        """A Composed op's one-kernel form (vkloss/fusion.py), where it was declared with fuse=True: an internal
        fused-kernel op of the same schema, which Graph runs where the composition fuses."""
        if not getattr(self.impl, "fuse", False):
            return None
        from . import fusion  # it imports the ops, which import this module

        impl = fusion.fused_kernel(self.schema)
        fields = impl.op_fields(self.name, self.schema)
        fields["shape"] = _explained(self.name, fields["shape"], self.schema.outputs, None)
        return Op(name=self.name, schema=self.schema, impl=impl, doc=self.doc, internal=True, module=self.module,
                  **fields)

    def fused_for(self, operands: list, options: dict) -> "Op | None":
        """`fused`, where this call's composition fuses (float32 operands, a trace): else None."""
        if self.fused is None:
            return None
        from .fusion import fuses

        return self.fused if fuses(self, operands, options) else None

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

    def block_workgroup(self) -> int:
        return self.launch.block_workgroup()

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


def register_op(schema: str, impl, *, doc: str = "", internal: bool = False) -> Op:
    """Declare an op; it then exists as the method `Graph.<name>` (or, internal, as `g.ops.<name>` alone) and in
    `python -m vkloss.tools list`.

    schema: the typed signature, e.g. "huber(Tensor pred, Tensor target, *, float delta=1.0) -> Tensor" (see
        vkloss/schema.py); its name is the op's, a Python identifier that neither an op nor Graph uses yet.
    impl: how it runs and differentiates, one of vkloss.implementations' kinds: FusedKernel, ForwardKernel,
        Composed, View or UserShader.
    doc: what it computes and its gradient, for the method's docstring and the README's table.
    internal: a kernel that backward rules call, not differentiable itself: not a Graph method.
    """
    if not isinstance(schema, str):
        raise ValueError(f"register_op: the first argument is the op's schema, a string such as "
                         f"'huber(Tensor pred, Tensor target, *, float delta=1.0) -> Tensor'; got {schema!r}")
    signature = schemas.parse(schema)
    name = signature.name
    if not isinstance(impl, KINDS):
        raise ValueError(f"register_op {name}: the implementation must be one of "
                         f"{', '.join(k.__name__ for k in KINDS)} (vkloss.implementations); got {impl!r}")
    if name.startswith("_"):
        raise ValueError(f"register_op: {name!r} is not a valid op name (a Python identifier, no leading _)")
    if name in _OPS:
        raise ValueError(f"register_op: an op named {name!r} is already registered")
    if name in _graph_names():
        raise ValueError(f"register_op: {name!r} is already a Graph attribute (g.{name}), so an op of that name "
                         "could never be called; choose another name")
    fields = impl.op_fields(name, signature)
    named = [fields.get("inplace_option"), fields.get("outputs_option"), *fields.get("grad_inputs", ())]
    unknown = [n for n in named if n is not None and n not in {p.name for p in signature.params}]
    if unknown:
        raise ValueError(f"register_op {name}: {', '.join(unknown)} not in its schema {signature.text()}")
    module = sys._getframe(1).f_globals.get("__name__", "")
    fields["shape"] = _explained(name, fields.get("shape"), signature.outputs, fields.get("outputs_option"))
    # vkloss's own forwards and a user's shader go through their context alone; a user's forward may not
    plannable = fields.get("forward") is not None and (bool(fields.get("shader_variants"))
                                                       or module.split(".")[0] == __package__)
    op = Op(name=name, schema=signature, impl=impl, doc=_doc(signature, doc), internal=internal, module=module,
            plannable=plannable, **fields)
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


__all__ = ["Backward", "ForwardContext", "KernelContext", "Op", "register_op", "unregister_op", "get", "all_ops",
           "on_register"]
