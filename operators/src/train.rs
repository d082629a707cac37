//! `train`: fine-tunes the model on the `model` port with `sft`, `dpo`, `sspo` (default)
//! or `step_pg` on the rows of the `data` table, and writes the result as a Hugging Face
//! model directory (the node's artifact, usable on any downstream `model` port).
//!
//! * Tokenisation: the context (`context` column, or for `sft` the `prompt` column
//!   rendered like `generate` does) followed by the steps, with
//!   [`crate::probe::trace_tokens`], then the model's EOS token (the model must learn to
//!   stop). Leading steps that chosen and rejected share are masked out of both sides.
//! * Reference log-probs: computed once with the input model before the first step and
//!   cached in the scratch directory as Parquet (`ref_logprobs-*.parquet`); a resumed run
//!   reads them back.
//! * Data order: a seeded shuffle per epoch (run seed, epoch), so the examples of any
//!   optimizer step are known from the step number alone.
//! * Checkpoints every `checkpoint_every` optimizer steps in the scratch directory
//!   (weights, AdamW moments, step, and the metrics rows of the interval), written to a
//!   temporary directory and renamed; then the interval's metrics rows are committed as
//!   one chunk. A run killed between the two commits the rows from the checkpoint when it
//!   resumes, so manifest and checkpoint always agree, and the final weights equal an
//!   uninterrupted run's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Builder, Float64Array, Float64Builder, Int32Builder,
    Int64Array, Int64Builder, ListBuilder, RecordBatch,
};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sspo_engine::{
    ChunkOutput, Columns, ConfigureContext, Diagnostics, ModelRef, NodeKernel, OpError, Operator,
    Params, Port, RunContext,
};
use sspo_model::train::{
    clip_grad_norm, load_training_state, preference_loss, reference_logprobs, save_training_state,
    sft_loss, step_pg_loss, step_weight, token_logprobs, AdamW, AdamWConfig, PairTokens,
    PrefLossConfig, Schedule, ScoredSeq,
};
use sspo_model::Model;
use tch::Tensor;

use crate::columns::{cell, utf8_column};
use crate::model_port::{load_model, render_context};
use crate::probe::trace_tokens;

/// The `train` operator.
pub struct Train;

/// Columns of the metrics table, one row per optimizer step.
pub const TRAIN_COLUMNS: [&str; 8] = [
    "step",
    "epoch",
    "loss",
    "lr",
    "grad_norm",
    "margin",
    "pref_acc",
    "tokens_per_s",
];

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

impl LossKind {
    fn is_preference(self) -> bool {
        self != LossKind::Sft
    }
    fn needs_adv(self) -> bool {
        matches!(self, LossKind::Sspo | LossKind::StepPg)
    }
}

/// Params of `train`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// `sft`, `dpo`, `sspo` or `step_pg`.
    #[serde(default)]
    pub loss: LossKind,
    /// Inverse temperature of the preference losses; KL weight of `step_pg`.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Strength of the advantage in the step weights (`sspo`; 0 = DPO).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Lower clip of the step weights.
    #[serde(default)]
    pub w_min: f64,
    /// Upper clip of the step weights.
    #[serde(default = "default_w_max")]
    pub w_max: f64,
    /// Weight of the chosen NLL term (`sspo`).
    #[serde(default = "default_eta")]
    pub eta: f64,
    /// Tokens of the chosen NLL term (`sspo`): `branch` or `completion`.
    #[serde(default)]
    pub nll_span: NllSpan,
    /// Ratio clip ε of `step_pg`.
    #[serde(default = "default_clip_eps")]
    pub clip_eps: f64,
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Decoupled weight decay (matrices and embeddings only).
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    #[serde(default = "default_adam_eps")]
    pub adam_eps: f64,
    /// Warm-up: optimizer steps when >= 1, else a fraction of all steps.
    #[serde(default = "default_warmup")]
    pub warmup: f64,
    /// Passes over the data.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Stop after this many optimizer steps (at most `epochs` passes).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Rows (pairs) per forward pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "default_grad_accum")]
    pub grad_accum: usize,
    /// Global gradient-norm clip (0 = off).
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    /// Optimizer steps between checkpoints (and committed metrics chunks).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Checkpoints kept in the scratch directory.
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
    /// Weight dtype while training (`fp32`, `bf16`, `fp16`); default: as the model port
    /// loads it.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Longest sequence (context + completion + EOS) in tokens; longer rows are skipped.
    /// Default: the model's `max_position_embeddings`.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Log the loss every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// `sft`: the prompt column.
    #[serde(default = "default_prompt")]
    pub prompt: String,
    /// `sft`: the completion column.
    #[serde(default = "default_completion")]
    pub completion: String,
    /// `sft`: text around the prompt with a `{prompt}` placeholder (as in `generate`).
    #[serde(default = "default_prompt_template")]
    pub prompt_template: String,
    /// `sft`: wrap the prompt in the model's chat template (as in `generate`).
    #[serde(default)]
    pub chat_template: bool,
    /// Preference losses: the exact model input text.
    #[serde(default = "default_context")]
    pub context: String,
    #[serde(default = "default_chosen_steps")]
    pub chosen_steps: String,
    #[serde(default = "default_rejected_steps")]
    pub rejected_steps: String,
    #[serde(default = "default_chosen_adv")]
    pub chosen_adv: String,
    #[serde(default = "default_rejected_adv")]
    pub rejected_adv: String,
}

fn default_beta() -> f64 {
    0.1
}
fn default_alpha() -> f64 {
    1.0
}
fn default_w_max() -> f64 {
    2.0
}
fn default_eta() -> f64 {
    0.1
}
fn default_clip_eps() -> f64 {
    0.2
}
fn default_lr() -> f64 {
    1e-6
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_adam_eps() -> f64 {
    1e-8
}
fn default_warmup() -> f64 {
    0.1
}
fn default_epochs() -> usize {
    1
}
fn default_batch_size() -> usize {
    4
}
fn default_grad_accum() -> usize {
    1
}
fn default_max_grad_norm() -> f64 {
    1.0
}
fn default_checkpoint_every() -> u64 {
    50
}
fn default_keep_checkpoints() -> usize {
    2
}
fn default_log_every() -> u64 {
    10
}
fn default_prompt() -> String {
    "prompt".into()
}
fn default_completion() -> String {
    "response".into()
}
fn default_prompt_template() -> String {
    "{prompt}".into()
}
fn default_context() -> String {
    "context".into()
}
fn default_chosen_steps() -> String {
    "chosen_steps".into()
}
fn default_rejected_steps() -> String {
    "rejected_steps".into()
}
fn default_chosen_adv() -> String {
    "chosen_adv".into()
}
fn default_rejected_adv() -> String {
    "rejected_adv".into()
}

impl TrainParams {
    fn check(&self, params: &Params) -> Diagnostics {
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

    fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_eps,
            weight_decay: self.weight_decay,
        }
    }
}

impl Operator for Train {
    fn name(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "fine-tunes a model (sft, dpo, sspo, step_pg) and writes it as a HF model directory"
    }
    fn ports(&self) -> &'static [Port] {
        const PORTS: &[Port] = &[
            Port::model("model", "the model to fine-tune (and the reference policy)"),
            Port::table(
                "data",
                "`sft`: prompt and completion columns; preference losses: `pair` rows (`context`, `chosen_steps`, `rejected_steps`, `chosen_adv`, `rejected_adv`)",
            ),
        ];
        PORTS
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: TrainParams = params.parse()?;
        p.check(params).into_result()?;
        Ok(Arc::new(TrainKernel { params: p }))
    }
}

/// A configured `train` node.
pub struct TrainKernel {
    pub params: TrainParams,
}

impl NodeKernel for TrainKernel {
    fn params_json(&self) -> serde_json::Value {
        // Logging cadence and how many checkpoints are kept do not change the result.
        let mut v = serde_json::to_value(&self.params).unwrap_or_else(|_| json!({}));
        if let Some(m) = v.as_object_mut() {
            m.remove("log_every");
            m.remove("keep_checkpoints");
        }
        v
    }

    fn required_columns(&self) -> Vec<(&'static str, Vec<String>)> {
        let p = &self.params;
        let cols = if p.loss.is_preference() {
            let mut c = vec![
                p.context.clone(),
                p.chosen_steps.clone(),
                p.rejected_steps.clone(),
            ];
            if p.loss.needs_adv() {
                c.push(p.chosen_adv.clone());
                c.push(p.rejected_adv.clone());
            }
            c
        } else {
            vec![p.prompt.clone(), p.completion.clone()]
        };
        vec![("data", cols)]
    }

    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::exact(TRAIN_COLUMNS)
    }

    fn produces_model(&self) -> bool {
        true
    }

    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        Trainer::run(&self.params, ctx)
    }
}

// ---------------------------------------------------------------------------------------
// Examples

/// One tokenised sequence: `ids[from..]` are trained on; `weight` / `adv` per scored token.
#[derive(Debug, Clone)]
struct Seq {
    ids: Vec<i64>,
    from: usize,
    weight: Vec<f32>,
    adv: Vec<f32>,
}

impl Seq {
    fn scored(&self) -> usize {
        self.ids.len() - self.from
    }
    fn as_scored(&self) -> ScoredSeq<'_> {
        ScoredSeq {
            ids: &self.ids,
            from: self.from,
        }
    }
}

/// One training example: a single sequence (`sft`) or a (chosen, rejected) pair.
#[derive(Debug, Clone)]
enum Example {
    Single(Seq),
    Pair(Seq, Seq),
}

impl Example {
    fn seqs(&self) -> Vec<&Seq> {
        match self {
            Example::Single(s) => vec![s],
            Example::Pair(c, r) => vec![c, r],
        }
    }
}

/// Why rows were skipped, for `ctx.count`.
#[derive(Debug, Default)]
struct Skipped {
    missing_text: u64,
    empty_steps: u64,
    adv_mismatch: u64,
    too_long: u64,
    identical: u64,
    prefix_disagrees: u64,
}

impl Skipped {
    fn report(&self, ctx: &mut RunContext) {
        ctx.count(
            "missing_text",
            self.missing_text,
            "rows had a null or empty context/prompt/completion and were skipped",
        );
        ctx.count(
            "empty_steps",
            self.empty_steps,
            "rows had no steps (or an unreadable step list) and were skipped",
        );
        ctx.count(
            "adv_mismatch",
            self.adv_mismatch,
            "rows had advantages missing, non-finite or not one per step and were skipped",
        );
        ctx.count(
            "too_long",
            self.too_long,
            "rows were longer than max_length tokens and were skipped",
        );
        ctx.count(
            "identical_pairs",
            self.identical,
            "pairs had identical chosen and rejected steps and were skipped",
        );
        ctx.count(
            "prefix_tokens_disagree",
            self.prefix_disagrees,
            "pairs had a prefix_tokens value different from the shared leading steps' tokens (the steps were used)",
        );
    }
    fn total(&self) -> u64 {
        self.missing_text + self.empty_steps + self.adv_mismatch + self.too_long + self.identical
    }
}

/// A column of text lists: `list<utf8>` (or large list), or text holding a JSON array.
fn text_lists(table: &RecordBatch, name: &str) -> Result<Vec<Option<Vec<String>>>, OpError> {
    let col = table
        .column_by_name(name)
        .ok_or_else(|| OpError::msg(format!("input has no column `{name}`")))?;
    let rows = list_rows(col, name)?;
    rows.into_iter()
        .map(|r| match r {
            None => Ok(None),
            Some(ListCell::Json(v)) => Ok(v.as_array().and_then(|a| {
                a.iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })),
            Some(ListCell::Arrow(a)) => {
                let s = arrow::compute::cast(&a, &DataType::Utf8)
                    .map_err(|e| OpError::msg(format!("column `{name}`: {e}")))?;
                let s = s.as_string::<i32>();
                Ok((0..s.len())
                    .map(|i| s.is_valid(i).then(|| s.value(i).to_string()))
                    .collect::<Option<Vec<_>>>())
            }
        })
        .collect()
}

/// A column of number lists (like [`text_lists`]).
fn float_lists(table: &RecordBatch, name: &str) -> Result<Vec<Option<Vec<f64>>>, OpError> {
    let col = table
        .column_by_name(name)
        .ok_or_else(|| OpError::msg(format!("input has no column `{name}`")))?;
    let rows = list_rows(col, name)?;
    rows.into_iter()
        .map(|r| match r {
            None => Ok(None),
            Some(ListCell::Json(v)) => Ok(v
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_f64()).collect::<Option<Vec<_>>>())),
            Some(ListCell::Arrow(a)) => {
                let f = arrow::compute::cast(&a, &DataType::Float64)
                    .map_err(|e| OpError::msg(format!("column `{name}` is not numeric: {e}")))?;
                let f = f.as_primitive::<arrow::datatypes::Float64Type>();
                Ok((0..f.len())
                    .map(|i| f.is_valid(i).then(|| f.value(i)))
                    .collect::<Option<Vec<_>>>())
            }
        })
        .collect()
}

enum ListCell {
    Arrow(ArrayRef),
    Json(serde_json::Value),
}

fn list_rows(col: &ArrayRef, name: &str) -> Result<Vec<Option<ListCell>>, OpError> {
    let n = col.len();
    match col.data_type() {
        DataType::List(_) => {
            let l = col.as_list::<i32>();
            Ok((0..n)
                .map(|i| l.is_valid(i).then(|| ListCell::Arrow(l.value(i))))
                .collect())
        }
        DataType::LargeList(_) => {
            let l = col.as_list::<i64>();
            Ok((0..n)
                .map(|i| l.is_valid(i).then(|| ListCell::Arrow(l.value(i))))
                .collect())
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s = arrow::compute::cast(col, &DataType::Utf8)?;
            let s = s.as_string::<i32>();
            Ok((0..n)
                .map(|i| {
                    if s.is_null(i) {
                        return None;
                    }
                    // Unparsable text reads as a null cell: the row is counted and skipped.
                    serde_json::from_str(s.value(i)).ok().map(ListCell::Json)
                })
                .collect())
        }
        other => Err(OpError::msg(format!(
            "column `{name}` must be a list (or JSON text of a list), found {other}"
        ))),
    }
}

fn int_column(table: &RecordBatch, name: &str) -> Result<Option<Int64Array>, OpError> {
    let Some(col) = table.column_by_name(name) else {
        return Ok(None);
    };
    let cast = arrow::compute::cast(col, &DataType::Int64)
        .map_err(|e| OpError::msg(format!("column `{name}` is not an integer: {e}")))?;
    Ok(cast.as_any().downcast_ref::<Int64Array>().cloned())
}

/// Builds the training examples from the data table.
fn build_examples(
    p: &TrainParams,
    model: &Model,
    table: &RecordBatch,
    skipped: &mut Skipped,
) -> Result<Vec<Example>, OpError> {
    let eos = *model.eos_token_ids().first().ok_or_else(|| {
        OpError::msg("the model has no EOS token (generation_config, config or tokenizer): completions could not learn to stop")
    })?;
    let max_len = p
        .max_length
        .unwrap_or(model.decoder.config().max_position_embeddings as usize);
    let tok = &model.tokenizer;
    let tok_err = |e: sspo_model::ModelError| OpError::msg(format!("tokenizer: {e}"));
    let mut out = Vec::new();
    if !p.loss.is_preference() {
        let prompts = utf8_column(table, &p.prompt)?
            .ok_or_else(|| OpError::msg(format!("input has no column `{}`", p.prompt)))?;
        let completions = utf8_column(table, &p.completion)?
            .ok_or_else(|| OpError::msg(format!("input has no column `{}`", p.completion)))?;
        for i in 0..table.num_rows() {
            let (Some(prompt), Some(completion)) = (cell(&prompts, i), cell(&completions, i))
            else {
                skipped.missing_text += 1;
                continue;
            };
            if completion.trim().is_empty() {
                skipped.missing_text += 1;
                continue;
            }
            let context = render_context(model, prompt, &p.prompt_template, p.chat_template)
                .map_err(OpError::msg)?;
            let tr = trace_tokens(tok, &context, &[completion]).map_err(tok_err)?;
            if tr.context_len == 0 {
                skipped.missing_text += 1;
                continue;
            }
            let mut ids = tr.ids;
            ids.push(eos);
            if ids.len() > max_len {
                skipped.too_long += 1;
                continue;
            }
            let n = ids.len() - tr.context_len;
            out.push(Example::Single(Seq {
                ids,
                from: tr.context_len,
                weight: vec![1.0; n],
                adv: vec![0.0; n],
            }));
        }
        return Ok(out);
    }
    let contexts = utf8_column(table, &p.context)?
        .ok_or_else(|| OpError::msg(format!("input has no column `{}`", p.context)))?;
    let chosen = text_lists(table, &p.chosen_steps)?;
    let rejected = text_lists(table, &p.rejected_steps)?;
    let (cadv, radv) = if p.loss.needs_adv() {
        (
            Some(float_lists(table, &p.chosen_adv)?),
            Some(float_lists(table, &p.rejected_adv)?),
        )
    } else {
        (None, None)
    };
    let prefix_col = int_column(table, "prefix_tokens")?;
    for i in 0..table.num_rows() {
        let Some(context) = cell(&contexts, i).filter(|c| !c.is_empty()) else {
            skipped.missing_text += 1;
            continue;
        };
        let (Some(cs), Some(rs)) = (&chosen[i], &rejected[i]) else {
            skipped.empty_steps += 1;
            continue;
        };
        if cs.is_empty() || rs.is_empty() || cs.iter().chain(rs).any(|s| s.is_empty()) {
            skipped.empty_steps += 1;
            continue;
        }
        let advs = match (&cadv, &radv) {
            (Some(ca), Some(ra)) => match (&ca[i], &ra[i]) {
                (Some(a), Some(b))
                    if a.len() == cs.len()
                        && b.len() == rs.len()
                        && a.iter().chain(b).all(|x| x.is_finite()) =>
                {
                    Some((a.clone(), b.clone()))
                }
                _ => {
                    skipped.adv_mismatch += 1;
                    continue;
                }
            },
            _ => None,
        };
        if cs == rs {
            skipped.identical += 1;
            continue;
        }
        let shared_steps = cs.iter().zip(rs).take_while(|(a, b)| a == b).count();
        let c_refs: Vec<&str> = cs.iter().map(String::as_str).collect();
        let r_refs: Vec<&str> = rs.iter().map(String::as_str).collect();
        let ct = trace_tokens(tok, context, &c_refs).map_err(tok_err)?;
        let rt = trace_tokens(tok, context, &r_refs).map_err(tok_err)?;
        if ct.context_len == 0 {
            skipped.missing_text += 1;
            continue;
        }
        let shared_end = if shared_steps == 0 {
            ct.context_len
        } else {
            ct.step_spans[shared_steps - 1].1
        };
        if let Some(col) = &prefix_col {
            if col.is_valid(i) && col.value(i) != (shared_end - ct.context_len) as i64 {
                skipped.prefix_disagrees += 1;
            }
        }
        if ct.ids.len() + 1 > max_len || rt.ids.len() + 1 > max_len {
            skipped.too_long += 1;
            continue;
        }
        // Scoring starts at `from`; tokens before `shared_end` (scored only for the
        // NLL term) weigh 0 in the preference sum.
        let side = |tr: &crate::probe::TraceTokens,
                    adv: Option<&Vec<f64>>,
                    is_chosen: bool,
                    from: usize| {
            let mut ids = tr.ids.clone();
            ids.push(eos);
            let mut weight = Vec::new();
            let mut a = Vec::new();
            for (k, &(s, e)) in tr.step_spans.iter().enumerate() {
                let lo = s.max(from);
                if e <= lo {
                    continue;
                }
                let adv_k = adv.map_or(0.0, |v| v[k]);
                let w = if p.loss == LossKind::Sspo {
                    step_weight(adv_k, p.alpha, p.w_min, p.w_max, is_chosen)
                } else {
                    1.0
                };
                for t in lo..e {
                    let shared = t < shared_end;
                    weight.push(if shared { 0.0 } else { w as f32 });
                    a.push(if shared { 0.0 } else { adv_k as f32 });
                }
            }
            // The EOS token belongs to the last step.
            weight.push(weight.last().copied().unwrap_or(1.0));
            a.push(a.last().copied().unwrap_or(0.0));
            Seq {
                ids,
                from,
                weight,
                adv: a,
            }
        };
        let (ca, ra) = match &advs {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        let nll_whole_completion =
            p.loss == LossKind::Sspo && p.eta > 0.0 && p.nll_span == NllSpan::Completion;
        let chosen_from = if nll_whole_completion {
            ct.context_len
        } else {
            shared_end
        };
        let c = side(&ct, ca, true, chosen_from);
        let r = side(&rt, ra, false, shared_end);
        debug_assert_eq!(c.weight.len(), c.scored());
        out.push(Example::Pair(c, r));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Data order

/// splitmix64.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The example order of one epoch: a Fisher-Yates shuffle seeded by `seed`.
fn epoch_order(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = Mix(seed);
    for i in (1..n).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

// ---------------------------------------------------------------------------------------
// Checkpoints

/// One metrics row. In a checkpoint's `state.json` the floats are stored as their IEEE
/// bits (`u64`): JSON text does not always read back to the same `f64`, and rows
/// committed from a checkpoint must equal those of an uninterrupted run bit for bit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct MetricRow {
    step: u64,
    epoch: u64,
    #[serde(with = "f64_bits")]
    loss: f64,
    #[serde(with = "f64_bits")]
    lr: f64,
    #[serde(with = "f64_bits")]
    grad_norm: f64,
    #[serde(with = "opt_f64_bits")]
    margin: Option<f64>,
    #[serde(with = "opt_f64_bits")]
    pref_acc: Option<f64>,
    #[serde(with = "f64_bits")]
    tokens_per_s: f64,
}

mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(x.to_bits())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(f64::from_bits(u64::deserialize(d)?))
    }
}

mod opt_f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match x {
            Some(v) => s.serialize_some(&v.to_bits()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(f64::from_bits))
    }
}

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CkptState {
    fingerprint: String,
    /// Optimizer steps done.
    step: u64,
    total_steps: u64,
    examples: u64,
    /// Epoch and position in it of the next step (informational: both follow from `step`).
    epoch: u64,
    batch_in_epoch: u64,
    /// Metrics of the steps since the previous checkpoint (committed after this one).
    pending: Vec<MetricRow>,
}

const CKPT_PREFIX: &str = "ckpt-";
const STATE_FILE: &str = "state.json";

fn ckpt_name(step: u64) -> String {
    format!("{CKPT_PREFIX}{step:09}")
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> OpError + '_ {
    move |e| OpError::context(path.display().to_string(), e)
}

/// Complete checkpoints of this fingerprint, oldest first.
fn list_checkpoints(scratch: &Path, fingerprint: &str) -> Vec<(PathBuf, CkptState)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(scratch).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(CKPT_PREFIX) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join(STATE_FILE)) else {
            continue;
        };
        let Ok(st) = serde_json::from_str::<CkptState>(&text) else {
            continue;
        };
        if st.fingerprint == fingerprint {
            out.push((e.path(), st));
        }
    }
    out.sort_by_key(|(_, s)| s.step);
    out
}

/// Writes a checkpoint into a temporary directory, then renames it into place.
fn write_checkpoint(
    scratch: &Path,
    model: &Model,
    optim: &AdamW,
    state: &CkptState,
) -> Result<PathBuf, OpError> {
    let name = ckpt_name(state.step);
    let tmp = scratch.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    save_training_state(&tmp, &model.decoder, optim)
        .map_err(|e| OpError::context("writing a checkpoint", e))?;
    let text =
        serde_json::to_string_pretty(state).map_err(|e| OpError::context("checkpoint state", e))?;
    std::fs::write(tmp.join(STATE_FILE), text).map_err(io_err(&tmp))?;
    sync_dir(&tmp);
    let dst = scratch.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(io_err(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    sync_dir(scratch);
    Ok(dst)
}

/// Flushes a directory's files to disk (best effort).
fn sync_dir(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(f) = std::fs::File::open(e.path()) {
            let _ = f.sync_all();
        }
    }
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Keeps the newest `keep` checkpoints; removes older ones, temp dirs and other runs' files.
fn prune(scratch: &Path, fingerprint: &str, keep: usize, ref_file: &str) {
    let ckpts = list_checkpoints(scratch, fingerprint);
    let keep_from = ckpts.len().saturating_sub(keep);
    let kept: Vec<&PathBuf> = ckpts[keep_from..].iter().map(|(p, _)| p).collect();
    for e in std::fs::read_dir(scratch).into_iter().flatten().flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if kept.contains(&&path) || name == ref_file {
            continue;
        }
        if path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reference log-probs cache

fn ref_file_name(fingerprint: &str) -> String {
    let short: String = fingerprint.chars().take(16).collect();
    format!("ref_logprobs-{short}.parquet")
}

fn write_ref_cache(path: &Path, refs: &[Vec<f32>]) -> Result<(), OpError> {
    let mut seq = Int64Builder::new();
    let mut lists = ListBuilder::new(Float32Builder::new());
    for (i, r) in refs.iter().enumerate() {
        seq.append_value(i as i64);
        lists.values().append_slice(r);
        lists.append(true);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new(
            "logprobs",
            DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
            true,
        ),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(seq.finish()), Arc::new(lists.finish())],
    )?;
    let tmp = path.with_extension("parquet.tmp");
    let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None)
        .map_err(|e| OpError::context("reference log-probs cache", e))?;
    w.write(&batch)
        .map_err(|e| OpError::context("reference log-probs cache", e))?;
    let file = w
        .into_inner()
        .map_err(|e| OpError::context("reference log-probs cache", e))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// The cached reference log-probs, when the file exists and fits `expected` lengths.
fn read_ref_cache(path: &Path, expected: &[usize]) -> Option<Vec<Vec<f32>>> {
    let (_, batches) = sspo_engine::store::read_parquet(path).ok()?;
    let mut out = Vec::with_capacity(expected.len());
    for b in &batches {
        let l = b.column_by_name("logprobs")?.as_list_opt::<i32>()?;
        for i in 0..l.len() {
            let v = l.value(i);
            let f = v.as_primitive_opt::<arrow::datatypes::Float32Type>()?;
            out.push(f.values().to_vec());
        }
    }
    let fits = out.len() == expected.len() && out.iter().zip(expected).all(|(v, &n)| v.len() == n);
    fits.then_some(out)
}

// ---------------------------------------------------------------------------------------
// The training loop

fn metrics_batch(rows: &[MetricRow]) -> Result<RecordBatch, OpError> {
    let mut step = Int64Builder::new();
    let mut epoch = Int32Builder::new();
    let mut f: Vec<Float64Builder> = (0..6).map(|_| Float64Builder::new()).collect();
    for r in rows {
        step.append_value(r.step as i64);
        epoch.append_value(r.epoch as i32);
        f[0].append_value(r.loss);
        f[1].append_value(r.lr);
        f[2].append_value(r.grad_norm);
        f[3].append_option(r.margin);
        f[4].append_option(r.pref_acc);
        f[5].append_value(r.tokens_per_s);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("step", DataType::Int64, false),
        Field::new("epoch", DataType::Int32, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("lr", DataType::Float64, false),
        Field::new("grad_norm", DataType::Float64, false),
        Field::new("margin", DataType::Float64, true),
        Field::new("pref_acc", DataType::Float64, true),
        Field::new("tokens_per_s", DataType::Float64, false),
    ]));
    let mut cols: Vec<ArrayRef> = vec![Arc::new(step.finish()), Arc::new(epoch.finish())];
    for mut b in f {
        let a: Float64Array = b.finish();
        cols.push(Arc::new(a));
    }
    Ok(RecordBatch::try_new(schema, cols)?)
}

struct Trainer<'p> {
    p: &'p TrainParams,
    examples: Vec<Example>,
    /// Reference log-probs per sequence (example-major: chosen then rejected).
    refs: Vec<Vec<f32>>,
    seed: u64,
    steps_per_epoch: u64,
    total: u64,
    schedule: Schedule,
}

/// What one optimizer step gives.
struct StepOut {
    loss: f64,
    grad_norm: f64,
    margins: Vec<f64>,
    tokens: usize,
}

impl<'p> Trainer<'p> {
    fn run(p: &'p TrainParams, ctx: &mut RunContext) -> Result<(), OpError> {
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
        let n = examples.len() as u64;
        let per_step = (p.batch_size * p.grad_accum) as u64;
        let steps_per_epoch = n.div_ceil(per_step);
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
        let seed = ctx.row_seed(&[b"train data order"]);
        let mut t = Trainer {
            p,
            examples,
            refs: Vec::new(),
            seed,
            steps_per_epoch,
            total,
            schedule: Schedule {
                peak: p.lr,
                warmup: warmup.min(total),
                total,
            },
        };
        t.train(ctx, model)
    }

    fn train(&mut self, ctx: &mut RunContext, model: Model) -> Result<(), OpError> {
        let p = self.p;
        let every = p.checkpoint_every;
        let scratch = ctx.scratch_dir()?;
        let fp = ctx.fingerprint().to_string();
        let ref_name = ref_file_name(&fp);

        // Where the committed metrics stand.
        let committed = match ctx.resumed_manifest() {
            Some(m) => {
                if m.input_rows != self.total || m.chunk_rows != every {
                    return Err(OpError::msg(format!(
                        "the interrupted run planned {} steps in chunks of {}, this one {} in chunks of {every}; re-run with --force {}",
                        m.input_rows, m.chunk_rows, self.total, ctx.node_id()
                    )));
                }
                m.chunks.iter().map(|c| c.input_end).max().unwrap_or(0)
            }
            None => 0,
        };
        let ckpts = list_checkpoints(&scratch, &fp);
        let resume = ckpts.into_iter().rev().find(|(_, s)| s.step >= committed);
        if committed > 0 && resume.is_none() {
            return Err(OpError::msg(format!(
                "{committed} steps are committed but their checkpoint in {} is missing; re-run with --force {}",
                scratch.display(),
                ctx.node_id()
            )));
        }
        if resume.is_none() {
            // A fresh start: nothing of another configuration may linger.
            prune(&scratch, &fp, 0, &ref_name);
        }

        // Reference log-probs (preference losses), computed once and cached.
        if p.loss.is_preference() {
            let lens: Vec<usize> = self
                .examples
                .iter()
                .flat_map(|e| e.seqs().into_iter().map(Seq::scored))
                .collect();
            let path = scratch.join(&ref_name);
            self.refs = match read_ref_cache(&path, &lens) {
                Some(r) => {
                    ctx.log("reference log-probs read from the cache");
                    r
                }
                None => {
                    ctx.log(&format!(
                        "computing reference log-probs of {} sequences",
                        lens.len()
                    ));
                    let seqs: Vec<ScoredSeq<'_>> = self
                        .examples
                        .iter()
                        .flat_map(|e| e.seqs().into_iter().map(Seq::as_scored))
                        .collect();
                    let r = reference_logprobs(&model.decoder, &seqs, p.batch_size * 2)
                        .map_err(|e| OpError::context("reference log-probs", e))?;
                    write_ref_cache(&path, &r)?;
                    r
                }
            };
        }

        let params: Vec<(String, Tensor)> =
            model.decoder.var_store().variables().into_iter().collect();
        let mut optim =
            AdamW::new(params, p.adamw()).map_err(|e| OpError::context("optimizer", e))?;
        let mut start = 0;
        let mut last_good = None;
        if let Some((dir, st)) = &resume {
            load_training_state(dir, &model.decoder, &mut optim, st.step).map_err(|e| {
                OpError::context(format!("loading checkpoint {}", dir.display()), e)
            })?;
            start = st.step;
            last_good = Some(st.step);
            if st.step > committed {
                // Killed between writing the checkpoint and committing its metrics.
                let first = st.pending.first().map_or(st.step, |r| r.step - 1);
                if first != committed {
                    return Err(OpError::msg(format!(
                        "checkpoint at step {} does not follow the {committed} committed steps; re-run with --force {}",
                        st.step, ctx.node_id()
                    )));
                }
                self.commit(ctx, committed, st.step, &st.pending)?;
            }
            ctx.log(&format!("resuming from the checkpoint at step {}", st.step));
        }

        ctx.progress().set_total(self.total);
        ctx.progress().set_done(start);
        let mut pending: Vec<MetricRow> = Vec::new();
        let mut interval_start = start;
        for step in start..self.total {
            if sspo_engine::run::cancel_requested() {
                return Err(OpError::Cancelled);
            }
            let lr = self.schedule.lr(step);
            let t0 = Instant::now();
            let out = self.step(&model, &mut optim, step, lr);
            let out = match out {
                Ok(o) => o,
                Err(e) => {
                    let kept = match last_good {
                        Some(s) => format!("the checkpoint at step {s} is kept"),
                        None => "no checkpoint was written yet".into(),
                    };
                    return Err(OpError::msg(format!("{e}; {kept}")));
                }
            };
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            let n_pairs = out.margins.len();
            let row = MetricRow {
                step: step + 1,
                epoch: step / self.steps_per_epoch,
                loss: out.loss,
                lr,
                grad_norm: out.grad_norm,
                margin: (n_pairs > 0).then(|| out.margins.iter().sum::<f64>() / n_pairs as f64),
                pref_acc: (n_pairs > 0).then(|| {
                    out.margins.iter().filter(|&&m| m > 0.0).count() as f64 / n_pairs as f64
                }),
                tokens_per_s: out.tokens as f64 / secs,
            };
            ctx.progress().inc(1);
            ctx.progress().set_extra(&format!("loss {:.4}", row.loss));
            if (step + 1) % p.log_every == 0 || step + 1 == self.total {
                let pref = match (row.margin, row.pref_acc) {
                    (Some(m), Some(a)) => format!(", margin {m:.4}, pref_acc {a:.2}"),
                    _ => String::new(),
                };
                ctx.log(&format!(
                    "step {}/{}: loss {:.5}, lr {:.3e}, grad_norm {:.4}{pref}, {:.0} tok/s",
                    row.step, self.total, row.loss, row.lr, row.grad_norm, row.tokens_per_s
                ));
            }
            pending.push(row);
            let done = step + 1;
            if done % every == 0 || done == self.total {
                let state = CkptState {
                    fingerprint: fp.clone(),
                    step: done,
                    total_steps: self.total,
                    examples: self.examples.len() as u64,
                    epoch: done / self.steps_per_epoch,
                    batch_in_epoch: done % self.steps_per_epoch,
                    pending: std::mem::take(&mut pending),
                };
                write_checkpoint(&scratch, &model, &optim, &state)?;
                last_good = Some(done);
                self.commit(ctx, interval_start, done, &state.pending)?;
                interval_start = done;
                prune(&scratch, &fp, p.keep_checkpoints, &ref_name);
                if sspo_engine::run::cancel_requested() && done < self.total {
                    return Err(OpError::Cancelled);
                }
            }
        }
        ctx.set_metric("steps", json!(self.total));
        ctx.set_metric("examples", json!(self.examples.len()));
        let dir = ctx.artifact_dir()?;
        model
            .save_dir(&dir)
            .map_err(|e| OpError::context(format!("saving the model to {}", dir.display()), e))?;
        ctx.log(&format!("model written to {}", dir.display()));
        Ok(())
    }

    fn commit(
        &self,
        ctx: &mut RunContext,
        from: u64,
        to: u64,
        rows: &[MetricRow],
    ) -> Result<(), OpError> {
        if let Some(last) = rows.last() {
            ctx.set_metric("final_loss", json!(last.loss));
        }
        let every = self.p.checkpoint_every;
        ctx.commit_chunk(
            from / every,
            from as usize..to as usize,
            every as usize,
            self.total as usize,
            ChunkOutput::from(metrics_batch(rows)?),
        )
    }

    /// Example indices of optimizer step `step`.
    fn step_examples(&self, step: u64) -> Vec<usize> {
        let epoch = step / self.steps_per_epoch;
        let pos = (step % self.steps_per_epoch) as usize;
        let mut h = blake3::Hasher::new();
        h.update(&self.seed.to_le_bytes());
        h.update(&epoch.to_le_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.finalize().as_bytes()[..8]);
        let order = epoch_order(self.examples.len(), u64::from_le_bytes(b));
        let per = self.p.batch_size * self.p.grad_accum;
        let lo = (pos * per).min(order.len());
        let hi = ((pos + 1) * per).min(order.len());
        order[lo..hi].to_vec()
    }

    fn step(
        &self,
        model: &Model,
        optim: &mut AdamW,
        step: u64,
        lr: f64,
    ) -> Result<StepOut, String> {
        let p = self.p;
        let idx = self.step_examples(step);
        let err = |e: sspo_model::ModelError| format!("step {}: {e}", step + 1);
        optim.zero_grad().map_err(err)?;
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
            let logp = token_logprobs(&model.decoder, &seqs).map_err(err)?;
            let ref_lp = Tensor::from_slice(&refs);
            let (loss, m) = match p.loss {
                LossKind::Sft => (sft_loss(&logp, denom).map_err(err)?, Vec::new()),
                LossKind::Dpo | LossKind::Sspo => {
                    let eta = if p.loss == LossKind::Sspo { p.eta } else { 0.0 };
                    let cfg = PrefLossConfig { beta: p.beta, eta };
                    let o = preference_loss(&logp, &ref_lp, &toks, cfg, denom).map_err(err)?;
                    (o.loss, o.margins)
                }
                LossKind::StepPg => {
                    let o = step_pg_loss(&logp, &ref_lp, &toks, p.beta, p.clip_eps, denom)
                        .map_err(err)?;
                    (o.loss, o.margins)
                }
            };
            let v = loss.f_double_value(&[]).map_err(|e| err(e.into()))?;
            if !v.is_finite() {
                return Err(format!(
                    "step {}: the loss is not finite ({v}); lower `lr` or check the data",
                    step + 1
                ));
            }
            loss.f_backward().map_err(|e| err(e.into()))?;
            loss_sum += v;
            margins.extend(m);
        }
        let params: Vec<&Tensor> = optim.params().map(|(_, t)| t).collect();
        let grad_norm = clip_grad_norm(params, p.max_grad_norm).map_err(err)?;
        if !grad_norm.is_finite() {
            return Err(format!(
                "step {}: the gradient norm is not finite ({grad_norm}); lower `lr` or check the data",
                step + 1
            ));
        }
        optim.step(lr).map_err(err)?;
        optim.zero_grad().map_err(err)?;
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
    use arrow::array::StringArray;

    #[test]
    fn epoch_orders_are_permutations_and_depend_on_the_seed() {
        let a = epoch_order(50, 1);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(50, 1));
        assert_ne!(a, epoch_order(50, 2));
        assert!(epoch_order(0, 3).is_empty());
    }

    #[test]
    fn checkpoint_state_round_trips_floats_exactly() {
        let row = MetricRow {
            step: 2,
            epoch: 0,
            loss: 0.410_439_997_911_453_25,
            lr: 0.000_600_000_000_000_000_1,
            grad_norm: 12.463_276_472_074_993,
            margin: Some(1.0 / 3.0),
            pref_acc: None,
            tokens_per_s: 1_234.567_890_123_4,
        };
        // Values whose shortest decimal form does not always parse back exactly.
        for x in [
            0.410_439_997_911_453_25,
            12.463_276_472_074_993,
            2.0 / 3.0,
            1e-300,
        ] {
            let row = MetricRow {
                loss: x,
                grad_norm: x * 7.0,
                ..row.clone()
            };
            let text = serde_json::to_string(&row).unwrap();
            let back: MetricRow = serde_json::from_str(&text).unwrap();
            assert_eq!(back.loss.to_bits(), row.loss.to_bits());
            assert_eq!(back.grad_norm.to_bits(), row.grad_norm.to_bits());
            assert_eq!(back, row);
        }
    }

    /// The examples `build_examples` makes of one hand-written pair under `params`.
    fn one_pair(params: serde_json::Value) -> (Model, Seq, Seq, Skipped) {
        use sspo_engine::{ModelRef, ModelSource};
        let r = ModelRef {
            name: "base".into(),
            source: ModelSource::Builtin("tiny-test".into()),
            options: Default::default(),
            identity: String::new(),
        };
        let model = load_model(&r, "cpu").unwrap();
        let row = serde_json::json!([{
            "context": "Q: 1+1?\n",
            "chosen_steps": "[\"One plus one. \", \"Two.\"]",
            "rejected_steps": "[\"One plus one. \", \"Three? \", \"Two.\"]",
            "chosen_adv": "[0.0, 0.5]",
            "rejected_adv": "[0.0, 0.4, -0.2]",
        }]);
        let schema = Arc::new(Schema::new(
            [
                "context",
                "chosen_steps",
                "rejected_steps",
                "chosen_adv",
                "rejected_adv",
            ]
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
        ));
        let cols: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| {
                Arc::new(StringArray::from(vec![row[0][f.name()].as_str().unwrap()])) as ArrayRef
            })
            .collect();
        let table = RecordBatch::try_new(schema, cols).unwrap();
        let p: TrainParams = serde_json::from_value(params).unwrap();
        let mut skipped = Skipped::default();
        let ex = build_examples(&p, &model, &table, &mut skipped).unwrap();
        let Some(Example::Pair(c, rj)) = ex.into_iter().next() else {
            panic!("not a pair")
        };
        (model, c, rj, skipped)
    }

    #[test]
    fn pairs_mask_shared_steps_and_weight_each_step() {
        let (model, c, rj, skipped) = one_pair(json!({"alpha": 1.0, "nll_span": "branch"}));
        let tok = &model.tokenizer;
        let ctx_len = tok.encode("Q: 1+1?\n", false).unwrap().len();
        let shared = tok.encode("One plus one.", false).unwrap().len()
            + tok.encode(" ", false).unwrap().len();
        assert_eq!(c.from, ctx_len + shared);
        assert_eq!(rj.from, c.from);
        let eos = model.eos_token_ids()[0];
        assert_eq!(c.ids.last(), Some(&eos));
        // Chosen: step 2 ("Two.") with weight 1 + 0.5, EOS included.
        let two = tok.encode("Two.", false).unwrap().len();
        assert_eq!(c.scored(), two + 1);
        assert!(c.weight.iter().all(|&w| (w - 1.5).abs() < 1e-6));
        // Rejected: "Three? " weighs 1 - 0.4, "Two." 1 + 0.2 (and the EOS with it).
        let three = tok.encode("Three?", false).unwrap().len() + 1;
        assert_eq!(rj.scored(), three + two + 1);
        assert!(rj.weight[..three].iter().all(|&w| (w - 0.6).abs() < 1e-6));
        assert!(rj.weight[three..].iter().all(|&w| (w - 1.2).abs() < 1e-6));
        assert_eq!(rj.adv[three], -0.2);
        assert_eq!(skipped.total(), 0);
    }

    #[test]
    fn default_nll_span_scores_the_shared_steps_of_the_chosen_side_at_weight_zero() {
        let (_, branch_c, branch_r, _) = one_pair(json!({"alpha": 1.0, "nll_span": "branch"}));
        let (model, c, rj, _) = one_pair(json!({"alpha": 1.0}));
        let ctx_len = model.tokenizer.encode("Q: 1+1?\n", false).unwrap().len();
        assert_eq!(c.from, ctx_len);
        let shared = branch_c.from - ctx_len;
        assert_eq!(c.scored(), shared + branch_c.scored());
        assert!(c.weight[..shared].iter().all(|&w| w == 0.0));
        assert_eq!(c.weight[shared..], branch_c.weight[..]);
        // The rejected side and the weighted preference sum are unchanged.
        assert_eq!((rj.from, &rj.weight), (branch_r.from, &branch_r.weight));
        // Not for the losses without an NLL term.
        let (_, dpo_c, _, _) = one_pair(json!({"loss": "dpo"}));
        assert_eq!(dpo_c.from, branch_c.from);
    }

    #[test]
    fn list_columns_read_from_arrow_lists_and_json_text() {
        let mut lb = ListBuilder::new(arrow::array::StringBuilder::new());
        lb.values().append_value("a");
        lb.values().append_value("b");
        lb.append(true);
        lb.append(false);
        let json = StringArray::from(vec![Some("[\"x\", \"y \"]"), Some("not json")]);
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "l",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
            Field::new("j", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(lb.finish()), Arc::new(json)]).unwrap();
        assert_eq!(
            text_lists(&b, "l").unwrap(),
            vec![Some(vec!["a".to_string(), "b".to_string()]), None]
        );
        assert_eq!(
            text_lists(&b, "j").unwrap(),
            vec![Some(vec!["x".to_string(), "y ".to_string()]), None]
        );
        let nums = StringArray::from(vec![Some("[0.5, -1]"), None]);
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Utf8, true)]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(nums)]).unwrap();
        assert_eq!(
            float_lists(&b, "a").unwrap(),
            vec![Some(vec![0.5, -1.0]), None]
        );
    }
}
