"""What a demanding new user found (issue 13): each case against PyTorch's behaviour or float64, and each bad call
followed by a good one on the same Graph."""
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import vkloss
from helpers import HANG_GUARD, f32
from vkloss.ops.elementwise import ELEMENTWISE

try:
    import torch
except ImportError:
    torch = None

NEG_INF = -np.inf


def one_hot(labels, classes, dtype=np.float64):
    rows = np.zeros((len(labels), classes), dtype)
    rows[np.arange(len(labels)), labels] = 1
    return rows


def ce64(logits, targets):
    """Cross-entropy (mean over rows) and its gradient in float64, for masked logits too: a masked class (-inf)
    with no target mass adds nothing (PyTorch's convention), a row of nothing but -inf gives NaN."""
    p = f32(logits)
    rows, classes = p.shape
    t = one_hot(targets, classes) if targets.ndim == 1 else f32(targets)
    m = p.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_softmax = p - m - np.log(np.exp(p - m).sum(axis=1, keepdims=True))
        rows_loss = -np.where(t > 0, t * log_softmax, 0.0).sum(axis=1)
        grad = (np.exp(log_softmax) * t.sum(axis=1, keepdims=True) - t) / rows
    return rows_loss.mean(), grad


def ce_device(g, logits, targets):
    pred = g.tensor(logits, requires_grad=True)
    target = targets if targets.ndim == 1 else g.tensor(targets)
    loss = g.cross_entropy_loss(pred, target)
    g.backward(loss)
    return loss.item(), pred.grad.numpy()


# ---- 1. masked logits -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [5, 65, 128, 130, 1000, 300_000, (1 << 18) + 3])
@pytest.mark.parametrize("targets", ["index", "one-hot"])
def test_masked_logits_give_finite_loss_and_gradient(g, rng, classes, targets):
    rows = 3
    logits = rng.standard_normal((rows, classes)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    mask = rng.random((rows, classes)) < 0.5
    mask[:, :16] = True  # an invocation's first values
    mask[0, : min(classes, 20_000)] = True  # for long rows, whole chunks
    mask[np.arange(rows), labels] = False  # the target stays visible
    logits[mask] = NEG_INF
    t = labels if targets == "index" else one_hot(labels, classes, np.float32)
    loss, grad = ce_device(g, logits, t)
    want_loss, want_grad = ce64(logits, labels if targets == "index" else t)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert loss == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
    assert (grad[mask] == 0).all()


def test_extreme_logits_with_an_index_target_give_pytorchs_values(g):
    logits = np.array([[3e38, -3e38, 0.0], [-3e38, 3e38, 1.0]], np.float32)
    loss, grad = ce_device(g, logits, np.array([0, 1]))
    assert loss == 0.0 and np.isfinite(grad).all()
    if torch is not None:
        pred = torch.tensor(logits, requires_grad=True)
        want = torch.nn.functional.cross_entropy(pred, torch.tensor([0, 1]))
        want.backward()
        assert loss == want.item()
        np.testing.assert_array_equal(grad, pred.grad.numpy())


@pytest.mark.parametrize("classes", [5, 100, 300_000])
def test_a_row_of_nothing_but_minus_infinity_is_nan_as_in_pytorch(g, classes):
    logits = np.zeros((2, classes), np.float32)
    logits[1] = NEG_INF
    loss, _ = ce_device(g, logits, np.array([0, 0]))
    assert np.isnan(loss)
    if torch is not None:
        assert np.isnan(torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor([0, 0])).item())


# ---- 2. a second backward through a freed graph --------------------------------------------------------------------
def two_heads(g, rng):
    w = g.parameter(rng.standard_normal((4, 3)))
    x = g.tensor(rng.standard_normal((5, 4)))
    h = g.matmul(x, w)
    return w, x, h, g.mean_all(g.mul(h, h)), g.sum_all(h)


def test_a_second_backward_through_a_freed_trunk_raises_and_names_the_fixes(g, rng):
    w, x, h, l1, l2 = two_heads(g, rng)
    l1.backward()
    with pytest.raises(RuntimeError, match=r"second time.*g\.add\(loss1, loss2\).*retain_graph=True"):
        l2.backward()
    with pytest.raises(RuntimeError, match="second time"):  # a new loss from the freed trunk too
        g.backward(g.sum_all(g.mul(h, h)))
    assert g.add(g.tensor([1.0]), g.tensor([2.0])).item() == 3.0


def test_retain_graph_gives_both_heads_their_share(g, rng):
    w, x, h, l1, l2 = two_heads(g, rng)
    g.backward(l1, retain_graph=True)
    l2.backward()
    x64, w64 = f32(x.numpy()), f32(w.numpy())
    h64 = x64 @ w64
    want = x64.T @ (2 * h64 / h64.size) + x64.T @ np.ones_like(h64)
    np.testing.assert_allclose(w.grad.numpy(), want, rtol=1e-5, atol=1e-6)


# ---- 3. in-place changes of what backward needs ----------------------------------------------------------------
def test_copy_into_an_input_backward_still_needs_raises(g, rng):
    w = g.parameter(rng.standard_normal((4, 3)))
    x = g.tensor(rng.standard_normal((5, 4)))
    loss = g.mse_loss(g.matmul(x, w), g.tensor(np.zeros((5, 3))))
    x.copy_(rng.standard_normal((5, 4)))  # prefetching the next batch before backward
    with pytest.raises(RuntimeError, match=r"modified in place.*version 1, expected 0"):
        g.backward(loss)
    assert g.add(g.tensor([1.0]), g.tensor([2.0])).item() == 3.0


def test_an_optimizer_step_before_a_pending_backward_raises(g, rng):
    w = g.parameter(rng.standard_normal((4, 3)))
    x = g.parameter(rng.standard_normal((5, 4)))  # its gradient, x.grad = grad @ w.T, needs w
    opt = vkloss.optim.SGD([w], lr=0.1)
    first = g.mse_loss(g.matmul(x, w), g.tensor(np.zeros((5, 3))))
    second = g.mse_loss(g.matmul(x, w), g.tensor(np.ones((5, 3))))
    g.backward(first)
    opt.step()  # w changes in place; second's backward needs the old w
    with pytest.raises(RuntimeError, match="modified in place"):
        g.backward(second)


def test_copy_into_an_input_whose_op_does_not_need_it_is_fine(g):
    x = g.tensor([1.0, 2.0])
    w = g.parameter([3.0, 4.0])
    loss = g.sum_all(g.add(w, x))  # add's gradient does not read x
    x.copy_([5.0, 6.0])
    g.backward(loss)
    np.testing.assert_array_equal(w.grad.numpy(), [1.0, 1.0])


# ---- 5. negative class weights ---------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [6, 200, 300_000])
def test_negative_class_weights_follow_pytorch(g, rng, classes):
    logits = rng.standard_normal((4, classes)).astype(np.float32)
    labels = np.array([0, 1, 2, 1])
    weight = np.ones(classes, np.float32)
    weight[:3] = [-2.0, 0.5, -1.0]  # summed over the targets: -2 + 0.5 - 1 + 0.5 = -2
    pred = g.tensor(logits, requires_grad=True)
    loss = g.cross_entropy_loss(pred, labels, weight=weight)
    g.backward(loss)
    p = f32(logits)
    log_softmax = p - p.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    w = f32(weight)[labels]
    want = -(w * log_softmax[np.arange(4), labels]).sum() / w.sum()
    assert loss.item() == pytest.approx(want, rel=1e-5)
    want_grad = (np.exp(log_softmax) - one_hot(labels, classes)) * w[:, None] / w.sum()
    np.testing.assert_allclose(pred.grad.numpy(), want_grad, rtol=1e-4, atol=1e-7)


# ---- 6. BCE near p = 1 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.999, 0.9999, 1 - 2 ** -24, 0.5, 0.7, 1.5e-3])
@pytest.mark.parametrize("y", [1.0, 0.0])
def test_bce_keeps_float32_precision_near_the_ends(g, p, y):
    p32 = np.float32(p)
    got = g.bce_loss(g.tensor([p32]), g.tensor([y])).item()
    want = -(y * np.log(float(p32)) + (1 - y) * np.log1p(-float(p32)))
    assert got == pytest.approx(want, rel=3e-7)


# ---- 9. python -m vkloss.train's arguments ---------------------------------------------------------------------
@pytest.mark.parametrize("args, says", [
    (["--epochs", "0"], "--epochs: must be at least 1"), (["--epochs", "-1"], "--epochs: must be at least 1"),
    (["--lr", "0"], "--lr: must be a positive number"), (["--lr", "-1"], "--lr: must be a positive number"),
    (["--batch-size", "0"], "--batch-size: must be at least 1"), (["--batch-size", "-5"], "at least 1"),
    (["--seed", "-1"], "--seed: must be 0 or more"), (["--device", "7"], "device=7: no such device"),
    (["--plot", "/nonexistent/x.png"], "cannot write /nonexistent/x.png"),
])
def test_train_refuses_bad_arguments_with_one_line_before_training(args, says):
    done = subprocess.run([sys.executable, "-m", "vkloss.train", "--quiet", *args], capture_output=True, text=True,
                          timeout=HANG_GUARD)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "device:" not in done.stdout  # nothing was trained


def test_train_shows_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vkloss.train", "--task", "breast_cancer", "--epochs", "2",
                           "--plot", ""], capture_output=True, text=True, cwd=tmp_path, timeout=HANG_GUARD)
    assert done.returncode == 0 and "epoch" not in done.stderr, done.stderr


# ---- 10. python -m vkloss.tools's errors -----------------------------------------------------------------------
def tools(*args, env=None, timeout=HANG_GUARD):
    return subprocess.run([sys.executable, "-m", "vkloss.tools", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.parametrize("args, says", [(["--repeats", "0"], "--repeats: must be at least 1"),
                                        (["--json", "/nonexistent/x.json"], "/nonexistent does not exist")])
def test_bench_refuses_bad_arguments_before_measuring(args, says):
    done = tools("bench", *args, timeout=HANG_GUARD)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_tools_list_into_a_closed_pipe_is_quiet():
    listing = subprocess.Popen([sys.executable, "-m", "vkloss.tools", "list"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    listing.stdout.close()  # `| head -0`: the reader is gone before the table is written
    assert listing.wait(timeout=HANG_GUARD) == 0
    assert "BrokenPipe" not in listing.stderr.read().decode()


def compile_into(cache, *ops):
    """The elementwise variants of `ops`, compiled into the cache folder `cache`: only what a test reads, so no test
    waits for all the variants to compile (minutes on a busy machine)."""
    script = ("from vkloss.ops.elementwise import ELEMENTWISE; from vkloss import shaders\n"
              f"for op in {list(ops)!r}: shaders.load(ELEMENTWISE.variant(op=op).shader)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, VKLOSS_CACHE_DIR=str(cache)))
    assert done.returncode == 0, done.stderr


def test_garbage_in_the_cache_index_is_rebuilt_not_a_traceback(tmp_path):
    env = dict(os.environ, VKLOSS_CACHE_DIR=str(tmp_path))
    compile_into(tmp_path, "add")
    for index in (tmp_path / "latest").iterdir():
        index.write_bytes(os.urandom(40))
    checked = tools("check", env=env)
    assert "Traceback" not in checked.stderr, checked.stderr
    script = "import vkloss; g = vkloss.Graph(); print(g.add(g.tensor([2.0, 3.0]), g.tensor([4.0, 5.0])).numpy())"
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=HANG_GUARD)
    assert ran.returncode == 0 and ran.stdout.strip() == "[6. 8.]", ran.stderr


# ---- 11. cache entries bound to their keys ---------------------------------------------------------------------
def test_swapped_cache_entries_are_refused_and_rebuilt(tmp_path):
    env = dict(os.environ, VKLOSS_CACHE_DIR=str(tmp_path))
    add = ELEMENTWISE.variant(op="add").shader
    mul = ELEMENTWISE.variant(op="mul").shader
    compile_into(tmp_path, "add", "mul")
    a, m = tmp_path / f"{add.key()}.spv", tmp_path / f"{mul.key()}.spv"
    a_bytes, m_bytes = a.read_bytes(), m.read_bytes()
    a.write_bytes(m_bytes)
    m.write_bytes(a_bytes)
    checked = tools("check", env=env)
    assert checked.returncode == 1 and "not its own" in checked.stderr
    script = "import vkloss; g = vkloss.Graph(); print(g.add(g.tensor([2.0, 3.0]), g.tensor([4.0, 5.0])).numpy())"
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=HANG_GUARD)
    assert ran.returncode == 0 and ran.stdout.strip() == "[6. 8.]", ran.stderr


# ---- 12. an interrupt around a submission ----------------------------------------------------------------------
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


# ---- 13. assorted ----------------------------------------------------------------------------------------------
def test_a_composed_ops_bad_option_names_the_op_not_a_private_function(g):
    with pytest.raises(TypeError, match=r"Graph\.mse_loss\(\) got an unexpected keyword argument 'foo'"):
        g.mse_loss(g.tensor([1.0]), g.tensor([2.0]), foo=1)


@pytest.mark.parametrize("make, says", [
    (lambda p: vkloss.optim.Adam(p, eps=-1), "eps"), (lambda p: vkloss.optim.Adam(p, eps=float("nan")), "eps"),
    (lambda p: vkloss.optim.Adam(p, lr=float("nan")), "lr"), (lambda p: vkloss.optim.Adam(p, lr=float("inf")), "lr"),
    (lambda p: vkloss.optim.Adam(p, betas=(1.0, 0.9)), "betas"), (lambda p: vkloss.optim.SGD(p, momentum=-0.1), "momentum"),
])
def test_nonsense_hyperparameters_are_refused(g, make, says):
    with pytest.raises(ValueError, match=says):
        make([g.parameter([1.0])])


@pytest.mark.parametrize("name", ["close", "tensor", "backward", "stats"])
def test_register_op_refuses_names_graph_already_uses(name):
    with pytest.raises(ValueError, match=f"{name!r} is already a Graph attribute"):
        vkloss.register_op(f"{name}(Tensor x) -> Tensor", vkloss.UserShader("void main() {}", shape=lambda s: s,
                                                                            validate=False))


def test_an_unwritable_cache_falls_back_to_a_temporary_one_with_one_warning(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    if os.access(cache, os.W_OK):  # root writes anywhere: make it a file instead
        cache.chmod(0o700)
        shutil.rmtree(cache)
        cache.write_text("not a folder")
    script = textwrap.dedent("""
        import warnings, vkloss
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g = vkloss.Graph()
            print(g.add(g.tensor([2.0]), g.tensor([3.0])).item(), g.mul(g.tensor([2.0]), g.tensor([3.0])).item())
        print(sum("cannot be written" in str(w.message) for w in caught))
    """)
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_GUARD,
                         env=dict(os.environ, VKLOSS_CACHE_DIR=str(cache)))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["5.0", "6.0", "1"]


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
