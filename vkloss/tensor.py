"""The Tensor handle: a shape, a device buffer, a gradient, and host reads."""
from __future__ import annotations

import math

import numpy as np


class Tensor:
    """A tensor on a Graph's device: float32, or int32 for class indices (`g.tensor(labels, dtype=np.int32)`).

    Made by `g.tensor(array)` or by an op. Its data stays on the device; `.numpy()` and `.item()` run whatever
    recorded work it depends on and copy it to the host. `.grad` is a Tensor after `backward` reached it
    (leaves that require a gradient only, as in PyTorch), else None.
    """

    __slots__ = ("graph", "shape", "_buffer", "requires_grad", "grad", "node", "overwritten_by", "version",
                 "__weakref__")

    def __init__(self, graph, shape: tuple[int, ...], buffer, requires_grad: bool = False, node=None):
        self.graph = graph
        self.shape = tuple(int(d) for d in shape)
        self._buffer = buffer
        self.requires_grad = requires_grad
        self.node = node  # the autodiff.Node that made it, None for a leaf, FREED after backward
        self.grad: Tensor | None = None
        self.overwritten_by: str | None = None  # the op that wrote over its buffer (a gradient computed in place)
        self.version = 0  # bumped by every in-place change (copy_, an optimizer step), as PyTorch's version counter

    @property
    def buffer(self):
        """The device buffer. Raises RuntimeError once an in-place op has written something else over it."""
        if self.overwritten_by is not None:
            raise RuntimeError(f"this tensor (shape {self.shape}) was overwritten by {self.overwritten_by}: its "
                               "buffer now holds that op's gradient. Leave out inplace_grad=True to keep the values")
        return self._buffer

    @property
    def dtype(self) -> np.dtype:
        return self._buffer.dtype

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
        """A host copy (float32, or int32 for an index tensor), of this tensor's shape."""
        return self.graph._read(self).reshape(self.shape)

    def item(self) -> float:
        if self.size != 1:
            raise ValueError(f"item() needs a tensor of one element, this one has shape {self.shape}")
        return float(self.numpy().reshape(-1)[0])

    def numpy_async(self):
        """A `HostCopy` of this tensor: submitted with the next flush, without waiting for it. `.result()` gives
        what `.numpy()` would have given at this point of the program, even if later ops overwrite the buffer."""
        return self.graph._read_async(self)

    def item_async(self):
        """`item()` without the wait: a `HostCopy` whose `.result()` is the float. A training loop keeps the loss
        of each step this way and reads it a step later, so the host never waits for the device mid-loop."""
        if self.size != 1:
            raise ValueError(f"item_async() needs a tensor of one element, this one has shape {self.shape}")
        return self.graph._read_async(self, scalar=True)

    def copy_(self, data) -> "Tensor":
        """Overwrite this tensor's values with `data` (same shape; converted to float32), like PyTorch's copy_.

        A training loop that refills the same input tensors every step keeps their device buffers, and with them
        every kernel bound to them: nothing is compiled after the first step."""
        return self.graph._copy_into(self, data)

    def backward(self, retain_graph: bool = False) -> None:
        """Same as `graph.backward(self, retain_graph)`."""
        self.graph.backward(self, retain_graph=retain_graph)

    def __repr__(self) -> str:
        flags = ", requires_grad=True" if self.requires_grad else ""
        if self._buffer.dtype != np.float32:
            flags = f", dtype={self._buffer.dtype}" + flags
        return f"Tensor(shape={self.shape}{flags})"
