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
use tokenizers::pre_tokenizers::split::{Split as RegexSplit, SplitPattern};
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

/// How text is split before BPE.
#[derive(Debug, Clone, Copy)]
enum Split {
    /// GPT-2's regex (`ByteLevel` with `use_regex`).
    Gpt2,
    /// Every digit on its own, then GPT-2's regex (SmolLM, StarCoder, ...).
    DigitsThenGpt2,
    /// A model's own regex, then byte-level without GPT-2's regex.
    Regex(&'static str),
}

/// What a `tokenizer.ggml.pre` value stands for: the Hugging Face tokenizer of the model
/// family llama.cpp's regexes were written for.
#[derive(Debug, Clone, Copy)]
struct PreTokenization {
    split: Split,
    /// NFC normalisation first (Qwen2).
    nfc: bool,
    /// Whole pre-tokens found in the vocabulary are not merged further (Llama 3).
    ignore_merges: bool,
}

/// Qwen2's split regex (its `tokenizer.json`).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split regex (its `tokenizer.json`): numbers in groups of up to three digits.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const fn pre(split: Split, nfc: bool, ignore_merges: bool) -> PreTokenization {
    PreTokenization {
        split,
        nfc,
        ignore_merges,
    }
}

/// `tokenizer.ggml.pre` values (grouped as llama.cpp groups them); `default` stands for a
/// file without the key.
const PRE_TOKENIZERS: &[(&str, PreTokenization)] = &[
    ("default", pre(Split::Gpt2, false, false)),
    ("gpt2", pre(Split::Gpt2, false, false)),
    ("smollm", pre(Split::DigitsThenGpt2, false, false)),
    ("starcoder", pre(Split::DigitsThenGpt2, false, false)),
    ("refact", pre(Split::DigitsThenGpt2, false, false)),
    ("qwen2", pre(Split::Regex(QWEN2_REGEX), true, false)),
    ("llama-bpe", pre(Split::Regex(LLAMA3_REGEX), false, true)),
];

/// A special token the file names: transformers' name (`bos_token`), text and id.
#[derive(Debug, Clone)]
struct Special {
    name: &'static str,
    text: String,
    id: u32,
}

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
    let token_types = token_types(md, tokens.len())?;
    let merges_key = "tokenizer.ggml.merges";
    let merges = md.strings(merges_key)?.ok_or_else(|| missing(merges_key))?;
    let pre = pre_tokenization(md)?;
    let specials = SPECIAL_TOKEN_KEYS
        .iter()
        .filter_map(|&(name, key)| match token_id(md, key, &tokens) {
            Ok(id) => id.map(|id| {
                let text = tokens[id as usize].to_string();
                Ok(Special { name, text, id })
            }),
            Err(e) => Some(Err(e)),
        })
        .collect::<GgufResult<Vec<_>>>()?;
    let find = |name: &str| specials.iter().find(|s| s.name == name);
    let add_bos = md.boolean("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = md.boolean("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    // add_bos_token / add_eos_token need the token they add.
    let added = |add: bool, name: &str| -> GgufResult<Option<&Special>> {
        match (add, find(name)) {
            (false, _) => Ok(None),
            (true, Some(s)) => Ok(Some(s)),
            (true, None) => Err(GgufError::BadValue {
                key: format!("tokenizer.ggml.add_{name}"),
                why: format!("is true but the file names no {name} id"),
            }),
        }
    };
    let (bos, eos) = (added(add_bos, "bos_token")?, added(add_eos, "eos_token")?);
    let tokenizer = build(&tokens, &token_types, &merges, pre, bos, eos)
        .map_err(|e| GgufError::from(ModelError::Tokenizer(e.to_string())))?;

    let mut config = Map::new();
    for s in &specials {
        config.insert(s.name.to_string(), json!(s.text));
    }
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    config.insert("model_max_length".into(), json!(context_length));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    let id_of = |name: &str| find(name).map(|s| i64::from(s.id));
    Ok(Vocabulary {
        tokenizer: TextTokenizer::new(tokenizer, Value::Object(config)),
        n_tokens: tokens.len(),
        bos: id_of("bos_token"),
        eos: id_of("eos_token"),
        pad: id_of("pad_token"),
        eot: token_id(md, "tokenizer.ggml.eot_token_id", &tokens)?.map(i64::from),
        special_tokens: specials
            .iter()
            .map(|s| (s.name.to_string(), s.text.clone()))
            .collect(),
    })
}

/// `tokenizer.ggml.token_type`, one per token (all normal when absent).
fn token_types(md: &Metadata, n_tokens: usize) -> GgufResult<Vec<i64>> {
    let key = "tokenizer.ggml.token_type";
    match md.ints(key)? {
        Some(t) if t.len() != n_tokens => Err(GgufError::BadValue {
            key: key.into(),
            why: format!("{} entries for {n_tokens} tokens", t.len()),
        }),
        Some(t) => Ok(t),
        None => Ok(vec![1; n_tokens]),
    }
}

/// The meaning of `tokenizer.ggml.pre`, or an error listing the known values.
fn pre_tokenization(md: &Metadata) -> GgufResult<PreTokenization> {
    let name = md.string("tokenizer.ggml.pre")?.unwrap_or("default");
    PRE_TOKENIZERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .ok_or_else(|| GgufError::UnsupportedPreTokenizer {
            pre: name.to_string(),
            supported: PRE_TOKENIZERS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A token id stored under `key`, which must be inside the vocabulary.
fn token_id(md: &Metadata, key: &str, tokens: &[&str]) -> GgufResult<Option<u32>> {
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
}

/// The `tokenizers` pipeline: normaliser, pre-tokenizer, BPE, added tokens, post-processor
/// and byte-level decoder.
fn build(
    tokens: &[&str],
    token_types: &[i64],
    merges: &[&str],
    pre: PreTokenization,
    bos: Option<&Special>,
    eos: Option<&Special>,
) -> tokenizers::Result<Tokenizer> {
    let mut tok = Tokenizer::new(bpe(tokens, merges, pre.ignore_merges)?);
    if pre.nfc {
        tok.with_normalizer(Some(NFC))?;
    }
    tok.with_pre_tokenizer(Some(pre_tokenizer(pre.split)?));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    if let Some(p) = post_processor(bos, eos)? {
        tok.with_post_processor(Some(p));
    }
    let added = |kind: i64, special: bool| {
        tokens
            .iter()
            .zip(token_types)
            .filter(move |(_, &t)| t == kind)
            .map(move |(s, _)| AddedToken::from(s.to_string(), special).normalized(false))
    };
    tok.add_special_tokens(added(CONTROL, true))?;
    tok.add_tokens(added(USER_DEFINED, false))?;
    Ok(tok)
}

/// The BPE model: ids are positions in `tokens`, ranks positions in `merges`.
fn bpe(tokens: &[&str], merges: &[&str], ignore_merges: bool) -> tokenizers::Result<BPE> {
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
                .ok_or_else(|| {
                    format!("tokenizer.ggml.merges: merge {i} ({m:?}) is not two tokens separated by a space")
                })
        })
        .collect::<Result<Vec<_>, String>>()?;
    BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(ignore_merges)
        .build()
}

fn pre_tokenizer(split: Split) -> tokenizers::Result<PreTokenizerWrapper> {
    Ok(match split {
        Split::Gpt2 => ByteLevel::new(false, false, true).into(),
        Split::DigitsThenGpt2 => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, false, true).into(),
        ])
        .into(),
        Split::Regex(regex) => Sequence::new(vec![
            RegexSplit::new(
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
    bos: Option<&Special>,
    eos: Option<&Special>,
) -> tokenizers::Result<Option<TemplateProcessing>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let template = |seq: &str, type_id: u32| -> Vec<String> {
        let piece = |t: Option<&Special>| t.map(|s| format!("{}:{type_id}", s.text));
        piece(bos)
            .into_iter()
            .chain([format!("${seq}:{type_id}")])
            .chain(piece(eos))
            .collect()
    };
    let pair: Vec<String> = template("A", 0)
        .into_iter()
        .chain(template("B", 1))
        .collect();
    let specials: Vec<(String, u32)> = bos
        .iter()
        .chain(eos.iter())
        .map(|s| (s.text.clone(), s.id))
        .collect();
    Ok(Some(
        TemplateProcessing::builder()
            .try_single(template("A", 0))?
            .try_pair(pair)?
            .special_tokens(specials)
            .build()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::metadata::{MetaValue, ValueType};

    fn strings(items: &[&str]) -> MetaValue {
        let items = items
            .iter()
            .map(|s| MetaValue::String(s.to_string()))
            .collect();
        MetaValue::Array(ValueType::String, items)
    }

    /// The 256 byte tokens, "12" (merged from "1 2") and a control token `<s>` (id 257).
    fn metadata(extra: &[(&str, MetaValue)]) -> Metadata {
        let bytes: Vec<String> = crate::tokenizer::gpt2_byte_chars()
            .iter()
            .map(char::to_string)
            .collect();
        let mut tokens: Vec<&str> = bytes.iter().map(String::as_str).collect();
        tokens.extend(["12", "<s>"]);
        let mut types = vec![MetaValue::I32(1); 258];
        types[257] = MetaValue::I32(3);
        let mut md = Metadata::default();
        let base = [
            ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            (
                "tokenizer.ggml.token_type",
                MetaValue::Array(ValueType::I32, types),
            ),
            ("tokenizer.ggml.merges", strings(&["1 2"])),
        ];
        for (k, v) in base.into_iter().chain(extra.iter().cloned()) {
            md.insert(k.to_string(), v).unwrap();
        }
        md
    }

    fn encode(md: &Metadata, text: &str, specials: bool) -> Vec<i64> {
        let v = vocabulary(md, 64).unwrap();
        v.tokenizer.encode(text, specials).unwrap()
    }

    #[test]
    fn pre_tokenizers_split_digits_as_their_models_do() {
        let pre = |p: &str| [("tokenizer.ggml.pre", MetaValue::String(p.into()))];
        let (one, two, twelve) = (i64::from(b'1'), i64::from(b'2'), 256);
        // GPT-2's regex keeps "12" together, so it merges; SmolLM splits every digit first.
        assert_eq!(encode(&metadata(&pre("gpt2")), "12", false), vec![twelve]);
        assert_eq!(encode(&metadata(&[]), "12", false), vec![twelve]);
        assert_eq!(
            encode(&metadata(&pre("smollm")), "12", false),
            vec![one, two]
        );
        assert_eq!(
            encode(&metadata(&pre("qwen2")), "12", false),
            vec![one, two]
        );
        // Llama 3 groups up to three digits: "121" is one pre-token, merged as "12" "1".
        assert_eq!(
            encode(&metadata(&pre("llama-bpe")), "121", false),
            vec![twelve, one]
        );
        // Qwen2 normalises to NFC: "e" + combining acute is "é" (two UTF-8 bytes).
        let nfc = encode(&metadata(&pre("qwen2")), "e\u{301}", false);
        assert_eq!(nfc, vec![0xC3, 0xA9]);
        let err = vocabulary(&metadata(&pre("tekken")), 64)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "pre-tokenizer \"tekken\" is not supported (supported: default, gpt2, smollm"
            ),
            "{err}"
        );
    }

    #[test]
    fn control_tokens_are_special_and_bos_follows_the_file() {
        let bos = ("tokenizer.ggml.bos_token_id", MetaValue::U32(257));
        let md = metadata(&[
            bos.clone(),
            ("tokenizer.ggml.add_bos_token", MetaValue::Bool(true)),
        ]);
        assert_eq!(encode(&md, "<s>1", false), vec![257, i64::from(b'1')]);
        assert_eq!(encode(&md, "1", true), vec![257, i64::from(b'1')]);
        let v = vocabulary(&md, 64).unwrap();
        assert_eq!(
            v.special_tokens,
            vec![("bos_token".to_string(), "<s>".to_string())]
        );
        assert_eq!(v.tokenizer.decode(&[257, 49], true).unwrap(), "1");
        let md = metadata(&[bos]);
        assert_eq!(
            encode(&md, "1", true),
            vec![i64::from(b'1')],
            "add_bos_token defaults to false"
        );
        let md = metadata(&[("tokenizer.ggml.add_bos_token", MetaValue::Bool(true))]);
        let err = vocabulary(&md, 64).unwrap_err().to_string();
        assert_eq!(err, "metadata key \"tokenizer.ggml.add_bos_token\": is true but the file names no bos_token id");
        let md = metadata(&[("tokenizer.ggml.eos_token_id", MetaValue::U32(999))]);
        let err = vocabulary(&md, 64).unwrap_err().to_string();
        assert!(
            err.contains("token id 999 is outside the vocabulary of 258"),
            "{err}"
        );
    }
}
