#!/usr/bin/env python3
"""transformers side of the GPU parity check (see check.sh).

  parity.py DIR OURS DTYPE   compares OURS.f32 / OURS.json (written by the dump_logits example)
                             with transformers on SSPO_BENCH_DEVICE (default cuda): the logits of the first prompt and 32
                             greedy tokens of the first four; prints one JSON line.
"""
import json
import os
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main(d, ours, dtype):
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    device = os.environ.get("SSPO_BENCH_DEVICE", "cuda")
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch_dtype).to(device).eval()
    prompts = json.load(open(os.path.join(d, "prompts.json")))
    with torch.inference_mode():
        ids = torch.tensor(prompts[:1], device=device)
        want = model(ids).logits[0].float().cpu().numpy()
        gen = model.generate(
            torch.tensor(prompts[:4], device=device),
            attention_mask=torch.ones(4, len(prompts[0]), device=device, dtype=torch.long),
            do_sample=False, max_new_tokens=32, min_new_tokens=32, eos_token_id=None, pad_token_id=0,
        )[:, len(prompts[0]):].tolist()
    got = np.fromfile(ours + ".f32", dtype="<f4").reshape(want.shape)
    greedy = json.load(open(ours + ".json"))["greedy"]

    def common(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    prefixes = [common(a, b) for a, b in zip(greedy, gen)]
    print(json.dumps({
        "check": "parity", "dtype": dtype,
        "device": torch.cuda.get_device_name(0) if device != "cpu" else "cpu",
        "max_abs_logit_diff": float(np.abs(got - want).max()),
        "max_abs_logit": float(np.abs(want).max()),
        "greedy_identical": sum(p == 32 for p in prefixes), "greedy_prompts": len(prefixes),
        "greedy_common_prefix": prefixes,
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
