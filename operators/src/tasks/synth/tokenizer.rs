//! The tokenizer of the built-in tiny model for the synthetic task.
//!
//! A BPE model without merges (`ignore_merges`: every word of the task's templates is one
//! token, looked up whole) and with byte fallback (anything else becomes single characters,
//! or `<0xNN>` byte tokens outside printable ASCII), so every text round-trips exactly.
//! The pre-tokenizer splits every digit into its own token, keeps ` + `, ` - `, ` * `, ` / `,
//! ` = ` as single tokens, glues one leading space to a word or punctuation mark, and keeps
//! `\n\n` (the step separator) as one token.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde_json::{json, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::probe::{PROBE_NO, PROBE_QUESTION, PROBE_YES};
use super::{arith, SynthError};

/// Version of the vocabulary and pre-tokenization rules; bumped on any change, so that
/// fingerprints that include it change too.
pub const TOKENIZER_VERSION: u32 = 1;

/// Unknown token (unused in practice: byte fallback covers every input).
pub const UNK_TOKEN: &str = "<unk>";
/// Beginning / padding token.
pub const BOS_TOKEN: &str = "<|endoftext|>";
/// Start of a chat turn.
pub const IM_START: &str = "<|im_start|>";
/// End of a chat turn; also the end-of-sequence token (generation stops on it).
pub const EOS_TOKEN: &str = "<|im_end|>";

/// ChatML, as Qwen2.5 writes it, without a default system message.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Pre-tokenizer pattern (Oniguruma syntax, matches isolated).
const PRE_TOKENIZE: &str = r"[0-9]| [-+*/=] | ?[A-Za-z]+| ?[^\sA-Za-z0-9]|\n\n|\s";

/// Maximum sequence length recorded in `tokenizer_config.json` (the `tiny-synth` context).
const MODEL_MAX_LENGTH: u32 = 1024;

/// Words that are not in the generator's templates but are written by the chat template, the
/// probe question and its targets.
const EXTRA_WORDS: &[&str] = &["user", "assistant", "system", "answer", "is", "the"];

/// The vocabulary in id order.
pub fn vocabulary() -> Vec<String> {
    let mut v: Vec<String> = vec![
        UNK_TOKEN.into(),
        BOS_TOKEN.into(),
        IM_START.into(),
        EOS_TOKEN.into(),
    ];
    v.extend((0u8..=255).map(|b| format!("<{b:#04X}>")));
    v.push("\n".into());
    v.push("\n\n".into());
    // Printable ASCII, one character each (the fallback for unknown words).
    v.extend((0x20u8..0x7F).map(|c| (c as char).to_string()));
    // Punctuation with its leading space, and the spaced operators.
    for c in (0x21u8..0x7F).map(char::from) {
        if !c.is_ascii_alphanumeric() {
            v.push(format!(" {c}"));
        }
    }
    for op in ["+", "-", "*", "/", "="] {
        v.push(format!(" {op} "));
    }
    // Words: every word of every template, lower and capitalised, with and without space.
    let mut texts: Vec<&str> = arith::all_templates();
    texts.extend([PROBE_QUESTION, PROBE_YES, PROBE_NO]);
    texts.extend_from_slice(EXTRA_WORDS);
    let mut words = std::collections::BTreeSet::new();
    let placeholder = regex::Regex::new(r"\{[A-Za-z]+\}").expect("valid regex");
    let word = regex::Regex::new(r"[A-Za-z]+").expect("valid regex");
    for t in texts {
        let t = placeholder.replace_all(t, " ");
        for m in word.find_iter(&t) {
            let w = m.as_str();
            if w.len() < 2 {
                continue; // single letters are already there
            }
            words.insert(w.to_string());
            words.insert(w.to_lowercase());
            words.insert(capitalize(w));
            words.insert(capitalize(&w.to_lowercase()));
        }
    }
    for w in &words {
        v.push(w.clone());
        v.push(format!(" {w}"));
    }
    // Single letters with a leading space (" a", " I", ...).
    for c in (b'a'..=b'z').chain(b'A'..=b'Z') {
        v.push(format!(" {}", c as char));
    }
    let mut seen = std::collections::HashSet::new();
    v.retain(|t| seen.insert(t.clone()));
    v
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn tok_err(e: impl std::fmt::Display) -> SynthError {
    SynthError::Tokenizer(e.to_string())
}

/// The tokenizer, in memory.
pub fn build_tokenizer() -> Result<Tokenizer, SynthError> {
    let vocab: Vec<(String, u32)> = vocabulary()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let vocab: tokenizers::models::bpe::Vocab = vocab.into_iter().collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .unk_token(UNK_TOKEN.into())
        .byte_fallback(true)
        .ignore_merges(true)
        .build()
        .map_err(tok_err)?;
    let mut tok = Tokenizer::new(bpe);
    let split = Split::new(
        SplitPattern::Regex(PRE_TOKENIZE.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    tok.with_pre_tokenizer(Some(split));
    tok.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ])));
    tok.add_special_tokens(
        [UNK_TOKEN, BOS_TOKEN, IM_START, EOS_TOKEN]
            .iter()
            .map(|t| AddedToken::from(*t, true)),
    )
    .map_err(tok_err)?;
    Ok(tok)
}

/// `tokenizer.json` text (pretty-printed, deterministic).
pub fn tokenizer_json() -> Result<String, SynthError> {
    let mut s = build_tokenizer()?.to_string(true).map_err(tok_err)?;
    s.push('\n');
    Ok(s)
}

/// `tokenizer_config.json`: special tokens, chat template, no cleanup of spaces on decode.
pub fn tokenizer_config() -> Value {
    json!({
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": BOS_TOKEN,
        "unk_token": UNK_TOKEN,
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
        "sspo_tokenizer_version": TOKENIZER_VERSION,
    })
}

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if missing); the
/// files are byte-for-byte the same on every call. Returns the path of `tokenizer.json`.
pub fn write_tokenizer(dir: &Path) -> Result<PathBuf, SynthError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut config = serde_json::to_string_pretty(&tokenizer_config()).map_err(tok_err)?;
    config.push('\n');
    let tok_path = dir.join("tokenizer.json");
    for (name, text) in [
        ("tokenizer.json", tokenizer_json()?),
        ("tokenizer_config.json", config),
    ] {
        let path = dir.join(name);
        // Written beside and renamed, so a reader never sees half a file.
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
    }
    Ok(tok_path)
}

/// The tokenizer built once per process (token counts of generated problems).
pub(super) fn shared() -> &'static Tokenizer {
    static TOK: LazyLock<Tokenizer> =
        LazyLock::new(|| build_tokenizer().expect("the synthetic tokenizer builds"));
    &TOK
}

/// Number of tokens of `text` under the synthetic tokenizer (no special tokens added).
pub fn count_tokens(text: &str) -> usize {
    shared()
        .encode(text, false)
        .map(|e| e.get_ids().len())
        .expect("the synthetic tokenizer encodes every text")
}
