//! The params of `probe`.

use serde::{Deserialize, Serialize};
use sspo_engine::{Diagnostics, Params};

pub use super::kinds::ProbeKinds;

use crate::rollout::check_prompt_template;
use crate::tasks::AnswerFormat;

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
#[serde(default, deny_unknown_fields)]
pub struct ProbeParams {
    /// What the probe asks: one kind, or a list of kinds probed in one pass (the first
    /// gives `value`).
    pub kind: ProbeKinds,
    /// Suffix of the verbal probe.
    pub question: String,
    /// Surface forms of "yes" (only those that are one token are used).
    pub yes: Vec<String>,
    /// Surface forms of "no" (only those that are one token are used).
    pub no: Vec<String>,
    /// Suffix of the answer probe.
    pub trigger: String,
    /// Greedy tokens decoded after the trigger for the early-exit answer (0 = none); only
    /// when the kinds include `answer`.
    pub early_answer_tokens: usize,
    /// How answers are read and compared.
    pub answer_format: AnswerFormat,
    /// Only when the rollouts table has no `context` column: how `prompt` becomes the
    /// model input (as in `generate`).
    pub prompt_template: String,
    /// Only when the rollouts table has no `context` column (as in `generate`).
    pub chat_template: bool,
    /// Rollouts per committed chunk.
    pub chunk_rows: usize,
    /// Most cache columns in one batch of traces, summed over its rows (a row = a trace
    /// to its last boundary, its blocks and room for the early answers): bounds the
    /// probe's memory. A trace that needs more is probed alone.
    #[serde(alias = "max_packed_tokens")]
    pub max_batch_tokens: usize,
    /// Requests in flight at once to an inference server (ignored for local weights).
    pub max_in_flight: usize,
}

impl Default for ProbeParams {
    fn default() -> Self {
        ProbeParams {
            kind: ProbeKind::Answer.into(),
            question: DEFAULT_QUESTION.into(),
            yes: vec![" Yes".into(), "Yes".into(), " yes".into()],
            no: vec![" No".into(), "No".into(), " no".into()],
            trigger: DEFAULT_TRIGGER.into(),
            early_answer_tokens: 8,
            answer_format: AnswerFormat::Auto,
            prompt_template: "{prompt}".into(),
            chat_template: false,
            chunk_rows: 16,
            max_batch_tokens: 8192,
            max_in_flight: 16,
        }
    }
}

impl ProbeParams {
    /// Semantic checks, located at the offending key.
    pub fn check(&self, params: &Params) -> Diagnostics {
        let mut d = self.kind.check(params);
        if self.kind.has(ProbeKind::Verbal) {
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
        check_prompt_template(&self.prompt_template, params, &mut d);
        if self.chunk_rows == 0 {
            d.push(params.error(&["chunk_rows"], "`chunk_rows` must be at least 1"));
        }
        if self.max_in_flight == 0 {
            d.push(params.error(&["max_in_flight"], "`max_in_flight` must be at least 1"));
        }
        if self.max_batch_tokens == 0 {
            d.push(params.error(
                &["max_batch_tokens"],
                "`max_batch_tokens` must be at least 1",
            ));
        }
        d
    }
}
