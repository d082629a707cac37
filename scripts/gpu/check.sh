#!/usr/bin/env bash
# The GPU check, one short run (well under 8 minutes on one GPU):
#   1. parity with transformers on CUDA (logits and greedy tokens, fp32 and bf16);
#   2. generation throughput, ours and transformers', fp32 and bf16;
#   3. training (DPO step) throughput and peak host memory, fp32 and bf16.
# The model is SmolLM2-135M-Instruct's shape (Llama, 30 layers, hidden 576, 9/3 heads, 49,152
# vocabulary) with random weights: the throughput of a shape does not depend on its weights,
# and the 98 MB GGUF cannot travel where only the working tree does. Real-weight parity is
# the CPU tests' job (model/tests/gguf_parity.rs, tests/real_model_cli.rs).
#
# Works where only the working tree travels: no package registry, the machine's own python3
# with its torch (the same version as the one built against: 2.11) and transformers. The
# Rust binaries are built beforehand on a machine with the toolchain (`make gpu-bundle`,
# into target/gpu-bundle/) and carried along with the tree.
#
# Usage: scripts/gpu/check.sh [RESULTS]   (default: $OUT/gpu-check.jsonl, else ./gpu-check.jsonl)
# Exit status: 0 when everything ran, 2 when there is no GPU or no bundle, 1 when a step failed.
# A dry run of the script itself on a CPU: CHECK_DEVICE=cpu GEN="8 16" TRAIN="2 64 2".
set -uo pipefail
cd "$(dirname "$0")/../.."
RESULTS=${1:-${OUT:-$PWD}/gpu-check.jsonl}
BIN=${SSPO_GPU_BIN:-$PWD/target/gpu-bundle}
PY=${PYTHON:-python3}
THREADS=${THREADS:-$(nproc)}
STEP_LIMIT=${STEP_LIMIT:-150}   # seconds per step, so the whole check stays short
DEVICE=${CHECK_DEVICE:-cuda}
GEN=${GEN:-32 128}              # generation: slots, new tokens per prompt (64 prompts, no eos)
TRAIN=${TRAIN:-8 512 6}         # training: pairs per step, tokens per sequence, steps
say() { echo "[gpu-check] $*" >&2; }
record() { tee -a "$RESULTS"; }
: > "$RESULTS"

if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo '{"check":"gpu","ok":false,"reason":"no CUDA GPU: python3 has no torch, or torch.cuda.is_available() is false"}' | record
  say "no CUDA GPU found: nothing was measured"
  exit 2
fi
for b in bench_generate bench_train dump_logits; do
  if [ ! -x "$BIN/$b" ]; then
    say "missing $BIN/$b: build the bundle first (make gpu-bundle) and carry target/gpu-bundle"
    exit 2
  fi
done
# Our binaries link libtorch dynamically: run them against this machine's torch (CUDA build).
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" SSPO_LIBTORCH_LIB="$TORCH_LIB"
export SSPO_BENCH_DEVICE=$DEVICE PYTHONUNBUFFERED=1
"$PY" -c 'import json, os, torch, transformers; cuda = os.environ["SSPO_BENCH_DEVICE"] != "cpu"; print(json.dumps({"check": "gpu", "ok": cuda, "device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)", "torch": torch.__version__, "transformers": transformers.__version__}))' | record

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failed=0
step() { # step NAME CMD...: runs CMD under the time limit, records its JSON lines
  local name=$1; shift
  say "$name"
  timeout "$STEP_LIMIT" "$@" > "$WORK/step.out" 2> "$WORK/step.err"
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -5 "$WORK/step.err" >&2
    printf '{"check":"%s","ok":false,"error":"exit status %s (124: over %ss), see the log"}\n' "$name" "$rc" "$STEP_LIMIT" | record
    failed=1
    return
  fi
  grep '^{' "$WORK/step.out" | record
}

step make-model "$PY" scripts/model/bench_hf_generate.py make "$WORK/m" smollm2
for dt in fp32 bf16; do
  step "dump-$dt" "$BIN/dump_logits" "$WORK/m" "$dt" "$WORK/ours-$dt"
  step "parity-$dt" "$PY" scripts/gpu/parity.py "$WORK/m" "$WORK/ours-$dt" "$dt"
done
for dt in fp32 bf16; do
  # shellcheck disable=SC2086 # GEN and TRAIN are lists of numbers
  step "generate-sspo-$dt" "$BIN/bench_generate" "$WORK/m" ${GEN% *} ${GEN#* } "$THREADS" fixed "$dt"
  step "generate-hf-$dt" "$PY" scripts/model/bench_hf_generate.py run "$WORK/m" ${GEN% *} ${GEN#* } "$THREADS" fixed "$dt"
  step "train-sspo-$dt" "$BIN/bench_train" "$WORK/m" $TRAIN "$THREADS" "$dt"
done
say "figures in $RESULTS"
exit "$failed"
