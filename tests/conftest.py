"""Every test runs under the Khronos validation layer with synchronization validation, and fails if the layer
says anything while it runs.

The layer's settings are tests/vk_layer_settings.txt, copied with its log pointed at a file of this session's;
the environment is set here, before any test creates a Vulkan instance, so plain `pytest` runs under it too.
"""
import os
import pathlib
import tempfile

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
LAYER_DIR = pathlib.Path(tempfile.mkdtemp(prefix="vkloss-validation-"))
VALIDATION_LOG = LAYER_DIR / "validation.log"


def layer_settings(log_path: pathlib.Path) -> pathlib.Path:
    """A copy of the repo's layer settings that logs to `log_path`; returns the copy's path."""
    text = (HERE / "vk_layer_settings.txt").read_text()
    path = log_path.with_suffix(".settings.txt")
    path.write_text(text.replace("log_filename = stdout", f"log_filename = {log_path}"))
    return path


os.environ["VK_INSTANCE_LAYERS"] = "VK_LAYER_KHRONOS_validation"
os.environ["VK_LAYER_SETTINGS_PATH"] = str(layer_settings(VALIDATION_LOG))
VALIDATION_LOG.touch()
# A SPIR-V cache of this run's own, so the suite compiles every shader it uses from the source under test.
os.environ.setdefault("VKLOSS_CACHE_DIR", str(LAYER_DIR / "spirv-cache"))


def _log_size() -> int:
    return VALIDATION_LOG.stat().st_size


@pytest.fixture(autouse=True)
def no_validation_messages():
    start = _log_size()
    yield
    if _log_size() > start:
        with open(VALIDATION_LOG, "rb") as f:
            f.seek(start)
            messages = f.read().decode(errors="replace")
        pytest.fail("the Vulkan validation layer reported:\n" + messages[:4000], pytrace=False)


@pytest.fixture(scope="session")
def g():
    import vkloss

    graph = vkloss.Graph()
    yield graph
    graph.close()


@pytest.fixture(autouse=True)
def fresh_plans(request):
    """Each test works its launches out afresh on the session's Graph: a test that patches a kernel constant or the
    launch policy (K_SLICE, use_tiles, ...) must not run another test's launch plans."""
    if "g" in request.fixturenames:
        request.getfixturevalue("g").reset_plans()


@pytest.fixture(params=[False, True], ids=["four", "eight"])
def forced(request):
    """A Graph whose engine answers wide_loads() (eight floats an access, else four where sizes allow) as the
    parameter says, recording the names of the variants it dispatches in g.names."""
    import vkloss

    with vkloss.Graph() as g:
        if request.param and not g.device.shader_int64:
            pytest.skip(f"{g.device.name} has no 64-bit integers in shaders")
        g.engine.launch.wide_loads = lambda: request.param
        names, dispatch = [], g.engine.dispatch
        g.engine.dispatch = lambda variant, *args, **kwargs: names.append(variant.name) or dispatch(variant, *args,
                                                                                                   **kwargs)
        g.wide, g.names = request.param, names
        yield g


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
