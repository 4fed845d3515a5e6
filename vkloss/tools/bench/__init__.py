"""`python -m vkloss.tools bench`: vkloss's kernels measured in one run on one device, a section each (a module of
this package with NAME, KEY, `run(device, quick, repeats)` and `format(result)`):

- losses: cross-entropy and BCE, loss plus gradient, fused against unfused kernels, copy bandwidth and PyTorch;
- primitives: the elementwise and reduction ops, and mse_loss made of them, against copy bandwidth;
- target_forms: cross-entropy with class-index targets and the in-place gradient;
- sixteen_bit: the fused losses on float16 and bfloat16 inputs;
- memory: peak device memory of a last layer and its loss, with and without the in-place gradient;
- engine: Graph cycles, loss reads with item() against item_async(), buffer churn;
- host: what Python costs around the kernels, against PyTorch CPU eager;
- linear: linear_cross_entropy at a language model's last layer;
- liger_options: cross-entropy with softcap and the z-loss, against the plain loss;
- distributed: data parallel over two local processes: bytes and time of the gradients' all-reduce.

Each section is printed when it ends; with `--json` the file is written again after each, so a run cut short keeps
what it measured. Every timing comes after its result checked out against float64: a kernel cut short looks fast.
`timing.kernel_seconds(g.engine, record)` times any recorded work by Vulkan timestamps, for a kernel of your own.
"""
from __future__ import annotations

import json

from ...graph import Graph
from . import (distributed, engine, host, liger_options, linear, losses, memory, primitives, sixteen_bit,
               target_forms)
from .timing import kernel_seconds, median_seconds

MODULES = (losses, primitives, target_forms, sixteen_bit, memory, engine, host, linear, liger_options, distributed)
SECTIONS = tuple(module.NAME for module in MODULES)


def main(args) -> int:
    """The chosen sections in turn (all by default), each printed as it ends, and the JSON written after each."""
    chosen = args.sections or SECTIONS
    report = {}
    with Graph(args.device) as g:
        report["device"] = str(g.device)
    print(f"device: {report['device']}", flush=True)
    for module in MODULES:
        if module.NAME not in chosen:
            continue
        report[module.KEY] = result = module.run(args.device, quick=args.quick, repeats=args.repeats)
        print(module.format(result), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
    if args.json:
        print(f"wrote {args.json}")
    return 0


__all__ = ["SECTIONS", "main", "kernel_seconds", "median_seconds"]
