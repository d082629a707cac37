//! Rollouts: the one code path by which `generate` and `evaluate` sample responses to
//! prompts and judge them.
//!
//! * [`RolloutSpec`]: the generation settings both operators take (same keys, same
//!   checks), and [`load_checked`], which refuses a model whose context `max_new_tokens`
//!   fills;
//! * [`PromptColumns`] and [`prepare`]: how prompt rows become generation requests
//!   (rendering, tokenising, skipping and counting the rows that cannot be generated for);
//! * [`generate_rows`]: continuous batching with one seed per request,
//!   `row_seed(id, sample)`, so rows depend neither on `batch_size` nor on chunking;
//! * [`judge`] and [`finish_reason_name`]: how a response's final answer and finish
//!   reason are written down.

use std::ops::Range;
use std::time::Instant;

use arrow::array::{RecordBatch, StringArray};
use sspo_engine::{Diagnostics, ModelRef, OpError, Params, RunContext};
use sspo_model::{
    FinishReason, GenerationOutput, GenerationRequest, Generator, GeneratorConfig, SamplingParams,
};

use crate::backend::{Backend, TextView};
use crate::columns::{cell, utf8_column};
use crate::model_port::render_text_context;
use crate::tasks::AnswerFormat;

/// How responses are generated for a prompt: the generation keys of `generate` and
/// `evaluate`, which have the same names (and checks) in both. Each operator's params
/// keep these keys flat (and their own defaults) and build the spec from them.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSpec {
    /// Responses per prompt (G).
    pub samples: usize,
    /// Sampling temperature; 0 = greedy.
    pub temperature: f64,
    /// Nucleus sampling mass; 1 = off.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Most tokens generated per response.
    pub max_new_tokens: usize,
    /// Generation stops once the response contains one of these; the response is cut
    /// before it.
    pub stop: Vec<String>,
    /// Wrap the prompt in the model's chat template (one user message, generation prompt).
    pub chat_template: bool,
    /// Text around the prompt, with a `{prompt}` placeholder (applied before the chat
    /// template).
    pub prompt_template: String,
    /// Requests decoded together (continuous batching slots).
    pub batch_size: usize,
    /// Requests in flight at once to an inference server (ignored for local weights).
    pub max_in_flight: usize,
    /// How the final answer is written in responses (and read from the reference).
    pub answer_format: AnswerFormat,
}

impl RolloutSpec {
    /// Semantic checks, located at the offending key of `params`.
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
        check_prompt_template(&self.prompt_template, params, &mut d);
        if self.batch_size == 0 {
            d.push(params.error(&["batch_size"], "`batch_size` must be at least 1"));
        }
        if self.max_in_flight == 0 {
            d.push(params.error(&["max_in_flight"], "`max_in_flight` must be at least 1"));
        }
        d
    }

    /// The sampling parameters of one request.
    fn sampling(&self, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_new_tokens: self.max_new_tokens,
            seed,
            stop: self.stop.clone(),
        }
    }
}

/// The check of a `prompt_template` key (every operator that renders prompts has one).
pub fn check_prompt_template(template: &str, params: &Params, d: &mut Diagnostics) {
    if !template.contains("{prompt}") {
        d.push(params.error(
            &["prompt_template"],
            "`prompt_template` must contain the placeholder `{prompt}`",
        ));
    }
}

/// Loads (or connects to) the model of a port for generation and checks that
/// `max_new_tokens` leaves room for a prompt.
pub fn load_checked(
    model_ref: &ModelRef,
    device: &str,
    max_new_tokens: usize,
) -> Result<Backend, OpError> {
    let m = Backend::load(model_ref, device)?;
    let Some(max_pos) = m.text().context_length else {
        return Ok(m);
    };
    if max_new_tokens >= max_pos {
        return Err(OpError::msg(format!(
            "max_new_tokens = {max_new_tokens} leaves no room for a prompt: model `{}` has a context of {max_pos} tokens",
            model_ref.name
        )));
    }
    Ok(m)
}

/// Rollouts and tokens generated in this run, for progress and metrics.
pub struct Throughput {
    start: Instant,
    pub rollouts: u64,
    pub tokens: u64,
}

impl Default for Throughput {
    fn default() -> Self {
        Throughput::new()
    }
}

impl Throughput {
    /// Counting from now.
    pub fn new() -> Self {
        Throughput {
            start: Instant::now(),
            rollouts: 0,
            tokens: 0,
        }
    }

    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    /// The progress bar's extra text.
    fn extra(&self) -> String {
        let s = self.start.elapsed().as_secs_f64().max(1e-9);
        format!(
            "{:.1} rollouts/s, {:.0} tok/s",
            self.rollouts as f64 / s,
            self.tokens as f64 / s
        )
    }
}

/// The prompt columns, as text.
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
pub fn reference_answer(fmt: &AnswerFormat, raw: Option<&str>) -> Option<String> {
    let raw = raw?.trim();
    if raw.is_empty() {
        return None;
    }
    fmt.extract_reference(raw).or_else(|| Some(raw.to_string()))
}

/// One prompt row ready to generate.
pub struct PromptRow<'a> {
    /// The row's index in the input table.
    pub index: usize,
    pub id: &'a str,
    pub prompt: &'a str,
    /// The reference answer, as `answer_format` reads it.
    pub answer: Option<String>,
    /// The exact model input text.
    pub context: String,
}

/// Prompt rows skipped before generation, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub empty_prompts: u64,
    pub too_long: u64,
    pub missing_ids: u64,
    /// Only when a reference answer is required (`evaluate`).
    pub missing_answers: u64,
}

impl Skipped {
    /// Adds the counts to the node's counters (and logs them).
    pub fn record(&self, ctx: &mut RunContext) {
        ctx.count(
            "empty_prompts",
            self.empty_prompts,
            "prompt{|s} {was|were} empty and skipped",
        );
        ctx.count(
            "prompts_too_long",
            self.too_long,
            "prompt{|s} did not fit the model's context with max_new_tokens and {was|were} skipped",
        );
        ctx.count(
            "missing_ids",
            self.missing_ids,
            "prompt row{|s} had no id and {was|were} skipped",
        );
        ctx.count(
            "missing_answers",
            self.missing_answers,
            "prompt row{|s} had no reference answer and {was|were} skipped",
        );
    }
}

/// The requests of a chunk of prompt rows, and the rows that were skipped.
pub struct Prepared<'a> {
    pub rows: Vec<PromptRow<'a>>,
    pub requests: Vec<GenerationRequest>,
    /// `(index into rows, sample, seed)` of each request.
    pub owners: Vec<(usize, i32, u64)>,
    pub skipped: Skipped,
}

/// Renders and tokenises the prompts of `range`, skipping (and counting) rows without an
/// id, with an empty prompt, whose prompt leaves fewer than `max_new_tokens` positions
/// of the model's context, or (with `require_answer`) without a reference answer;
/// `seed_of(id, sample)` gives each request's seed.
pub fn prepare<'a>(
    model: &TextView<'_>,
    spec: &RolloutSpec,
    input: &'a PromptColumns,
    range: Range<usize>,
    require_answer: bool,
    seed_of: impl Fn(&str, i32) -> u64,
) -> Result<Prepared<'a>, OpError> {
    let max_prompt = model.context_length.map_or(usize::MAX, |max_pos| {
        max_pos.saturating_sub(spec.max_new_tokens)
    });
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
            &spec.answer_format,
            input.answer.as_ref().and_then(|a| cell(a, i)),
        );
        if require_answer && answer.is_none() {
            out.skipped.missing_answers += 1;
            continue;
        }
        let context = render_text_context(model, prompt, &spec.prompt_template, spec.chat_template)
            .map_err(|e| OpError::context(format!("prompt `{id}`"), e))?;
        let ids = model
            .tokenizer
            .encode(&context, false)
            .map_err(|e| OpError::context(format!("prompt `{id}`"), e))?;
        if ids.is_empty() {
            out.skipped.empty_prompts += 1;
            continue;
        }
        if ids.len() > max_prompt {
            out.skipped.too_long += 1;
            continue;
        }
        let r = out.rows.len();
        for s in 0..spec.samples {
            let sample = s as i32;
            let seed = seed_of(id, sample);
            out.owners.push((r, sample, seed));
            out.requests.push(GenerationRequest {
                prompt_ids: ids.clone(),
                params: spec.sampling(seed),
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
pub struct Generated<'a> {
    /// The prompt rows that were generated for.
    pub rows: Vec<PromptRow<'a>>,
    /// `(index into rows, sample, seed, output)`, in prompt order then sample order.
    pub outputs: Vec<(usize, i32, u64, GenerationOutput)>,
    pub skipped: Skipped,
}

impl Generated<'_> {
    /// Responses that are empty or whitespace.
    pub fn empty_responses(&self) -> u64 {
        self.outputs
            .iter()
            .filter(|(_, _, _, o)| o.text.trim().is_empty())
            .count() as u64
    }
}

/// Generates `spec.samples` responses for every usable prompt row of `range` with
/// `model` (local weights: continuous batching, `spec.batch_size` slots; a server: one
/// request per response, `spec.max_in_flight` at a time), each request seeded by
/// `row_seed(id, sample)`; skipped rows are counted in the result (see [`prepare`]).
pub fn generate_rows<'a>(
    ctx: &RunContext,
    model: &Backend,
    spec: &RolloutSpec,
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
    } = prepare(
        &model.text(),
        spec,
        input,
        range,
        require_answer,
        |id, sample| ctx.row_seed(&[id.as_bytes(), &sample.to_le_bytes()]),
    )?;
    let progress = ctx.progress();
    let mut outputs: Vec<Option<GenerationOutput>> = vec![None; requests.len()];
    match model {
        Backend::Local(model) => {
            let gen = Generator::new(
                &model.decoder,
                &model.tokenizer,
                GeneratorConfig {
                    max_batch: spec.batch_size,
                    eos_token_ids: model.eos_token_ids(),
                },
            );
            gen.generate_with(&requests, |i, out| {
                stats.rollouts += 1;
                stats.tokens += out.n_tokens as u64;
                progress.set_extra(&stats.extra());
                outputs[i] = Some(out);
            })
            .map_err(|e| OpError::context("generation failed", e))?;
        }
        Backend::Server(server) => {
            let done = server
                .generate(&requests, spec.max_in_flight, |_, out| {
                    stats.rollouts += 1;
                    stats.tokens += out.n_tokens as u64;
                    progress.set_extra(&server.rates());
                })
                .map_err(|e| OpError::context("generation failed", e))?;
            outputs = done.into_iter().map(Some).collect();
        }
    }
    let outputs = owners
        .into_iter()
        .zip(outputs)
        .map(|((r, sample, seed), out)| {
            out.map(|o| (r, sample, seed, o))
                .ok_or_else(|| OpError::internal("a generation request never finished"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Generated {
        rows,
        outputs,
        skipped,
    })
}

/// `stop` (eos token or stop string) or `length` (`max_new_tokens` reached).
pub fn finish_reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Eos => "stop",
    }
}

/// The final answer `fmt` reads in `response`, and whether it matches `reference`
/// (`false` without a predicted answer, `None` without a reference).
pub fn judge(
    fmt: &AnswerFormat,
    response: &str,
    reference: Option<&str>,
) -> (Option<String>, Option<bool>) {
    let pred = fmt.extract(response);
    let correct = reference.map(|r| pred.as_deref().is_some_and(|p| fmt.verify(p, r)));
    (pred, correct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_port::load_model;
    use sspo_engine::ModelSource;
    use sspo_model::Model;

    fn tiny() -> Model {
        let r = ModelRef {
            name: "base".into(),
            source: ModelSource::Builtin("tiny-test".into()),
            options: Default::default(),
            identity: String::new(),
        };
        load_model(&r, "cpu").unwrap()
    }

    /// `generate`'s defaults.
    fn defaults() -> RolloutSpec {
        RolloutSpec {
            samples: 4,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            stop: Vec::new(),
            chat_template: false,
            prompt_template: "{prompt}".into(),
            batch_size: 16,
            max_in_flight: 16,
            answer_format: AnswerFormat::Auto,
        }
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
        let p = RolloutSpec {
            samples: 2,
            max_new_tokens: 16,
            ..defaults()
        };
        let prep = prepare(
            &TextView::of_model(&model),
            &p,
            &input,
            0..5,
            false,
            |id, s| id.len() as u64 * 10 + s as u64,
        )
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
        let prep = prepare(
            &TextView::of_model(&model),
            &p,
            &input,
            0..3,
            true,
            |_, _| 0,
        )
        .unwrap();
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
        let p = RolloutSpec {
            samples: 1,
            prompt_template: "Q: {prompt}\nA:".into(),
            chat_template: true,
            ..defaults()
        };
        let prep = prepare(
            &TextView::of_model(&model),
            &p,
            &input,
            0..1,
            false,
            |_, _| 0,
        )
        .unwrap();
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
}
