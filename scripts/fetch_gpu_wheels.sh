#!/usr/bin/env bash
# Run here, before a device check: saves the wheels the lent GPU machine lacks (flashinfer and
# apache-tvm-ffi; its image has torch, triton, transformers and the rest) into .whl/ (git-ignored),
# for Python 3.12 on x86-64 Linux, as that machine runs. flashinfer 0.6.0: newer wheels bundle
# prebuilt kernels and outgrow what a device call may carry (0.7.4 is 101 MB); 0.6.0 (7.5 MB) compiles
# the kernels it needs on the machine. The backend's calls are checked against 0.6.0 and 0.7.4.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "flashinfer-python==0.6.0" "apache-tvm-ffi>=0.1.6,<0.2"
ls -la .whl
