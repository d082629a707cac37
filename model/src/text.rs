//! A model's text side without its weights: what turns prompts into token ids and back
//! and says where generation ends. For models whose weights run elsewhere (an inference
//! server): prompts are rendered and tokenised here exactly as for a loaded [`Model`].
//!
//! [`Model`]: crate::Model

use std::path::Path;

use serde_json::Value;

use crate::chat::ChatTemplate;
use crate::error::{ModelError, Result};
use crate::hub_dir::read_generation;
use crate::tokenizer::TextTokenizer;

/// Tokenizer, chat template, end-of-sequence ids and (when known) the context length.
#[derive(Debug)]
pub struct ModelText {
    pub tokenizer: TextTokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// As [`crate::Model::eos_token_ids`] reads them.
    pub eos_token_ids: Vec<i64>,
    /// `max_position_embeddings` of `config.json`, or the GGUF context length.
    pub context_length: Option<usize>,
}

impl ModelText {
    /// From a HF directory: `tokenizer.json` (required), the chat template
    /// (`chat_template.jinja` or `tokenizer_config.json`), eos ids from
    /// `generation_config.json`, else `config.json`, else the tokenizer. `config.json` is
    /// optional and read loosely (any architecture: the weights are not run here).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tokenizer = TextTokenizer::from_dir(dir)?;
        let chat_template = ChatTemplate::from_dir(dir, &tokenizer)?;
        let config = read_loose_config(dir)?;
        let mut eos_token_ids = read_generation(dir)?.eos_token_ids;
        if eos_token_ids.is_empty() {
            eos_token_ids = ids_of(config.get("eos_token_id"));
        }
        if eos_token_ids.is_empty() {
            eos_token_ids = tokenizer.eos_token_id().into_iter().collect();
        }
        let context_length = config
            .get("max_position_embeddings")
            .and_then(Value::as_u64)
            .map(|n| n as usize);
        Ok(ModelText {
            tokenizer,
            chat_template,
            eos_token_ids,
            context_length,
        })
    }

    /// From a GGUF file's metadata (no tensor is read).
    pub fn from_gguf(path: &Path) -> Result<Self> {
        crate::gguf::text_side(path)
    }
}

/// `config.json` as JSON, or an empty object when there is none.
fn read_loose_config(dir: &Path) -> Result<Value> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(Value::Object(Default::default()));
    }
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::Input(format!("{}: not JSON: {e}", path.display())))
}

/// An id or a list of ids.
fn ids_of(v: Option<&Value>) -> Vec<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}
