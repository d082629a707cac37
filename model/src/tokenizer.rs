//! Text tokenizer (`tokenizer.json` via the `tokenizers` crate) plus the special tokens named in
//! `tokenizer_config.json`, and an incremental detokenizer for streaming / stop strings.

use std::path::Path;

use serde_json::Value;

use crate::error::{read_json, ModelError, Result};

/// A loaded `tokenizer.json` with the special tokens of `tokenizer_config.json`.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// Raw `tokenizer_config.json` (an empty object when the file is absent); saved back as is.
    pub config: Value,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

/// A special token in `tokenizer_config.json` is either a string or an `AddedToken` object.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and (if present) `tokenizer_config.json` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::MissingFile(path));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let config = if cfg_path.exists() {
            read_json(&cfg_path)?
        } else {
            Value::Object(Default::default())
        };
        Ok(TextTokenizer { inner, config })
    }

    /// Wraps an in-memory tokenizer.
    pub fn new(inner: tokenizers::Tokenizer, config: Value) -> Self {
        TextTokenizer { inner, config }
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Vocabulary size including added tokens (an embedding table needs at least this many rows).
    pub fn vocab_size(&self) -> usize {
        let added_max = self
            .inner
            .get_added_tokens_decoder()
            .keys()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        self.inner.get_vocab_size(true).max(added_max)
    }

    /// Encodes `text`; `add_special_tokens` applies the tokenizer's post-processor (e.g. BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// Decodes `ids`, optionally dropping special tokens.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| {
                u32::try_from(i).map_err(|_| ModelError::Tokenizer(format!("bad token id {i}")))
            })
            .collect::<Result<_>>()?;
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Id of a token string, if in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// A special token (`bos_token`, `eos_token`, `pad_token`, `unk_token`) as text.
    pub fn special_token(&self, key: &str) -> Option<String> {
        self.config.get(key).and_then(token_content)
    }

    /// Id of `eos_token` from `tokenizer_config.json`.
    pub fn eos_token_id(&self) -> Option<i64> {
        self.special_token("eos_token")
            .and_then(|t| self.token_to_id(&t))
    }

    /// Id of `bos_token` from `tokenizer_config.json`.
    pub fn bos_token_id(&self) -> Option<i64> {
        self.special_token("bos_token")
            .and_then(|t| self.token_to_id(&t))
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("tokenizer.json");
        self.inner
            .save(&path, false)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        crate::error::write_json(&dir.join("tokenizer_config.json"), &self.config)
    }
}

/// Turns a growing list of ids into text without re-decoding everything each step and without
/// emitting half of a multi-byte character (the usual prefix/read offset scheme).
#[derive(Debug, Default, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<i64>,
    prefix_offset: usize,
    read_offset: usize,
    text: String,
}

impl IncrementalDecoder {
    /// Empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one id; returns the newly completed text (possibly empty).
    pub fn push(&mut self, tok: &TextTokenizer, id: i64) -> Result<String> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&self.ids[self.prefix_offset..], true)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let new = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            self.text.push_str(&new);
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// All text emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// GPT-2's byte-to-unicode table (`table[b]` is the printable character that stands for
/// byte `b` in byte-level BPE vocabularies), for building byte-level tokenizers.
pub fn gpt2_byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap_or(' ');
    }
    table
}
