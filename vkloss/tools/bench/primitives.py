"""The primitives section: neg, add (also a bias row), mul_scalar, mul_rows, sigmoid, relu_backward, mean_all,
expand, and mse_loss with its backward, on one matrix: kernel time and the roofline over the bytes each must move."""
from __future__ import annotations

import numpy as np

from ... import reference
from ...graph import Graph
from .table import cell, shape_text
from .timing import ERROR_LIMIT, copy_seconds, kernel_seconds, median_seconds

NAME, KEY = "primitives", "primitives"
PRIMITIVE_SHAPE, QUICK_PRIMITIVE_SHAPE = (4096, 4096), (64, 1000)


def run(device, quick: bool = False, repeats: int = 5, seed: int = 6) -> list[dict]:
    with Graph(device) as g:
        return _rows(g, quick, repeats, seed)


def _rows(g: Graph, quick: bool, repeats: int, seed: int) -> list[dict]:
    """The elementwise and reduction primitives, and mse_loss made of them, on one [rows, cols] matrix: each op's
    kernel time, the bytes it must move (its operands read once, its result written once), and the roofline over a
    copy of as many bytes. Each result is checked against float64 first."""
    rng = np.random.default_rng(seed)
    rows, cols = QUICK_PRIMITIVE_SHAPE if quick else PRIMITIVE_SHAPE
    n = rows * cols
    a, b = (rng.standard_normal((rows, cols), dtype=np.float32) for _ in range(2))
    bias, scales = rng.standard_normal(cols, dtype=np.float32), rng.standard_normal(rows, dtype=np.float32)
    x, y, row, per_row, half = (g.tensor(v) for v in (a, b, bias, scales, np.float32(0.5)))
    pred = g.tensor(a, requires_grad=True)
    x64, y64 = a.astype(np.float64), b.astype(np.float64)

    def mse_step():
        pred.grad = None
        loss = g.mse_loss(pred, y)
        g.backward(loss)
        return loss, pred.grad

    cases = {  # name: (the op's results, their float64 references, float32 values it reads and writes)
        "neg": (lambda: g.neg(x), lambda: -x64, 2 * n),
        "add": (lambda: g.add(x, y), lambda: x64 + y64, 3 * n),
        "add (bias row)": (lambda: g.add(x, row), lambda: x64 + bias, 2 * n + cols),
        "mul_scalar": (lambda: g.mul_scalar(x, half), lambda: x64 * 0.5, 2 * n + 1),
        "mul_rows": (lambda: g.ops.mul_rows(x, per_row), lambda: x64 * scales[:, None].astype(np.float64),
                     2 * n + rows),
        "sigmoid": (lambda: g.sigmoid(x), lambda: 1 / (1 + np.exp(-x64)), 2 * n),
        "relu_backward": (lambda: g.ops.relu_backward(y, x), lambda: np.where(x64 > 0, y64, 0.0), 3 * n),
        "mean_all": (lambda: g.mean_all(x), lambda: np.array([x64.mean()]), n),
        "expand": (lambda: g.expand(half, shape=(rows, cols)), lambda: np.full((rows, cols), 0.5), n + 1),
        "mse_loss + backward": (mse_step, lambda: reference.loss_and_output_grad("mse_loss", x64, y64),
                                3 * n),  # read pred and target, write the gradient: what a fused kernel would move
    }
    results = []
    for name, (run, reference_of, values) in cases.items():
        got, want = run(), reference_of()
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        error = max(float(np.abs(t.numpy().reshape(w.shape) - w).max() / max(np.abs(w).max(), 1e-30))
                    for t, w in zip(got, want))
        if not error <= ERROR_LIMIT:
            raise RuntimeError(f"{name} {rows} x {cols}: off by {error:.1e} relative: not timing it")
        held = {}
        kernel = kernel_seconds(g.engine, lambda: held.update(out=run()), repeats)
        wall = median_seconds(lambda: (held.update(out=run()), g.engine.flush()), repeats)
        best_copy = min(copy_seconds(g.engine, values * 4, repeats).values())
        results.append({"op": name, "shape": [rows, cols], "bytes": values * 4, "rel_error": error,
                        "kernel_ms": kernel * 1e3 if kernel is not None else None, "wall_ms": wall * 1e3,
                        "roofline": best_copy / (kernel if kernel is not None else wall)})
        held.clear()
    return results


def format(rows: list[dict]) -> str:
    out = ["", f"primitives on a {shape_text(rows[0]['shape'])} matrix (float32):",
           f"{'op':<22}{'kernel ms':>10}{'wall ms':>9}{'MB moved':>9}{'GB/s':>8}{'roofline':>9}{'err':>9}"]
    for r in rows:
        seconds = (r["kernel_ms"] if r["kernel_ms"] is not None else r["wall_ms"]) / 1e3
        out.append(f"{r['op']:<22}{cell(r['kernel_ms'], 10)}{r['wall_ms']:9.2f}{r['bytes'] / 1e6:9.1f}"
                   f"{r['bytes'] / seconds / 1e9:8.2f}{r['roofline']:9.2f}{r['rel_error']:9.1e}")
    out.append("kernel: device time by Vulkan timestamps; wall: recorded, submitted and waited for (no read); "
               "MB moved: "
               "operands read once and the result written once (mse_loss: pred and target read, the gradient "
               "written, as a fused kernel would); roofline: a copy of as many bytes over the kernel time")
    return "\n".join(out)
