#!/usr/bin/env bash
# The test command: set up from nothing if needed, then run the whole suite under the Vulkan validation layer
# with synchronization validation (tests/conftest.py turns it on). Extra arguments go to pytest.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/tools/bootstrap.sh"
cd "$repo"
exec .venv/bin/python -m pytest "$@"
