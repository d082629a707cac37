#!/usr/bin/env bash
# Generation throughput: sspo (tch) vs transformers on the same random weights and prompts.
# Usage: scripts/model/bench_generate.sh [THREADS] [REPEATS]   (defaults 2, 1)
# Prints one JSON line per run (ours with and without packed weights, then transformers);
# the implementations alternate so that background load hits them alike.
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="${1:-2}"
REPEATS="${2:-1}"
source scripts/model/example_env.sh
build_example bench_generate
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# shape batch new_tokens fixed|mixed dtype
for spec in "small 8 64 fixed fp32" "small 8 64 mixed fp32" "wide 8 32 fixed fp32" \
            "wide 8 32 mixed fp32" "wide 8 32 fixed bf16"; do
  set -- $spec
  test -d "$WORK/$1" || "$PY" scripts/model/bench_hf_generate.py make "$WORK/$1" "$1" 2>/dev/null
  echo "# shape=$1 batch=$2 new_tokens=$3 lengths=$4 dtype=$5 threads=$THREADS"
  for _ in $(seq "$REPEATS"); do
    "$BIN" "$WORK/$1" "$2" "$3" "$THREADS" "$4" "$5"
    SSPO_BENCH_PLAIN=1 "$BIN" "$WORK/$1" "$2" "$3" "$THREADS" "$4" "$5"   # without packed weights
    "$PY" scripts/model/bench_hf_generate.py run "$WORK/$1" "$2" "$3" "$THREADS" "$4" "$5" 2>/dev/null
  done
done
