#!/usr/bin/env python3
"""transformers side of the generation benchmark (see bench_generate.sh).

  bench_hf_generate.py make DIR SHAPE   write a random model of SHAPE (small|wide|smollm2) + prompts.json
  bench_hf_generate.py run DIR BATCH NEW_TOKENS THREADS [fixed|mixed] [fp32|bf16]
      greedy `generate` over all prompts in batches of BATCH, NEW_TOKENS each (no eos), prints
      one JSON line: new tokens/s and peak RSS.
      `mixed`: prompt i wants new_tokens(i) tokens (between NEW_TOKENS/8 and 2*NEW_TOKENS), like
      requests that hit eos at different points: a static batch runs until its longest request
      is done and only the wanted tokens count.
  SSPO_BENCH_DEVICE=cuda runs on the GPU (default cpu).
"""
import json
import os
import sys
import time

SHAPES = {
    # name: (hidden, layers, heads, kv heads, intermediate, vocab, n_prompts, prompt_len)
    "small": (256, 4, 4, 2, 768, 4096, 16, 32),
    "wide": (896, 8, 14, 2, 4864, 32000, 16, 64),
    # SmolLM2-135M-Instruct's shape (a Llama config), with random weights.
    "smollm2": (576, 30, 9, 3, 1536, 49152, 64, 64),
}


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def make(d, shape):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_reference import build_tokenizer
    from transformers import PreTrainedTokenizerFast

    h, layers, heads, kv, inter, vocab, n, plen = SHAPES[shape]
    common = dict(
        vocab_size=vocab, hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=True,
        eos_token_id=None, bos_token_id=None,
    )
    if shape == "smollm2":
        cfg = LlamaConfig(max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5, **common)
    else:
        cfg = Qwen2Config(max_position_embeddings=4096, rope_theta=1000000.0, **common)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(d, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), eos_token="<|im_end|>").save_pretrained(d)
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(5, vocab, (n, plen), generator=g).tolist()
    json.dump(prompts, open(os.path.join(d, "prompts.json"), "w"))


def wanted(i, new_tokens, mixed):
    # Same formula as model/examples/bench_generate.rs.
    return max(1, new_tokens * (1 + (i * 7) % 16) // 8) if mixed else new_tokens


def run(d, batch, new_tokens, threads, mixed, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    device = os.environ.get("SSPO_BENCH_DEVICE", "cpu")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch_dtype).to(device)
    model.eval()
    prompts = json.load(open(os.path.join(d, "prompts.json")))
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0, min_new_tokens=new_tokens)
    with torch.inference_mode():
        warm = torch.tensor(prompts[:1], device=device)
        model.generate(warm, attention_mask=torch.ones_like(warm), max_new_tokens=4, **kw)
        start = time.perf_counter()
        cpu0 = time.process_time()
        total = 0
        for i in range(0, len(prompts), batch):
            ids = torch.tensor(prompts[i : i + batch], device=device)
            want = [wanted(j, new_tokens, mixed) for j in range(i, i + ids.shape[0])]
            kw["min_new_tokens"] = max(want)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max(want), **kw)
            assert out.shape[1] - ids.shape[1] == max(want)
            total += sum(want)
        if device != "cpu":
            torch.cuda.synchronize()
        secs = time.perf_counter() - start
        cpu = time.process_time() - cpu0
    print(json.dumps({"impl": "transformers", "device": device, "mixed": mixed, "dtype": dtype, "new_tokens": total, "seconds": round(secs, 3),
                      "tokens_per_s": round(total / secs, 1), "cpu_seconds": round(cpu, 2),
                      "tokens_per_cpu_s": round(total / cpu, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        mixed = len(sys.argv) > 6 and sys.argv[6] == "mixed"
        dtype = sys.argv[7] if len(sys.argv) > 7 else "fp32"
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), mixed, dtype)
