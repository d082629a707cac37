//! GGUF files (llama.cpp's format) as models: [`Model::load_gguf`].
//!
//! * [`GgufFile`]: the file, parsed and bounds-checked (versions 2 and 3, metadata of every
//!   value type, tensor infos, `general.alignment`), its tensor data memory-mapped.
//! * Dequantisation of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K into
//!   f32, bit-identical to `gguf.quants.dequantize` ([`GgufFile::dequantize`]).
//! * Architectures `llama` and `qwen2`: the [`ModelConfig`](crate::ModelConfig) from
//!   `{arch}.*` metadata, tensors renamed to transformers' names, llama's Q/K rotary
//!   permutation undone.
//! * The byte-level BPE tokenizer of `tokenizer.ggml.*` and the chat template of
//!   `tokenizer.chat_template`.
//! * [`gguf_identity`]: the file's content hash, for fingerprints.
//!
//! A loaded model is an ordinary [`Model`]: [`Model::save_dir`] exports it as a Hugging Face
//! directory. Every error is a [`ModelError::Gguf`] naming the file.

mod config;
mod dequant;
mod error;
mod ggml_type;
mod metadata;
mod mmap;
mod reader;
mod tensors;
mod tokenizer;

use std::path::Path;

use serde_json::json;

pub use config::SUPPORTED_ARCHITECTURES;
pub use error::GgufError;
pub use ggml_type::{GgmlType, DEQUANTIZABLE};
pub use metadata::{MetaValue, Metadata, ValueType};
pub use reader::{GgufFile, TensorInfo};
pub use tokenizer::SUPPORTED_TOKENIZERS;

use crate::chat::ChatTemplate;
use crate::decoder::{Decoder, Init};
use crate::error::{ModelError, Result};
use crate::hub_dir::{GenerationDefaults, LoadOptions, Model};
use crate::tokenizer::TextTokenizer;
use config::Arch;
use error::GgufResult;

impl Model {
    /// Loads a GGUF file: weights dequantised into `opts.dtype` on `opts.device`, its
    /// tokenizer, chat template and special token ids. The whole file is checked before any
    /// tensor is dequantised; on error nothing is returned.
    pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Model> {
        let file = GgufFile::open(path)?;
        load(&file, opts).map_err(|e| e.at(path))
    }
}

impl TextTokenizer {
    /// Only the tokenizer of a GGUF file (`tokenizer.ggml.*`): no tensor is read.
    pub fn from_gguf(path: &Path) -> Result<TextTokenizer> {
        let file = GgufFile::open(path)?;
        let read = || -> GgufResult<TextTokenizer> {
            let md = file.metadata();
            let arch = Arch::of(md)?;
            Ok(tokenizer::vocabulary(md, config::context_length(md, arch)?)?.tokenizer)
        };
        read().map_err(|e| e.at(path))
    }
}

/// The text side of a GGUF file ([`crate::ModelText::from_gguf`]): tokenizer, chat
/// template, the eos ids [`Model::load_gguf`] stops on, and the context length.
pub(crate) fn text_side(path: &Path) -> Result<crate::ModelText> {
    let file = GgufFile::open(path)?;
    let Described {
        vocab,
        cfg,
        chat_template,
        ..
    } = describe(&file).map_err(|e| e.at(path))?;
    Ok(crate::ModelText {
        eos_token_ids: stop_ids(&vocab),
        tokenizer: vocab.tokenizer,
        chat_template,
        context_length: Some(cfg.max_position_embeddings as usize),
    })
}

/// Generation stops at EOS and, for chat models that have one, at the end-of-turn token.
fn stop_ids(vocab: &tokenizer::Vocabulary) -> Vec<i64> {
    let mut ids: Vec<i64> = vocab.eos.into_iter().collect();
    ids.extend(vocab.eot.filter(|t| !ids.contains(t)));
    ids
}

/// What a GGUF file describes, read from its metadata: no tensor data is touched.
struct Described {
    arch: Arch,
    vocab: tokenizer::Vocabulary,
    cfg: crate::ModelConfig,
    chat_template: Option<ChatTemplate>,
}

fn describe(file: &GgufFile) -> GgufResult<Described> {
    let md = file.metadata();
    let arch = Arch::of(md)?;
    let vocab = tokenizer::vocabulary(md, config::context_length(md, arch)?)?;
    let cfg = config::model_config(file, arch, &vocab)?;
    let chat_template = md
        .string("tokenizer.chat_template")?
        .map(|source| ChatTemplate::new(source, vocab.special_tokens.clone()))
        .transpose()?;
    Ok(Described {
        arch,
        vocab,
        cfg,
        chat_template,
    })
}

/// Checks `path` as [`Model::load_gguf`] would, without dequantising anything: the header,
/// metadata and tensor infos (each tensor inside the file), the architecture, tokenizer and
/// configuration, every tensor's name, shape and type against the configuration, and the
/// chat template (compiled when present; required when `needs_chat_template`).
pub fn check_file(path: &Path, needs_chat_template: bool) -> Result<()> {
    let file = GgufFile::open(path)?;
    let described = describe(&file).map_err(|e| e.at(path))?;
    tensors::plan(
        &file,
        described.arch,
        &described.cfg,
        &crate::layout::parameter_shapes(&described.cfg),
    )
    .map_err(|e| e.at(path))?;
    if needs_chat_template && described.chat_template.is_none() {
        return Err(ModelError::NoChatTemplate {
            path: path.to_path_buf(),
            looked_in: "no tokenizer.chat_template metadata",
        });
    }
    Ok(())
}

fn load(file: &GgufFile, opts: &LoadOptions) -> GgufResult<Model> {
    let Described {
        arch,
        vocab,
        cfg,
        chat_template,
    } = describe(file)?;
    let decoder = Decoder::build(&cfg, opts.dtype, opts.device, Init::Zeros)?;
    let params = decoder.var_store().variables();
    let shapes: std::collections::HashMap<String, Vec<i64>> =
        params.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    let loads = tensors::plan(file, arch, &cfg, &shapes)?;
    tensors::fill(file, &loads, &params)?;
    let generation = GenerationDefaults {
        eos_token_ids: stop_ids(&vocab),
        bos_token_id: vocab.bos,
        pad_token_id: vocab.pad,
        raw: json!({}),
        ..Default::default()
    };
    Ok(Model {
        decoder,
        tokenizer: vocab.tokenizer,
        chat_template,
        generation,
    })
}

/// The identity of a GGUF model in fingerprints: the hex blake3 hash of the file's bytes
/// (the same value `sspo_engine`'s content hasher gives the file).
pub fn gguf_identity(path: &Path) -> Result<String> {
    if !path.exists() {
        return Err(ModelError::MissingFile(path.to_path_buf()));
    }
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let bytes = mmap::FileBytes::new(&file).map_err(io)?;
    Ok(blake3::hash(bytes.as_slice()).to_hex().to_string())
}
