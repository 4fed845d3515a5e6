"""The target-forms section, cross-entropy only:
- index: class-index targets (an int32 device tensor) instead of one-hot rows: the kernel reads no target matrix;
  its roofline counts read pred + write grad;
- in-place: logits made by an op (times 1, so each repeat has fresh logits), loss and backward with and without
  inplace_grad=True, both including that op."""
from __future__ import annotations

import math

import numpy as np

from ... import reference
from ...graph import Graph
from .losses import ce_sizes
from .table import cell, ms_or_dash, shape_text
from .timing import (ERROR_LIMIT, TORCH_CPU_LIMIT, copy_seconds, kernel_seconds, median_seconds, relative_error,
                     torch_cuda_seconds, torch_seconds)

NAME, KEY = "target_forms", "target_forms"


class TargetForms:
    """Cross-entropy at one size: probability vs class-index targets, and the in-place gradient."""

    def __init__(self, g: Graph, shape, rng):
        self.g, self.shape = g, tuple(shape)
        rows, classes = shape
        self.p = rng.standard_normal(shape, dtype=np.float32) * 2
        self.labels = rng.integers(0, classes, rows)
        one_hot = np.zeros(shape, np.float32)
        one_hot[np.arange(rows), self.labels] = 1
        self.pred = g.tensor(self.p, requires_grad=True)
        self.one_hot, self.index = g.tensor(one_hot), g.tensor(self.labels, dtype=np.int32)
        self.one = g.tensor(1.0)

    def run(self, target, inplace=None, read: bool = True):
        """Loss and gradient; with inplace (True or False), of logits = pred * 1 made by an op. Without `read`,
        only recorded (the loss's copy to the host included)."""
        self.pred.grad = None
        logits = self.pred if inplace is None else self.g.mul_scalar(self.pred, self.one)
        loss = self.g.cross_entropy_loss(logits, target, inplace_grad=bool(inplace))
        self.g.backward(loss)
        if not read:
            self.g.engine.end_of_step()
            self.loss_copy = loss.item_async()
            return None
        return loss.item(), self.pred.grad

    def torch_index_seconds(self, repeats):
        return torch_seconds("cross_entropy", self.p, self.labels, repeats)


def run(device, quick: bool = False, repeats: int = 5, seed: int = 1) -> list[dict]:
    with Graph(device) as g:  # a fresh one: an earlier section's pooled buffers measurably slowed this one
        return _rows(g, quick, repeats, seed)


def _rows(g: Graph, quick: bool, repeats: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for shape in ce_sizes(g, quick, index=True):
        case = TargetForms(g, shape, rng)
        ref_loss, ref_grad = reference.cross_entropy(case.p, case.labels)
        runs = {"probabilities": lambda: case.run(case.one_hot), "index": lambda: case.run(case.index),
                "index_copying": lambda: case.run(case.index, inplace=False),
                "index_in_place": lambda: case.run(case.index, inplace=True)}
        for name, run in runs.items():
            loss, grad = run()
            error = relative_error(loss, grad.numpy(), ref_loss, ref_grad)
            if not error <= ERROR_LIMIT:
                raise RuntimeError(f"cross_entropy_loss {shape} {name}: off by {error:.1e} relative: not timing it")
        del ref_grad, grad
        seconds = {name: median_seconds(run, repeats) for name, run in runs.items()}
        n = math.prod(shape)
        index_kernel = kernel_seconds(g.engine, lambda: case.run(case.index, read=False), repeats)
        copy = min(copy_seconds(g.engine, 2 * n * 4, repeats).values())
        rows.append({"shape": list(shape), **{f"{name}_s": t for name, t in seconds.items()},
                     "index_kernel_ms": index_kernel * 1e3 if index_kernel is not None else None,
                     "index_speedup": seconds["probabilities"] / seconds["index"],
                     # read pred + write grad, over a copy of as many bytes; from kernel time where there is one
                     "index_roofline": copy / (index_kernel if index_kernel is not None else seconds["index"]),
                     "in_place_speedup": seconds["index_copying"] / seconds["index_in_place"],
                     "torch_cpu_index_s": case.torch_index_seconds(repeats),
                     "torch_cuda_index_s": torch_cuda_seconds(case.p, case.labels, repeats),
                     "liger_index_s": torch_cuda_seconds(case.p, case.labels, repeats, liger=True)})
        case = None
    return rows



def format(rows: list[dict]) -> str:
    cuda = any(r.get("torch_cuda_index_s") is not None for r in rows)
    out = ["", "cross-entropy target forms and in-place gradient (ms):",
           f"{'shape':>16}{'one-hot':>9}{'index':>9}{'speed-up':>9}{'idx kernel':>11}{'roofline':>9}{'torch idx':>10}"
           + (f"{'cuda idx':>9}{'liger':>7}" if cuda else "") +
           f"{'op+CE':>9}{'op+CE in-place':>15}{'speed-up':>9}"]
    for r in rows:
        out.append(f"{shape_text(r['shape']):>16}{r['probabilities_s'] * 1e3:9.1f}{r['index_s'] * 1e3:9.1f}"
                   f"{r['index_speedup']:9.2f}"
                   f"{cell(r['index_kernel_ms'], 11)}"
                   f"{r['index_roofline']:9.2f}{ms_or_dash(r['torch_cpu_index_s'], 10)}"
                   + (f"{ms_or_dash(r['torch_cuda_index_s'], 9)}{ms_or_dash(r['liger_index_s'], 7)}" if cuda else "")
                   + f"{r['index_copying_s'] * 1e3:9.1f}"
                   f"{r['index_in_place_s'] * 1e3:15.1f}{r['in_place_speedup']:9.2f}")
    out.append("wall ms, loss read with item(); index: int32 class indices; idx kernel: its device time (timestamps), "
               "and roofline: read pred + write grad over a copy of as many bytes; torch idx: PyTorch CPU (left out "
               f"above {TORCH_CPU_LIMIT:,} elements); cuda idx, liger: PyTorch CUDA eager and Liger-Kernel, index "
               "targets, wall; op+CE: logits = pred * 1, then loss and backward, copying the gradient or writing it "
               "over the logits")
    return "\n".join(out)
