"""A loopback stand-in for vLLM's OpenAI-compatible server and SGLang's native server,
computing with transformers on a local HF model directory, for sspo's server tests.

Endpoints and fields, named as the real servers name them:

* vLLM: GET /v1/models (`data[].id`, `max_model_len`); POST /v1/completions with
  `prompt` (token ids or text), `max_tokens`, `temperature`, `top_p`, `top_k` (-1 or 0:
  off), `seed`, `n`, `stop`, `logprobs` (top-k per generated token), `prompt_logprobs`
  (per prompt token: its own log-prob and the top-k), `return_tokens_as_token_ids`
  (`token_id:N` keys). Answers: `choices[].text`, `finish_reason`, `logprobs`,
  `prompt_logprobs`, `usage`.
* llama-cpp-python: the served name with `-text` appended is the same model behind a
  `/v1/completions` that takes text prompts only and answers token ids as
  llama-cpp-python 0.3 does (status 500, a validation error naming `prompt`).
* SGLang: GET /get_model_info (`model_path`); POST /generate with `input_ids`,
  `sampling_params` (`max_new_tokens`, `temperature`, `top_p`, `top_k`, `stop`,
  `sampling_seed`), `return_logprob`, `logprob_start_len`, `top_logprobs_num`,
  `token_ids_logprob`. Answers: `text`, `meta_info` (`finish_reason.type`,
  `completion_tokens`, `input_token_logprobs`, `output_token_logprobs`,
  `output_token_ids_logprobs`, ...).

Faults for tests, set at start or at run time by POST /_fault {"kind", "after"}: after
`after` more generation requests, every one is answered with `kind`: `400`, `500`,
`503` (the first `after` requests only, then healthy again: a server warming up),
`garbage` (not JSON), `hang` (never answers in time), `die` (the process exits at once),
or `none`. `--delay-ms` slows every generation request; `--log FILE` appends one JSON
line per generation request (its path, seed and prompt length).

Prints `READY <port>` once listening (port 0 picks a free one).
"""

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class Model:
    def __init__(self, path):
        torch.set_num_threads(1)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
        self.model.eval()
        cfg = self.model.config
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = cfg.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.max_len = cfg.max_position_embeddings
        self.lock = threading.Lock()

    def log_softmax_all(self, ids):
        """Log-probs of the next token at every position of `ids`: [len, vocab]."""
        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0].float()
        return torch.log_softmax(logits, dim=-1)

    def sample(self, ids, max_new, temperature, top_p, top_k, stop, gen):
        """One continuation: (output ids, per-step raw log-prob rows, text, finish)."""
        out, rows = [], []
        past = None
        inp = torch.tensor([ids])
        text = ""
        finish = "length"
        with torch.no_grad():
            for _ in range(max_new):
                r = self.model(inp, past_key_values=past, use_cache=True)
                past = r.past_key_values
                logits = r.logits[0, -1].float()
                rows.append(torch.log_softmax(logits, dim=-1))
                if temperature == 0:
                    t = int(torch.argmax(logits))
                else:
                    x = logits / temperature
                    if top_k and top_k > 0:
                        kth = torch.topk(x, min(top_k, x.numel())).values[-1]
                        x = torch.where(x < kth, torch.full_like(x, -float("inf")), x)
                    if top_p < 1.0:
                        sx, si = torch.sort(x, descending=True)
                        cum = torch.cumsum(torch.softmax(sx, -1), -1)
                        drop = cum - torch.softmax(sx, -1) > top_p
                        sx[drop] = -float("inf")
                        x = torch.full_like(x, -float("inf")).scatter(0, si, sx)
                    probs = torch.softmax(x, -1)
                    t = int(torch.multinomial(probs, 1, generator=gen))
                out.append(t)
                inp = torch.tensor([[t]])
                if t in self.eos:
                    finish = "stop"
                    break
                text = self.tok.decode(out, skip_special_tokens=True)
                hit = [s for s in stop if s in text]
                if hit:
                    text = text[: min(text.index(s) for s in hit)]
                    finish = "stop"
                    break
        if finish == "length" or (out and out[-1] in self.eos):
            text = self.tok.decode(out, skip_special_tokens=True)
        return out, rows, text, finish


TEXT_ONLY = "-text"


class TextOnly(Exception):
    """A token-id prompt sent to the text-only name."""


def top_entries(row, k, extra):
    """Token ids of the top k of `row`, plus `extra` ids, without repeats."""
    ids = []
    if k > 0:
        ids = [int(i) for i in torch.topk(row, min(k, row.numel())).indices]
    for e in extra:
        if e not in ids:
            ids.append(e)
    return ids


def rank_of(row, t):
    return int((row > row[t]).sum()) + 1


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.set_fault(args.fault, args.after)

    def set_fault(self, kind, after):
        with self.lock:
            self.kind, self.left = kind, after

    def fault(self):
        """The fault this request gets, if any."""
        with self.lock:
            if self.kind == "none":
                return None
            if self.left > 0:
                self.left -= 1
                return "503" if self.kind == "503" else None
            return None if self.kind == "503" else self.kind


def make_handler(model, state, served):
    args = state.args

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def send(self, status, body, raw=False):
            data = body.encode() if raw else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "text/plain" if raw else "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, status, message):
            self.send(status, {"object": "error", "message": message, "type": "BadRequestError", "code": status})

        def do_GET(self):
            if self.path == "/v1/models":
                self.send(200, {"object": "list", "data": [
                    {"id": name, "object": "model", "owned_by": "vllm", "max_model_len": model.max_len}
                    for name in (served, served + TEXT_ONLY)]})
            elif self.path == "/get_model_info":
                self.send(200, {"model_path": served, "tokenizer_path": served, "is_generation": True})
            else:
                self.error(404, f"no route {self.path}")

        def do_POST(self):
            n = int(self.headers.get("content-length", 0))
            raw = self.rfile.read(n)
            try:
                body = json.loads(raw)
            except ValueError:
                return self.error(400, "body is not JSON")
            if self.path == "/_fault":
                state.set_fault(body["kind"], int(body.get("after", 0)))
                return self.send(200, {"ok": True})
            kind = state.fault()
            if kind == "die":
                os._exit(3)
            if kind in ("400", "500", "503"):
                return self.error(int(kind), f"injected {kind}: This model's maximum context length is exceeded")
            if kind == "garbage":
                return self.send(200, "<html>not json</html>", raw=True)
            if kind == "hang":
                time.sleep(3600)
            if args.delay_ms:
                time.sleep(args.delay_ms / 1000)
            if args.log:
                seed = body.get("seed", (body.get("sampling_params") or {}).get("sampling_seed"))
                prompt = body.get("prompt", body.get("input_ids")) or []
                with state.lock, open(args.log, "a") as f:
                    f.write(json.dumps({"path": self.path, "seed": seed, "prompt_len": len(prompt)}) + "\n")
            try:
                if self.path == "/v1/completions":
                    return self.send(200, self.completions(body))
                if self.path == "/generate":
                    return self.send(200, self.generate(body))
                return self.error(404, f"no route {self.path}")
            except TextOnly:
                return self.send(500, {"error": {
                    "message": "1 validation errors:\n  {'type': 'string_type', 'loc': ('body', 'prompt', 'str'), "
                               "'msg': 'Input should be a valid string'}",
                    "type": "internal_server_error"}})
            except ValueError as e:
                return self.error(400, str(e))

        def prompt_ids(self, prompt):
            if isinstance(prompt, str):
                return model.tok(prompt, add_special_tokens=False)["input_ids"]
            if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
                return prompt
            raise ValueError("prompt must be a string or a list of token ids")

        def completions(self, body):
            if body.get("model") not in (served, served + TEXT_ONLY):
                raise ValueError(f"The model `{body.get('model')}` does not exist.")
            if body["model"] == served + TEXT_ONLY and not isinstance(body.get("prompt"), str):
                raise TextOnly()
            ids = self.prompt_ids(body.get("prompt"))
            max_tokens = int(body.get("max_tokens", 16))
            if len(ids) + max_tokens > model.max_len:
                raise ValueError(f"This model's maximum context length is {model.max_len} tokens")
            temperature = float(body.get("temperature", 1.0))
            top_p = float(body.get("top_p", 1.0))
            top_k = int(body.get("top_k", -1))
            stop = body.get("stop") or []
            stop = [stop] if isinstance(stop, str) else stop
            n = int(body.get("n", 1))
            seed = body.get("seed")
            logprobs = body.get("logprobs")
            prompt_logprobs = body.get("prompt_logprobs")
            as_ids = bool(body.get("return_tokens_as_token_ids"))
            gen = torch.Generator()
            if seed is not None:
                gen.manual_seed(int(seed))
            else:
                gen.seed()
            tname = (lambda t: f"token_id:{t}") if as_ids else (lambda t: model.tok.decode([t]))
            choices, completion_tokens = [], 0
            with model.lock:
                prompt_rows = model.log_softmax_all(ids) if prompt_logprobs is not None else None
                for i in range(n):
                    out, rows, text, finish = model.sample(ids, max_tokens, temperature, top_p, top_k, stop, gen)
                    completion_tokens += len(out)
                    choice = {"index": i, "text": text, "finish_reason": finish, "logprobs": None,
                              "prompt_logprobs": None}
                    if logprobs is not None:
                        choice["logprobs"] = {
                            "tokens": [tname(t) for t in out],
                            "token_logprobs": [float(r[t]) for t, r in zip(out, rows)],
                            "top_logprobs": [{tname(e): float(r[e]) for e in top_entries(r, int(logprobs), [t])}
                                             for t, r in zip(out, rows)],
                            "text_offset": [0] * len(out),
                        }
                    if prompt_rows is not None:
                        entries = [None]
                        for p in range(1, len(ids)):
                            row = prompt_rows[p - 1]
                            entries.append({str(e): {"logprob": float(row[e]), "rank": rank_of(row, e),
                                                     "decoded_token": model.tok.decode([e])}
                                            for e in top_entries(row, int(prompt_logprobs), [ids[p]])})
                        choice["prompt_logprobs"] = entries
                    choices.append(choice)
            return {"id": "cmpl-fake", "object": "text_completion", "model": served, "choices": choices,
                    "usage": {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                              "total_tokens": len(ids) + completion_tokens}}

        def generate(self, body):
            ids = body.get("input_ids")
            if ids is None:
                ids = self.prompt_ids(body.get("text"))
            sp = body.get("sampling_params") or {}
            max_new = int(sp.get("max_new_tokens", 128))
            if len(ids) + max_new > model.max_len:
                raise ValueError(f"The input ({len(ids)} tokens) is longer than the model's context length")
            stop = sp.get("stop") or []
            stop = [stop] if isinstance(stop, str) else stop
            gen = torch.Generator()
            seed = sp.get("sampling_seed")
            if seed is not None:
                gen.manual_seed(int(seed))
            else:
                gen.seed()
            want = bool(body.get("return_logprob"))
            start = int(body.get("logprob_start_len", -1))
            top_n = int(body.get("top_logprobs_num", 0))
            wanted = body.get("token_ids_logprob") or []
            with model.lock:
                out, rows, text, finish = model.sample(
                    ids, max_new, float(sp.get("temperature", 1.0)), float(sp.get("top_p", 1.0)),
                    int(sp.get("top_k", -1)), stop, gen)
                meta = {"id": "fake", "finish_reason": {"type": finish}, "prompt_tokens": len(ids),
                        "completion_tokens": len(out)}
                if want:
                    triple = lambda row, t: [float(row[t]) if row is not None else None, t, None]
                    if start >= 0:
                        prompt_rows = model.log_softmax_all(ids)
                        in_rows = [prompt_rows[p - 1] if p > 0 else None for p in range(start, len(ids))]
                        meta["input_token_logprobs"] = [triple(r, ids[p]) for p, r in zip(range(start, len(ids)), in_rows)]
                        meta["input_top_logprobs"] = [
                            [triple(r, e) for e in top_entries(r, top_n, [])] if r is not None else None
                            for r in in_rows]
                        meta["input_token_ids_logprobs"] = [
                            [triple(r, e) for e in wanted] if r is not None else None for r in in_rows]
                    else:
                        meta["input_token_logprobs"] = []
                    meta["output_token_logprobs"] = [triple(r, t) for t, r in zip(out, rows)]
                    meta["output_top_logprobs"] = [[triple(r, e) for e in top_entries(r, top_n, [])] for r in rows]
                    meta["output_token_ids_logprobs"] = [[triple(r, e) for e in wanted] for r in rows]
            return {"text": text, "meta_info": meta}

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--served-name", default=None)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--fault", choices=["none", "400", "500", "503", "garbage", "hang", "die"], default="none")
    ap.add_argument("--after", type=int, default=0)
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--log", default=None)
    args = ap.parse_args()
    model = Model(args.model)
    served = args.served_name or os.path.basename(os.path.normpath(args.model))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(model, State(args), served))
    server.daemon_threads = True
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
