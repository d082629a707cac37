//! The `server:` value of a `models:` entry: an inference server and the local tokenizer
//! that renders and tokenises what is sent to it. Every problem is a located diagnostic;
//! nothing here reaches the network (the served model is checked when a node first asks
//! the server, see `sspo_operators::server`).

use std::path::Path;

use crate::binding::{ModelSource, ServerApi, ServerSpec};
use crate::diag::{Diagnostic, Diagnostics};
use crate::spec::{check_keys, expect_str, resolve};
use crate::yaml::{Node, Value};

pub const SERVER_KEYS: &[&str] = &[
    "url",
    "api",
    "model",
    "tokenizer",
    "timeout_s",
    "retries",
    "top_logprobs",
];

const EXAMPLE: &str = "e.g. {server: {url: \"http://127.0.0.1:8000\", api: vllm, model: Qwen2.5-7B-Instruct, tokenizer: /models/Qwen2.5-7B-Instruct}}";

/// Defaults of the optional keys.
pub const DEFAULT_TIMEOUT_S: u64 = 600;
pub const DEFAULT_RETRIES: u32 = 5;
/// vLLM's default `--max-logprobs`.
pub const DEFAULT_TOP_LOGPROBS: u32 = 20;

/// Reads the `server:` value `v` of model `name` (`key`: where `server` is written).
pub fn parse_server(
    name: &str,
    key: &Node,
    v: &Node,
    base_dir: &Path,
    diags: &mut Diagnostics,
) -> Option<ServerSpec> {
    let Some(fields) = v.as_map() else {
        diags.push(
            Diagnostic::at(
                Some(v.loc.clone()),
                format!(
                    "`server` of model `{name}` must be a mapping, found {}",
                    v.type_name()
                ),
            )
            .with_help(EXAMPLE),
        );
        return None;
    };
    let before = diags.len();
    check_keys(
        fields,
        SERVER_KEYS,
        &format!("`server` of model `{name}`"),
        diags,
    );
    let required = |k: &str, diags: &mut Diagnostics| -> Option<(String, &Node)> {
        match v.entry(k) {
            Some((_, n)) => expect_str(n, &format!("`{k}`"), diags).map(|s| (s, n)),
            None => {
                diags.push(
                    Diagnostic::at(
                        Some(key.loc.clone()),
                        format!("`server` of model `{name}` needs `{k}`"),
                    )
                    .with_help(EXAMPLE),
                );
                None
            }
        }
    };
    let url = required("url", diags).and_then(|(url, n)| match url_problem(&url) {
        Some(problem) => {
            diags.push(Diagnostic::at(Some(n.loc.clone()), problem));
            None
        }
        None => Some(url.trim_end_matches('/').to_string()),
    });
    let api = required("api", diags).and_then(|(api, n)| match ServerApi::from_name(&api) {
        Some(a) => Some(a),
        None => {
            diags.push(
                Diagnostic::at(Some(n.loc.clone()), format!("unknown server api `{api}`"))
                    .help_for(&api, ServerApi::NAMES),
            );
            None
        }
    });
    let model = required("model", diags).and_then(|(m, n)| {
        if m.trim().is_empty() {
            diags.push(Diagnostic::at(
                Some(n.loc.clone()),
                "`model` must name the served model",
            ));
            return None;
        }
        Some(m)
    });
    let tokenizer = required("tokenizer", diags).and_then(|(t, n)| {
        let path = resolve(base_dir, &t);
        match tokenizer_problem(&path) {
            Some(problem) => {
                diags.push(Diagnostic::at(Some(n.loc.clone()), problem));
                None
            }
            None => Some(path),
        }
    });
    let timeout_s = positive(v, "timeout_s", DEFAULT_TIMEOUT_S, diags);
    let retries = count(v, "retries", DEFAULT_RETRIES as u64, diags);
    let top_logprobs = positive(v, "top_logprobs", DEFAULT_TOP_LOGPROBS as u64, diags);
    if diags.len() != before {
        return None;
    }
    Some(ServerSpec {
        url: url?,
        api: api?,
        model: model?,
        tokenizer: tokenizer?,
        timeout_s: timeout_s?,
        retries: u32::try_from(retries?).ok()?,
        top_logprobs: u32::try_from(top_logprobs?).ok()?,
    })
}

/// Only plain `http://` is spoken (no TLS in the client).
fn url_problem(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://");
    match rest {
        Some(r) if !r.trim_matches('/').is_empty() => None,
        Some(_) => Some(format!("`url` `{url}` names no host")),
        None if url.starts_with("https://") => Some(format!(
            "`url` `{url}`: https is not supported; reach the server over http:// (a local port, or a tunnel)"
        )),
        None => Some(format!(
            "`url` `{url}` must start with http:// (e.g. http://127.0.0.1:8000)"
        )),
    }
}

/// A tokenizer is a directory with `tokenizer.json` or a `.gguf` file.
fn tokenizer_problem(path: &Path) -> Option<String> {
    if ModelSource::is_gguf_path(path) {
        return (!path.is_file()).then(|| format!("GGUF file `{}` does not exist", path.display()));
    }
    if !path.is_dir() {
        return Some(format!(
            "tokenizer directory `{}` does not exist (a GGUF file must end in `.gguf`)",
            path.display()
        ));
    }
    (!path.join("tokenizer.json").is_file()).then(|| {
        format!(
            "`{}` has no tokenizer.json (give a HF model directory or a GGUF file)",
            path.display()
        )
    })
}

/// An optional integer key ≥ 1.
fn positive(v: &Node, key: &str, default: u64, diags: &mut Diagnostics) -> Option<u64> {
    let n = count(v, key, default, diags)?;
    if n == 0 {
        let loc = v.entry(key).map(|(_, n)| n.loc.clone());
        diags.push(Diagnostic::at(loc, format!("`{key}` must be at least 1")));
        return None;
    }
    Some(n)
}

/// An optional integer key ≥ 0.
fn count(v: &Node, key: &str, default: u64, diags: &mut Diagnostics) -> Option<u64> {
    let Some((_, n)) = v.entry(key) else {
        return Some(default);
    };
    match &n.value {
        Value::Int(i) if *i >= 0 => Some(*i as u64),
        _ => {
            diags.push(Diagnostic::at(
                Some(n.loc.clone()),
                format!("`{key}` must be a non-negative integer"),
            ));
            None
        }
    }
}
