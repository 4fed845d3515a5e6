"""vkloss installs the way Python packages install: pip builds its own Kompute from the pinned sdist, and a wheel runs
in an environment with no compiler, needing only the system's Vulkan loader."""
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from helpers import HANG_GUARD

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import kp_build  # noqa: E402

CHECK = "import vkloss; g = vkloss.Graph(); print(g.add(g.tensor([1., 2.]), g.tensor([3., 4.])).numpy())"


def fresh_env(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(path)
    return path / "bin" / "python"


def clean_copy(target: Path) -> Path:
    """The checkout's tracked and new files, without builds or caches: what a fresh clone holds."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


def pip(python: Path, *args, env=None):
    done = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=HANG_GUARD, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def run(python: Path, *args, env=None, cwd=None):
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=HANG_GUARD, env=env, cwd=cwd)


@pytest.mark.slow
def test_pip_install_of_a_checkout_and_of_its_wheel_each_run_vkloss(tmp_path):
    source = clean_copy(tmp_path / "vkloss")
    built = fresh_env(tmp_path / "built")
    pip(built, "install", str(source))
    done = run(built, "-c", CHECK, cwd=tmp_path)  # not the checkout: the installed package
    assert done.returncode == 0 and done.stdout.strip() == "[4. 6.]", done.stderr
    assert not (source / "vkloss" / "_kp.so").exists()

    pip(built, "wheel", str(source), "--no-deps", "-w", str(tmp_path / "dist"))
    wheel = next((tmp_path / "dist").glob("vkloss-*.whl"))
    clean = fresh_env(tmp_path / "clean")
    no_compiler = dict(os.environ, CC="/nonexistent", CXX="/nonexistent")  # nothing may be compiled installing it
    pip(clean, "install", str(wheel), env=no_compiler)
    done = run(clean, "-c", CHECK, cwd=tmp_path, env=no_compiler)
    assert done.returncode == 0 and done.stdout.strip() == "[4. 6.]", done.stderr
    devices = run(clean, "-m", "vkloss.tools", "devices", cwd=tmp_path)
    assert devices.returncode == 0 and "default" in devices.stdout, devices.stderr


@pytest.mark.slow
def test_a_stock_kp_beside_vkloss_is_neither_used_nor_broken(tmp_path):
    python = fresh_env(tmp_path / "env")
    pip(python, "install", str(clean_copy(tmp_path / "vkloss")))
    stand_in = tmp_path / "site" / "kp"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("STOCK = True\n")  # whatever another project installed as kp
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    done = run(python, "-c", CHECK + "; import kp; print(kp.STOCK)", cwd=tmp_path, env=env)
    assert done.returncode == 0 and done.stdout.split() == ["[4.", "6.]", "True"], done.stderr


@pytest.mark.parametrize("missing, package", [("vulkan/vulkan.h", "libvulkan-dev"), ("fmt/format.h", "libfmt-dev")])
def test_a_missing_system_package_is_one_line_naming_it(monkeypatch, tmp_path, missing, package):
    headers = tmp_path / "include"
    for header in ("vulkan/vulkan.h", "fmt/format.h"):
        if header != missing:
            (headers / header).parent.mkdir(parents=True, exist_ok=True)
            (headers / header).write_text("")
    monkeypatch.setattr(kp_build, "INCLUDE_DIRS", [headers])
    with pytest.raises(SystemExit, match=f"sudo apt-get install {package}"):
        kp_build.check_prerequisites()


def test_a_sdist_that_is_not_the_pinned_one_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "kp-0.9.0.tar.gz"
    fake.write_bytes(b"not kompute")
    monkeypatch.setenv("VKLOSS_KP_SDIST", str(fake))
    with pytest.raises(SystemExit, match="is not the pinned kp 0.9.0 sdist"):
        kp_build.find_sdist(tmp_path, tmp_path / "work")


def test_every_python_package_of_the_tree_is_in_the_wheels_list():
    """pyproject.toml lists the packages explicitly: one left out installs as an ImportError (vkloss.tools.bench
    was, for a commit)."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "vkloss").rglob("__init__.py")}
    assert found - listed == set()
