"""The distributed section: data parallel on this machine, two processes of one gloo group over the loopback
address (started here, as torchrun starts them). For the main job's MLP (digits, 64-64-10, batch 64) and for a
language model's output layer (quick: a smaller one), the bytes all-reduced a step, the time of
DataParallel.all_reduce_gradients, and the time of the same step without it. Loopback is no network: docs/design.md
works out what links of 1, 10 and 100 Gb/s would give. Skipped where PyTorch or gloo is missing."""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

NAME, KEY = "distributed", "distributed"
CASES = {"mlp": [(64, 64), (64,), (10, 64), (10,)], "output layer": [(32_000, 512), (32_000,)]}
QUICK_CASES = {"mlp": CASES["mlp"], "output layer": [(3000, 64), (3000,)]}


def run(device, quick: bool = False, repeats: int = 5) -> dict:
    try:
        import torch.distributed as dist
        if not dist.is_gloo_available():
            return {"skipped": "this PyTorch has no gloo backend"}
    except ImportError:
        return {"skipped": "PyTorch is not installed (pip install vkloss[distributed])"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    workers = [subprocess.Popen([sys.executable, "-m", __name__, json.dumps({"quick": quick, "repeats": repeats,
                                                                              "device": device})],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                                         MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
               for rank in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    if any(w.returncode for w in workers):
        raise RuntimeError(f"a distributed bench worker failed: {outputs[0][1][-2000:]}{outputs[1][1][-2000:]}")
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def _worker(quick: bool, repeats: int, device) -> dict:
    """One rank: each case's backward, and then its gradients' all-reduce, timed apart (medians of repeats)."""
    import vkloss
    from vkloss import distributed

    process = distributed.init()
    report = {"world_size": process.world_size, "cases": []}
    with vkloss.Graph(process.device if device is None else device) as g:
        for name, shapes in (QUICK_CASES if quick else CASES).items():
            rng = np.random.default_rng(process.rank)
            params = [g.parameter(rng.standard_normal(shape) * 0.1) for shape in shapes]
            dp = distributed.DataParallel(params)

            def loss_of():  # the sum of every parameter's squares: a gradient for each
                total = g.sum_all(g.mul(params[0], params[0]))
                for p in params[1:]:
                    total = g.add(total, g.sum_all(g.mul(p, p)))
                return total

            def step():
                """(seconds of the backward, run to its end; seconds of the gradients' all-reduce after it)"""
                for p in params:
                    p.grad = None
                start = time.perf_counter()
                g.backward(loss_of())
                g.flush()
                computed = time.perf_counter()
                dp.all_reduce_gradients()  # read, all-reduce, write back
                g.flush()
                return computed - start, time.perf_counter() - computed

            step()  # warm
            times = [step() for _ in range(repeats)]
            report["cases"].append({"name": name, "bytes": dp.bytes_per_step, "buckets": len(dp.buckets),
                                    "all_reduce_s": statistics.median(t[1] for t in times),
                                    "step_s": statistics.median(t[0] for t in times)})
    distributed.shutdown()
    return report


def format(r: dict) -> str:
    if "skipped" in r:
        return f"\ndistributed: skipped ({r['skipped']})"
    out = ["", f"data parallel, {r['world_size']} processes on this machine (gloo over loopback):",
           f"{'gradients':<14}{'MB a step':>10}{'buckets':>8}{'all-reduce ms':>14}{'step ms':>9}{'share':>7}"]
    for c in r["cases"]:
        share = c["all_reduce_s"] / (c["all_reduce_s"] + c["step_s"])
        out.append(f"{c['name']:<14}{c['bytes'] / 1e6:10.3f}{c['buckets']:8d}{c['all_reduce_s'] * 1e3:14.2f}"
                   f"{c['step_s'] * 1e3:9.2f}{share:7.2f}")
    out.append("all-reduce: DataParallel.all_reduce_gradients after the backward ran (read, gloo all-reduce, write "
               "back), median; step: the backward, recorded and run; share: all-reduce / (all-reduce + step)")
    return "\n".join(out)


if __name__ == "__main__":
    options = json.loads(sys.argv[1])
    print(json.dumps(_worker(options["quick"], options["repeats"], options["device"])))
