#!/usr/bin/env bash
# The main job: set up from nothing if needed, then run it on the default Vulkan device.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/tools/bootstrap.sh"
cd "$repo"
exec .venv/bin/python -m vkloss.train "$@"
