//! `probe`: step-wise value probing. For every rollout with steps `s_1..s_K` and every
//! boundary `k = 0..K`, the model reads `context ⊕ s_1..s_k ⊕ suffix` and gives a value
//! `V_k ∈ [0, 1]`:
//!
//! * `kind: verbal` — the suffix asks whether the final answer is already determined;
//!   `V_k = p(yes) / (p(yes) + p(no))`, summing the single-token surface forms of yes / no.
//! * `kind: answer` — the suffix is an answer trigger ("The answer is");
//!   `V_k = exp(mean log π(a* tokens | ...))`, teacher-forced and length-normalised, plus the
//!   greedy early-exit answer and whether it is correct.
//!
//! All `K + 1` probes of a trace run in one packed forward pass: the trace tokens with a
//! causal mask, then one block per boundary that attends to the trace before its boundary
//! and causally to itself, with positions continuing from the boundary. The greedy early
//! answer extends those blocks one token per pass. [`Packing::Naive`] (one forward per
//! boundary) gives the same numbers and exists for tests and benchmarks.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, RecordBatch, StringArray,
    StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sspo_engine::{
    Columns, ConfigureContext, Diagnostics, NodeKernel, OpError, Operator, Params, Port, RunContext,
};
use sspo_model::{Attention, Model, ModelError, PackedProbes};
use tch::{Kind, Tensor};

use crate::columns::{cell, key_column, utf8_column};
use crate::generate::reference_answer;
use crate::model_port::{encode_context, load_inference_model, render_context};
pub use crate::step_tokens::{trace_tokens, TraceTokens};
use crate::tasks::AnswerFormat;

/// The `probe` operator.
pub struct Probe;

/// Output columns after the key column.
pub const PROBE_COLUMNS: [&str; 6] = [
    "step",
    "value",
    "p_yes",
    "answer_logprob",
    "early_answer",
    "early_correct",
];

/// Default verbal probe question.
pub const DEFAULT_QUESTION: &str =
    "\n\nBased on the reasoning so far, is the final answer already determined? Answer Yes or No:";

/// Default answer trigger.
pub const DEFAULT_TRIGGER: &str = "\n\nThe answer is";

/// What the probe asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// Ask in words whether the answer is settled; value = p(yes) / (p(yes) + p(no)).
    Verbal,
    /// Teacher-force the reference answer after a trigger; value = exp(mean log-prob).
    #[default]
    Answer,
}

/// Params of `probe`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeParams {
    #[serde(default)]
    pub kind: ProbeKind,
    /// Suffix of the verbal probe.
    #[serde(default = "default_question")]
    pub question: String,
    /// Surface forms of "yes" (only those that are one token are used).
    #[serde(default = "default_yes")]
    pub yes: Vec<String>,
    /// Surface forms of "no" (only those that are one token are used).
    #[serde(default = "default_no")]
    pub no: Vec<String>,
    /// Suffix of the answer probe.
    #[serde(default = "default_trigger")]
    pub trigger: String,
    /// Greedy tokens decoded after the trigger for the early-exit answer (0 = none).
    #[serde(default = "default_early_answer_tokens")]
    pub early_answer_tokens: usize,
    /// How answers are read and compared.
    #[serde(default)]
    pub answer_format: AnswerFormat,
    /// Only when the rollouts table has no `context` column: how `prompt` becomes the
    /// model input (as in `generate`).
    #[serde(default = "default_prompt_template")]
    pub prompt_template: String,
    /// Only when the rollouts table has no `context` column (as in `generate`).
    #[serde(default)]
    pub chat_template: bool,
    /// Rollouts per committed chunk.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
    /// Most tokens in one packed forward pass; a trace whose probes need more is probed
    /// in several passes (each with the trace up to its last boundary).
    #[serde(default = "default_max_packed_tokens")]
    pub max_packed_tokens: usize,
}

fn default_question() -> String {
    DEFAULT_QUESTION.into()
}
fn default_yes() -> Vec<String> {
    vec![" Yes".into(), "Yes".into(), " yes".into()]
}
fn default_no() -> Vec<String> {
    vec![" No".into(), "No".into(), " no".into()]
}
fn default_trigger() -> String {
    DEFAULT_TRIGGER.into()
}
fn default_early_answer_tokens() -> usize {
    8
}
fn default_prompt_template() -> String {
    "{prompt}".into()
}
fn default_chunk_rows() -> usize {
    16
}
fn default_max_packed_tokens() -> usize {
    4096
}

impl Default for ProbeParams {
    fn default() -> Self {
        ProbeParams {
            kind: ProbeKind::Answer,
            question: default_question(),
            yes: default_yes(),
            no: default_no(),
            trigger: default_trigger(),
            early_answer_tokens: default_early_answer_tokens(),
            answer_format: AnswerFormat::Auto,
            prompt_template: default_prompt_template(),
            chat_template: false,
            chunk_rows: default_chunk_rows(),
            max_packed_tokens: default_max_packed_tokens(),
        }
    }
}

impl ProbeParams {
    fn check(&self, params: &Params) -> Diagnostics {
        let mut d = Diagnostics::new();
        if self.kind == ProbeKind::Verbal {
            if self.yes.is_empty() {
                d.push(params.error(&["yes"], "`yes` needs at least one surface form"));
            }
            if self.no.is_empty() {
                d.push(params.error(&["no"], "`no` needs at least one surface form"));
            }
            if self.question.is_empty() {
                d.push(params.error(&["question"], "`question` must not be empty"));
            }
        }
        if !self.prompt_template.contains("{prompt}") {
            d.push(params.error(
                &["prompt_template"],
                "`prompt_template` must contain the placeholder `{prompt}`",
            ));
        }
        if self.chunk_rows == 0 {
            d.push(params.error(&["chunk_rows"], "`chunk_rows` must be at least 1"));
        }
        if self.max_packed_tokens == 0 {
            d.push(params.error(
                &["max_packed_tokens"],
                "`max_packed_tokens` must be at least 1",
            ));
        }
        d
    }
}

/// How the probes of one trace are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// All boundaries in one forward pass (split when longer than `max_tokens`).
    Packed { max_tokens: usize },
    /// One forward pass per boundary over `trace[..b] ⊕ block` (reference implementation).
    Naive,
}

/// The token-level probe configuration.
#[derive(Debug, Clone)]
pub struct ProbeSetup {
    pub kind: ProbeKind,
    /// Tokens of the question (verbal) or the trigger (answer).
    pub suffix: Vec<i64>,
    pub yes: Vec<i64>,
    pub no: Vec<i64>,
    /// Greedy early-answer budget (answer kind only).
    pub early_tokens: usize,
    pub eos: Vec<i64>,
}

impl ProbeSetup {
    /// Tokenises the suffix and the yes / no forms with `model`'s tokenizer. A verbal probe
    /// without a single-token yes or no form is an error.
    pub fn new(model: &Model, p: &ProbeParams) -> Result<Self, String> {
        let tok = &model.tokenizer;
        let enc = |s: &str| tok.encode(s, false).map_err(|e| format!("tokenizer: {e}"));
        let (suffix, yes, no) = match p.kind {
            ProbeKind::Verbal => {
                let single = |forms: &[String], what: &str| -> Result<Vec<i64>, String> {
                    let mut ids = Vec::new();
                    for f in forms {
                        if let [id] = enc(f)?.as_slice() {
                            if !ids.contains(id) {
                                ids.push(*id);
                            }
                        }
                    }
                    if ids.is_empty() {
                        return Err(format!(
                            "none of the `{what}` forms {forms:?} is a single token in this model's tokenizer; list forms that are"
                        ));
                    }
                    Ok(ids)
                };
                let yes = single(&p.yes, "yes")?;
                let no = single(&p.no, "no")?;
                if let Some(both) = yes.iter().find(|y| no.contains(y)) {
                    return Err(format!("token {both} is both a `yes` and a `no` form"));
                }
                (enc(&p.question)?, yes, no)
            }
            ProbeKind::Answer => (enc(&p.trigger)?, Vec::new(), Vec::new()),
        };
        Ok(ProbeSetup {
            kind: p.kind,
            suffix,
            yes,
            no,
            early_tokens: if p.kind == ProbeKind::Answer {
                p.early_answer_tokens
            } else {
                0
            },
            eos: model.eos_token_ids(),
        })
    }

    /// Tokens a probe block may add after its boundary (for the context-length check).
    pub fn block_budget(&self, answer_len: usize) -> usize {
        self.suffix.len() + answer_len.max(self.early_tokens)
    }
}

/// The answer continuation after a trigger: `" " + answer`, or `answer` when the trigger
/// is empty or already ends with whitespace ("The answer is" → "The answer is 24").
pub fn answer_continuation(trigger: &str, answer: &str) -> String {
    if trigger.is_empty() || trigger.ends_with(char::is_whitespace) {
        answer.trim().to_string()
    } else {
        format!(" {}", answer.trim())
    }
}

/// What one boundary's probe gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoundaryProbe {
    /// Σ p(yes forms) (verbal).
    pub p_yes: Option<f64>,
    /// Σ p(no forms) (verbal).
    pub p_no: Option<f64>,
    /// Mean log-prob of the answer tokens (answer kind, with a reference).
    pub answer_logprob: Option<f64>,
    /// Greedy tokens after the trigger (answer kind), without the eos token.
    pub early_ids: Vec<i64>,
}

impl BoundaryProbe {
    /// `V_k`, when the kind provides it.
    pub fn value(&self) -> Option<f64> {
        match (self.p_yes, self.p_no, self.answer_logprob) {
            (Some(y), Some(n), _) if y + n > 0.0 => Some(y / (y + n)),
            (_, _, Some(lp)) => Some(lp.exp().clamp(0.0, 1.0)),
            _ => None,
        }
    }
}

/// Where the early answer ends in decoded greedy text: the first newline after the answer
/// started, or the first period followed by whitespace. `complete` is false while more
/// tokens could still extend the answer.
pub fn cut_early_answer(text: &str) -> (String, bool) {
    let t = text.trim_start();
    let bytes = t.as_bytes();
    let mut end = None;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            end = Some(i);
            break;
        }
        if b == b'.' && bytes.get(i + 1).is_some_and(|c| c.is_ascii_whitespace()) {
            end = Some(i);
            break;
        }
    }
    match end {
        Some(e) => (clean(&t[..e]), true),
        None => (clean(t), false),
    }
}

fn clean(s: &str) -> String {
    let s = s.trim();
    let s = s.strip_suffix('.').unwrap_or(s);
    s.trim().to_string()
}

/// One probe block: the tokens appended after `boundary` and what to read from it.
struct Block {
    boundary: usize,
    tokens: Vec<i64>,
    /// Read points: `p` = the distribution of the token after `tokens[..p]`.
    reads: Vec<Read>,
}

#[derive(Clone)]
enum Read {
    /// Log-prob of one token.
    Target { point: usize, token: i64 },
    /// Log-probs of several tokens and the argmax.
    Dist { point: usize, tokens: Vec<i64> },
}

impl Read {
    fn point(&self) -> usize {
        match self {
            Read::Target { point, .. } | Read::Dist { point, .. } => *point,
        }
    }
    fn tokens(&self) -> Vec<i64> {
        match self {
            Read::Target { token, .. } => vec![*token],
            Read::Dist { tokens, .. } => tokens.clone(),
        }
    }
}

/// Per read: the gathered log-probs and the argmax of the distribution.
type ReadOut = (Vec<f32>, i64);

/// Runs blocks over `trace` and returns, per block, its reads.
fn run_blocks(
    model: &Model,
    trace: &[i64],
    blocks: &[Block],
    packing: Packing,
) -> Result<Vec<Vec<ReadOut>>, ModelError> {
    match packing {
        Packing::Naive => blocks
            .iter()
            .map(|b| {
                let mut seq = trace[..b.boundary].to_vec();
                seq.extend(&b.tokens);
                let rows: Vec<i64> = b
                    .reads
                    .iter()
                    .map(|r| (b.boundary + r.point()) as i64 - 1)
                    .collect();
                let n = seq.len() as i64;
                let tokens = Tensor::from_slice(&seq)
                    .f_view([1, n])?
                    .f_to_device(model.decoder.device())?;
                let hidden = model.decoder.hidden_states(&tokens, Attention::Causal)?;
                read_rows(model, &hidden, &rows, &b.reads)
            })
            .collect(),
        Packing::Packed { max_tokens } => {
            let mut out = Vec::with_capacity(blocks.len());
            for group in pack_groups(blocks, max_tokens) {
                out.extend(run_packed(model, trace, &blocks[group])?);
            }
            Ok(out)
        }
    }
}

/// Consecutive groups of blocks whose packed sequence (trace up to the group's last
/// boundary, then the blocks) fits `max_tokens`; a group has at least one block.
fn pack_groups(blocks: &[Block], max_tokens: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut max_b = 0;
    let mut sum = 0;
    for (i, b) in blocks.iter().enumerate() {
        let nb = max_b.max(b.boundary);
        let ns = sum + b.tokens.len();
        if i > start && nb + ns > max_tokens {
            groups.push(start..i);
            start = i;
            max_b = b.boundary;
            sum = b.tokens.len();
        } else {
            max_b = nb;
            sum = ns;
        }
    }
    if start < blocks.len() {
        groups.push(start..blocks.len());
    }
    groups
}

fn run_packed(
    model: &Model,
    trace: &[i64],
    blocks: &[Block],
) -> Result<Vec<Vec<ReadOut>>, ModelError> {
    let end = blocks.iter().map(|b| b.boundary).max().unwrap_or(0);
    let probes: Vec<(usize, Vec<i64>)> = blocks
        .iter()
        .map(|b| (b.boundary, b.tokens.clone()))
        .collect();
    let packed = PackedProbes::new(&trace[..end], &probes)?;
    let mut rows = Vec::new();
    let mut reads = Vec::new();
    for (b, &(start, _, boundary)) in blocks.iter().zip(&packed.blocks) {
        for r in &b.reads {
            let p = r.point();
            rows.push(if p == 0 { boundary - 1 } else { start + p - 1 } as i64);
            reads.push(r.clone());
        }
    }
    let (tokens, positions, mask) = packed.tensors()?;
    let hidden = model.decoder.hidden_states(
        &tokens.f_to_device(model.decoder.device())?,
        Attention::Custom {
            mask: &mask,
            positions: &positions,
        },
    )?;
    let flat = read_rows(model, &hidden, &rows, &reads)?;
    let mut it = flat.into_iter();
    Ok(blocks
        .iter()
        .map(|b| it.by_ref().take(b.reads.len()).collect())
        .collect())
}

/// Log-probs of each read's tokens and the argmax, at hidden rows `rows` of `hidden`
/// `[1, len, hidden]`.
fn read_rows(
    model: &Model,
    hidden: &Tensor,
    rows: &[i64],
    reads: &[Read],
) -> Result<Vec<ReadOut>, ModelError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let device = model.decoder.device();
    let idx = Tensor::from_slice(rows).f_to_device(device)?;
    let h = hidden.f_select(0, 0)?.f_index_select(0, &idx)?;
    let logits = model.decoder.logits(&h)?;
    let argmax = Vec::<i64>::try_from(&logits.f_argmax(-1, false)?.f_to_device(tch::Device::Cpu)?)?;
    let width = reads
        .iter()
        .map(|r| r.tokens().len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut gather = vec![0i64; reads.len() * width];
    for (i, r) in reads.iter().enumerate() {
        for (j, t) in r.tokens().into_iter().enumerate() {
            gather[i * width + j] = t;
        }
    }
    let g = Tensor::from_slice(&gather)
        .f_view([reads.len() as i64, width as i64])?
        .f_to_device(device)?;
    let lp = logits
        .f_log_softmax(-1, Kind::Float)?
        .f_gather(1, &g, false)?
        .f_to_device(tch::Device::Cpu)?
        .f_view([-1])?;
    let lp = Vec::<f32>::try_from(&lp)?;
    Ok(reads
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let n = r.tokens().len();
            (lp[i * width..i * width + n].to_vec(), argmax[i])
        })
        .collect())
}

/// Probes every boundary of one trace. `answer` (answer kind) is the tokenised answer
/// continuation (see [`answer_continuation`]); every boundary must be ≥ 1.
pub fn probe_trace(
    model: &Model,
    setup: &ProbeSetup,
    trace: &[i64],
    boundaries: &[usize],
    answer: Option<&[i64]>,
    packing: Packing,
) -> Result<Vec<BoundaryProbe>, ModelError> {
    if let Some(b) = boundaries.iter().find(|&&b| b == 0 || b > trace.len()) {
        return Err(ModelError::Input(format!(
            "probe boundary {b} outside 1..={}",
            trace.len()
        )));
    }
    tch::no_grad(|| probe_trace_inner(model, setup, trace, boundaries, answer, packing))
}

fn probe_trace_inner(
    model: &Model,
    setup: &ProbeSetup,
    trace: &[i64],
    boundaries: &[usize],
    answer: Option<&[i64]>,
    packing: Packing,
) -> Result<Vec<BoundaryProbe>, ModelError> {
    let s = setup.suffix.len();
    let mut out = vec![BoundaryProbe::default(); boundaries.len()];
    let answer = answer.filter(|a| !a.is_empty() && setup.kind == ProbeKind::Answer);
    // Pass 0: the values, and the first greedy token of the early answer.
    let want_early = setup.kind == ProbeKind::Answer && setup.early_tokens > 0;
    let blocks: Vec<Block> = boundaries
        .iter()
        .map(|&b| {
            let mut tokens = setup.suffix.clone();
            let mut reads = Vec::new();
            match setup.kind {
                ProbeKind::Verbal => {
                    let mut forms = setup.yes.clone();
                    forms.extend(&setup.no);
                    reads.push(Read::Dist {
                        point: s,
                        tokens: forms,
                    });
                }
                ProbeKind::Answer => {
                    if want_early {
                        reads.push(Read::Dist {
                            point: s,
                            tokens: Vec::new(),
                        });
                    }
                    if let Some(a) = answer {
                        for (j, &t) in a.iter().enumerate() {
                            reads.push(Read::Target {
                                point: s + j,
                                token: t,
                            });
                        }
                        tokens.extend(a);
                    }
                }
            }
            Block {
                boundary: b,
                tokens,
                reads,
            }
        })
        .collect();
    let results = run_blocks(model, trace, &blocks, packing)?;
    let eos: Vec<i64> = setup.eos.clone();
    // Unfinished early answers: (boundary index).
    let mut open: Vec<usize> = Vec::new();
    for (k, res) in results.into_iter().enumerate() {
        let mut it = res.into_iter();
        match setup.kind {
            ProbeKind::Verbal => {
                if let Some((lp, _)) = it.next() {
                    let ny = setup.yes.len();
                    let p = |v: &[f32]| v.iter().map(|&x| (x as f64).exp()).sum::<f64>();
                    out[k].p_yes = Some(p(&lp[..ny]));
                    out[k].p_no = Some(p(&lp[ny..]));
                }
            }
            ProbeKind::Answer => {
                if want_early {
                    if let Some((_, g)) = it.next() {
                        if !eos.contains(&g) {
                            out[k].early_ids.push(g);
                            if !early_done(model, &out[k].early_ids, setup.early_tokens)? {
                                open.push(k);
                            }
                        }
                    }
                }
                if answer.is_some() {
                    let lps: Vec<f64> = it.map(|(lp, _)| lp[0] as f64).collect();
                    if !lps.is_empty() {
                        out[k].answer_logprob = Some(lps.iter().sum::<f64>() / lps.len() as f64);
                    }
                }
            }
        }
    }
    // Greedy extension of the early answers, one token per pass.
    while !open.is_empty() {
        let blocks: Vec<Block> = open
            .iter()
            .map(|&k| {
                let mut tokens = setup.suffix.clone();
                tokens.extend(&out[k].early_ids);
                Block {
                    boundary: boundaries[k],
                    reads: vec![Read::Dist {
                        point: tokens.len(),
                        tokens: Vec::new(),
                    }],
                    tokens,
                }
            })
            .collect();
        let results = run_blocks(model, trace, &blocks, packing)?;
        let mut still = Vec::new();
        for (&k, res) in open.iter().zip(results) {
            let g = res.first().map(|r| r.1).unwrap_or(0);
            if eos.contains(&g) {
                continue;
            }
            out[k].early_ids.push(g);
            if !early_done(model, &out[k].early_ids, setup.early_tokens)? {
                still.push(k);
            }
        }
        open = still;
    }
    Ok(out)
}

fn early_done(model: &Model, ids: &[i64], budget: usize) -> Result<bool, ModelError> {
    if ids.len() >= budget {
        return Ok(true);
    }
    let text = model.tokenizer.decode(ids, true)?;
    Ok(cut_early_answer(&text).1)
}

impl Operator for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "step-wise value probing: the model's value of every step boundary of every rollout"
    }
    fn ports(&self) -> &'static [Port] {
        const PORTS: &[Port] = &[
            Port::table(
                "steps",
                "steps from `segment`: `rollout_id` (or `id`), `step`, `text`",
            ),
            Port::table(
                "rollouts",
                "rollouts from `generate`: the same key, `context` or `prompt`, and `answer`",
            ),
            Port::model(
                "model",
                "the model that probes (normally the one that generated)",
            ),
        ];
        PORTS
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: ProbeParams = params.parse()?;
        p.check(params).into_result()?;
        Ok(Arc::new(ProbeKernel { params: p }))
    }
}

/// A configured `probe` node.
pub struct ProbeKernel {
    pub params: ProbeParams,
}

impl NodeKernel for ProbeKernel {
    fn params_json(&self) -> serde_json::Value {
        // `max_packed_tokens` changes how the work is split, not the values.
        let mut v = serde_json::to_value(&self.params).unwrap_or_else(|_| json!({}));
        if let Some(m) = v.as_object_mut() {
            m.remove("max_packed_tokens");
        }
        v
    }

    fn required_columns(&self) -> Vec<(&'static str, Vec<String>)> {
        vec![
            ("steps", vec!["step".into(), "text".into()]),
            ("rollouts", vec!["prompt".into()]),
        ]
    }

    fn output_columns(&self, inputs: &BTreeMap<String, Columns>) -> Columns {
        let has = inputs
            .get("steps")
            .is_none_or(|c| c.contains("rollout_id") || c.open);
        let mut names = vec![key_column(has)];
        names.extend(PROBE_COLUMNS);
        Columns::exact(names)
    }

    fn chunk_rows(&self) -> usize {
        self.params.chunk_rows
    }

    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let steps = ctx.input_table("steps")?;
        let rollouts = ctx.input_table("rollouts")?;
        let key = key_column(steps.column_by_name("rollout_id").is_some());
        let steps_by_key = StepIndex::new(&steps, key)?;
        let input = RolloutColumns::new(&rollouts, key)?;
        let orphans = steps_by_key.orphans(&input);
        let model_ref = ctx.input_model("model")?.clone();
        let device = ctx.device.clone();
        let mut loaded: Option<(Model, ProbeSetup)> = None;
        let mut stats = (Instant::now(), 0u64, 0u64);
        ctx.run_chunks(rollouts.num_rows(), self.params.chunk_rows, |ctx, range| {
            if loaded.is_none() {
                ctx.log(&format!("loading model `{}`", model_ref.name));
                let m = load_inference_model(&model_ref, &device)?;
                let setup = ProbeSetup::new(&m, &self.params)
                    .map_err(|e| OpError::msg(format!("model `{}`: {e}", model_ref.name)))?;
                loaded = Some((m, setup));
            }
            let Some((model, setup)) = loaded.as_ref() else {
                return Err(OpError::msg("model not loaded"));
            };
            if range.start == 0 {
                ctx.count(
                    "steps_without_rollout",
                    orphans,
                    "step rows have a key that is not in the rollouts table (ignored)",
                );
            }
            let out = self.probe_chunk(model, setup, &input, &steps_by_key, key, range)?;
            ctx.count(
                "traces_too_long",
                out.too_long,
                "rollouts did not fit the model's context with their probes and were skipped",
            );
            ctx.count(
                "missing_keys",
                out.missing_keys,
                "rollout rows had no key and were skipped",
            );
            ctx.count(
                "empty_contexts",
                out.empty_contexts,
                "rollouts had an empty context and were skipped",
            );
            stats.1 += out.traces;
            stats.2 += out.batch.num_rows() as u64;
            let secs = stats.0.elapsed().as_secs_f64().max(1e-9);
            ctx.progress.set_extra(&format!(
                "{:.1} traces/s, {:.1} probes/s",
                stats.1 as f64 / secs,
                stats.2 as f64 / secs
            ));
            Ok(out.batch.into())
        })?;
        if stats.1 > 0 {
            let secs = stats.0.elapsed().as_secs_f64().max(1e-9);
            ctx.set_metric("traces_this_run", json!(stats.1));
            ctx.set_metric("probes_per_s", json!(stats.2 as f64 / secs));
        }
        Ok(())
    }
}

/// Step texts by key, in step order.
struct StepIndex {
    map: HashMap<String, Vec<(i32, String)>>,
}

impl StepIndex {
    fn new(steps: &RecordBatch, key: &str) -> Result<Self, OpError> {
        let keys = utf8_column(steps, key)?
            .ok_or_else(|| OpError::msg(format!("the `steps` table has no `{key}` column")))?;
        let text = utf8_column(steps, "text")?
            .ok_or_else(|| OpError::msg("the `steps` table has no `text` column"))?;
        let step_col = steps
            .column_by_name("step")
            .ok_or_else(|| OpError::msg("the `steps` table has no `step` column"))?;
        let step_col = arrow::compute::cast(step_col, &DataType::Int32)?;
        let step = step_col
            .as_any()
            .downcast_ref::<arrow::array::Int32Array>()
            .ok_or_else(|| OpError::msg("`step` is not an integer column"))?;
        let mut map: HashMap<String, Vec<(i32, String)>> = HashMap::new();
        for i in 0..steps.num_rows() {
            let (Some(k), Some(t)) = (cell(&keys, i), cell(&text, i)) else {
                continue;
            };
            if step.is_null(i) {
                continue;
            }
            map.entry(k.to_string())
                .or_default()
                .push((step.value(i), t.to_string()));
        }
        for v in map.values_mut() {
            v.sort_by_key(|s| s.0);
        }
        Ok(StepIndex { map })
    }

    fn get(&self, key: &str) -> &[(i32, String)] {
        self.map.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Step rows whose key is not a rollout.
    fn orphans(&self, rollouts: &RolloutColumns) -> u64 {
        let keys: std::collections::HashSet<&str> = (0..rollouts.key.len())
            .filter_map(|i| cell(&rollouts.key, i))
            .collect();
        self.map
            .iter()
            .filter(|(k, _)| !keys.contains(k.as_str()))
            .map(|(_, v)| v.len() as u64)
            .sum()
    }
}

struct RolloutColumns {
    key: StringArray,
    context: Option<StringArray>,
    prompt: StringArray,
    answer: Option<StringArray>,
}

impl RolloutColumns {
    fn new(table: &RecordBatch, key: &str) -> Result<Self, OpError> {
        Ok(RolloutColumns {
            key: utf8_column(table, key)?.ok_or_else(|| {
                OpError::msg(format!(
                    "the `rollouts` table has no `{key}` column (the key of the `steps` table)"
                ))
            })?,
            context: utf8_column(table, "context")?,
            prompt: utf8_column(table, "prompt")?
                .ok_or_else(|| OpError::msg("the `rollouts` table has no `prompt` column"))?,
            answer: utf8_column(table, "answer")?,
        })
    }
}

struct ProbeChunk {
    batch: RecordBatch,
    traces: u64,
    too_long: u64,
    missing_keys: u64,
    empty_contexts: u64,
}

impl ProbeKernel {
    fn probe_chunk(
        &self,
        model: &Model,
        setup: &ProbeSetup,
        input: &RolloutColumns,
        steps: &StepIndex,
        key: &str,
        range: Range<usize>,
    ) -> Result<ProbeChunk, OpError> {
        let p = &self.params;
        let max_pos = model.decoder.config().max_position_embeddings as usize;
        let mut b = ProbeBuilder::default();
        let (mut traces, mut too_long, mut missing_keys, mut empty_contexts) = (0, 0, 0, 0);
        for i in range {
            let Some(k) = cell(&input.key, i) else {
                missing_keys += 1;
                continue;
            };
            let context = match input.context.as_ref().and_then(|c| cell(c, i)) {
                Some(c) => c.to_string(),
                None => {
                    let prompt = cell(&input.prompt, i).unwrap_or("");
                    render_context(model, prompt, &p.prompt_template, p.chat_template)
                        .map_err(|e| OpError::msg(format!("rollout `{k}`: {e}")))?
                }
            };
            let step_rows = steps.get(k);
            let texts: Vec<&str> = step_rows.iter().map(|s| s.1.as_str()).collect();
            let tt = trace_tokens(&model.tokenizer, &context, &texts)
                .map_err(|e| OpError::msg(format!("rollout `{k}`: {e}")))?;
            if tt.context_len == 0 {
                empty_contexts += 1;
                continue;
            }
            let reference = reference_answer(
                &p.answer_format,
                input.answer.as_ref().and_then(|a| cell(a, i)),
            );
            let answer_ids = match (&reference, setup.kind) {
                (Some(a), ProbeKind::Answer) => Some(
                    encode_context(model, &answer_continuation(&p.trigger, a))
                        .map_err(|e| OpError::msg(format!("rollout `{k}`: {e}")))?,
                ),
                _ => None,
            };
            let need = tt.ids.len() + setup.block_budget(answer_ids.as_ref().map_or(0, Vec::len));
            if need > max_pos {
                too_long += 1;
                continue;
            }
            let probes = probe_trace(
                model,
                setup,
                &tt.ids,
                &tt.boundaries,
                answer_ids.as_deref(),
                Packing::Packed {
                    max_tokens: p.max_packed_tokens,
                },
            )
            .map_err(|e| OpError::msg(format!("rollout `{k}`: probing failed: {e}")))?;
            traces += 1;
            for (step, probe) in probes.iter().enumerate() {
                let early = (setup.kind == ProbeKind::Answer && setup.early_tokens > 0)
                    .then(|| -> Result<String, OpError> {
                        let text = model
                            .tokenizer
                            .decode(&probe.early_ids, true)
                            .map_err(|e| OpError::msg(e.to_string()))?;
                        Ok(cut_early_answer(&text).0)
                    })
                    .transpose()?;
                let early_correct = match (&early, &reference) {
                    (Some(e), Some(r)) => Some(early_is_correct(&p.answer_format, e, r)),
                    _ => None,
                };
                b.push(k, step as i32, probe, early.as_deref(), early_correct);
            }
        }
        Ok(ProbeChunk {
            batch: b.finish(key)?,
            traces,
            too_long,
            missing_keys,
            empty_contexts,
        })
    }
}

/// Whether an early answer matches the reference: as written, or as the answer format
/// extracts it from the early text.
pub fn early_is_correct(fmt: &AnswerFormat, early: &str, reference: &str) -> bool {
    if early.trim().is_empty() {
        return false;
    }
    fmt.verify(early, reference)
        || fmt
            .extract(early)
            .is_some_and(|e| fmt.verify(&e, reference))
}

#[derive(Default)]
struct ProbeBuilder {
    key: StringBuilder,
    step: Int32Builder,
    value: Float64Builder,
    p_yes: Float64Builder,
    answer_logprob: Float64Builder,
    early_answer: StringBuilder,
    early_correct: BooleanBuilder,
}

impl ProbeBuilder {
    fn push(
        &mut self,
        key: &str,
        step: i32,
        probe: &BoundaryProbe,
        early: Option<&str>,
        early_correct: Option<bool>,
    ) {
        self.key.append_value(key);
        self.step.append_value(step);
        self.value.append_option(probe.value());
        self.p_yes.append_option(probe.p_yes);
        self.answer_logprob.append_option(probe.answer_logprob);
        self.early_answer.append_option(early);
        self.early_correct.append_option(early_correct);
    }

    fn finish(mut self, key: &str) -> Result<RecordBatch, OpError> {
        let fields = vec![
            Field::new(key, DataType::Utf8, false),
            Field::new("step", DataType::Int32, false),
            Field::new("value", DataType::Float64, true),
            Field::new("p_yes", DataType::Float64, true),
            Field::new("answer_logprob", DataType::Float64, true),
            Field::new("early_answer", DataType::Utf8, true),
            Field::new("early_correct", DataType::Boolean, true),
        ];
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.key.finish()),
            Arc::new(self.step.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.p_yes.finish()),
            Arc::new(self.answer_logprob.finish()),
            Arc::new(self.early_answer.finish()),
            Arc::new(self.early_correct.finish()),
        ];
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_answer_cut() {
        assert_eq!(cut_early_answer(" 24. So"), ("24".into(), true));
        assert_eq!(
            cut_early_answer(" 3.5 apples"),
            ("3.5 apples".into(), false)
        );
        assert_eq!(cut_early_answer(" 3.5.\n"), ("3.5".into(), true));
        assert_eq!(cut_early_answer(" 7\nStep"), ("7".into(), true));
        assert_eq!(cut_early_answer("\n 7."), ("7".into(), false));
        assert_eq!(cut_early_answer(""), (String::new(), false));
    }

    #[test]
    fn continuation_spacing() {
        assert_eq!(answer_continuation("The answer is", "24"), " 24");
        assert_eq!(answer_continuation("Answer: ", " 24 "), "24");
        assert_eq!(answer_continuation("", "24"), "24");
    }

    #[test]
    fn values_from_probes() {
        let v = BoundaryProbe {
            p_yes: Some(0.3),
            p_no: Some(0.1),
            ..Default::default()
        };
        assert!((v.value().unwrap() - 0.75).abs() < 1e-12);
        let a = BoundaryProbe {
            answer_logprob: Some((0.5f64).ln()),
            ..Default::default()
        };
        assert!((a.value().unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(BoundaryProbe::default().value(), None);
    }

    #[test]
    fn groups_fit_the_budget() {
        let blocks: Vec<Block> = [5usize, 10, 20, 30]
            .iter()
            .map(|&b| Block {
                boundary: b,
                tokens: vec![1; 4],
                reads: Vec::new(),
            })
            .collect();
        assert_eq!(pack_groups(&blocks, 1000), vec![0..4]);
        assert_eq!(pack_groups(&blocks, 20), vec![0..2, 2..3, 3..4]);
        assert_eq!(pack_groups(&blocks, 1), vec![0..1, 1..2, 2..3, 3..4]);
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
        let fingerprint = |v: serde_json::Value| match Probe.configure(&Params::from_json(&v), &ctx)
        {
            Ok(k) => serde_json::to_string(&k.params_json()).unwrap(),
            Err(d) => panic!("{d}"),
        };
        let default = fingerprint(json!({}));
        let set = fingerprint(
            json!({"kind": "verbal", "yes": ["Y"], "no": ["N"], "question": "?",
            "early_answer_tokens": 3, "chat_template": true, "max_packed_tokens": 100, "chunk_rows": 4}),
        );
        assert_eq!(
            default,
            r#"{"answer_format":"auto","chat_template":false,"chunk_rows":16,"early_answer_tokens":8,"kind":"answer","no":[" No","No"," no"],"prompt_template":"{prompt}","question":"\n\nBased on the reasoning so far, is the final answer already determined? Answer Yes or No:","trigger":"\n\nThe answer is","yes":[" Yes","Yes"," yes"]}"#
        );
        assert_eq!(
            set,
            r#"{"answer_format":"auto","chat_template":true,"chunk_rows":4,"early_answer_tokens":3,"kind":"verbal","no":["N"],"prompt_template":"{prompt}","question":"?","trigger":"\n\nThe answer is","yes":["Y"]}"#
        );
    }
}
