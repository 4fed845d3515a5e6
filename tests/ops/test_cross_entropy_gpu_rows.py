"""The cross-entropy row kernel that holds its row in registers and reads each logit once (MODE_ROW_ONCE), which
GPUs take for rows of up to 32,768 classes. lavapipe keeps the two-pass row kernel (its large workgroups run as
coroutines), so these tests force the choice and compare with float64 and PyTorch on both sides of each threshold."""
import dataclasses

import numpy as np
import pytest

import vkloss
from vkloss import launch, reference
from helpers import check_every_index_option, gpu_row_once as gpu_rule

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


@pytest.fixture
def gpu_like():
    with vkloss.Graph() as g:
        chosen = []
        g.engine.launch.row_once = lambda vectors: chosen.append(gpu_rule(vectors)) or chosen[-1]
        g.chosen = chosen
        yield g


def test_the_rule_on_both_sides_of_each_threshold():
    assert gpu_rule(64) == (32, 2) and gpu_rule(65) == (64, 2)
    assert gpu_rule(2048) == (1024, 2) and gpu_rule(2049) == (512, 8)
    assert gpu_rule(8192) == (1024, 8) and gpu_rule(8193) is None  # 32,768 classes, then two passes


def test_cpu_devices_keep_the_two_pass_kernel(g):
    assert g.device.type != "cpu" or g.engine.launch.row_once(100) is None


# classes: 4 * (64, 65, 2048, 2049, 8192) vec4s, and 8196 (one vector more: the two-pass kernel)
@pytest.mark.parametrize("classes", [256, 260, 8192, 8196, 32_768, 32_772])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bfloat16"])
def test_index_targets_with_every_option(gpu_like, rng, classes, dtype):
    check_every_index_option(gpu_like, rng, classes, dtype)
    assert gpu_like.chosen[-1] == gpu_rule(classes // 4)


@pytest.mark.parametrize("classes", [260, 8196])
def test_probability_targets_sum_and_none(gpu_like, rng, classes):
    g = gpu_like
    x = rng.standard_normal((4, classes)).astype(np.float32)
    soft = rng.dirichlet(np.ones(classes), 4).astype(np.float32)
    for reduction in ("sum", "none"):
        p = g.tensor(x, requires_grad=True)
        loss = g.cross_entropy_loss(p, g.tensor(soft), reduction=reduction)
        g.backward(g.sum_all(loss))
        ref_loss, ref_grad = reference.cross_entropy(x.astype(np.float64), soft.astype(np.float64),
                                                     reduction=reduction)
        np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-5)
        np.testing.assert_allclose(p.grad.numpy(), ref_grad, rtol=1e-5, atol=1e-7)


def test_in_place_nan_and_masked_rows(gpu_like, rng):
    g = gpu_like
    x = rng.standard_normal((3, 1024)).astype(np.float32)
    x[0, 10] = np.nan
    x[1, :500] = -np.inf  # masked classes
    target = np.array([3, 700, 9])
    pred = g.tensor(x, requires_grad=True)
    logits = g.mul_scalar(pred, g.tensor([1.0]))
    loss = g.cross_entropy_loss(logits, target, reduction="none", inplace_grad=True)
    values = loss.numpy()
    g.backward(g.sum_all(loss))
    with np.errstate(invalid="ignore"):  # the reference's 0 * -inf on the masked row, which is checked apart
        ref_loss, ref_grad = reference.cross_entropy(x.astype(np.float64), target, reduction="none")
    assert np.isnan(values[0]) and np.all(np.isnan(pred.grad.numpy()[0]))
    np.testing.assert_allclose(values[2], ref_loss[2], rtol=1e-5)
    np.testing.assert_allclose(pred.grad.numpy()[2], ref_grad[2], rtol=1e-5, atol=1e-8)
    kept = x[1, 500:].astype(np.float64)  # the masked row: its unmasked classes alone, exactly
    assert values[1] == pytest.approx(np.log(np.exp(kept - kept.max()).sum()) + kept.max() - x[1, 700], rel=1e-5)
    assert np.all(pred.grad.numpy()[1, :500] == 0)
    if torch is not None:
        xt = torch.tensor(x[1:2], dtype=torch.float64)
        assert values[1] == pytest.approx(F.cross_entropy(xt, torch.tensor(target[1:2])).item(), rel=1e-5)


def test_the_same_row_gives_the_same_bits(gpu_like, rng):
    g = gpu_like
    x = rng.standard_normal((5, 8000)).astype(np.float32) * 10
    runs = []
    for _ in range(3):
        p = g.tensor(x, requires_grad=True)
        loss = g.cross_entropy_loss(p, np.arange(5))
        g.backward(loss)
        runs.append((loss.numpy().tobytes(), p.grad.numpy().tobytes()))
    assert runs[0] == runs[1] == runs[2]


# The two-pass row kernel (MODE_ROW) keeps rows longer than MODE_ROW_ONCE holds, and rows whose length is not a
# multiple of 4. On GPUs engine.row_workgroup widens its workgroup for long rows, so that a few rows still keep
# many loads in flight; lavapipe keeps its narrow workgroups, so these tests force the GPU's choice.
def gpu_limits(g, **limits):
    """The launch policy of a GPU's device description (limits as given, else an H100's) beside g's device."""
    return launch.LaunchPolicy(dataclasses.replace(g.device, **{
        "type": "discrete", "max_workgroup_invocations": 1024, "max_workgroup_size": 1024,
        "max_shared_memory": 49152, **limits}))


def test_gpu_row_workgroup_widens_for_long_rows_within_the_limits():
    with vkloss.Graph() as g:
        e = gpu_limits(g)
        per = launch.LONG_ROW_PER_INVOCATION
        assert e.row_workgroup(per * 1024 - 1) == launch.WORKGROUP and e.row_workgroup(per * 1024) == 1024
        assert gpu_limits(g, max_shared_memory=16384).row_workgroup(per * 1024) == 512  # a vec4 tree of 1,024: 16 KiB + 16
        assert gpu_limits(g, max_workgroup_size=512).row_workgroup(per * 512) == 512
        assert gpu_limits(g, max_workgroup_invocations=256).row_workgroup(10 ** 6) == launch.WORKGROUP


# scalar and vec4 rows in workgroups of 1,024 (16-bit rows whose length is not a multiple of 4 go to the chunked kernels)
@pytest.mark.parametrize("classes, dtype", [(8191, np.float32), (32_772, np.float32), (32_772, np.float16),
                                            (40_001, np.float32)])
def test_two_pass_rows_in_the_widest_workgroup(rng, classes, dtype):
    with vkloss.Graph() as g:
        widths = []
        g.engine.launch.row_workgroup = lambda items=0: widths.append(items) or 1024
        x = check_every_index_option(g, rng, classes, dtype)
        assert widths == [classes // 4 if classes % 4 == 0 else classes]
        soft = rng.dirichlet(np.ones(classes), 3).astype(np.float32)  # probability targets, the same kernel
        p32 = g.tensor(x, requires_grad=True)
        loss = g.cross_entropy_loss(p32, g.tensor(soft))
        g.backward(loss)
        ref_loss, ref_grad = reference.cross_entropy(x.astype(np.float64), soft.astype(np.float64))
        assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
        np.testing.assert_allclose(p32.grad.numpy(), ref_grad, rtol=1e-5, atol=1e-5 * np.abs(ref_grad).max())


@pytest.mark.parametrize("classes", [100, 4096])
def test_softcap_and_z_loss_in_registers(gpu_like, classes):
    from helpers import liger_reference

    g = gpu_like
    rng = np.random.default_rng(classes)
    logits = (rng.standard_normal((6, classes)) * 4).astype(np.float32)
    labels = rng.integers(0, classes, 6)
    labels[2] = -100
    pred = g.tensor(logits, requires_grad=True)
    loss, z_loss = g.cross_entropy_loss(pred, labels, softcap=3.0, lse_square_scale=1e-3, label_smoothing=0.1,
                                        return_z_loss=True)
    g.backward(loss)
    assert g.chosen and g.chosen[-1] is not None  # the row held in registers, with SOFTCAP specialized on
    want_loss, want_z, want_grad = liger_reference(logits, labels, 1e-3, 3.0, 0.1)
    assert loss.item() == pytest.approx(want_loss, rel=1e-6)
    assert z_loss.item() == pytest.approx(want_z, rel=1e-6)
    np.testing.assert_allclose(pred.grad.numpy(), want_grad, rtol=1e-4, atol=1e-5 * np.abs(want_grad).max())
