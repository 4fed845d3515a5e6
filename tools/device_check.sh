#!/usr/bin/env bash
# The GPU checks, as one call of the `device` tool (a lent NVIDIA machine, ../shared/gpu/README.md), from the
# checkout's root with .gpu carried (bash ../shared/gpu/prepare.sh here first):
#   bash tools/device_check.sh [SECONDS]
# Within SECONDS (default 560) in all: set up (the carried loader and glslang, kp with vkloss's patch: run.sh's stock
# kp build is skipped), list the devices, compile every shader, run the tests of the GPU-only kernel paths under
# synchronization validation, run each bench section as its own process (one that fails or runs out of time leaves
# the others' figures), then the rest of the suite with the time left. Each step stops on SIGINT at its deadline,
# so pytest still prints what failed. Everything is written to a work folder and packed, after every step, into one
# file, $OUT/device_check.tgz ($OUT: the device tool's folder, which returns only a few files; else ./device-out).
set -uo pipefail
budget=${1:-560}
if [ -z "${VKLOSS_DEVICE_CHECK_INSIDE:-}" ]; then
  touch /tmp/vkloss-gpu-setup.done  # run.sh would build a stock kp; ours is built below, patched
  VKLOSS_DEVICE_CHECK_INSIDE=$(date +%s) exec bash .gpu/run.sh "bash tools/device_check.sh $budget"
fi
t0=$VKLOSS_DEVICE_CHECK_INSIDE
packed=${OUT:-device-out}
out=$(mktemp -d)
mkdir -p "$packed"
pack() { tar czf "$packed/device_check.tgz" -C "$out" .; }
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 VKLOSS_CACHE_DIR=/tmp/vkloss-spirv
left() { echo $((budget - ($(date +%s) - t0))); }
step() {  # step NAME SECONDS COMMAND...: run it with a deadline, its output in $out/NAME.txt
  local name=$1 limit=$2; shift 2
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  if [ "$limit" -lt 10 ]; then echo "== $name: skipped, $(left) s left" | tee -a "$out/summary.txt"; return; fi
  local start=$(date +%s)
  timeout -s INT -k 15 "$limit" "$@" > "$out/$name.txt" 2>&1
  echo "== $name: exit $? after $(($(date +%s) - start)) s" | tee -a "$out/summary.txt"
  tail -n 3 "$out/$name.txt"
  pack
}
{
  $PY -m pip install -q --no-index --no-deps .gpu/whl/cmeel*.whl &&
  # vkloss's own Kompute, built from the carried sdist (tools/kp_build.py finds .gpu/whl/ by itself)
  VKLOSS_KP_SDIST=.gpu/whl/kp-0.9.0.tar.gz $PY -m pip install -q --no-index --no-deps --no-build-isolation -e .
} > "$out/setup.txt" 2>&1 || { echo "setup failed:"; tail -n 30 "$out/setup.txt"; pack; exit 1; }
echo "== setup: $(($(date +%s) - t0)) s" | tee "$out/summary.txt"
step devices 60 "$PY" -m vkloss.tools devices
cat "$out/devices.txt"
step compile 120 "$PY" -m vkloss.tools compile
gpu_tests=(tests/kernels/test_variants.py tests/ops/test_cross_entropy_gpu_rows.py tests/kernels/test_matmul_tiles.py
           tests/ops/test_sixteen_bit.py tests/ops/test_linear_cross_entropy.py tests/ops/test_fused_losses.py
           tests/ops/test_sizes.py)
step gpu_tests 120 "$PY" -m pytest -q -rf --tb=short -p no:cacheprovider "${gpu_tests[@]}"
for section in losses target_forms linear sixteen_bit liger_options distributed engine host memory; do
  step "bench_$section" 150 "$PY" -m vkloss.tools bench --sections "$section" --json "$out/bench_$section.json"
done
rest=()
for f in tests/*/test_*.py; do [[ " ${gpu_tests[*]} " == *" $f "* || $f == tests/install/* ]] || rest+=("$f"); done
step rest_of_suite 600 "$PY" -m pytest -q -rf --tb=short -p no:cacheprovider "${rest[@]}"
cat "$out/summary.txt"
