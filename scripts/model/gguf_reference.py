#!/usr/bin/env python3
"""Small GGUF files and transformers' view of them, for the GGUF loader tests.

Usage: gguf_reference.py synthetic OUT_DIR REQUEST.json
       gguf_reference.py model OUT_DIR REQUEST.json KEY FILE.gguf

REQUEST: {"corpus": [str], "conversations": [[{role, content}]], "prompts": [str],
          "max_new_tokens": int, "eos_token": str}

`synthetic` writes into OUT_DIR:
  zoo.gguf           one tensor per ggml type the loader dequantises, filled with random
                     bytes (finite scales), every metadata value type, alignment 64, and one
                     IQ2_XXS tensor the loader must refuse
  zoo/NAME.f32       `gguf.quants.dequantize` of each zoo tensor (little-endian float32)
  qwen2_tiny.gguf    tiny random qwen2 model (q/k/v biases, untied head)
  llama_tiny.gguf    tiny random llama model (GQA 4:1, tied embeddings, add_bos_token)
                     Between them the two models store weights in every supported type.
  gemma.gguf         an architecture the loader does not implement
  llama_spm.gguf     llama_tiny with a SentencePiece (`llama`) tokenizer
  llama_iq2.gguf     llama_tiny with one IQ2_XXS weight

Both modes then write what transformers' GGUF loader (`from_pretrained(dir, gguf_file=name)`)
makes of the request, for the two tiny models or for FILE.gguf (as KEY):
  reference.json     {KEY: {"ids", "ids_with_specials": per corpus text (without / with
                     special tokens), "chat": per conversation with and without the
                     generation prompt, "prompt_ids", "logits_files", "greedy": per prompt}}
  KEY_logits_I.f32   logits [prompt length, vocab] of prompt I (little-endian float32)
"""
import json
import os
import sys

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as T
from transformers import AutoModelForCausalLM, AutoTokenizer

QK_K = 256
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are tiny.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def tiny_vocab():
    """Special tokens, the 256 byte characters, a few merges and one user-defined token."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "a n", "Ġ s", "o n", "r e", "Ġ w", "e s"]
    merged = [m.replace(" ", "") for m in merges]
    tokens = specials + bytes_to_unicode() + merged + ["<tool>"]
    types = [3] * len(specials) + [1] * (256 + len(merged)) + [4]
    return tokens, types, merges


# ---------------------------------------------------------------- tensor encoding

def f16_bytes(values):
    return np.asarray(values, dtype=np.float16).view(np.uint8).reshape(len(values), 2)


def kquant_blocks(rng, ty, n_blocks, d_scale):
    """Random K-quant blocks (gguf-py cannot quantise these) with scales near `d_scale`."""
    size = gguf.GGML_QUANT_SIZES[ty][1]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    d = rng.uniform(0.5, 1.5, n_blocks) * d_scale
    if ty == T.Q6_K:  # ql, qh, scales (int8), d
        raw[:, -2:] = f16_bytes(d)
    else:  # d, dmin, scales, ...: the mins roughly centre the values on zero
        mean_q = 7.5 if ty == T.Q4_K else 15.5
        raw[:, 0:2] = f16_bytes(d)
        raw[:, 2:4] = f16_bytes(d * mean_q)
    return raw


def encode(rng, ty, shape, std=0.02):
    """A random tensor of numpy `shape` stored as ggml type `ty`: (data, raw_dtype)."""
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    if ty in (T.Q4_K, T.Q5_K, T.Q6_K):
        n_blocks = rows * shape[-1] // QK_K
        d_scale = {T.Q4_K: 2e-5, T.Q5_K: 1e-5, T.Q6_K: 2e-5}[ty]
        raw = kquant_blocks(rng, ty, n_blocks, d_scale)
        return raw.reshape(*shape[:-1], -1), ty
    w = rng.normal(0.0, std, size=shape).astype(np.float32)
    if ty == T.F32:
        return w, None
    if ty == T.F16:
        return w.astype(np.float16), None
    return gguf.quants.quantize(w, ty), ty


def random_finite_f16(rng, n):
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    bits[(bits & 0x7C00) == 0x7C00] &= 0xBFFF  # no inf / nan: clear the top exponent bit
    return bits


def zoo_tensor(rng, ty, shape):
    """Random bytes for every field, scales finite (inf * 0 would make NaN comparisons)."""
    block, size = gguf.GGML_QUANT_SIZES[ty]
    n = int(np.prod(shape))
    if ty == T.F32:
        bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
        bits[(bits & 0x7F800000) == 0x7F800000] &= 0xBFFFFFFF
        bits[:4] = [0x00000000, 0x80000000, 0x00000001, 0x807FFFFF]  # zeros and subnormals
        return bits.view(np.float32).reshape(shape), None
    if ty == T.F16:
        bits = random_finite_f16(rng, n)
        bits[:4] = [0x0000, 0x8000, 0x0001, 0x83FF]
        return bits.view(np.float16).reshape(shape), None
    if ty == T.BF16:
        bits = random_finite_f16(rng, n)
        bits[(bits & 0x7F80) == 0x7F80] &= 0xBFFF
        return bits.view(np.uint8).reshape(*shape[:-1], -1), ty
    n_blocks = n // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    # Where each block keeps its float16 scales.
    f16_fields = {
        T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
        T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [size - 2], T.IQ2_XXS: [0],
    }[ty]
    for off in f16_fields:
        raw[:, off:off + 2] = random_finite_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(*shape[:-1], -1), ty


def write_zoo(out):
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(os.path.join(out, "zoo.gguf"), "llama")
    w.add_custom_alignment(64)
    kv = gguf.GGUFValueType
    w.add_key_value("zoo.u8", 200, kv.UINT8)
    w.add_key_value("zoo.i8", -100, kv.INT8)
    w.add_key_value("zoo.u16", 60000, kv.UINT16)
    w.add_key_value("zoo.i16", -30000, kv.INT16)
    w.add_key_value("zoo.u32", 4000000000, kv.UINT32)
    w.add_key_value("zoo.i32", -2000000000, kv.INT32)
    w.add_key_value("zoo.u64", 2**63 + 5, kv.UINT64)
    w.add_key_value("zoo.i64", -(2**62), kv.INT64)
    w.add_key_value("zoo.f32", 0.25, kv.FLOAT32)
    w.add_key_value("zoo.f64", -1e300, kv.FLOAT64)
    w.add_key_value("zoo.bool", True, kv.BOOL)
    w.add_key_value("zoo.string", "ünïcode ✓", kv.STRING)
    w.add_array("zoo.strings", ["a", "", "ß"])
    w.add_array("zoo.nested", [[1, 2], [3]])
    w.add_key_value("zoo.f64s", [0.5, -2.0], kv.ARRAY, sub_type=kv.FLOAT64)
    shapes = {
        T.F32: (3, 40), T.F16: (2, 3, 24), T.BF16: (5, 16),
        T.Q4_0: (3, 64), T.Q4_1: (3, 64), T.Q5_0: (3, 64), T.Q5_1: (3, 64), T.Q8_0: (3, 64),
        T.Q4_K: (2, 512), T.Q5_K: (2, 512), T.Q6_K: (2, 512), T.IQ2_XXS: (1, 256),
    }
    for ty, shape in shapes.items():
        data, raw = zoo_tensor(rng, ty, shape)
        w.add_tensor(f"zoo.{ty.name.lower()}", data, raw_dtype=raw)
    vec = rng.normal(size=7).astype(np.float32)
    w.add_tensor("zoo.vector", vec)
    finish(w)
    os.makedirs(os.path.join(out, "zoo"), exist_ok=True)
    for t in gguf.GGUFReader(os.path.join(out, "zoo.gguf")).tensors:
        if t.tensor_type == T.IQ2_XXS:
            continue
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        values.astype("<f4").tofile(os.path.join(out, "zoo", t.name + ".f32"))


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------- tiny models

QWEN2_TYPES = [
    {"attn_q": T.Q4_0, "attn_k": T.Q4_1, "attn_v": T.Q5_0, "attn_output": T.Q5_1,
     "ffn_gate": T.Q4_K, "ffn_up": T.Q5_K, "ffn_down": T.Q6_K},
    {"attn_q": T.BF16, "attn_k": T.F16, "attn_v": T.Q8_0, "attn_output": T.Q4_K,
     "ffn_gate": T.Q5_0, "ffn_up": T.Q6_K, "ffn_down": T.Q5_K},
]
LLAMA_TYPES = [
    {"attn_q": T.Q6_K, "attn_k": T.Q4_K, "attn_v": T.Q5_K, "attn_output": T.Q8_0,
     "ffn_gate": T.Q4_0, "ffn_up": T.Q4_1, "ffn_down": T.Q5_1},
    {"attn_q": T.Q5_0, "attn_k": T.BF16, "attn_v": T.F32, "attn_output": T.Q6_K,
     "ffn_gate": T.F16, "ffn_up": T.Q4_K, "ffn_down": T.Q8_0},
]


def write_tiny(path, arch, seed, layer_types, embd_type, output_type, n_kv, rope_base, eps,
               add_bos, pre, tokenizer_model="gpt2", override=None):
    rng = np.random.default_rng(seed)
    h, inter, n_head, ctx = 256, 512, 4, 256
    head_dim = h // n_head
    tokens, types, merges = tiny_vocab()
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny {arch}")
    w.add_block_count(len(layer_types))
    w.add_context_length(ctx)
    w.add_embedding_length(h)
    w.add_feed_forward_length(inter)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(eps)
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if tokenizer_model == "gpt2":
        w.add_token_merges(merges)
    else:
        w.add_token_scores([0.0] * len(tokens))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(add_bos)
    w.add_chat_template(CHAT_TEMPLATE)

    def tensor(name, ty, shape, std=0.02):
        ty = (override or {}).get(name, ty)
        if ty == T.IQ2_XXS:
            data, raw = zoo_tensor(rng, ty, shape)
        else:
            data, raw = encode(rng, ty, shape, std)
        w.add_tensor(name, data, raw_dtype=raw)

    def norm(name):
        w.add_tensor(name, (1.0 + rng.normal(0, 0.1, h)).astype(np.float32))

    tensor("token_embd.weight", embd_type, (len(tokens), h), std=0.5)
    for i, lt in enumerate(layer_types):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight")
        tensor(p + "attn_q.weight", lt["attn_q"], (h, h))
        tensor(p + "attn_k.weight", lt["attn_k"], (n_kv * head_dim, h))
        tensor(p + "attn_v.weight", lt["attn_v"], (n_kv * head_dim, h))
        if arch == "qwen2":
            for part, rows in (("attn_q", h), ("attn_k", n_kv * head_dim), ("attn_v", n_kv * head_dim)):
                w.add_tensor(p + part + ".bias", rng.normal(0, 0.1, rows).astype(np.float32))
        tensor(p + "attn_output.weight", lt["attn_output"], (h, h))
        norm(p + "ffn_norm.weight")
        tensor(p + "ffn_gate.weight", lt["ffn_gate"], (inter, h))
        tensor(p + "ffn_up.weight", lt["ffn_up"], (inter, h))
        tensor(p + "ffn_down.weight", lt["ffn_down"], (h, inter))
    norm("output_norm.weight")
    if output_type is not None:
        tensor("output.weight", output_type, (len(tokens), h), std=0.1)
    finish(w)


def write_gemma(path):
    w = gguf.GGUFWriter(path, "gemma")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    finish(w)


# ---------------------------------------------------------------- transformers reference

def reference(path, out_dir, key, request):
    folder, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    out = {
        "ids": [tok(t, add_special_tokens=False).input_ids for t in request["corpus"]],
        "ids_with_specials": [tok(t).input_ids for t in request["corpus"]],
        "chat": [
            tok.apply_chat_template(c, tokenize=False, add_generation_prompt=agp)
            for c in request["conversations"] for agp in (True, False)
        ],
        "prompt_ids": [],
        "logits_files": [],
        "greedy": [],
    }
    eos = tok.convert_tokens_to_ids(request["eos_token"])
    with torch.inference_mode():
        for i, p in enumerate(request["prompts"]):
            ids = tok(p, add_special_tokens=False).input_ids
            out["prompt_ids"].append(ids)
            x = torch.tensor([ids])
            logits_file = f"{key}_logits_{i}.f32"
            model(x).logits[0].numpy().astype("<f4").tofile(os.path.join(out_dir, logits_file))
            out["logits_files"].append(logits_file)
            g = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                               max_new_tokens=request["max_new_tokens"],
                               eos_token_id=eos, pad_token_id=eos)
            out["greedy"].append(g[0, len(ids):].tolist())
    return out


def write_synthetic(out):
    write_zoo(out)
    llama_args = dict(arch="llama", seed=2, layer_types=LLAMA_TYPES, embd_type=T.F16,
                      output_type=None, n_kv=1, rope_base=1e4, eps=1e-5, add_bos=True, pre="gpt2")
    write_tiny(os.path.join(out, "qwen2_tiny.gguf"), "qwen2", 1, QWEN2_TYPES, T.Q8_0, T.F16,
               n_kv=2, rope_base=1e6, eps=1e-6, add_bos=False, pre="qwen2")
    write_tiny(os.path.join(out, "llama_tiny.gguf"), **llama_args)
    write_tiny(os.path.join(out, "llama_spm.gguf"), tokenizer_model="llama", **llama_args)
    write_tiny(os.path.join(out, "llama_iq2.gguf"), override={"blk.1.ffn_down.weight": T.IQ2_XXS},
               **llama_args)
    write_gemma(os.path.join(out, "gemma.gguf"))
    return {key: os.path.join(out, key + ".gguf") for key in ("qwen2_tiny", "llama_tiny")}


def main():
    torch.set_num_threads(1)
    mode, out, request = sys.argv[1:4]
    request = json.load(open(request))
    os.makedirs(out, exist_ok=True)
    if mode == "synthetic":
        models = write_synthetic(out)
    elif mode == "model":
        key, path = sys.argv[4:6]
        models = {key: path}
    else:
        sys.exit(f"unknown mode {mode!r} (expected synthetic or model)")
    refs = {key: reference(path, out, key, request) for key, path in models.items()}
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(refs, f)


if __name__ == "__main__":
    main()
