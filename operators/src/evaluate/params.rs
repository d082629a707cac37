//! The params of `evaluate`.

use serde::{Deserialize, Serialize};
use sspo_engine::{Diagnostics, Params};

use crate::rollout::RolloutSpec;
use crate::tasks::AnswerFormat;

/// Params of `evaluate`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluateParams {
    /// Keep rows whose `split` column equals this (when the column exists); `null` or
    /// `all` keeps every row.
    pub split: Option<String>,
    /// Evaluate only the first `limit` rows (after the split filter).
    pub limit: Option<usize>,
    /// Responses per prompt and model.
    pub samples: usize,
    /// Sampling temperature; 0 = greedy.
    pub temperature: f64,
    /// Nucleus sampling mass; 1 = off.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Most tokens generated per response.
    pub max_new_tokens: usize,
    /// Generation stops once the response contains one of these.
    pub stop: Vec<String>,
    /// Requests decoded together (continuous batching slots).
    pub batch_size: usize,
    /// Requests in flight at once to an inference server (ignored for local weights).
    pub max_in_flight: usize,
    /// Text around the prompt, with a `{prompt}` placeholder.
    pub prompt_template: String,
    /// Wrap the prompt in the model's chat template.
    pub chat_template: bool,
    /// How the final answer is written in responses (and read from the reference), as in
    /// `generate`.
    pub answer_format: AnswerFormat,
    /// The baseline model's name among `models`; default the first.
    pub base: Option<String>,
    /// Step delimiter for `n_steps` (as `segment`'s `delimiter`).
    pub delimiter: String,
    /// Text column holding the minimal (oracle) response; default `oracle_trace` when the
    /// input has it.
    pub oracle: Option<String>,
    /// Prompt rows per committed chunk (per model).
    pub chunk_rows: usize,
}

impl Default for EvaluateParams {
    fn default() -> Self {
        EvaluateParams {
            split: Some("test".into()),
            limit: None,
            samples: 1,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            stop: Vec::new(),
            batch_size: 16,
            max_in_flight: 16,
            prompt_template: "{prompt}".into(),
            chat_template: false,
            answer_format: AnswerFormat::Auto,
            base: None,
            delimiter: "\n\n".into(),
            oracle: None,
            chunk_rows: 8,
        }
    }
}

impl EvaluateParams {
    /// The generation settings, as `generate` takes them.
    pub fn generation(&self) -> RolloutSpec {
        RolloutSpec {
            samples: self.samples,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_new_tokens: self.max_new_tokens,
            stop: self.stop.clone(),
            chat_template: self.chat_template,
            prompt_template: self.prompt_template.clone(),
            batch_size: self.batch_size,
            max_in_flight: self.max_in_flight,
            answer_format: self.answer_format,
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
        if self.chunk_rows == 0 {
            d.push(params.error(&["chunk_rows"], "`chunk_rows` must be at least 1"));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::EvaluateKernel;
    use serde_json::json;
    use sspo_engine::NodeKernel;

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
        let k = EvaluateKernel::new(&params, p).unwrap();
        assert!(k.params_json().get("batch_size").is_none());
        assert!(k.params_json().get("split").is_some());
    }
}
