"""The host section: what Python costs around the kernels, against PyTorch CPU eager on the same work.

- eager ops: µs of host time to record one `add` on 16 floats, 200 chained, before the flush (the device idle);
- a training step of an MLP 64-64-10 (two linear layers, cross-entropy on one-hot targets as the main job's digits
  task, backward, Adam), op by op
  (eager) and captured (g.capture): ms a step with the loss read a step late, µs of host time in the captured
  step's call, dispatches and submissions a step;
- PyTorch CPU eager: the same chain of adds and the same step, where PyTorch is installed.

Run with LP_NUM_THREADS=0 on lavapipe to take its worker threads out of the host's figures (the report says
which setting it ran under).
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np

from ... import optim
from ...graph import Graph

NAME, KEY = "host", "host"

CHAIN = 200  # adds in one timed chain
STEPS, QUICK_STEPS = 200, 20  # training steps timed per mode
SIZES = (64, 64, 10)  # the MLP
BATCH = 64


def _best(fn, repeats: int) -> float:
    fn()
    return min(fn() for _ in range(repeats))


def eager_add_seconds(g: Graph, repeats: int) -> float:
    """Host seconds per add, recording a chain of CHAIN adds (nothing submitted meanwhile)."""
    a, b = g.tensor(np.ones(16, np.float32)), g.tensor(np.ones(16, np.float32))

    def chain():
        g.flush()
        start = time.perf_counter()
        x = a
        for _ in range(CHAIN):
            x = g.add(x, b)
        seconds = time.perf_counter() - start
        x.numpy()
        return seconds / CHAIN

    return _best(chain, repeats)


def torch_add_seconds(repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    a, b = torch.ones(16), torch.ones(16)

    def chain():
        start = time.perf_counter()
        x = a
        for _ in range(CHAIN):
            x = torch.add(x, b)
        return (time.perf_counter() - start) / CHAIN

    return _best(chain, repeats)


def _data(seed: int):
    rng = np.random.default_rng(seed)
    weights = []
    for fan_in, fan_out in zip(SIZES, SIZES[1:]):
        bound = 1 / np.sqrt(fan_in)
        weights += [rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32),
                    rng.uniform(-bound, bound, fan_out).astype(np.float32)]
    batches = [(rng.standard_normal((BATCH, SIZES[0])).astype(np.float32),
                np.eye(SIZES[-1], dtype=np.float32)[rng.integers(0, SIZES[-1], BATCH)]) for _ in range(8)]
    return weights, batches


def mlp_step(device, captured: bool, steps: int, seed: int) -> dict:
    """An MLP's training loop on vkloss: ms a step (loss read a step late), dispatches and submissions a step, and
    for a captured step the host µs in its call with nothing in flight."""
    weights, batches = _data(seed)
    with Graph(device) as g:
        params = [g.parameter(w) for w in weights]
        opt = optim.Adam(params, lr=1e-3)
        x = g.tensor(batches[0][0])
        labels = g.tensor(batches[0][1])

        def step():
            opt.zero_grad()
            hidden = g.linear(x, params[0], params[1], activation="relu")
            loss = g.cross_entropy_loss(g.linear(hidden, params[2], params[3]), labels)
            g.backward(loss)
            opt.step()
            return loss

        run = g.capture(step) if captured else step

        def loop(count):
            copies = []
            for index in range(count):
                batch, target = batches[index % len(batches)]
                x.copy_(batch)
                labels.copy_(target)
                copies.append(run().item_async())
                if len(copies) > 1:
                    copies[-2].result()
            copies[-1].result()

        loop(6)  # warm: kernels built, buffers pooled, the step recorded
        before, start = g.stats, time.perf_counter()
        loop(steps)
        seconds = (time.perf_counter() - start) / steps
        after = g.stats
        report = {"step_s": seconds, "dispatches": (after["dispatches"] - before["dispatches"]) / steps,
                  "submissions": (after["submissions"] - before["submissions"]) / steps}
        if captured:
            calls = []
            for _ in range(min(steps, 50)):
                g.engine.wait()
                start = time.perf_counter()
                run()
                calls.append(time.perf_counter() - start)
            g.flush()
            report["host_s"] = statistics.median(calls)
            run.release()
        return report


def torch_step_seconds(steps: int, seed: int) -> float | None:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    weights, batches = _data(seed)
    params = [torch.tensor(w, requires_grad=True) for w in weights]
    opt = torch.optim.Adam(params, lr=1e-3)
    data = [(torch.tensor(b), torch.tensor(t)) for b, t in batches]

    def loop(count):
        for index in range(count):
            batch, target = data[index % len(data)]
            opt.zero_grad()
            hidden = F.relu(F.linear(batch, params[0], params[1]))
            loss = F.cross_entropy(F.linear(hidden, params[2], params[3]), target)  # probabilities: one-hot
            loss.backward()
            opt.step()
            loss.item()

    loop(6)
    start = time.perf_counter()
    loop(steps)
    return (time.perf_counter() - start) / steps


def run(device, quick: bool = False, repeats: int = 5, seed: int = 7) -> dict:
    steps = QUICK_STEPS if quick else STEPS
    with Graph(device) as g:
        add = eager_add_seconds(g, repeats)
    return {"lp_num_threads": os.environ.get("LP_NUM_THREADS"), "add_s": add, "torch_add_s": torch_add_seconds(repeats),
            "eager": mlp_step(device, False, steps, seed), "captured": mlp_step(device, True, steps, seed),
            "torch_step_s": torch_step_seconds(steps, seed), "mlp": SIZES, "batch": BATCH}


def format(r: dict) -> str:
    torch_add = f"{r['torch_add_s'] * 1e6:.1f}" if r["torch_add_s"] is not None else "-"
    torch_step = f"{r['torch_step_s'] * 1e3:.3f}" if r["torch_step_s"] is not None else "-"
    sizes = "-".join(map(str, r["mlp"]))
    lines = ["", f"host (LP_NUM_THREADS={r['lp_num_threads'] or 'unset'}; figures of one run, compare ratios only):",
             f"    eager add on 16 floats, {CHAIN} chained: {r['add_s'] * 1e6:.1f} us an op to record "
             f"(PyTorch CPU eager: {torch_add} us an op, computing included)",
             f"    MLP {sizes} step, batch {r['batch']} (linear, relu, cross-entropy on one-hot targets, backward, "
             "Adam), loss read a step late:",
             f"{'':>8}{'mode':<22}{'ms/step':>9}{'dispatches':>12}{'submissions':>13}{'host us/call':>14}"]
    for mode in ("eager", "captured"):
        step = r[mode]
        host = f"{step['host_s'] * 1e6:.1f}" if "host_s" in step else "-"
        lines.append(f"{'':>8}{mode:<22}{step['step_s'] * 1e3:9.3f}{step['dispatches']:12.1f}"
                     f"{step['submissions']:13.2f}{host:>14}")
    lines.append(f"{'':>8}{'PyTorch CPU eager':<22}{torch_step:>9}")
    return "\n".join(lines)
