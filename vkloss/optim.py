"""Optimizers whose update runs as a device kernel, in place: no parameter is copied to the host while training.

    opt = vkloss.optim.Adam([w1, b1, w2, b2], lr=1e-2)
    opt.zero_grad(); g.backward(loss); opt.step()

The formulas are PyTorch's (torch.optim.SGD with momentum, torch.optim.Adam), without weight decay. As in PyTorch,
each parameter counts its own steps: one that gets no gradient in a step is not updated and its count stays.
Nothing that changes from step to step is a push constant (Adam's bias corrections travel in a small buffer), so
the engine replays a repeated training step without recording it again.
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .tensor import Tensor

OPTIM = kernels.Kernel(
    "optim.comp", switches={"mode": ("SGD", "ADAM"), **kernels.ACCESS_SWITCHES},
    allowed=lambda mode, vec4, wide: kernels.access_allowed(vec4, wide),
    push="uint n, float lr, float momentum = 0.0, float beta1 = 0.0, float beta2 = 0.0, float eps = 0.0, "
         "uint index = 0",
    bindings=lambda mode, **_: ((["grad", "corrections"], ["param", "state1", "state2"]) if mode == "ADAM" else
                                (["grad"], ["param", "state1"])),
)


def _update(engine, mode: str, param, push: dict, **buffers) -> None:
    """One parameter's update, an access of as many floats as its size allows (LaunchPolicy.access_width) per invocation."""
    width = engine.launch.access_width(param.size)
    kernels.dispatch(engine, OPTIM.variant(mode=mode, **kernels.access_switches(width)),
                     engine.launch.groups_for(param.size // width), push=dict(push, n=param.size // width),
                     grad=param.grad.buffer, param=param.buffer, **buffers)


class Optimizer:
    def __init__(self, params, lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__} got no parameters")
        for position, param in enumerate(self.params):
            if not isinstance(param, Tensor) or not param.requires_grad or not param.is_leaf:
                raise ValueError(f"{type(self).__name__}: parameter {position} must be a leaf Tensor with "
                                 f"requires_grad=True, got {param!r}")
            if param.dtype != np.float32:
                raise TypeError(f"{type(self).__name__}: parameter {position}, of shape {tuple(param.shape)}, is "
                                f"{param.dtype}; optimizers update float32 parameters (keep a float32 master copy, "
                                f"and use g.astype for a 16-bit one)")
            if param.graph is not self.params[0].graph:
                raise ValueError(f"{type(self).__name__}: parameter {position} belongs to another Graph")
        if not 0 < lr < float("inf"):
            raise ValueError(f"{type(self).__name__}: lr must be positive and finite, got {lr}")
        self.lr = float(lr)
        self.graph = self.params[0].graph
        self._check_open("creating it")
        self.engine = self.graph.engine
        self.steps = [0] * len(self.params)  # per parameter, as PyTorch's state["step"]

    def _check_open(self, what: str) -> None:
        if self.graph.closed:
            raise RuntimeError(f"{type(self).__name__}: {what}: its Graph is closed")

    def zero_grad(self) -> None:
        """Forget the gradients (backward accumulates into .grad, as in PyTorch)."""
        for param in self.params:
            param.grad = None

    def _state(self, param):
        return self.engine.upload(np.zeros(param.size, np.float32))

    def step(self) -> None:
        """Update every parameter that has a gradient, on the device. The step's work is submitted by the next
        host read or, failing that, before the next step allocates: its buffers then return to the pool, and the
        next step reuses them and the kernels bound to them."""
        self._check_open("step()")
        self.graph.require_usable(f"{type(self).__name__}.step()")
        stepped = [index for index, param in enumerate(self.params) if param.grad is not None]
        for index in stepped:
            self.steps[index] += 1
            self.params[index].version += 1  # updated in place: a pending backward that needs it will say so
        self._before_updates()
        for index in stepped:
            self._update(index, self.params[index])
        self.engine.end_of_step()

    def _before_updates(self) -> None:
        pass


class SGD(Optimizer):
    """torch.optim.SGD: param -= lr * velocity, velocity = momentum * velocity + grad."""

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0):
        super().__init__(params, lr)
        if not 0 <= momentum < 1:  # NaN fails too
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.velocity = [self._state(p) for p in self.params]

    def _update(self, index, param):
        _update(self.engine, "SGD", param, dict(lr=self.lr, momentum=self.momentum), state1=self.velocity[index])


class Adam(Optimizer):
    """torch.optim.Adam with bias correction."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas}")
        if not 0 <= eps < float("inf"):  # PyTorch: "Invalid epsilon value"
            raise ValueError(f"Adam: eps must be a number >= 0, got {eps}")
        self.eps = float(eps)
        self.m = [self._state(p) for p in self.params]
        self.v = [self._state(p) for p in self.params]
        self.corrections = self.engine.alloc(2 * len(self.params))  # per parameter: 1 - beta1^t, 1 - beta2^t

    def _before_updates(self):
        t = np.array(self.steps, np.float64)  # in float64 as PyTorch does, rounded to float32 once
        corrections = np.stack([1 - self.beta1 ** t, 1 - self.beta2 ** t], axis=1)
        self.engine.upload_into(self.corrections, corrections.astype(np.float32))

    def _update(self, index, param):
        _update(self.engine, "ADAM", param, dict(lr=self.lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                                                 index=index),
                corrections=self.corrections, state1=self.m[index], state2=self.v[index])
