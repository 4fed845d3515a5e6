#!/usr/bin/env bash
# Set up a checkout from nothing: the Debian packages vkloss builds against, .venv, then one pip install of vkloss
# (editable, with its extras), which builds vkloss's own Kompute (tools/kp_build.py).
# Idempotent; the second run only checks a stamp and returns in well under a second.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"
stamp="$venv/.vkloss-bootstrap"

debs="libvulkan-dev mesa-vulkan-drivers libfmt-dev vulkan-validationlayers g++"
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

# The stamp records what was installed from; when the build inputs are unchanged, we are done.
want=$( (cat "$repo/pyproject.toml" "$repo/setup.py" "$repo/tools/bootstrap.sh" "$repo/tools/kp_build.py" \
         "$repo/tools/kp_patch.py"; echo "torch=${VKLOSS_TORCH:-1}") | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import vkloss" 2>/dev/null; then
  exit 0
fi

py=${PYTHON:-python3}
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "vkloss needs Python >= 3.10" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
extras=test,train
[ "${VKLOSS_TORCH:-1}" = 0 ] || extras=test,train,torch
# pip builds vkloss and its Kompute in an isolated environment (pybind11, cmake from the package index)
"$venv/bin/python" -m pip install --disable-pip-version-check -q -e "$repo[$extras]" >&2
echo "$want" > "$stamp"
