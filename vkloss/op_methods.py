"""How registered ops become methods: of Graph (`g.add`), or, for the internal ones, of Ops (`g.ops.relu_backward`).

The built-in ops' methods are generated into _graph_ops.py (`python -m vkloss.tools generate`), so that an IDE, a
type checker and `inspect` see their parameters; a user's op gets one made here with its schema's signature. Both
call the Graph's one way to an op, `_call_bound`.
"""
from __future__ import annotations

from . import _graph_ops, registry


class Ops(_graph_ops.Ops):
    """g.ops: every op by name, as torch.ops. The internal ones (the kernels that backward rules call, not
    differentiable themselves) are methods here alone; the others are the Graph's."""

    def __init__(self, graph):
        self._graph, self._call_bound = graph, graph._call_bound

    def _call_op(self, name: str, args: tuple, kwargs: dict):
        return self._graph._call_op(name, args, kwargs)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._graph, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | {op.name for op in registry.all_ops()})


def installer(graph_class):
    """The registry listener that keeps `graph_class` and Ops in step with the op table."""

    def install(op, removed: bool = False) -> None:
        """Make `op` a method of the Graph (of Ops alone where it is internal): the generated one where it is
        current, else one made with the schema's signature (a user's op); remove it when the op is unregistered."""
        owner = Ops if op.internal else graph_class
        if removed:
            if op.name in owner.__dict__:
                delattr(owner, op.name)
            return
        if _graph_ops.SCHEMAS.get(op.name) == op.schema.text():
            return

        def method(self, *args, **kwargs):
            return self._call_op(op.name, args, kwargs)

        method.__name__, method.__qualname__, method.__doc__ = op.name, f"{owner.__name__}.{op.name}", op.doc
        method.__signature__ = op.schema.signature(with_self=True)
        setattr(owner, op.name, method)

    return install
