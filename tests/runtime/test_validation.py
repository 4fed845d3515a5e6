"""The suite's judge works: the validation layer, set up as conftest.py sets it up, reports a deliberately racy
kp sequence (two dependent dispatches in one sequence), and accepts the remedies: a submission boundary, a barrier
copy, and the buffer barrier the engine records."""
import subprocess
import sys
import textwrap

import pytest

from conftest import layer_settings

RACE = textwrap.dedent("""
    import sys
    import numpy as np
    from vkloss.runtime.kompute import kp
    from vkloss.ops.elementwise import ELEMENTWISE
    m = kp.Manager()
    from vkloss import shaders
    code = shaders.load(ELEMENTWISE.variant(op="neg").shader)
    a, b, c = (m.tensor(np.ones(256, np.float32)) for _ in range(3))
    push, spec = np.array([256, 0, 0], np.uint32), np.array([256], np.uint32)  # push: n, cols, s (the whole block)
    first = m.algorithm([a, b], code, (1, 1, 1), spec, push)    # b = -a
    second = m.algorithm([b, c], code, (1, 1, 1), spec, push)   # c = -b: reads what first wrote
    m.sequence().record(kp.OpTensorSyncDevice([a])).eval()
    mode = sys.argv[1]
    if mode == "racy":
        m.sequence().record(kp.OpAlgoDispatch(first, push)).record(kp.OpAlgoDispatch(second, push)).eval()
    elif mode == "separate-evals":
        m.sequence().record(kp.OpAlgoDispatch(first, push)).eval()
        m.sequence().record(kp.OpAlgoDispatch(second, push)).eval()
    elif mode == "memory-barrier-between":  # what the engine records: a buffer barrier from the patched kp
        barrier = kp.OpMemoryBarrier([b], 0x40, 0x20, 0x800, 0x800)  # shader write -> read, compute -> compute
        m.sequence().record(kp.OpAlgoDispatch(first, push)).record(barrier).record(kp.OpAlgoDispatch(second, push)).eval()
    elif mode == "sync-local-between":
        (m.sequence().record(kp.OpAlgoDispatch(first, push)).record(kp.OpTensorSyncLocal([b]))
         .record(kp.OpAlgoDispatch(second, push)).eval())
""")


def run_under_layer(tmp_path, mode):
    import os

    log = tmp_path / f"{mode}.log"
    env = dict(os.environ, VK_INSTANCE_LAYERS="VK_LAYER_KHRONOS_validation",
               VK_LAYER_SETTINGS_PATH=str(layer_settings(log)))
    script = tmp_path / "race.py"
    script.write_text(RACE)
    done = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return log.read_text() if log.exists() else ""


def test_racy_sequence_is_reported(tmp_path):
    assert "SYNC-HAZARD-READ-AFTER-WRITE" in run_under_layer(tmp_path, "racy")


@pytest.mark.parametrize("mode", ["separate-evals", "sync-local-between", "memory-barrier-between"])
def test_remedies_are_accepted(tmp_path, mode):
    assert run_under_layer(tmp_path, mode) == ""
