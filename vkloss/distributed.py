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
from .implementations import ForwardKernel
from .registry import register_op

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
        lacking = "no torch.distributed" if not dist.is_available() else "no gloo"
        raise ImportError(f"vkloss.distributed needs torch.distributed with the gloo backend; PyTorch "
                          f"{torch.__version__} here has {lacking}")
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
        copies = [p.numpy_async() for p in self.params]  # one submission reads every parameter
        for bucket in self.buckets:
            flat = self._flat([copies[i].result() for i in bucket])
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


def vocab_parallel_cross_entropy(hidden, weight, target, bias=None, *, reduction: str = "mean",
                                 ignore_index: int | None = -100, label_smoothing: float = 0.0, weight_classes=None,
                                 lse_square_scale: float = 0.0, softcap: float | None = None):
    """linear_cross_entropy with the vocabulary sharded over the ranks, as Megatron-LM's vocab_parallel_cross_entropy:
    this rank holds a contiguous shard of the classes, in rank order (weight's rows [classes_here, features], bias
    and weight_classes of as many), and hidden [rows, features] and `target` (global class indices [rows]) are the
    same on every rank. Each rank's logits give a row's (max, sum of exp, sum a (logit - max), sum a) over its shard;
    those four floats a row are gathered from every rank and merged (the chunked cross-entropy kernels' COMBINE),
    so the loss, the same on every rank, and every gradient equal the single-device op's. Backward: d hidden summed
    over the ranks (every rank must run it), d weight and d bias of this shard alone. reduction 'mean', 'sum' or
    'none' (each row's loss); ignore_index, label smoothing,
    class weights, softcap and the z-loss as linear_cross_entropy takes them; 16-bit hidden and weight are widened to
    float32 (their gradients come back in their dtype). The host takes part (three or four collectives of a few floats
    a row each call): call it in an eager step, not in g.capture."""
    _, dist = _dist()
    g, rows = hidden.graph, hidden.shape[0]
    labels = _global_labels(target, rows)
    shard = _shard(weight, bias, weight_classes, hidden, reduction, label_smoothing, lse_square_scale, softcap)
    h32, w32 = (t if t.dtype == np.float32 else g.astype(t, dtype="float32") for t in (hidden, weight))
    b32 = g.tensor(np.zeros(weight.shape[0], np.float32)) if bias is None else (
        bias if bias.dtype == np.float32 else g.astype(bias, dtype="float32"))
    counts = all_reduce_sum(np.eye(dist.get_world_size())[dist.get_rank()] * weight.shape[0])
    offset, total = int(counts[:dist.get_rank()].sum()), int(counts.sum())
    _check_labels(labels, total, ignore_index, weight.shape[0])
    divisor = _divisor(labels, reduction, ignore_index, shard, offset, weight.shape[0])
    scale = (1.0 / divisor if divisor else float("inf")) if reduction == "mean" else 1.0
    with g.no_grad():
        logits = g.linear(h32, w32, b32)  # this shard's [rows, classes_here]
        push = dict(rows=rows, classes=weight.shape[0], chunk=weight.shape[0], scale=scale, smoothing=label_smoothing,
                    ignore_index=ignore_index or 0, ignore=ignore_index is not None, softcap=softcap or 0.0,
                    z_scale=lse_square_scale, class_offset=offset, total_classes=total)
        row_loss, d_logits = _rows_over_ranks(g, logits, g.tensor(labels, dtype=np.int32), shard, push, softcap)
        value = row_loss if reduction == "none" else g.sum_all(row_loss, scale=scale)
    return g.ops.vocab_parallel_loss(h32, w32, b32, value=value, d_logits=d_logits)  # on the tape


def _rows_over_ranks(g, logits, index, class_weights, push: dict, softcap):
    """Each row's loss and this shard's logits' gradient, from every rank's shard statistics: STATS over the shard
    (one chunk), all_gather, COMBINE of the ranks' chunks, GRAD. Returns (row losses, d logits) as Tensors."""
    from .ops import cross_entropy as ce
    from .registry import KernelContext
    from .tensor import Tensor

    torch, dist = _dist()
    ctx, rows, world = KernelContext(g.engine), logits.shape[0], dist.get_world_size()
    cap, weights = ce.spec_constants(softcap), None if class_weights is None else class_weights.buffer
    partials = ctx.alloc(rows * 4)
    ctx.dispatch(ce.variant("STATS", target_index=True, weighted=weights is not None), ctx.grid(rows), constants=cap,
                 push=push, pred=logits.buffer, target=index.buffer, weight=weights, partials=partials)
    gathered = [torch.zeros(rows * 4, dtype=torch.float32) for _ in range(world)]
    dist.all_gather(gathered, torch.from_numpy(Tensor(g, (rows * 4,), partials).numpy()))
    merged = ctx.upload(np.stack([t.numpy().reshape(rows, 4) for t in gathered], axis=1).reshape(-1))
    row_loss, row_stats = ctx.alloc(rows), ctx.alloc(rows * 4)
    ctx.dispatch(ce.variant("COMBINE", target_index=True), ctx.groups_for(rows), push=dict(push, chunks=world),
                 partials=merged, target=index.buffer, row_loss=row_loss, row_stats=row_stats, bad=ctx.alloc(rows))
    grad = ctx.alloc(logits.size)
    ctx.dispatch(ce.variant("GRAD", write_grad=True, target_index=True, weighted=weights is not None),
                 ctx.groups_for(logits.size), constants=cap, push=push, pred=logits.buffer, target=index.buffer,
                 weight=weights, row_stats=row_stats, grad=grad)
    return Tensor(g, (rows,), row_loss), Tensor(g, logits.shape, grad)


def _loss_shape(hidden, weight, bias, value=None, d_logits=None):
    if value not in ((1,), hidden[:1]) or d_logits != (hidden[0], weight[0]) or bias != weight[:1]:
        raise ValueError(f"vocab_parallel_loss: value {value} must be (1,) or ({hidden[0]},), and d_logits {d_logits} "
                         f"[rows, classes here] beside hidden {hidden}, weight {weight} and bias {bias}")
    return value


def _loss_backward(ctx, grad):
    """d logits (for an upstream gradient of 1 a row) times the upstream one, then through the shard's product: d
    hidden summed over the ranks, d weight and d bias this shard's."""
    g, d_logits = ctx.g, ctx.attrs["d_logits"]
    hidden, weight, _ = ctx.inputs
    if not ctx.upstream_is_one:
        d_logits = g.mul_scalar(d_logits, grad) if grad.shape == (1,) else g.ops.mul_rows(d_logits, grad)
    d_hidden = None
    if ctx.needs[0]:
        torch, dist = _dist()
        summed = torch.from_numpy(g.matmul(d_logits, weight).numpy().copy())
        dist.all_reduce(summed)
        d_hidden = g.tensor(summed.numpy())
    return (d_hidden, g.matmul_transposed(d_logits, hidden, trans_a=True) if ctx.needs[1] else None,
            g.sum_rows(d_logits) if ctx.needs[2] else None)


register_op(
    "vocab_parallel_loss(Tensor hidden, Tensor weight, Tensor bias, *, Tensor? value=None, Tensor? d_logits=None) "
    "-> Tensor",
    ForwardKernel(shape=_loss_shape, forward=lambda ctx, hidden, weight, bias, value=None, d_logits=None:
                  ctx.copy(value, ctx.out), backward=_loss_backward), internal=True,
    doc="(1,) or [rows]: `value`, the loss vocab_parallel_cross_entropy computed across ranks, on the tape with the "
        "d logits of its shard computed beside it; backward makes the products (d hidden summed over the ranks).",
)


def _global_labels(target, rows: int) -> np.ndarray:
    labels = np.asarray(target.numpy() if hasattr(target, "numpy") and not isinstance(target, np.ndarray) else target)
    if labels.shape != (rows,) or labels.dtype.kind not in "iu":
        raise ValueError(f"vocab_parallel_cross_entropy: target must be integer class indices [{rows}], one per row of "
                         f"hidden; got {labels.dtype} of shape {labels.shape}")
    return labels.astype(np.int64)


def _shard(weight, bias, weight_classes, hidden, reduction, label_smoothing, lse_square_scale, softcap):
    """The checks of the shard's shapes and the options; returns weight_classes as a float32 tensor (or None)."""
    from .ops.cross_entropy import check_index_options, check_liger_options

    classes, features = weight.shape
    if len(hidden.shape) != 2 or hidden.shape[1] != features:
        raise ValueError(f"vocab_parallel_cross_entropy: hidden {hidden.shape} and this rank's weight {weight.shape} "
                         "must be [rows, features] and [classes here, features]")
    if bias is not None and bias.shape != (classes,):
        raise ValueError(f"vocab_parallel_cross_entropy: bias {bias.shape} must be ({classes},), this shard's classes")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"vocab_parallel_cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    check_index_options("vocab_parallel_cross_entropy", None, label_smoothing)
    check_liger_options("vocab_parallel_cross_entropy", lse_square_scale, softcap, weight_classes is not None)
    if weight_classes is None:
        return None
    values = np.asarray(weight_classes.numpy() if hasattr(weight_classes, "graph") else weight_classes, np.float32)
    if values.shape != (classes,):
        raise ValueError(f"vocab_parallel_cross_entropy: weight_classes {values.shape} must be ({classes},), this "
                         "shard's classes")
    return hidden.graph.tensor(values)


def _check_labels(labels, total: int, ignore_index, here: int) -> None:
    bad = (labels < 0) | (labels >= total)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bad.any():
        raise ValueError(f"vocab_parallel_cross_entropy: {int(bad.sum())} class indices of target (shape "
                         f"{labels.shape}) are outside [0, {total}) (every rank's classes; {here} here)"
                         + (f" or ignore_index {ignore_index}" if ignore_index is not None else ""))


def _divisor(labels, reduction, ignore_index, weight_classes, offset: int, here: int) -> float:
    """A mean's divisor, PyTorch's: the counted rows' summed class weight (each row's on the rank that holds it)."""
    if reduction != "mean":
        return 1.0
    counted = labels != ignore_index if ignore_index is not None else np.ones(len(labels), bool)
    if weight_classes is None:
        return float(counted.sum())
    local = labels - offset
    mine = counted & (local >= 0) & (local < here)
    return float(all_reduce_sum([weight_classes.numpy()[local[mine]].astype(np.float64).sum()])[0])


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


__all__ = ["init", "shutdown", "launched", "DataParallel", "Process", "all_reduce_sum", "vocab_parallel_cross_entropy"]
