//! The training loop: plans the optimizer steps, prepares the reference log-probs, and
//! does the steps under the engine's checkpointed resume ([`sspo_engine::checkpoint`]).

use std::path::Path;
use std::time::Instant;

use serde_json::json;
use sspo_engine::{Checkpointed, ChunkOutput, ModelRef, OpError, RunContext, StepPlan};
use sspo_model::train::{
    clip_grad_norm, preference_loss, sft_loss, step_pg_loss, token_logprobs, AdamW, PairTokens,
    PrefLossConfig, Schedule,
};
use sspo_model::{Model, ModelError};
use tch::Tensor;

use super::checkpoint::{self, TrainState};
use super::examples::{build_examples, Example, Seq, Skipped};
use super::metrics::{metrics_batch, MetricRow};
use super::order::DataOrder;
use super::params::{LossKind, TrainParams};
use super::reference;
use crate::model_port::load_model;

/// Trains the model on the `model` port on the `data` table and writes the artifact.
pub fn run(p: &TrainParams, ctx: &mut RunContext) -> Result<(), OpError> {
    let table = ctx.input_table("data")?;
    let mut model_ref: ModelRef = ctx.input_model("model")?.clone();
    if let Some(dt) = &p.dtype {
        model_ref.options.insert("dtype".into(), json!(dt));
    }
    ctx.log(&format!("loading model `{}`", model_ref.name));
    let model = load_model(&model_ref, ctx.device())?;
    let mut skipped = Skipped::default();
    let examples = build_examples(p, &model, &table, &mut skipped)?;
    skipped.report(ctx);
    if examples.is_empty() {
        return Err(OpError::msg(format!(
            "no usable training rows: the data table has {} rows, {} were skipped (see the counts above); refusing to train zero steps",
            table.num_rows(),
            skipped.total()
        )));
    }
    let per_step = p.examples_per_step();
    let steps_per_epoch = (examples.len() as u64).div_ceil(per_step as u64);
    let mut total = steps_per_epoch * p.epochs as u64;
    if let Some(m) = p.max_steps {
        total = total.min(m);
    }
    if total == 0 {
        return Err(OpError::msg(
            "the plan has zero optimizer steps; refusing to report success",
        ));
    }
    let warmup = if p.warmup >= 1.0 {
        p.warmup.round() as u64
    } else {
        (p.warmup * total as f64).round() as u64
    };
    let order = DataOrder {
        seed: ctx.row_seed(&[b"train data order"]),
        examples: examples.len(),
        per_step,
        steps_per_epoch,
    };

    let ref_name = reference::file_name(ctx.fingerprint());
    let checkpoints = ctx.checkpoints(StepPlan {
        steps: total,
        every: p.checkpoint_every,
        keep: p.keep_checkpoints,
        keep_files: vec![ref_name.clone()],
    })?;
    // Before a checkpoint replaces the weights: the reference is the input model.
    let refs = if p.loss.is_preference() {
        let path = ctx.scratch_dir()?.join(&ref_name);
        reference::cached_logprobs(ctx, &model, &examples, &path, p.batch_size * 2)?
    } else {
        Vec::new()
    };
    let params: Vec<(String, Tensor)> = model.decoder.var_store().variables().into_iter().collect();
    let optim = AdamW::new(params, p.adamw()).map_err(|e| OpError::context("optimizer", e))?;
    let mut trainer = Trainer {
        p,
        examples,
        refs,
        order,
        total,
        schedule: Schedule {
            peak: p.lr,
            warmup: warmup.min(total),
            total,
        },
        model,
        optim,
        last_checkpoint: None,
    };
    checkpoints.run(ctx, &mut trainer)?;

    ctx.set_metric("steps", json!(total));
    ctx.set_metric("examples", json!(trainer.examples.len()));
    let dir = ctx.artifact_dir()?;
    trainer
        .model
        .save_dir(&dir)
        .map_err(|e| OpError::context(format!("saving the model to {}", dir.display()), e))?;
    ctx.log(&format!("model written to {}", dir.display()));
    Ok(())
}

/// A training run in progress.
struct Trainer<'p> {
    p: &'p TrainParams,
    examples: Vec<Example>,
    /// Reference log-probs per sequence (example-major: chosen then rejected).
    refs: Vec<Vec<f32>>,
    order: DataOrder,
    total: u64,
    schedule: Schedule,
    model: Model,
    optim: AdamW,
    /// Steps done by the newest checkpoint written or loaded (for error messages).
    last_checkpoint: Option<u64>,
}

/// What one optimizer step gives.
struct StepOut {
    loss: f64,
    grad_norm: f64,
    margins: Vec<f64>,
    tokens: usize,
}

/// Why an optimizer step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the loss is not finite ({0}); lower `lr` or check the data")]
    LossNotFinite(f64),
    #[error("the gradient norm is not finite ({0}); lower `lr` or check the data")]
    GradNormNotFinite(f64),
}

impl From<tch::TchError> for StepError {
    fn from(e: tch::TchError) -> Self {
        StepError::Model(e.into())
    }
}

/// A failed step and what of the run is kept: "…; the checkpoint at step N is kept".
/// The step's error is part of this text, so it is not also a `source` (the CLI would
/// print it twice).
#[derive(Debug)]
pub struct StepFailed {
    pub error: StepError,
    pub last_checkpoint: Option<u64>,
}

impl std::fmt::Display for StepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.last_checkpoint {
            Some(s) => write!(f, "{}; the checkpoint at step {s} is kept", self.error),
            None => write!(f, "{}; no checkpoint was written yet", self.error),
        }
    }
}

impl std::error::Error for StepFailed {}

impl Checkpointed for Trainer<'_> {
    type Row = MetricRow;
    type State = TrainState;

    fn step(&mut self, ctx: &mut RunContext, step: u64) -> Result<MetricRow, OpError> {
        let lr = self.schedule.lr(step);
        let t0 = Instant::now();
        let out = self.optimizer_step(step, lr).map_err(|error| {
            let failed = StepFailed {
                error,
                last_checkpoint: self.last_checkpoint,
            };
            OpError::context(format!("step {}", step + 1), failed)
        })?;
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        let n_pairs = out.margins.len();
        let row = MetricRow {
            step: step + 1,
            epoch: step / self.order.steps_per_epoch,
            loss: out.loss,
            lr,
            grad_norm: out.grad_norm,
            margin: (n_pairs > 0).then(|| out.margins.iter().sum::<f64>() / n_pairs as f64),
            pref_acc: (n_pairs > 0)
                .then(|| out.margins.iter().filter(|&&m| m > 0.0).count() as f64 / n_pairs as f64),
            tokens_per_s: out.tokens as f64 / secs,
        };
        ctx.progress().set_extra(&format!("loss {:.4}", row.loss));
        if (step + 1).is_multiple_of(self.p.log_every) || step + 1 == self.total {
            ctx.log(&row.log_line(self.total));
        }
        Ok(row)
    }

    fn save(&mut self, dir: &Path, done: u64) -> Result<TrainState, OpError> {
        checkpoint::save(dir, &self.model, &self.optim)?;
        self.last_checkpoint = Some(done);
        Ok(TrainState::after(
            done,
            self.examples.len(),
            self.order.steps_per_epoch,
        ))
    }

    fn load(&mut self, dir: &Path, done: u64, _state: &TrainState) -> Result<(), OpError> {
        checkpoint::load(dir, &self.model, &mut self.optim, done)?;
        self.last_checkpoint = Some(done);
        Ok(())
    }

    fn output(&self, ctx: &mut RunContext, rows: &[MetricRow]) -> Result<ChunkOutput, OpError> {
        if let Some(last) = rows.last() {
            ctx.set_metric("final_loss", json!(last.loss));
        }
        Ok(metrics_batch(rows)?.into())
    }
}

impl Trainer<'_> {
    /// One optimizer step (0-based `step`) at learning rate `lr`: gradients accumulated
    /// over the micro-batches, clipped, then the AdamW update.
    fn optimizer_step(&mut self, step: u64, lr: f64) -> Result<StepOut, StepError> {
        let p = self.p;
        let idx = self.order.step_examples(step);
        self.optim.zero_grad()?;
        // Normalisers over the whole optimizer step.
        let scored: usize = idx
            .iter()
            .flat_map(|&i| self.examples[i].seqs().into_iter().map(Seq::scored))
            .sum();
        let denom = match p.loss {
            LossKind::Sft | LossKind::StepPg => scored.max(1) as f64,
            LossKind::Dpo | LossKind::Sspo => idx.len().max(1) as f64,
        };
        let mut loss_sum = 0.0;
        let mut margins = Vec::new();
        let mut tokens = 0;
        for mb in idx.chunks(p.batch_size) {
            let mut seqs = Vec::new();
            let mut toks = PairTokens::default();
            let mut refs: Vec<f32> = Vec::new();
            for &i in mb {
                for (side, s) in self.examples[i].seqs().into_iter().enumerate() {
                    let si = toks.n_seqs;
                    toks.seq.extend(std::iter::repeat_n(si as i64, s.scored()));
                    toks.weight.extend(&s.weight);
                    toks.adv.extend(&s.adv);
                    toks.n_seqs += 1;
                    if p.loss.is_preference() {
                        refs.extend(&self.refs[2 * i + side]);
                    }
                    tokens += s.ids.len();
                    seqs.push(s.as_scored());
                }
                if p.loss.is_preference() {
                    toks.pairs.push((toks.n_seqs - 2, toks.n_seqs - 1));
                }
            }
            let scored = token_logprobs(&self.model.decoder, &seqs)?;
            let logp = scored.logprobs();
            let ref_lp = Tensor::from_slice(&refs);
            let (loss, m) = match p.loss {
                LossKind::Sft => (sft_loss(logp, denom)?, Vec::new()),
                LossKind::Dpo | LossKind::Sspo => {
                    let eta = if p.loss == LossKind::Sspo { p.eta } else { 0.0 };
                    let cfg = PrefLossConfig { beta: p.beta, eta };
                    let o = preference_loss(logp, &ref_lp, &toks, cfg, denom)?;
                    (o.loss, o.margins)
                }
                LossKind::StepPg => {
                    let o = step_pg_loss(logp, &ref_lp, &toks, p.beta, p.clip_eps, denom)?;
                    (o.loss, o.margins)
                }
            };
            let v = loss.f_double_value(&[])?;
            if !v.is_finite() {
                return Err(StepError::LossNotFinite(v));
            }
            loss.f_backward()?;
            scored.backward()?;
            loss_sum += v;
            margins.extend(m);
        }
        let params: Vec<&Tensor> = self.optim.params().map(|(_, t)| t).collect();
        let grad_norm = clip_grad_norm(params, p.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(StepError::GradNormNotFinite(grad_norm));
        }
        self.optim.step(lr)?;
        self.optim.zero_grad()?;
        Ok(StepOut {
            loss: loss_sum,
            grad_norm,
            margins,
            tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_says_what_is_kept_after_its_cause() {
        let failed = |last_checkpoint| {
            OpError::context(
                "step 2",
                StepFailed {
                    error: StepError::LossNotFinite(f64::NAN),
                    last_checkpoint,
                },
            )
            .to_string()
        };
        assert_eq!(
            failed(Some(1)),
            "step 2: the loss is not finite (NaN); lower `lr` or check the data; the checkpoint at step 1 is kept"
        );
        assert_eq!(
            failed(None),
            "step 2: the loss is not finite (NaN); lower `lr` or check the data; no checkpoint was written yet"
        );
    }
}
