#!/usr/bin/env bash
# Installs kojudge and its test/bench dependencies from the project's own files.
# Without a GPU, torch is pinned to the CPU wheel first: a plain `pip install torch` would pull a
# multi-GB CUDA build. A GPU is detected with nvidia-smi (the CUDA toolkit alone does not count).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extras="test,plots,gpu"
else
  "$PY" -m pip install -q "torch==2.13.0"
  extras="test,plots"
fi
"$PY" -m pip install -q -e ".[${extras}]"
