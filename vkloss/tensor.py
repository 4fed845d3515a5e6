"""The Tensor handle: a shape, a device buffer, a gradient, and host reads."""
from __future__ import annotations

import math

import numpy as np

from .launch import ceil_div

BFLOAT16 = "bfloat16"  # numpy has no bfloat16: the dtype of a bfloat16 tensor is this string
SIXTEEN_BIT = (np.dtype(np.float16), BFLOAT16)


def packed_words(n: int) -> int:
    """The uint32 words that hold n 16-bit values, two to a word."""
    return ceil_div(n, 2)


def buffer_layout(n: int, dtype) -> tuple[int, np.dtype]:
    """(elements, dtype) of the device buffer that holds n elements of a tensor dtype: 16-bit floats two to a uint32
    word, every other dtype as itself."""
    return (packed_words(n), np.dtype(np.uint32)) if dtype in SIXTEEN_BIT else (n, np.dtype(dtype))


DTYPE_SPELLINGS = "float32, int32, float16 or 'bfloat16' (a numpy dtype or type, or a name such as 'half')"


def parse_dtype(value, where: str):
    """A tensor dtype as any of its spellings gives it: a numpy dtype or type (np.float16), a name ('float16',
    'half'), or 'bfloat16' (numpy has none): np.float32, np.int32, np.float16 or the string "bfloat16". Others raise
    TypeError naming `where`."""
    if isinstance(value, str) and value.lower() in (BFLOAT16, "bf16"):
        return BFLOAT16
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"{where}: dtype must be {DTYPE_SPELLINGS}, got {value!r}") from None
    if dtype not in (np.float32, np.int32, np.float16):
        raise TypeError(f"{where}: dtype must be {DTYPE_SPELLINGS}, got {dtype}")
    return dtype


def dtype_name(dtype) -> str:
    """A tensor dtype's name as ops' options spell it (astype's dtype): float32, float16, bfloat16 or int32."""
    return dtype if isinstance(dtype, str) else np.dtype(dtype).name


def encode16(array: np.ndarray, dtype) -> np.ndarray:
    """float values -> 16-bit (float16, or bfloat16 rounded to nearest even from float32), two to a uint32 word
    (element 2k in the low half), the last word padded with 0."""
    if dtype == BFLOAT16:
        bits = np.ascontiguousarray(array, np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
        halves = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        nan = np.isnan(np.asarray(array, np.float32).reshape(-1))
        halves[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)  # NaN stays NaN
    else:
        with np.errstate(over="ignore"):  # past 65,504 is infinity, as PyTorch's .half() gives, without a warning
            halves = np.ascontiguousarray(array, np.float16).reshape(-1).view(np.uint16)
    padded = np.zeros(2 * ceil_div(halves.size, 2), np.uint16)
    padded[: halves.size] = halves
    return padded.view(np.uint32)


def decode16(words: np.ndarray, n: int, dtype) -> np.ndarray:
    """The n 16-bit elements of `words`: float16, or float32 holding the bfloat16 values exactly."""
    halves = np.ascontiguousarray(words).view(np.uint16)[:n]
    if dtype == BFLOAT16:
        return (halves.astype(np.uint32) << 16).view(np.float32)
    return halves.view(np.float16)


def _number(value) -> bool:
    """A Python or numpy real number (not a bool): the scalar side of an operator."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


class Tensor:
    """A tensor on a Graph's device: float32; int32 for class indices (`g.tensor(labels, dtype=np.int32)`); or
    16-bit floats, float16 or bfloat16 (`g.tensor(logits, dtype="bfloat16")`), which the fused losses read.

    Made by `g.tensor(array)` or by an op. Its data stays on the device; `.numpy()` and `.item()` run whatever
    recorded work it depends on and copy it to the host. `.grad` is a Tensor after `backward` reached it
    (leaves that require a gradient only, as in PyTorch), else None.
    """

    __slots__ = ("graph", "shape", "_buffer", "requires_grad", "grad", "node", "overwritten_by", "version", "_dtype",
                 "__weakref__")

    def __init__(self, graph, shape: tuple[int, ...], buffer, requires_grad: bool = False, node=None, dtype=None):
        self.graph = graph
        self._dtype = buffer.dtype if dtype is None else dtype  # 16-bit tensors live in uint32 words
        self.shape = tuple(int(d) for d in shape)
        self._buffer = buffer
        self.requires_grad = requires_grad
        self.node = node  # the autodiff.Node that made it, None for a leaf, FREED after backward
        self.grad: Tensor | None = None
        self.overwritten_by: str | None = None  # the op that wrote over its buffer (a gradient computed in place)
        self.version = 0  # bumped by every in-place change (copy_, an optimizer step), as PyTorch's version counter

    @classmethod
    def made(cls, graph, shape: tuple, buffer, requires_grad: bool, node, dtype) -> "Tensor":
        """An op's output: `shape` already a tuple of ints (what every call of an op does, so kept short)."""
        tensor = cls.__new__(cls)
        tensor.graph, tensor.shape, tensor._buffer, tensor._dtype = graph, shape, buffer, dtype
        tensor.requires_grad, tensor.node, tensor.grad, tensor.overwritten_by, tensor.version = \
            requires_grad, node, None, None, 0
        return tensor

    @property
    def buffer(self):
        """The device buffer. Raises RuntimeError once an in-place op has written something else over it."""
        if self.overwritten_by is not None:
            raise RuntimeError(f"this tensor (shape {self.shape}) was overwritten by {self.overwritten_by}: its "
                               "buffer now holds that op's gradient. Leave out inplace_grad=True to keep the values")
        return self._buffer

    @property
    def dtype(self):
        """np.float32, np.int32, np.float16, or the string "bfloat16"."""
        return self._dtype

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
        """A host copy of this tensor's shape: float32, int32 for an index tensor, float16, or float32 holding the
        values of a bfloat16 tensor exactly (numpy has no bfloat16)."""
        return self.graph.host_copy(self).result()

    def item(self) -> float:
        if self.size != 1:
            raise ValueError(f"item() needs a tensor of one element, this one has shape {self.shape}")
        return float(self.numpy().reshape(-1)[0])

    def numpy_async(self):
        """A `HostCopy` of this tensor: submitted with the next flush, without waiting for it. `.result()` gives
        what `.numpy()` would have given at this point of the program, even if later ops overwrite the buffer."""
        return self.graph.host_copy(self)

    def item_async(self):
        """`item()` without the wait: a `HostCopy` whose `.result()` is the float. A training loop keeps the loss
        of each step this way and reads it a step later, so the host never waits for the device mid-loop."""
        if self.size != 1:
            raise ValueError(f"item_async() needs a tensor of one element, this one has shape {self.shape}")
        return self.graph.host_copy(self, scalar=True)

    def copy_(self, data) -> "Tensor":
        """Overwrite this tensor's values with `data` (same shape; converted to float32), like PyTorch's copy_.

        A training loop that refills the same input tensors every step keeps their device buffers, and with them
        every kernel bound to them: nothing is compiled after the first step."""
        return self.graph._copy_into(self, data)

    def backward(self, retain_graph: bool = False) -> None:
        """Same as `graph.backward(self, retain_graph)`."""
        self.graph.backward(self, retain_graph=retain_graph)

    # ---- PyTorch's operators and methods: thin sugar over the Graph's ops, with their gradients ------------------
    __array_ufunc__ = None  # numpy defers to these operators: np.float32(2) * t is t.__rmul__

    def _with(self, other):
        """(self, other) with a tensor of shape (1,) on either side expanded to the other's shape (PyTorch broadcasts
        a one-element tensor; the other broadcasts are the ops' own, as add's bias row)."""
        if isinstance(other, Tensor) and other.shape != self.shape:
            if other.shape == (1,):
                return self, self.graph.expand(other, shape=self.shape)
            if self.shape == (1,):
                return self.graph.expand(self, shape=other.shape), other
        return self, other

    def __add__(self, other):
        return self.graph.shift(self, s=float(other)) if _number(other) else self.graph.add(*self._with(other))

    def __radd__(self, other):
        return self.graph.shift(self, s=float(other)) if _number(other) else NotImplemented

    def __sub__(self, other):
        return self.graph.shift(self, s=-float(other)) if _number(other) else self.graph.sub(*self._with(other))

    def __rsub__(self, other):
        return self.graph.shift(self.graph.neg(self), s=float(other)) if _number(other) else NotImplemented

    def __mul__(self, other):
        if _number(other):
            return self.graph.scale(self, s=float(other))
        if isinstance(other, Tensor) and other.shape != self.shape and (1,) in (other.shape, self.shape):
            big, one = (self, other) if other.shape == (1,) else (other, self)
            return self.graph.mul_scalar(big, one)  # a (1,) tensor scales the other, as PyTorch broadcasts it
        return self.graph.mul(self, other)

    def __rmul__(self, other):
        return self.graph.scale(self, s=float(other)) if _number(other) else NotImplemented

    def __truediv__(self, other):
        return self.graph.scale(self, s=1.0 / float(other)) if _number(other) else self.graph.div(*self._with(other))

    def __rtruediv__(self, other):
        if not _number(other):
            return NotImplemented
        numerator = self.graph.expand(self.graph.tensor(np.array([float(other)], np.float32)), shape=self.shape)
        return self.graph.div(numerator, self)

    def __matmul__(self, other):
        return self.graph.matmul(self, other)

    def __neg__(self):
        return self.graph.neg(self)

    def sum(self, dim: int | None = None, keepdim: bool = False) -> "Tensor":
        return self.graph.sum(self, dim=dim, keepdim=keepdim)

    def mean(self, dim: int | None = None, keepdim: bool = False) -> "Tensor":
        return self.graph.mean(self, dim=dim, keepdim=keepdim)

    def relu(self) -> "Tensor":
        return self.graph.relu(self)

    def sigmoid(self) -> "Tensor":
        return self.graph.sigmoid(self)

    def exp(self) -> "Tensor":
        return self.graph.exp(self)

    def log(self) -> "Tensor":
        return self.graph.log(self)

    def tanh(self) -> "Tensor":
        return self.graph.tanh(self)

    def softmax(self, dim: int = -1) -> "Tensor":
        return self.graph.softmax(self, dim=dim)

    def log_softmax(self, dim: int = -1) -> "Tensor":
        return self.graph.log_softmax(self, dim=dim)

    def reshape(self, *shape) -> "Tensor":
        """t.reshape(3, 2) or t.reshape((3, 2)); one size may be -1."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return self.graph.reshape(self, shape=shape)

    def transpose(self, dim0: int, dim1: int) -> "Tensor":
        return self.graph.transpose(self, dim0=dim0, dim1=dim1)

    @property
    def T(self) -> "Tensor":
        """The transpose of a 2-D tensor (a 1-D one as it is), as PyTorch's .T."""
        if self.ndim > 2:
            raise ValueError(f".T takes a tensor of at most 2 dimensions, this one has shape {self.shape}; use "
                             "transpose(dim0, dim1)")
        return self if self.ndim < 2 else self.graph.transpose(self, dim0=0, dim1=1)

    def __repr__(self) -> str:
        flags = ", requires_grad=True" if self.requires_grad else ""
        if self._dtype != np.float32:
            flags = f", dtype={self._dtype}" + flags
        return f"Tensor(shape={self.shape}{flags})"
