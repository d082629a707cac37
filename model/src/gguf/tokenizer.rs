//! The tokenizer of a GGUF file (`tokenizer.ggml.*`) as a `tokenizers::Tokenizer`.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = gpt2`) is built. Its pieces:
//! * vocabulary: `tokens` (id = position) and `merges` (`"a b"`, rank = position);
//! * added tokens from `token_type`: control tokens become special tokens, user-defined
//!   tokens plain added tokens (both matched verbatim in the text, as llama.cpp does);
//! * pre-tokenizer from `tokenizer.ggml.pre`, the HF equivalent of llama.cpp's regexes;
//! * BOS / EOS from `add_bos_token` / `add_eos_token` as a template post-processor.

use serde_json::{json, Map, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::error::{GgufError, GgufResult};
use super::metadata::{missing, Metadata};
use crate::error::ModelError;
use crate::tokenizer::TextTokenizer;

/// Tokenizer models this crate builds.
pub const SUPPORTED_TOKENIZERS: &str = "gpt2 (byte-level BPE)";

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The special tokens transformers names in `tokenizer_config.json` and passes to chat
/// templates, with the GGUF key of each one's id.
const SPECIAL_TOKEN_KEYS: &[(&str, &str)] = &[
    ("bos_token", "tokenizer.ggml.bos_token_id"),
    ("eos_token", "tokenizer.ggml.eos_token_id"),
    ("unk_token", "tokenizer.ggml.unknown_token_id"),
    ("pad_token", "tokenizer.ggml.padding_token_id"),
    // The key is spelled this way in the GGUF specification.
    ("sep_token", "tokenizer.ggml.seperator_token_id"),
    ("cls_token", "tokenizer.ggml.cls_token_id"),
    ("mask_token", "tokenizer.ggml.mask_token_id"),
];

/// How text is split before BPE, per `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy)]
enum PreTokenizer {
    /// GPT-2's regex (`ByteLevel` with `use_regex`).
    Gpt2,
    /// Every digit on its own, then GPT-2's regex (SmolLM, StarCoder, ...).
    DigitsThenGpt2,
    /// A custom regex, then byte-level without GPT-2's regex.
    Regex(&'static str),
}

/// Qwen2's split regex (its `tokenizer.json`).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split regex (its `tokenizer.json`): numbers in groups of up to three digits.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values and what they mean (grouped as llama.cpp groups them).
/// `default` stands for a file without the key.
const PRE_TOKENIZERS: &[(&str, PreTokenizer)] = &[
    ("default", PreTokenizer::Gpt2),
    ("gpt2", PreTokenizer::Gpt2),
    ("smollm", PreTokenizer::DigitsThenGpt2),
    ("starcoder", PreTokenizer::DigitsThenGpt2),
    ("refact", PreTokenizer::DigitsThenGpt2),
    ("qwen2", PreTokenizer::Regex(QWEN2_REGEX)),
    ("llama-bpe", PreTokenizer::Regex(LLAMA3_REGEX)),
];

/// The tokenizer of a GGUF file and the special tokens it names.
#[derive(Debug)]
pub(crate) struct Vocabulary {
    pub tokenizer: TextTokenizer,
    /// `(bos_token, "<s>")`, ...: template variables and `tokenizer_config.json` entries.
    pub special_tokens: Vec<(String, String)>,
    pub n_tokens: usize,
    pub bos: Option<i64>,
    pub eos: Option<i64>,
    pub pad: Option<i64>,
    /// End-of-turn token (`tokenizer.ggml.eot_token_id`): chat models stop on it too.
    pub eot: Option<i64>,
}

/// Builds the tokenizer described by the metadata; `context_length` becomes
/// `model_max_length`.
pub(crate) fn vocabulary(md: &Metadata, context_length: u64) -> GgufResult<Vocabulary> {
    let model_key = "tokenizer.ggml.model";
    let model = md.string(model_key)?.ok_or_else(|| missing(model_key))?;
    if model != "gpt2" {
        return Err(GgufError::UnsupportedTokenizer {
            model: model.to_string(),
            supported: SUPPORTED_TOKENIZERS.into(),
        });
    }
    let tokens_key = "tokenizer.ggml.tokens";
    let tokens = md.strings(tokens_key)?.ok_or_else(|| missing(tokens_key))?;
    let token_types = match md.ints("tokenizer.ggml.token_type")? {
        Some(t) if t.len() != tokens.len() => {
            return Err(GgufError::BadValue {
                key: "tokenizer.ggml.token_type".into(),
                why: format!("{} entries for {} tokens", t.len(), tokens.len()),
            })
        }
        Some(t) => t,
        None => vec![1; tokens.len()],
    };
    let merges_key = "tokenizer.ggml.merges";
    let merges = md.strings(merges_key)?.ok_or_else(|| missing(merges_key))?;
    let pre_key = "tokenizer.ggml.pre";
    let pre_name = md.string(pre_key)?.unwrap_or("default");
    let pre = PRE_TOKENIZERS
        .iter()
        .find(|(name, _)| *name == pre_name)
        .map(|(_, p)| *p)
        .ok_or_else(|| GgufError::UnsupportedPreTokenizer {
            pre: pre_name.to_string(),
            supported: PRE_TOKENIZERS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })?;

    let token_id = |key: &str| -> GgufResult<Option<u32>> {
        match md.count(key)? {
            None => Ok(None),
            Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
            Some(id) => Err(GgufError::BadValue {
                key: key.to_string(),
                why: format!(
                    "token id {id} is outside the vocabulary of {}",
                    tokens.len()
                ),
            }),
        }
    };
    // (name, text, id) of each special token the file names.
    let mut specials: Vec<(&str, String, u32)> = Vec::new();
    for (name, key) in SPECIAL_TOKEN_KEYS {
        if let Some(id) = token_id(key)? {
            specials.push((name, tokens[id as usize].to_string(), id));
        }
    }
    let find = |name: &str| specials.iter().find(|s| s.0 == name);
    let id_of = |name: &str| find(name).map(|s| i64::from(s.2));
    let add_bos = md.boolean("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = md.boolean("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    // add_bos_token / add_eos_token need the token they add.
    let added_special = |add: bool, name: &str| -> GgufResult<Option<(String, u32)>> {
        match (add, find(name)) {
            (false, _) => Ok(None),
            (true, Some((_, text, id))) => Ok(Some((text.clone(), *id))),
            (true, None) => Err(GgufError::BadValue {
                key: format!("tokenizer.ggml.add_{name}"),
                why: format!("is true but the file names no {name} id"),
            }),
        }
    };

    let mut tok = Tokenizer::new(bpe(&tokens, &merges, pre_name)?);
    let tok_err = |e: tokenizers::Error| GgufError::from(ModelError::Tokenizer(e.to_string()));
    if matches!(pre, PreTokenizer::Regex(QWEN2_REGEX)) {
        // Qwen2's tokenizer.json normalises to NFC (transformers' converter does too).
        tok.with_normalizer(Some(NFC)).map_err(tok_err)?;
    }
    tok.with_pre_tokenizer(Some(pre_tokenizer(pre).map_err(tok_err)?));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let bos = added_special(add_bos, "bos_token")?;
    let eos = added_special(add_eos, "eos_token")?;
    if let Some(p) = post_processor(bos, eos).map_err(tok_err)? {
        tok.with_post_processor(Some(p));
    }
    let added = |kind: i64, special: bool| {
        tokens
            .iter()
            .zip(&token_types)
            .filter(move |(_, &t)| t == kind)
            .map(move |(s, _)| AddedToken::from(s.to_string(), special).normalized(false))
    };
    tok.add_special_tokens(added(CONTROL, true))
        .map_err(tok_err)?;
    tok.add_tokens(added(USER_DEFINED, false))
        .map_err(tok_err)?;

    let mut config = Map::new();
    for (name, text, _) in &specials {
        config.insert(name.to_string(), json!(text));
    }
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    config.insert("model_max_length".into(), json!(context_length));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    Ok(Vocabulary {
        tokenizer: TextTokenizer::new(tok, Value::Object(config)),
        n_tokens: tokens.len(),
        bos: id_of("bos_token"),
        eos: id_of("eos_token"),
        pad: id_of("pad_token"),
        eot: token_id("tokenizer.ggml.eot_token_id")?.map(i64::from),
        special_tokens: specials
            .iter()
            .map(|(name, text, _)| (name.to_string(), text.clone()))
            .collect(),
    })
}

/// The BPE model: ids are positions in `tokens`, ranks positions in `merges`.
fn bpe(tokens: &[&str], merges: &[&str], pre: &str) -> GgufResult<BPE> {
    // Later duplicates win, as in transformers' converter.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let pairs = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // llama.cpp splits at the first space after the first character.
            m.char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(at, _)| (m[..at].to_string(), m[at + 1..].to_string()))
                .ok_or_else(|| GgufError::BadValue {
                    key: "tokenizer.ggml.merges".into(),
                    why: format!("merge {i} ({m:?}) is not two tokens separated by a space"),
                })
        })
        .collect::<GgufResult<Vec<_>>>()?;
    BPE::builder()
        .vocab_and_merges(vocab, pairs)
        // Llama 3 looks whole pre-tokens up in the vocabulary before merging.
        .ignore_merges(pre == "llama-bpe")
        .build()
        .map_err(|e| ModelError::Tokenizer(format!("building the BPE model: {e}")).into())
}

fn pre_tokenizer(pre: PreTokenizer) -> tokenizers::Result<PreTokenizerWrapper> {
    Ok(match pre {
        PreTokenizer::Gpt2 => ByteLevel::new(false, false, true).into(),
        PreTokenizer::DigitsThenGpt2 => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, false, true).into(),
        ])
        .into(),
        PreTokenizer::Regex(regex) => Sequence::new(vec![
            Split::new(
                SplitPattern::Regex(regex.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )?
            .into(),
            ByteLevel::new(false, false, false).into(),
        ])
        .into(),
    })
}

/// A template adding BOS and/or EOS around each sequence, or `None` when neither is added.
fn post_processor(
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
) -> tokenizers::Result<Option<TemplateProcessing>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let template = |seq: &str, type_id: u32| -> Vec<String> {
        let piece = |t: &Option<(String, u32)>| t.as_ref().map(|(s, _)| format!("{s}:{type_id}"));
        piece(&bos)
            .into_iter()
            .chain([format!("${seq}:{type_id}")])
            .chain(piece(&eos))
            .collect()
    };
    let pair: Vec<String> = template("A", 0)
        .into_iter()
        .chain(template("B", 1))
        .collect();
    let specials: Vec<(String, u32)> = bos.iter().chain(eos.iter()).cloned().collect();
    Ok(Some(
        TemplateProcessing::builder()
            .try_single(template("A", 0))?
            .try_pair(pair)?
            .special_tokens(specials)
            .build()?,
    ))
}
