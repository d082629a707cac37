#!/usr/bin/env bash
# llama.cpp side of the generation benchmark, with llama.cpp's own tools instead of
# llama-cpp-python's bindings (whose build in the project venv crashed, see
# docs/benchmarks.md "Generation on SmolLM2").
#
#   scripts/bench/llama_cpp_build.sh [build|bench|all] [MODEL.gguf] [THREADS]
#
# build: fetches llama-cpp-python's source distribution with pip into a private venv (its
# vendor/llama.cpp holds llama.cpp's full source) and builds llama-batched-bench and
# llama-bench with cmake (about 15 minutes on 2 cores). Nothing goes into the project's venv.
# bench: llama-batched-bench on MODEL (default: the SmolLM2 Q4_1 file of `make smollm2`),
# 64-token prompts, 64 new tokens, 1 and 16 parallel sequences (one sequence id each, one
# shared KV cache), THREADS threads (default 2). Our figure to compare with is new tokens
# over the whole time, prompt included: B * TG / T from its table (printed after it).
set -euo pipefail

WORK=${LLAMA_CPP_WORK:-/tmp/llama_cpp_bench}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
what=${1:-all}
model=${2:-pipelines/models/SmolLM2-135M-Instruct.Q4_1.gguf}
threads=${3:-2}
src="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
bin="$src/build/bin"

build() {
    mkdir -p "$WORK"
    [ -x "$WORK/venv/bin/pip" ] || python3 -m venv "$WORK/venv"
    # cmake and ninja come as wheels; scikit-build-core lets pip read the sdist's metadata
    # without building the package's own build dependencies from source.
    "$WORK/venv/bin/pip" install -q cmake ninja scikit-build-core
    if [ ! -d "$src" ]; then
        "$WORK/venv/bin/pip" download -q --no-deps --no-binary llama-cpp-python \
            --no-build-isolation "llama-cpp-python==$VERSION" -d "$WORK"
        tar xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
    fi
    PATH="$WORK/venv/bin:$PATH" nice cmake -S "$src" -B "$src/build" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
    PATH="$WORK/venv/bin:$PATH" nice cmake --build "$src/build" -j2 \
        --target llama-batched-bench llama-bench
}

bench() {
    # -c: room for 16 sequences of 128 tokens; -b/-ub: one 16 x 64 prompt batch at once.
    # --no-repack: ggml's AMX product (chosen on AMX CPUs, through the repacked weights)
    # crashed with a segmentation fault on the benchmark machine, as llama-cpp-python did;
    # without it ggml uses its AVX-512 kernels.
    "$bin/llama-batched-bench" -m "$model" -c 4096 -b 1024 -ub 1024 --no-repack \
        -npp 64 -ntg 64 -npl 1,16 -t "$threads" -tb "$threads" 2>/dev/null | tee "$WORK/batched.txt"
    # B * TG / T: new tokens per second over prompt and generation together.
    awk -F'|' 'NF > 10 && $2 ~ /[0-9]/ {
        printf "parallel %d: %.1f new tok/s overall, %.1f decoding only\n", $4, $4 * $3 / $10, $9 }' \
        "$WORK/batched.txt"
}

case "$what" in
build) build ;;
bench) bench ;;
all) build && bench ;;
*) echo "usage: $0 [build|bench|all] [MODEL.gguf] [THREADS]" >&2; exit 2 ;;
esac
