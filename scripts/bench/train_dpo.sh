#!/usr/bin/env bash
# DPO throughput: our `train` against TRL's DPOTrainer on the same model and the same
# pairs, on the CPU.
# Usage: [MODEL=FILE.gguf|DIR] [DTYPE=fp32|bf16] [LOSS=dpo|sspo] [BATCH=8] [TRL=0] \
#          scripts/bench/train_dpo.sh [PAIRS] [STEPS]     (defaults 64 pairs, 8 steps)
# MODEL: a GGUF file or HF directory (default: the built-in tiny-synth). Our side trains it
# as given (in DTYPE); a `train` node with lr 0 exports it as a HF directory for TRL, which
# loads that in fp32 and, for DTYPE=bf16, trains with bf16 autocast (as ours keeps fp32
# master weights). LOSS=sspo runs our step-weighted loss (TRL has no counterpart; it still
# runs DPO). TRL=0 skips TRL.
# Needs target/release/sspo-run (or BIN=...) and the repository's .venv; installs `trl`
# into that venv when it is missing (a version that works with its pinned transformers 4.x).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${BIN:-$ROOT/target/release/sspo-run}
PY=${SSPO_PYTHON:-$ROOT/.venv/bin/python}
PAIRS=${1:-64}
STEPS=${2:-8}
BATCH=${BATCH:-8}
DTYPE=${DTYPE:-fp32}
LOSS=${LOSS:-dpo}
MODEL=${MODEL:-}
if [ -n "$MODEL" ]; then
  MODEL_ENTRY="{path: \"$(realpath "$MODEL")\", dtype: $DTYPE}"
else
  MODEL_ENTRY="{builtin: tiny-synth, dtype: $DTYPE}"
fi
WORK=${WORK:-$(mktemp -d /tmp/sspo-train-bench.XXXXXX)}
THREADS=${THREADS:-$(nproc)}
export OMP_NUM_THREADS=$THREADS
cd "$WORK"

"$PY" - "$PAIRS" > pairs.jsonl <<'PYEOF'
import json, sys
n = int(sys.argv[1])
for i in range(n):
    a, b = i % 50 + 3, i % 7 + 2
    shared = f"{a}+{b}={a+b}\n"
    chosen = [shared, f"{a+b}*2={(a+b)*2}\n", f"answer {(a+b)*2}"]
    rejected = [shared, f"{a+b}*2={(a+b)*2+1}\n", f"check {(a+b)*2}\n", f"answer {(a+b)*2}"]
    print(json.dumps({
        "id": f"q{i}", "prompt": f"({a}+{b})*2", "answer": str((a + b) * 2),
        "context": f"({a}+{b})*2\n", "chosen_steps": chosen, "rejected_steps": rejected,
        "chosen": "".join(chosen), "rejected": "".join(rejected),
        # Per-step advantages, for LOSS=sspo (the shared first step has none).
        "chosen_adv": [0.0, 0.3, 0.1], "rejected_adv": [0.0, -0.2, -0.4, 0.1],
    }))
PYEOF

cat > bench.yaml <<YAML
name: bench
seed: 1
device: cpu
models:
  base: $MODEL_ENTRY
nodes:
  pairs: {op: source, params: {path: pairs.jsonl}}
  # lr 0: one step that leaves the weights as they are, to export the model as a HF dir.
  export: {op: train, inputs: {model: base, data: pairs}, params: {loss: dpo, lr: 0, max_steps: 1}}
  dpo:
    op: train
    inputs: {model: base, data: pairs}
    params: {loss: $LOSS, beta: 0.1, lr: 1.0e-5, warmup: 0, batch_size: $BATCH, max_steps: $STEPS, checkpoint_every: 1000}
YAML
"$BIN" bench.yaml --progress quiet
echo "== ours (sspo train, loss $LOSS, $DTYPE, batch $BATCH pairs, $THREADS threads)"
"$BIN" sql bench.yaml "SELECT step, loss, margin, tokens_per_s FROM dpo ORDER BY step" --format table
"$BIN" sql bench.yaml "SELECT median(tokens_per_s) AS median_tok_s, avg(tokens_per_s) AS mean_tok_s FROM dpo WHERE step > 1" --format table

[ "${TRL:-1}" = 0 ] && exit 0
if ! "$PY" -c "import trl" 2>/dev/null; then
  # TRL 1.x needs transformers 5, which would replace the 4.x the parity tests pin: keep
  # the venv's transformers and take the TRL that supports it.
  "$PY" -m pip install --quiet "transformers>=4.57,<5" "trl>=0.24,<1"
fi
for mode in ${MODES:-every-step precompute}; do
  echo "== TRL DPOTrainer ($mode, $DTYPE)"
  "$PY" "$ROOT/scripts/bench/train_dpo_trl.py" runs/bench/export/model pairs.jsonl "$BATCH" "$STEPS" "$THREADS" "$mode" "$DTYPE" 2>/dev/null | tail -3
done
