"""The losses section: cross-entropy and BCE, loss plus gradient, at each size.

- kernel: the device's time for loss plus gradient through vkloss's fused kernels (the op, the backward and the
  copy of the loss to the host), from Vulkan timestamps around the submission; wall: the same step as a training
  loop runs it, loss read with item(); host: the difference;
- the effective bandwidth over the minimal traffic (read pred and target once, write the gradient once), and the
  roofline: that over the device's streaming bandwidth on the same bytes (timing.copy_seconds);
- unfused: the same loss and gradient from separate kernels (row max, row sum of exp, row dot with the target, row
  loss, gradient; for BCE loss terms, their sum, gradient), and the fused speed-up over it;
- torch: PyTorch's CPU time, and with CUDA PyTorch CUDA eager and Liger-Kernel's fused cross-entropy;
- err: the largest difference from float64, relative. A timing is shown only after its result checked out.
On GPUs it adds the language-model sizes past lavapipe's 128 MiB binding limit.
"""
from __future__ import annotations

import math

import numpy as np

from ... import reference
from ...graph import Graph
from ...kernels import dispatch
from ...ops.reductions import tree_sum
from ...registry import KernelContext
from .table import cell, shape_text
from .timing import (BENCH, ERROR_LIMIT, copy_seconds, kernel_seconds, median_seconds, relative_error,
                     torch_cuda_seconds, torch_seconds)

NAME, KEY = "losses", "rows"
CE_SIZES = [(4096, 1000), (512, 32_000), (64, 128_256)]
GPU_CE_SIZES = [(8192, 32_768)]  # and, for index targets, GPU_INDEX_SIZES: past lavapipe's 128 MiB binding limit
GPU_INDEX_SIZES = [(8192, 32_768), (16_384, 32_768)]
BCE_SIZES = [(1 << 20,), (1 << 24,)]
QUICK_CE_SIZES, QUICK_BCE_SIZES = [(16, 3000)], [(50_000,)]


def ce_sizes(g: Graph, quick: bool, index: bool = False) -> list:
    """The cross-entropy sizes: small ones on lavapipe or with --quick, and the language-model sizes on GPUs."""
    if quick:
        return QUICK_CE_SIZES
    return CE_SIZES + ((GPU_INDEX_SIZES if index else GPU_CE_SIZES) if g.device.type != "cpu" else [])



class Case:
    """One loss at one size: the device tensors and the three ways to compute loss and gradient."""

    def __init__(self, g: Graph, loss: str, shape, rng):
        self.g, self.engine, self.loss, self.shape = g, g.engine, loss, tuple(shape)
        self.n = math.prod(shape)
        if loss == "cross_entropy_loss":
            self.p = rng.standard_normal(shape, dtype=np.float32) * 2
            self.t = np.zeros(shape, np.float32)
            self.t[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] = 1
            self.reference = reference.cross_entropy
        else:
            self.p = rng.uniform(0.01, 0.99, shape).astype(np.float32)
            self.t = rng.random(shape, dtype=np.float32)
            self.reference = reference.binary_cross_entropy
        self.pred = g.tensor(self.p, requires_grad=True)
        self.target = g.tensor(self.t)
        self.minimal_bytes = 3 * self.n * 4  # read pred, read target, write grad

    def fused(self):
        self.pred.grad = None
        loss = getattr(self.g, self.loss)(self.pred, self.target)
        self.g.backward(loss)
        return loss.item(), self.pred.grad

    def record_fused(self):
        """The fused step recorded, its loss's copy to the host included, nothing submitted."""
        self.pred.grad = None
        loss = getattr(self.g, self.loss)(self.pred, self.target)
        self.g.backward(loss)
        self.g.engine.end_of_step()
        self.loss_copy = loss.item_async()

    def unfused(self, read: bool = True):
        e, n = self.engine, self.n
        pred, target = self.pred.buffer, self.target.buffer
        loss, grad = e.alloc(1), e.alloc(n)
        if self.loss == "cross_entropy_loss":
            rows, classes = self.shape
            push = dict(rows=rows, classes=classes, inv_rows=1.0 / rows)
            row_max, row_sum, row_tdot, row_loss = e.alloc(rows), e.alloc(rows), e.alloc(2 * rows), e.alloc(rows)
            # the fused kernel's launch: a fair comparison
            rowwise = dict(grid=e.launch.grid(rows), workgroup=e.launch.row_workgroup(classes))
            dispatch(e, BENCH.variant(mode="ROW_MAX"), **rowwise, push=push, pred=pred, row_max=row_max)
            dispatch(e, BENCH.variant(mode="ROW_SUMEXP"), **rowwise, push=push, pred=pred, row_max=row_max,
                     row_sum=row_sum)
            dispatch(e, BENCH.variant(mode="ROW_TDOT"), **rowwise, push=push, pred=pred, target=target,
                     row_tdot=row_tdot)
            dispatch(e, BENCH.variant(mode="ROW_LOSS"), e.launch.groups_for(rows), push=push, row_max=row_max,
                     row_sum=row_sum, row_tdot=row_tdot, row_loss=row_loss)
            dispatch(e, BENCH.variant(mode="CE_GRAD"), e.launch.groups_for(n), push=push, pred=pred, target=target,
                     row_max=row_max, row_sum=row_sum, row_tdot=row_tdot, grad=grad)
            tree_sum(KernelContext(e), row_loss, rows, loss, 1.0 / rows)
        else:
            terms = e.alloc(n)
            push = dict(rows=n, inv_rows=1.0 / n)
            dispatch(e, BENCH.variant(mode="BCE_TERMS"), e.launch.groups_for(n), push=push, pred=pred, labels=target,
                     result=terms)
            tree_sum(KernelContext(e), terms, n, loss, 1.0 / n)
            dispatch(e, BENCH.variant(mode="BCE_GRAD"), e.launch.groups_for(n), push=push, pred=pred, labels=target,
                     result=grad)
        if not read:
            return None
        value, gradient = e.read([loss, grad])
        return float(value[0]), gradient

    def torch_seconds(self, repeats):
        return torch_seconds("cross_entropy" if self.loss == "cross_entropy_loss" else "binary_cross_entropy",
                             self.p, self.t, repeats)

    def torch_cuda(self, repeats) -> dict:
        """PyTorch CUDA eager (probability and index targets) and Liger (index targets), cross-entropy only."""
        if self.loss != "cross_entropy_loss":
            return {}
        labels = self.t.argmax(axis=1)
        return {"torch_cuda_s": torch_cuda_seconds(self.p, self.t, repeats),
                "torch_cuda_index_s": torch_cuda_seconds(self.p, labels, repeats),
                "liger_index_s": torch_cuda_seconds(self.p, labels, repeats, liger=True)}


def run(device, quick: bool = False, repeats: int = 5, seed: int = 0) -> list[dict]:
    with Graph(device) as g:
        return _rows(g, quick, repeats, seed)


def _rows(g: Graph, quick: bool, repeats: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    sizes = [("cross_entropy_loss", s) for s in ce_sizes(g, quick)]
    sizes += [("bce_loss", s) for s in (QUICK_BCE_SIZES if quick else BCE_SIZES)]
    rows = []
    for loss, shape in sizes:
        case = Case(g, loss, shape, rng)
        ref_loss, ref_grad = case.reference(case.p, case.t)
        fused_loss, fused_grad = case.fused()
        unfused_loss, unfused_grad = case.unfused()
        errors = {"fused": relative_error(fused_loss, fused_grad.numpy(), ref_loss, ref_grad),
                  "unfused": relative_error(unfused_loss, unfused_grad, ref_loss, ref_grad)}
        del ref_grad, fused_grad, unfused_grad
        bad = [k for k, v in errors.items() if not v <= ERROR_LIMIT]
        if bad:
            raise RuntimeError(f"{loss} {shape}: {', '.join(bad)} result off by {errors} relative: not timing it")
        wall = median_seconds(case.fused, repeats)
        kernel = kernel_seconds(g.engine, case.record_fused, repeats)
        timed = kernel is not None
        fused = kernel if timed else wall
        unfused = (kernel_seconds(g.engine, lambda: case.unfused(read=False), repeats) if timed else
                   median_seconds(case.unfused, repeats))
        copies = copy_seconds(g.engine, case.minimal_bytes, repeats)
        copy = min(copies.values())
        torch_s = case.torch_seconds(repeats)
        gbps = case.minimal_bytes / fused / 1e9
        copy_gbps = case.minimal_bytes / copy / 1e9
        rows.append({"loss": loss, "shape": list(shape), "minimal_bytes": case.minimal_bytes, "timestamps": timed,
                     "kernel_ms": kernel * 1e3 if timed else None, "wall_ms": wall * 1e3,
                     "host_ms": (wall - kernel) * 1e3 if timed else None,
                     "GBs": gbps, "copy_GBs": copy_gbps, "roofline": gbps / copy_gbps,
                     **{f"copy_{name}_ms": s * 1e3 for name, s in copies.items()},
                     "unfused_ms": unfused * 1e3, "speedup_over_unfused": unfused / fused,
                     "torch_cpu_ms": torch_s * 1e3 if torch_s is not None else None,
                     **{k.replace("_s", "_ms"): (v * 1e3 if v is not None else None)
                        for k, v in case.torch_cuda(repeats).items()},
                     "rel_error_fused": errors["fused"], "rel_error_unfused": errors["unfused"]})
        case = None  # its device buffers go before the next size's come
    return rows



def format(rows: list[dict]) -> str:
    cuda = any(r.get("torch_cuda_ms") is not None for r in rows)
    out = [f"{'loss':<19}{'shape':>16}{'kernel ms':>10}{'wall ms':>9}{'host ms':>8}{'GB/s':>8}{'copy GB/s':>10}"
           f"{'roofline':>9}{'unfused ms':>11}{'speed-up':>9}{'torch ms':>9}"
           + (f"{'cuda ms':>8}{'cuda idx':>9}{'liger':>7}" if cuda else "") + f"{'err':>9}"]
    for r in rows:
        out.append(f"{r['loss']:<19}{shape_text(r['shape']):>16}{cell(r['kernel_ms'], 10)}{cell(r['wall_ms'], 9)}"
                   f"{cell(r['host_ms'], 8)}{r['GBs']:8.2f}{r['copy_GBs']:10.2f}{r['roofline']:9.2f}"
                   f"{r['unfused_ms']:11.2f}{r['speedup_over_unfused']:9.2f}{cell(r['torch_cpu_ms'], 9)}"
                   + (f"{cell(r.get('torch_cuda_ms'), 8)}{cell(r.get('torch_cuda_index_ms'), 9)}"
                      f"{cell(r.get('liger_index_ms'), 7)}" if cuda else "") + f"{r['rel_error_fused']:9.1e}")
    timed = all(r["timestamps"] for r in rows)
    out.append("kernel: device time of loss + gradient (+ the loss's copy to the host) by Vulkan timestamps; wall: the "
               "step with item(); host: wall - kernel; GB/s over read pred + read target + write grad, from kernel "
               "time; roofline: that over the best of the device's buffer copy and the copy shaders on the same "
               "bytes; speed-up: unfused / fused kernel time; err: vs float64, relative"
               + ("" if timed else ". This device has no compute timestamps: GB/s, roofline and speed-up are "
                  "from wall times"))
    return "\n".join(out)
