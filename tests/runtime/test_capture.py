"""g.capture: a step recorded once and replayed gives what running it op by op gives, bit for bit, in one submission
a step, and says clearly what it cannot do."""
import numpy as np
import pytest

import vkloss
from vkloss import optim
from helpers import dot_step


def mlp(g, rng, sizes=(64, 64, 10)):
    params = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        bound = 1 / np.sqrt(fan_in)
        params += [g.parameter(rng.uniform(-bound, bound, (fan_out, fan_in))), g.parameter(rng.uniform(-bound, bound,
                                                                                                      fan_out))]
    return params


def train(captured, steps=12, seed=0):
    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal((64, 64)), rng.integers(0, 10, 64)) for _ in range(steps)]
    with vkloss.Graph() as g:
        params = mlp(g, np.random.default_rng(1))
        opt = optim.Adam(params, lr=1e-2)
        x, labels = g.tensor(np.zeros((64, 64))), g.tensor(np.zeros(64, np.int64), dtype=np.int32)

        def step():
            opt.zero_grad()
            hidden = g.linear(x, params[0], params[1], activation="relu")
            loss = g.cross_entropy_loss(g.linear(hidden, params[2], params[3]), labels)
            g.backward(loss)
            opt.step()
            return loss

        run = g.capture(step) if captured else step
        copies, submissions = [], []
        for batch, target in batches:
            x.copy_(batch)
            labels.copy_(target)
            before = g.stats["submissions"]
            copies.append(run().item_async())
            submissions.append(g.stats["submissions"] - before)
        losses = [copy.result() for copy in copies]
        return losses, [p.numpy() for p in params], [p.grad.numpy() for p in params], submissions


def test_a_captured_training_loop_equals_the_eager_one_bit_for_bit():
    eager, captured = train(False), train(True)
    assert eager[0] == captured[0]
    for a, b in zip(eager[1] + eager[2], captured[1] + captured[2]):
        np.testing.assert_array_equal(a, b)


def test_a_replayed_step_is_one_submission_with_its_inputs_and_its_loss_copy():
    _, _, _, submissions = train(True)
    assert submissions[3:] == [1] * (len(submissions) - 3)


def test_a_replay_of_the_mlp_step_takes_eight_dispatches_at_most(rng):
    with vkloss.Graph() as g:
        params = mlp(g, rng)
        opt = optim.Adam(params, lr=1e-2)
        x, y = g.tensor(rng.standard_normal((64, 64))), g.tensor(np.eye(10)[rng.integers(0, 10, 64)])

        @g.capture
        def step():
            opt.zero_grad()
            loss = g.cross_entropy_loss(g.linear(g.linear(x, params[0], params[1], activation="relu"), params[2],
                                                 params[3]), y)
            g.backward(loss)
            opt.step()
            return loss

        for _ in range(3):
            step()
        g.flush()
        before = g.stats["dispatches"]
        step()
        g.flush()
        assert g.stats["dispatches"] - before <= 8


def test_outputs_are_the_same_tensors_updated_and_parameters_read_fresh(rng):
    with vkloss.Graph() as g:
        w = g.parameter(np.array([1.0, -2.0]))
        opt = optim.SGD([w], lr=0.1)

        @g.capture
        def step():
            opt.zero_grad()
            loss = g.sum_all(g.mul(w, w))
            g.backward(loss)
            opt.step()
            return loss

        first = step()
        values = [first.item()]
        for _ in range(4):
            assert step() is not None
        assert step() is step()  # from the recording on, the same Tensor
        for _ in range(3):
            values.append(step().item())
            np.testing.assert_allclose(w.numpy(), np.array([1.0, -2.0]) * 0.8 ** (6 + len(values)), rtol=1e-6)
        assert values[1:] == pytest.approx([5.0 * 0.64 ** k for k in (7, 8, 9)], rel=1e-5)


def test_tensor_arguments_of_the_same_shape_are_copied_in_and_new_shapes_record_again(g, rng):
    step = g.capture(lambda a, b: g.add(g.mul(a, b), a))
    for shape in [(3,), (3,), (3,), (2, 5), (2, 5), (2, 5), (3,)]:
        a, b = rng.standard_normal(shape), rng.standard_normal(shape)
        out = step(g.tensor(a), g.tensor(b))
        np.testing.assert_allclose(out.numpy(), (a * b + a).astype(np.float32), rtol=1e-6)


def test_a_warmup_of_two_calls_runs_the_step_as_it_is_twice(g):
    calls = []

    @g.capture(warmup=2)
    def step():
        calls.append(1)
        return g.neg(g.tensor([1.0]))

    for _ in range(5):
        assert step().item() == -1.0
    assert len(calls) == 3  # two as they are, one recording


@pytest.mark.parametrize("inside", ["item", "flush"])
def test_a_host_read_or_flush_inside_the_step_is_refused_and_the_graph_goes_on(g, inside):
    def step():
        t = g.neg(g.tensor([2.0]))
        t.item() if inside == "item" else g.flush()
        return t

    captured = g.capture(step, warmup=0)
    with pytest.raises(vkloss.CaptureError, match="inside"):
        captured()
    assert g.add(g.tensor([1.0]), g.tensor([2.0])).item() == 3.0


def test_adding_into_a_gradient_made_before_the_step_is_refused(g):
    w = g.parameter(np.array([1.0, 2.0]))
    g.backward(g.sum_all(w))  # w.grad from before the step

    @g.capture(warmup=0)
    def step():
        loss = g.sum_all(g.mul(w, w))
        g.backward(loss)  # no zero_grad: would add to the old gradient on every replay
        return loss

    with pytest.raises(vkloss.CaptureError, match="zero the gradients"):
        step()
    w.grad = None
    assert step().item() == 5.0


def test_a_failed_check_in_a_replay_raises_at_the_next_read(rng):
    with vkloss.Graph() as g:
        logits = g.tensor(rng.standard_normal((4, 3)), requires_grad=True)
        labels = g.tensor(np.array([0, 1, 2, 1]), dtype=np.int32)

        @g.capture
        def step():
            logits.grad = None
            loss = g.cross_entropy_loss(logits, labels)
            g.backward(loss)
            return loss

        for _ in range(3):
            step().item()
        labels.copy_(np.array([0, 7, 2, 1]))
        step()
        with pytest.raises(ValueError, match="class indices"):
            g.tensor([1.0]).numpy()
        labels.copy_(np.array([0, 1, 2, 1]))
        assert step().item() > 0


def test_release_gives_the_steps_memory_back(rng):
    with vkloss.Graph() as g:
        x = g.tensor(rng.standard_normal((256, 256)))
        step = g.capture(lambda: g.sum_all(g.neg(g.neg(x))))
        for _ in range(3):
            step()
        g.flush()
        pooled = g.engine.live_counts()["pooled_buffers"]
        step.release()
        assert g.engine.live_counts()["pooled_buffers"] > pooled
        assert step().item() == pytest.approx(float(x.numpy().astype(np.float64).sum()), rel=1e-4)


def test_a_captured_step_of_a_closed_graph_says_so():
    g = vkloss.Graph()
    step = g.capture(lambda: g.neg(g.tensor([1.0])))
    for _ in range(3):
        step()
    g.close()
    with pytest.raises(RuntimeError, match="closed"):
        step()


def test_replays_run_two_at_a_time_and_each_read_gives_its_own_step(g, rng):
    """A replay goes while the one before it still runs (the device goes on without waiting for the host): each
    replay's host copies land in staging of their own, taken in turn, and its inputs' uploads wait for the replay
    before it on the queue. Read late, in any order, every copy holds its own step's value."""
    w = g.parameter(np.zeros(8))
    x = g.tensor(np.zeros(8))
    opt = optim.SGD([w], lr=0.5)

    step = g.capture(lambda: dot_step(g, opt, w, x))  # d/dw = x
    inputs = [rng.standard_normal(8).astype(np.float32) for _ in range(9)]
    expected, weights, copies = [], np.zeros(8, np.float32), []
    for i, batch in enumerate(inputs):
        x.copy_(batch)
        copies.append(step().item_async())
        expected.append(float(np.dot(weights, batch)))
        weights = weights - np.float32(0.5) * batch
        if i >= 3:  # recorded and replayed by now: two in flight, none waited for
            assert len(g.engine.queue.in_flight) == 2
    assert copies[-2].result() == pytest.approx(expected[-2], rel=1e-5, abs=1e-6)
    assert len(g.engine.queue.in_flight) == 1  # the last step's read waited for its own step, not the next one
    for copy, value in reversed(list(zip(copies, expected))):
        assert copy.result() == pytest.approx(value, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(w.numpy(), weights, rtol=1e-5, atol=1e-6)
    assert step().item() == pytest.approx(float(np.dot(weights, inputs[-1])), rel=1e-5)  # x holds the last batch
