"""Fused cross-entropy and binary cross-entropy: loss and gradient against float64 numpy and PyTorch, edge cases,
every size class, determinism and errors."""
import numpy as np
import pytest

import vkloss
from vkloss import launch
from helpers import f32

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the numpy references still run
    torch = None


# ---- float64 references ----------------------------------------------------------------------------------------
def ce_reference(p, t):
    p, t = f32(p), f32(t)
    m = p.max(axis=1, keepdims=True)
    log_softmax = p - m - np.log(np.exp(p - m).sum(axis=1, keepdims=True))
    loss = -(t * log_softmax).sum(axis=1).mean()
    grad = (np.exp(log_softmax) * t.sum(axis=1, keepdims=True) - t) / p.shape[0]
    return loss, grad


def bce_reference(p, y):
    p, y = f32(p), f32(y)
    with np.errstate(divide="ignore"):
        terms = -(y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log1p(-p), -100))
    return terms.mean(), (p - y) / np.maximum(p * (1 - p), 1e-12) / p.size


def torch_reference(name, p, t):
    tp = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    fn = F.cross_entropy if name == "cross_entropy_loss" else F.binary_cross_entropy
    loss = fn(tp, torch.tensor(t, dtype=torch.float64))
    loss.backward()
    return loss.item(), tp.grad.numpy()


def run(g, name, p, t):
    tp = g.tensor(p, requires_grad=True)
    loss = getattr(g, name)(tp, g.tensor(t))
    assert loss.shape == (1,)
    g.backward(loss)
    return loss.item(), tp.grad.numpy()


def assert_matches(got, want, loss_rtol=1e-5, grad_rtol=1e-4):
    (loss, grad), (ref_loss, ref_grad) = got, want
    assert loss == pytest.approx(ref_loss, rel=loss_rtol, abs=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=grad_rtol, atol=1e-5 * np.abs(ref_grad).max() + 1e-30)


def one_hot(rng, rows, classes):
    t = np.zeros((rows, classes), np.float32)
    t[np.arange(rows), rng.integers(0, classes, rows)] = 1
    return t


# Every kernel path: one invocation per row (<= 64 classes), one workgroup per row (vec4 when classes % 4 == 0, else
# scalar), and rows split in chunks (> 2^18 classes).
CE_SHAPES = [(1, 1), (1, 5), (4, 10), (3, 64), (3, 65), (8, 100), (5, 16385), (3, 40000), (2, 200_003), (70_000, 3),
             (3, 300_001), (2, 300_000), (1, (1 << 18) - 1), (1, 1 << 18)]  # the longest rows one workgroup takes


# ---- cross-entropy ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("targets", ["one-hot", "soft"])
def test_cross_entropy_matches_float64(g, rng, shape, targets):
    p = (rng.standard_normal(shape) * 3).astype(np.float32)
    t = one_hot(rng, *shape) if targets == "one-hot" else rng.dirichlet(np.ones(shape[1]), shape[0]).astype(np.float32)
    got = run(g, "cross_entropy_loss", p, t)
    assert_matches(got, ce_reference(p, t))
    if torch is not None:
        assert_matches(got, torch_reference("cross_entropy_loss", p, t))


@pytest.mark.parametrize("classes", [7, 1000])  # the one-invocation-per-row path and the chunked path
def test_cross_entropy_edge_cases_match_pytorch(g, rng, classes):
    rows = 5
    p = rng.standard_normal((rows, classes)).astype(np.float32)
    p[0] *= 1e4  # logits of magnitude 1e4
    p[1] = 0.75  # a row of equal logits
    p[2] = -1e4 * rng.random(classes)
    t = rng.random((rows, classes)).astype(np.float32) * 2  # rows need not sum to 1
    t[3] = 0  # a row of all-zero targets
    got = run(g, "cross_entropy_loss", p, t)
    assert np.isfinite(got[0]) and np.all(np.isfinite(got[1]))
    np.testing.assert_array_equal(got[1][3], np.zeros(classes, np.float32))  # zero target row: zero gradient
    assert_matches(got, ce_reference(p, t))
    if torch is not None:
        assert_matches(got, torch_reference("cross_entropy_loss", p, t))


@pytest.mark.parametrize("classes", [7, 1000])
def test_cross_entropy_nan_logit_gives_nan_loss(g, rng, classes):
    p = rng.standard_normal((3, classes)).astype(np.float32)
    p[1, classes // 2] = np.nan
    loss = g.cross_entropy_loss(g.tensor(p), g.tensor(one_hot(rng, 3, classes)))
    assert np.isnan(loss.item())
    if torch is not None:
        assert np.isnan(F.cross_entropy(torch.tensor(p), torch.tensor(one_hot(rng, 3, classes))).item())


@pytest.mark.parametrize("shape", [(1 << 20, 4), (2, 1 << 20)])
def test_cross_entropy_at_a_million_rows_or_classes_checks_every_element(g, rng, shape):
    p = rng.standard_normal(shape).astype(np.float32)
    t = one_hot(rng, *shape)
    assert_matches(run(g, "cross_entropy_loss", p, t), ce_reference(p, t))


def test_cross_entropy_is_bit_identical_run_to_run(g, rng):
    p, t = rng.standard_normal((64, 5000)).astype(np.float32), rng.random((64, 5000)).astype(np.float32)
    results = {tuple(x.tobytes() for x in (np.float32(run(g, "cross_entropy_loss", p, t)[0]),
                                            run(g, "cross_entropy_loss", p, t)[1])) for _ in range(3)}
    assert len(results) == 1


@pytest.mark.parametrize("shape", [(8, 10), (4, 300), (2, 300_000)])  # one per kernel path
def test_cross_entropy_allocates_no_gradient_when_pred_needs_none(rng, shape):
    created = []
    for requires_grad in (False, True):
        with vkloss.Graph() as g:  # fresh, so every buffer is counted
            pred = g.tensor(rng.standard_normal(shape), requires_grad=requires_grad)
            before = g.stats["buffers_created"]
            loss = g.cross_entropy_loss(pred, g.tensor(one_hot(rng, *shape)))
            loss.item()
            created.append(g.stats["buffers_created"] - before)
            assert (loss.node is not None) == requires_grad
    assert created[1] == created[0] + 1  # the gradient buffer, and nothing else


def test_cross_entropy_backward_scales_by_the_upstream_gradient(g, rng):
    p, t = rng.standard_normal((6, 80)).astype(np.float32), one_hot(rng, 6, 80)
    tp = g.tensor(p, requires_grad=True)
    g.backward(g.mul(g.cross_entropy_loss(tp, g.tensor(t)), g.tensor([2.5])))
    np.testing.assert_allclose(tp.grad.numpy(), 2.5 * ce_reference(p, t)[1], rtol=1e-4, atol=1e-8)


def test_cross_entropy_adds_up_with_another_loss(g, rng):
    p, t = rng.standard_normal((6, 10)).astype(np.float32), one_hot(rng, 6, 10)
    tp = g.tensor(p, requires_grad=True)
    loss = g.add(g.cross_entropy_loss(tp, g.tensor(t)), g.mse_loss(tp, g.tensor(t)))
    g.backward(loss)
    np.testing.assert_allclose(tp.grad.numpy(), ce_reference(p, t)[1] + 2 * (f32(p) - t) / p.size, rtol=1e-4,
                               atol=1e-8)


@pytest.mark.parametrize("pred_shape, target_shape", [((10,), (10,)), ((2, 3, 4), (2, 3, 4)), ((4, 5), (5, 4)),
                                                      ((4, 5), (4, 6))])
def test_cross_entropy_shape_errors_name_both_shapes(g, pred_shape, target_shape):
    with pytest.raises(ValueError, match=r"cross_entropy_loss.*" + r".*".join(
            str(s).replace("(", r"\(").replace(")", r"\)") for s in (pred_shape, target_shape))):
        g.cross_entropy_loss(g.tensor(np.ones(pred_shape)), g.tensor(np.ones(target_shape)))


def test_fused_losses_refuse_a_target_that_requires_grad(g):
    t = g.tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match=r"argument 2 \(shape \(2, 3\)\) must not require a gradient"):
        g.cross_entropy_loss(g.tensor(np.ones((2, 3))), t)


# ---- binary cross-entropy --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1,), (7, 3), (2, 3, 4), (100_003,)])
def test_bce_matches_float64(g, rng, shape):
    p = rng.uniform(0.001, 0.999, shape).astype(np.float32)
    y = rng.random(shape).astype(np.float32)
    y.reshape(-1)[::3] = np.round(y.reshape(-1)[::3])  # hard labels too
    got = run(g, "bce_loss", p, y)
    assert_matches(got, bce_reference(p, y))
    if torch is not None:
        assert_matches(got, torch_reference("bce_loss", p, y))


def test_bce_at_exact_zero_and_one_is_finite_like_pytorch(g):
    p = np.array([0.0, 1.0, 0.0, 1.0, 1e-30, 0.5], np.float32)
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.5], np.float32)
    got = run(g, "bce_loss", p, y)
    assert got[0] == pytest.approx((100 + 100 + 0 + 0 + 69.0776 + np.log(2)) / 6, rel=1e-5)
    assert_matches(got, bce_reference(p, y))
    if torch is not None:
        assert_matches(got, torch_reference("bce_loss", p, y))


def test_bce_through_sigmoid_matches_pytorch(g, rng):
    x, y = (rng.standard_normal((16, 5)) * 4).astype(np.float32), (rng.random((16, 5)) > 0.5).astype(np.float32)
    tx = g.tensor(x, requires_grad=True)
    loss = g.bce_loss(g.sigmoid(tx), g.tensor(y))
    g.backward(loss)
    s = 1 / (1 + np.exp(-f32(x)))
    want = (s - y) / x.size  # d/dx of bce(sigmoid(x))
    np.testing.assert_allclose(tx.grad.numpy(), want, rtol=1e-3, atol=1e-7)
    assert loss.item() == pytest.approx(bce_reference(s, y)[0], rel=1e-5)


@pytest.mark.parametrize("bad, count", [([1.5], 1), ([-0.1, 2.0], 2), ([np.nan], 1)])
def test_bce_out_of_range_pred_raises_with_the_count_and_graph_recovers(g, bad, count):
    p = np.array([0.5] * 5 + bad, np.float32)
    with pytest.raises(ValueError, match=rf"bce_loss: {count} values.*outside \[0, 1\]"):
        g.bce_loss(g.tensor(p), g.tensor(np.ones_like(p))).item()
    assert g.bce_loss(g.tensor([0.5]), g.tensor([1.0])).item() == pytest.approx(np.log(2), rel=1e-6)


def test_bce_out_of_range_labels_are_found_when_the_gradient_is_read(g):
    tp = g.tensor(np.full(4, 0.5, np.float32), requires_grad=True)
    loss = g.bce_loss(tp, g.tensor([0.0, 1.0, 3.0, -1.0]))
    g.backward(loss)
    with pytest.raises(ValueError, match="bce_loss: 2 values"):
        tp.grad.numpy()


def test_bce_range_check_adds_no_submission(g, rng):
    p, y = g.tensor(rng.random(1000)), g.tensor(rng.random(1000))
    g.flush()
    before = g.stats["submissions"]
    g.bce_loss(p, y).item()
    assert g.stats["submissions"] - before == 1


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_of_one_workgroup_is_one_dispatch_with_its_check(g, rng, reduction):
    """A single workgroup's sums are the loss and the count of bad values: no tree sum runs after the kernel."""
    p, y = rng.uniform(0.01, 0.99, 5).astype(np.float32), rng.random(5).astype(np.float32)
    P, Y = g.tensor(p), g.tensor(y)
    g.flush()
    before = g.stats["dispatches"]
    loss = g.bce_loss(P, Y, reduction=reduction).item()
    assert g.stats["dispatches"] - before == 1
    terms = -(f32(y) * np.log(f32(p)) + (1 - f32(y)) * np.log(1 - f32(p)))
    assert loss == pytest.approx(terms.mean() if reduction == "mean" else terms.sum(), rel=1e-6)
    y[3] = 3.0
    with pytest.raises(ValueError, match="bce_loss: 1 values"):
        g.bce_loss(P, g.tensor(y), reduction=reduction).item()


@pytest.mark.parametrize("rows", [1, 5, 64, 256])
@pytest.mark.parametrize("target", ["probabilities", "indices"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_of_one_workgroup_is_one_dispatch_with_its_check(g, rng, rows, target, reduction):
    """Rows of few classes that one workgroup holds: it sums the row losses and the bad-index flags itself, and no
    tree sum runs after the kernel (the main job's digits step: a dispatch fewer)."""
    classes = 10
    x = rng.normal(size=(rows, classes)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    y = np.eye(classes, dtype=np.float32)[labels] if target == "probabilities" else labels.astype(np.int32)
    X, Y = g.tensor(x, requires_grad=True), g.tensor(y, dtype=np.int32 if target == "indices" else None)
    g.flush()
    before = g.stats["dispatches"]
    # class indices with ignore_index=None: no normalizer pass, so the check is all that comes with the loss
    options = {"ignore_index": None} if target == "indices" else {}
    loss = g.cross_entropy_loss(X, Y, reduction=reduction, **options)
    value = loss.item()
    assert g.stats["dispatches"] - before == 1
    logp = f32(x) - np.log(np.exp(f32(x)).sum(axis=1, keepdims=True))
    terms = -logp[np.arange(rows), labels]
    assert value == pytest.approx(terms.mean() if reduction == "mean" else terms.sum(), rel=2e-6)
    g.backward(loss)
    softmax = np.exp(logp)
    expected = (softmax - np.eye(classes)[labels]) / (rows if reduction == "mean" else 1)
    np.testing.assert_allclose(X.grad.numpy(), expected, rtol=1e-5, atol=1e-7)
    if target == "indices":
        y[rows // 2] = 42
        with pytest.raises(ValueError, match=r"cross_entropy_loss: 1 class indices of target"):
            g.cross_entropy_loss(X, g.tensor(y, dtype=np.int32), reduction=reduction, **options).item()
        assert g.cross_entropy_loss(X, Y, reduction=reduction, **options).item() == pytest.approx(value, rel=1e-6)


def test_bce_shape_mismatch_names_both_shapes(g):
    with pytest.raises(ValueError, match=r"bce_loss.*\(2, 3\).*\(3, 2\)"):
        g.bce_loss(g.tensor(np.full((2, 3), 0.5)), g.tensor(np.ones((3, 2))))


def test_bce_on_five_million_elements_checks_every_gradient(g, rng):
    n = 5_000_003
    p, y = rng.uniform(0.01, 0.99, n).astype(np.float32), rng.random(n).astype(np.float32)
    assert_matches(run(g, "bce_loss", p, y), bce_reference(p, y))


def test_fused_losses_on_a_two_dimensional_grid(rng):
    with vkloss.Graph() as g:
        g.engine.launch.max_groups_x = 3  # shrink the limit the engine sizes dispatches by
        p, t = rng.standard_normal((40, 300)).astype(np.float32), one_hot(rng, 40, 300)
        assert_matches(run(g, "cross_entropy_loss", p, t), ce_reference(p, t))
        p, t = rng.standard_normal((5000, 3)).astype(np.float32), one_hot(rng, 5000, 3)
        assert_matches(run(g, "cross_entropy_loss", p, t), ce_reference(p, t))
        p, t = rng.standard_normal((2, 300_001)).astype(np.float32), one_hot(rng, 2, 300_001)  # chunked rows
        assert_matches(run(g, "cross_entropy_loss", p, t), ce_reference(p, t))
        p, y = rng.uniform(0.01, 0.99, 20_000).astype(np.float32), rng.random(20_000).astype(np.float32)
        assert_matches(run(g, "bce_loss", p, y), bce_reference(p, y))


@pytest.mark.parametrize("workgroup", [4, 8, 32, 256])  # GPUs use 256; lavapipe its SIMD width
def test_every_path_at_every_workgroup_size(rng, workgroup):
    with vkloss.Graph() as g:
        def row_workgroup(items=0):  # the engine's rule against lavapipe's loop limit, from `workgroup` up
            size = workgroup
            while size < launch.WORKGROUP and items > size * launch.MAX_LOOP_PER_PASS:
                size *= 2
            return size

        g.engine.launch.row_workgroup = row_workgroup
        g.engine.launch.reduction_workgroup = lambda: workgroup
        for shape in [(9, 5), (6, 999), (5, 4000), (3, 1001), (2, 300_001)]:
            p, t = rng.standard_normal(shape).astype(np.float32), rng.random(shape).astype(np.float32)
            assert_matches(run(g, "cross_entropy_loss", p, t), ce_reference(p, t))
        for n in (7, 4096, 70_001):
            p, y = rng.uniform(0.01, 0.99, n).astype(np.float32), rng.random(n).astype(np.float32)
            assert_matches(run(g, "bce_loss", p, y), bce_reference(p, y))
        x = rng.standard_normal(100_003).astype(np.float32)
        assert g.mean_all(g.tensor(x)).item() == pytest.approx(f32(x).mean(), abs=1e-6 * float(np.abs(x).mean()))
