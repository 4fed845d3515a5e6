"""The linear section: linear_cross_entropy (loss and the three gradients) at a language model's last layer, beside
matmul then cross_entropy_loss (refused where the logits exceed a binding) and PyTorch's
F.cross_entropy(hidden @ weight.T, y) (CPU where there is no CUDA). Two steps each; the second's wall time up to the
loss's read is reported, with its device time (Vulkan timestamps) and the first step's wall time; PyTorch's second
step, and with CUDA its memory. Peak device memory is beyond the inputs and their gradients. The loss is checked
against float64 (on CUDA where there is one) before any figure is kept."""
from __future__ import annotations

import time

import numpy as np

from ... import reference
from ...errors import DeviceMemoryError
from ...graph import Graph

NAME, KEY = "linear", "linear_cross_entropy"
LINEAR_SIZE_CPU, LINEAR_SIZE_GPU, QUICK_LINEAR_SIZE = (2048, 64, 32_000), (8192, 4096, 128_256), (64, 16, 3000)


def run(device, quick: bool = False, repeats: int = 5, seed: int = 4) -> dict:
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
        report.update(_vkloss_steps(device, fused, hidden, weight, labels, inputs_and_grads))
    torch = _torch()
    report["float64_loss"] = exact = _float64_loss(torch, hidden, weight, labels)
    for name in ("fused", "unfused"):
        if f"{name}_loss" in report and not abs(report[f"{name}_loss"] - exact) < 1e-4 * abs(exact):
            raise RuntimeError(f"linear_cross_entropy {size}: {name} loss {report[f'{name}_loss']} is off float64's "
                               f"{exact}: not reporting its time")
    if torch is not None:
        report.update(_torch_steps(torch, hidden, weight, labels))
    return report


def _vkloss_steps(device, fused: bool, hidden, weight, labels, inputs_and_grads: int) -> dict:
    name, report = "fused" if fused else "unfused", {}
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
                raise RuntimeError(f"linear_cross_entropy {hidden.shape}: a {name} weight gradient is not finite")
        except DeviceMemoryError as e:
            report.update({f"{name}_{key}": None for key in ("s", "first_s", "kernel_s", "extra_bytes")})
            report[f"{name}_refused"] = str(e)
    return report


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _float64_loss(torch, hidden, weight, labels) -> float:
    if torch is not None and torch.cuda.is_available():  # on the GPU: seconds where numpy takes minutes
        import torch.nn.functional as F

        h64, w64 = (torch.tensor(a, dtype=torch.float64, device="cuda") for a in (hidden, weight))
        return float(F.cross_entropy(h64 @ w64.T, torch.tensor(labels, device="cuda")))
    return reference.cross_entropy(hidden.astype(np.float64) @ weight.T.astype(np.float64), labels)[0]


def _torch_steps(torch, hidden, weight, labels) -> dict:
    import torch.nn.functional as F

    cuda = torch.cuda.is_available()
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
    report = {f"torch_{where}_s": time.perf_counter() - start}
    if cuda:  # beyond inputs and their gradients
        report["torch_cuda_extra_bytes"] = torch.cuda.max_memory_allocated() - base - \
            (hidden.size + weight.size) * 4
    return report


def format(r: dict) -> str:
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
            out.append(f"    PyTorch {where.upper():<4} F.cross_entropy(h @ w.T) "
                       f"{seconds(r[f'torch_{where}_s']):>7}{extra}")
    return "\n".join(out)
