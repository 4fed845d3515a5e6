"""Data parallel over torch.distributed (gloo, loopback), with the processes started by the test: gradients equal
one process's over the whole batch, rank 0's parameters reach every rank, the torchrun main job matches one
process, and a rank that dies or hangs ends the others with an error in bounded time."""
import subprocess
import sys

import pytest

from helpers import HANG_GUARD
from ranks import finish, start

torch = pytest.importorskip("torch")
if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("this PyTorch has no torch.distributed with gloo", allow_module_level=True)

GRADIENTS = """
    # 3 ranks over a batch of 7 (parts of 3, 2 and 2): the weighted sum of the parts' gradients is the gradient of
    # one process over the whole batch; each rank starts from its own weights, and rank 0's reach them all
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((7, 5)), rng.integers(0, 4, 7)
    w0, b0 = rng.standard_normal((4, 5)) * 0.5, rng.standard_normal(4) * 0.1
    g = vkloss.Graph(process.device)
    own = np.random.default_rng(100 + rank)
    w, b = g.parameter(own.standard_normal((4, 5)) if rank else w0), g.parameter(own.standard_normal(4) if rank else b0)
    dp = distributed.DataParallel([w, b], bucket_bytes=64)  # a bucket each: two all-reduces in flight
    part = np.array_split(np.arange(7), world)[rank]
    loss = g.cross_entropy_loss(g.linear(g.tensor(x[part]), w, b), labels[part])
    g.backward(loss)
    dp.all_reduce_gradients(len(part) / 7)
    whole = vkloss.Graph(process.device)
    wf, bf = whole.parameter(w0), whole.parameter(b0)
    whole.backward(whole.cross_entropy_loss(whole.linear(whole.tensor(x), wf, bf), labels))
    np.testing.assert_array_equal(w.numpy(), w0.astype(np.float32))
    np.testing.assert_allclose(w.grad.numpy(), wf.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b.grad.numpy(), bf.grad.numpy(), rtol=1e-5, atol=1e-7)
    print("same gradients", rank, len(dp.buckets))
"""


def test_gradients_equal_one_process_over_the_whole_batch(tmp_path):
    results = finish(start(GRADIENTS, 3, tmp_path))
    for rank, (code, out, err) in enumerate(results):
        assert code == 0, err[-3000:]
        assert f"same gradients {rank} 2" in out


KILLED = """
    import time
    g = vkloss.Graph(process.device)
    w = g.parameter(np.ones(3))
    dp = distributed.DataParallel([w])
    if rank == 1:
        os._exit(3)  # dies between steps
    g.backward(g.sum_all(w))
    try:
        dp.all_reduce_gradients()
    except Exception as e:
        print("stopped:", type(e).__name__, str(e)[:200], flush=True)
        os._exit(1)  # now: the process group's teardown would wait on the hung peer
    print("reduced alone?")
"""


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_rank_that_dies_or_hangs_ends_the_others_with_an_error(tmp_path, how):
    script = KILLED if how == "killed" else KILLED.replace("os._exit(3)  # dies between steps",
                                                            "time.sleep(600)  # hangs")
    processes = start(script, 2, tmp_path, env={"VKLOSS_DIST_TIMEOUT": "5"})
    (code, out, err), = finish(processes[:1], timeout=120)  # bounded: the process group's timeout, and no more
    processes[1].kill()
    processes[1].communicate()
    assert code == 1 and "stopped:" in out and "reduced alone?" not in out, (out, err[-2000:])


def test_init_outside_torchrun_names_what_is_missing():
    script = ("import os\nfor k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'): "
              "os.environ.pop(k, None)\nfrom vkloss import distributed\ntry:\n    distributed.init()\n"
              "except ValueError as e:\n    print(e)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_GUARD)
    assert "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set" in done.stdout and "torchrun" in done.stdout


def test_without_pytorch_the_error_says_which_extra_to_install():
    script = ("import sys\nsys.modules['torch'] = None\nfrom vkloss import distributed\ntry:\n"
              "    distributed.all_reduce_sum([1.0])\nexcept ImportError as e:\n    print(e)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_GUARD)
    assert "pip install vkloss[distributed]" in done.stdout, done.stderr


def final_line(output: str, task: str) -> list:
    line = next(line for line in output.splitlines() if line.startswith(task + " "))
    return line.split()


@pytest.mark.slow  # two short trainings, one under torchrun: about 20 s
def test_torchrun_main_job_matches_one_process(tmp_path):
    args = ["-m", "vkloss.train", "--task", "digits", "--epochs", "3", "--quiet", "--plot", ""]
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, timeout=HANG_GUARD)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *args], capture_output=True, text=True, cwd=tmp_path, timeout=HANG_GUARD)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("digits ") == 1 and "rank 0 of 2" in two.stdout  # rank 0 alone reports
    single, parallel = final_line(one.stdout, "digits"), final_line(two.stdout, "digits")
    assert float(parallel[2]) == pytest.approx(float(single[2]), rel=1e-5)  # final loss
    assert float(parallel[6]) == pytest.approx(float(single[6]), abs=1e-9)  # accuracy


@pytest.mark.slow  # three short trainings under torchrun: about 30 s
def test_torchrun_resumes_from_the_last_checkpoint(tmp_path):
    """What torchrun --max-restarts does after a failure: the same command again, with --resume."""
    def torchrun(epochs, *extra):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "vkloss.train", "--task", "breast_cancer", "--epochs", str(epochs), "--quiet",
                               "--plot", "", *extra], capture_output=True, text=True, cwd=tmp_path, timeout=HANG_GUARD)
        assert done.returncode == 0, done.stderr[-3000:]
        return float(final_line(done.stdout, "breast_cancer")[2])

    whole = torchrun(3)
    torchrun(2, "--checkpoint", "ck.safetensors")  # stopped after its second epoch
    assert torchrun(3, "--checkpoint", "ck.safetensors", "--resume") == pytest.approx(whole, rel=1e-6)
