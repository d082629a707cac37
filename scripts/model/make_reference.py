#!/usr/bin/env python3
"""Build tiny random Qwen2/Llama checkpoints with transformers and write reference outputs.

Usage: make_reference.py OUT_DIR SPEC.json

SPEC: {"cases": [{"name", "model_type", "config": {...overrides}, "seed", "shard",
                  "template": "chatml"|"inst", "template_location": "jinja"|"config"|"config_list"}],
       "prompts": [str, ...], "max_new_tokens": int, "conversations": [[{role, content}], ...]}

For every case OUT_DIR/<name>/ holds the HF model directory plus reference.json with
  prompt_ids, logits (per prompt, flattened [len, vocab]), greedy (new ids per prompt),
  chat (rendered templates for each conversation, with and without generation prompt).
"""
import json
import os
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>"]

CHATML = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}You are helpful.{%- endif %}\n"
    "    {{- '\\n\\n# Tools\\n<tools>' }}\n"
    "    {%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}\n"
    "    {{- '\\n</tools><|im_end|>\\n' }}\n"
    "{%- elif messages[0]['role'] != 'system' %}\n"
    "    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message.role not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + message.role) }}{% endif %}\n"
    "    {%- if not (tools and loop.first and message.role == 'system') %}\n"
    "    {{- '<|im_start|>' + message.role + '\\n' + message.content.strip() + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

INST = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] | trim + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Step 1: add the numbers. Step 2: check the sum.",
    "Let us think step by step. First, 12 + 30 = 42. Then 42 * 2 = 84. The answer is 84.",
    "Reasoning should be short and correct. Wait, let me verify: 7 * 8 = 56. So the answer is 56.",
    "User asks a question; the assistant answers. <think> hmm </think> Final answer: yes.",
]


def build_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def make_case(out, case, tok, spec):
    d = os.path.join(out, case["name"])
    os.makedirs(d, exist_ok=True)
    template = CHATML if case.get("template", "chatml") == "chatml" else INST
    if case.get("template", "chatml") == "chatml":
        specials = dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    else:
        specials = dict(bos_token="<s>", eos_token="</s>", pad_token="<|endoftext|>")
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **specials)
    eos_id = hf_tok.convert_tokens_to_ids(specials["eos_token"])
    pad_id = hf_tok.convert_tokens_to_ids(specials["pad_token"])
    cfg_kwargs = dict(
        vocab_size=len(hf_tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        # Wider than the 0.02 default so that greedy decoding of a tied tiny model does not
        # just repeat its input token.
        initializer_range=0.1,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=hf_tok.convert_tokens_to_ids("<s>"),
    )
    cfg_kwargs.update(case.get("config", {}))
    config = AutoConfig.for_model(case["model_type"], **cfg_kwargs)
    torch.manual_seed(case.get("seed", 0))
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32, attn_implementation="eager")
    # Random init leaves norms at 1 and biases at 0; perturb them so the test sees them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
            elif name.endswith(".bias"):
                p.normal_(0, 0.05)
    model.eval()
    kw = dict(safe_serialization=True)
    if case.get("shard"):
        kw["max_shard_size"] = "60KB"
    model.save_pretrained(d, **kw)
    location = case.get("template_location", "jinja")
    hf_tok.save_pretrained(d, save_jinja_files=(location == "jinja"))
    if location == "config_list":
        p = os.path.join(d, "tokenizer_config.json")
        tc = json.load(open(p))
        tc["chat_template"] = [
            {"name": "tool_use", "template": "{{ raise_exception('wrong template') }}"},
            {"name": "default", "template": tc["chat_template"]},
        ]
        json.dump(tc, open(p, "w"), indent=2)

    ref = {"prompt_ids": [], "logits": [], "greedy": [], "chat": [], "vocab_size": config.vocab_size}
    with torch.inference_mode():
        for text in spec["prompts"]:
            ids = hf_tok(text, add_special_tokens=False)["input_ids"]
            t = torch.tensor([ids])
            logits = model(t).logits[0].float()
            out = model.generate(
                t,
                attention_mask=torch.ones_like(t),
                do_sample=False,
                max_new_tokens=spec["max_new_tokens"],
                eos_token_id=eos_id,
                pad_token_id=pad_id,
            )
            ref["prompt_ids"].append(ids)
            ref["logits"].append(logits.reshape(-1).tolist())
            ref["greedy"].append(out[0, len(ids):].tolist())
    for conv in spec["conversations"]:
        for agp in (False, True):
            try:
                text = hf_tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=agp)
                err = None
            except Exception as e:  # template raised on purpose
                text, err = None, str(e)
            ref["chat"].append({"messages": conv, "add_generation_prompt": agp, "text": text, "error": err})
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f)


def main():
    out, spec_path = sys.argv[1], sys.argv[2]
    spec = json.load(open(spec_path))
    torch.set_num_threads(1)
    tok = build_tokenizer()
    for case in spec["cases"]:
        make_case(out, case, tok, spec)
    print("ok", len(spec["cases"]))


if __name__ == "__main__":
    main()
