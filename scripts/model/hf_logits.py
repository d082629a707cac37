#!/usr/bin/env python3
"""Load a model directory with transformers and print logits / chat renders as JSON.

Usage: hf_logits.py MODEL_DIR REQUEST.json OUT.json
REQUEST: {"prompt_ids": [[int]], "conversations": [[{role, content}]]}
OUT: {"logits": [flat per prompt], "chat": [text per conversation, add_generation_prompt=True],
      "eos_token_id": ..., "tied": bool}
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    d, req_path, out_path = sys.argv[1:4]
    req = json.load(open(req_path))
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(d)
    out = {"logits": [], "chat": []}
    with torch.inference_mode():
        for ids in req["prompt_ids"]:
            out["logits"].append(model(torch.tensor([ids])).logits[0].float().reshape(-1).tolist())
    for conv in req.get("conversations", []):
        out["chat"].append(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True))
    out["eos_token_id"] = model.generation_config.eos_token_id
    out["tied"] = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    json.dump(out, open(out_path, "w"))


if __name__ == "__main__":
    main()
