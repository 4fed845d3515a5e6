"""The Tensor handle: a shape, a device buffer, a gradient, and host reads."""
from __future__ import annotations

import math

import numpy as np


class Tensor:
    """A float32 tensor on a Graph's device.

    Made by `g.tensor(array)` or by an op. Its data stays on the device; `.numpy()` and `.item()` run whatever
    recorded work it depends on and copy it to the host. `.grad` is a Tensor after `backward` reached it
    (leaves that require a gradient only, as in PyTorch), else None.
    """

    __slots__ = ("graph", "shape", "buffer", "requires_grad", "grad", "node", "__weakref__")

    def __init__(self, graph, shape: tuple[int, ...], buffer, requires_grad: bool = False, node=None):
        self.graph = graph
        self.shape = tuple(int(d) for d in shape)
        self.buffer = buffer
        self.requires_grad = requires_grad
        self.node = node  # the autodiff.Node that made it, None for a leaf, FREED after backward
        self.grad: Tensor | None = None

    @property
    def is_leaf(self) -> bool:
        return self.node is None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        """A float32 host copy, of this tensor's shape."""
        return self.graph._read(self).reshape(self.shape)

    def item(self) -> float:
        if self.size != 1:
            raise ValueError(f"item() needs a tensor of one element, this one has shape {self.shape}")
        return float(self.numpy().reshape(-1)[0])

    def copy_(self, data) -> "Tensor":
        """Overwrite this tensor's values with `data` (same shape; converted to float32), like PyTorch's copy_.

        A training loop that refills the same input tensors every step keeps their device buffers, and with them
        every kernel bound to them: nothing is compiled after the first step."""
        return self.graph._copy_into(self, data)

    def backward(self) -> None:
        """Same as `graph.backward(self)`."""
        self.graph.backward(self)

    def __repr__(self) -> str:
        flags = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}{flags})"
