"""Every kernel's every mode at every access width, against float64: the cases come from the kernel catalog.

A cell is (shader, mode, width): the `mode` switch of a kernel family (an elementwise op's `op`, or "-" where it has
none) and the float32 values one access moves (1; 4, a vec4; 8, two vec4s in one 64-bit access), as
`kernels.catalog()` declares them. Each cell runs its family's driver on a fresh Graph whose launch policy is forced
to that width (wide loads on or off; the GPU's register-held rows for MODE_ROW_ONCE), at sizes that lead there; the
driver compares the results with float64 numpy, and the test then checks that a variant of that very cell ran. A
kernel family without a driver, or a mode or width no driver reaches, fails here: a variant added to a table is
tested the day it is added. The edge cases of each family (signed zeros in every vector lane, thresholds, masked and
NaN rows) are in the tests of its ops.
"""
from __future__ import annotations

import numpy as np
import pytest

import vkloss
from vkloss import kernels, reference, shaders
from vkloss.ops import cross_entropy as cross_entropy_ops
from helpers import f32, gpu_row_once, sigmoid64

TOOLS_ONLY = ("bench.comp",)  # the bench's baselines: not an op's kernels


def mode_of(variant) -> str:
    switches = dict(variant.switches)
    return str(switches.get("mode", switches.get("op", "-")))


def width_of(variant) -> int:
    switches = dict(variant.switches)
    return 8 if switches.get("wide") else 4 if switches.get("vec4") else 1


def catalog_cells() -> list[tuple[str, str, int]]:
    """vkloss's own kernels' cells (a test's or a user's kernel, declared by a path of its own, is not one)."""
    own = {path.name for path in shaders.shader_dir().glob("*.comp")} - set(TOOLS_ONLY)
    return sorted({(kernel.source, mode_of(v), width_of(v)) for kernel in kernels.catalog()
                   if kernel.source in own for v in kernel.variants()})


@pytest.fixture
def forced_graph():
    """make(width, row_once=False): a fresh Graph whose launch policy takes eight-float accesses only for width 8,
    and rows in registers where asked, recording the kernel variants it dispatches in g.dispatched."""
    graphs = []

    def make(width: int, row_once: bool = False):
        g = vkloss.Graph()
        graphs.append(g)
        if width == 8 and not g.device.shader_int64:
            pytest.skip(f"{g.device.name} has no 64-bit integers in shaders")
        g.engine.launch.wide_loads = lambda: width == 8
        if row_once:
            g.engine.launch.row_once = gpu_row_once
        shader_to_variant = {v.shader: v for kernel in kernels.catalog() for v in kernel.variants()}
        g.dispatched = []
        dispatch = g.engine.dispatch

        def recording(shader, *args, **kwargs):
            g.dispatched.append(shader_to_variant.get(shader))
            return dispatch(shader, *args, **kwargs)

        g.engine.dispatch = recording
        return g

    yield make
    for g in graphs:
        g.close()


def close(got, want, rtol=1e-5, atol_share=1e-6):
    """got within rtol of float64's want, or within atol_share of want's largest magnitude."""
    want = np.asarray(want, np.float64)
    scale = np.abs(want[np.isfinite(want)]).max() if np.isfinite(want).any() else 1.0
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol_share * scale + 1e-30)


# ---- drivers: one per kernel family; each reaches the cell's mode at its width and checks float64 ---------------
COLS = {8: 8, 4: 12, 1: 7}  # a row of this many floats: eight, four or one an access (an access stays in a row)


def values(rng, shape, low=None):
    x = rng.standard_normal(shape).astype(np.float32)
    return np.abs(x) + low if low is not None else x


UNARY = {"neg": lambda x: -x, "abs": np.abs, "relu": lambda x: np.maximum(x, 0), "sigmoid": sigmoid64,
         "exp": np.exp, "log": np.log, "tanh": np.tanh}
BINARY = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b, "div": lambda a, b: a / b,
          "abs_backward": lambda grad, x: grad * np.sign(x), "relu_backward": lambda grad, x: np.where(x > 0, grad, 0),
          "sigmoid_backward": lambda grad, y: grad * y * (1 - y), "tanh_backward": lambda grad, y: grad * (1 - y * y)}


def elementwise(g, rng, mode, width):
    rows, cols = 5, COLS[width]
    x, other = values(rng, (rows, cols), low=0.1 if mode == "log" else None), values(rng, (rows, cols), low=0.5)
    tx, tother = g.tensor(x), g.tensor(other)
    x64, other64 = f32(x), f32(other)
    if mode in UNARY:
        close(getattr(g, mode)(tx).numpy(), UNARY[mode](x64), rtol=2e-6)
    elif mode in BINARY:
        close(getattr(g.ops, mode)(tx, tother).numpy(), BINARY[mode](x64, other64), rtol=2e-7)
    elif mode in ("scale", "shift"):
        got = getattr(g, mode)(tx, s=-1.5).numpy()
        close(got, x64 * -1.5 if mode == "scale" else x64 - 1.5, rtol=2e-7)
    elif mode == "add_row":
        bias = values(rng, (cols,))
        close(g.add(tx, g.tensor(bias)).numpy(), x64 + f32(bias), rtol=2e-7)
    elif mode == "mul_rows":
        scales = values(rng, (rows,))
        close(g.ops.mul_rows(tx, g.tensor(scales)).numpy(), x64 * f32(scales)[:, None], rtol=2e-7)
    elif mode == "mul_scalar":
        close(g.mul_scalar(tx, g.tensor(-0.5)).numpy(), x64 * -0.5, rtol=2e-7)
    else:
        raise AssertionError(f"elementwise.comp: no case for op {mode}")


def reductions(g, rng, mode, width):
    n = {8: 4104, 4: 4100, 1: 4099}[width]
    x = values(rng, (n,)) + 0.25
    if mode == "SUM":
        exact = f32(x)
        assert g.mean_all(g.tensor(x)).item() == pytest.approx(exact.mean(), abs=1e-6 * np.abs(exact).sum() / n)
    else:
        np.testing.assert_array_equal(g.expand(g.tensor(1.5), shape=(n,), scale=-2.0).numpy(), np.full(n, -3.0))


def axes(g, rng, mode, width):
    x = values(rng, (3, 5, 4))
    tx = g.tensor(x, requires_grad=True)
    if mode == "TRANSPOSE":
        close(g.transpose(tx, dim0=0, dim1=2).numpy(), f32(x).transpose(2, 1, 0), rtol=0)
        return
    summed = g.sum(tx, dim=1)
    close(summed.numpy(), f32(x).sum(axis=1), rtol=1e-6)
    upstream = values(rng, (3, 4))
    g.backward(g.sum_all(g.mul(summed, g.tensor(upstream))))  # BROADCAST: the sum's backward
    close(tx.grad.numpy(), np.broadcast_to(f32(upstream)[:, None, :], x.shape), rtol=0)


def casts(g, rng, mode, width):
    x = values(rng, (37,)) * 100
    half = g.astype(g.tensor(x), dtype="float16")  # NARROW
    close(g.astype(half, dtype="float32").numpy(), x.astype(np.float16).astype(np.float64), rtol=0)  # WIDEN


def bce(g, rng, mode, width):
    shape = (5, COLS[width])
    p, y, z = rng.uniform(0.05, 0.95, shape).astype(np.float32), rng.random(shape).astype(np.float32), values(rng, shape)
    tp, tz = g.tensor(p, requires_grad=True), g.tensor(z, requires_grad=True)
    g.backward(g.add(g.bce_loss(tp, g.tensor(y)), g.bce_with_logits_loss(tz, g.tensor(y))))
    want_p, want_z = reference.binary_cross_entropy(f32(p), f32(y)), reference.binary_cross_entropy_with_logits(
        f32(z), f32(y))
    close(tp.grad.numpy(), want_p[1], rtol=1e-4)
    close(tz.grad.numpy(), want_z[1], rtol=1e-4)


def cross_entropy_row(g, rng, mode, width):
    classes = {"SMALL": 10, "ROW_ONCE": 256}.get(mode, {8: 104, 4: 100, 1: 101}[width])
    x, labels = values(rng, (4, classes)) * 3, rng.integers(0, classes, 4)
    weight = rng.uniform(0.5, 2.0, classes)
    pred = g.tensor(x, requires_grad=True)
    if mode == "ROW_Z":
        loss, z_loss = g.cross_entropy_loss(pred, labels, lse_square_scale=1e-2, return_z_loss=True)
        want_loss, want_z, want_grad = reference.liger_cross_entropy(x, labels, 1e-2)
        assert z_loss.item() == pytest.approx(want_z, rel=1e-5)
    else:  # ROW_WEIGHT: the weighted mean's divisor over class indices
        loss = g.cross_entropy_loss(pred, labels, weight=weight, label_smoothing=0.1)
        want_loss, want_grad = reference.cross_entropy(f32(x), labels, weight=weight, label_smoothing=0.1)
    g.backward(loss)
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    close(pred.grad.numpy(), want_grad, rtol=1e-4)


def cross_entropy_chunked(g, rng, mode, width):
    classes = cross_entropy_ops.ROW_LIMIT + 5  # past one workgroup a row
    x, labels = values(rng, (2, classes)) * 3, rng.integers(0, classes, 2)
    pred = g.tensor(x, requires_grad=True)
    loss = g.cross_entropy_loss(pred, labels, label_smoothing=0.1)
    g.backward(loss)
    want_loss, want_grad = reference.cross_entropy(f32(x), labels, label_smoothing=0.1)
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    close(pred.grad.numpy(), want_grad, rtol=1e-4)


def embedding(g, rng, mode, width):
    weight, indices = values(rng, (6, 5)), np.array([[4, 0, 4], [1, 4, 2]])
    tw = g.tensor(weight, requires_grad=True)
    out = g.embedding(tw, indices)  # GATHER
    close(out.numpy(), f32(weight)[indices], rtol=0)
    upstream = values(rng, (2, 3, 5))
    g.backward(g.sum_all(g.mul(out, g.tensor(upstream))))  # SCATTER
    want = np.zeros((6, 5))
    np.add.at(want, indices.reshape(-1), f32(upstream).reshape(-1, 5))
    close(tw.grad.numpy(), want, rtol=1e-6)


def matmul(g, rng, mode, width):
    m, k, n = {8: (16, 24, 32), 4: (12, 20, 28), 1: (16, 13, 24)}[width]
    a, b = values(rng, (m, k)), values(rng, (k, n))
    close(g.matmul(g.tensor(a), g.tensor(b)).numpy(), f32(a) @ f32(b), rtol=1e-5)


def linear_cross_entropy(g, rng, mode, width):
    hidden, weight = values(rng, (6, 8)), values(rng, (50, 8)) * 0.3
    labels = rng.integers(0, 50, 6)
    th, tw = g.tensor(hidden, requires_grad=True), g.tensor(weight, requires_grad=True)
    loss = g.linear_cross_entropy(th, tw, labels)  # STATS and LOSS, then GRAD for the gradients
    g.backward(loss)
    want_loss, want_logits_grad = reference.cross_entropy(f32(hidden) @ f32(weight).T, labels)
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    close(th.grad.numpy(), want_logits_grad @ f32(weight), rtol=1e-4)
    close(tw.grad.numpy(), want_logits_grad.T @ f32(hidden), rtol=1e-4)


def softmax(g, rng, mode, width):
    x = values(rng, (4, 9))
    tx = g.tensor(x, requires_grad=True)
    y = g.softmax(tx)  # FORWARD
    e = np.exp(f32(x) - f32(x).max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    close(y.numpy(), want, rtol=1e-6)
    upstream = values(rng, (4, 9))
    g.backward(g.sum_all(g.mul(y, g.tensor(upstream))))  # BACKWARD
    u = f32(upstream)
    close(tx.grad.numpy(), want * (u - (u * want).sum(axis=1, keepdims=True)), rtol=1e-5)


def optim(g, rng, mode, width):
    w0, lr = values(rng, (5, COLS[width] * 2)), 0.1
    w = g.parameter(w0)
    opt = vkloss.optim.SGD([w], lr=lr, momentum=0.9) if mode == "SGD" else vkloss.optim.Adam([w], lr=lr)
    g.backward(g.sum_all(g.mul(w, w)))
    opt.step()
    grad = 2 * f32(w0)
    step = grad if mode == "SGD" else grad / (np.abs(grad) + 1e-8)  # Adam's first step: m / sqrt(v), bias-corrected
    close(w.numpy(), f32(w0) - lr * step, rtol=1e-6)


DRIVERS = {
    "elementwise.comp": elementwise, "reductions.comp": reductions, "axes.comp": axes, "casts.comp": casts,
    "bce.comp": bce, "cross_entropy_row.comp": cross_entropy_row, "cross_entropy_chunked.comp": cross_entropy_chunked,
    "embedding.comp": embedding, "matmul.comp": matmul, "linear_cross_entropy.comp": linear_cross_entropy,
    "softmax.comp": softmax, "optim.comp": optim,
}


@pytest.mark.parametrize("source, mode, width", catalog_cells(), ids=lambda v: str(v))
def test_every_mode_at_every_access_width_matches_float64(forced_graph, rng, source, mode, width):
    assert source in DRIVERS, f"{source} has no driver here: add one, so its variants are tested"
    g = forced_graph(width, row_once=mode == "ROW_ONCE")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        DRIVERS[source](g, rng, mode, width)
    g.flush()
    ran = {(v.kernel.source, mode_of(v), width_of(v)) for v in g.dispatched if v is not None}
    assert (source, mode, width) in ran, f"the driver ran {sorted(c for c in ran if c[0] == source)}"


def test_the_cells_cover_every_family_and_width():
    cells = catalog_cells()
    assert {source for source, _, _ in cells} == set(DRIVERS)
    assert {width for source, _, width in cells if source == "elementwise.comp"} == {1, 4, 8}
    assert ("cross_entropy_row.comp", "ROW_ONCE", 4) in cells and len(cells) >= 90
