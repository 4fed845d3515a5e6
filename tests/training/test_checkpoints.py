"""Checkpoints: optimizer state as PyTorch names it, safetensors files written atomically, clear errors for a bad
file, and a training run stopped and resumed that is bit-identical to one never stopped."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import vkloss
from vkloss import checkpoint
from helpers import HANG_GUARD

try:
    import torch
except ImportError:
    torch = None


def trained(g, kind, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    params = [g.parameter(rng.standard_normal(shape)) for shape in [(3, 4), (4,), (2,)]]
    opt = vkloss.optim.Adam(params, lr=0.05) if kind == "adam" else vkloss.optim.SGD(params, lr=0.1, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        g.backward(g.add(g.sum_all(g.mul(params[0], params[0])), g.sum_all(params[1])))  # params[2]: no gradient
        opt.step()
    return params, opt


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_state_dict_has_pytorchs_names_and_values(g, kind):
    params, opt = trained(g, kind)
    state = opt.state_dict()
    rng = np.random.default_rng(0)
    theirs = [torch.tensor(rng.standard_normal(shape), requires_grad=True) for shape in [(3, 4), (4,), (2,)]]
    topt = torch.optim.Adam(theirs, lr=0.05) if kind == "adam" else torch.optim.SGD(theirs, lr=0.1, momentum=0.9)
    for _ in range(3):
        topt.zero_grad()
        ((theirs[0] * theirs[0]).sum() + theirs[1].sum()).backward()
        topt.step()
    reference = topt.state_dict()
    assert sorted(state["state"]) == sorted(reference["state"]) == [0, 1]  # no state where no gradient came
    for index, entries in reference["state"].items():
        assert sorted(state["state"][index]) == sorted(entries)
        for key, value in entries.items():
            np.testing.assert_allclose(np.asarray(state["state"][index][key], np.float64), value.detach().numpy()
                                       if hasattr(value, "detach") else value, rtol=1e-5, atol=1e-6)
    group = {k: v for k, v in reference["param_groups"][0].items() if k in state["param_groups"][0]}
    assert group["params"] == state["param_groups"][0]["params"]


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_saved_and_loaded_training_continues_bit_for_bit(g, tmp_path, kind):
    params, opt = trained(g, kind)
    path = tmp_path / "run.safetensors"
    vkloss.save(path, {f"p{i}": p for i, p in enumerate(params)}, optimizer=opt, metadata={"epoch": 3})
    with vkloss.Graph() as other:
        copies, other_opt = trained(other, kind, steps=0, seed=1)
        assert vkloss.load(path, {f"p{i}": p for i, p in enumerate(copies)}, optimizer=other_opt) == {"epoch": 3}
        for graph, ps, o in ((g, params, opt), (other, copies, other_opt)):
            o.zero_grad()
            graph.backward(graph.sum_all(graph.mul(ps[0], ps[0])))
            o.step()
        for mine, theirs in zip(params, copies):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_the_file_is_safetensors(g, tmp_path):
    w = g.tensor(np.arange(6.0).reshape(2, 3))
    h = g.tensor([1.5, -2.0], dtype="bfloat16")
    vkloss.save(tmp_path / "t.safetensors", {"w": w, "h": h}, metadata={"note": "x"})
    data = (tmp_path / "t.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    assert header["w"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert header["h"]["dtype"] == "BF16" and json.loads(header["__metadata__"]["vkloss"]) == {"note": "x"}
    body = data[8 + size:]
    np.testing.assert_array_equal(np.frombuffer(body[0:24], np.float32), np.arange(6.0))
    bits = np.frombuffer(body[24:28], np.uint16).astype(np.uint32) << 16
    np.testing.assert_array_equal(bits.view(np.float32), [1.5, -2.0])


def test_a_kill_while_writing_leaves_the_last_good_file(g, tmp_path, monkeypatch):
    path = tmp_path / "run.safetensors"
    w = g.tensor([1.0, 2.0])
    vkloss.save(path, {"w": w})
    good = path.read_bytes()
    w.copy_(np.array([3.0, 4.0]))
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))  # killed before rename
    with pytest.raises(KeyboardInterrupt):
        vkloss.save(path, {"w": w})
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["run.safetensors"]


@pytest.mark.parametrize("damage, says", [
    (lambda data: data[:-5], "truncated: tensor 'w' ends at byte"),
    (lambda data: data[:20], "truncated, or not a safetensors file"),
    (lambda data: b"{}", "not a checkpoint"),
])
def test_a_damaged_file_names_the_problem_and_changes_nothing(g, tmp_path, damage, says):
    path = tmp_path / "run.safetensors"
    w = g.tensor([1.0, 2.0, 3.0])
    vkloss.save(path, {"w": w})
    path.write_bytes(damage(path.read_bytes()))
    target = g.tensor([7.0, 8.0, 9.0])
    with pytest.raises(ValueError, match=says):
        vkloss.load(path, {"w": target})
    assert target.numpy().tolist() == [7.0, 8.0, 9.0]


def test_a_tensor_of_another_shape_or_a_missing_one_is_named(g, tmp_path):
    path = tmp_path / "run.safetensors"
    vkloss.save(path, {"w": g.tensor(np.ones((2, 3)))})
    with pytest.raises(ValueError, match=r"tensor 'w' is F32 of shape \(2, 3\); the one to load it into is F32 of "
                                         r"shape \(3, 2\)"):
        vkloss.load(path, {"w": g.tensor(np.ones((3, 2)))})
    with pytest.raises(ValueError, match="has no tensor 'b'"):
        vkloss.load(path, {"b": g.tensor([1.0])})
    with pytest.raises(ValueError, match="holds no optimizer state"):
        p = g.parameter(np.ones((2, 3)))
        vkloss.load(path, {"w": p}, optimizer=vkloss.optim.SGD([p], lr=0.1))


def test_a_training_run_stopped_and_resumed_is_bit_identical(tmp_path):
    def train(epochs, path, *more):
        done = subprocess.run([sys.executable, "-m", "vkloss.train", "--task", "breast_cancer", "--epochs",
                               str(epochs), "--checkpoint", str(path), "--quiet", "--plot", "", *more],
                              capture_output=True, text=True, cwd=tmp_path, timeout=HANG_GUARD)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()[2]  # the task's summary row

    whole = train(4, tmp_path / "whole.safetensors")
    train(2, tmp_path / "stopped.safetensors")
    resumed = train(4, tmp_path / "stopped.safetensors", "--resume")
    assert (tmp_path / "whole.safetensors").read_bytes() == (tmp_path / "stopped.safetensors").read_bytes()
    assert whole.split()[:6] == resumed.split()[:6]  # task, loss, final loss, float64, rel diff, metric name
    arrays, _, _ = checkpoint.read(tmp_path / "whole.safetensors")
    assert "optimizer.0.exp_avg" in arrays and "layer1.bias" in arrays


def test_resuming_another_runs_checkpoint_is_one_line(tmp_path):
    common = [sys.executable, "-m", "vkloss.train", "--epochs", "1", "--quiet", "--plot", "", "--checkpoint",
              str(tmp_path / "c.safetensors")]
    assert subprocess.run(common + ["--task", "diabetes_mse"], capture_output=True, timeout=HANG_GUARD,
                          cwd=tmp_path).returncode == 0
    done = subprocess.run(common + ["--task", "diabetes_mse", "--resume", "--seed", "3"], capture_output=True,
                          text=True, timeout=HANG_GUARD, cwd=tmp_path)
    assert done.returncode == 2 and "is from another run" in done.stderr and "Traceback" not in done.stderr
