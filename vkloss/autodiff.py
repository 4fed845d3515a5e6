"""The tape and backward.

Each differentiable op's output holds a Node: the op, its input tensors and attributes (micrograd's `_prev` and
`_backward`, with the rule looked up in the registry). `backward` sorts the tensors that lead to the root
topologically with an explicit stack (deep tapes would overflow recursion), walks them in reverse, sums the
gradients of a tensor used more than once, and stores the result in `.grad` of each leaf that requires one.
Visited nodes are freed afterwards (unless retain_graph), so the tape does not outlive its use, and a backward that
reaches a freed part raises, as PyTorch's "Trying to backward through the graph a second time" does.
Each node remembers its inputs' versions (bumped by copy_ and optimizer steps): a backward rule that uses an input
modified in place since the forward raises, as PyTorch's version counter does, instead of a silently wrong gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tensor import dtype_name


@dataclass(eq=False)
class Node:
    op: object  # registry.Op
    inputs: tuple  # Tensors, in the op's order
    attrs: dict
    saved: object = None  # what a fused kernel computed for backward (its gradient tensor)
    versions: tuple = ()  # the inputs' versions when the op ran


FREED = "freed"  # what a tensor's node becomes after backward passed through it


class Context:
    """What a backward rule sees: the graph, the op's inputs and output, its attributes, what its forward saved,
    which inputs need a gradient (a rule may return None for the others and so skip their work), and whether the
    upstream gradient is the seed 1 (a fused rule then returns its saved gradient untouched)."""

    __slots__ = ("g", "inputs", "output", "attrs", "saved", "needs", "upstream_is_one")

    def __init__(self, g, output, node: Node, upstream_is_one: bool):
        self.g, self.inputs, self.output, self.attrs, self.saved = g, node.inputs, output, node.attrs, node.saved
        self.needs = tuple(t is not None and t.requires_grad for t in node.inputs)  # None: an operand left out
        self.upstream_is_one = upstream_is_one


def topological_order(root) -> list:
    """Tensors with a node that `root` depends on (root included), each after all of its inputs."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        tensor, inputs_done = stack.pop()
        if inputs_done:
            order.append(tensor)
            continue
        if tensor.node is FREED:
            raise RuntimeError(
                f"backward: a tensor of shape {tensor.shape} on the way to the loss belongs to a part of the graph that "
                "an earlier backward already used and freed (PyTorch: trying to backward through the graph a second "
                "time). Call backward once on the sum of the losses, g.backward(g.add(loss1, loss2)), or keep the "
                "graph for the second call with g.backward(loss1, retain_graph=True)")
        if id(tensor) in visited or not isinstance(tensor.node, Node):
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        stack.extend((t, False) for t in reversed(tensor.node.inputs) if t is not None and t.requires_grad)
    return order


def modified_inputs(node: Node) -> dict:
    """The node's inputs modified in place since its op ran: id -> (tensor, version then)."""
    return {id(t): (t, v) for t, v in zip(node.inputs, node.versions) if t is not None and t.version != v}


def backward(g, root, seed, retain_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf), seeded with `seed`, into `.grad` of every leaf that requires a gradient."""
    order = topological_order(root)
    grads = {id(root): seed}
    leaves = {id(root): root} if root.is_leaf else {}
    for tensor in reversed(order):
        node = tensor.node
        if not retain_graph:
            tensor.node = FREED
        grad = grads.pop(id(tensor), None)
        if grad is None:
            continue
        if node.op.backward is None:
            where = f"g.ops.{node.op.name}" if node.op.internal else f"g.{node.op.name}"
            raise RuntimeError(
                f"backward reached {where}, which is not differentiable, on the way from the loss to inputs "
                f"of shapes {', '.join(str(t.shape) for t in node.inputs if t is not None and t.requires_grad)} "
                f"that require a gradient; compute it under g.no_grad() or from tensors that need none")
        with g._refusing(node.op.name, modified_inputs(node)):  # a rule that uses one of them raises
            input_grads = node.op.backward(Context(g, tensor, node, upstream_is_one=grad is seed), grad)
        if len(input_grads) != len(node.inputs):
            raise RuntimeError(f"backward of {node.op.name} returned {len(input_grads)} gradients "
                               f"for {len(node.inputs)} inputs")
        for inp, inp_grad in zip(node.inputs, input_grads):
            if inp_grad is None or not inp.requires_grad:
                continue
            if inp_grad.shape != inp.shape:
                raise RuntimeError(f"backward of {node.op.name} gave a gradient of shape {inp_grad.shape} "
                                   f"for an input of shape {inp.shape}")
            seen = grads.get(id(inp))
            grads[id(inp)] = inp_grad if seen is None else accumulate(g, seen, inp_grad)
            if inp.is_leaf:
                leaves[id(inp)] = inp
    for key, leaf in leaves.items():
        grad = grads[key]
        if grad is seed:  # handed down unchanged (the loss is the leaf, or identity rules): the caller's, not ours
            grad = g.astype(seed, dtype="float32")  # a copy on the device
        if leaf.grad is not None:
            g.before_accumulating(leaf)
        leaf.grad = grad if leaf.grad is None else accumulate(g, leaf.grad, grad)


def accumulate(g, a, b):
    """a + b, two gradients of one tensor."""
    return in_float32(g, g.add, a, b)


def in_float32(g, fn, *tensors):
    """fn(*tensors) for float32 ops: where the tensors are 16-bit, computed on float32 copies and returned in the
    first one's dtype, as PyTorch handles 16-bit gradients."""
    if tensors[0].dtype == np.float32:
        return fn(*tensors)
    widened = [g.astype(t, dtype="float32") for t in tensors]
    return g.astype(fn(*widened), dtype=dtype_name(tensors[0].dtype))
