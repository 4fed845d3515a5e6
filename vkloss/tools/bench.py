"""`python -m vkloss.tools bench`: cross-entropy and BCE, loss plus gradient, measured in one run on one device.

For each size it prints:
- kernel: the device's time for loss plus gradient through vkloss's fused kernels (the op, the backward and the
  copy of the loss to the host), from Vulkan timestamps around the submission; wall: the same step as a training
  loop runs it (recorded, or replayed, submitted, loss read with item()), and host: the difference, the engine's
  overhead; the effective bandwidth over the minimal traffic (read pred and target once, write the gradient once)
  from the kernel time;
- roofline: that bandwidth over the device's streaming bandwidth on the same bytes, measured in the same run as the
  best of the device's own buffer copy (vkCmdCopyBuffer) and a scalar, a vec4 and (CPU devices) an eight-float copy
  shader, all timed by timestamps. Where the device cannot time compute work, wall times stand in and the table says
  so;
- unfused: the same loss and gradient from separate kernels (row max, row sum of exp, row dot with the target, row
  loss, gradient; for BCE loss terms, their sum, gradient), and the fused speed-up over it (kernel times);
- torch: PyTorch's CPU time for the same work, where PyTorch is installed; with CUDA, PyTorch CUDA eager for
  probability and index targets, and Liger-Kernel's fused cross-entropy where it is installed;
- err: the largest difference of each result from a float64 numpy reference, relative to the reference's largest
  magnitude. A timing is shown only after its result checked out: a kernel cut short looks fast.

Then the primitives (primitives): neg, add (also a bias row), mul_scalar, mul_rows, sigmoid, relu_backward, mean_all,
expand, and mse_loss with its backward, on one matrix: kernel time and the roofline over the bytes each must move.

Then, for cross-entropy, the target forms and the in-place mode:
- index: class-index targets (an int32 device tensor) instead of one-hot rows: the kernel reads no target matrix;
  its roofline counts read pred + write grad;
- in-place: logits made by an op (times 1, so each repeat has fresh logits), loss and backward with and without
  inplace_grad=True, both including that op;
- memory: the peak device memory held by the engine (in use and pooled) over a last layer's forward (matmul), the
  loss and backward, with and without inplace_grad, on a fresh Graph each, at 1,024 and 4,096 x 32,000.

Then 16-bit inputs: cross-entropy (index targets) and BCE with logits on float32, float16 and bfloat16 tensors, with
the kernel time and the roofline over the bytes each dtype moves.

Last, the engine around the kernels (wall-clock, so host overhead included):
- graphs: Graph make, one op and a read, close, repeated: time per cycle, and how many device contexts the process
  made (one per device, however many Graphs);
- a cross-entropy step (index targets, loss and backward) that reads its loss with item() every step, against the
  same step reading each loss with item_async() one step later; and the submissions and replays per step;
- churn: logits = x * 1, cross-entropy with index targets and backward at language-model-like sizes (three logits-
  sized buffers released every step): time per step and what was created after the second step.

And linear_cross_entropy at a language model's last layer (bench_linear).

On GPUs the cross-entropy tables add the language-model sizes past lavapipe's 128 MiB binding limit (GPU_CE_SIZES,
GPU_INDEX_SIZES). Each part is a section (SECTIONS, `--sections`), printed when it ends; with `--json` the file is
written again after each, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import json
import math
import statistics
import time

import numpy as np

from .. import reference
from ..launch import ceil_div
from ..graph import Graph
from ..kernels import ACCESS_SWITCHES, Kernel, access_allowed, access_switches, dispatch
from ..ops.reductions import tree_sum
from ..registry import KernelContext
from .bench_host import bench_host, format_host

_BENCH_BINDINGS = {
    "COPY": (["src"], ["dst"]), "ROW_MAX": (["pred"], ["row_max"]), "ROW_SUMEXP": (["pred", "row_max"], ["row_sum"]),
    "ROW_TDOT": (["pred", "target"], ["row_tdot"]), "ROW_LOSS": (["row_max", "row_sum", "row_tdot"], ["row_loss"]),
    "CE_GRAD": (["pred", "target", "row_max", "row_sum", "row_tdot"], ["grad"]),
    "BCE_TERMS": (["pred", "labels"], ["result"]), "BCE_GRAD": (["pred", "labels"], ["result"]),
}
BENCH = Kernel(  # baselines, not ops: a copy shader, and CE and BCE as one kernel per step
    "bench.comp", push="uint rows, uint classes = 0, float inv_rows = 0.0",
    switches={"mode": tuple(_BENCH_BINDINGS), **ACCESS_SWITCHES},
    allowed=lambda mode, vec4, wide: (mode == "COPY" or not vec4) and access_allowed(vec4, wide),
    bindings=lambda mode, vec4, wide: _BENCH_BINDINGS[mode],
)

CE_SIZES = [(4096, 1000), (512, 32_000), (64, 128_256)]
GPU_CE_SIZES = [(8192, 32_768)]  # and, for index targets, GPU_INDEX_SIZES: past lavapipe's 128 MiB binding limit
GPU_INDEX_SIZES = [(8192, 32_768), (16_384, 32_768)]
BCE_SIZES = [(1 << 20,), (1 << 24,)]
QUICK_CE_SIZES, QUICK_BCE_SIZES = [(16, 3000)], [(50_000,)]
ERROR_LIMIT = 1e-4  # relative to the reference's largest magnitude; a result further off is not timed
TORCH_CPU_LIMIT = 1 << 25  # elements above which PyTorch's CPU time is left out: seconds a run, and beside a GPU
SECTIONS = ("losses", "primitives", "target_forms", "sixteen_bit", "memory", "engine", "host", "linear")


def ce_sizes(g: Graph, quick: bool, index: bool = False) -> list:
    """The cross-entropy sizes: small ones on lavapipe or with --quick, and the language-model sizes on GPUs."""
    if quick:
        return QUICK_CE_SIZES
    return CE_SIZES + ((GPU_INDEX_SIZES if index else GPU_CE_SIZES) if g.device.type != "cpu" else [])


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm: algorithms built, buffers pooled
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


WARM_SECONDS = 0.05  # untimed runs before a kernel is timed, at least this long (and at least one)


def kernel_seconds(engine, record, repeats: int) -> float | None:
    """The device's time for what `record()` records, by Vulkan timestamps (median of `repeats`); None where the
    device cannot time compute work. Untimed runs for WARM_SECONDS come first: on the H100 one float32 step timed
    right after host work (the float64 check) took 0.51 ms, and 0.18 ms timed after wall-clock runs."""
    start = time.perf_counter()
    for _ in range(1000):
        record()
        engine.flush()
        if time.perf_counter() - start >= WARM_SECONDS:
            break
    times = []
    for _ in range(repeats):
        record()
        times.append(engine.flush(timed=True))
    return None if None in times else statistics.median(times)


def torch_cuda_seconds(pred, target, repeats, liger: bool = False):
    """Cross-entropy forward and backward through PyTorch CUDA eager (or Liger-Kernel's fused kernel), the loss
    read with item() as the wall time of a training step: None without CUDA (or Liger)."""
    try:
        import torch
        import torch.nn.functional as F
        if not torch.cuda.is_available():
            return None
        if liger:
            from liger_kernel.transformers import LigerCrossEntropyLoss
            function = LigerCrossEntropyLoss()
        else:
            function = F.cross_entropy
    except ImportError:
        return None
    p = torch.tensor(pred, device="cuda", requires_grad=True)
    t = torch.tensor(target, device="cuda")

    def run():
        p.grad = None
        loss = function(p, t)
        loss.backward()
        loss.item()

    return median_seconds(run, repeats)


def relative_error(got_loss, got_grad, ref_loss, ref_grad) -> float:
    return max(abs(got_loss - ref_loss) / max(abs(ref_loss), 1e-30),
               float(np.abs(got_grad.reshape(ref_grad.shape) - ref_grad).max() / max(np.abs(ref_grad).max(), 1e-30)))


def torch_seconds(function: str, pred, target, repeats):
    """PyTorch's CPU time for torch.nn.functional.<function>(pred, target) and its backward; None without PyTorch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    if pred.size > TORCH_CPU_LIMIT:
        return None
    fn = getattr(F, function)
    p, t = torch.tensor(pred, requires_grad=True), torch.tensor(target)

    def run():
        p.grad = None
        fn(p, t).backward()

    return median_seconds(run, repeats)


def shape_text(shape) -> str:
    return " x ".join(map(str, shape))


def cell(value, width: int, digits: int = 2) -> str:
    """A number right-aligned in `width`, or '-' where there is none (no timestamps, no PyTorch)."""
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def ms_or_dash(seconds, width: int) -> str:
    """Milliseconds right-aligned in `width`, or '-' where there is no time (PyTorch not installed)."""
    return f"{seconds * 1e3:{width}.1f}" if seconds is not None else f"{'-':>{width}}"


def copy_seconds(e, bytes_moved: int, repeats: int) -> dict:
    """The device's streaming bandwidth as times for reading and writing, together, `bytes_moved`: its own buffer
    copy, a scalar and a vec4 copy shader, and where the kernels read eight floats an access (LaunchPolicy.wide_loads), an
    eight-float one. By timestamps where the device has them, else wall-clock. The roofline uses the fastest."""
    floats = ceil_div(bytes_moved, 64) * 8  # read this many floats, write as many (8 | n)
    data = np.arange(floats, dtype=np.float32)
    src, dst = e.upload(data), e.alloc(floats)
    timed = e.device.timestamp_period_ns > 0
    timings = {}
    ways = {"device_copy": lambda: e.copy(src, dst)}
    widths = {"scalar": 1, "vec4": 4, **({"wide": 8} if e.launch.wide_loads() else {})}  # wide: as the kernels read there
    for name, width in widths.items():
        ways[name] = (lambda width=width: dispatch(
            e, BENCH.variant(mode="COPY", **access_switches(width)), e.launch.groups_for(floats // width),
            push=dict(rows=floats // width), src=src, dst=dst))
    for name, record in ways.items():
        e.upload_into(dst, np.zeros(floats, np.float32))  # each way proves itself from a blank target
        record()
        if not np.array_equal(e.read([dst])[0], data):  # every element: a copy cut short looks fast
            raise RuntimeError(f"the {name} copy did not copy every element")
        timings[name] = (kernel_seconds(e, record, repeats) if timed else
                         median_seconds(lambda: (record(), e.flush()), repeats))
    return timings


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
            rowwise = dict(grid=e.launch.grid(rows), workgroup=e.launch.row_workgroup(classes))  # the fused kernel's choice: fair
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


def bench(g: Graph, quick: bool = False, repeats: int = 5, seed: int = 0) -> list[dict]:
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


PRIMITIVE_SHAPE, QUICK_PRIMITIVE_SHAPE = (4096, 4096), (64, 1000)


def bench_primitives(g: Graph, quick: bool = False, repeats: int = 5, seed: int = 6) -> list[dict]:
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
        "mul_rows": (lambda: g.ops.mul_rows(x, per_row), lambda: x64 * scales[:, None].astype(np.float64), 2 * n + rows),
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


def format_primitives(rows: list[dict]) -> str:
    out = ["", f"primitives on a {shape_text(rows[0]['shape'])} matrix (float32):",
           f"{'op':<22}{'kernel ms':>10}{'wall ms':>9}{'MB moved':>9}{'GB/s':>8}{'roofline':>9}{'err':>9}"]
    for r in rows:
        seconds = (r["kernel_ms"] if r["kernel_ms"] is not None else r["wall_ms"]) / 1e3
        out.append(f"{r['op']:<22}{cell(r['kernel_ms'], 10)}{r['wall_ms']:9.2f}{r['bytes'] / 1e6:9.1f}"
                   f"{r['bytes'] / seconds / 1e9:8.2f}{r['roofline']:9.2f}{r['rel_error']:9.1e}")
    out.append("kernel: device time by Vulkan timestamps; wall: recorded, submitted and waited for (no read); MB moved: "
               "operands read once and the result written once (mse_loss: pred and target read, the gradient "
               "written, as a fused kernel would); roofline: a copy of as many bytes over the kernel time")
    return "\n".join(out)


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


def bench_target_forms(g: Graph, quick: bool = False, repeats: int = 5, seed: int = 1) -> list[dict]:
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


SIXTEEN_BIT_DTYPES = (np.float32, np.float16, "bfloat16")


def bench_sixteen_bit(g: Graph, quick: bool = False, repeats: int = 5, seed: int = 5) -> list[dict]:
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


def format_sixteen_bit(rows: list[dict]) -> str:
    out = ["", "16-bit inputs (cross-entropy with index targets; BCE with logits, labels in the same dtype):",
           f"{'loss':<22}{'shape':>16}{'dtype':>10}{'kernel ms':>10}{'wall ms':>9}{'MB moved':>9}{'roofline':>9}"
           f"{'loss err':>9}"]
    for r in rows:
        out.append(f"{r['loss']:<22}{shape_text(r['shape']):>16}{r['dtype']:>10}{cell(r['kernel_ms'], 10)}"
                   f"{r['wall_ms']:9.2f}{r['bytes'] / 1e6:9.1f}{r['roofline']:9.2f}{r['loss_error']:9.1e}")
    out.append("MB moved: read the logits (and BCE's labels) and write the gradient once, in their dtype; roofline: a "
               "copy of as many bytes over the kernel time; loss err: against float64 on the same 16-bit values")
    return "\n".join(out)


def peak_memory(device, shape, hidden: int = 64, seed: int = 2) -> dict:
    """Peak device bytes of a last layer's forward, cross-entropy (index targets) and backward, on a fresh Graph,
    with and without inplace_grad. None where a buffer exceeds what the device binds."""
    from ..errors import DeviceMemoryError

    rng = np.random.default_rng(seed)
    rows, classes = shape
    h_data = rng.standard_normal((rows, hidden), dtype=np.float32)
    w_data = rng.standard_normal((hidden, classes), dtype=np.float32) * 0.1
    labels = rng.integers(0, classes, rows)
    result = {"shape": list(shape), "logits_bytes": rows * classes * 4}
    losses = {}
    for inplace in (False, True):
        with Graph(device) as g:
            try:
                h, w = g.tensor(h_data, requires_grad=True), g.tensor(w_data, requires_grad=True)
                loss = g.cross_entropy_loss(g.matmul(h, w), labels, inplace_grad=inplace)
                g.backward(loss)
                losses[inplace] = loss.item()
                w.grad.numpy()
                result["in_place_bytes" if inplace else "copying_bytes"] = g.stats["peak_device_bytes"]
            except DeviceMemoryError as e:
                result["in_place_bytes" if inplace else "copying_bytes"] = None
                result["refused"] = str(e)
    if len(losses) == 2 and losses[False] != losses[True]:
        raise RuntimeError(f"memory run {shape}: in-place loss {losses[True]} differs from {losses[False]}")
    return result


LINEAR_SIZE_CPU, LINEAR_SIZE_GPU, QUICK_LINEAR_SIZE = (2048, 64, 32_000), (8192, 4096, 128_256), (64, 16, 3000)


def bench_linear(device, quick: bool = False, seed: int = 4) -> dict:
    """linear_cross_entropy (loss and the three gradients) at a language model's last layer, beside matmul then
    cross_entropy_loss (refused where the logits exceed a binding) and PyTorch's F.cross_entropy(hidden @ weight.T,
    y) (CPU where there is no CUDA). Two steps each; the second's wall time up to the loss's read is reported, with
    its device time (Vulkan timestamps) and the first step's wall time; PyTorch's second step, and with CUDA its
    memory. Peak device memory is beyond the inputs and their gradients. The loss is checked against float64 (on
    CUDA where there is one) before any figure is kept."""
    from ..errors import DeviceMemoryError

    with Graph(device) as g:
        size = QUICK_LINEAR_SIZE if quick else LINEAR_SIZE_CPU if g.device.type == "cpu" else LINEAR_SIZE_GPU
    rows, features, classes = size
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((rows, features), dtype=np.float32)
    weight = rng.standard_normal((classes, features), dtype=np.float32) / np.float32(np.sqrt(features))
    labels = rng.integers(0, classes, rows)
    inputs_and_grads = 2 * (rows * features + classes * features) * 4 + rows * 4
    report = {"shape": list(size), "logits_bytes": rows * classes * 4, "inputs_and_gradients_bytes": inputs_and_grads}
    for fused in (True, False):
        name = "fused" if fused else "unfused"
        with Graph(device) as g:
            try:
                h = g.parameter(hidden)
                w = g.parameter(weight if fused else weight.T.copy())
                g.flush()
                for first in (True, False):  # the first step makes kernels and buffers; PyTorch's is warm too
                    h.grad = w.grad = None
                    start = time.perf_counter()
                    loss = (g.linear_cross_entropy(h, w, labels) if fused else
                            g.cross_entropy_loss(g.matmul(h, w), labels))
                    g.backward(loss)  # the gradients are recorded by now; the flush runs them
                    kernel = g.engine.flush(timed=True)
                    report[f"{name}_loss"] = loss.item()
                    report[f"{name}{'_first' if first else ''}_s"] = time.perf_counter() - start
                    report[f"{name}_kernel_s"] = kernel
                report[f"{name}_extra_bytes"] = g.stats["peak_device_bytes"] - inputs_and_grads
                if not np.isfinite(w.grad.numpy()).all():
                    raise RuntimeError(f"linear_cross_entropy {size}: a {name} weight gradient is not finite")
            except DeviceMemoryError as e:
                for key in ("s", "first_s", "kernel_s", "extra_bytes"):
                    report[f"{name}_{key}"] = None
                report[f"{name}_refused"] = str(e)
    torch = cuda = None
    try:
        import torch
        import torch.nn.functional as F
        cuda = torch.cuda.is_available()
    except ImportError:
        pass
    if cuda:  # float64 on the GPU: seconds where numpy takes minutes at a language model's size
        h64, w64 = (torch.tensor(a, dtype=torch.float64, device="cuda") for a in (hidden, weight))
        exact = float(F.cross_entropy(h64 @ w64.T, torch.tensor(labels, device="cuda")))
        del h64, w64
    else:
        exact = reference.cross_entropy(hidden.astype(np.float64) @ weight.T.astype(np.float64), labels)[0]
    report["float64_loss"] = exact
    for name in ("fused", "unfused"):
        if f"{name}_loss" in report and not abs(report[f"{name}_loss"] - exact) < 1e-4 * abs(exact):
            raise RuntimeError(f"linear_cross_entropy {size}: {name} loss {report[f'{name}_loss']} is off float64's "
                               f"{exact}: not reporting its time")
    if torch is not None:
        where = "cuda" if cuda else "cpu"
        h = torch.tensor(hidden, device=where, requires_grad=True)
        w = torch.tensor(weight, device=where, requires_grad=True)
        y = torch.tensor(labels, device=where)
        for _ in range(2):  # the second step's time: the first warms the allocator (and cuBLAS)
            h.grad = w.grad = None
            if cuda:
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            F.cross_entropy(h @ w.T, y).backward()
            if cuda:
                torch.cuda.synchronize()
        report[f"torch_{where}_s"] = time.perf_counter() - start
        if cuda:
            report["torch_cuda_extra_bytes"] = torch.cuda.max_memory_allocated() - base - \
                (rows * features + classes * features) * 4  # beyond inputs and their gradients
    return report


def format_linear(r: dict) -> str:
    mib = lambda b: f"{b / 2 ** 20:.1f} MiB" if b is not None else "refused"  # noqa: E731
    seconds = lambda s: f"{s:.2f} s" if s is not None else "-"  # noqa: E731
    rows, features, classes = r["shape"]
    out = ["", f"linear_cross_entropy at {rows} x {features} -> {classes} classes (logits {mib(r['logits_bytes'])}; "
               f"inputs and gradients {mib(r['inputs_and_gradients_bytes'])}), loss and every gradient, one step:",
           *(f"    {label:<30}{seconds(r[f'{name}_s']):>8} (device {seconds(r[f'{name}_kernel_s'])}; first step "
             f"{seconds(r[f'{name}_first_s'])}), device memory beyond inputs and gradients "
             f"{mib(r[f'{name}_extra_bytes'])}"
             for name, label in (("fused", "linear_cross_entropy"), ("unfused", "matmul + cross_entropy_loss")))]
    if r.get("unfused_refused"):
        out.append(f"        refused: {r['unfused_refused']}")
    for where in ("cpu", "cuda"):
        if f"torch_{where}_s" in r:
            extra = f", {mib(r['torch_cuda_extra_bytes'])} beyond inputs and gradients" if where == "cuda" else ""
            out.append(f"    PyTorch {where.upper():<4} F.cross_entropy(h @ w.T) {seconds(r[f'torch_{where}_s']):>7}{extra}")
    return "\n".join(out)


def format_target_forms(rows: list[dict]) -> str:
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


def format_memory(memory: list[dict]) -> str:
    out = ["", "peak device memory, last layer (matmul [rows, 64] x [64, classes]) + cross-entropy + backward:",
           f"{'shape':>16}{'logits MiB':>11}{'copying MiB':>12}{'in-place MiB':>13}{'saved MiB':>10}"]
    for m in memory:
        mib = lambda b: f"{b / 2 ** 20:.1f}" if b is not None else "refused"  # noqa: E731
        saved = (f"{(m['copying_bytes'] - m['in_place_bytes']) / 2 ** 20:.1f}"
                 if m["copying_bytes"] is not None and m["in_place_bytes"] is not None else "-")
        out.append(f"{shape_text(m['shape']):>16}{m['logits_bytes'] / 2 ** 20:11.1f}"
                   f"{mib(m['copying_bytes']):>12}{mib(m['in_place_bytes']):>13}{saved:>10}")
        if "refused" in m:
            out.append(f"{'':>16}refused: {m['refused']}")
    return "\n".join(out)


def format_rows(device: str, rows: list[dict]) -> str:
    cuda = any(r.get("torch_cuda_ms") is not None for r in rows)
    out = [f"device: {device}",
           f"{'loss':<19}{'shape':>16}{'kernel ms':>10}{'wall ms':>9}{'host ms':>8}{'GB/s':>8}{'copy GB/s':>10}"
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


MEMORY_SIZES, QUICK_MEMORY_SIZES = [(1024, 32_000), (4096, 32_000)], [(64, 3000)]
GRAPH_CYCLES, QUICK_GRAPH_CYCLES = 200, 20
STEP_SIZE, QUICK_STEP_SIZE = (512, 32_000), (16, 3000)
CHURN_SIZE, QUICK_CHURN_SIZE = (1000, 32_000), (64, 3000)


def bench_engine(device, quick: bool = False, repeats: int = 5, seed: int = 3) -> dict:
    from .. import runtime

    start = time.perf_counter()
    cycles = QUICK_GRAPH_CYCLES if quick else GRAPH_CYCLES
    for _ in range(cycles):
        with Graph(device) as g:
            g.neg(g.tensor([1.0])).item()
    report = {"graph_cycles": cycles, "graph_cycle_s": (time.perf_counter() - start) / cycles,
              "device_contexts": runtime.contexts_made()}
    rng = np.random.default_rng(seed)
    rows, classes = QUICK_STEP_SIZE if quick else STEP_SIZE
    steps = max(4, 4 * repeats)
    with Graph(device) as g:
        logits = g.parameter(rng.standard_normal((rows, classes), dtype=np.float32))
        labels = g.tensor(rng.integers(0, classes, rows), dtype=np.int32)

        def step():
            logits.grad = None
            loss = g.cross_entropy_loss(logits, labels)
            g.backward(loss)
            g.engine.end_of_step()  # what an optimizer's step() does
            return loss

        def run(mode, count):
            copies = []
            for _ in range(count):
                loss = step()
                if mode == "blocking":
                    loss.item()
                else:
                    copies.append(loss.item_async())
                    if len(copies) > 1:
                        copies[-2].result()  # the previous step's loss, ready by now or nearly
                del loss
            for copy in copies:
                copy.result()

        kernel = kernel_seconds(g.engine, lambda: step().item_async(), repeats)
        report["step_kernel_s"] = kernel
        for mode in ("blocking", "deferred"):
            run(mode, 4)  # warm: kernels built, buffers pooled, the mode's steps recorded for replay
            before, start = dict(g.stats), time.perf_counter()
            run(mode, steps)
            report[f"step_{mode}_s"] = (time.perf_counter() - start) / steps
            report[f"step_{mode}_submissions"] = (g.stats["submissions"] - before["submissions"]) / steps
            report[f"step_{mode}_replays"] = (g.stats["replays"] - before["replays"]) / steps
    report["step_shape"] = (rows, classes)
    rows, classes = QUICK_CHURN_SIZE if quick else CHURN_SIZE
    with Graph(device) as g:
        x = g.parameter(rng.standard_normal((rows, classes), dtype=np.float32))
        labels, one = g.tensor(rng.integers(0, classes, rows), dtype=np.int32), g.tensor([1.0])
        times, counts = [], []
        for _ in range(max(4, repeats)):
            start = time.perf_counter()
            x.grad = None
            loss = g.cross_entropy_loss(g.mul_scalar(x, one), labels)
            g.backward(loss)
            loss.item()
            del loss
            times.append(time.perf_counter() - start)
            counts.append((g.stats["buffers_created"], g.stats["algorithms_created"]))
        report.update(churn_shape=(rows, classes), churn_step_s=statistics.median(times[2:]),
                      churn_buffers_after_step_2=counts[-1][0] - counts[1][0],
                      churn_algorithms_after_step_2=counts[-1][1] - counts[1][1])
    return report


def format_engine(r: dict) -> str:
    return "\n".join([
        "", "engine (wall-clock, host overhead included):",
        f"Graph make + op + read + close: {r['graph_cycle_s'] * 1e3:.2f} ms per cycle over {r['graph_cycles']} "
        f"cycles; device contexts made by this process: {r['device_contexts']}",
        f"cross-entropy step {shape_text(r['step_shape'])} (index targets, loss + backward), device time "
        + (f"{r['step_kernel_s'] * 1e3:.2f} ms:" if r["step_kernel_s"] is not None else "unknown (no timestamps):"),
        f"{'':>4}{'loss read':<30}{'ms/step':>9}{'subm/step':>10}{'replays/step':>13}",
        *(f"{'':>4}{label:<30}{r[f'step_{mode}_s'] * 1e3:9.2f}{r[f'step_{mode}_submissions']:10.2f}"
          f"{r[f'step_{mode}_replays']:13.2f}"
          for mode, label in (("blocking", "item() every step"), ("deferred", "item_async(), read a step later"))),
        f"churn {shape_text(r['churn_shape'])} (x * 1, CE index targets, backward, item()): "
        f"{r['churn_step_s'] * 1e3:.1f} ms per step; after step 2: {r['churn_buffers_after_step_2']} buffers and "
        f"{r['churn_algorithms_after_step_2']} algorithms created",
    ])


def main(args) -> int:
    """Each section in turn, printed as it ends, and the JSON written again after each (a run cut short keeps what
    it measured)."""
    sections = args.sections or SECTIONS
    report = {}

    def done(key, value, text):
        report[key] = value
        print(text, flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)

    with Graph(args.device) as g:
        report["device"] = str(g.device)
        if "losses" in sections:
            rows = bench(g, quick=args.quick, repeats=args.repeats)
            done("rows", rows, format_rows(report["device"], rows))
    if "primitives" in sections:
        with Graph(args.device) as g:
            primitives = bench_primitives(g, quick=args.quick, repeats=args.repeats)
        done("primitives", primitives, format_primitives(primitives))
    if "target_forms" in sections:
        with Graph(args.device) as g:  # a fresh one: the first part's pooled buffers measurably slowed the second
            forms = bench_target_forms(g, quick=args.quick, repeats=args.repeats)
        done("target_forms", forms, format_target_forms(forms))
    if "sixteen_bit" in sections:
        with Graph(args.device) as g:
            sixteen = bench_sixteen_bit(g, quick=args.quick, repeats=args.repeats)
        done("sixteen_bit", sixteen, format_sixteen_bit(sixteen))
    if "memory" in sections:
        memory = [peak_memory(args.device, shape) for shape in (QUICK_MEMORY_SIZES if args.quick else MEMORY_SIZES)]
        done("memory", memory, format_memory(memory))
    if "engine" in sections:
        engine_report = bench_engine(args.device, quick=args.quick, repeats=args.repeats)
        done("engine", engine_report, format_engine(engine_report))
    if "host" in sections:
        host = bench_host(args.device, quick=args.quick, repeats=args.repeats)
        done("host", host, format_host(host))
    if "linear" in sections:
        linear = bench_linear(args.device, quick=args.quick)
        done("linear_cross_entropy", linear, format_linear(linear))
    if args.json:
        print(f"wrote {args.json}")
    return 0
