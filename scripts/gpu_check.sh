#!/usr/bin/env bash
# The device check, in one go on a lent GPU machine (its image has torch, triton, transformers):
#   here:  bash scripts/fetch_gpu_wheels.sh          (optional: without it, flashinfer is skipped)
#   there: bash scripts/gpu_check.sh [--quick]       (device tool: carry [".whl"], timeout_s 600; stages
#          capped at 180 + 120 + 270 s; --quick first, the full benchmark on a second call if time is left)
# Installs kojudge without fetching anything, runs the kernel and backend tests on CUDA, then
# bench/gpu_kernels.py; logs and results go to $OUT as each stage ends. Commit what comes back
# under bench/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/tmp}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi -L >"$OUT/gpu.txt" 2>&1 || { echo "no GPU here: this script is for a lent GPU machine"; exit 2; }
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
TESTS="tests/test_kernels_attention.py tests/test_kernels_logprobs.py tests/test_kernels_compile.py \
  tests/test_prefix_cache.py tests/test_train.py"
SELECTED="kernels or triton or paged or merge or store or logprobs or chunk or compile or cuda"
# flashinfer compiles its kernels on first use (minutes, unknown): its tests run after the others
timeout 180 python3 -m pytest -q -rs $TESTS -k "($SELECTED) and not flashinfer" 2>&1 | tee "$OUT/tests.log"
timeout 120 python3 -m pytest -q -rs $TESTS -k flashinfer 2>&1 | tee "$OUT/tests_flashinfer.log"
timeout 270 python3 bench/gpu_kernels.py "$@" 2>&1 | tee "$OUT/gpu_kernels.log"
cp bench/results/gpu_kernels*.json "$OUT"/ 2>/dev/null
exit 0
