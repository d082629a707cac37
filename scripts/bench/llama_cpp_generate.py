#!/usr/bin/env python3
"""llama.cpp side of the generation benchmark, through llama-cpp-python's C API.

  llama_cpp_generate.py MODEL.gguf PROMPTS.json PARALLEL NEW_TOKENS THREADS

Greedy decoding of every prompt (token ids, as bench_generate reads them) for NEW_TOKENS
tokens each (eos ignored, as in bench_generate), PARALLEL sequences at a time in one
llama.cpp batch (one sequence id each, one shared KV cache: what llama-server's parallel
slots do). PARALLEL=1 is one request at a time. Prints one JSON line: new tokens/s.
Prefill is included in the time, as on our side.

Needs `pip install llama-cpp-python` (it builds llama.cpp, about 4 minutes on 2 cores);
kept out of the project's venv and of `make test`.
"""
import ctypes
import json
import sys
import time

import llama_cpp
import numpy as np


def main():
    path, prompts_path, parallel, new_tokens, threads = sys.argv[1:6]
    parallel, new_tokens, threads = int(parallel), int(new_tokens), int(threads)
    prompts = json.load(open(prompts_path))
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
    if not model:
        sys.exit(f"cannot load {path}")
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    longest = max(len(p) for p in prompts)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = parallel * (longest + new_tokens) + 64
    cparams.n_batch = max(512, parallel * longest)
    cparams.n_ubatch = cparams.n_batch
    cparams.n_seq_max = parallel
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        sys.exit("cannot create a context")
    batch = llama_cpp.llama_batch_init(cparams.n_batch, 0, parallel)

    def decode(entries):
        """entries: (token, pos, seq, wants_logits); returns the batch rows with logits."""
        batch.n_tokens = len(entries)
        rows = []
        for i, (tok, pos, seq, out) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = out
            if out:
                rows.append(i)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            sys.exit("llama_decode failed")
        return rows

    def argmax(row):
        ptr = llama_cpp.llama_get_logits_ith(ctx, row)
        return int(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).argmax())

    def run(group):
        mem = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_clear(mem, True)
        entries = []
        for s, p in enumerate(group):
            entries += [(t, j, s, j == len(p) - 1) for j, t in enumerate(p)]
        rows = decode(entries)
        last = [argmax(r) for r in rows]
        produced = len(group)
        for step in range(1, new_tokens):
            entries = [(last[s], len(p) + step - 1, s, True) for s, p in enumerate(group)]
            rows = decode(entries)
            last = [argmax(r) for r in rows]
            produced += len(group)
        return produced

    run(prompts[:1])  # warm-up
    start = time.perf_counter()
    total = 0
    for i in range(0, len(prompts), parallel):
        total += run(prompts[i:i + parallel])
    secs = time.perf_counter() - start
    print(json.dumps({
        "impl": "llama.cpp", "model": path, "parallel": parallel, "new_tokens": total,
        "seconds": round(secs, 3), "tokens_per_s": round(total / secs, 1), "threads": threads,
    }))


if __name__ == "__main__":
    main()
