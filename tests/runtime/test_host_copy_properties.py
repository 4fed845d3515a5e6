"""Random interleavings of writes (copy_, optimizer steps, eager or captured), reads, deferred reads, waits and
flushes on one tensor: every read gives what a host model of its values says, as of the moment the read was made.
Captured steps replay two at a time, so a read may be made while the step before still runs."""
import numpy as np
from hypothesis import given, settings, strategies as st

import vkloss
from helpers import dot_step

SIZE = 4
# what goes wrong is a read, a write and another read of the same tensor, then the first read's result: those come
# most often, so that short interleavings of them are tried many times over
ACTIONS = ("copy", "copy", "step", "read", "read", "read_async", "read_async", "oldest_result", "oldest_result",
           "newest_result", "done", "flush", "submit", "captured", "captured")


@settings(max_examples=300, deadline=None)
@given(actions=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=40),
       fills=st.lists(st.lists(st.integers(-50, 50), min_size=SIZE, max_size=SIZE), min_size=40, max_size=40))
def test_every_read_gives_the_modelled_value_of_its_time(actions, fills):
    with vkloss.Graph() as g:
        model = np.arange(1.0, SIZE + 1)
        p = g.parameter(model)
        opt = vkloss.optim.SGD([p], lr=0.5)  # steps by 0.5 * 2: exact in float32 for small integers
        c = g.tensor(np.full(SIZE, 2.0))
        pending = []  # (HostCopy, the values it must give)
        captured_step = g.capture(lambda: dot_step(g, opt, p, c))  # d/dp = c
        for action, fill in zip(actions, fills):
            if action == "copy":
                model = np.array(fill, np.float64)
                p.copy_(model)
            elif action == "step":
                dot_step(g, opt, p, c)
                model = model - 1.0
            elif action == "captured":  # recorded on its first calls, then replayed; its loss read later
                pending.append((captured_step().numpy_async(), np.array(2.0 * model.sum())))
                model = model - 1.0
            elif action == "read":
                np.testing.assert_array_equal(p.numpy(), model)
            elif action == "read_async":
                pending.append((p.numpy_async(), model))
            elif action.endswith("_result") and pending:
                copy, want = pending.pop(0 if action == "oldest_result" else -1)
                np.testing.assert_array_equal(copy.result(), want)
            elif action == "done" and pending:
                pending[0][0].done()
            elif action == "flush":
                g.flush()
            elif action == "submit":
                g.engine.submit()
        for copy, want in pending:
            np.testing.assert_array_equal(copy.result(), want)
        np.testing.assert_array_equal(p.numpy(), model)
        captured_step.release()
