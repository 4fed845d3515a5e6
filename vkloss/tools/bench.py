"""`python -m vkloss.tools bench`: cross-entropy and BCE, loss plus gradient, measured in one run on one device.

For each size it prints:
- fused: the time of loss plus gradient through vkloss's fused kernel (inputs already on the device; the time of
  the op, the backward and reading the loss), and its effective bandwidth over the minimal traffic: read pred and
  target once, write the gradient once;
- roofline: that bandwidth over the device's streaming bandwidth, measured in the same run by a plain copy shader
  moving the same number of bytes;
- unfused: the same loss and gradient from separate kernels (row max, row sum of exp, row dot with the target, row
  loss, gradient; for BCE loss terms, their sum, gradient), and the fused speed-up over it;
- torch: PyTorch's CPU time for the same work, where PyTorch is installed;
- err: the largest difference of each result from a float64 numpy reference, relative to the reference's largest
  magnitude. A timing is shown only after its result checked out: a kernel cut short looks fast.
"""
from __future__ import annotations

import json
import math
import statistics
import time

import numpy as np

from .. import reference, shaders
from ..graph import Graph
from ..ops.reductions import tree_sum

COPY = {vec4: shaders.variant("bench.comp", MODE_COPY=1, VEC4=int(vec4)) for vec4 in (False, True)}
ROW_MAX = shaders.variant("bench.comp", MODE_ROW_MAX=1)
ROW_SUMEXP = shaders.variant("bench.comp", MODE_ROW_SUMEXP=1)
ROW_TDOT = shaders.variant("bench.comp", MODE_ROW_TDOT=1)
ROW_LOSS = shaders.variant("bench.comp", MODE_ROW_LOSS=1)
CE_GRAD = shaders.variant("bench.comp", MODE_CE_GRAD=1)
BCE_TERMS = shaders.variant("bench.comp", MODE_BCE_TERMS=1)
BCE_GRAD = shaders.variant("bench.comp", MODE_BCE_GRAD=1)
VARIANTS = [*COPY.values(), ROW_MAX, ROW_SUMEXP, ROW_TDOT, ROW_LOSS, CE_GRAD, BCE_TERMS, BCE_GRAD]

CE_SIZES = [(4096, 1000), (512, 32_000), (64, 128_256)]
BCE_SIZES = [(1 << 20,), (1 << 24,)]
QUICK_CE_SIZES, QUICK_BCE_SIZES = [(16, 3000)], [(50_000,)]
ERROR_LIMIT = 1e-4  # relative to the reference's largest magnitude; a result further off is not timed


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm: algorithms built, buffers pooled
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def relative_error(got_loss, got_grad, ref_loss, ref_grad) -> float:
    return max(abs(got_loss - ref_loss) / max(abs(ref_loss), 1e-30),
               float(np.abs(got_grad.reshape(ref_grad.shape) - ref_grad).max() / max(np.abs(ref_grad).max(), 1e-30)))


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

    def unfused(self):
        e, n = self.engine, self.n
        pred, target = self.pred.buffer, self.target.buffer
        loss, grad = e.alloc(1), e.alloc(n)
        if self.loss == "cross_entropy_loss":
            rows, classes = self.shape
            push = [rows, classes, 1.0 / rows]
            row_max, row_sum, row_tdot, row_loss = e.alloc(rows), e.alloc(rows), e.alloc(2 * rows), e.alloc(rows)
            e.dispatch(ROW_MAX, [pred], [row_max], push, e.grid(rows))
            e.dispatch(ROW_SUMEXP, [pred, row_max], [row_sum], push, e.grid(rows))
            e.dispatch(ROW_TDOT, [pred, target], [row_tdot], push, e.grid(rows))
            e.dispatch(ROW_LOSS, [row_max, row_sum, row_tdot], [row_loss], push, e.groups_for(rows))
            e.dispatch(CE_GRAD, [pred, target, row_max, row_sum, row_tdot], [grad], push, e.groups_for(n))
            tree_sum(e, row_loss, rows, loss, 1.0 / rows)
        else:
            terms = e.alloc(n)
            e.dispatch(BCE_TERMS, [pred, target], [terms], [n, 0, 1.0 / n], e.groups_for(n))
            tree_sum(e, terms, n, loss, 1.0 / n)
            e.dispatch(BCE_GRAD, [pred, target], [grad], [n, 0, 1.0 / n], e.groups_for(n))
        value, gradient = e.read([loss, grad])
        return float(value[0]), gradient

    def copy_seconds(self, repeats) -> dict:
        """The device's streaming bandwidth as times: a scalar and a vec4 copy shader that read and write, together,
        the same number of bytes as the minimal traffic. The roofline uses the faster."""
        e = self.engine
        floats = -(-self.minimal_bytes // 32) * 4  # read this many floats and write as many (a multiple of 4)
        data = np.arange(floats, dtype=np.float32)
        src, dst = e.upload(data), e.alloc(floats)
        timings = []
        for vec4, count in ((False, floats), (True, floats // 4)):
            def copy():
                e.dispatch(COPY[vec4], [src], [dst], [count, 0, 0.0], e.groups_for(count))
                e.flush()

            copy()
            if not np.array_equal(e.read([dst])[0], data):  # every element: a copy cut short looks fast
                raise RuntimeError("the copy shader did not copy every element")
            timings.append(median_seconds(copy, repeats))
        return {"scalar": timings[0], "vec4": timings[1]}

    def torch_seconds(self, repeats):
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            return None
        fn = F.cross_entropy if self.loss == "cross_entropy_loss" else F.binary_cross_entropy
        p, t = torch.tensor(self.p, requires_grad=True), torch.tensor(self.t)

        def run():
            p.grad = None
            fn(p, t).backward()

        return median_seconds(run, repeats)


def bench(g: Graph, quick: bool = False, repeats: int = 5, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    sizes = [("cross_entropy_loss", s) for s in (QUICK_CE_SIZES if quick else CE_SIZES)]
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
        fused = median_seconds(case.fused, repeats)
        unfused = median_seconds(case.unfused, repeats)
        copies = case.copy_seconds(repeats)
        copy = min(copies.values())
        torch_s = case.torch_seconds(repeats)
        gbps = case.minimal_bytes / fused / 1e9
        copy_gbps = case.minimal_bytes / copy / 1e9
        rows.append({"loss": loss, "shape": list(shape), "minimal_bytes": case.minimal_bytes,
                     "fused_s": fused, "fused_GBps": gbps, "copy_s": copy, "copy_GBps": copy_gbps,
                     "roofline": gbps / copy_gbps, "copy_scalar_s": copies["scalar"], "copy_vec4_s": copies["vec4"],
                     "roofline_vs_scalar_copy": copies["scalar"] / fused, "unfused_s": unfused, "speedup_over_unfused": unfused / fused,
                     "torch_cpu_s": torch_s, "rel_error_fused": errors["fused"], "rel_error_unfused": errors["unfused"]})
        del case
    return rows


def format_rows(device: str, rows: list[dict]) -> str:
    out = [f"device: {device}",
           f"{'loss':<19}{'shape':>16}{'fused ms':>10}{'GB/s':>7}{'copy GB/s':>10}{'roofline':>9}"
           f"{'unfused ms':>11}{'speed-up':>9}{'torch ms':>9}{'err':>9}"]
    for r in rows:
        torch_ms = f"{r['torch_cpu_s'] * 1e3:9.1f}" if r["torch_cpu_s"] is not None else f"{'-':>9}"
        out.append(f"{r['loss']:<19}{' x '.join(map(str, r['shape'])):>16}{r['fused_s'] * 1e3:10.1f}"
                   f"{r['fused_GBps']:7.2f}{r['copy_GBps']:10.2f}{r['roofline']:9.2f}{r['unfused_s'] * 1e3:11.1f}"
                   f"{r['speedup_over_unfused']:9.2f}{torch_ms}{r['rel_error_fused']:9.1e}")
    out.append("fused: loss + gradient; GB/s over read pred + read target + write grad; roofline: that over a copy "
               "shader's GB/s on the same bytes; speed-up: unfused time / fused time; err: vs float64, relative")
    return "\n".join(out)


def main(args) -> int:
    with Graph(args.device) as g:
        rows = bench(g, quick=args.quick, repeats=args.repeats)
        print(format_rows(str(g.device), rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": str(g.device), "rows": rows}, f, indent=2)
            print(f"wrote {args.json}")
    return 0
