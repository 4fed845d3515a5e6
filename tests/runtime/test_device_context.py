"""The engine on real GPUs' terms: one device context per process, memory that follows the device, replayed and
asynchronous steps, and no validation layer unless asked for."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import vkloss
from vkloss import runtime

from helpers import HANG_GUARD, f32


def test_one_device_context_however_many_graphs():
    # NVIDIA's driver crashes within 20 to 40 kp.Manager lifetimes; a Graph no longer makes one.
    first = vkloss.Graph()
    for _ in range(200):
        with vkloss.Graph() as g:
            assert g.engine.context is first.engine.context
            assert g.neg(g.tensor([2.0])).item() == -2.0
    first.close()
    assert runtime.contexts_made() == 1


def test_everything_that_holds_device_state_refuses_use_after_close():
    with vkloss.Graph() as g:
        w = g.parameter(np.ones(3))
        opt = vkloss.optim.Adam([w])
        g.backward(g.sum_all(w))
    with pytest.raises(RuntimeError, match="closed"):
        opt.step()
    with pytest.raises(RuntimeError, match="closed"):
        vkloss.optim.SGD([w], lr=0.1)
    with pytest.raises(RuntimeError, match="closed"):
        w.numpy()
    with pytest.raises(RuntimeError, match="closed"):
        g.tensor([1.0])


def test_a_repeated_step_past_the_old_pool_cap_creates_nothing_after_step_two(rng):
    # Three 128 MB buffers released per step: the old 256 MiB pool evicted and re-created them every step.
    rows, classes = 1000, 32000
    with vkloss.Graph() as g:
        x = g.parameter(rng.standard_normal((rows, classes), dtype=np.float32))
        labels = g.tensor(rng.integers(0, classes, rows), dtype=np.int32)
        one = g.tensor([1.0])
        counts = []
        for _ in range(4):
            x.grad = None
            loss = g.cross_entropy_loss(g.mul_scalar(x, one), labels)
            g.backward(loss)
            loss.item()
            del loss
            counts.append((g.stats["buffers_created"], g.stats["algorithms_created"]))
        assert counts[1] == counts[-1], counts
        assert g.stats["replays"] >= 2


def test_a_replayed_step_uses_each_steps_new_inputs(rng):
    with vkloss.Graph() as g:
        x, w = g.tensor(np.zeros((8, 4))), g.parameter(rng.standard_normal((4, 2)))
        for step in range(5):
            batch = rng.standard_normal((8, 4)).astype(np.float32)
            x.copy_(batch)
            w.grad = None
            g.backward(g.mse_loss(g.matmul(x, w), g.tensor(np.zeros((8, 2)))))
            want = 2 * f32(batch).T @ (f32(batch) @ f32(w.numpy())) / 16
            np.testing.assert_allclose(w.grad.numpy(), want, rtol=1e-5, atol=1e-6)
        assert g.stats["replays"] >= 2


def test_item_async_gives_every_steps_loss_without_a_wait(rng):
    with vkloss.Graph() as g:
        w = g.parameter(np.array([1.0, -2.0]))
        opt = vkloss.optim.SGD([w], lr=0.1)
        copies, values = [], []
        for _ in range(6):
            opt.zero_grad()
            loss = g.sum_all(g.mul(w, w))
            values.append(float((f32(w.numpy()) ** 2).sum()) if not copies else None)
            g.backward(loss)
            opt.step()
            copies.append(loss.item_async())
            del loss
        waits = g.stats["submissions"]
        # SGD on sum(w^2) with lr 0.1: w shrinks by 0.8 a step
        want = [5.0 * 0.64 ** k for k in range(6)]
        assert [copy.result() for copy in copies] == pytest.approx(want, rel=1e-6)
        assert all(copy.done() for copy in copies)
        assert g.stats["submissions"] - waits <= 1  # all but the last were copied by the steps' own submissions


def test_an_async_read_raises_what_the_device_checks_found():
    with vkloss.Graph() as g:
        copy = g.bce_loss(g.tensor([0.5, 2.0]), g.tensor([1.0, 0.0])).item_async()
        with pytest.raises(ValueError, match="1 values of pred or labels"):
            copy.result()
        assert g.add(g.tensor([1.0]), g.tensor([2.0])).item() == 3.0


def test_numpy_async_keeps_the_value_of_its_time():
    with vkloss.Graph() as g:
        w = g.parameter(np.array([1.0, 2.0]))
        opt = vkloss.optim.SGD([w], lr=0.5)
        before = w.numpy_async()
        g.backward(g.sum_all(w))
        opt.step()
        after = w.numpy_async()
        np.testing.assert_array_equal(after.result(), [0.5, 1.5])
        np.testing.assert_array_equal(before.result(), [1.0, 2.0])


def test_a_request_beyond_the_devices_memory_is_a_memory_error_and_the_graph_stays_usable(monkeypatch):
    with vkloss.Graph() as g:
        context = g.engine.context
        # a device with 3 MiB left once every Graph's pooled leftovers (other tests' too) are given back
        pooled = sum(e.live_counts()["pooled_bytes"] for e in runtime.engines_on(context))
        monkeypatch.setattr(context, "budget", context.used - pooled + (3 << 20))
        with pytest.raises(vkloss.DeviceMemoryError, match=r"needs 8,000,000 bytes of device memory, but only 3,14[\d,]+ of"):
            g.tensor(np.zeros(2_000_000))
        kept = g.tensor(np.ones(500_000))  # 2 MB: fits
        with pytest.raises(MemoryError):
            g.neg(kept)  # another 2 MB does not
        del kept
        # 2.5 MB fits once the pool gives back the 2 MB block nothing uses any more
        assert g.sum_all(g.tensor(np.ones(625_000))).item() == 625_000.0
        assert g.add(g.tensor([1.0]), g.tensor([2.0])).item() == 3.0


def test_another_graphs_pooled_leftovers_make_room_too(monkeypatch):
    with vkloss.Graph() as first, vkloss.Graph() as second:
        context = first.engine.context
        assert second.engine.context is context
        leftover = first.tensor(np.ones(500_000))  # 2 MB, then pooled by the first graph
        first.flush()
        del leftover
        # 1 MiB left beside the first graph's 2 MB pooled, once other tests' leftovers are given back
        others = sum(e.live_counts()["pooled_bytes"] for e in runtime.engines_on(context) if e is not first.engine)
        monkeypatch.setattr(context, "budget", context.used - others + (1 << 20))
        assert second.sum_all(second.tensor(np.ones(600_000))).item() == 600_000.0  # 2.4 MB: fits once freed
        assert first.engine.live_counts()["pooled_buffers"] == 0


def test_the_validation_layer_is_absent_from_a_plain_process(tmp_path):
    script = tmp_path / "layers.py"
    script.write_text(textwrap.dedent("""
        import vkloss
        with vkloss.Graph() as g:
            g.neg(g.tensor([1.0])).item()
        print("VkLayer_khronos_validation" in open("/proc/self/maps").read())
    """))
    plain = {k: v for k, v in os.environ.items() if k not in ("VK_INSTANCE_LAYERS", "VK_LAYER_SETTINGS_PATH")}
    for env, loaded in ((plain, "False"), (os.environ, "True")):  # the suite's environment asks for it
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=HANG_GUARD)
        assert done.returncode == 0 and done.stdout.strip() == loaded, done.stderr


def test_checked_ops_called_again_and_again_before_a_read_fold_their_checks(g, rng):
    """A check pending with the same message takes the new count into its own: no buffer or kernel per call, and
    the read reports the total."""
    pred = g.tensor(rng.standard_normal((8, 5)), requires_grad=True)
    good = np.arange(8) % 5
    for _ in range(5):  # the pool settles
        g.cross_entropy_loss(pred, good)
    before = dict(g.stats)
    for _ in range(20):
        g.cross_entropy_loss(pred, good)
    assert g.stats["buffers_created"] == before["buffers_created"]
    assert g.stats["algorithms_created"] == before["algorithms_created"]
    bad = good.copy()
    bad[2] = 9
    g.cross_entropy_loss(pred, bad)
    g.cross_entropy_loss(pred, bad)
    with pytest.raises(ValueError, match=r"cross_entropy_loss: 2 class indices of target \(shape \(8,\)\) are outside"):
        g.cross_entropy_loss(pred, good).item()
    assert g.cross_entropy_loss(pred, good).item() > 0  # the checks went with that read


def test_check_finite_counts_fold_too():
    with vkloss.Graph(check_finite=True) as g:
        x = g.tensor([1.0, np.nan])
        for _ in range(3):
            g.neg(x)
        with pytest.raises(FloatingPointError, match=r"neg produced 3 NaN or infinite values"):
            g.neg(g.tensor([1.0, 2.0])).numpy()
