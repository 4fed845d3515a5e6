"""The Liger options section: cross_entropy_loss (index targets, loss and backward) with Liger-Kernel's options,
softcap, the z-loss (lse_square_scale) and return_z_loss, against the plain loss at the same size: device time by
timestamps, and the cost of each option over plain. Each result is checked against float64
(reference.liger_cross_entropy) before it is timed."""
from __future__ import annotations

import numpy as np

from ... import reference
from ...graph import Graph
from .losses import CE_SIZES, QUICK_CE_SIZES
from .table import cell, shape_text
from .timing import ERROR_LIMIT, kernel_seconds, median_seconds, relative_error

NAME, KEY = "liger_options", "liger_options"
OPTIONS = {"plain": {}, "softcap": {"softcap": 30.0}, "z-loss": {"lse_square_scale": 1e-4},
           "both, return_z_loss": {"softcap": 30.0, "lse_square_scale": 1e-4, "return_z_loss": True}}


def run(device, quick: bool = False, repeats: int = 5, seed: int = 8) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    with Graph(device) as g:
        for shape in QUICK_CE_SIZES if quick else CE_SIZES[:2]:
            x = (rng.standard_normal(shape) * 4).astype(np.float32)
            labels = rng.integers(0, shape[1], shape[0])
            pred, target = g.tensor(x, requires_grad=True), g.tensor(labels, dtype=np.int32)
            times = {name: _timed(g, pred, target, x, labels, options, repeats) for name, options in OPTIONS.items()}
            for name, (kernel, wall, error) in times.items():
                plain = times["plain"][0 if kernel is not None else 1]
                rows.append({"shape": list(shape), "options": name, "rel_error": error,
                             "kernel_ms": kernel * 1e3 if kernel is not None else None, "wall_ms": wall * 1e3,
                             "over_plain": (kernel if kernel is not None else wall) / plain})
    return rows


def _timed(g, pred, target, x, labels, options, repeats):
    """(kernel seconds or None, wall seconds, error against float64) of loss + backward with these options."""
    def step(read=True):
        pred.grad = None
        out = g.cross_entropy_loss(pred, target, **options)
        loss = out[0] if isinstance(out, tuple) else out
        g.backward(loss)
        if read:
            return loss.item(), pred.grad
        g.engine.end_of_step()
        loss.item_async()

    got_loss, got_grad = step()
    want_loss, _, want_grad = reference.liger_cross_entropy(x, labels, options.get("lse_square_scale", 0.0),
                                                            options.get("softcap"))
    error = relative_error(got_loss, got_grad.numpy(), want_loss, want_grad)
    if not error <= ERROR_LIMIT:
        raise RuntimeError(f"cross_entropy_loss {x.shape} {options}: off by {error:.1e} relative: not timing it")
    return kernel_seconds(g.engine, lambda: step(read=False), repeats), median_seconds(step, repeats), error


def format(rows: list[dict]) -> str:
    out = ["", "cross-entropy with Liger-Kernel's options (index targets, loss + backward):",
           f"{'shape':>16}  {'options':<22}{'kernel ms':>10}{'wall ms':>9}{'x plain':>8}{'err':>9}"]
    for r in rows:
        out.append(f"{shape_text(r['shape']):>16}  {r['options']:<22}{cell(r['kernel_ms'], 10)}{r['wall_ms']:9.2f}"
                   f"{r['over_plain']:8.2f}{r['rel_error']:9.1e}")
    out.append("softcap 30, lse_square_scale 1e-4; x plain: the time over the plain loss's at the same size (kernel "
               "time where there are timestamps); err: against float64 (reference.liger_cross_entropy)")
    return "\n".join(out)
