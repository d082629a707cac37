//! What a node's input ports are bound to: another node's table, or a model
//! ([`ModelRef`], from `models:` or from a node that trains one), and the keys that name
//! the entries of a list port (`models.0`, `models.1`).
//!
//! The spec reads model sources, the plan binds ports, the run context hands the bound
//! inputs to the operator: all three share these types, so they live below them.

use std::path::PathBuf;

use crate::store::NodeDir;

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A built-in configuration, by name (e.g. `tiny-synth`).
    Builtin(String),
    /// A local HF-format directory (a `models:` path, or a node's artifact).
    Dir(PathBuf),
    /// A local GGUF file (a `models:` path ending in `.gguf`).
    Gguf(PathBuf),
    /// An inference server (a `models:` entry with `server:`), with a local tokenizer.
    Server(ServerSpec),
}

/// The protocol an inference server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerApi {
    /// vLLM's OpenAI-compatible server (`/v1/completions` with `prompt_logprobs`).
    Vllm,
    /// SGLang's native `/generate`.
    Sglang,
    /// A plain OpenAI `/v1/completions` (generation only).
    Openai,
}

impl ServerApi {
    /// The names written in a spec's `api:`.
    pub const NAMES: [&'static str; 3] = ["vllm", "sglang", "openai"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "vllm" => Some(ServerApi::Vllm),
            "sglang" => Some(ServerApi::Sglang),
            "openai" => Some(ServerApi::Openai),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ServerApi::Vllm => "vllm",
            ServerApi::Sglang => "sglang",
            ServerApi::Openai => "openai",
        }
    }
}

/// A `server:` model entry: where the server is, what it serves, and the local tokenizer
/// (and chat template) that renders and tokenises its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// `http://host:port`, without a trailing slash.
    pub url: String,
    pub api: ServerApi,
    /// The served model's name (sent with every request, checked against the server's).
    pub model: String,
    /// A HF directory with `tokenizer.json`, or a GGUF file.
    pub tokenizer: PathBuf,
    /// Seconds one request may take before it is retried.
    pub timeout_s: u64,
    /// Retries of a request after a timeout, a connection error or a 5xx answer.
    pub retries: u32,
    /// Top log-probs asked for where a probe reads a next-token distribution.
    pub top_logprobs: u32,
}

impl ModelSource {
    /// Whether a `models:` path names a GGUF file (by its extension, in any case).
    pub fn is_gguf_path(path: &std::path::Path) -> bool {
        path.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    }
}

/// A model bound to a model port.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    /// The `models:` key or the producing node's id.
    pub name: String,
    pub source: ModelSource,
    /// Extra keys of the `models:` entry (dtype, tokenizer, ...), as written.
    pub options: serde_json::Map<String, serde_json::Value>,
    /// Content identity (part of every downstream fingerprint).
    pub identity: String,
}

/// A bound input port.
#[derive(Debug, Clone)]
pub enum Input {
    Table { node: String, dir: NodeDir },
    Model(ModelRef),
}

/// The binding key of entry `index` of a list input (`models.0`), or the port itself.
pub fn binding_key(port: &str, index: Option<usize>) -> String {
    match index {
        Some(k) => format!("{port}.{k}"),
        None => port.to_string(),
    }
}

/// The port and list index a binding key stands for.
pub fn split_binding_key(key: &str) -> (&str, Option<usize>) {
    match key.rsplit_once('.') {
        Some((port, k)) => match k.parse() {
            Ok(k) => (port, Some(k)),
            Err(_) => (key, None),
        },
        None => (key, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_keys_round_trip() {
        assert_eq!(binding_key("models", Some(1)), "models.1");
        assert_eq!(split_binding_key("models.1"), ("models", Some(1)));
        assert_eq!(binding_key("judge", None), "judge");
        assert_eq!(split_binding_key("judge"), ("judge", None));
        assert_eq!(split_binding_key("a.b"), ("a.b", None));
    }
}
