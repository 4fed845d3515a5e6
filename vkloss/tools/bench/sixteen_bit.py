"""The 16-bit section: cross-entropy (index targets) and BCE with logits on float32, float16 and bfloat16 tensors,
with the kernel time and the roofline over the bytes each dtype moves."""
from __future__ import annotations

import math

import numpy as np

from ... import reference
from ...graph import Graph
from .losses import BCE_SIZES, CE_SIZES, QUICK_BCE_SIZES, QUICK_CE_SIZES
from .table import cell, shape_text
from .timing import copy_seconds, kernel_seconds, median_seconds

NAME, KEY = "sixteen_bit", "sixteen_bit"
SIXTEEN_BIT_DTYPES = (np.float32, np.float16, "bfloat16")


def run(device, quick: bool = False, repeats: int = 5, seed: int = 5) -> list[dict]:
    with Graph(device) as g:
        return _rows(g, quick, repeats, seed)


def _rows(g: Graph, quick: bool, repeats: int, seed: int) -> list[dict]:
    """Cross-entropy (index targets) and BCE with logits on float32, float16 and bfloat16 inputs: kernel time, and
    the roofline over the bytes each moves (read the logits, and BCE's labels, write the gradient, in their dtype)."""
    rng = np.random.default_rng(seed)
    rows = []
    cases = [("cross_entropy_loss", s) for s in (QUICK_CE_SIZES if quick else CE_SIZES)]
    cases += [("bce_with_logits_loss", s) for s in (QUICK_BCE_SIZES if quick else BCE_SIZES)]
    for loss_name, shape in cases:
        n = math.prod(shape)
        x = rng.standard_normal(shape, dtype=np.float32) * 2
        ce = loss_name == "cross_entropy_loss"
        labels = rng.integers(0, shape[-1], shape[0]) if ce else rng.uniform(0, 1, shape).astype(np.float32)
        for dtype in SIXTEEN_BIT_DTYPES:
            width = 4 if dtype == np.float32 else 2
            pred = g.tensor(x, dtype=dtype, requires_grad=True)
            exact = pred.numpy().astype(np.float64)
            target = g.tensor(labels, dtype=np.int32) if ce else g.tensor(labels, dtype=dtype)

            def step(read=True):
                pred.grad = None
                loss = getattr(g, loss_name)(pred, target)
                g.backward(loss)
                if read:
                    return loss.item()
                g.engine.end_of_step()
                loss.item_async()

            got = step()
            ref = (reference.cross_entropy(exact, labels)[0] if ce else
                   reference.binary_cross_entropy_with_logits(exact, target.numpy())[0])
            error = abs(got - ref) / abs(ref)
            if not error <= 1e-4:
                raise RuntimeError(f"{loss_name} {shape} {dtype}: loss off by {error:.1e}: not timing it")
            moved = n * width * (2 if ce else 3)  # read pred (and labels), write the gradient
            kernel = kernel_seconds(g.engine, lambda: step(read=False), repeats)
            wall = median_seconds(step, repeats)
            best_copy = min(copy_seconds(g.engine, moved, repeats).values())
            rows.append({"loss": loss_name, "shape": list(shape), "dtype": str(np.dtype(dtype)) if dtype != "bfloat16"
                         else "bfloat16", "loss_error": error, "bytes": moved, "wall_ms": wall * 1e3,
                         "kernel_ms": kernel * 1e3 if kernel is not None else None,
                         "roofline": best_copy / (kernel if kernel is not None else wall)})
            pred = target = None
    return rows


def format(rows: list[dict]) -> str:
    out = ["", "16-bit inputs (cross-entropy with index targets; BCE with logits, labels in the same dtype):",
           f"{'loss':<22}{'shape':>16}{'dtype':>10}{'kernel ms':>10}{'wall ms':>9}{'MB moved':>9}{'roofline':>9}"
           f"{'loss err':>9}"]
    for r in rows:
        out.append(f"{r['loss']:<22}{shape_text(r['shape']):>16}{r['dtype']:>10}{cell(r['kernel_ms'], 10)}"
                   f"{r['wall_ms']:9.2f}{r['bytes'] / 1e6:9.1f}{r['roofline']:9.2f}{r['loss_error']:9.1e}")
    out.append("MB moved: read the logits (and BCE's labels) and write the gradient once, in their dtype; roofline: a "
               "copy of as many bytes over the kernel time; loss err: against float64 on the same 16-bit values")
    return "\n".join(out)
