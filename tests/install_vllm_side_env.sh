#!/usr/bin/env bash
# Install vLLM's Python modules WITHOUT its dependencies into a side folder (default .vllm-env),
# plus the few small packages its interface modules import, so tests/test_vllm_contract.py can
# check hapo's logits processors against the real vLLM classes on a CPU-only machine.
# The main environment is never touched: nothing is installed into site-packages, and the test
# only puts the folder on sys.path. Needs network access to PyPI; ~900 MB on disk; ~1 minute.
#
#   bash tests/install_vllm_side_env.sh                      # vLLM 0.33.0 into .vllm-env
#   VLLM_VERSION=0.32.0 VLLM_SIDE_ENV=/tmp/venv bash tests/install_vllm_side_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python}"
VLLM_VERSION="${VLLM_VERSION:-0.33.0}"
TARGET="${VLLM_SIDE_ENV:-.vllm-env}"

# Imported (transitively) by the vLLM modules the contract test uses (vllm.sampling_params,
# vllm.config.VllmConfig, vllm.v1.sample.logits_processor, vllm.v1.worker.gpu.sample.logits_processor,
# vllm.v1.worker.gpu.states) and not among hapo's own requirements. Pinned to the versions the
# contract test was run with, inside vLLM 0.33.0's own requirement ranges.
SIDE_DEPS=(
  msgspec==0.22.0 cbor2==6.2.1 pyzmq==27.3.0 cachetools==8.0.1 pybase64==1.5.1 uvloop==0.23.0
  aiohttp==3.14.5 multidict==7.2.1 yarl==1.25.1 propcache==0.5.4 aiohappyeyeballs==2.7.1
  aiosignal==1.4.0 frozenlist==1.8.0 openai==3.54.0 openai-harmony==0.0.8
  attrs==26.1.0 cloudpickle==3.1.2 py-cpuinfo==9.0.0
  prometheus-client==0.26.0 fastapi==0.136.3 starlette==1.10.0 partial-json-parser==0.2.1.1.post7
  xgrammar==0.2.8 apache-tvm-ffi==0.1.11 llguidance==1.7.6
)
# The test APPENDS the folder to sys.path, so packages of the main environment keep precedence
# and the copies here only fill gaps (vllm itself is never in the main environment).

tmp="${TARGET}.partial"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT  # never leave a half-installed folder behind
echo "installing vllm==${VLLM_VERSION} (no deps) and ${#SIDE_DEPS[@]} interface deps into ${TARGET} ..."
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
  --target "$tmp" "vllm==${VLLM_VERSION}" "${SIDE_DEPS[@]}"

"$PY" - "$tmp" <<'PYCHECK'
import os
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # no GPU needed: vLLM's CPU platform object
sys.path.append(sys.argv[1])
import vllm
import vllm.v1.sample.logits_processor  # noqa: F401  (V1 model runner interface)
from vllm.config import VllmConfig

VllmConfig()  # the default config the contract test builds processors with
try:
    import vllm.v1.worker.gpu.sample.logits_processor  # noqa: F401  (Model Runner V2, vLLM >= 0.31)
    v2 = "yes"
except ImportError:
    v2 = "no (vLLM < 0.31)"
print(f"vllm {vllm.__version__} importable from the side env; V2 logits-processor interface: {v2}")
PYCHECK

rm -rf "$TARGET"
mv "$tmp" "$TARGET"
echo "done: ${TARGET} (run: python -m pytest tests/test_vllm_contract.py)"
