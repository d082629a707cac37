//! What a probe appends after a boundary, as tokens of the probing model.

use sspo_engine::OpError;
use sspo_model::Model;

use super::params::{ProbeKind, ProbeParams};

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
    pub fn new(model: &Model, p: &ProbeParams) -> Result<Self, OpError> {
        let tok = &model.tokenizer;
        let enc = |s: &str| {
            tok.encode(s, false)
                .map_err(|e| OpError::context(format!("encoding {s:?}"), e))
        };
        let (suffix, yes, no) = match p.kind {
            ProbeKind::Verbal => {
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
                let yes = single(&p.yes, "yes")?;
                let no = single(&p.no, "no")?;
                if let Some(both) = yes.iter().find(|y| no.contains(y)) {
                    return Err(OpError::msg(format!(
                        "token {both} is both a `yes` and a `no` form"
                    )));
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
