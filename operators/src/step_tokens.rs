//! The one tokenisation rule for a context followed by reasoning steps, shared by
//! `segment` (token spans), `probe` (boundaries), `pair` and `train` (step spans), so
//! every operator's token positions index the same tokens.

use sspo_model::{ModelError, TextTokenizer};

/// A rollout as token ids, with where each step and each probe boundary lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceTokens {
    /// `context ⊕ s_1 ⊕ ... ⊕ s_K`.
    pub ids: Vec<i64>,
    /// Tokens of the context.
    pub context_len: usize,
    /// Token span of each step, `[start, end)`.
    pub step_spans: Vec<(usize, usize)>,
    /// Probe boundary `k = 0..K`: `context_len`, then the end of each step's text without
    /// its trailing whitespace.
    pub boundaries: Vec<usize>,
}

/// The tokenisation rule shared by `probe`, `pair` and `train`: the context is tokenised
/// alone (no special tokens added: they are in its text), then each step alone, as its
/// text without trailing whitespace followed by that whitespace. The trace is the
/// concatenation, so every step and every boundary falls on a token boundary.
pub fn trace_tokens(
    tok: &TextTokenizer,
    context: &str,
    steps: &[&str],
) -> Result<TraceTokens, ModelError> {
    let mut ids = if context.is_empty() {
        Vec::new()
    } else {
        tok.encode(context, false)?
    };
    let context_len = ids.len();
    let mut step_spans = Vec::with_capacity(steps.len());
    let mut boundaries = Vec::with_capacity(steps.len() + 1);
    boundaries.push(context_len);
    for s in steps {
        let core = s.trim_end();
        let ws = &s[core.len()..];
        let start = ids.len();
        if !core.is_empty() {
            ids.extend(tok.encode(core, false)?);
        }
        let boundary = ids.len();
        if !ws.is_empty() {
            ids.extend(tok.encode(ws, false)?);
        }
        step_spans.push((start, ids.len()));
        boundaries.push(boundary);
    }
    Ok(TraceTokens {
        ids,
        context_len,
        step_spans,
        boundaries,
    })
}
