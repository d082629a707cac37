//! The synthetic "overthinking" task: multi-step arithmetic word problems whose training
//! traces are verbose the way real reasoning models are. Each trace holds the needed
//! computation steps, then a random number of redundant re-checks (some of which slip, and
//! the slip is only sometimes fixed; an unfixed slip carries into the final answer), then
//! the final line `The answer is N.`. The oracle trace is the needed steps and the final
//! line only, so the removable redundancy of every trace is known.
//!
//! * [`SynthConfig`] — the `synth:` parameters of a `source` node; [`generate`] turns it into
//!   [`SynthProblem`]s (deterministic in `seed`; problem `i` depends only on `seed` and `i`).
//! * [`probe_examples`] / [`sft_rows`] — optional SFT data that teaches a small model to
//!   answer the verbal probe question [`PROBE_QUESTION`].
//! * [`write_tokenizer`] — the tokenizer of the built-in `tiny-synth` model.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

mod arith;
mod probe;
mod tokenizer;

pub use probe::{probe_examples, settled_at, ProbeExample, PROBE_NO, PROBE_QUESTION, PROBE_YES};
pub use tokenizer::{
    build_tokenizer, count_tokens, tokenizer_config, tokenizer_json, vocabulary, write_tokenizer,
    BOS_TOKEN, CHAT_TEMPLATE, EOS_TOKEN, IM_START, TOKENIZER_VERSION, UNK_TOKEN,
};

use sspo_common::rng::SplitMix64;

/// Version of the generator (templates, sampling order). Bumped on any change that alters the
/// problems a given config produces; a `source` node should fold it into its own version.
pub const GENERATOR_VERSION: u32 = 1;
/// Version of the SFT corpus's columns (`synth_rows: sft`); 2 added `context` and `target`.
pub const SFT_LAYOUT_VERSION: u32 = 2;

/// Separator between the steps of a trace (the `segment` operator's default delimiter).
pub const STEP_SEPARATOR: &str = "\n\n";

/// Errors of the synthetic task.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A configuration value out of range, or a combination no problem can satisfy.
    #[error("invalid synth config: {0}")]
    InvalidConfig(String),
    /// Building or serialising the tokenizer failed.
    #[error("synthetic tokenizer: {0}")]
    Tokenizer(String),
    /// Writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which synthetic task to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SynthTask {
    /// Word problems over one running quantity (+, -, *, /, groups of items).
    #[default]
    Arithmetic,
}

/// One kind of event in a word problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// "He buys 9 more." — one step `x + b = y`.
    Add,
    /// "She gives away 5." — one step `x - b = y` (the result stays at least 1).
    Sub,
    /// "Then he doubles his apples." — one step `x * k = y`, `k` from `factor`.
    Mul,
    /// "She splits them into 3 equal piles and keeps one pile." — one step `x / k = y`, only
    /// where `k` (from `factor`) divides `x`.
    Div,
    /// "He buys 3 bags with 7 apples each." — two steps: `k * m = p`, then `x + p = y`.
    Groups,
}

/// Parameters of the synthetic task (`source: {synth: {...}}`). Every field has a default;
/// unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// Which task (only `arithmetic` so far).
    pub task: SynthTask,
    /// Number of problems.
    pub n: usize,
    /// Seed of the generator. Problem `i` depends only on `seed` and `i`, so the first `n`
    /// problems of a larger `n` are the same problems.
    pub seed: u64,
    /// Fewest needed computation steps (equations) per problem.
    pub min_ops: u32,
    /// Most needed computation steps per problem (drawn uniformly in `min_ops..=max_ops`).
    pub max_ops: u32,
    /// Kinds of events a problem may contain, drawn uniformly at each step.
    pub ops: Vec<OpKind>,
    /// Range `[lo, hi]` of the starting quantity.
    pub start: [u32; 2],
    /// Range of the amount added (`add`) or taken away (`sub`).
    pub addend: [u32; 2],
    /// Range of the factor of `mul` and the divisor of `div` (at least 2).
    pub factor: [u32; 2],
    /// Range of the number of groups in `groups` ("3 bags").
    pub group_count: [u32; 2],
    /// Range of the size of each group in `groups` ("7 apples each").
    pub group_size: [u32; 2],
    /// Largest value any intermediate or final result may take (keeps numbers small enough
    /// for a tiny model; problems that would exceed it are redrawn).
    pub max_value: u32,
    /// Most redundant re-check steps after the needed ones; each trace draws its number
    /// uniformly in `0..=max_rechecks`.
    pub max_rechecks: u32,
    /// Probability that a re-check slips: one of its equations gets a wrong result, which it
    /// carries forward to a wrong final value.
    pub recheck_error_rate: f64,
    /// Probability that a slip is fixed by the next step ("Wait, ..., not ...") and the
    /// re-checking goes on. An unfixed slip ends the trace: its final answer is the wrong
    /// value.
    pub fix_rate: f64,
    /// Also emit SFT rows that teach the verbal probe question ([`sft_rows`]). Off by default:
    /// the quickstart probes with `kind: answer`, which needs no teaching.
    pub probe_sft: bool,
    /// Probe-teaching rows per problem when `probe_sft` is on (boundaries drawn at random;
    /// 0 = every boundary of the trace).
    pub probe_per_problem: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            task: SynthTask::Arithmetic,
            n: 2000,
            seed: 0,
            min_ops: 2,
            max_ops: 4,
            ops: vec![
                OpKind::Add,
                OpKind::Sub,
                OpKind::Mul,
                OpKind::Div,
                OpKind::Groups,
            ],
            start: [5, 50],
            addend: [2, 30],
            factor: [2, 4],
            group_count: [2, 5],
            group_size: [2, 12],
            max_value: 999,
            max_rechecks: 4,
            recheck_error_rate: 0.15,
            fix_rate: 0.5,
            probe_sft: false,
            probe_per_problem: 4,
        }
    }
}

impl SynthConfig {
    /// Checks ranges and probabilities; every message names the field.
    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |m: String| Err(SynthError::InvalidConfig(m));
        if self.n == 0 {
            return bad("n must be at least 1".into());
        }
        if self.min_ops == 0 || self.min_ops > self.max_ops || self.max_ops > 16 {
            return bad(format!(
                "need 1 <= min_ops <= max_ops <= 16, got min_ops {} and max_ops {}",
                self.min_ops, self.max_ops
            ));
        }
        if self.ops.is_empty() {
            return bad("ops must name at least one of add, sub, mul, div, groups".into());
        }
        if self.ops.iter().all(|o| *o == OpKind::Groups) && self.max_ops < 2 {
            return bad("ops [groups] needs max_ops >= 2 (a group event takes two steps)".into());
        }
        for (name, r, lo) in [
            ("start", self.start, 1),
            ("addend", self.addend, 1),
            ("factor", self.factor, 2),
            ("group_count", self.group_count, 1),
            ("group_size", self.group_size, 1),
        ] {
            if r[0] < lo || r[0] > r[1] {
                return bad(format!(
                    "{name} must be [lo, hi] with {lo} <= lo <= hi, got [{}, {}]",
                    r[0], r[1]
                ));
            }
        }
        if self.max_value < self.start[1] || self.max_value > 1_000_000 {
            return bad(format!(
                "max_value must be between start's upper bound ({}) and 1000000, got {}",
                self.start[1], self.max_value
            ));
        }
        if self.max_rechecks > 32 {
            return bad(format!(
                "max_rechecks must be at most 32, got {}",
                self.max_rechecks
            ));
        }
        for (name, p) in [
            ("recheck_error_rate", self.recheck_error_rate),
            ("fix_rate", self.fix_rate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} must be in [0, 1], got {p}"));
            }
        }
        Ok(())
    }
}

/// What a trace step does (for analysis and tests; the SSPO operators never read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A computation the answer needs.
    Needed,
    /// A correct redundant re-check (repeat, check backwards, re-derivation, restatement).
    Recheck,
    /// A re-check that slips and carries a wrong value forward.
    Error,
    /// A step that fixes the preceding slip.
    Fix,
    /// The final line `The answer is N.`.
    Final,
}

impl StepKind {
    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Needed => "needed",
            StepKind::Recheck => "recheck",
            StepKind::Error => "error",
            StepKind::Fix => "fix",
            StepKind::Final => "final",
        }
    }
}

/// One paragraph of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthStep {
    /// The text (no separator).
    pub text: String,
    pub kind: StepKind,
    /// Whether, after this step, the trace holds the correct final result and nothing after
    /// it has contradicted it (the verbal probe's ground truth).
    pub settled: bool,
}

/// One generated problem with its verbose and its minimal solution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthProblem {
    /// `synth-000042`: unique in a generated set, stable across runs.
    pub id: String,
    /// The word problem.
    pub prompt: String,
    /// The correct answer (an integer, as text).
    pub answer: String,
    /// The verbose training response: the steps joined by [`STEP_SEPARATOR`].
    pub trace: String,
    /// The needed steps and the final line only.
    pub oracle_trace: String,
    /// The answer the trace's final line states (differs from `answer` when a slip was not
    /// fixed).
    pub trace_answer: String,
    /// Whether `trace_answer` equals `answer`.
    pub trace_correct: bool,
    /// Number of needed computation steps.
    pub n_needed_steps: u32,
    /// Number of redundant steps (re-checks, slips and fixes).
    pub n_redundant_steps: u32,
    /// Number of slips in the trace.
    pub n_errors: u32,
    /// Number of slips that were fixed.
    pub n_fixes: u32,
    /// Tokens of `trace` under the synthetic tokenizer (see [`count_tokens`]).
    pub trace_tokens: u32,
    /// Tokens of `oracle_trace` under the synthetic tokenizer: the minimal length.
    pub oracle_tokens: u32,
    /// The steps of `trace`, with their kinds and probe ground truth.
    pub steps: Vec<SynthStep>,
}

/// Generates `cfg.n` problems (in parallel; the result does not depend on the thread count).
pub fn generate(cfg: &SynthConfig) -> Result<Vec<SynthProblem>, SynthError> {
    cfg.validate()?;
    match cfg.task {
        SynthTask::Arithmetic => (0..cfg.n)
            .into_par_iter()
            .map(|i| problem(cfg, i))
            .collect(),
    }
}

fn problem(cfg: &SynthConfig, i: usize) -> Result<SynthProblem, SynthError> {
    let mut rng = SplitMix64::derive(cfg.seed, 0x41_52_49_54, i as u64);
    let g = arith::generate_one(cfg, &mut rng)?;
    let texts: Vec<&str> = g.steps.iter().map(|s| s.text.as_str()).collect();
    let trace = texts.join(STEP_SEPARATOR);
    let mut oracle: Vec<&str> = texts[..g.n_needed].to_vec();
    let answer = g.answer.to_string();
    let final_line = arith::FINAL.replace("{v}", &answer);
    oracle.push(&final_line);
    let oracle_trace = oracle.join(STEP_SEPARATOR);
    Ok(SynthProblem {
        id: format!("synth-{i:06}"),
        prompt: g.prompt,
        trace_correct: g.final_value == g.answer,
        trace_answer: g.final_value.to_string(),
        answer,
        n_needed_steps: g.n_needed as u32,
        n_redundant_steps: (g.steps.len() - g.n_needed - 1) as u32,
        n_errors: g.n_errors,
        n_fixes: g.n_fixes,
        trace_tokens: count_tokens(&trace) as u32,
        oracle_tokens: count_tokens(&oracle_trace) as u32,
        trace,
        oracle_trace,
        steps: g.steps,
    })
}

/// What an SFT row teaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SftKind {
    /// The verbose trace as the response.
    Trace,
    /// A trace prefix, the probe question and its answer.
    Probe,
}

/// A supervised fine-tuning row: a prompt and the response to learn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftRow {
    /// The problem's id; probe rows add `-probe-K` (K = the boundary).
    pub id: String,
    pub prompt: String,
    /// The whole assistant side: the trace, or a trace prefix, the question and its answer.
    pub response: String,
    /// The text the model reads before [`SftRow::target`], rendered with the task's prompt
    /// template ([`SFT_PROMPT_TEMPLATE`]): the prompt, or for a probe row the prompt, the
    /// trace prefix and the question. Training on `context` → `target` teaches the answer
    /// to the question without teaching the model to ask it.
    pub context: String,
    /// What a row teaches: the trace, or the probe's `" Yes"` / `" No"`.
    pub target: String,
    pub kind: SftKind,
}

/// The prompt template of the synthetic task's pipelines: the trace starts a paragraph.
pub const SFT_PROMPT_TEMPLATE: &str = "{prompt}\n\n";

/// SFT rows for `problems`: one trace row per problem, followed (when `cfg.probe_sft`) by its
/// probe-teaching rows ([`probe_examples`] with `cfg.probe_per_problem` and `cfg.seed`).
pub fn sft_rows(cfg: &SynthConfig, problems: &[SynthProblem]) -> Vec<SftRow> {
    let mut rows = Vec::new();
    for p in problems {
        let rendered = SFT_PROMPT_TEMPLATE.replace("{prompt}", &p.prompt);
        rows.push(SftRow {
            id: p.id.clone(),
            prompt: p.prompt.clone(),
            response: p.trace.clone(),
            context: rendered.clone(),
            target: p.trace.clone(),
            kind: SftKind::Trace,
        });
        if cfg.probe_sft {
            for ex in probe_examples(p, cfg.probe_per_problem, cfg.seed) {
                rows.push(SftRow {
                    id: format!("{}-probe-{}", p.id, ex.boundary),
                    prompt: p.prompt.clone(),
                    response: ex.response(),
                    context: format!("{rendered}{}", ex.context),
                    target: ex.target.clone(),
                    kind: SftKind::Probe,
                });
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_generates() {
        let cfg = SynthConfig {
            n: 50,
            ..Default::default()
        };
        let ps = generate(&cfg).unwrap();
        assert_eq!(ps.len(), 50);
        for p in &ps {
            assert!(p
                .trace
                .ends_with(&format!("The answer is {}.", p.trace_answer)));
        }
    }

    #[test]
    fn generated_problems_are_unchanged() {
        // A digest of problems and SFT rows recorded from the first implementation: the
        // shipped results depend on these exact problems.
        let cfg = SynthConfig {
            n: 300,
            seed: 11,
            probe_sft: true,
            ..Default::default()
        };
        let ps = generate(&cfg).unwrap();
        // The rows as first recorded (layout 1); `context` and `target` came later and are
        // checked below.
        #[derive(Serialize)]
        struct RowV1<'a> {
            id: &'a str,
            prompt: &'a str,
            response: &'a str,
            kind: SftKind,
        }
        let all = sft_rows(&cfg, &ps);
        let rows: Vec<RowV1> = all
            .iter()
            .map(|r| RowV1 {
                id: &r.id,
                prompt: &r.prompt,
                response: &r.response,
                kind: r.kind,
            })
            .collect();
        let mut h = blake3::Hasher::new();
        h.update(serde_json::to_string(&ps).unwrap().as_bytes());
        h.update(serde_json::to_string(&rows).unwrap().as_bytes());
        assert_eq!(
            h.finalize().to_hex().as_str(),
            "e3461739fe18ca52d82495311c84e448ff86e83db2818fab054da0b424bdb701"
        );
    }

    #[test]
    fn sft_rows_split_what_is_read_from_what_is_learned() {
        let cfg = SynthConfig {
            n: 20,
            seed: 3,
            probe_sft: true,
            ..Default::default()
        };
        let ps = generate(&cfg).unwrap();
        let rows = sft_rows(&cfg, &ps);
        let mut probes = 0;
        for r in &rows {
            let rendered = SFT_PROMPT_TEMPLATE.replace("{prompt}", &r.prompt);
            // context + target is the rendered prompt and the whole response.
            assert_eq!(
                format!("{}{}", r.context, r.target),
                format!("{rendered}{}", r.response)
            );
            match r.kind {
                SftKind::Trace => assert_eq!(r.target, r.response),
                SftKind::Probe => {
                    probes += 1;
                    // The question is read, never learned: only the answer to it is.
                    assert!(r.context.ends_with(PROBE_QUESTION), "{:?}", r.context);
                    assert!(
                        r.target == PROBE_YES || r.target == PROBE_NO,
                        "{:?}",
                        r.target
                    );
                }
            }
        }
        assert!(probes > 0);
    }
}
