"""Composed ops run as one kernel: `Composed(compose, fuse=True)` (mse_loss and l1_loss).

The composition is traced, not run: `compose(tracer, *operands, **options)`, with a `Tracer` standing in for the
Graph, whose ops make `Node`s instead of dispatches. Then its gradient: each node's own backward rule, the one the
tape runs (registry), is called on the trace from the output back to the operands, with the tracer as its `ctx.g`,
so the gradient is the tape's, written as nodes too. Both become one GLSL kernel, generated and compiled once per
trace, which computes per element every value, then every gradient, calling each op's function of
shaders/include/elementwise_ops.glsl (the maths elementwise.comp applies). A final mean_all or sum_all is a tree sum
of the per-element values after it. The op then runs as a fused kernel: backward scales the saved gradients.

A composition fuses where its operands are float32 and every op it and its gradient use is an elementwise op of
one shape (a number from a final sum's gradient included); anywhere else it runs as composed, op by op.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from . import registry, shaders
from .implementations import FusedKernel
from .ops.elementwise import BINARY, BROADCAST, UNARY
from .ops.reductions import tree_sum

FUSABLE = frozenset(UNARY + BINARY) - frozenset(BROADCAST)  # op_<name> of elementwise_ops.glsl, operands of one shape
SUMS = ("mean_all", "sum_all")


class NotFusable(Exception):
    """The composition uses something a fused kernel does not compute."""


class Node:
    """One value of the trace, per element: an operand, a constant, or an op of other nodes."""

    __slots__ = ("op", "args", "attrs", "shape", "requires_grad")
    dtype = np.dtype(np.float32)

    def __init__(self, op: str, args: tuple = (), attrs: dict | None = None, shape: tuple = (1,),
                 requires_grad: bool = False):
        self.op, self.args, self.attrs, self.shape = op, args, attrs or {}, tuple(shape)
        self.requires_grad = requires_grad or any(a.requires_grad for a in args)


class Tracer:
    """What compose and the backward rules call instead of a Graph: the elementwise ops, mean_all and sum_all (only
    as the last op), and the expand of a sum's gradient."""

    def __init__(self):
        self.ops = self  # rules call internal kernels as g.ops.<name>

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in FUSABLE:
            raise NotFusable(name)
        return functools.partial(self._elementwise, name)

    def _elementwise(self, name: str, *args, **attrs) -> Node:
        if any(a.op in SUMS for a in args):
            raise NotFusable(f"{name} of a sum")
        shapes = {a.shape for a in args}
        if len(shapes) != 1:
            raise NotFusable(f"{name} of shapes {sorted(shapes)}")
        return Node(name, args, attrs, args[0].shape)

    def mean_all(self, x: Node) -> Node:
        return Node("mean_all", (x,), {}, (1,))

    def sum_all(self, x: Node, scale: float = 1.0) -> Node:
        return Node("sum_all", (x,), {"scale": scale}, (1,))

    def expand(self, s: Node, shape, scale: float = 1.0) -> Node:
        if s.op != "constant":
            raise NotFusable("expand of a computed value")
        return Node("constant", (), {"value": s.attrs["value"] * scale}, tuple(shape))


class _RuleContext:
    """What a backward rule sees (autodiff.Context), for a node of the trace."""

    def __init__(self, g: Tracer, node: Node, upstream_is_one: bool):
        self.g, self.inputs, self.output, self.attrs, self.saved = g, node.args, node, node.attrs, None
        self.needs = tuple(a.requires_grad for a in node.args)
        self.upstream_is_one = upstream_is_one


def _order(roots) -> list:
    """Every node the roots depend on, each after its arguments."""
    order, seen, stack = [], set(), [(root, False) for root in roots]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
        elif id(node) not in seen:
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((a, False) for a in reversed(node.args))
    return order


def _gradients(tracer: Tracer, root: Node, leaves: list) -> list:
    """d root / d leaf for each leaf that requires a gradient (None for the others), by the ops' own rules."""
    seed = Node("constant", (), {"value": 1.0}, root.shape)
    grads = {id(root): seed}
    for node in reversed(_order([root])):
        grad = grads.pop(id(node), None)
        if grad is None or not node.args:
            grads[id(node)] = grad
            continue
        rule = registry.get(node.op).backward
        for arg, arg_grad in zip(node.args, rule(_RuleContext(tracer, node, grad is seed), grad)):
            if arg_grad is None or not arg.requires_grad:
                continue
            seen = grads.get(id(arg))
            grads[id(arg)] = arg_grad if seen is None else tracer.add(seen, arg_grad)
    return [grads.get(id(leaf)) if leaf.requires_grad else None for leaf in leaves]


class Trace:
    """A composition for one set of operand shapes, options and needed gradients: its kernel and how to run it."""

    def __init__(self, name: str, compose, shapes: tuple, options: dict, needs: tuple):
        tracer = Tracer()
        leaves = [Node("operand", (), {"index": i}, shape, need) for i, (shape, need) in enumerate(zip(shapes, needs))]
        root = compose(tracer, *leaves, **options)
        if not isinstance(root, Node) or root.op == "operand":
            raise NotFusable("not an op of its operands")
        self.shape = root.shape
        self.scale = None  # a sum's scale; None: the per-element values are the output
        values = root
        if root.op in SUMS:
            values = root.args[0]
            self.scale = 1.0 / math.prod(values.shape) if root.op == "mean_all" else root.attrs["scale"]
        grads = _gradients(tracer, root, leaves) if any(needs) else [None] * len(leaves)
        if any(g is not None and g.shape != leaf.shape for g, leaf in zip(grads, leaves)):
            raise NotFusable("a gradient of another shape")
        self.grads = tuple(g is not None for g in grads)
        self.size = math.prod(values.shape)
        self.variant = shaders.variant(shaders.written_source(f"{name}-fused", _glsl(leaves, values, grads)))


def _literal(value: float) -> str:
    text = repr(float(np.float32(value)))
    return f"({text})" if text.startswith("-") else text


def _glsl(leaves: list, values: Node, grads: list) -> str:
    """One invocation per element: the operands, every node in order, then the values and gradients written."""
    outputs = [values] + [g for g in grads if g is not None]
    names = {}
    body = []
    for node in _order(outputs):
        name = names[id(node)] = f"v{len(names)}"
        if node.op == "operand":
            body.append(f"float {name} = in{node.attrs['index']}[i];")
        elif node.op == "constant":
            body.append(f"float {name} = {_literal(node.attrs['value'])};")
        else:
            a, b = names[id(node.args[0])], names[id(node.args[1])] if len(node.args) > 1 else "0.0"
            body.append(f"float {name} = op_{node.op}({a}, {b}, {_literal(node.attrs.get('s', 0.0))});")
    bindings = [f"layout(set = 0, binding = {i}) readonly buffer In{i} {{ float in{i}[]; }};"
                for i in range(len(leaves))]
    stores = []
    for slot, node in enumerate(outputs):
        bindings.append(f"layout(set = 0, binding = {len(leaves) + slot}) writeonly buffer Out{slot} "
                        f"{{ float out{slot}[]; }};")
        stores.append(f"out{slot}[i] = {names[id(node)]};")
    lines = ["#version 450", "// Generated by vkloss/fusion.py: a composed op's values and gradients, per element.",
             "#extension GL_GOOGLE_include_directive : require", '#include "common.glsl"', "#define ELEMENT float",
             '#include "elementwise_ops.glsl"', "layout(push_constant) uniform Push { uint n; } p;", *bindings,
             "void main() {", "    uint i = global_index();", "    if (i >= p.n) return;",
             *("    " + line for line in body + stores), "}"]
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=256)
def _trace(op_name: str, shapes: tuple, options: tuple, needs: tuple) -> Trace | None:
    op = registry.get(op_name)
    try:
        return Trace(op_name, op.compose, shapes, dict(options), needs)
    except NotFusable:
        return None


def trace(op, shapes: tuple, options: dict, needs: tuple) -> Trace | None:
    """The fused form of a Composed op for these operands, or None where it does not fuse."""
    try:
        return _trace(op.name, tuple(shapes), tuple(sorted(options.items())), tuple(needs))
    except TypeError:  # an option that is not hashable (an array): runs as composed
        return None


def fuses(op, operands: list, options: dict) -> bool:
    """Whether g.<op>(*operands, **options) runs as one fused kernel: float32 operands, and a trace."""
    if not all(t is not None and t.dtype == np.float32 for t in operands):
        return False
    return trace(op, tuple(t.shape for t in operands), options, (False,) * len(operands)) is not None


def fused_kernel(signature) -> FusedKernel:
    """The FusedKernel a Composed op with fuse=True runs as (registry.Op.fused)."""
    name = signature.name

    def shape(*shapes, **options):
        return _traced(name, shapes, options, (False,) * len(shapes)).shape

    def forward(ctx, *operands, **options):
        fused = _traced(name, ctx.shapes, options, ctx.needs)
        values = ctx.out if fused.scale is None else ctx.alloc(fused.size)
        grads = [ctx.alloc(fused.size) if made else None for made in fused.grads]
        ctx.dispatch_shader(fused.variant, list(operands), [values, *[g for g in grads if g is not None]],
                            [fused.size], ctx.groups_for(fused.size))
        if fused.scale is not None:
            tree_sum(ctx, values, fused.size, ctx.out, fused.scale)
        ctx.save_for_backward(*grads)

    return FusedKernel(shape=shape, forward=forward, grad_inputs=tuple(p.name for p in signature.operands))


def _traced(name: str, shapes, options: dict, needs) -> Trace:
    fused = trace(registry.get(name), tuple(tuple(s) for s in shapes), options, tuple(bool(n) for n in needs))
    if fused is None:
        raise NotFusable(f"{name} does not fuse for shapes {shapes} and options {options}")
    return fused
