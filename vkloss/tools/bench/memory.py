"""The memory section: the peak device memory held by the engine (in use and pooled) over a last layer's forward
(matmul), the loss and backward, with and without inplace_grad, on a fresh Graph each."""
from __future__ import annotations

import numpy as np

from ...errors import DeviceMemoryError
from ...graph import Graph
from .table import shape_text

NAME, KEY = "memory", "memory"
MEMORY_SIZES, QUICK_MEMORY_SIZES = [(1024, 32_000), (4096, 32_000)], [(64, 3000)]


def run(device, quick: bool = False, repeats: int = 5) -> list[dict]:
    return [peak_memory(device, shape) for shape in (QUICK_MEMORY_SIZES if quick else MEMORY_SIZES)]


def peak_memory(device, shape, hidden: int = 64, seed: int = 2) -> dict:
    """Peak device bytes of a last layer's forward, cross-entropy (index targets) and backward, on a fresh Graph,
    with and without inplace_grad. None where a buffer exceeds what the device binds."""
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



def format(memory: list[dict]) -> str:
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
