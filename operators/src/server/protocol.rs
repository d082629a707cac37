//! What sspo asks of a server, whatever its api: a sampled completion of token ids, or the
//! log-probs a probe reads. [`super::completions`] and [`super::sglang`] turn these into
//! their requests and read their answers back.

use serde_json::Value;
use sspo_model::FinishReason;

use super::error::ServerError;

/// How one completion is sampled (the local generator's settings, one request).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f64,
    /// 1 = off.
    pub top_p: f64,
    /// 0 = off.
    pub top_k: usize,
    pub max_tokens: usize,
    /// The row's seed; `None` for greedy requests.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

impl Sampling {
    /// Greedy decoding of up to `max_tokens` tokens, no stop strings.
    pub fn greedy(max_tokens: usize) -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            max_tokens,
            seed: None,
            stop: Vec::new(),
        }
    }

    /// The seed as servers take it: vLLM validates a signed 64-bit integer, so the row
    /// seed is sent with its top bit cleared.
    pub fn wire_seed(&self) -> Option<i64> {
        self.seed.map(|s| (s & i64::MAX as u64) as i64)
    }
}

/// A prompt as a request carries it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Prompt<'a> {
    /// Token ids, as rendered and tokenised here: what every api sends first.
    Ids(&'a [i64]),
    /// The ids decoded back to text, for `api: openai` servers that take only text
    /// (llama-cpp-python); the server tokenises it again.
    Text(&'a str),
}

impl Prompt<'_> {
    pub fn to_json(self) -> Value {
        match self {
            Prompt::Ids(ids) => serde_json::json!(ids),
            Prompt::Text(text) => serde_json::json!(text),
        }
    }
}

/// One completion as the server returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Special tokens removed, cut before a stop string (as the server decodes it).
    pub text: String,
    /// Tokens generated (the server's count).
    pub n_tokens: usize,
    pub finish: FinishReason,
    /// The generated ids, when asked for.
    pub token_ids: Option<Vec<i64>>,
}

/// What a probe reads from one sequence `ids`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreQuery {
    pub ids: Vec<i64>,
    /// Teacher-forced reads: the log-prob of `ids[p]` given `ids[..p]`, for every
    /// `p` in `forced_from..ids.len()` (none when it equals `ids.len()`).
    pub forced_from: usize,
    /// Next-token reads after the whole of `ids`: the log-probs of these tokens, and the
    /// argmax.
    pub next: Option<Vec<i64>>,
}

/// The answer to a [`ScoreQuery`].
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub forced: Vec<f32>,
    pub next: Option<(Vec<f32>, i64)>,
}

/// Field access on a JSON answer that names the url and what was missing.
pub struct Answer<'a> {
    pub url: &'a str,
    pub value: &'a Value,
}

impl<'a> Answer<'a> {
    pub fn at(&self, pointer: &str) -> Result<&'a Value, ServerError> {
        self.value
            .pointer(pointer)
            .ok_or_else(|| self.bad(&format!("a field `{pointer}`")))
    }

    pub fn str_at(&self, pointer: &str) -> Result<&'a str, ServerError> {
        self.at(pointer)?
            .as_str()
            .ok_or_else(|| self.bad(&format!("`{pointer}` as a string")))
    }

    pub fn usize_at(&self, pointer: &str) -> Result<usize, ServerError> {
        self.at(pointer)?
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| self.bad(&format!("`{pointer}` as a non-negative integer")))
    }

    pub fn array_at(&self, pointer: &str) -> Result<&'a Vec<Value>, ServerError> {
        self.at(pointer)?
            .as_array()
            .ok_or_else(|| self.bad(&format!("`{pointer}` as a list")))
    }

    pub fn bad(&self, expected: &str) -> ServerError {
        ServerError::BadAnswer {
            url: self.url.to_string(),
            expected: expected.to_string(),
            got: super::error::snippet(&self.value.to_string(), 300),
        }
    }
}

/// `stop` and `length` as servers name them (`length` = the token budget was reached;
/// any other reason, eos or a stop string, is `stop`).
pub fn finish_reason(name: &str) -> FinishReason {
    match name {
        "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}
