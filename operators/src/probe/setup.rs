//! What a probe appends after a boundary, as tokens of the probing model.

use sspo_engine::OpError;
use sspo_model::Model;

use crate::backend::TextView;

use super::params::{ProbeKind, ProbeKinds, ProbeParams};

/// The token-level probe configuration.
#[derive(Debug, Clone)]
pub struct ProbeSetup {
    pub kinds: ProbeKinds,
    /// Tokens of the verbal question (empty without the verbal kind).
    pub question: Vec<i64>,
    /// Tokens of the answer trigger (empty without the answer kind; may be empty with it).
    pub trigger: Vec<i64>,
    pub yes: Vec<i64>,
    pub no: Vec<i64>,
    /// Greedy early-answer budget (0 without the answer kind).
    pub early_tokens: usize,
    pub eos: Vec<i64>,
}

impl ProbeSetup {
    /// Tokenises the suffixes and the yes / no forms with `model`'s tokenizer. A verbal
    /// probe without a single-token yes or no form is an error.
    pub fn new(model: &Model, p: &ProbeParams) -> Result<Self, OpError> {
        Self::for_text(&TextView::of_model(model), p)
    }

    /// [`ProbeSetup::new`] for any model's text side (local weights or a server).
    pub fn for_text(model: &TextView<'_>, p: &ProbeParams) -> Result<Self, OpError> {
        let tok = model.tokenizer;
        let enc = |s: &str| {
            tok.encode(s, false)
                .map_err(|e| OpError::context(format!("encoding {s:?}"), e))
        };
        let (mut question, mut yes, mut no) = (Vec::new(), Vec::new(), Vec::new());
        if p.kind.has(ProbeKind::Verbal) {
            let single = |forms: &[String], what: &str| -> Result<Vec<i64>, OpError> {
                let mut ids = Vec::new();
                for f in forms {
                    if let [id] = enc(f)?.as_slice() {
                        if !ids.contains(id) {
                            ids.push(*id);
                        }
                    }
                }
                if ids.is_empty() {
                    return Err(OpError::msg(format!(
                        "none of the `{what}` forms {forms:?} is a single token in this model's tokenizer; list forms that are"
                    )));
                }
                Ok(ids)
            };
            yes = single(&p.yes, "yes")?;
            no = single(&p.no, "no")?;
            if let Some(both) = yes.iter().find(|y| no.contains(y)) {
                return Err(OpError::msg(format!(
                    "token {both} is both a `yes` and a `no` form"
                )));
            }
            question = enc(&p.question)?;
        }
        let answer = p.kind.has(ProbeKind::Answer);
        Ok(ProbeSetup {
            kinds: p.kind.clone(),
            question,
            trigger: if answer { enc(&p.trigger)? } else { Vec::new() },
            yes,
            no,
            early_tokens: if answer { p.early_answer_tokens } else { 0 },
            eos: model.eos_token_ids.clone(),
        })
    }

    pub fn has(&self, kind: ProbeKind) -> bool {
        self.kinds.has(kind)
    }

    /// The suffix of `kind`'s block: the question or the trigger.
    pub fn suffix(&self, kind: ProbeKind) -> &[i64] {
        match kind {
            ProbeKind::Verbal => &self.question,
            ProbeKind::Answer => &self.trigger,
        }
    }

    /// Tokens a probe block may add after its boundary (for the context-length check):
    /// the longest block, as every block's positions continue from the boundary.
    pub fn block_budget(&self, answer_len: usize) -> usize {
        let verbal = self.block_tokens(ProbeKind::Verbal, 0);
        let answer = self.block_tokens(ProbeKind::Answer, answer_len.max(self.early_tokens));
        verbal.max(answer)
    }

    /// Tokens of `kind`'s block at one boundary, its suffix and `answer_len` more (the
    /// answer block), or 0 when `kind` is not probed.
    pub(super) fn block_tokens(&self, kind: ProbeKind, answer_len: usize) -> usize {
        match kind {
            _ if !self.has(kind) => 0,
            ProbeKind::Verbal => self.question.len(),
            ProbeKind::Answer => self.trigger.len() + answer_len,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_spacing() {
        assert_eq!(answer_continuation("The answer is", "24"), " 24");
        assert_eq!(answer_continuation("Answer: ", " 24 "), "24");
        assert_eq!(answer_continuation("", "24"), "24");
    }
}
