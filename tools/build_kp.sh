#!/usr/bin/env bash
# Build and install kp 0.9.0, patched by tools/kp_patch.py, into a Python environment.
#   bash tools/build_kp.sh PYTHON [SDIST]
# PYTHON: the interpreter to install into (its numpy is the one kp is built against: numpy 1 or 2).
# SDIST: kp-0.9.0.tar.gz; downloaded from PyPI when left out. Either way its sha256 must be the pinned one.
# On the lent GPU machine (../shared/gpu/README.md), whose run.sh installs a stock kp first:
#   bash .gpu/run.sh 'bash tools/build_kp.sh $PY .gpu/whl/kp-0.9.0.tar.gz && $PY -m vkloss.tools bench'
# (the patched build is then in place for the rest of that machine's life).
# The Khronos validation layer is left out of kp (KOMPUTE_OPT_DISABLE_VK_DEBUG_LAYERS): stock kp enables it in
# every process where it is installed; vkloss's tests ask for it through VK_INSTANCE_LAYERS instead.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
py=$1
sdist=${2:-}
sha=98e583dc6e9731ff6d7a3e3317817e4d93f7b2945929619e29a56325db279949
level=$(sed -n 's/^PATCH_LEVEL = //p' "$here/kp_patch.py")
if "$py" -c "import kp, sys; sys.exit(getattr(kp, 'vkloss_patch', None) != $level)" 2>/dev/null; then
  echo "build_kp: kp 0.9.0 patch level $level is installed already"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$sdist" ]; then
  "$py" -m pip download -q --disable-pip-version-check --no-deps --no-binary=:all: kp==0.9.0 -d "$work" >&2
  sdist="$work/kp-0.9.0.tar.gz"
fi
echo "$sha  $sdist" | sha256sum -c --quiet - || { echo "build_kp: $sdist is not the pinned kp 0.9.0 sdist" >&2; exit 1; }
tar xzf "$sdist" -C "$work"
"$py" "$here/kp_patch.py" "$work/kp-0.9.0" >&2
# what the build needs; a machine without a package index (the lent GPU machine) has them already
# (setuptools 70.1 and later build wheels without the `wheel` package)
"$py" -c 'import setuptools, pybind11
try:
    import wheel
except ImportError:
    import setuptools.command.bdist_wheel' 2>/dev/null ||
  "$py" -m pip install -q --disable-pip-version-check "setuptools>=64" wheel pybind11 >&2
# kp's setup.py drops -DPYTHON_EXECUTABLE (a missing comma glues it to the previous flag), so CMake searches PATH
# for a Python: put this one's first and leave out shims (pyenv's) that name absent versions.
PATH="$(dirname "$("$py" -c 'import sys; print(sys.executable)')"):/usr/local/bin:/usr/bin:/bin" \
KOMPUTE_OPT_INSTALL=OFF KOMPUTE_OPT_USE_BUILT_IN_VULKAN_HEADER=OFF KOMPUTE_OPT_USE_BUILT_IN_FMT=OFF \
KOMPUTE_OPT_USE_BUILT_IN_PYBIND11=OFF KOMPUTE_OPT_DISABLE_VULKAN_VERSION_CHECK=ON \
KOMPUTE_OPT_DISABLE_VK_DEBUG_LAYERS=ON CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
CMAKE_PREFIX_PATH=$("$py" -m pybind11 --cmakedir) \
  "$py" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall \
  "$work/kp-0.9.0" >&2
"$py" -c 'import kp; print(f"build_kp: kp 0.9.0 patch level {kp.vkloss_patch} installed")'
