#!/usr/bin/env bash
# Set up vkloss from nothing: Debian packages, .venv, kp 0.9.0 built from source, vkloss editable.
# Idempotent; the second run only checks a stamp and returns in well under a second.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"
stamp="$venv/.vkloss-bootstrap"

debs="libvulkan-dev mesa-vulkan-drivers libfmt-dev vulkan-validationlayers cmake"
missing=""
for p in $debs; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "vkloss needs these Debian packages:$missing" >&2
    echo "run: sudo apt-get update && sudo apt-get install -y$missing" >&2
    exit 1
  fi
  echo "bootstrap: installing Debian packages:$missing" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2
fi

# The stamp records what was installed from; when pyproject and this script are unchanged, we are done.
want=$( (cat "$repo/pyproject.toml" "$repo/tools/bootstrap.sh" "$repo/tools/build_kp.sh" "$repo/tools/kp_patch.py"; echo "torch=${VKLOSS_TORCH:-1}") | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import kp, vkloss" 2>/dev/null; then
  exit 0
fi

py=${PYTHON:-python3}
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "vkloss needs Python >= 3.10" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip="$venv/bin/python -m pip --disable-pip-version-check -q"
$pip install "setuptools>=64" wheel pybind11 "numpy>=1.24" >&2

# kp 0.9.0 from its sdist with tools/kp_patch.py applied (a fence per Sequence, asynchronous replay, buffer
# barriers, no validation layer unless asked for): vkloss refuses a kp without that patch level.
bash "$repo/tools/build_kp.sh" "$venv/bin/python" >&2  # returns at once where the patched kp is installed
extras=test,train
[ "${VKLOSS_TORCH:-1}" = 0 ] || extras=test,train,torch
$pip install --no-build-isolation -e "$repo[$extras]" >&2
echo "$want" > "$stamp"
