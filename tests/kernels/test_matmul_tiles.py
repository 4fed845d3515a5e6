"""The shared-memory tiled matmul (64 x 64 tiles of the output per workgroup of 256, 16-deep slices of k) that GPUs
use. lavapipe keeps register blocks (its 256-wide workgroups run as coroutines), so these tests force the tiles and
check every operand layout, offset and k slice against float64, on both sides of each tile boundary."""
import dataclasses

import numpy as np
import pytest

import vkloss
from vkloss import launch
from vkloss.ops import linear_cross_entropy as linear, matmul
from helpers import f32


@pytest.fixture(params=[True, False], ids=["tiles", "register blocks"])
def tiles(request, monkeypatch):
    monkeypatch.setattr(matmul, "use_tiles", lambda device: request.param)
    return request.param


def test_gpus_take_tiles_and_cpus_register_blocks(g):
    assert matmul.use_tiles(g.device) == (g.device.type != "cpu")


def test_register_blocks_run_in_workgroups_of_one_simd_batch_on_cpus(g, rng):
    """lavapipe runs every SIMD batch of a workgroup through the kernel, the ones past the work too: a small product
    in a workgroup of 256 cost it ten times the product (docs/performance.md). GPUs keep 256."""
    gpu = launch.LaunchPolicy(dataclasses.replace(g.device, type="discrete", subgroup_size=32))
    assert gpu.block_workgroup() == launch.WORKGROUP
    cpu = launch.LaunchPolicy(dataclasses.replace(g.device, type="cpu", subgroup_size=8))
    assert cpu.block_workgroup() == 8
    if g.device.type != "cpu":
        pytest.skip("the register-block kernel runs on CPU implementations")
    workgroups = []
    launch_of = g.engine.algorithms.launch
    g.engine.algorithms.launch = lambda variant, grid, workgroup, *rest: (
        workgroups.append((variant.path.stem, workgroup)) or launch_of(variant, grid, workgroup, *rest))
    a, b = rng.standard_normal((37, 19)), rng.standard_normal((19, 45))  # 5 x 6 blocks of 8 x 8 over 4 workgroups
    np.testing.assert_allclose(g.matmul(g.tensor(a), g.tensor(b)).numpy(), f32(a) @ f32(b), rtol=1e-5, atol=1e-5)
    assert [w for name, w in workgroups if name == "matmul"] == [g.engine.launch.simd_batch()]


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (3, 5, 7), (64, 16, 64), (65, 17, 63), (130, 33, 129)])
def test_products_and_their_gradients(g, rng, tiles, m, k, n):
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    upstream = rng.standard_normal((m, n))
    A, B = g.tensor(a, requires_grad=True), g.tensor(b, requires_grad=True)
    out = g.matmul(A, B)
    g.backward(g.sum_all(g.mul(out, g.tensor(upstream))))  # matmul_transposed for both gradients
    a64, b64 = f32(a), f32(b)
    np.testing.assert_allclose(out.numpy(), a64 @ b64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(A.grad.numpy(), f32(upstream) @ b64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(B.grad.numpy(), a64.T @ f32(upstream), rtol=1e-5, atol=1e-5)


def test_k_sliced_across_dispatches(g, rng, tiles, monkeypatch):
    monkeypatch.setattr(matmul, "K_SLICE", 40)  # 3 slices, each added to the last; not a multiple of 16
    a, b = rng.standard_normal((70, 100)), rng.standard_normal((100, 66))
    np.testing.assert_allclose(g.matmul(g.tensor(a), g.tensor(b)).numpy(), f32(a) @ f32(b), rtol=1e-5, atol=1e-5)


def test_linear_cross_entropy_with_offsets_into_chunks(g, rng, tiles, monkeypatch):
    monkeypatch.setattr(linear, "WORKSPACE_BYTES", 67 * 4 * 70)  # 70 classes a chunk: offsets off tile boundaries
    rows, features, classes = 67, 20, 301
    hidden, weight = rng.standard_normal((rows, features)), rng.standard_normal((classes, features)) * 0.3
    bias, target = rng.standard_normal(classes), rng.integers(0, classes, rows)
    h, w, b = g.tensor(hidden, requires_grad=True), g.tensor(weight, requires_grad=True), g.tensor(bias,
                                                                                                requires_grad=True)
    loss = g.linear_cross_entropy(h, w, target, b)
    g.backward(loss)
    z = f32(hidden) @ f32(weight).T + f32(bias)
    log_softmax = z - z.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    one_hot = np.eye(classes)[target]
    grad_z = (np.exp(log_softmax) - one_hot) / rows
    assert loss.item() == pytest.approx(-(one_hot * log_softmax).sum() / rows, rel=1e-5)
    np.testing.assert_allclose(h.grad.numpy(), grad_z @ f32(weight), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(w.grad.numpy(), grad_z.T @ f32(hidden), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b.grad.numpy(), grad_z.sum(0), rtol=1e-4, atol=1e-6)


def test_a_training_step_on_tiles_matches_register_blocks(rng, monkeypatch):
    x, w = rng.standard_normal((100, 70)), rng.standard_normal((70, 90))
    results = []
    for tiled in (False, True):
        monkeypatch.setattr(matmul, "use_tiles", lambda device, tiled=tiled: tiled)
        with vkloss.Graph() as g:
            results.append(g.matmul(g.tensor(x), g.tensor(w)).numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-5)
