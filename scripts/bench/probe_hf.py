#!/usr/bin/env python3
"""Step-boundary probing with HF transformers, for comparison with sspo's cached probing.

Usage:
    python scripts/bench/probe_hf.py DIR [--threads 1] [--repeats 3]

DIR is written by `cargo run --release -p sspo-operators --example bench_probe -- --out DIR`:
the random model (`Model::save_dir`) and `traces.json` (token ids, probe boundaries, probe
tokens and sspo's cached values). For every probe kind this script probes every boundary of
every trace two ways:

* `naive`: one forward pass per boundary over `ids[:b] + suffix (+ answer)`;
* `batched`: the K+1 prefixes of a trace right-padded into one batch (one forward per trace);

and prints one JSON line per kind and way with the time (median of the repeats) and the
largest difference from sspo's values.
"""

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


def values_from_logprobs(kind, lp_rows, probe):
    """lp_rows: log-softmax rows at the read positions of one probe."""
    if kind.startswith("verbal"):
        row = lp_rows[0]
        y = sum(math.exp(row[t].item()) for t in probe["yes"])
        n = sum(math.exp(row[t].item()) for t in probe["no"])
        return y / (y + n)
    lps = [lp_rows[j][t].item() for j, t in enumerate(probe["answer"])]
    return min(1.0, math.exp(sum(lps) / len(lps)))


def block_of(kind, spec, trace):
    suffix = spec["suffix"]
    if kind.startswith("verbal"):
        return suffix, [len(suffix)]
    ans = trace["answer"]
    return suffix + ans, [len(suffix) + j for j in range(len(ans))]


def probe_naive(model, kind, spec, trace):
    out = []
    block, points = block_of(kind, spec, trace)
    for b in trace["boundaries"]:
        ids = torch.tensor([trace["ids"][:b] + block])
        logits = model(input_ids=ids).logits[0]
        rows = torch.stack([logits[b + p - 1] for p in points]).float().log_softmax(-1)
        out.append(values_from_logprobs(kind, rows, {**spec, "answer": trace["answer"]}))
    return out


def probe_batched(model, kind, spec, trace):
    block, points = block_of(kind, spec, trace)
    seqs = [trace["ids"][:b] + block for b in trace["boundaries"]]
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    logits = model(input_ids=ids, attention_mask=mask).logits
    out = []
    for i, b in enumerate(trace["boundaries"]):
        rows = torch.stack([logits[i, b + p - 1] for p in points]).float().log_softmax(-1)
        out.append(values_from_logprobs(kind, rows, {**spec, "answer": trace["answer"]}))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d = Path(args.dir)
    doc = json.loads((d / "traces.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    model.eval()
    traces = doc["traces"]
    for spec in doc["kinds"]:
        kind = spec["kind"]
        ours = [v for t in spec["values"] for v in t]
        for way, fn in (("naive", probe_naive), ("batched", probe_batched)):
            with torch.inference_mode():
                fn(model, kind, spec, traces[0])  # warm-up
                times, vals = [], []
                for _ in range(max(1, args.repeats)):
                    t0 = time.perf_counter()
                    vals = [v for t in traces for v in fn(model, kind, spec, t)]
                    times.append(time.perf_counter() - t0)
            diff = max(abs(a - b) for a, b in zip(vals, ours))
            print(
                json.dumps(
                    {
                        "impl": "transformers",
                        "way": way,
                        "model": doc["model"],
                        "kind": kind,
                        "traces": len(traces),
                        "probes": len(vals),
                        "threads": args.threads,
                        "seconds": statistics.median(times),
                        "sspo_cached_s": spec["cached_s"],
                        "sspo_naive_s": spec["naive_s"],
                        "max_abs_diff_vs_sspo": diff,
                    }
                )
            )


if __name__ == "__main__":
    main()
