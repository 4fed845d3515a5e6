"""Vocabulary-parallel linear cross-entropy (vkloss.distributed.vocab_parallel_cross_entropy) against the
single-device op, linear_cross_entropy over the whole vocabulary: 3 ranks over 1,001 classes (shards of 334, 334
and 333), every option, every reduction (none with a different upstream gradient a row), 16-bit inputs. Each rank checks its loss, the hidden gradient (summed over
the ranks) and its own shard's weight and bias gradients."""
import pytest

from ranks import finish, start

torch = pytest.importorskip("torch")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("this PyTorch has no torch.distributed with gloo", allow_module_level=True)

AGAINST_ONE_DEVICE = """
    rng = np.random.default_rng(0)
    rows, features, classes = 6, 5, 1001
    h, w = rng.standard_normal((rows, features)), rng.standard_normal((classes, features)) * 0.5
    b = rng.standard_normal(classes)
    labels = rng.integers(0, classes, rows)
    labels[2] = -100  # ignored
    labels[3] = classes - 1  # the last shard's last class
    class_weights = rng.uniform(0.5, 2.0, classes)
    mine = np.array_split(np.arange(classes), world)[rank]
    CASES = [dict(), dict(label_smoothing=0.1), dict(weight_classes=True, reduction="sum"),
             dict(weight_classes=True, label_smoothing=0.2), dict(softcap=3.0, lse_square_scale=1e-3),
             dict(dtype="bfloat16"), dict(reduction="none", label_smoothing=0.1)]
    upstream = rng.uniform(0.5, 2.0, rows)  # reduction='none': each row its own upstream gradient
    g = vkloss.Graph(process.device)
    for case in CASES:
        options = dict(case)
        dtype = options.pop("dtype", np.float32)
        weighted = options.pop("weight_classes", False)
        th = g.tensor(h, dtype=dtype, requires_grad=True)
        tw, tb = g.tensor(w[mine], dtype=dtype, requires_grad=True), g.tensor(b[mine], requires_grad=True)
        loss = distributed.vocab_parallel_cross_entropy(th, tw, labels, tb, **options,
                                                        **({"weight_classes": class_weights[mine]} if weighted else {}))
        g.backward(loss if loss.shape == (1,) else g.sum(g.mul(loss, g.tensor(upstream))))
        one = vkloss.Graph(process.device)
        h1, w1 = one.tensor(h, dtype=dtype, requires_grad=True), one.tensor(w, dtype=dtype, requires_grad=True)
        b1 = one.tensor(b, requires_grad=True)
        want = one.linear_cross_entropy(h1, w1, labels, b1, **options,
                                        **({"weight_classes": class_weights} if weighted else {}))
        one.backward(want if want.shape == (1,) else one.sum(one.mul(want, one.tensor(upstream))))
        tolerance = 1e-5 if dtype is np.float32 else 1e-2  # bfloat16 gradients: one rounding of 2^-8
        def close(got, expected):
            got, expected = got.astype(np.float64), expected.astype(np.float64)
            assert np.abs(got - expected).max() <= tolerance * np.abs(expected).max(), (case, got, expected)
        got_loss, want_loss = loss.numpy(), want.numpy()
        assert np.abs(got_loss - want_loss).max() <= 1e-6 * np.abs(want_loss).max(), (case, got_loss, want_loss)
        close(th.grad.numpy(), h1.grad.numpy())
        close(tw.grad.numpy(), w1.grad.numpy()[mine])
        close(tb.grad.numpy(), b1.grad.numpy()[mine])
        one.close()
    print("same as one device", rank, len(mine))
"""


def test_three_ranks_over_1001_classes_match_one_device_with_every_option(tmp_path):
    results = finish(start(AGAINST_ONE_DEVICE, 3, tmp_path))
    for rank, (code, out, err) in enumerate(results):
        assert code == 0, err[-3000:]
        assert f"same as one device {rank} {334 if rank < 2 else 333}" in out


BAD_CALLS = """
    g = vkloss.Graph(process.device)
    h, w = g.tensor(np.ones((3, 4)), requires_grad=True), g.tensor(np.ones((5, 4)), requires_grad=True)
    for call, says in [
            (lambda: distributed.vocab_parallel_cross_entropy(h, w, np.array([0, 1, 10])), "outside [0, 10)"),
            (lambda: distributed.vocab_parallel_cross_entropy(h, w, np.array([0, 1])), "target must be integer"),
            (lambda: distributed.vocab_parallel_cross_entropy(h, g.tensor(np.ones((5, 3))), np.array([0, 1, 2])),
             "must be [rows, features]"),
            (lambda: distributed.vocab_parallel_cross_entropy(h, w, np.array([0, 1, 2]), reduction="max"),
             "'mean', 'sum' or 'none'")]:
        try:
            call()
        except ValueError as e:
            assert says in str(e), (says, str(e))
        else:
            raise AssertionError(says)
    loss = distributed.vocab_parallel_cross_entropy(h, w, np.array([0, 9, 4]))  # the Graph still works
    g.backward(loss)
    print("refused and usable", rank, round(loss.item(), 6))
"""


def test_bad_calls_are_refused_on_every_rank_and_the_graph_stays_usable(tmp_path):
    results = finish(start(BAD_CALLS, 2, tmp_path))
    for rank, (code, out, err) in enumerate(results):
        assert code == 0, err[-3000:]
        assert f"refused and usable {rank} 2.302585" in out  # log 10: equal logits over 10 classes
