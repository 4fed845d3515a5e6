"""Build vkloss's own Kompute: the pinned kp 0.9.0 sdist, patched by kp_patch.py, compiled into the extension module
vkloss._kp. setup.py calls `build` from its build_ext step, so `pip install .`, `pip install -e .` and `pip wheel .`
build it with no other step; a stock `kp` elsewhere in the environment is neither used nor touched.

Where the sdist comes from, first found: the file VKLOSS_KP_SDIST names; .gpu/whl/ beside the checkout (the lent
GPU machine's carried copy, which has no package index); a download from the package index pip is configured
with (pip download, never GitHub). Whichever it is, its sha256 must be the pinned one.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import kp_patch  # noqa: E402

KP_VERSION = "0.9.0"
KP_SHA256 = "98e583dc6e9731ff6d7a3e3317817e4d93f7b2945929619e29a56325db279949"
SDIST = f"kp-{KP_VERSION}.tar.gz"
INCLUDE_DIRS = [Path("/usr/include"), Path("/usr/local/include"),
                *([Path(os.environ["VULKAN_SDK"]) / "include"] if os.environ.get("VULKAN_SDK") else [])]


def fail(message: str):
    """One clear line, no traceback: what is missing and the Debian package that brings it."""
    raise SystemExit(f"vkloss: {message}")


def check_prerequisites() -> str:
    """The C++ compiler, the Vulkan and fmt headers, the Vulkan loader and Python's headers, before CMake runs (its
    errors would bury the cause in a trace). Returns the cmake to run."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not compiler:
        fail("building the Kompute extension needs a C++ compiler: sudo apt-get install g++")
    for header, package in (("vulkan/vulkan.h", "libvulkan-dev"), ("fmt/format.h", "libfmt-dev")):
        if not any((d / header).is_file() for d in INCLUDE_DIRS):
            fail(f"building the Kompute extension needs {header}: sudo apt-get install {package}")
    import ctypes.util

    if not ctypes.util.find_library("vulkan"):
        fail("building the Kompute extension needs the Vulkan loader: sudo apt-get install libvulkan-dev")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        fail(f"building the Kompute extension needs Python's headers for {sys.executable}: "
             "sudo apt-get install python3-dev")
    cmake = shutil.which("cmake")
    if not cmake:
        fail("building the Kompute extension needs CMake: pip install cmake, or sudo apt-get install cmake")
    return cmake


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_sdist(source_root: Path, work: Path) -> Path:
    candidates = [Path(os.environ["VKLOSS_KP_SDIST"])] if os.environ.get("VKLOSS_KP_SDIST") else []
    candidates += [source_root / ".gpu" / "whl" / SDIST, work / SDIST]
    for path in candidates:
        if path.is_file():
            break
    else:
        work.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                               "--no-deps", "--no-binary=:all:", f"kp=={KP_VERSION}", "-d", str(work)],
                              capture_output=True, text=True)
        path = work / SDIST
        if done.returncode != 0 or not path.is_file():
            fail(f"could not download the kp {KP_VERSION} sdist from the package index "
                 f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no output'}); "
                 f"set VKLOSS_KP_SDIST to a copy of {SDIST}")
    if sha256(path) != KP_SHA256:
        fail(f"{path} is not the pinned kp {KP_VERSION} sdist (sha256 {KP_SHA256})")
    return path


def build(target: Path, work: Path, source_root: Path) -> None:
    """Compile the patched Kompute's Python module into `target` (vkloss/_kp.<suffix>), working in `work`."""
    cmake = check_prerequisites()
    sdist = find_sdist(source_root, work)
    source = work / f"kp-{KP_VERSION}"
    if source.exists():
        shutil.rmtree(source)
    with tarfile.open(sdist) as archive:
        archive.extractall(work, filter="data") if hasattr(tarfile, "data_filter") else archive.extractall(work)
    kp_patch.apply(source)
    out, tree = work / "out", work / "cmake"
    import pybind11

    options = {
        "CMAKE_BUILD_TYPE": "Release", "CMAKE_LIBRARY_OUTPUT_DIRECTORY": out, "CMAKE_POSITION_INDEPENDENT_CODE": "ON",
        "CMAKE_PREFIX_PATH": pybind11.get_cmake_dir(), "PYTHON_EXECUTABLE": sys.executable,
        "Python_EXECUTABLE": sys.executable, "PYTHON_INCLUDE_DIR": sysconfig.get_paths()["include"],
        # as kp's own setup.py: a directory, not libpython, so the module does not link libpython (an extension
        # module takes its symbols from the interpreter that loads it; a wheel must not need libpython3.x.so)
        "PYTHON_LIBRARY": sysconfig.get_paths()["stdlib"],
        "KOMPUTE_OPT_BUILD_PYTHON": "ON", "KOMPUTE_OPT_LOG_LEVEL": "Off",
        "KOMPUTE_OPT_USE_SPDLOG": "OFF", "KOMPUTE_OPT_INSTALL": "OFF",
        # everything from the system or the build environment: nothing is fetched from GitHub
        "KOMPUTE_OPT_USE_BUILT_IN_VULKAN_HEADER": "OFF", "KOMPUTE_OPT_USE_BUILT_IN_FMT": "OFF",
        "KOMPUTE_OPT_USE_BUILT_IN_PYBIND11": "OFF", "KOMPUTE_OPT_DISABLE_VULKAN_VERSION_CHECK": "ON",
        # stock kp loads the validation layer into every process where it is installed; vkloss asks for it through
        # VK_INSTANCE_LAYERS where wanted (its tests)
        "KOMPUTE_OPT_DISABLE_VK_DEBUG_LAYERS": "ON",
    }
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
    for command in ([cmake, "-S", source, "-B", tree, *(f"-D{k}={v}" for k, v in options.items())],
                    [cmake, "--build", tree, "--target", "kp", "--parallel", jobs]):
        done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-20000:] + done.stderr[-20000:])
            fail(f"building the Kompute extension failed in {command[1]} (output above)")
    built = [p for p in out.glob("kp*") if p.suffix in (".so", ".pyd", ".dylib")]
    if len(built) != 1:
        fail(f"the Kompute build left {[p.name for p in built] or 'no module'} in {out}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built[0], target)
