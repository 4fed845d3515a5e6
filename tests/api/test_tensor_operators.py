"""Tensor operators and methods, as a PyTorch user writes them: the same values and gradients as the ops they are
sugar for, against float64."""
import numpy as np
import pytest

from helpers import f32

try:
    import torch
except ImportError:
    torch = None


def expression(a, b, w):
    x = (a + b) * 2 - b / a + 1.5 - (-a) * 0.5 + 3 / b - 1
    y = (x @ w).relu().sum(dim=0) + x.exp().log().tanh().mean()
    z = (x.T.reshape(6) * 2.0).sigmoid().sum() + x.mean(dim=1, keepdim=True).sum()
    return y.sum() + z + x.softmax(dim=-1).log_softmax(dim=-1).sum() * 0.25


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
def test_an_expression_of_operators_matches_pytorch_with_its_gradients(g, rng):
    arrays = [rng.uniform(1, 4, (3, 2)), rng.uniform(1, 4, (3, 2)), rng.standard_normal((2, 4))]
    mine = [g.tensor(a, requires_grad=True) for a in arrays]
    theirs = [torch.tensor(f32(a), requires_grad=True) for a in arrays]
    out, ref = expression(*mine), expression(*theirs)
    out.backward()
    ref.backward()
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)
    for m, t in zip(mine, theirs):
        np.testing.assert_allclose(m.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_numbers_on_either_side_and_numpy_scalars(g):
    a = g.tensor([1.0, 2.0, 4.0])
    np.testing.assert_allclose((2 * a).numpy(), [2, 4, 8])
    np.testing.assert_allclose((a * np.float32(0.5)).numpy(), [0.5, 1, 2])
    np.testing.assert_allclose((np.float64(3) - a).numpy(), [2, 1, -1])
    np.testing.assert_allclose((1 / a).numpy(), [1, 0.5, 0.25])
    np.testing.assert_allclose((a + 1).numpy(), [2, 3, 5])
    np.testing.assert_allclose((-a).numpy(), [-1, -2, -4])


def test_a_one_element_tensor_broadcasts_as_in_pytorch(g):
    a, s = g.tensor([[1.0, 2.0], [3.0, 4.0]]), g.tensor([10.0])
    np.testing.assert_allclose((a + s).numpy(), [[11, 12], [13, 14]])
    np.testing.assert_allclose((s - a).numpy(), [[9, 8], [7, 6]])
    np.testing.assert_allclose((a * s).numpy(), [[10, 20], [30, 40]])
    np.testing.assert_allclose((a / s).numpy(), [[0.1, 0.2], [0.3, 0.4]], rtol=1e-6)


def test_reshape_takes_sizes_or_a_tuple_and_t_transposes(g):
    a = g.tensor(np.arange(6.0).reshape(2, 3))
    assert a.reshape(3, 2).shape == a.reshape((3, 2)).shape == (3, 2)
    np.testing.assert_array_equal(a.T.numpy(), np.arange(6.0).reshape(2, 3).T)
    with pytest.raises(ValueError, match="at most 2 dimensions"):
        a.reshape(1, 2, 3).T


def test_mismatched_shapes_say_both(g):
    with pytest.raises(ValueError, match=r"\(2,\) and \(3,\)"):
        g.tensor([1.0, 2.0]) - g.tensor([1.0, 2.0, 3.0])
