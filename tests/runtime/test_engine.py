"""The engine: algorithm and buffer reuse, few submissions, size limits, lazy execution."""
import gc
import threading

import numpy as np
import pytest

import vkloss


def test_repeated_op_on_same_tensors_reuses_its_algorithm(g):
    a, b = g.tensor(np.ones(100)), g.tensor(np.ones(100))
    g.add(a, b).numpy()
    before = g.stats["algorithms_created"]
    for _ in range(3):
        g.add(a, b).numpy()
    assert g.stats["algorithms_created"] == before


def test_training_loop_stops_creating_buffers_and_algorithms():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    with vkloss.Graph() as g:
        tx, ty = g.tensor(x), g.tensor(y)
        w = np.array([0.0], np.float32)
        counts = []
        for _ in range(7):
            tw = g.tensor(w, requires_grad=True)
            loss = g.mse_loss(g.mul(g.expand(tw, shape=(1000,)), tx), ty)
            g.backward(loss)
            w = w - 0.1 * tw.grad.numpy()
            del tw, loss
            gc.collect()
            counts.append((g.stats["buffers_created"], g.stats["algorithms_created"]))
        # steady state after the first steps: every buffer from the pool, every algorithm from the cache
        assert counts[-1] == counts[-3], counts


def test_dependent_chain_on_small_tensors_needs_one_submission(g, rng):
    x = g.tensor(rng.standard_normal(64), requires_grad=True)
    y = g.tensor(rng.standard_normal(64))
    g.flush()
    before = g.stats["submissions"]
    loss = g.mse_loss(x, y)
    g.backward(loss)
    x.grad.numpy()
    assert g.stats["submissions"] - before == 1


def test_nothing_runs_until_a_host_read(g):
    before = g.stats["submissions"]
    t = g.neg(g.tensor(np.ones(10)))
    assert g.stats["submissions"] == before
    np.testing.assert_array_equal(t.numpy(), -np.ones(10))
    assert g.stats["submissions"] == before + 1


def test_tensor_too_large_for_one_binding_is_a_memory_error_and_graph_stays_usable(g):
    limit = g.device.max_storage_buffer_range // 4
    huge = np.broadcast_to(np.float32(0), (limit + 1,))  # no real memory behind it
    with pytest.raises(MemoryError, match=f"{g.device.max_storage_buffer_range:,}"):
        g.tensor(huge)
    with pytest.raises(MemoryError, match="maxStorageBufferRange"):
        g.expand(g.tensor([1.0]), shape=(limit + 1,))
    np.testing.assert_array_equal(g.add(g.tensor([1.0, 2.0]), g.tensor([3.0, 4.0])).numpy(), [4.0, 6.0])


def test_tensor_converts_dtypes_and_refuses_others(g):
    for array in (np.arange(4), np.arange(4, dtype=np.float64), np.arange(4, dtype=np.float16)):
        t = g.tensor(array)
        np.testing.assert_array_equal(t.numpy(), np.arange(4, dtype=np.float32))
    with pytest.raises(TypeError, match="bool"):
        g.tensor(np.array([True, False]))
    with pytest.raises(TypeError, match="complex"):
        g.tensor(np.array([1j]))
    with pytest.raises(ValueError, match=r"empty.*\(0, 3\)"):
        g.tensor(np.zeros((0, 3)))


def test_tensor_basics(g):
    t = g.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    assert t.shape == (2, 3) and t.size == 6 and t.ndim == 2 and t.grad is None
    assert g.tensor(3.5).shape == (1,) and g.tensor(3.5).item() == 3.5
    with pytest.raises(ValueError, match="one element"):
        t.item()
    assert "requires_grad=True" in repr(t)


def test_closed_graph_context_manager():
    with vkloss.Graph() as g:
        assert g.neg(g.tensor([1.0])).item() == -1.0


def test_a_full_pool_evicts_old_leftovers_not_the_buffer_each_step_reuses(rng):
    with vkloss.Graph() as g:
        g.engine.pool_max_bytes = 1 << 20  # the pool's cap, which otherwise follows the device's memory
        leftovers = [g.tensor(np.zeros(50_000 + i)) for i in range(4)]  # 4 x 200 KB of earlier work
        del leftovers
        x = g.tensor(rng.standard_normal((64, 1000)), requires_grad=True)  # each step's gradient: 256 KB, the largest
        labels = rng.integers(0, 1000, 64)
        for step in range(4):
            x.grad = None
            g.backward(g.cross_entropy_loss(x, labels))
            x.grad.numpy()
            if step == 1:
                created = g.stats["buffers_created"]
        assert g.stats["buffers_created"] == created
        assert g.engine.live_counts()["pooled_bytes"] <= 1 << 20


# ---- an interrupt around a submission ----------------------------------------------------------------------
@pytest.mark.parametrize("when", ["before", "after"])
def test_an_interrupt_around_a_submission_loses_no_work(when):
    from vkloss.runtime.kompute import kp

    original = kp.Sequence.eval_async
    interrupted = []

    def eval_async(sequence, *args):
        if not interrupted:
            interrupted.append(when)
            if when == "before":
                raise KeyboardInterrupt
            original(sequence, *args)
            raise KeyboardInterrupt
        return original(sequence, *args)

    with vkloss.Graph() as g:
        w = g.parameter(np.array([1.0, 2.0]))
        opt = vkloss.optim.SGD([w], lr=0.5)
        g.backward(g.sum_all(w))
        opt.step()
        kp.Sequence.eval_async = eval_async
        try:
            with pytest.raises(KeyboardInterrupt):
                g.flush()
        finally:
            kp.Sequence.eval_async = original
        np.testing.assert_array_equal(w.numpy(), [0.5, 1.5])  # the optimizer step ran


def test_closing_from_another_thread_is_refused_like_every_other_use():
    g = vkloss.Graph()
    errors = []

    def close():
        try:
            g.close()
        except RuntimeError as e:
            errors.append(str(e))

    thread = threading.Thread(target=close)
    thread.start()
    thread.join()
    assert errors and "thread" in errors[0]
    assert g.neg(g.tensor([1.0])).item() == -1.0
    g.close()


def test_kernels_on_other_buffers_share_a_pipeline_that_outlives_the_algorithm_that_made_it(g, rng):
    """kp binds buffers when it makes an algorithm, so each new set of buffers made a new pipeline, which lavapipe
    compiles (12 ms a matmul). Patch 14 shares one pipeline among algorithms of the same SPIR-V, constants and
    bindings; it keeps the layouts it was made with until its last algorithm goes. The validation layer (conftest)
    reports a pipeline bound with an incompatible layout, or used after what it was made with was destroyed."""
    from vkloss import shaders
    from vkloss.ops.elementwise import ELEMENTWISE
    from vkloss.runtime.kompute import kp

    manager = g.engine.context.manager
    spirv = shaders.load(ELEMENTWISE.variant(op="add", vec4=False, wide=False).shader)

    def made(n):
        x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        tensors = [manager.tensor(x), manager.tensor(y), manager.tensor(np.zeros(n, np.float32))]
        # workgroups of 64: a pipeline of its own, which no other algorithm of this process shares
        return x + y, tensors, manager.algorithm(tensors, spirv, [4, 1, 1], np.array([64], np.uint32),
                                                 np.array([n, 0, 0], np.uint32))

    def run(expected, tensors, algorithm):
        (manager.sequence().record(kp.OpTensorSyncDevice(tensors[:2])).record(kp.OpAlgoDispatch(algorithm))
         .record(kp.OpTensorSyncLocal(tensors[2:])).eval())
        np.testing.assert_array_equal(tensors[2].data(), expected)

    pipelines = g.stats["pipelines"]
    first, second, third = made(100), made(37), made(256)
    assert g.stats["pipelines"] == pipelines + 1
    run(*first)
    del first  # the algorithm that made the pipeline, and its layouts' owner, goes
    run(*second)
    run(*third)
    fourth = made(5)  # made after its maker went: taken from the others
    del second, third
    run(*fourth)
    assert g.stats["pipelines"] == pipelines + 1
    del fourth
    assert g.stats["pipelines"] == pipelines  # gone with its last algorithm
