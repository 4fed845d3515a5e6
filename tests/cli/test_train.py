"""The main job, python -m vkloss.train, and the examples: device training agrees with the float64 numpy twin."""
import dataclasses
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from helpers import HANG_GUARD
from vkloss import train

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_task(g, name, epochs, seed=0, bfloat16=False):
    if name == "lm":
        pytest.importorskip("torch")  # the language model's float64 twin is PyTorch's
    task = dataclasses.replace(train.TASKS[name], epochs=epochs)
    data = train.load(task, seed)
    rng = np.random.default_rng(seed)
    weights, model = train.make_model(g, task, data, rng, bfloat16)
    plan = train.batches(len(data.x_train), task.batch_size, epochs, rng, task.steps_per_epoch)
    return (train.train_vkloss(g, task, data, model, plan, lambda *a: None),
            train.train_reference(task, data, weights, plan))


@pytest.mark.parametrize("name", list(train.TASKS))
def test_one_epoch_agrees_with_float64_numpy(g, name):
    vk, ref = run_task(g, name, epochs=1)
    assert abs(vk.losses[-1] - ref.losses[-1]) <= 1e-3 * abs(ref.losses[-1])
    assert vk.metric == pytest.approx(ref.metric, rel=1e-3)


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_defaults_reach_95_percent_held_out_accuracy(g, name):
    vk, ref = run_task(g, name, epochs=train.TASKS[name].epochs)
    assert vk.metric >= 0.95 and ref.metric >= 0.95


def test_the_language_model_learns_and_matches_pytorch_float64(g):
    vk, ref = run_task(g, "lm", epochs=train.TASKS["lm"].epochs)
    np.testing.assert_allclose(vk.losses, ref.losses, rtol=1e-4)  # the loss curve, epoch by epoch
    assert vk.metric == pytest.approx(ref.metric, rel=1e-4)
    assert vk.losses[-1] < 0.7 * vk.losses[0] and vk.metric < 8  # held-out perplexity; a uniform guess: 88


def test_the_language_model_with_a_bfloat16_output_layer_stays_near_float64(g):
    vk, ref = run_task(g, "lm", epochs=2, bfloat16=True)
    np.testing.assert_allclose(vk.losses, ref.losses, rtol=1e-3)
    assert vk.metric == pytest.approx(ref.metric, rel=1e-3)


def test_without_pytorch_the_language_model_has_no_float64_run_and_says_so(monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(train.language_model, "train_torch", missing)
    task = dataclasses.replace(train.TASKS["lm"], epochs=2)
    ref = train.train_reference(task, None, None, [[], []])
    assert len(ref.losses) == 2 and np.isnan(ref.losses).all() and np.isnan(ref.metric)
    data = train.Data(np.zeros((3, 8)), np.zeros(3), np.zeros((1, 8)), np.zeros(1), classes=88)
    train.describe_language_model(ref, ref, data, bfloat16=False)
    assert "PyTorch is not installed" in capsys.readouterr().out


def test_after_the_first_step_no_kernel_is_compiled_and_no_buffer_created(g):
    vk, _ = run_task(g, "breast_cancer", epochs=3)
    assert vk.steps > 20
    assert vk.algorithms_at_end == vk.algorithms_after_warmup
    assert vk.buffers_at_end == vk.buffers_after_warmup
    assert vk.submissions <= vk.steps + 1  # one queue submission per step, and the first uploads


def test_batches_leave_out_the_remainder_and_reject_bad_sizes():
    plan = train.batches(10, 3, 2, np.random.default_rng(0))
    assert [len(b) for b in plan[0]] == [3, 3, 3] and len(plan) == 2
    with pytest.raises(ValueError, match="batch size 11"):
        train.batches(10, 11, 1, np.random.default_rng(0))


def test_command_prints_the_summary_and_writes_the_plot(tmp_path):
    png = tmp_path / "curves.png"
    done = subprocess.run([sys.executable, "-m", "vkloss.train", "--task", "breast_cancer", "--epochs", "1",
                           "--quiet", "--plot", str(png)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "device:" in done.stdout and "rel diff" in done.stdout and "subm/step" in done.stdout
    assert re.search(r"breast_cancer\s+bce_loss", done.stdout)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_command_trains_the_language_model_and_prints_its_perplexity(tmp_path):
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, "-m", "vkloss.train", "--task", "lm", "--epochs", "1", "--quiet",
                           "--plot", "", "--lm-bfloat16"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"lm\s+linear_cross_entropy", done.stdout) and "output layer in bfloat16" in done.stdout
    assert re.search(r"held-out perplexity: vkloss [0-9.]+, PyTorch float64 [0-9.]+", done.stdout)


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.py")))
def test_example_trains(example):
    done = subprocess.run([sys.executable, str(REPO / "examples" / example)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = {"train_cross_entropy.py": r"accuracy 1\.000", "train_bce.py": r"accuracy 1\.000",
                "train_mse.py": r"w \[ 1\.5\d?\s+-2\.\s+0\.5\d?\s*\]", "train_l1.py": r"slope 3\.0\d",
                "lm_head.py": r"loss (\d+\.\d+) -> (\d+\.\d+) \(uniform guess (\d+\.\d+)\)(.|\n)*"
                              r"linear_cross_entropy \d"}[example]
    found = re.search(expected, done.stdout)
    assert found, done.stdout
    if example == "lm_head.py":  # its text is Python's own source: the vocabulary differs between Python versions
        first, last, uniform = map(float, found.groups()[:3])
        assert abs(first - uniform) < 1e-3 and last < first - 1.0, done.stdout  # zero weights, then it learns


def test_readme_training_loop_runs_and_learns(tmp_path):
    text = (REPO / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) < 25
    script = tmp_path / "loop.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    losses = [float(line.split()[1]) for line in done.stdout.splitlines()]
    assert losses[-1] < 0.1 * losses[0]


# ---- python -m vkloss.train's arguments ---------------------------------------------------------------------
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
