#!/usr/bin/env bash
# The GPU machine's one command (issue 15). Here first, with network:  bash benchmarks/gpu_check.sh prepare
#   (wheels of tests/gpu_wheels.txt into .whl/, the tiny model into .hapo_cache/, both git-ignored), then
# device run: command "bash benchmarks/gpu_check.sh", carry [".whl", ".hapo_cache"], timeout_s 540.
# There: installs the wheels into /tmp/site, runs benchmarks/gpu_check.py (< 8 min); results in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = prepare ]; then
  ex=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$ex")"
  for d in .whl .hapo_cache; do grep -qx "/$d/" "$ex" 2>/dev/null || echo "/$d/" >>"$ex"; done
  mkdir -p .whl && reqs=$(grep -v '^#' tests/gpu_wheels.txt | grep -v antlr4)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $reqs || exit 1
  python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 || exit 1  # sdist only on PyPI
  HAPO_CACHE=$PWD/.hapo_cache PYTHONPATH=$PWD python3 -c "from hapo_cli.data.tiny import ensure_tiny_model as e; print(e(progress=False))"
  du -sh .whl .hapo_cache; exit 0
fi
OUT=${OUT:-$PWD/gpu_check_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HAPO_CACHE=$PWD/.hapo_cache HAPO_TEST_CACHE=$PWD/.hapo_cache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/console.txt"
timeout 480 python3 benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/console.txt"
