#!/usr/bin/env bash
# Installs kojudge and its test/bench dependencies from the project's own files.
# Without a GPU, torch is pinned to the CPU wheel first: a plain `pip install torch` would pull a
# multi-GB CUDA build. A GPU is detected with nvidia-smi (the CUDA toolkit alone does not count).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
else
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[test,plots]"
# The CPU kernels (decode attention, KV store), compiled beside their source for AVX-512 (~1 min);
# pip's isolated build has no torch to compile them against. Where it cannot be built, kojudge
# runs those steps in torch.
"$PY" setup.py -q build_ext --inplace
# flashinfer is an optional attention backend: a GPU setup it does not build for still gets kojudge.
if [ "$gpu" = 1 ] && ! "$PY" -m pip install -q -e ".[gpu]"; then
  echo "install.sh: the optional flashinfer backend did not install; the triton backend still works" >&2
fi
