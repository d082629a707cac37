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
