"""Optimizers whose update runs as a device kernel, in place: no parameter is copied to the host while training.

    opt = vkloss.optim.Adam([w1, b1, w2, b2], lr=1e-2)
    opt.zero_grad(); g.backward(loss); opt.step()

The formulas are PyTorch's (torch.optim.SGD with momentum, torch.optim.Adam), without weight decay. One dispatch
updates up to GROUP parameters (shaders/optim.comp), as torch.optim's foreach and fused implementations do, so a
small model's step is one dispatch. As in PyTorch, each parameter counts its own steps: one that gets no gradient
in a step is not updated and its count stays. The counts live on the device, and nothing that changes from step to
step is a push constant: a repeated training step replays, or is captured, as it is.
"""
from __future__ import annotations

import math

import numpy as np

from . import kernels
from .launch import ceil_div
from .tensor import Tensor

GROUP = 8  # parameters one dispatch updates at most: optim.comp's slots
SLOT_FIELDS = "".join(f"uint end_{j} = 0, uint size_{j} = 0, uint index_{j} = 0, " for j in range(GROUP))
# per slot: its parameter's buffers (gradient, parameter, state); Adam's step counts beside them
SLOT_BUFFERS = {"SGD": ("grad", "param", "state1"), "ADAM": ("grad", "param", "state1", "state2")}
SHARED_BUFFERS = {"SGD": 0, "ADAM": 2}


def _bindings(mode, count, **_):
    reads = [f"grad_{j}" for j in range(count)] + (["steps"] if mode == "ADAM" else [])
    writes = [f"{name}_{j}" for j in range(count) for name in SLOT_BUFFERS[mode][1:]]
    return reads, writes + (["next_steps"] if mode == "ADAM" else [])


OPTIM = kernels.Kernel(
    "optim.comp", switches={"mode": ("SGD", "ADAM"), "count": tuple(range(1, GROUP + 1)), **kernels.ACCESS_SWITCHES},
    allowed=lambda mode, count, vec4, wide: vec4 and kernels.access_allowed(vec4, wide),  # 4 or 8, and a float tail
    push=SLOT_FIELDS + "uint items, float lr, float momentum = 0.0, float beta1 = 0.0, float beta2 = 0.0, "
         "float eps = 0.0, float log_beta1 = 0.0, float log_beta2 = 0.0",
    bindings=_bindings,
)


def group_size(device, mode: str) -> int:
    """Parameters one dispatch may update on `device`: GROUP, or fewer where it binds fewer storage buffers."""
    fit = (device.max_storage_buffers - SHARED_BUFFERS[mode]) // len(SLOT_BUFFERS[mode])
    if fit < 1:
        raise RuntimeError(f"{device.name} binds {device.max_storage_buffers} storage buffers per shader; the "
                           f"{mode} update needs {SHARED_BUFFERS[mode] + len(SLOT_BUFFERS[mode])}")
    return min(GROUP, fit)


class Optimizer:
    MODE = ""

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
        self._group = group_size(self.graph.device, self.MODE)
        # parameters updated at least once (a captured step replays the set its recording updated, so this stays
        # right): PyTorch keeps state only for those
        self.stepped: set[int] = set()

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
        """Update every parameter that has a gradient, on the device, GROUP parameters a dispatch. The step's work
        is submitted by the next host read or, failing that, before the next step allocates: its buffers then
        return to the pool, and the next step reuses them and the kernels bound to them."""
        self._check_open("step()")
        self.graph.require_usable(f"{type(self).__name__}.step()")
        stepped = [index for index, param in enumerate(self.params) if param.grad is not None]
        for index in stepped:
            self.params[index].version += 1  # updated in place: a pending backward that needs it will say so
        self.stepped.update(stepped)
        for start in range(0, len(stepped), self._group):
            self._dispatch(stepped[start:start + self._group])
        if stepped:
            self._after_updates()
        self.engine.end_of_step()

    def _dispatch(self, indices: list) -> None:
        """One dispatch over these parameters: each `update_accesses()` accesses of 4 (or 8) floats an invocation,
        then its tail, a float an invocation."""
        width = 8 if self.engine.launch.wide_loads() else 4
        items = self.engine.launch.update_accesses()
        push, buffers, end = dict(self._push(), items=items), {}, 0
        for slot, index in enumerate(indices):
            param = self.params[index]
            end += ceil_div(param.size // width, items) + param.size % width
            push.update({f"end_{slot}": end, f"size_{slot}": param.size, f"index_{slot}": index})
            buffers.update({f"grad_{slot}": param.grad.buffer, f"param_{slot}": param.buffer,
                            **{f"{name}_{slot}": state[index] for name, state in self._slot_state().items()}})
        kernels.dispatch(self.engine, OPTIM.variant(mode=self.MODE, count=len(indices),
                                                    **kernels.access_switches(width)),
                         self.engine.launch.groups_for(end), push=push, **buffers, **self._shared_buffers())

    def _push(self) -> dict:
        return {"lr": self.lr}

    def _slot_state(self) -> dict:
        return {}

    def _shared_buffers(self) -> dict:
        return {}

    def _after_updates(self) -> None:
        pass

    # ---- state, as PyTorch's state_dict -----------------------------------------------------------------------
    HYPERPARAMETERS: tuple = ("lr",)

    def state_dict(self) -> dict:
        """PyTorch's layout: {"state": {parameter index: {name: numpy array or float}}, "param_groups": [{
        hyperparameters, "params": [indices]}]}, read from the device in one flush."""
        return {"state": self._state_entries(), "param_groups": [{**self._hyperparameters(),
                                                                  "params": list(range(len(self.params)))}]}

    def check_state_dict(self, state: dict) -> None:
        """ValueError, naming the parameter and the shapes, unless `state` fits these parameters."""
        groups = state.get("param_groups")
        if not isinstance(groups, list) or len(groups) != 1 or list(groups[0].get("params", ())) != list(
                range(len(self.params))):
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected one parameter group of the "
                             f"{len(self.params)} parameters, got {groups!r:.200}")
        missing = [k for k in self.HYPERPARAMETERS if k not in groups[0]]
        if missing:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the group lacks {', '.join(missing)}")
        for index, entries in state.get("state", {}).items():
            if not 0 <= int(index) < len(self.params):
                raise ValueError(f"{type(self).__name__}.load_state_dict: state for parameter {index}, of "
                                 f"{len(self.params)}")
            shape = self.params[int(index)].shape
            for key, value in entries.items():
                if key != "step" and np.shape(value) not in (shape, (int(np.prod(shape)),)):
                    raise ValueError(f"{type(self).__name__}.load_state_dict: {key} of parameter {index} has shape "
                                     f"{np.shape(value)}; the parameter has shape {shape}")

    def load_state_dict(self, state: dict) -> None:
        """Take a state_dict's hyperparameters and state (onto the device), as PyTorch's load_state_dict. Load it
        before capturing a step: a captured step keeps the hyperparameters it was recorded with."""
        self.check_state_dict(state)
        self._check_open("load_state_dict()")
        self._set_hyperparameters(state["param_groups"][0])
        self._load_entries({int(k): v for k, v in state.get("state", {}).items()})

    def _hyperparameters(self) -> dict:
        return {"lr": self.lr}

    def _set_hyperparameters(self, group: dict) -> None:
        self.lr = float(group["lr"])


class SGD(Optimizer):
    """torch.optim.SGD: param -= lr * velocity, velocity = momentum * velocity + grad."""

    MODE = "SGD"

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0):
        super().__init__(params, lr)
        if not 0 <= momentum < 1:  # NaN fails too
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.velocity = [self._state(p) for p in self.params]

    def _push(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum}

    def _slot_state(self) -> dict:
        return {"state1": self.velocity}

    HYPERPARAMETERS = ("lr", "momentum")

    def _hyperparameters(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}

    def _set_hyperparameters(self, group: dict) -> None:
        self.lr, self.momentum = float(group["lr"]), float(group["momentum"])

    def _state_entries(self) -> dict:
        if not self.momentum:
            return {}
        values = self.engine.read(self.velocity)
        return {index: {"momentum_buffer": v.reshape(p.shape)} for index, (p, v) in
                enumerate(zip(self.params, values)) if index in self.stepped}

    def _load_entries(self, entries: dict) -> None:
        self.stepped = {index for index, entry in entries.items() if "momentum_buffer" in entry}
        for index, buffer in enumerate(self.velocity):
            value = entries.get(index, {}).get("momentum_buffer")
            self.engine.upload_into(buffer, np.zeros(buffer.size, np.float32) if value is None else
                                    np.asarray(value, np.float32).reshape(-1))


class Adam(Optimizer):
    """torch.optim.Adam with bias correction; each parameter's step count on the device."""

    MODE = "ADAM"

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
        zeros = np.zeros(len(self.params), np.float32)
        self.steps, self.next_steps = self.engine.upload(zeros), self.engine.upload(zeros)  # per parameter

    def _push(self) -> dict:
        # ln(beta) in float64 (ln 0 = -inf: a bias correction of 1), so that 1 - beta^t keeps its digits on the device
        logs = [math.log(b) if b > 0 else -math.inf for b in (self.beta1, self.beta2)]
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "log_beta1": logs[0],
                "log_beta2": logs[1]}

    def _slot_state(self) -> dict:
        return {"state1": self.m, "state2": self.v}

    def _shared_buffers(self) -> dict:
        return {"steps": self.steps, "next_steps": self.next_steps}

    def _after_updates(self) -> None:
        self.engine.copy(self.next_steps, self.steps)  # this step's counts are the next step's

    HYPERPARAMETERS = ("lr", "betas", "eps")

    def _hyperparameters(self) -> dict:
        return {"lr": self.lr, "betas": [self.beta1, self.beta2], "eps": self.eps, "weight_decay": 0.0,
                "amsgrad": False}

    def _set_hyperparameters(self, group: dict) -> None:
        self.lr, self.eps = float(group["lr"]), float(group["eps"])
        self.beta1, self.beta2 = (float(b) for b in group["betas"])

    def _state_entries(self) -> dict:
        """Each parameter stepped at least once, as PyTorch keeps it: its step count, m and v."""
        values = self.engine.read([self.steps, *self.m, *self.v])
        steps, n = values[0], len(self.params)
        return {index: {"step": float(steps[index]), "exp_avg": values[1 + index].reshape(p.shape),
                        "exp_avg_sq": values[1 + n + index].reshape(p.shape)}
                for index, p in enumerate(self.params) if steps[index] > 0}

    def _load_entries(self, entries: dict) -> None:
        steps = np.zeros(len(self.params), np.float32)
        self.stepped = set(entries)
        for index, param in enumerate(self.params):
            entry = entries.get(index, {})
            steps[index] = float(np.asarray(entry.get("step", 0.0)).reshape(-1)[0])
            for buffer, key in ((self.m[index], "exp_avg"), (self.v[index], "exp_avg_sq")):
                value = entry.get(key)
                self.engine.upload_into(buffer, np.zeros(buffer.size, np.float32) if value is None else
                                        np.asarray(value, np.float32).reshape(-1))
        self.engine.upload_into(self.steps, steps)
        self.engine.upload_into(self.next_steps, steps)
