#!/usr/bin/env python3
"""Load model directories with transformers and write their logits / chat renders as JSON.

Usage: hf_logits.py REQUEST.json OUT.json
REQUEST: [{"dir": str, "prompt_ids": [[int]], "conversations": [[{role, content}]]}, ...]
OUT: one object per request: {"logits": [flat [len, vocab] per prompt],
     "chat": [text per conversation, add_generation_prompt=True], "eos_token_id", "tied"}
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def run(req):
    model = AutoModelForCausalLM.from_pretrained(req["dir"], dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(req["dir"])
    out = {"logits": [], "chat": []}
    with torch.inference_mode():
        for ids in req["prompt_ids"]:
            out["logits"].append(model(torch.tensor([ids])).logits[0].float().reshape(-1).tolist())
    for conv in req.get("conversations", []):
        out["chat"].append(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True))
    out["eos_token_id"] = model.generation_config.eos_token_id
    out["tied"] = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return out


def main():
    req_path, out_path = sys.argv[1:3]
    torch.set_num_threads(1)
    reqs = json.load(open(req_path))
    json.dump([run(r) for r in reqs], open(out_path, "w"))


if __name__ == "__main__":
    main()
