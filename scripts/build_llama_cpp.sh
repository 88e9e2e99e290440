#!/usr/bin/env bash
# Builds llama.cpp's server and its HF->GGUF converter, a benchmark baseline only, from a
# registry package: llama-cpp-python's source distribution vendors llama.cpp at a fixed commit.
#   bash scripts/build_llama_cpp.sh [DEST]      (default build/llama.cpp; ~15 min on 2 cores)
# Prints nothing but errors on success; DEST/bin/llama-server and DEST/convert_hf_to_gguf.py.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
DEST=${1:-build/llama.cpp}
PY=${PYTHON:-python3}
if [ -x "$DEST/bin/llama-server" ]; then exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download -q --no-binary :all: --no-deps -d "$work" "llama-cpp-python==$VERSION"
tar -xzf "$work"/llama_cpp_python-"$VERSION".tar.gz -C "$work"
src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"
# Native flags: the baseline gets every instruction set of the machine it runs on (its best).
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DBUILD_SHARED_LIBS=OFF >"$work/cmake.log" || { cat "$work/cmake.log"; exit 1; }
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" \
  || { tail -50 "$work/build.log"; exit 1; }
mkdir -p "$DEST/bin"
cp "$work/build/bin/llama-server" "$DEST/bin/"
cp "$src/convert_hf_to_gguf.py" "$DEST/"
cp -r "$src/gguf-py" "$src/conversion" "$DEST/"
echo "$VERSION" >"$DEST/VERSION"
