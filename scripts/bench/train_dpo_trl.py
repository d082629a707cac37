#!/usr/bin/env python3
"""TRL DPOTrainer on a model directory and the bench's pairs: tokens/s per optimizer step.

Usage: train_dpo_trl.py MODEL_DIR PAIRS.jsonl BATCH STEPS THREADS [precompute|every-step] [fp32|bf16]
With `precompute`, TRL computes the reference log-probs once before training
(`precompute_ref_log_probs=True`), as our trainer always does; otherwise (TRL's default)
it runs the reference model on every step.
Each pair becomes prompt = context, chosen / rejected = the concatenated steps (TRL appends
the EOS token, as our trainer does). Tokens per step = prompt + chosen + rejected tokens of
the batch (what both trainers run through the model), timed around each optimizer step.
"""
import json
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times = []
        self._t = None

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)


def main():
    model_dir, pairs_path, batch, steps, threads = sys.argv[1:6]
    precompute = sys.argv[6:7] == ["precompute"]
    bf16 = sys.argv[7:8] == ["bf16"]
    batch, steps = int(batch), int(steps)
    torch.set_num_threads(int(threads))
    rows = [json.loads(l) for l in open(pairs_path)]
    data = Dataset.from_list([
        {"prompt": r["context"], "chosen": "".join(r["chosen_steps"]),
         "rejected": "".join(r["rejected_steps"])} for r in rows
    ])
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = DPOConfig(
        output_dir="/tmp/trl-dpo-bench", per_device_train_batch_size=batch, max_steps=steps,
        learning_rate=1e-5, beta=0.1, logging_steps=1, report_to="none", use_cpu=True,
        save_strategy="no", warmup_steps=0, lr_scheduler_type="constant",
        dataloader_num_workers=0, precompute_ref_log_probs=precompute, bf16=bf16,
    )
    timer = StepTimer()
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok,
                         callbacks=[timer])
    trainer.train()
    toks = [len(tok(r["context"])["input_ids"]) * 2 + len(tok("".join(r["chosen_steps"]))["input_ids"])
            + len(tok("".join(r["rejected_steps"]))["input_ids"]) + 2 for r in rows]
    per_step = sum(toks) / len(toks) * batch
    rates = sorted(per_step / t for t in timer.times[1:]) or [per_step / timer.times[0]]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    import trl
    print(f"trl {trl.__version__}, reference log-probs {'precomputed' if precompute else 'every step'}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}")
    print(f"first-step loss {losses[0]:.4f} (ln 2 = 0.6931 when policy = reference)")
    print(f"median tokens/s {rates[len(rates) // 2]:.0f} over {len(rates)} steps "
          f"(~{per_step:.0f} tokens per step)")


if __name__ == "__main__":
    main()
