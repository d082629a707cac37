#!/usr/bin/env bash
# Engine benchmarks (see docs/benchmarks.md):
#   1. cached re-run overhead of a 6-node pipeline (target < 0.5 s)
#   2. segment throughput on SIZE_MB of text (target >= 200 MB/s on 2 cores)
#   3. a SQL aggregate over the resulting ~10M-row steps table (target < 2 s)
# Usage: scripts/bench/engine.sh [SIZE_MB]   (default 1024; needs target/release/sspo-run)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/target/release/sspo-run}
SIZE_MB=${1:-1024}
WORK=${WORK:-$(mktemp -d /tmp/sspo-bench.XXXXXX)}
PY=${SSPO_PYTHON:-python3}
mkdir -p "$WORK"
cd "$WORK"

now() { date +%s.%N; }

echo "== data: $SIZE_MB MB of traces in $WORK"
"$PY" "$OLDPWD/scripts/bench/make_traces.py" traces.jsonl "$SIZE_MB"

cat > big.yaml <<'YAML'
name: big
nodes:
  traces: {op: source, params: {path: traces.jsonl, chunk_rows: 50000}}
  steps: {op: segment, inputs: {traces: traces}, params: {chunk_rows: 50000}}
YAML
"$BIN" big.yaml --progress quiet
bytes=$("$BIN" sql big.yaml "SELECT sum(length(response)) FROM traces" --format csv | tail -1)
seg_s=$("$PY" -c "import json;print(json.load(open('runs/big/steps/manifest.json'))['elapsed_s'])")
rows=$("$PY" -c "import json;print(json.load(open('runs/big/steps/manifest.json'))['rows'][''])")
echo "== segment: $rows steps from $bytes chars in ${seg_s}s"
"$PY" -c "print(f'segment throughput: {$bytes/1e6/$seg_s:.0f} MB/s (node wall time, Parquet in and out)')"

echo "== SQL aggregate over $rows steps"
for q in \
  "SELECT count(*), avg(char_end - char_start), max(step) FROM steps" \
  "SELECT step, count(*) AS n, avg(char_end - char_start) AS mean_chars FROM steps GROUP BY step ORDER BY step" \
  "SELECT id, count(*) AS n FROM steps GROUP BY id ORDER BY n DESC LIMIT 5"; do
  best=999
  for _ in 1 2 3; do
    t0=$(now); "$BIN" sql big.yaml "$q" --format csv > /dev/null; t1=$(now)
    best=$("$PY" -c "print(min($best, $t1 - $t0))")
  done
  printf '  %.2fs (best of 3, whole command)  %s\n' "$best" "$q"
done

echo "== cached re-run of a 6-node pipeline"
head -c 2000000 traces.jsonl | head -n -1 > small.jsonl
cat > six.yaml <<'YAML'
name: six
nodes:
  traces: {op: source, params: {path: small.jsonl}}
  s1: {op: segment, inputs: {traces: traces}}
  s2: {op: segment, inputs: {traces: traces}, params: {min_chars: 50}}
  s3: {op: segment, inputs: {traces: traces}, params: {max_steps: 8}}
  s4: {op: segment, inputs: {traces: traces}, params: {delimiter: ". "}}
  s5: {op: segment, inputs: {traces: traces}, params: {regex: '\n\n'}}
YAML
"$BIN" six.yaml --progress quiet 2> /dev/null
best=999; total=0
for _ in 1 2 3 4 5 6 7 8 9 10; do
  t0=$(now); "$BIN" six.yaml --progress quiet 2> /dev/null; t1=$(now)
  best=$("$PY" -c "print(min($best, $t1 - $t0))"); total=$("$PY" -c "print($total + $t1 - $t0)")
done
"$PY" -c "print(f'cached re-run: mean {$total/10:.3f}s, best {$best:.3f}s (whole process, 6 nodes)')"
t0=$(now); "$BIN" --version > /dev/null; t1=$(now)
"$PY" -c "print(f'process start alone (sspo-run --version): {$t1 - $t0:.3f}s')"
echo "work dir: $WORK"
