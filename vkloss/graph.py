"""Graph: the user's `g`. Holds the device, makes tensors, applies registered ops, runs backward.

Its op methods (`g.add`, `g.mse_loss`, ...) come from the registry, so an op declared there is on every Graph.
It knows nothing of kp: the engine does the device work.
"""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

from . import autodiff, registry
from .device import DeviceInfo, choose_device
from .engine import Engine
from .ops.reductions import count_nonfinite
from .tensor import Tensor

_FLOAT_LIKE = "fiu"  # float, signed and unsigned integer dtypes convert to float32


def _host_array(data, where: str) -> np.ndarray:
    array = np.asarray(data)
    if array.dtype.kind not in _FLOAT_LIKE:
        raise TypeError(f"{where} takes real numbers; got an array of dtype {array.dtype} with shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{where} got an empty array of shape {array.shape}")
    return array


class Graph:
    """A device and the tensors and ops on it.

    `Graph(device=None)`: `device` is an index into `vkloss.devices()`; None reads `VKLOSS_DEVICE`, else prefers
    a discrete GPU, then an integrated one, then a CPU implementation such as lavapipe. `g.device` says which.
    NaN and infinity flow through ops as in PyTorch; `check_finite=True` counts them on the device after every op
    and raises FloatingPointError, naming the first op that produced one, at the next host read.
    """

    def __init__(self, device: int | str | None = None, check_finite: bool = False):
        self.device: DeviceInfo = choose_device(device)
        self._engine = Engine(self.device)
        self._grad_enabled = True
        # Device-side checks, read back with the next host read: (count buffer, message, exception class).
        self._checks: list[tuple] = []
        self.check_finite = bool(check_finite)
        self._thread = threading.get_ident()

    def _usable(self, what: str) -> None:
        """A Graph is used from the thread that made it, until closed: its tape, checks and engine state are not
        shared across threads (make one Graph per thread; they are independent)."""
        if self._engine.closed:
            raise RuntimeError(f"{what}: this Graph is closed")
        if threading.get_ident() != self._thread:
            raise RuntimeError(f"{what}: this Graph belongs to the thread that made it; make one Graph per thread")

    # ---- tensors -------------------------------------------------------------------------------------------
    def tensor(self, data, requires_grad: bool = False) -> Tensor:
        """A device tensor holding `data` as float32 (float64, float16 and integer arrays are converted).

        A 0-d value becomes shape (1,). Bool, complex, object and string arrays raise TypeError; empty arrays
        raise ValueError."""
        self._usable("g.tensor")
        array = _host_array(data, "g.tensor")
        shape = array.shape or (1,)
        self._engine.check_size(array.size)  # before converting: a too-large array is refused without a copy
        buffer = self._engine.upload(array.astype(np.float32, copy=False))
        return Tensor(self, shape, buffer, requires_grad=bool(requires_grad))

    def _copy_into(self, tensor: Tensor, data) -> Tensor:
        self._usable("copy_")
        array = _host_array(data, "copy_")
        if (array.shape or (1,)) != tensor.shape:
            raise ValueError(f"copy_: data of shape {array.shape} into a tensor of shape {tensor.shape}")
        if not tensor.is_leaf:
            raise ValueError("copy_: only a leaf tensor (made by g.tensor or g.parameter) can be overwritten")
        self._engine.upload_into(tensor.buffer, array.astype(np.float32, copy=False))
        return tensor

    def parameter(self, data) -> Tensor:
        """A trainable tensor: `g.tensor(data, requires_grad=True)`. It lives on the device across steps; an
        optimizer updates it in place."""
        return self.tensor(data, requires_grad=True)

    def _read(self, tensor: Tensor) -> np.ndarray:
        self._usable("reading a tensor")
        checks, self._checks = self._checks, []
        values = self._engine.read([tensor.buffer] + [count for count, _, _ in checks])
        for (_, message, error), count in zip(checks, values[1:]):  # in recording order: the first op to fail
            if count[0] != 0:
                raise error(message.format(count=int(count[0])))
        return values[0]

    # ---- ops -----------------------------------------------------------------------------------------------
    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        op = registry.get(name)

        def apply(*tensors, **attrs):
            return self._apply(op, tensors, attrs)

        apply.__name__, apply.__qualname__, apply.__doc__ = name, f"Graph.{name}", op.doc
        return apply

    def __dir__(self):
        return sorted(set(super().__dir__()) | {op.name for op in registry.all_ops()})

    def _apply(self, op, tensors: tuple, attrs: dict) -> Tensor:
        self._usable(f"g.{op.name}")
        if len(tensors) != op.arity:
            raise TypeError(f"g.{op.name} takes {op.arity} tensor(s), got {len(tensors)}")
        for position, t in enumerate(tensors, 1):
            if not isinstance(t, Tensor):
                raise TypeError(f"g.{op.name}: argument {position} is a {type(t).__name__}, not a vkloss Tensor "
                                "(wrap arrays with g.tensor)")
            if t.graph is not self:
                raise ValueError(f"g.{op.name}: argument {position} belongs to another Graph")
        if op.compose is not None:
            return op.compose(self, *tensors, **attrs)
        shape = tuple(op.shape(*(t.shape for t in tensors), **attrs))
        fused_kernel = op.backward_kind == "fused kernel"
        for position, t in enumerate(tensors[1:] if fused_kernel else (), 2):
            if t.requires_grad:
                raise ValueError(f"g.{op.name}: its fused kernel gives the gradient with respect to argument 1 "
                                 f"only; argument {position} (shape {t.shape}) must not require a gradient")
        differentiable = self._grad_enabled and op.backward is not None and any(t.requires_grad for t in tensors)
        out = self._engine.alloc(math.prod(shape))
        buffers, shapes = [t.buffer for t in tensors], [t.shape for t in tensors]
        saved = None
        if fused_kernel:
            fused = op.forward(self._engine, buffers, out, shapes, want_grad=differentiable, **attrs)
            self._checks.extend((count, message, ValueError) for count, message in fused.checks)
            if fused.grad is not None:
                saved = Tensor(self, tensors[0].shape, fused.grad)
        else:
            op.forward(self._engine, buffers, out, shapes, **attrs)
        if self.check_finite:
            self._checks.append((count_nonfinite(self._engine, out, out.size),
                                 f"{op.name} produced {{count}} NaN or infinite values (output shape {shape}, input "
                                 f"shapes {', '.join(str(t.shape) for t in tensors)})", FloatingPointError))
        node = autodiff.Node(op, tensors, attrs, saved) if differentiable else None
        return Tensor(self, shape, out, requires_grad=differentiable, node=node)

    # ---- autodiff ------------------------------------------------------------------------------------------
    def backward(self, loss: Tensor) -> None:
        """Gradients of `loss` (shape (1,)) into `.grad` of every leaf tensor that requires one.

        Gradients add up over repeated calls, as in PyTorch; set `t.grad = None` to start again."""
        self._usable("backward")
        if not isinstance(loss, Tensor) or loss.graph is not self:
            raise ValueError("backward takes a Tensor of this Graph")
        if loss.shape != (1,):
            raise ValueError(f"backward needs a scalar loss of shape (1,), got shape {loss.shape}")
        if not loss.requires_grad:
            raise RuntimeError("backward: the loss does not require a gradient (no input has requires_grad=True)")
        if loss.node is autodiff.FREED:
            raise RuntimeError("backward: this loss's tape was already used and freed by an earlier backward")
        with self.no_grad():
            autodiff.backward(self, loss, self.tensor(np.ones(1, np.float32)))

    @contextlib.contextmanager
    def no_grad(self):
        """Within it, ops record no tape (backward rules run this way)."""
        previous, self._grad_enabled = self._grad_enabled, False
        try:
            yield
        finally:
            self._grad_enabled = previous

    # ---- lifetime ------------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Run all recorded work now."""
        self._usable("flush")
        self._engine.flush()

    @property
    def engine(self):
        """The device engine below this graph, for tools and benchmarks that dispatch kernels themselves."""
        return self._engine

    @property
    def stats(self) -> dict:
        """Counters: submissions, dispatches, barriers, algorithms and buffers created."""
        return dict(self._engine.stats)

    def close(self) -> None:
        """Run what is recorded, then free the device's buffers and kernels. Using the graph or its tensors
        afterwards raises RuntimeError; closing twice is harmless."""
        self._checks.clear()
        self._engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"Graph(device={self.device})"
