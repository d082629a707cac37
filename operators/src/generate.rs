//! `generate`: samples `samples` responses per prompt from the model on the `model` port,
//! extracts and verifies each response's final answer.
//!
//! Every (prompt, sample) pair has its own seed, `row_seed(id, sample)`, and the model
//! crate samples each request with a private generator, so the rows do not depend on
//! `batch_size` or on which prompts share a chunk. The model is loaded once per run, when
//! the first chunk that still has to be computed starts (a fully cached or fully resumed
//! node never loads it).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Int32Builder, RecordBatch, StringArray, StringBuilder,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sspo_engine::{
    Columns, ConfigureContext, Diagnostics, ModelRef, NodeKernel, OpError, Operator, Params, Port,
    RunContext,
};
use sspo_model::{
    FinishReason, GenerationOutput, GenerationRequest, Generator, GeneratorConfig, Model,
    SamplingParams,
};

use crate::columns::{cell, utf8_column};
use crate::model_port::{encode_context, load_inference_model, render_context};
use crate::tasks::AnswerFormat;

/// The `generate` operator.
pub struct Generate;

/// Output columns, in order. `rollout_id` .. `seed` are the table contract; `answer` (the
/// reference answer the row was verified against) and `context` (the exact model input
/// text) extend it for `probe`, `pair` and `train`.
pub const GENERATE_COLUMNS: [&str; 12] = [
    "rollout_id",
    "id",
    "sample",
    "prompt",
    "response",
    "n_tokens",
    "finish_reason",
    "pred_answer",
    "correct",
    "seed",
    "answer",
    "context",
];

/// Params of `generate`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    /// Responses per prompt (G).
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Sampling temperature; 0 = greedy.
    #[serde(default = "default_temperature")]
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
    /// Generation stops once the response contains one of these; the response is cut
    /// before it.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Wrap the prompt in the model's chat template (one user message, generation prompt).
    #[serde(default)]
    pub chat_template: bool,
    /// Text around the prompt, with a `{prompt}` placeholder (applied before the chat
    /// template).
    #[serde(default = "default_prompt_template")]
    pub prompt_template: String,
    /// Requests decoded together (continuous batching slots).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How the final answer is written in responses.
    #[serde(default)]
    pub answer_format: AnswerFormat,
    /// Prompt rows per committed chunk.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
}

fn default_samples() -> usize {
    4
}
fn default_temperature() -> f64 {
    1.0
}
fn default_top_p() -> f64 {
    1.0
}
fn default_max_new_tokens() -> usize {
    256
}
fn default_prompt_template() -> String {
    "{prompt}".into()
}
fn default_batch_size() -> usize {
    16
}
fn default_chunk_rows() -> usize {
    8
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            samples: default_samples(),
            temperature: default_temperature(),
            top_p: default_top_p(),
            top_k: 0,
            max_new_tokens: default_max_new_tokens(),
            stop: Vec::new(),
            chat_template: false,
            prompt_template: default_prompt_template(),
            batch_size: default_batch_size(),
            answer_format: AnswerFormat::Auto,
            chunk_rows: default_chunk_rows(),
        }
    }
}

impl GenerateParams {
    /// Semantic checks, located at the offending key.
    pub fn check(&self, params: &Params) -> Diagnostics {
        let mut d = Diagnostics::new();
        let mut err = |key: &str, msg: &str| d.push(params.error(&[key], msg.to_string()));
        if self.samples == 0 {
            err("samples", "`samples` must be at least 1");
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            err("temperature", "`temperature` must be >= 0 (0 = greedy)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            err("top_p", "`top_p` must be in (0, 1]");
        }
        if self.max_new_tokens == 0 {
            err("max_new_tokens", "`max_new_tokens` must be at least 1");
        }
        if self.stop.iter().any(String::is_empty) {
            err("stop", "stop strings must not be empty");
        }
        if !self.prompt_template.contains("{prompt}") {
            err(
                "prompt_template",
                "`prompt_template` must contain the placeholder `{prompt}`",
            );
        }
        if self.batch_size == 0 {
            err("batch_size", "`batch_size` must be at least 1");
        }
        if self.chunk_rows == 0 {
            err("chunk_rows", "`chunk_rows` must be at least 1");
        }
        d
    }
}

impl Operator for Generate {
    fn name(&self) -> &'static str {
        "generate"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "samples responses per prompt from a model and verifies their final answers"
    }
    fn ports(&self) -> &'static [Port] {
        const PORTS: &[Port] = &[
            Port::table(
                "prompts",
                "rows with `id` and `prompt` (and optionally the reference `answer`)",
            ),
            Port::model("model", "the model that generates"),
        ];
        PORTS
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: GenerateParams = params.parse()?;
        p.check(params).into_result()?;
        Ok(Arc::new(GenerateKernel { params: p }))
    }
}

/// A configured `generate` node.
pub struct GenerateKernel {
    pub params: GenerateParams,
}

impl NodeKernel for GenerateKernel {
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
        vec![("prompts", vec!["id".into(), "prompt".into()])]
    }

    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::exact(GENERATE_COLUMNS)
    }

    fn chunk_rows(&self) -> usize {
        self.params.chunk_rows
    }

    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let table = ctx.input_table("prompts")?;
        let input = PromptColumns::new(&table)?;
        let model_ref = ctx.input_model("model")?.clone();
        let device = ctx.device.clone();
        let mut model: Option<Model> = None;
        let mut stats = Throughput::new();
        ctx.run_chunks(table.num_rows(), self.params.chunk_rows, |ctx, range| {
            if model.is_none() {
                ctx.log(&format!("loading model `{}`", model_ref.name));
                model = Some(load_checked(&model_ref, &device, &self.params)?);
            }
            let Some(m) = model.as_ref() else {
                return Err(OpError::msg("model not loaded"));
            };
            let gen = generate_rows(ctx, m, &self.params, &input, range, false, &mut stats)?;
            gen.skipped.record(ctx);
            let mut b = OutputBuilder::with_capacity(gen.outputs.len());
            for (r, sample, seed, out) in &gen.outputs {
                b.push(
                    &gen.rows[*r],
                    *sample,
                    *seed,
                    out,
                    &self.params.answer_format,
                );
            }
            ctx.count(
                "empty_responses",
                gen.empty_responses(),
                "responses were empty (kept)",
            );
            Ok(b.finish()?.into())
        })?;
        if stats.rollouts > 0 {
            ctx.set_metric("rollouts_this_run", json!(stats.rollouts));
            ctx.set_metric("tokens_this_run", json!(stats.tokens));
            ctx.set_metric("tokens_per_s", json!(stats.tokens_per_s()));
        }
        Ok(())
    }
}

/// Loads the model of a port and checks that `max_new_tokens` leaves room for a prompt.
pub(crate) fn load_checked(
    model_ref: &ModelRef,
    device: &str,
    params: &GenerateParams,
) -> Result<Model, OpError> {
    let m = load_inference_model(model_ref, device)?;
    let max_pos = m.decoder.config().max_position_embeddings as usize;
    if params.max_new_tokens >= max_pos {
        return Err(OpError::msg(format!(
            "max_new_tokens = {} leaves no room for a prompt: model `{}` has a context of {max_pos} tokens",
            params.max_new_tokens, model_ref.name
        )));
    }
    Ok(m)
}

/// Rollouts and tokens generated in this run, for progress and metrics.
pub(crate) struct Throughput {
    start: Instant,
    pub(crate) rollouts: u64,
    pub(crate) tokens: u64,
}

impl Throughput {
    pub(crate) fn new() -> Self {
        Throughput {
            start: Instant::now(),
            rollouts: 0,
            tokens: 0,
        }
    }
    pub(crate) fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }
    fn extra(&self) -> String {
        let s = self.start.elapsed().as_secs_f64().max(1e-9);
        format!(
            "{:.1} rollouts/s, {:.0} tok/s",
            self.rollouts as f64 / s,
            self.tokens as f64 / s
        )
    }
}

/// The input columns, as text.
pub struct PromptColumns {
    id: StringArray,
    prompt: StringArray,
    answer: Option<StringArray>,
}

impl PromptColumns {
    /// The `id`, `prompt` and (optional) `answer` columns of `table`, as text.
    pub fn new(table: &RecordBatch) -> Result<Self, OpError> {
        let need = |name: &str| {
            utf8_column(table, name)?
                .ok_or_else(|| OpError::msg(format!("the `prompts` table has no column `{name}`")))
        };
        Ok(PromptColumns {
            id: need("id")?,
            prompt: need("prompt")?,
            answer: utf8_column(table, "answer")?,
        })
    }
}

/// The reference answer of a cell, as `answer_format` reads it (null or blank: none).
pub(crate) fn reference_answer(fmt: &AnswerFormat, raw: Option<&str>) -> Option<String> {
    let raw = raw?.trim();
    if raw.is_empty() {
        return None;
    }
    fmt.extract_reference(raw).or_else(|| Some(raw.to_string()))
}

/// One prompt row ready to generate.
pub(crate) struct PromptRow<'a> {
    /// The row's index in the input table.
    pub(crate) index: usize,
    pub(crate) id: &'a str,
    pub(crate) prompt: &'a str,
    /// The reference answer, as `answer_format` reads it.
    pub(crate) answer: Option<String>,
    /// The exact model input text.
    pub(crate) context: String,
}

/// Prompt rows skipped before generation, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Skipped {
    pub(crate) empty_prompts: u64,
    pub(crate) too_long: u64,
    pub(crate) missing_ids: u64,
    /// Only when a reference answer is required (`evaluate`).
    pub(crate) missing_answers: u64,
}

impl Skipped {
    /// Adds the counts to the node's counters (and logs them).
    pub(crate) fn record(&self, ctx: &mut RunContext) {
        ctx.count(
            "empty_prompts",
            self.empty_prompts,
            "prompts were empty and skipped",
        );
        ctx.count(
            "prompts_too_long",
            self.too_long,
            "prompts did not fit the model's context with max_new_tokens and were skipped",
        );
        ctx.count(
            "missing_ids",
            self.missing_ids,
            "prompt rows had no id and were skipped",
        );
        ctx.count(
            "missing_answers",
            self.missing_answers,
            "prompt rows had no reference answer and were skipped",
        );
    }
}

/// The requests of a chunk of prompt rows, and the rows that were skipped.
pub(crate) struct Prepared<'a> {
    rows: Vec<PromptRow<'a>>,
    requests: Vec<GenerationRequest>,
    /// `(index into rows, sample, seed)` of each request.
    owners: Vec<(usize, i32, u64)>,
    skipped: Skipped,
}

/// Renders and tokenises the prompts of `range`, skipping (and counting) rows without an
/// id, with an empty prompt, whose prompt leaves fewer than `max_new_tokens` positions
/// of the model's context, or (with `require_answer`) without a reference answer;
/// `seed_of(id, sample)` gives each request's seed.
pub(crate) fn prepare<'a>(
    model: &Model,
    p: &GenerateParams,
    input: &'a PromptColumns,
    range: Range<usize>,
    require_answer: bool,
    seed_of: impl Fn(&str, i32) -> u64,
) -> Result<Prepared<'a>, OpError> {
    let max_pos = model.decoder.config().max_position_embeddings as usize;
    let max_prompt = max_pos.saturating_sub(p.max_new_tokens);
    let mut out = Prepared {
        rows: Vec::new(),
        requests: Vec::new(),
        owners: Vec::new(),
        skipped: Skipped::default(),
    };
    for i in range {
        let Some(id) = cell(&input.id, i) else {
            out.skipped.missing_ids += 1;
            continue;
        };
        let prompt = cell(&input.prompt, i).unwrap_or("");
        if prompt.trim().is_empty() {
            out.skipped.empty_prompts += 1;
            continue;
        }
        let answer = reference_answer(
            &p.answer_format,
            input.answer.as_ref().and_then(|a| cell(a, i)),
        );
        if require_answer && answer.is_none() {
            out.skipped.missing_answers += 1;
            continue;
        }
        let context = render_context(model, prompt, &p.prompt_template, p.chat_template)
            .map_err(|e| OpError::msg(format!("prompt `{id}`: {e}")))?;
        let ids = encode_context(model, &context)
            .map_err(|e| OpError::msg(format!("prompt `{id}`: {e}")))?;
        if ids.is_empty() {
            out.skipped.empty_prompts += 1;
            continue;
        }
        if ids.len() > max_prompt {
            out.skipped.too_long += 1;
            continue;
        }
        let r = out.rows.len();
        for s in 0..p.samples {
            let sample = s as i32;
            let seed = seed_of(id, sample);
            out.owners.push((r, sample, seed));
            out.requests.push(GenerationRequest {
                prompt_ids: ids.clone(),
                params: SamplingParams {
                    temperature: p.temperature,
                    top_p: p.top_p,
                    top_k: p.top_k,
                    max_new_tokens: p.max_new_tokens,
                    seed,
                    stop: p.stop.clone(),
                },
            });
        }
        out.rows.push(PromptRow {
            index: i,
            id,
            prompt,
            answer,
            context,
        });
    }
    Ok(out)
}

/// The responses to one chunk of prompt rows.
pub(crate) struct Generated<'a> {
    /// The prompt rows that were generated for.
    pub(crate) rows: Vec<PromptRow<'a>>,
    /// `(index into rows, sample, seed, output)`, in prompt order then sample order.
    pub(crate) outputs: Vec<(usize, i32, u64, GenerationOutput)>,
    pub(crate) skipped: Skipped,
}

impl Generated<'_> {
    /// Responses that are empty or whitespace.
    pub(crate) fn empty_responses(&self) -> u64 {
        self.outputs
            .iter()
            .filter(|(_, _, _, o)| o.text.trim().is_empty())
            .count() as u64
    }
}

/// Generates `p.samples` responses for every usable prompt row of `range` with `model`
/// (continuous batching, `p.batch_size` slots), each request seeded by
/// `row_seed(id, sample)`; skipped rows are counted in the result (see [`prepare`]).
/// `generate` and `evaluate` both generate through this function.
pub(crate) fn generate_rows<'a>(
    ctx: &RunContext,
    model: &Model,
    p: &GenerateParams,
    input: &'a PromptColumns,
    range: Range<usize>,
    require_answer: bool,
    stats: &mut Throughput,
) -> Result<Generated<'a>, OpError> {
    let Prepared {
        rows,
        requests,
        owners,
        skipped,
    } = prepare(model, p, input, range, require_answer, |id, sample| {
        ctx.row_seed(&[id.as_bytes(), &sample.to_le_bytes()])
    })?;
    let gen = Generator::new(
        &model.decoder,
        &model.tokenizer,
        GeneratorConfig {
            max_batch: p.batch_size,
            eos_token_ids: model.eos_token_ids(),
        },
    );
    let progress = ctx.progress;
    let mut outputs: Vec<Option<GenerationOutput>> = vec![None; requests.len()];
    gen.generate_with(&requests, |i, out| {
        stats.rollouts += 1;
        stats.tokens += out.n_tokens as u64;
        progress.set_extra(&stats.extra());
        outputs[i] = Some(out);
    })
    .map_err(|e| OpError::msg(format!("generation failed: {e}")))?;
    let outputs = owners
        .into_iter()
        .zip(outputs)
        .map(|((r, sample, seed), out)| {
            out.map(|o| (r, sample, seed, o))
                .ok_or_else(|| OpError::msg("a request never finished"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Generated {
        rows,
        outputs,
        skipped,
    })
}

/// `stop` (eos token or stop string) or `length` (`max_new_tokens` reached).
pub(crate) fn finish_reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Eos => "stop",
    }
}

/// The final answer `fmt` reads in `response`, and whether it matches `reference`
/// (`false` without a predicted answer, `None` without a reference).
pub(crate) fn judge(
    fmt: &AnswerFormat,
    response: &str,
    reference: Option<&str>,
) -> (Option<String>, Option<bool>) {
    let pred = fmt.extract(response);
    let correct = reference.map(|r| pred.as_deref().is_some_and(|p| fmt.verify(p, r)));
    (pred, correct)
}

struct OutputBuilder {
    rollout_id: StringBuilder,
    id: StringBuilder,
    sample: Int32Builder,
    prompt: StringBuilder,
    response: StringBuilder,
    n_tokens: Int32Builder,
    finish_reason: StringBuilder,
    pred_answer: StringBuilder,
    correct: BooleanBuilder,
    seed: UInt64Builder,
    answer: StringBuilder,
    context: StringBuilder,
}

impl OutputBuilder {
    fn with_capacity(n: usize) -> Self {
        OutputBuilder {
            rollout_id: StringBuilder::with_capacity(n, n * 8),
            id: StringBuilder::with_capacity(n, n * 8),
            sample: Int32Builder::with_capacity(n),
            prompt: StringBuilder::with_capacity(n, n * 64),
            response: StringBuilder::with_capacity(n, n * 256),
            n_tokens: Int32Builder::with_capacity(n),
            finish_reason: StringBuilder::with_capacity(n, n * 6),
            pred_answer: StringBuilder::with_capacity(n, n * 4),
            correct: BooleanBuilder::with_capacity(n),
            seed: UInt64Builder::with_capacity(n),
            answer: StringBuilder::with_capacity(n, n * 4),
            context: StringBuilder::with_capacity(n, n * 64),
        }
    }

    fn push(
        &mut self,
        row: &PromptRow,
        sample: i32,
        seed: u64,
        out: &GenerationOutput,
        fmt: &AnswerFormat,
    ) {
        self.rollout_id.append_value(format!("{}#{sample}", row.id));
        self.id.append_value(row.id);
        self.sample.append_value(sample);
        self.prompt.append_value(row.prompt);
        self.response.append_value(&out.text);
        self.n_tokens
            .append_value(i32::try_from(out.n_tokens).unwrap_or(i32::MAX));
        self.finish_reason
            .append_value(finish_reason_name(out.finish_reason));
        let (pred, correct) = judge(fmt, &out.text, row.answer.as_deref());
        self.pred_answer.append_option(pred.as_deref());
        self.correct.append_option(correct);
        self.seed.append_value(seed);
        self.answer.append_option(row.answer.as_deref());
        self.context.append_value(&row.context);
    }

    fn finish(mut self) -> Result<RecordBatch, OpError> {
        let fields = vec![
            Field::new("rollout_id", DataType::Utf8, false),
            Field::new("id", DataType::Utf8, false),
            Field::new("sample", DataType::Int32, false),
            Field::new("prompt", DataType::Utf8, false),
            Field::new("response", DataType::Utf8, false),
            Field::new("n_tokens", DataType::Int32, false),
            Field::new("finish_reason", DataType::Utf8, false),
            Field::new("pred_answer", DataType::Utf8, true),
            Field::new("correct", DataType::Boolean, true),
            Field::new("seed", DataType::UInt64, false),
            Field::new("answer", DataType::Utf8, true),
            Field::new("context", DataType::Utf8, false),
        ];
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.rollout_id.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.sample.finish()),
            Arc::new(self.prompt.finish()),
            Arc::new(self.response.finish()),
            Arc::new(self.n_tokens.finish()),
            Arc::new(self.finish_reason.finish()),
            Arc::new(self.pred_answer.finish()),
            Arc::new(self.correct.finish()),
            Arc::new(self.seed.finish()),
            Arc::new(self.answer.finish()),
            Arc::new(self.context.finish()),
        ];
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_port::load_model;
    use sspo_engine::ModelSource;

    fn tiny() -> Model {
        let r = ModelRef {
            name: "base".into(),
            source: ModelSource::Builtin("tiny-test".into()),
            options: Default::default(),
            identity: String::new(),
        };
        load_model(&r, "cpu").unwrap()
    }

    #[test]
    fn prepare_skips_and_counts_bad_rows() {
        let model = tiny();
        let long = "x".repeat(600);
        let input = PromptColumns {
            id: StringArray::from(vec![Some("a"), None, Some("c"), Some("d"), Some("e")]),
            prompt: StringArray::from(vec![
                Some("2+3?"),
                Some("no id"),
                Some("   "),
                Some(long.as_str()),
                None,
            ]),
            answer: Some(StringArray::from(vec![
                Some("#### 5"),
                None,
                None,
                None,
                None,
            ])),
        };
        let p = GenerateParams {
            samples: 2,
            max_new_tokens: 16,
            ..Default::default()
        };
        let prep = prepare(&model, &p, &input, 0..5, false, |id, s| {
            id.len() as u64 * 10 + s as u64
        })
        .unwrap();
        assert_eq!(prep.rows.len(), 1);
        assert_eq!(prep.rows[0].answer.as_deref(), Some("5"));
        assert_eq!(prep.requests.len(), 2);
        assert_eq!(prep.owners, vec![(0, 0, 10), (0, 1, 11)]);
        assert_eq!(
            prep.skipped,
            Skipped {
                missing_ids: 1,
                empty_prompts: 2,
                too_long: 1,
                missing_answers: 0
            }
        );
        assert_eq!(prep.requests[0].prompt_ids.len(), 4);
        // With a reference required, the two rows without one are skipped as such.
        let input = PromptColumns {
            id: StringArray::from(vec!["a", "b", "c"]),
            prompt: StringArray::from(vec!["1+1?", "2+2?", "3+3?"]),
            answer: Some(StringArray::from(vec![Some("2"), Some("  "), None])),
        };
        let prep = prepare(&model, &p, &input, 0..3, true, |_, _| 0).unwrap();
        assert_eq!(prep.rows.len(), 1);
        assert_eq!(prep.skipped.missing_answers, 2);
    }

    #[test]
    fn prompt_template_and_chat_template_shape_the_context() {
        let model = tiny();
        let input = PromptColumns {
            id: StringArray::from(vec!["a"]),
            prompt: StringArray::from(vec!["2+3?"]),
            answer: None,
        };
        let p = GenerateParams {
            samples: 1,
            prompt_template: "Q: {prompt}\nA:".into(),
            chat_template: true,
            ..Default::default()
        };
        let prep = prepare(&model, &p, &input, 0..1, false, |_, _| 0).unwrap();
        assert_eq!(
            prep.rows[0].context,
            "<|im_start|>user\nQ: 2+3?\nA:<|im_end|>\n<|im_start|>assistant\n"
        );
        let ids = &prep.requests[0].prompt_ids;
        assert_eq!(
            model.tokenizer.decode(ids, false).unwrap(),
            prep.rows[0].context
        );
        assert!(prep.rows[0].answer.is_none());
    }

    #[test]
    fn rows_without_reference_have_null_correct() {
        let row = PromptRow {
            index: 0,
            id: "a",
            prompt: "p",
            answer: None,
            context: "p".into(),
        };
        let with_ref = PromptRow {
            answer: Some("5".into()),
            ..PromptRow {
                index: 1,
                id: "b",
                prompt: "p",
                answer: None,
                context: "p".into(),
            }
        };
        let out = GenerationOutput {
            token_ids: vec![1, 2],
            text: "so the answer is 5.".into(),
            finish_reason: FinishReason::Eos,
            n_tokens: 2,
        };
        let mut b = OutputBuilder::with_capacity(2);
        b.push(&row, 0, 1, &out, &AnswerFormat::Auto);
        b.push(&with_ref, 1, 2, &out, &AnswerFormat::Auto);
        let batch = b.finish().unwrap();
        let correct = batch.column_by_name("correct").unwrap();
        let correct = correct
            .as_any()
            .downcast_ref::<arrow::array::BooleanArray>()
            .unwrap();
        assert!(correct.is_null(0));
        assert!(correct.value(1));
        let fr = utf8_column(&batch, "finish_reason").unwrap().unwrap();
        assert_eq!(fr.value(0), "stop");
        let pred = utf8_column(&batch, "pred_answer").unwrap().unwrap();
        assert_eq!(pred.value(0), "5");
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
            |v: serde_json::Value| match Generate.configure(&Params::from_json(&v), &ctx) {
                Ok(k) => serde_json::to_string(&k.params_json()).unwrap(),
                Err(d) => panic!("{d}"),
            };
        let default = fingerprint(json!({}));
        let set = fingerprint(
            json!({"samples": 2, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "max_new_tokens": 64,
            "stop": ["\n\n"], "chat_template": true, "prompt_template": "Q: {prompt}",
            "batch_size": 3, "answer_format": "gsm8k", "chunk_rows": 2}),
        );
        assert_eq!(
            default,
            r#"{"answer_format":"auto","chat_template":false,"chunk_rows":8,"max_new_tokens":256,"prompt_template":"{prompt}","samples":4,"stop":[],"temperature":1.0,"top_k":0,"top_p":1.0}"#
        );
        assert_eq!(
            set,
            r#"{"answer_format":"gsm8k","chat_template":true,"chunk_rows":2,"max_new_tokens":64,"prompt_template":"Q: {prompt}","samples":2,"stop":["\n\n"],"temperature":0.7,"top_k":5,"top_p":0.9}"#
        );
    }
}
