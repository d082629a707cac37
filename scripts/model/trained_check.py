#!/usr/bin/env python3
"""transformers' view of a pipeline's real-model outputs, for tests/real_model_cli.rs.

Usage: trained_check.py REQUEST.json OUT_DIR

REQUEST: {"trained_dir": str, "prompt_ids": [[int]],
          "gguf": str, "user_messages": [str]}

Writes into OUT_DIR:
  logits_I.f32   logits [len, vocab] of prompt I from `trained_dir` loaded by
                 AutoModelForCausalLM in fp32 (little-endian float32)
  chat.json      {"contexts": apply_chat_template([{user: m}], add_generation_prompt=True)
                 per message, with the tokenizer of the GGUF file; "model_type": str}
"""
import json
import os
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    req_path, out = sys.argv[1:3]
    torch.set_num_threads(1)
    req = json.load(open(req_path))
    os.makedirs(out, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(req["trained_dir"], dtype=torch.float32)
    model.eval()
    with torch.inference_mode():
        for i, ids in enumerate(req["prompt_ids"]):
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
            logits.astype("<f4").tofile(os.path.join(out, f"logits_{i}.f32"))
    gguf = req["gguf"]
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    contexts = [
        tok.apply_chat_template([{"role": "user", "content": m}], tokenize=False,
                                add_generation_prompt=True)
        for m in req["user_messages"]
    ]
    json.dump({"contexts": contexts, "model_type": model.config.model_type},
              open(os.path.join(out, "chat.json"), "w"))


if __name__ == "__main__":
    main()
