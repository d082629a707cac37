//! `evaluate`: generates responses to held-out prompts with every model on the `models`
//! port, verifies their final answers, and summarises per model: accuracy (pass@1), mean,
//! median and p90 response tokens, mean steps, the share clipped at `max_new_tokens`,
//! length reduction and accuracy delta against the base model, and, where the prompts
//! carry an oracle (minimal) trace, the share of removable redundancy each model removed.
//!
//! Generation is `generate`'s ([`crate::generate::generate_rows`]): same prompt rendering,
//! continuous batching, per-request seeds `row_seed(id, sample)` (so every model answers a
//! prompt's sample `s` with the same seed) and answer verification.
//!
//! Chunks never mix models: the work is laid out model-major, every model's prompt rows
//! padded to a whole number of chunks, so chunk `c` belongs to model
//! `c / ceil(n_prompts / chunk_rows)`. A model is loaded when the first chunk of it that
//! still has to be computed starts, and dropped when the next model's chunks start.
//!
//! The summary needs every row, so it is computed from the committed rows after the
//! last chunk and committed as the extra table `summary` (SQL: `<node>_summary`) with
//! [`RunContext::commit_final`]; `report.md` and its SVG plots ([`report`]) are written
//! into the node directory at the same time.

pub mod report;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, StringArray, StringBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sspo_engine::{
    Columns, ConfigureContext, Diagnostics, ModelRef, NodeKernel, OpError, Operator, Params, Port,
    RunContext,
};
use sspo_model::Model;

use crate::columns::{cell, utf8_column};
use crate::generate::{
    finish_reason_name, generate_rows, judge, load_checked, GenerateParams, PromptColumns,
    Throughput,
};
use crate::segment::{Boundary, Splitter};
use crate::tasks::AnswerFormat;

/// The `evaluate` operator.
pub struct Evaluate;

/// Columns of the per-sample table, in order.
pub const EVALUATE_COLUMNS: [&str; 12] = [
    "model",
    "id",
    "sample",
    "prompt",
    "response",
    "n_tokens",
    "n_steps",
    "finish_reason",
    "pred_answer",
    "correct",
    "oracle_tokens",
    "seed",
];

/// Columns of the `summary` table, in order.
pub const SUMMARY_COLUMNS: [&str; 12] = [
    "model",
    "n",
    "accuracy",
    "mean_tokens",
    "median_tokens",
    "p90_tokens",
    "mean_steps",
    "clipped_ratio",
    "length_reduction",
    "accuracy_delta",
    "oracle_tokens",
    "redundancy_removed",
];

/// The default oracle column (written by `source` with `synth:`).
pub const DEFAULT_ORACLE_COLUMN: &str = "oracle_trace";

/// Params of `evaluate`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// Keep rows whose `split` column equals this (when the column exists); `null` or
    /// `all` keeps every row.
    #[serde(default = "default_split")]
    pub split: Option<String>,
    /// Evaluate only the first `limit` rows (after the split filter).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Responses per prompt and model.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Sampling temperature; 0 = greedy.
    #[serde(default)]
    pub temperature: f64,
    /// Nucleus sampling mass; 1 = off.
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 = off.
    #[serde(default)]
    pub top_k: usize,
    /// Most tokens generated per response.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Generation stops once the response contains one of these.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Requests decoded together (continuous batching slots).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Text around the prompt, with a `{prompt}` placeholder.
    #[serde(default = "default_prompt_template")]
    pub prompt_template: String,
    /// Wrap the prompt in the model's chat template.
    #[serde(default)]
    pub chat_template: bool,
    /// How the final answer is written in responses (and read from the reference), as in
    /// `generate`.
    #[serde(default)]
    pub answer_format: AnswerFormat,
    /// The baseline model's name among `models`; default the first.
    #[serde(default)]
    pub base: Option<String>,
    /// Step delimiter for `n_steps` (as `segment`'s `delimiter`).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Text column holding the minimal (oracle) response; default `oracle_trace` when the
    /// input has it.
    #[serde(default)]
    pub oracle: Option<String>,
    /// Prompt rows per committed chunk (per model).
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
}

fn default_split() -> Option<String> {
    Some("test".into())
}
fn default_samples() -> usize {
    1
}
fn default_top_p() -> f64 {
    1.0
}
fn default_max_new_tokens() -> usize {
    256
}
fn default_batch_size() -> usize {
    16
}
fn default_prompt_template() -> String {
    "{prompt}".into()
}
fn default_delimiter() -> String {
    "\n\n".into()
}
fn default_chunk_rows() -> usize {
    8
}

impl Default for EvaluateParams {
    fn default() -> Self {
        EvaluateParams {
            split: default_split(),
            limit: None,
            samples: default_samples(),
            temperature: 0.0,
            top_p: default_top_p(),
            top_k: 0,
            max_new_tokens: default_max_new_tokens(),
            stop: Vec::new(),
            batch_size: default_batch_size(),
            prompt_template: default_prompt_template(),
            chat_template: false,
            answer_format: AnswerFormat::Auto,
            base: None,
            delimiter: default_delimiter(),
            oracle: None,
            chunk_rows: default_chunk_rows(),
        }
    }
}

impl EvaluateParams {
    /// The generation settings, as `generate` takes them.
    pub fn generation(&self) -> GenerateParams {
        GenerateParams {
            samples: self.samples,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_new_tokens: self.max_new_tokens,
            stop: self.stop.clone(),
            chat_template: self.chat_template,
            prompt_template: self.prompt_template.clone(),
            batch_size: self.batch_size,
            answer_format: self.answer_format,
            chunk_rows: self.chunk_rows,
        }
    }

    /// The split rows must have, or `None` for every row.
    pub fn split_filter(&self) -> Option<&str> {
        self.split.as_deref().filter(|s| *s != "all")
    }

    /// Semantic checks, located at the offending key.
    pub fn check(&self, params: &Params) -> Diagnostics {
        // The generation keys have the same names as `generate`'s.
        let mut d = self.generation().check(params);
        if self.limit == Some(0) {
            d.push(params.error(&["limit"], "`limit` must be at least 1"));
        }
        if self.split.as_deref().is_some_and(|s| s.trim().is_empty()) {
            d.push(params.error(
                &["split"],
                "`split` must name a split (e.g. `test`), or be `all` or null",
            ));
        }
        if self.delimiter.is_empty() {
            d.push(params.error(&["delimiter"], "`delimiter` must not be empty"));
        }
        if self.base.as_deref().is_some_and(str::is_empty) {
            d.push(params.error(&["base"], "`base` must name one of the models"));
        }
        if self.oracle.as_deref().is_some_and(str::is_empty) {
            d.push(params.error(&["oracle"], "`oracle` must name a text column"));
        }
        d
    }
}

impl Operator for Evaluate {
    fn name(&self) -> &'static str {
        "evaluate"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "evaluates models on held-out prompts: accuracy, response length and reduction vs a base model"
    }
    fn ports(&self) -> &'static [Port] {
        const PORTS: &[Port] = &[
            Port::table(
                "prompts",
                "rows with `id`, `prompt` and the reference `answer` (optionally `split` and an oracle trace)",
            ),
            Port::model(
                "models",
                "the models to compare, e.g. [base, sspo]; the first is the baseline unless `base` says otherwise",
            )
            .many(),
        ];
        PORTS
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: EvaluateParams = params.parse()?;
        p.check(params).into_result()?;
        Ok(Arc::new(EvaluateKernel { params: p }))
    }
}

/// A configured `evaluate` node.
pub struct EvaluateKernel {
    pub params: EvaluateParams,
}

impl NodeKernel for EvaluateKernel {
    fn params_json(&self) -> serde_json::Value {
        // `batch_size` only changes speed (per-request seeds), so it stays out of the
        // fingerprint.
        let mut v = serde_json::to_value(&self.params).unwrap_or_else(|_| json!({}));
        if let Some(m) = v.as_object_mut() {
            m.remove("batch_size");
        }
        v
    }

    fn required_columns(&self) -> Vec<(&'static str, Vec<String>)> {
        let mut cols = vec!["id".to_string(), "prompt".into(), "answer".into()];
        if let Some(o) = &self.params.oracle {
            cols.push(o.clone());
        }
        vec![("prompts", cols)]
    }

    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::exact(EVALUATE_COLUMNS)
    }

    fn chunk_rows(&self) -> usize {
        self.params.chunk_rows
    }

    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let p = &self.params;
        let table = ctx.input_table("prompts")?;
        let table = select_rows(&table, p.split_filter(), p.limit)?;
        let input = PromptColumns::new(&table)?;
        let oracle_col = oracle_column(&table, p.oracle.as_deref())?;
        let models: Vec<ModelRef> = ctx.input_models("models")?.into_iter().cloned().collect();
        let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
        let base = base_index(&names, p.base.as_deref())?;
        let layout = Layout::new(table.num_rows(), p.chunk_rows, models.len());
        let gen_params = p.generation();
        let splitter = Splitter::new(Boundary::Delimiter(p.delimiter.clone()), 0, None);
        let device = ctx.device.clone();
        let mut loaded: Option<(usize, Model)> = None;
        let mut stats = Throughput::new();
        ctx.run_chunks(layout.input_rows(), p.chunk_rows, |ctx, range| {
            let (mi, rows) = layout.locate(range);
            let model_ref = models.get(mi).ok_or_else(|| {
                OpError::msg(format!("chunk of model #{mi}, which is not listed"))
            })?;
            if rows.is_empty() {
                return Ok(EvalBuilder::with_capacity(0).finish()?.into());
            }
            if loaded.as_ref().map(|(i, _)| *i) != Some(mi) {
                // Free the previous model before loading the next.
                loaded = None;
                ctx.log(&format!("loading model `{}`", model_ref.name));
                loaded = Some((mi, load_checked(model_ref, &device, &gen_params)?));
            }
            let Some((_, model)) = loaded.as_ref() else {
                return Err(OpError::msg("model not loaded"));
            };
            let gen = generate_rows(ctx, model, &gen_params, &input, rows, true, &mut stats)?;
            let mut skipped = gen.skipped;
            if mi != 0 {
                // Rows without an id, prompt or reference are skipped for every model;
                // count them once (with the first model).
                skipped.missing_ids = 0;
                skipped.empty_prompts = 0;
                skipped.missing_answers = 0;
            }
            skipped.record(ctx);
            let mut oracle_tokens: HashMap<usize, Option<i32>> = HashMap::new();
            let mut b = EvalBuilder::with_capacity(gen.outputs.len());
            for (r, sample, seed, out) in &gen.outputs {
                let row = &gen.rows[*r];
                let oracle = *oracle_tokens
                    .entry(row.index)
                    .or_insert_with(|| oracle_length(model, oracle_col.as_ref(), row.index));
                let (pred, correct) = judge(&p.answer_format, &out.text, row.answer.as_deref());
                b.model.append_value(&model_ref.name);
                b.id.append_value(row.id);
                b.sample.append_value(*sample);
                b.prompt.append_value(row.prompt);
                b.response.append_value(&out.text);
                b.n_tokens
                    .append_value(i32::try_from(out.n_tokens).unwrap_or(i32::MAX));
                b.n_steps.append_value(
                    i32::try_from(splitter.split(&out.text).len()).unwrap_or(i32::MAX),
                );
                b.finish_reason
                    .append_value(finish_reason_name(out.finish_reason));
                b.pred_answer.append_option(pred.as_deref());
                b.correct.append_value(correct.unwrap_or(false));
                b.oracle_tokens.append_option(oracle);
                b.seed.append_value(*seed);
            }
            ctx.count(
                "empty_responses",
                gen.empty_responses(),
                "responses were empty (kept)",
            );
            Ok(b.finish()?.into())
        })?;
        drop(loaded);
        if stats.rollouts > 0 {
            ctx.set_metric("responses_this_run", json!(stats.rollouts));
            ctx.set_metric("tokens_this_run", json!(stats.tokens));
            ctx.set_metric("tokens_per_s", json!(stats.tokens_per_s()));
        }

        let all = ctx.committed_table("")?;
        let per_model = PerModel::from_table(&all, &names)?;
        let summary = summarize(&per_model, base);
        ctx.set_metric(
            "summary_table",
            serde_json::to_value(&summary).unwrap_or_else(|_| json!([])),
        );
        ctx.set_summary(summary_text(&summary, base));
        ctx.commit_final(vec![("summary".into(), summary_batch(&summary)?)])?;
        report::write_report(
            ctx.node_dir(),
            &report::ReportInput {
                node: &ctx.node_id,
                summary: &summary,
                per_model: &per_model,
                base,
                max_new_tokens: p.max_new_tokens,
                samples: p.samples,
            },
        )?;
        Ok(())
    }
}

/// Rows of `table` whose `split` is `split` (all rows when `None` or when the table has
/// no `split` column), then the first `limit` of them.
pub fn select_rows(
    table: &RecordBatch,
    split: Option<&str>,
    limit: Option<usize>,
) -> Result<RecordBatch, OpError> {
    let mut out = table.clone();
    if let Some(want) = split {
        if let Some(col) = utf8_column(table, "split")? {
            let keep: arrow::array::BooleanArray = (0..col.len())
                .map(|i| Some(cell(&col, i) == Some(want)))
                .collect();
            out = arrow::compute::filter_record_batch(table, &keep)?;
            if out.num_rows() == 0 && table.num_rows() > 0 {
                let mut seen: Vec<&str> = (0..col.len()).filter_map(|i| cell(&col, i)).collect();
                seen.sort_unstable();
                seen.dedup();
                seen.truncate(8);
                return Err(OpError::msg(format!(
                    "no prompt row has `split` = `{want}` (the table's splits: {}); give the source a `split:` or set `split: all`",
                    if seen.is_empty() {
                        "none".to_string()
                    } else {
                        seen.join(", ")
                    }
                )));
            }
        }
    }
    if let Some(n) = limit {
        out = out.slice(0, n.min(out.num_rows()));
    }
    Ok(out)
}

/// The oracle text column: the one named, which must exist, or `oracle_trace` when the
/// table has it.
fn oracle_column(table: &RecordBatch, name: Option<&str>) -> Result<Option<StringArray>, OpError> {
    match name {
        Some(n) => utf8_column(table, n)?.map(Some).ok_or_else(|| {
            OpError::msg(format!(
                "the `prompts` table has no column `{n}` (`oracle`)"
            ))
        }),
        None => utf8_column(table, DEFAULT_ORACLE_COLUMN),
    }
}

/// Tokens of a row's oracle text under `model`'s tokenizer, plus one for the token that
/// ends a response (as `n_tokens` counts the eos token); `None` when the row has none.
fn oracle_length(model: &Model, oracle: Option<&StringArray>, row: usize) -> Option<i32> {
    let text = cell(oracle?, row)?;
    if text.trim().is_empty() {
        return None;
    }
    let n = model.tokenizer.encode(text, false).ok()?.len() + 1;
    Some(i32::try_from(n).unwrap_or(i32::MAX))
}

/// The index of the base model among `names`.
pub fn base_index(names: &[String], base: Option<&str>) -> Result<usize, OpError> {
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(OpError::msg(format!(
                "model `{n}` is listed twice on port `models`"
            )));
        }
    }
    match base {
        None => Ok(0),
        Some(b) => names.iter().position(|n| n == b).ok_or_else(|| {
            OpError::msg(format!(
                "`base: {b}` is not one of the models on port `models` ({})",
                names.join(", ")
            ))
        }),
    }
}

/// Where each model's work lies among the chunks: model-major, each model's prompt rows
/// padded to a whole number of chunks, so that no chunk mixes models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    n_prompts: usize,
    /// Padded rows per model (a multiple of the chunk size, at least one chunk).
    per_model: usize,
    n_models: usize,
}

impl Layout {
    pub fn new(n_prompts: usize, chunk_rows: usize, n_models: usize) -> Self {
        let chunk_rows = chunk_rows.max(1);
        Layout {
            n_prompts,
            per_model: n_prompts.div_ceil(chunk_rows).max(1) * chunk_rows,
            n_models,
        }
    }

    /// Rows of the chunk loop's (virtual) input.
    pub fn input_rows(&self) -> usize {
        self.per_model * self.n_models
    }

    /// The model and its prompt rows for a chunk's range.
    pub fn locate(&self, range: std::ops::Range<usize>) -> (usize, std::ops::Range<usize>) {
        let mi = range.start / self.per_model;
        let offset = mi * self.per_model;
        let start = (range.start - offset).min(self.n_prompts);
        let end = range.end.saturating_sub(offset).min(self.n_prompts);
        (mi, start..end.max(start))
    }
}

struct EvalBuilder {
    model: StringBuilder,
    id: StringBuilder,
    sample: Int32Builder,
    prompt: StringBuilder,
    response: StringBuilder,
    n_tokens: Int32Builder,
    n_steps: Int32Builder,
    finish_reason: StringBuilder,
    pred_answer: StringBuilder,
    correct: BooleanBuilder,
    oracle_tokens: Int32Builder,
    seed: UInt64Builder,
}

impl EvalBuilder {
    fn with_capacity(n: usize) -> Self {
        EvalBuilder {
            model: StringBuilder::with_capacity(n, n * 8),
            id: StringBuilder::with_capacity(n, n * 8),
            sample: Int32Builder::with_capacity(n),
            prompt: StringBuilder::with_capacity(n, n * 64),
            response: StringBuilder::with_capacity(n, n * 256),
            n_tokens: Int32Builder::with_capacity(n),
            n_steps: Int32Builder::with_capacity(n),
            finish_reason: StringBuilder::with_capacity(n, n * 6),
            pred_answer: StringBuilder::with_capacity(n, n * 4),
            correct: BooleanBuilder::with_capacity(n),
            oracle_tokens: Int32Builder::with_capacity(n),
            seed: UInt64Builder::with_capacity(n),
        }
    }

    fn finish(mut self) -> Result<RecordBatch, OpError> {
        let fields = vec![
            Field::new("model", DataType::Utf8, false),
            Field::new("id", DataType::Utf8, false),
            Field::new("sample", DataType::Int32, false),
            Field::new("prompt", DataType::Utf8, false),
            Field::new("response", DataType::Utf8, false),
            Field::new("n_tokens", DataType::Int32, false),
            Field::new("n_steps", DataType::Int32, false),
            Field::new("finish_reason", DataType::Utf8, false),
            Field::new("pred_answer", DataType::Utf8, true),
            Field::new("correct", DataType::Boolean, false),
            Field::new("oracle_tokens", DataType::Int32, true),
            Field::new("seed", DataType::UInt64, false),
        ];
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.model.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.sample.finish()),
            Arc::new(self.prompt.finish()),
            Arc::new(self.response.finish()),
            Arc::new(self.n_tokens.finish()),
            Arc::new(self.n_steps.finish()),
            Arc::new(self.finish_reason.finish()),
            Arc::new(self.pred_answer.finish()),
            Arc::new(self.correct.finish()),
            Arc::new(self.oracle_tokens.finish()),
            Arc::new(self.seed.finish()),
        ];
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }
}

/// The per-sample rows of one model that the summary and the report read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelRows {
    pub model: String,
    pub n_tokens: Vec<i32>,
    pub n_steps: Vec<i32>,
    pub clipped: Vec<bool>,
    pub correct: Vec<bool>,
    /// Oracle lengths of the rows that have one.
    pub oracle_tokens: Vec<i32>,
}

/// The committed rows, grouped by model in the order the models are listed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerModel(pub Vec<ModelRows>);

impl PerModel {
    /// Reads the per-sample table; rows of models not in `names` are ignored.
    pub fn from_table(table: &RecordBatch, names: &[String]) -> Result<Self, OpError> {
        let mut out: Vec<ModelRows> = names
            .iter()
            .map(|n| ModelRows {
                model: n.clone(),
                ..Default::default()
            })
            .collect();
        if table.num_rows() == 0 {
            return Ok(PerModel(out));
        }
        let index: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let col = |name: &str| {
            table
                .column_by_name(name)
                .ok_or_else(|| OpError::msg(format!("the evaluation table has no `{name}`")))
        };
        let model = utf8_column(table, "model")?
            .ok_or_else(|| OpError::msg("the evaluation table has no `model`"))?;
        let finish = utf8_column(table, "finish_reason")?
            .ok_or_else(|| OpError::msg("the evaluation table has no `finish_reason`"))?;
        let n_tokens = col("n_tokens")?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| OpError::msg("`n_tokens` is not Int32"))?;
        let n_steps = col("n_steps")?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| OpError::msg("`n_steps` is not Int32"))?;
        let oracle = col("oracle_tokens")?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| OpError::msg("`oracle_tokens` is not Int32"))?;
        let correct = col("correct")?
            .as_boolean_opt()
            .ok_or_else(|| OpError::msg("`correct` is not Boolean"))?;
        for i in 0..table.num_rows() {
            let Some(&m) = cell(&model, i).and_then(|m| index.get(m)) else {
                continue;
            };
            let r = &mut out[m];
            r.n_tokens.push(n_tokens.value(i));
            r.n_steps.push(n_steps.value(i));
            r.clipped.push(cell(&finish, i) == Some("length"));
            r.correct.push(correct.is_valid(i) && correct.value(i));
            if oracle.is_valid(i) {
                r.oracle_tokens.push(oracle.value(i));
            }
        }
        Ok(PerModel(out))
    }
}

/// One row of the `summary` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    pub model: String,
    pub n: i64,
    pub accuracy: Option<f64>,
    pub mean_tokens: Option<f64>,
    pub median_tokens: Option<i32>,
    pub p90_tokens: Option<i32>,
    pub mean_steps: Option<f64>,
    pub clipped_ratio: Option<f64>,
    pub length_reduction: Option<f64>,
    pub accuracy_delta: Option<f64>,
    pub oracle_tokens: Option<f64>,
    pub redundancy_removed: Option<f64>,
}

/// The nearest-rank `pct`-th percentile of `values` (sorted ascending inside): the value
/// of rank `ceil(pct · n / 100)` (1-based, at least 1), computed in integers so that SQL
/// can reproduce it exactly: median = rank `(n + 1) / 2`, p90 = rank `(9n + 9) / 10`.
pub fn nearest_rank(values: &[i32], pct: usize) -> Option<i32> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    let rank = (pct * n).div_ceil(100).max(1);
    v.get(rank - 1).copied()
}

fn mean<T: Copy + Into<f64>>(v: &[T]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    Some(v.iter().map(|x| (*x).into()).sum::<f64>() / v.len() as f64)
}

fn share(v: &[bool]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    Some(v.iter().filter(|b| **b).count() as f64 / v.len() as f64)
}

/// The summary rows, one per model in order; `base` indexes the baseline.
pub fn summarize(per_model: &PerModel, base: usize) -> Vec<ModelSummary> {
    let mut rows: Vec<ModelSummary> = per_model
        .0
        .iter()
        .map(|r| ModelSummary {
            model: r.model.clone(),
            n: r.n_tokens.len() as i64,
            accuracy: share(&r.correct),
            mean_tokens: mean(&r.n_tokens),
            median_tokens: nearest_rank(&r.n_tokens, 50),
            p90_tokens: nearest_rank(&r.n_tokens, 90),
            mean_steps: mean(&r.n_steps),
            clipped_ratio: share(&r.clipped),
            length_reduction: None,
            accuracy_delta: None,
            oracle_tokens: mean(&r.oracle_tokens),
            redundancy_removed: None,
        })
        .collect();
    let Some(b) = rows.get(base).cloned() else {
        return rows;
    };
    for r in &mut rows {
        r.length_reduction = match (r.mean_tokens, b.mean_tokens) {
            (Some(l), Some(lb)) if lb > 0.0 => Some(1.0 - l / lb),
            _ => None,
        };
        r.accuracy_delta = match (r.accuracy, b.accuracy) {
            (Some(a), Some(ab)) => Some(a - ab),
            _ => None,
        };
        r.redundancy_removed = match (r.mean_tokens, b.mean_tokens, b.oracle_tokens) {
            (Some(l), Some(lb), Some(ob)) if lb - ob > 0.0 => Some((lb - l) / (lb - ob)),
            _ => None,
        };
    }
    rows
}

/// The `summary` table.
pub fn summary_batch(rows: &[ModelSummary]) -> Result<RecordBatch, OpError> {
    let n = rows.len();
    let mut model = StringBuilder::with_capacity(n, n * 8);
    let mut count = Int64Builder::with_capacity(n);
    let mut f: Vec<Float64Builder> = (0..8).map(|_| Float64Builder::with_capacity(n)).collect();
    let mut median = Int32Builder::with_capacity(n);
    let mut p90 = Int32Builder::with_capacity(n);
    for r in rows {
        model.append_value(&r.model);
        count.append_value(r.n);
        median.append_option(r.median_tokens);
        p90.append_option(r.p90_tokens);
        let floats = [
            r.accuracy,
            r.mean_tokens,
            r.mean_steps,
            r.clipped_ratio,
            r.length_reduction,
            r.accuracy_delta,
            r.oracle_tokens,
            r.redundancy_removed,
        ];
        for (b, v) in f.iter_mut().zip(floats) {
            b.append_option(v);
        }
    }
    let mut fin = |i: usize| -> ArrayRef { Arc::new(f[i].finish()) };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(model.finish()),
        Arc::new(count.finish()),
        fin(0),
        fin(1),
        Arc::new(median.finish()),
        Arc::new(p90.finish()),
        fin(2),
        fin(3),
        fin(4),
        fin(5),
        fin(6),
        fin(7),
    ];
    let fields: Vec<Field> = SUMMARY_COLUMNS
        .iter()
        .zip(&cols)
        .map(|(name, c)| {
            Field::new(
                *name,
                c.data_type().clone(),
                *name != "model" && *name != "n",
            )
        })
        .collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// A few lines the CLI prints at the end of the run.
/// (The CLI prints it under the node's name.)
pub fn summary_text(rows: &[ModelSummary], base: usize) -> String {
    let mut out = String::from("accuracy and response length per model (n = responses):");
    let width = rows.iter().map(|r| r.model.len()).max().unwrap_or(0);
    for (i, r) in rows.iter().enumerate() {
        let mut line = format!(
            "\n  {:<width$}  n {:>5}  accuracy {}  mean tokens {}",
            r.model,
            r.n,
            fmt_opt(r.accuracy, 3),
            fmt_opt(r.mean_tokens, 1),
        );
        if i == base {
            line.push_str("  (base)");
        } else {
            line.push_str(&format!(
                "  length reduction {}  accuracy delta {}",
                fmt_pct(r.length_reduction),
                fmt_signed(r.accuracy_delta, 3)
            ));
            if let Some(x) = r.redundancy_removed {
                line.push_str(&format!("  redundancy removed {:.1}%", 100.0 * x));
            }
        }
        out.push_str(&line);
    }
    out
}

pub(crate) fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

pub(crate) fn fmt_signed(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:+.digits$}"))
}

pub(crate) fn fmt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{:.1}%", 100.0 * x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The integer forms below are the SQL ones the docs give, written out on purpose.
    #[allow(clippy::manual_div_ceil)]
    fn nearest_rank_percentiles() {
        assert_eq!(nearest_rank(&[], 50), None);
        assert_eq!(nearest_rank(&[7], 50), Some(7));
        assert_eq!(nearest_rank(&[7], 90), Some(7));
        // n = 4: median rank 2, p90 rank 4.
        assert_eq!(nearest_rank(&[4, 1, 3, 2], 50), Some(2));
        assert_eq!(nearest_rank(&[4, 1, 3, 2], 90), Some(4));
        // n = 10: p90 rank 9; n = 11: rank 10; n = 20: rank 18.
        let ten: Vec<i32> = (1..=10).collect();
        assert_eq!(nearest_rank(&ten, 90), Some(9));
        assert_eq!(nearest_rank(&ten, 50), Some(5));
        let eleven: Vec<i32> = (1..=11).collect();
        assert_eq!(nearest_rank(&eleven, 90), Some(10));
        assert_eq!(nearest_rank(&eleven, 50), Some(6));
        let twenty: Vec<i32> = (1..=20).collect();
        assert_eq!(nearest_rank(&twenty, 90), Some(18));
        // The integer forms the docs give for SQL agree with it.
        for n in 1..200usize {
            assert_eq!((50 * n).div_ceil(100), n.div_ceil(2));
            assert_eq!((50 * n).div_ceil(100), (n + 1) / 2);
            assert_eq!((90 * n).div_ceil(100), (9 * n + 9) / 10);
        }
    }

    fn rows(model: &str, toks: &[i32], correct: &[bool], oracle: &[i32]) -> ModelRows {
        ModelRows {
            model: model.into(),
            n_tokens: toks.to_vec(),
            n_steps: toks.iter().map(|t| t / 10).collect(),
            clipped: toks.iter().map(|t| *t >= 100).collect(),
            correct: correct.to_vec(),
            oracle_tokens: oracle.to_vec(),
        }
    }

    #[test]
    fn summary_against_the_base() {
        let pm = PerModel(vec![
            rows(
                "base",
                &[100, 100, 60, 60],
                &[true, false, false, true],
                &[20, 20, 20, 20],
            ),
            rows(
                "short",
                &[40, 40, 20, 20],
                &[true, true, false, true],
                &[20, 20, 20, 20],
            ),
            rows("empty", &[], &[], &[]),
        ]);
        let s = summarize(&pm, 0);
        assert_eq!(s[0].length_reduction, Some(0.0));
        assert_eq!(s[0].accuracy_delta, Some(0.0));
        assert_eq!(s[0].redundancy_removed, Some(0.0));
        assert_eq!(s[0].mean_tokens, Some(80.0));
        assert_eq!(s[0].median_tokens, Some(60));
        assert_eq!(s[0].p90_tokens, Some(100));
        assert_eq!(s[0].clipped_ratio, Some(0.5));
        assert_eq!(s[0].mean_steps, Some(8.0));
        assert_eq!(s[1].mean_tokens, Some(30.0));
        assert_eq!(s[1].length_reduction, Some(1.0 - 30.0 / 80.0));
        assert_eq!(s[1].accuracy_delta, Some(0.25));
        assert_eq!(s[1].oracle_tokens, Some(20.0));
        // (80 − 30) / (80 − 20)
        assert_eq!(s[1].redundancy_removed, Some(50.0 / 60.0));
        assert_eq!(s[2].n, 0);
        assert_eq!(s[2].accuracy, None);
        assert_eq!(s[2].length_reduction, None);
        // Another base.
        let s = summarize(&pm, 1);
        assert_eq!(s[1].length_reduction, Some(0.0));
        assert_eq!(s[0].accuracy_delta, Some(-0.25));
        let b = summary_batch(&s).unwrap();
        let names: Vec<String> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, SUMMARY_COLUMNS);
        assert_eq!(b.num_rows(), 3);
        let text = summary_text(&s, 1);
        assert!(text.contains("(base)"), "{text}");
        assert!(text.contains("length reduction -166.7%"), "{text}");
    }

    #[test]
    fn layout_never_mixes_models() {
        let l = Layout::new(10, 4, 3);
        assert_eq!(l.input_rows(), 36);
        let chunks: Vec<_> = (0..9)
            .map(|i| l.locate(sspo_engine::run::chunk_range(i, 4, l.input_rows())))
            .collect();
        assert_eq!(
            chunks,
            vec![
                (0, 0..4),
                (0, 4..8),
                (0, 8..10),
                (1, 0..4),
                (1, 4..8),
                (1, 8..10),
                (2, 0..4),
                (2, 4..8),
                (2, 8..10)
            ]
        );
        let empty = Layout::new(0, 4, 2);
        assert_eq!(empty.input_rows(), 8);
        assert_eq!(empty.locate(0..4), (0, 0..0));
        assert_eq!(empty.locate(4..8), (1, 0..0));
    }

    #[test]
    fn split_filter_and_limit() {
        let t = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])) as ArrayRef,
            ),
            (
                "split",
                Arc::new(StringArray::from(vec![
                    Some("test"),
                    Some("train"),
                    None,
                    Some("test"),
                ])) as ArrayRef,
            ),
        ])
        .unwrap();
        let ids = |b: &RecordBatch| -> Vec<String> {
            let c = utf8_column(b, "id").unwrap().unwrap();
            (0..c.len()).map(|i| c.value(i).to_string()).collect()
        };
        assert_eq!(
            ids(&select_rows(&t, Some("test"), None).unwrap()),
            ["a", "d"]
        );
        assert_eq!(ids(&select_rows(&t, Some("test"), Some(1)).unwrap()), ["a"]);
        assert_eq!(
            ids(&select_rows(&t, None, Some(3)).unwrap()),
            ["a", "b", "c"]
        );
        let err = select_rows(&t, Some("dev"), None).unwrap_err().to_string();
        assert!(
            err.contains("test, train") && err.contains("split: all"),
            "{err}"
        );
        let no_split = t.project(&[0]).unwrap();
        assert_eq!(
            select_rows(&no_split, Some("test"), None)
                .unwrap()
                .num_rows(),
            4
        );
    }

    #[test]
    fn params_defaults_and_null_split() {
        let p: EvaluateParams = Params::from_json(&json!({})).parse().unwrap();
        assert_eq!(p.split_filter(), Some("test"));
        assert_eq!((p.samples, p.temperature, p.chunk_rows), (1, 0.0, 8));
        assert_eq!(p.delimiter, "\n\n");
        assert_eq!(p.answer_format, AnswerFormat::Auto);
        let p: EvaluateParams =
            Params::from_json(&json!({"split": null, "answer_format": "gsm8k"}))
                .parse()
                .unwrap();
        assert_eq!(p.split_filter(), None);
        assert_eq!(p.generation().answer_format, AnswerFormat::Gsm8k);
        let p: EvaluateParams = Params::from_json(&json!({"split": "all"})).parse().unwrap();
        assert_eq!(p.split_filter(), None);
        let params = Params::from_json(&json!({"limit": 0, "delimiter": "", "split": " "}));
        let p: EvaluateParams = params.parse().unwrap();
        assert_eq!(p.check(&params).len(), 3);
        // `batch_size` does not change the rows, so it is not in the fingerprint.
        let k = EvaluateKernel { params: p };
        assert!(k.params_json().get("batch_size").is_none());
        assert!(k.params_json().get("split").is_some());
    }

    #[test]
    fn base_must_be_listed_once() {
        let names: Vec<String> = vec!["a".into(), "b".into()];
        assert_eq!(base_index(&names, None).unwrap(), 0);
        assert_eq!(base_index(&names, Some("b")).unwrap(), 1);
        let err = base_index(&names, Some("c")).unwrap_err().to_string();
        assert!(err.contains("`base: c`") && err.contains("a, b"), "{err}");
        let twice: Vec<String> = vec!["a".into(), "a".into()];
        assert!(base_index(&twice, None).is_err());
    }
    #[test]
    fn fingerprint_json_is_unchanged() {
        // Recorded from the code before the params took container defaults: a node's
        // fingerprint (and so its cache) depends on these exact bytes.
        let ctx = ConfigureContext {
            node_id: "n".into(),
            base_dir: ".".into(),
            seed: 1,
        };
        let fingerprint =
            |v: serde_json::Value| match Evaluate.configure(&Params::from_json(&v), &ctx) {
                Ok(k) => serde_json::to_string(&k.params_json()).unwrap(),
                Err(d) => panic!("{d}"),
            };
        let default = fingerprint(json!({}));
        let set = fingerprint(
            json!({"split": null, "limit": 5, "samples": 2, "temperature": 0.5, "base": "b",
            "oracle": "o", "delimiter": "\n", "batch_size": 4, "answer_format": "boxed"}),
        );
        assert_eq!(
            default,
            r#"{"answer_format":"auto","base":null,"chat_template":false,"chunk_rows":8,"delimiter":"\n\n","limit":null,"max_new_tokens":256,"oracle":null,"prompt_template":"{prompt}","samples":1,"split":"test","stop":[],"temperature":0.0,"top_k":0,"top_p":1.0}"#
        );
        assert_eq!(
            set,
            r#"{"answer_format":"boxed","base":"b","chat_template":false,"chunk_rows":8,"delimiter":"\n","limit":5,"max_new_tokens":256,"oracle":"o","prompt_template":"{prompt}","samples":2,"split":null,"stop":[],"temperature":0.5,"top_k":0,"top_p":1.0}"#
        );
    }
}
