//! The params of `train`, their defaults and their checks.

use serde::{Deserialize, Serialize};
use sspo_engine::{Diagnostics, Params};
use sspo_model::train::AdamWConfig;

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Mean NLL of the completion tokens.
    Sft,
    /// DPO over the non-shared tokens.
    Dpo,
    /// Step-weighted preference loss plus `eta` · chosen NLL.
    #[default]
    Sspo,
    /// Offline clipped policy gradient with per-step advantages plus `beta` · KL.
    StepPg,
}

impl LossKind {
    /// Trains on (chosen, rejected) pairs against reference log-probs.
    pub fn is_preference(self) -> bool {
        self != LossKind::Sft
    }

    /// Reads the per-step advantage columns.
    pub fn needs_adv(self) -> bool {
        matches!(self, LossKind::Sspo | LossKind::StepPg)
    }
}

/// Which chosen tokens the `sspo` NLL term averages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NllSpan {
    /// The chosen side's tokens after the branch point (the ones the preference term
    /// scores).
    Branch,
    /// The whole chosen completion, the shared leading steps included: the steps both
    /// sides agree on are reinforced too, not only what follows the branch point.
    #[default]
    Completion,
}

/// Params of `train`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainParams {
    /// `sft`, `dpo`, `sspo` or `step_pg`.
    pub loss: LossKind,
    /// Inverse temperature of the preference losses; KL weight of `step_pg`.
    pub beta: f64,
    /// Strength of the advantage in the step weights (`sspo`; 0 = DPO).
    pub alpha: f64,
    /// Lower clip of the step weights.
    pub w_min: f64,
    /// Upper clip of the step weights.
    pub w_max: f64,
    /// Weight of the chosen NLL term (`sspo`).
    pub eta: f64,
    /// Tokens of the chosen NLL term (`sspo`): `branch` or `completion`.
    pub nll_span: NllSpan,
    /// Ratio clip ε of `step_pg`.
    pub clip_eps: f64,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay (matrices and embeddings only).
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Warm-up: optimizer steps when >= 1, else a fraction of all steps.
    pub warmup: f64,
    /// Passes over the data.
    pub epochs: usize,
    /// Stop after this many optimizer steps (at most `epochs` passes).
    pub max_steps: Option<u64>,
    /// Rows (pairs) per forward pass.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Global gradient-norm clip (0 = off).
    pub max_grad_norm: f64,
    /// Optimizer steps between checkpoints (and committed metrics chunks).
    pub checkpoint_every: u64,
    /// Checkpoints kept in the scratch directory.
    pub keep_checkpoints: usize,
    /// Weight dtype while training (`fp32`, `bf16`, `fp16`); default: as the model port
    /// loads it.
    pub dtype: Option<String>,
    /// Longest sequence (context + completion + EOS) in tokens; longer rows are skipped.
    /// Default: the model's `max_position_embeddings`.
    pub max_length: Option<usize>,
    /// Log the loss every this many steps.
    pub log_every: u64,
    /// `sft`: the prompt column.
    pub prompt: String,
    /// `sft`: the completion column.
    pub completion: String,
    /// `sft`: text around the prompt with a `{prompt}` placeholder (as in `generate`).
    pub prompt_template: String,
    /// `sft`: wrap the prompt in the model's chat template (as in `generate`).
    pub chat_template: bool,
    /// Preference losses: the exact model input text.
    pub context: String,
    pub chosen_steps: String,
    pub rejected_steps: String,
    pub chosen_adv: String,
    pub rejected_adv: String,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            loss: LossKind::default(),
            beta: 0.1,
            alpha: 1.0,
            w_min: 0.0,
            w_max: 2.0,
            eta: 0.1,
            nll_span: NllSpan::default(),
            clip_eps: 0.2,
            lr: 1e-6,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            warmup: 0.1,
            epochs: 1,
            max_steps: None,
            batch_size: 4,
            grad_accum: 1,
            max_grad_norm: 1.0,
            checkpoint_every: 50,
            keep_checkpoints: 1,
            dtype: None,
            max_length: None,
            log_every: 10,
            prompt: "prompt".into(),
            completion: "response".into(),
            prompt_template: "{prompt}".into(),
            chat_template: false,
            context: "context".into(),
            chosen_steps: "chosen_steps".into(),
            rejected_steps: "rejected_steps".into(),
            chosen_adv: "chosen_adv".into(),
            rejected_adv: "rejected_adv".into(),
        }
    }
}

/// Keys that change how a run is logged or how much it keeps on disk, not its result:
/// left out of the fingerprint.
pub const NOT_FINGERPRINTED: [&str; 2] = ["log_every", "keep_checkpoints"];

impl TrainParams {
    /// The checks serde's types do not express, each located at its key.
    pub fn check(&self, params: &Params) -> Diagnostics {
        let mut d = Diagnostics::new();
        let mut err = |key: &str, msg: &str| d.push(params.error(&[key], msg.to_string()));
        let finite_pos = |x: f64| x.is_finite() && x > 0.0;
        if !finite_pos(self.beta) {
            err("beta", "`beta` must be a positive number");
        }
        if !self.alpha.is_finite() || self.alpha < 0.0 {
            err("alpha", "`alpha` must be >= 0");
        }
        if !(self.w_min.is_finite() && self.w_max.is_finite() && self.w_min <= self.w_max) {
            err("w_max", "`w_min` <= `w_max` are required");
        }
        if !self.eta.is_finite() || self.eta < 0.0 {
            err("eta", "`eta` must be >= 0");
        }
        if !(self.clip_eps > 0.0 && self.clip_eps < 1.0) {
            err("clip_eps", "`clip_eps` must be in (0, 1)");
        }
        if !self.lr.is_finite() || self.lr < 0.0 {
            err("lr", "`lr` must be >= 0");
        }
        if !self.weight_decay.is_finite() || self.weight_decay < 0.0 {
            err("weight_decay", "`weight_decay` must be >= 0");
        }
        if !(self.adam_beta1 >= 0.0 && self.adam_beta1 < 1.0) {
            err("adam_beta1", "`adam_beta1` must be in [0, 1)");
        }
        if !(self.adam_beta2 >= 0.0 && self.adam_beta2 < 1.0) {
            err("adam_beta2", "`adam_beta2` must be in [0, 1)");
        }
        if !finite_pos(self.adam_eps) {
            err("adam_eps", "`adam_eps` must be > 0");
        }
        if !self.warmup.is_finite() || self.warmup < 0.0 {
            err(
                "warmup",
                "`warmup` must be >= 0 (steps when >= 1, else a fraction)",
            );
        }
        if self.epochs == 0 {
            err(
                "epochs",
                "`epochs` must be at least 1: it would train zero steps",
            );
        }
        if self.max_steps == Some(0) {
            err(
                "max_steps",
                "`max_steps` must be at least 1: it would train zero steps",
            );
        }
        if self.batch_size == 0 {
            err("batch_size", "`batch_size` must be at least 1");
        }
        if self.grad_accum == 0 {
            err("grad_accum", "`grad_accum` must be at least 1");
        }
        if !self.max_grad_norm.is_finite() || self.max_grad_norm < 0.0 {
            err("max_grad_norm", "`max_grad_norm` must be >= 0 (0 = off)");
        }
        if self.checkpoint_every == 0 {
            err("checkpoint_every", "`checkpoint_every` must be at least 1");
        }
        if self.keep_checkpoints == 0 {
            err("keep_checkpoints", "`keep_checkpoints` must be at least 1");
        }
        if self.log_every == 0 {
            err("log_every", "`log_every` must be at least 1");
        }
        if self.max_length == Some(0) {
            err("max_length", "`max_length` must be at least 1");
        }
        if let Some(dt) = &self.dtype {
            if dt.parse::<sspo_model::DType>().is_err() {
                err("dtype", "`dtype` must be fp32, bf16 or fp16");
            }
        }
        if !self.prompt_template.contains("{prompt}") {
            err(
                "prompt_template",
                "`prompt_template` must contain the placeholder `{prompt}`",
            );
        }
        d
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_eps,
            weight_decay: self.weight_decay,
        }
    }

    /// Examples per optimizer step.
    pub fn examples_per_step(&self) -> usize {
        self.batch_size * self.grad_accum
    }
}
