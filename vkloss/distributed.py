"""Past one device: data parallel training over torch.distributed with the gloo backend, launched by torchrun.

vkloss moves no bytes between processes itself: torch.distributed does (gloo runs over TCP on any machine), and
torchrun starts the processes and sets their environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
PyTorch is needed for this module alone: `pip install vkloss[distributed]`.

    from vkloss import distributed
    info = distributed.init()                        # the process group, and this rank's device
    g = vkloss.Graph(info.device)
    ...
    dp = distributed.DataParallel(params)            # rank 0's parameters broadcast to every rank
    loss.backward(); dp.all_reduce_gradients(); opt.step()

Data parallel follows PyTorch's DistributedDataParallel: gradients in buckets of about 25 MiB in parameter order,
each flattened into one host buffer as its tensors' copies arrive (one submission reads them all), all-reduced
asynchronously while the next bucket's copies are flattened, then averaged and written back into the gradients.
A collective that waits longer than the process group's timeout (VKLOSS_DIST_TIMEOUT seconds, default 120) raises
on every rank still alive: a rank that dies or hangs stops the others with an error, never a wait forever.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np

from .device import devices

ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_VARIABLE, DEFAULT_TIMEOUT = "VKLOSS_DIST_TIMEOUT", 120.0
BUCKET_BYTES = 25 << 20  # DistributedDataParallel's default bucket_cap_mb


def _dist():
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:
        raise ImportError(f"vkloss.distributed runs on torch.distributed, and PyTorch cannot be imported ({e}): "
                          "pip install vkloss[distributed]") from None
    if not dist.is_available() or not dist.is_gloo_available():
        raise ImportError(f"vkloss.distributed needs torch.distributed with the gloo backend; PyTorch "
                          f"{torch.__version__} here has {'no torch.distributed' if not dist.is_available() else 'no gloo'}")
    return torch, dist


def launched() -> bool:
    """Whether this process was started by torchrun (or as it starts them: WORLD_SIZE and RANK set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


@dataclass(frozen=True)
class Process:
    rank: int
    world_size: int
    local_rank: int
    device: int  # the Vulkan device index this process uses


def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{TIMEOUT_VARIABLE}={text!r}: must be a positive number of seconds")
    return value


def init(timeout: float | None = None) -> Process:
    """Join the process group torchrun describes (gloo; kept if one exists already) and choose this process's
    device: LOCAL_RANK modulo the number of Vulkan devices, or VKLOSS_DEVICE where set. `timeout`: seconds a
    collective may wait (default VKLOSS_DIST_TIMEOUT, else 120)."""
    missing = [name for name in ENVIRONMENT if name not in os.environ]
    if missing:
        raise ValueError(f"vkloss.distributed.init: {', '.join(missing)} not set: start the processes with torchrun "
                         "(torchrun --standalone --nproc-per-node 2 script.py), which sets "
                         f"{', '.join(ENVIRONMENT)}")
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        try:
            values[name] = int(os.environ[name])
        except ValueError:
            raise ValueError(f"vkloss.distributed.init: {name}={os.environ[name]!r} is not an integer") from None
    if not 0 <= values["RANK"] < values["WORLD_SIZE"] or values["LOCAL_RANK"] < 0:
        raise ValueError(f"vkloss.distributed.init: RANK {values['RANK']}, LOCAL_RANK {values['LOCAL_RANK']} and "
                         f"WORLD_SIZE {values['WORLD_SIZE']} do not fit together")
    seconds = timeout_seconds() if timeout is None else float(timeout)
    _, dist = _dist()
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=values["RANK"], world_size=values["WORLD_SIZE"],
                                timeout=datetime.timedelta(seconds=seconds))
    chosen = os.environ.get("VKLOSS_DEVICE", "").strip()
    device = int(chosen) if chosen.isdigit() else values["LOCAL_RANK"] % max(1, len(devices()))
    return Process(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], device)


def shutdown() -> None:
    """Leave the process group (where one was joined)."""
    _, dist = _dist()
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values) -> np.ndarray:
    """The element-wise sum of a float64 array over every rank (a few numbers: epoch losses, counts)."""
    torch, dist = _dist()
    tensor = torch.from_numpy(np.ascontiguousarray(values, np.float64).copy())
    dist.all_reduce(tensor)
    return tensor.numpy()


class DataParallel:
    """Gradient averaging over ranks for vkloss parameters (of one Graph), as DistributedDataParallel does.

    Made on every rank with the same parameters in the same order: it broadcasts rank 0's values to every rank.
    After each backward, `all_reduce_gradients()` makes every parameter's `.grad` the weighted sum over ranks of
    their gradients, `weight` being this rank's share: 1 / world_size by default (equal batches), or
    local batch size / global batch size, which makes the result the gradient of one process over the whole batch.
    A parameter with no gradient on a rank counts as zeros there (it gets a gradient of zeros)."""

    def __init__(self, params, bucket_bytes: int = BUCKET_BYTES):
        self.torch, self.dist = _dist()
        if not self.dist.is_initialized():
            raise RuntimeError("vkloss.distributed.DataParallel: no process group: call vkloss.distributed.init() "
                               "first")
        self.params = list(params)
        if not self.params or any(p.dtype != np.float32 for p in self.params):
            raise ValueError("vkloss.distributed.DataParallel takes a non-empty list of float32 parameters")
        self.world_size, self.rank = self.dist.get_world_size(), self.dist.get_rank()
        self.buckets = _buckets([p.size for p in self.params], bucket_bytes)
        self.bytes_per_step = 4 * sum(p.size for p in self.params)
        self._broadcast()

    def _broadcast(self) -> None:
        for bucket in self.buckets:
            flat = self._flat([self.params[i].numpy() for i in bucket])
            self.dist.broadcast(flat, src=0)
            self._scatter(flat, bucket, lambda i, values: self.params[i].copy_(values))

    def all_reduce_gradients(self, weight: float | None = None) -> None:
        share = 1.0 / self.world_size if weight is None else float(weight)
        g = self.params[0].graph
        for p in self.params:
            if p.grad is None:
                p.grad = g.tensor(np.zeros(p.shape, np.float32))
        copies = [p.grad.numpy_async() for p in self.params]  # one submission reads every gradient
        pending = []
        for bucket in self.buckets:  # bucket b reduces while b + 1's copies arrive and are flattened
            flat = self._flat([copies[i].result() for i in bucket])
            pending.append((bucket, flat, self.dist.all_reduce(flat.mul_(share), async_op=True)))
        for bucket, flat, work in pending:
            work.wait()
            self._scatter(flat, bucket, lambda i, values: self.params[i].grad.copy_(values))

    def _flat(self, arrays):
        return self.torch.from_numpy(np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in arrays]))

    def _scatter(self, flat, bucket, write) -> None:
        values, offset = flat.numpy(), 0
        for i in bucket:
            size = self.params[i].size
            write(i, values[offset:offset + size].reshape(self.params[i].shape))
            offset += size


def _buckets(sizes: list, bucket_bytes: int) -> list:
    """Parameter indices in order, grouped into buckets of at most bucket_bytes (a larger parameter alone)."""
    buckets, current, held = [], [], 0
    for i, size in enumerate(sizes):
        if current and held + 4 * size > bucket_bytes:
            buckets.append(current)
            current, held = [], 0
        current.append(i)
        held += 4 * size
    return buckets + [current]


__all__ = ["init", "shutdown", "launched", "DataParallel", "Process", "all_reduce_sum"]
