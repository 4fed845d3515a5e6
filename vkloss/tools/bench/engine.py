"""The engine section, wall-clock (host overhead included):
- graphs: Graph make, one op and a read, close, repeated: time per cycle, and how many device contexts the process
  made (one per device, however many Graphs);
- a cross-entropy step (index targets, loss and backward) that reads its loss with item() every step, against the
  same step reading each loss with item_async() one step later; and the submissions and replays per step;
- churn: logits = x * 1, cross-entropy with index targets and backward at language-model-like sizes (three logits-
  sized buffers released every step): time per step and what was created after the second step."""
from __future__ import annotations

import statistics
import time

import numpy as np

from ... import runtime
from ...graph import Graph
from .table import shape_text
from .timing import kernel_seconds

NAME, KEY = "engine", "engine"
GRAPH_CYCLES, QUICK_GRAPH_CYCLES = 200, 20
STEP_SIZE, QUICK_STEP_SIZE = (512, 32_000), (16, 3000)
CHURN_SIZE, QUICK_CHURN_SIZE = (1000, 32_000), (64, 3000)


def run(device, quick: bool = False, repeats: int = 5, seed: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    return {**graph_cycles(device, QUICK_GRAPH_CYCLES if quick else GRAPH_CYCLES),
            **loss_reads(device, QUICK_STEP_SIZE if quick else STEP_SIZE, repeats, rng),
            **churn(device, QUICK_CHURN_SIZE if quick else CHURN_SIZE, repeats, rng)}


def graph_cycles(device, cycles: int) -> dict:
    start = time.perf_counter()
    for _ in range(cycles):
        with Graph(device) as g:
            g.neg(g.tensor([1.0])).item()
    return {"graph_cycles": cycles, "graph_cycle_s": (time.perf_counter() - start) / cycles,
            "device_contexts": runtime.contexts_made()}


def loss_reads(device, shape, repeats: int, rng) -> dict:
    """A cross-entropy step whose loss is read with item() every step, against item_async() read a step later."""
    rows, classes = shape
    steps = max(4, 4 * repeats)
    report = {"step_shape": shape}
    with Graph(device) as g:
        logits = g.parameter(rng.standard_normal((rows, classes), dtype=np.float32))
        labels = g.tensor(rng.integers(0, classes, rows), dtype=np.int32)

        def step():
            logits.grad = None
            loss = g.cross_entropy_loss(logits, labels)
            g.backward(loss)
            g.engine.end_of_step()  # what an optimizer's step() does
            return loss

        def run_steps(mode, count):
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

        report["step_kernel_s"] = kernel_seconds(g.engine, lambda: step().item_async(), repeats)
        for mode in ("blocking", "deferred"):
            run_steps(mode, 4)  # warm: kernels built, buffers pooled, the mode's steps recorded for replay
            before, start = dict(g.stats), time.perf_counter()
            run_steps(mode, steps)
            report[f"step_{mode}_s"] = (time.perf_counter() - start) / steps
            report[f"step_{mode}_submissions"] = (g.stats["submissions"] - before["submissions"]) / steps
            report[f"step_{mode}_replays"] = (g.stats["replays"] - before["replays"]) / steps
    return report


def churn(device, shape, repeats: int, rng) -> dict:
    """Steps that release logits-sized buffers every time: nothing new is made after the second."""
    rows, classes = shape
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
    return {"churn_shape": shape, "churn_step_s": statistics.median(times[2:]),
            "churn_buffers_after_step_2": counts[-1][0] - counts[1][0],
            "churn_algorithms_after_step_2": counts[-1][1] - counts[1][1]}


def format(r: dict) -> str:
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
