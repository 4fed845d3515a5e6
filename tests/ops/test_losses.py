"""MSE and L1 composed from primitives: values and gradients against float64 numpy (and PyTorch if installed)."""
import numpy as np
import pytest

from helpers import f32

SHAPES = [(1,), (33,), (4, 5), (2, 3, 7)]


def run_loss(g, name, pred, target):
    tp, tt = g.tensor(pred, requires_grad=True), g.tensor(target, requires_grad=True)
    loss = getattr(g, name)(tp, tt)
    assert loss.shape == (1,)
    g.backward(loss)
    return loss.item(), tp.grad.numpy(), tt.grad.numpy()


@pytest.mark.parametrize("shape", SHAPES)
def test_mse_loss_and_gradients(g, rng, shape):
    p, t = f32(rng.standard_normal(shape)), f32(rng.standard_normal(shape))
    value, gp, gt = run_loss(g, "mse_loss", p, t)
    d = p - t
    assert value == pytest.approx(np.mean(d * d), rel=1e-5)
    np.testing.assert_allclose(gp, 2 * d / d.size, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(gt, -2 * d / d.size, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
def test_l1_loss_and_gradients(g, rng, shape):
    p, t = f32(rng.standard_normal(shape)), f32(rng.standard_normal(shape))
    value, gp, gt = run_loss(g, "l1_loss", p, t)
    d = p - t
    assert value == pytest.approx(np.mean(np.abs(d)), rel=1e-5)
    np.testing.assert_allclose(gp, np.sign(d) / d.size, rtol=1e-6)
    np.testing.assert_allclose(gt, -np.sign(d) / d.size, rtol=1e-6)


def test_l1_gradient_is_zero_where_pred_equals_target(g):
    p = np.array([1.0, 2.0, 3.0, -4.0], np.float32)
    t = np.array([1.0, 0.0, 3.0, 4.0], np.float32)
    value, gp, _ = run_loss(g, "l1_loss", p, t)
    assert value == pytest.approx(10.0 / 4)
    np.testing.assert_array_equal(gp, np.array([0.0, 0.25, 0.0, -0.25], np.float32))


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_loss_shape_mismatch_names_both_shapes(g, name):
    with pytest.raises(ValueError, match=rf"{name}.*\(3, 4\).*\(4, 3\)"):
        getattr(g, name)(g.tensor(np.ones((3, 4))), g.tensor(np.ones((4, 3))))


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_matches_pytorch_when_installed(g, rng, name):
    torch = pytest.importorskip("torch")
    p, t = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((6, 5)).astype(np.float32)
    t[0, 0] = p[0, 0]  # a zero difference: the L1 convention
    value, gp, _ = run_loss(g, name, p, t)
    tp = torch.tensor(p, requires_grad=True)
    ref = getattr(torch.nn.functional, name)(tp, torch.tensor(t))
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=1e-5)
    np.testing.assert_allclose(gp, tp.grad.numpy(), rtol=1e-5, atol=1e-8)
