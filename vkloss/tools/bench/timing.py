"""Timing and checking, shared by every section: a kernel's device time by Vulkan timestamps (the public way to
time one), wall-clock medians, the device's copy bandwidth (the roofline's yardstick), PyTorch's times for the same
work, and the error against float64 that must be small before any figure is kept."""
from __future__ import annotations

import statistics
import time

import numpy as np

from ...kernels import ACCESS_SWITCHES, Kernel, access_allowed, access_switches, dispatch
from ...launch import ceil_div

ERROR_LIMIT = 1e-4  # relative to the reference's largest magnitude; a result further off is not timed
TORCH_CPU_LIMIT = 1 << 25  # elements above which PyTorch's CPU time is left out: seconds a run, and beside a GPU

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


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm: algorithms built, buffers pooled
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


WARM_SECONDS = 0.05  # untimed runs before a kernel is timed, at least this long (and at least one)


def kernel_seconds(engine, record, repeats: int = 5) -> float | None:
    """The device's time for what `record()` records, by Vulkan timestamps (median of `repeats`); None where the
    device cannot time compute work. `engine` is a Graph's (g.engine); `record` records work and submits nothing
    (ops, or dispatches through a KernelContext). Untimed runs for WARM_SECONDS come first: a GPU timed right after
    host work (a float64 check) reads several times slower than in a loop."""
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


def copy_seconds(e, bytes_moved: int, repeats: int) -> dict:
    """The device's streaming bandwidth as times for reading and writing, together, `bytes_moved`: its own buffer
    copy, a scalar and a vec4 copy shader, and where the kernels read eight floats an access
    (LaunchPolicy.wide_loads), an eight-float one. By timestamps where the device has them, else wall-clock. The
    roofline uses the fastest."""
    floats = ceil_div(bytes_moved, 64) * 8  # read this many floats, write as many (8 | n)
    data = np.arange(floats, dtype=np.float32)
    src, dst = e.upload(data), e.alloc(floats)
    timed = e.device.timestamp_period_ns > 0
    timings = {}
    ways = {"device_copy": lambda: e.copy(src, dst)}
    widths = {"scalar": 1, "vec4": 4, **({"wide": 8} if e.launch.wide_loads() else {})}  # wide: as kernels read
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
