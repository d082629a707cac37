//! Inference servers as model backends (`models: {base: {server: {url, api, model,
//! tokenizer}}}`): vLLM and OpenAI-compatible `/v1/completions` ([`completions`]), SGLang's
//! `/generate` ([`sglang`]).
//!
//! The tokenizer and chat template are local ([`sspo_model::ModelText`]): a prompt is
//! rendered and tokenised here exactly as for local weights, and token ids are sent, so a
//! row records the same context either way. Requests run on a bounded number of threads
//! ([`pool`]), with retries ([`http`]); [`served`] checks what the server serves before
//! the first request.

pub mod completions;
pub mod error;
pub mod http;
pub mod pool;
pub mod protocol;
pub mod served;
pub mod sglang;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sspo_engine::{ServerApi, ServerSpec};
use sspo_model::{GenerationOutput, GenerationRequest, ModelText};

pub use error::ServerError;
use http::HttpClient;
pub use protocol::{Completion, Prompt, Sampling, ScoreQuery, Scored};

/// A connected server and the local text side of its model.
pub struct ServerModel {
    spec: ServerSpec,
    http: HttpClient,
    pub text: ModelText,
    /// The server's context length, else the tokenizer directory's.
    pub context_length: Option<usize>,
    rates: Rates,
    /// `api: openai` to a server that refuses token-id prompts: prompts go as text.
    text_prompts: bool,
}

impl ServerModel {
    /// Reads the tokenizer and asks the server what it serves (an error when it serves
    /// another model than `spec.model`).
    pub fn connect(spec: &ServerSpec) -> Result<Self, String> {
        let path = &spec.tokenizer;
        let text = if sspo_engine::ModelSource::is_gguf_path(path) {
            ModelText::from_gguf(path)
        } else {
            ModelText::from_dir(path)
        }
        .map_err(|e| format!("tokenizer {}: {e}", path.display()))?;
        let http = HttpClient::new(&spec.url, Duration::from_secs(spec.timeout_s), spec.retries);
        let served =
            served::check_served(&http, spec.api, &spec.model).map_err(|e| e.to_string())?;
        // Asked once per connection: one 1-token request.
        let text_prompts = spec.api == ServerApi::Openai
            && !completions::takes_id_prompts(
                &http,
                &spec.model,
                text.eos_token_ids.first().copied().unwrap_or(0),
            );
        Ok(ServerModel {
            context_length: served.context_length.or(text.context_length),
            spec: spec.clone(),
            http,
            text,
            rates: Rates::new(),
            text_prompts,
        })
    }

    pub fn api(&self) -> ServerApi {
        self.spec.api
    }

    /// One sampled completion of `prompt`.
    pub fn complete(
        &self,
        prompt: &[i64],
        s: &Sampling,
        with_ids: bool,
    ) -> Result<Completion, ServerError> {
        let c = match self.spec.api {
            ServerApi::Sglang => sglang::complete(&self.http, prompt, s, with_ids),
            ServerApi::Vllm => completions::complete(
                &self.http,
                self.spec.api,
                &self.spec.model,
                Prompt::Ids(prompt),
                s,
                with_ids,
            ),
            ServerApi::Openai if with_ids => Err(ServerError::Unsupported {
                api: "openai",
                what: "return generated token ids",
                help: "use api vllm or sglang for probes",
            }),
            ServerApi::Openai => self.complete_openai(prompt, s),
        }?;
        self.rates.add(1, c.n_tokens as u64);
        Ok(c)
    }

    /// A plain OpenAI server: the token ids, or, to a server that takes only text, the ids
    /// decoded back to text (special tokens kept), which the server tokenises again.
    fn complete_openai(&self, prompt: &[i64], s: &Sampling) -> Result<Completion, ServerError> {
        let send = |p: Prompt| {
            completions::complete(&self.http, ServerApi::Openai, &self.spec.model, p, s, false)
        };
        if !self.text_prompts {
            return send(Prompt::Ids(prompt));
        }
        let text = self
            .text
            .tokenizer
            .decode(prompt, false)
            .map_err(|e| ServerError::Prompt(e.to_string()))?;
        send(Prompt::Text(&text))
    }

    /// The log-probs of one probe sequence.
    pub fn score(&self, q: &ScoreQuery) -> Result<Scored, ServerError> {
        let scored = match self.spec.api {
            ServerApi::Vllm => {
                completions::score(&self.http, &self.spec.model, q, self.spec.top_logprobs)
            }
            ServerApi::Sglang => sglang::score(&self.http, q),
            ServerApi::Openai => Err(ServerError::Unsupported {
                api: "openai",
                what: "give a probe's log-probs",
                help: "use api vllm (prompt_logprobs) or sglang for probes",
            }),
        }?;
        self.rates.add(1, q.ids.len() as u64);
        Ok(scored)
    }

    /// Whether the api gives what `probe` reads.
    pub fn can_probe(&self) -> Result<(), ServerError> {
        match self.spec.api {
            ServerApi::Vllm | ServerApi::Sglang => Ok(()),
            ServerApi::Openai => Err(ServerError::Unsupported {
                api: "openai",
                what: "give a probe's log-probs",
                help: "use api vllm (prompt_logprobs) or sglang for probes",
            }),
        }
    }

    /// Generates every request with at most `max_in_flight` in flight; `on_done(i, out)`
    /// as each finishes. The request's seed is sent with it.
    pub fn generate(
        &self,
        requests: &[GenerationRequest],
        max_in_flight: usize,
        mut on_done: impl FnMut(usize, &GenerationOutput),
    ) -> Result<Vec<GenerationOutput>, ServerError> {
        pool::run_bounded(
            requests.len(),
            max_in_flight,
            |i| {
                let r = &requests[i];
                let p = &r.params;
                let s = Sampling {
                    temperature: p.temperature,
                    top_p: p.top_p,
                    top_k: p.top_k,
                    max_tokens: p.max_new_tokens,
                    seed: Some(p.seed),
                    stop: p.stop.clone(),
                };
                let c = self.complete(&r.prompt_ids, &s, false)?;
                Ok(GenerationOutput {
                    token_ids: Vec::new(),
                    text: c.text,
                    finish_reason: c.finish,
                    n_tokens: c.n_tokens,
                })
            },
            |i, out| on_done(i, out),
        )
    }

    /// Requests and tokens per second since the model was connected, for progress.
    pub fn rates(&self) -> String {
        self.rates.text()
    }
}

/// Requests and tokens sent or generated since a start.
struct Rates {
    start: Instant,
    requests: AtomicU64,
    tokens: AtomicU64,
}

impl Rates {
    fn new() -> Self {
        Rates {
            start: Instant::now(),
            requests: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
        }
    }

    fn add(&self, requests: u64, tokens: u64) {
        self.requests.fetch_add(requests, Ordering::Relaxed);
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    fn text(&self) -> String {
        let s = self.start.elapsed().as_secs_f64().max(1e-9);
        format!(
            "{:.1} requests/s, {:.0} tok/s",
            self.requests.load(Ordering::Relaxed) as f64 / s,
            self.tokens.load(Ordering::Relaxed) as f64 / s
        )
    }
}
