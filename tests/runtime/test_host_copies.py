"""Host copies (numpy_async, item_async, numpy, item) give the value of their time, whatever ran since, and never
a stale one; done() ends a polling loop; a device-side check is never dropped."""
import threading
import time

import numpy as np
import pytest

import vkloss


def test_a_value_read_after_an_older_copy_finished_is_the_newest():
    with vkloss.Graph() as g:
        p = g.tensor(np.array([1.0, 2, 3, 4]))
        h0 = p.numpy_async()
        p.copy_(np.array([10.0, 20, 30, 40]))
        h1 = p.numpy_async()
        np.testing.assert_array_equal(h0.result(), [1, 2, 3, 4])
        np.testing.assert_array_equal(p.numpy(), [10, 20, 30, 40])
        np.testing.assert_array_equal(h1.result(), [10, 20, 30, 40])


def test_a_copy_made_while_an_older_one_runs_keeps_the_value_of_its_call():
    with vkloss.Graph() as g:
        p = g.parameter(np.array([1.0, 2, 3, 4]))
        opt = vkloss.optim.SGD([p], lr=0.1)
        h1 = p.numpy_async()
        opt.step()  # no gradient: p stays
        g.tensor(np.zeros(3))  # submits: h1's copy runs
        h2 = p.numpy_async()
        p.copy_(np.array([10.0, 20, 30, 40]))
        h3 = p.numpy_async()
        np.testing.assert_array_equal(h2.result(), [1, 2, 3, 4])
        np.testing.assert_array_equal(h3.result(), [10, 20, 30, 40])
        np.testing.assert_array_equal(h1.result(), [1, 2, 3, 4])


def test_snapshots_every_step_leave_the_final_weights_readable(rng):
    with vkloss.Graph() as g:
        w = g.parameter(np.array([1.0, -2.0]))
        opt = vkloss.optim.SGD([w], lr=0.1)
        snapshots = []
        for _ in range(5):
            opt.zero_grad()
            g.backward(g.sum_all(g.mul(w, w)))
            opt.step()
            snapshots.append(w.numpy_async())
        want = np.array([1.0, -2.0]) * 0.8 ** 5
        np.testing.assert_allclose(w.numpy(), want, rtol=1e-6)
        for k, snapshot in enumerate(snapshots, 1):
            np.testing.assert_allclose(snapshot.result(), np.array([1.0, -2.0]) * 0.8 ** k, rtol=1e-6)
        np.testing.assert_allclose(w.numpy(), want, rtol=1e-6)


def test_each_result_is_the_callers_own_array():
    with vkloss.Graph() as g:
        t = g.tensor(np.array([1.0, 2.0]))
        first = t.numpy()
        first[0] = 99.0
        np.testing.assert_array_equal(t.numpy(), [1.0, 2.0])
        copy = t.numpy_async()
        assert copy.result() is copy.result()  # a Future gives the same result every time


def test_done_becomes_true_by_itself():
    with vkloss.Graph() as g:
        copy = g.neg(g.tensor(np.arange(1000.0))).numpy_async()
        deadline = time.monotonic() + 60
        while not copy.done():  # nothing else reads, waits or flushes
            assert time.monotonic() < deadline, "done() never became True"
            time.sleep(0.001)
        np.testing.assert_array_equal(copy.result(), -np.arange(1000.0))


def test_done_is_false_before_the_device_has_run_the_copy():
    with vkloss.Graph() as g:
        x = g.tensor(np.ones(1 << 20))
        for _ in range(20):
            x = g.neg(x)
        copy = x.numpy_async()
        assert not copy.done()  # submitted now; lavapipe has not run twenty passes over 4 MB yet
        np.testing.assert_array_equal(copy.result(), np.ones(1 << 20))
        assert copy.done()


def test_a_check_in_a_step_whose_copy_is_never_read_raises_at_the_next_read():
    with vkloss.Graph() as g:
        logits = g.tensor(np.zeros((2, 4)))
        g.cross_entropy_loss(logits, np.array([1, 42])).item_async()  # never read
        with pytest.raises(ValueError, match="class indices"):
            g.tensor([1.0]).numpy()
        assert g.tensor([2.0]).item() == 2.0  # said once, and the graph goes on


def test_a_check_never_read_at_all_raises_at_close():
    g = vkloss.Graph()
    g.cross_entropy_loss(g.tensor(np.zeros((2, 4))), np.array([1, 42]))
    with pytest.raises(ValueError, match="class indices"):
        g.close()
    assert g.closed


def test_the_copy_that_carries_a_failed_check_raises_each_time_it_is_read():
    with vkloss.Graph() as g:
        copy = g.cross_entropy_loss(g.tensor(np.zeros((2, 4))), np.array([1, 42])).item_async()
        for _ in range(2):
            with pytest.raises(ValueError, match="1 class indices"):
                copy.result()
        assert g.tensor([3.0]).item() == 3.0


def test_a_check_is_not_raised_twice_by_other_reads():
    with vkloss.Graph() as g:
        g.cross_entropy_loss(g.tensor(np.zeros((2, 4))), np.array([1, 42]))
        first = g.tensor([1.0]).numpy_async()
        second = g.tensor([2.0]).numpy_async()
        with pytest.raises(ValueError):
            first.result()
        assert second.result()[0] == 2.0


def test_an_optimizer_step_from_another_thread_is_refused():
    with vkloss.Graph() as g:
        w = g.parameter(np.array([1.0]))
        opt = vkloss.optim.SGD([w], lr=0.1)
        g.backward(g.sum_all(w))
        errors = []
        worker = threading.Thread(target=lambda: errors.append(_raises(opt.step)))
        worker.start()
        worker.join()
        assert errors and isinstance(errors[0], RuntimeError) and "thread" in str(errors[0])
        opt.step()
        assert w.item() == pytest.approx(0.9)


def _raises(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - handed back to the test's thread
        return e
    return None
