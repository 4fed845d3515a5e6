"""The command lines answer a bad argument with one line and exit status 2, never a traceback."""
import os
import subprocess
import sys

import pytest

from helpers import HANG_GUARD


def run(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=HANG_GUARD,
                          env=dict(os.environ, **(env or {})), cwd=cwd)


@pytest.mark.parametrize("args, env, says", [
    (["vkloss.tools", "bench", "--device", "7"], {}, "device='7': no such device"),
    (["vkloss.tools", "devices"], {"VKLOSS_DEVICE": "7"}, "VKLOSS_DEVICE='7': no such device"),
    (["vkloss.tools", "--import", "no_such_module", "list"], {}, "--import no_such_module: No module named"),
])
def test_tools_refuse_bad_arguments_in_one_line(args, env, says):
    done = run(*args, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert says in done.stderr.strip().splitlines()[-1]


def test_train_says_a_plot_path_that_is_a_directory_is_one(tmp_path):
    done = run("vkloss.train", "--plot", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"cannot write {tmp_path}: it is a directory" in done.stderr


# ---- python -m vkloss.tools's errors -----------------------------------------------------------------------
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


WITHOUT_KP = "import sys; sys.modules['vkloss._kp'] = None  # as if the extension were not built\n"


@pytest.mark.parametrize("command", ["generate --check", "list"])
def test_the_schema_tools_run_without_a_kompute_build(command):
    script = WITHOUT_KP + (f"import runpy; sys.argv = ['tools', *{command.split()!r}]\n"
                           "runpy.run_module('vkloss.tools', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_a_graph_without_a_kompute_build_says_how_to_build_it():
    script = WITHOUT_KP + ("import vkloss\ntry:\n    vkloss.Graph()\n"
                           "except ImportError as e:\n    print(e)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0 and "vkloss._kp) is not built" in done.stdout and "pip install" in done.stdout
