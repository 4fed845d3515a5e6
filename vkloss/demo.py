"""python -m vkloss.demo: fit y = a x + b by gradient descent with mse_loss, then l1_loss, on the default device.

Prints the device, the losses falling, and the final parameters and loss against the same gradient descent run
in float64 numpy (and, for MSE, against the closed-form least-squares fit)."""
from __future__ import annotations

import argparse
import time

import numpy as np

from .graph import Graph


def make_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, n)
    y = 3.0 * x - 1.0 + 0.3 * rng.standard_normal(n)
    y[rng.random(n) < 0.05] += 8.0  # a few outliers: where L1 and MSE part ways
    return x.astype(np.float32), y.astype(np.float32)


def numpy_gradients(loss: str, a: float, b: float, x, y):
    """Loss and (d/da, d/db) in float64: the reference the device is checked against."""
    d = a * x + b - y
    if loss == "mse":
        return np.mean(d * d), 2 * np.mean(d * x), 2 * np.mean(d)
    s = np.sign(d)  # sign(0) = 0, the convention vkloss's abs follows
    return np.mean(np.abs(d)), np.mean(s * x), np.mean(s)


def fit(g: Graph, loss: str, x, y, steps: int, lr: float, report: int):
    X, Y = g.tensor(x), g.tensor(y)
    a = b = 0.0
    ref_a = ref_b = 0.0
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    history = []
    for step in range(steps + 1):
        ta, tb = g.tensor([a], requires_grad=True), g.tensor([b], requires_grad=True)
        pred = g.add(g.mul(g.expand(ta, shape=X.shape), X), g.expand(tb, shape=X.shape))
        value = (g.mse_loss if loss == "mse" else g.l1_loss)(pred, Y)
        g.backward(value)
        ref_value, ref_ga, ref_gb = numpy_gradients(loss, ref_a, ref_b, x64, y64)
        history.append((value.item(), ref_value))
        if step % report == 0 or step == steps:
            print(f"  {loss} step {step:4d}  loss {history[-1][0]:.6f}   numpy float64 {ref_value:.6f}")
        if step < steps:
            a -= lr * ta.grad.item()
            b -= lr * tb.grad.item()
            ref_a -= lr * ref_ga
            ref_b -= lr * ref_gb
    return (a, b), (ref_a, ref_b), history


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vkloss.demo", description=__doc__)
    parser.add_argument("--n", type=int, default=4096, help="data points")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--device", default=None, help="device index (default: VKLOSS_DEVICE, else the best)")
    args = parser.parse_args(argv)

    with Graph(args.device) as g:
        print(f"device: {g.device}")
        x, y = make_data(args.n, seed=0)
        worst = 0.0
        for loss, lr in (("mse", 0.1), ("l1", 0.1)):
            start = time.perf_counter()
            (a, b), (ra, rb), history = fit(g, loss, x, y, args.steps, lr, report=max(1, args.steps // 5))
            seconds = time.perf_counter() - start
            rel = max(abs(a - ra), abs(b - rb)) / max(abs(ra), abs(rb))
            worst = max(worst, rel)
            print(f"  {loss}: fitted a={a:.5f} b={b:.5f}; numpy float64 a={ra:.5f} b={rb:.5f}; "
                  f"relative difference {rel:.2e}; loss {history[0][0]:.4f} -> {history[-1][0]:.4f} "
                  f"in {args.steps} steps, {seconds:.2f}s")
            if loss == "mse":
                la, lb = np.polyfit(x.astype(np.float64), y.astype(np.float64), 1)
                print(f"  mse: closed-form least squares a={la:.5f} b={lb:.5f}")
        print(f"largest relative difference from float64 numpy: {worst:.2e}")
        return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
