"""Train on `sspo-run export --format trl-dpo` output with TRL, on as many GPUs as
`accelerate launch` gives: plain DPO, or SSPO's step-weighted preference loss.

    accelerate launch --num_processes 8 scripts/trl_sspo.py \
        --data pairs.parquet --model path/to/base --out trained --loss sspo --alpha 1.0

The result (`--out`) is a Hugging Face directory: use it in a pipeline as
`models: {trl: {path: trained}}`. See docs/scale-out.md.

The step-weighted loss (`--loss sspo`) is `StepWeightedDPOTrainer`: each completion token
weighs its step's `w_k = clip(1 + alpha * A_k, w_min, w_max)` on the chosen side and
`clip(1 - alpha * A_k, w_min, w_max)` on the rejected side (`A_k`: the exported
`chosen_adv` / `rejected_adv`), the steps both sides share weigh 0, and the loss is
`-log sigmoid(beta * (R(chosen) - R(rejected)))` with `R = sum_t w_t * (log pi - log ref)`.
Needs `trl` (`DPOConfig`, `processing_class`; both collator layouts, the
`prompt_/chosen_/rejected_input_ids` batches up to 0.2x and the joined `input_ids` +
`completion_mask` of 0.29; run on the CPU with 0.29.1) and a fast tokenizer.
"""

import argparse

import torch
import torch.nn.functional as F
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference


def step_weights(text, steps, advs, shared, alpha, w_min, w_max, chosen, tokenizer):
    """One weight per token of `text` (tokenized as TRL does, plus EOS): its step's."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    bounds, pos = [], 0
    for k, s in enumerate(steps or []):
        pos += len(s)
        bounds.append(pos)
    weights = []
    for start, _end in enc["offset_mapping"]:
        k = next((i for i, b in enumerate(bounds) if start < b), len(bounds) - 1)
        if k < 0 or k < shared:
            weights.append(0.0)
            continue
        a = float(advs[k]) if advs is not None and k < len(advs) else 0.0
        raw = 1.0 + alpha * a if chosen else 1.0 - alpha * a
        weights.append(min(max(raw, w_min), w_max))
    weights.append(weights[-1] if weights else 1.0)  # EOS belongs to the last step
    return weights


class WeightCollator(DataCollatorForPreference):
    """TRL's preference collator, also padding the per-token weights (with 0).

    Two collator layouts exist: up to TRL 0.2x, `prompt_/chosen_/rejected_input_ids`;
    from 0.29, one `input_ids` of the prompt + chosen rows then the prompt + rejected rows,
    with a `completion_mask`. The weights follow whichever the installed TRL gives.
    """

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        if "completion_mask" in batch:
            rows = [e["chosen_weights"] for e in examples] + [e["rejected_weights"] for e in examples]
            mask = batch["completion_mask"]
            weights = torch.zeros(mask.shape, dtype=torch.float32)
            for i, r in enumerate(rows):
                at = mask[i].nonzero().flatten()
                n = min(len(at), len(r))
                weights[i, at[:n]] = torch.tensor(r[:n], dtype=torch.float32)
            batch["weights"] = weights
            return batch
        for side in ("chosen", "rejected"):
            rows = [torch.tensor(e[f"{side}_weights"], dtype=torch.float32) for e in examples]
            width = batch[f"{side}_input_ids"].shape[1]
            padded = torch.zeros(len(rows), width)
            for i, r in enumerate(rows):
                n = min(len(r), width)
                padded[i, :n] = r[:n]
            batch[f"{side}_weights"] = padded
        return batch


class StepWeightedDPOTrainer(DPOTrainer):
    """DPOTrainer whose preference sums weigh each completion token by its step."""

    def _side_logps(self, model, batch, side):
        prompt, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        comp, comp_mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
        ids = torch.cat([prompt, comp], dim=1)
        mask = torch.cat([prompt_mask, comp_mask], dim=1)
        logits = model(input_ids=ids, attention_mask=mask).logits
        # The logits at position t predict token t + 1: keep those of the completion.
        logits = logits[:, prompt.shape[1] - 1 : -1, :]
        logps = torch.gather(logits.log_softmax(-1), 2, comp.unsqueeze(-1)).squeeze(-1)
        weights = batch[f"{side}_weights"].to(logps.dtype) * comp_mask.to(logps.dtype)
        return (logps * weights).sum(-1)

    def _joined_logps(self, model, batch):
        """TRL 0.29+ layout: the weighted sums of the chosen rows, then the rejected ones."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :]
        logps = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        weights = (batch["weights"] * batch["completion_mask"])[:, 1:].to(logps.dtype)
        sums = (logps * weights).sum(-1)
        n = ids.shape[0] // 2
        return sums[:n], sums[n:]

    def _pair_logps(self, model, batch):
        if "completion_mask" in batch:
            return self._joined_logps(model, batch)
        return self._side_logps(model, batch, "chosen"), self._side_logps(model, batch, "rejected")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = self._pair_logps(model, inputs)
        with torch.no_grad():
            if self.ref_model is not None:
                ref_c, ref_r = self._pair_logps(self.ref_model, inputs)
            else:  # PEFT: the base weights are the reference
                with self.accelerator.unwrap_model(model).disable_adapter():
                    ref_c, ref_r = self._pair_logps(model, inputs)
        margin = self.beta * ((chosen - ref_c) - (rejected - ref_r))
        loss = -F.logsigmoid(margin).mean()
        if hasattr(self, "store_metrics"):  # TRL up to 0.2x; 0.29 dropped it
            self.store_metrics({"sspo/margin": margin.mean().item()}, train_eval="train")
        return (loss, {"margin": margin}) if return_outputs else loss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the trl-dpo Parquet file")
    ap.add_argument("--model", required=True, help="HF directory or hub id of the base")
    ap.add_argument("--out", required=True)
    ap.add_argument("--loss", choices=["dpo", "sspo"], default="sspo")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--w-min", type=float, default=0.0)
    ap.add_argument("--w-max", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: the epochs)")
    args = ap.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype="auto")
    data = load_dataset("parquet", data_files=args.data, split="train")
    config = DPOConfig(
        output_dir=args.out,
        beta=args.beta,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.max_steps,
        # bf16 where the GPUs have it; on a machine without a GPU, fp32 on the CPU (TRL's
        # default asks for bf16 on a GPU and refuses to start without one).
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        save_strategy="no",
        report_to=[],
    )
    if args.loss == "dpo":
        trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    else:

        def add_weights(row):
            out = {}
            for side, chosen in (("chosen", True), ("rejected", False)):
                out[f"{side}_weights"] = step_weights(
                    row[side], row[f"{side}_steps"], row[f"{side}_adv"], row["prefix_steps"],
                    args.alpha, args.w_min, args.w_max, chosen, tokenizer,
                )
            return out

        data = data.map(add_weights)
        trainer = StepWeightedDPOTrainer(
            model=model,
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            data_collator=WeightCollator(pad_token_id=tokenizer.pad_token_id),
        )
    trainer.train()
    trainer.save_model(args.out)
    tokenizer.save_pretrained(args.out)


if __name__ == "__main__":
    main()
