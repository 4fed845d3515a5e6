"""Optimizers update up to GROUP parameters a dispatch, each at its own size (whole accesses, then a tail of single
floats) and with its own step count, as PyTorch's foreach updates do."""
import dataclasses

import numpy as np
import pytest

import vkloss
from vkloss import launch, optim

try:
    import torch
except ImportError:
    torch = None

SHAPES = [(64, 64), (64,), (10, 64), (10,), (3, 5), (9,), (7,), (13, 2), (5,), (1,)]  # ten: two groups


def train_both(make_vk, make_torch, rng, skip=lambda step, index: False, steps=5):
    arrays = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    with vkloss.Graph() as g:
        params = [g.parameter(a) for a in arrays]
        reference = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in arrays]
        opt, topt = make_vk(params), make_torch(reference)
        for step in range(steps):
            grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
            opt.zero_grad()
            topt.zero_grad()
            loss = None
            for index, (param, grad) in enumerate(zip(params, grads)):
                if not skip(step, index):
                    term = g.sum_all(g.mul(param, g.tensor(grad)))  # d/dparam = grad
                    loss = term if loss is None else g.add(loss, term)
                    reference[index].grad = torch.tensor(grad.astype(np.float64))
            g.backward(loss)
            opt.step()
            topt.step()
        for mine, theirs in zip(params, reference):
            np.testing.assert_allclose(mine.numpy(), theirs.detach().numpy(), rtol=2e-6, atol=2e-6)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("accesses", [None, 1, 3])  # this device's choice; a GPU's; one that divides no size
def test_ten_parameters_of_odd_sizes_match_pytorch(rng, kind, accesses, monkeypatch):
    if accesses is not None:  # accesses an invocation moves in turn (LaunchPolicy.update_accesses)
        monkeypatch.setattr(launch.LaunchPolicy, "update_accesses", lambda self: accesses)
    if kind == "sgd":
        train_both(lambda p: optim.SGD(p, lr=0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                   rng)
    else:
        train_both(lambda p: optim.Adam(p, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01), rng)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
def test_parameters_without_a_gradient_keep_their_own_step_counts(rng):
    # parameters 3 and 8 get no gradient in the first two steps, 0 none in the last: Adam's bias corrections follow
    skip = lambda step, index: (step < 2 and index in (3, 8)) or (step == 4 and index == 0)  # noqa: E731
    train_both(lambda p: optim.Adam(p, lr=0.05, betas=(0.8, 0.99)),
               lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.99)), rng, skip=skip)


@pytest.mark.parametrize("more", [-1, 0, 1])  # one parameter, a whole group, a group and one
def test_a_step_is_one_dispatch_per_group(rng, more):
    with vkloss.Graph() as g:
        group = optim.group_size(g.device, "ADAM")  # GROUP, or fewer where the device binds fewer buffers
        count = 1 if more < 0 else group + more
        params = [g.parameter(rng.standard_normal(3 + i)) for i in range(count)]
        opt = optim.Adam(params, lr=0.1)
        loss = g.sum_all(params[0])
        for p in params[1:]:
            loss = g.add(loss, g.sum_all(p))
        g.backward(loss)
        g.flush()
        before = g.stats["dispatches"]
        opt.step()
        g.flush()
        assert g.stats["dispatches"] - before == (2 if more > 0 else 1)


def test_a_device_that_binds_few_buffers_takes_smaller_groups(g):
    assert optim.group_size(dataclasses.replace(g.device, max_storage_buffers=1 << 20), "ADAM") == optim.GROUP
    assert optim.group_size(dataclasses.replace(g.device, max_storage_buffers=14), "ADAM") == 3
    assert optim.group_size(dataclasses.replace(g.device, max_storage_buffers=4), "SGD") == 1
    with pytest.raises(RuntimeError, match="needs 6"):
        optim.group_size(dataclasses.replace(g.device, max_storage_buffers=5), "ADAM")
