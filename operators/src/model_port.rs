//! Loading the model bound to a `model` port.
//!
//! * `models: {base: {path: DIR}}` or a `train` node's artifact arrive as
//!   [`ModelSource::Dir`]: a Hugging Face directory, loaded with [`Model::load_dir`].
//! * `models: {base: {path: FILE.gguf}}` arrives as [`ModelSource::Gguf`]: a llama.cpp
//!   GGUF file, dequantised on load with [`Model::load_gguf`].
//! * `models: {base: {builtin: NAME}}` arrives as [`ModelSource::Builtin`]: a tiny
//!   architecture with random weights ([`Model::builtin`]), paired with a tokenizer
//!   written for it (`tiny-synth`: the synthetic task's tokenizer,
//!   [`crate::tasks::synth::write_tokenizer`]; `tiny-test`: a byte-level tokenizer,
//!   [`write_byte_tokenizer`]). Random weights are only useful for
//!   tests and as the starting point of `train`.
//!
//! dtype: the `dtype` key of the `models:` entry (`fp32`, `bf16`, `fp16`) when written;
//! otherwise the directory's `config.json` `torch_dtype` on CUDA and fp32 on the CPU
//! (bf16 on a CPU without native support is slow, and fp16 gains nothing there).
//! Built-in and GGUF models default to fp32 everywhere (a GGUF file's quantised blocks
//! have no torch dtype; they are dequantised to f32 and stored in the chosen dtype).
//!
//! [`LazyModel`] loads a port's model on the first chunk that needs it.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};
use sspo_engine::{CpuSpec, ModelRef, ModelSource, OpError, RunContext};
use sspo_model::{
    parse_device, CpuSettings, DType, LoadOptions, Model, ModelError, ModelText, TextTokenizer,
};
use tch::Device;

use crate::backend::TextView;

/// Applies a pipeline's `cpu:` settings (thread count, pinned instruction set) to this
/// process. It must run before any model work: libtorch reads the instruction set once,
/// on its first kernel call ([`sspo_model::cpu`]).
pub fn configure_cpu(spec: &CpuSpec) -> Result<(), OpError> {
    let isa = spec.isa.parse().map_err(OpError::source)?;
    sspo_model::configure_cpu(&CpuSettings {
        threads: spec.threads,
        isa,
    })
    .map_err(OpError::source)
}

/// Loads the model of a port on `device` (`auto | cpu | cuda | cuda:N`).
pub fn load_model(model: &ModelRef, device: &str) -> Result<Model, OpError> {
    let dev = parse_device(device)
        .map_err(|e| OpError::context(format!("model `{}`: device {device:?}", model.name), e))?;
    let dtype = choose_dtype(model, dev)?;
    let opts = LoadOptions { dtype, device: dev };
    match &model.source {
        ModelSource::Dir(dir) => load_dir(model, dir, &opts),
        ModelSource::Gguf(file) => load_gguf(model, file, &opts),
        ModelSource::Builtin(name) => load_builtin(model, name, &opts),
        ModelSource::Server(spec) => Err(OpError::msg(format!(
            "model `{}` is an inference server ({}): this node needs local weights",
            model.name, spec.url
        ))),
    }
}

/// [`load_model`] for a model whose weights stay fixed (`generate`, `probe`, `evaluate`):
/// fp32 CPU weights are also packed for MKL ([`sspo_model::Decoder::pack_for_inference`]),
/// which speeds up decoding a few sequences at a time. Never for a model being trained.
pub fn load_inference_model(model: &ModelRef, device: &str) -> Result<Model, OpError> {
    let mut m = load_model(model, device)?;
    m.decoder
        .pack_for_inference()
        .map_err(|e| OpError::context(format!("model `{}`: packing weights", model.name), e))?;
    Ok(m)
}

/// A model loaded when it is first needed. Operators that work in chunks ask for it in
/// each chunk, so it is loaded by the first chunk that still has to be computed: a fully
/// cached or fully resumed node never reads the weights. `T` is what `load(model,
/// device)` makes of a port's model (the model, or the model with what the operator
/// derives from it). Asking for another model drops the one held before loading it, so
/// two models never share memory (`evaluate` runs its models one after another).
pub struct LazyModel<T, F> {
    device: String,
    load: F,
    held: Option<(ModelRef, T)>,
}

impl<T, F> LazyModel<T, F>
where
    F: FnMut(&ModelRef, &str) -> Result<T, OpError>,
{
    /// Nothing loaded yet; models will be loaded on `device`.
    pub fn new(device: impl Into<String>, load: F) -> Self {
        LazyModel {
            device: device.into(),
            load,
            held: None,
        }
    }

    /// `model`, loaded (and logged as `loading model `NAME``) unless it is the one held.
    pub fn get(&mut self, ctx: &RunContext, model: &ModelRef) -> Result<&T, OpError> {
        if self.held.as_ref().is_none_or(|(m, _)| m != model) {
            // Free the previous model before loading the next.
            self.held = None;
            ctx.log(&format!("loading model `{}`", model.name));
            let loaded = (self.load)(model, &self.device)?;
            self.held = Some((model.clone(), loaded));
        }
        self.held
            .as_ref()
            .map(|(_, loaded)| loaded)
            .ok_or_else(|| OpError::internal("model not loaded"))
    }
}

/// The seed of a built-in model's random weights: a function of its name only, so every
/// node (and every run) that names the same built-in model gets the same weights, and the
/// model's identity in fingerprints (name and options) fully determines them.
pub fn builtin_seed(name: &str) -> u64 {
    sspo_common::rng::blake3_u64(&blake3::hash(
        format!("sspo builtin model {name}").as_bytes(),
    ))
}

fn choose_dtype(model: &ModelRef, dev: Device) -> Result<DType, OpError> {
    if let Some(v) = model.options.get("dtype") {
        let s = v.as_str().ok_or_else(|| {
            OpError::msg(format!(
                "model `{}`: `dtype` must be a string (fp32, bf16, fp16), found {v}",
                model.name
            ))
        })?;
        return DType::from_str(s)
            .map_err(|e| OpError::context(format!("model `{}`", model.name), e));
    }
    if dev == Device::Cpu {
        return Ok(DType::F32);
    }
    match &model.source {
        ModelSource::Dir(dir) => Ok(config_dtype(&dir.join("config.json")).unwrap_or(DType::F32)),
        ModelSource::Builtin(_) | ModelSource::Gguf(_) | ModelSource::Server(_) => Ok(DType::F32),
    }
}

/// `torch_dtype` of a `config.json`, when it names one we run.
fn config_dtype(path: &Path) -> Option<DType> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let name = v
        .get("torch_dtype")
        .or_else(|| v.get("dtype"))
        .and_then(Value::as_str)?;
    DType::from_str(name).ok()
}

fn load_dir(model: &ModelRef, dir: &Path, opts: &LoadOptions) -> Result<Model, OpError> {
    let who = format!("model `{}` ({})", model.name, dir.display());
    if !dir.is_dir() {
        return Err(OpError::msg(format!("{who}: no such directory")));
    }
    for f in ["config.json", "tokenizer.json"] {
        if !dir.join(f).is_file() {
            return Err(OpError::msg(format!("{who}: missing {f}")));
        }
    }
    let has_weights = dir.join("model.safetensors").is_file()
        || dir.join("model.safetensors.index.json").is_file();
    if !has_weights {
        return Err(OpError::msg(format!(
            "{who}: missing weights (model.safetensors or model.safetensors.index.json)"
        )));
    }
    Model::load_dir(dir, opts).map_err(|e| OpError::context(who, e))
}

fn load_gguf(model: &ModelRef, file: &Path, opts: &LoadOptions) -> Result<Model, OpError> {
    // The GGUF error names the file; the context names the port's model.
    Model::load_gguf(file, opts).map_err(|e| OpError::context(format!("model `{}`", model.name), e))
}

fn load_builtin(model: &ModelRef, name: &str, opts: &LoadOptions) -> Result<Model, OpError> {
    let who = format!("model `{}` (builtin {name})", model.name);
    let dir = builtin_tokenizer_dir(&who, name)?;
    Model::builtin(name, dir.path(), opts, builtin_seed(name)).map_err(|e| OpError::context(who, e))
}

/// A temporary directory holding the tokenizer files of built-in model `name`.
fn builtin_tokenizer_dir(who: &str, name: &str) -> Result<TempDir, OpError> {
    let dir = TempDir::new("builtin-tokenizer")
        .map_err(|e| OpError::context(format!("{who}: temporary directory"), e))?;
    match name {
        "tiny-test" => write_byte_tokenizer(dir.path())
            .map_err(|e| OpError::context(format!("{who}: writing its tokenizer"), e))?,
        _ => write_task_tokenizer(name, dir.path()).map_err(|e| OpError::context(who, e))?,
    }
    Ok(dir)
}

/// Only the tokenizer of the model on a port (no weights are read): for operators that
/// count tokens, such as `segment`.
pub fn load_tokenizer(model: &ModelRef) -> Result<TextTokenizer, OpError> {
    match &model.source {
        ModelSource::Dir(dir) => {
            let who = format!("model `{}` ({})", model.name, dir.display());
            if !dir.join("tokenizer.json").is_file() {
                return Err(OpError::msg(format!("{who}: missing tokenizer.json")));
            }
            TextTokenizer::from_dir(dir).map_err(|e| OpError::context(who, e))
        }
        ModelSource::Builtin(name) => {
            let who = format!("model `{}` (builtin {name})", model.name);
            let dir = builtin_tokenizer_dir(&who, name)?;
            TextTokenizer::from_dir(dir.path()).map_err(|e| OpError::context(who, e))
        }
        ModelSource::Gguf(file) => TextTokenizer::from_gguf(file)
            .map_err(|e| OpError::context(format!("model `{}`", model.name), e)),
        ModelSource::Server(spec) => {
            let path = &spec.tokenizer;
            let text = if ModelSource::is_gguf_path(path) {
                ModelText::from_gguf(path)
            } else {
                ModelText::from_dir(path)
            };
            text.map(|t| t.tokenizer).map_err(|e| {
                OpError::context(
                    format!("model `{}` (tokenizer {})", model.name, path.display()),
                    e,
                )
            })
        }
    }
}

/// The tokenizer of a built-in model other than `tiny-test`.
fn write_task_tokenizer(name: &str, dir: &Path) -> Result<(), String> {
    match name {
        "tiny-synth" => crate::tasks::synth::write_tokenizer(dir)
            .map(|_| ())
            .map_err(|e| format!("writing the synthetic task's tokenizer: {e}")),
        other => Err(format!(
            "unknown built-in model `{other}` (known: {})",
            sspo_model::builtin::BUILTIN_NAMES.join(", ")
        )),
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> std::io::Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "sspo-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// ChatML, as used by Qwen2 instruct models.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Words that get a single token in the byte-level tokenizer (with and without a leading
/// space), so the verbal probe's yes / no forms exist.
const BYTE_TOKENIZER_WORDS: &[&str] = &["Yes", "yes", "No", "no"];

/// Writes the `tiny-test` tokenizer into `dir`: byte-level BPE with one token per byte
/// (ids 0-255), single tokens for `Yes`, `yes`, `No`, `no` and their space-prefixed forms,
/// then `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` (the eos token), and a ChatML
/// `tokenizer_config.json`. Any text round-trips through it.
pub fn write_byte_tokenizer(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let table = sspo_model::tokenizer::gpt2_byte_chars();
    let mut vocab = serde_json::Map::new();
    for (i, c) in table.iter().enumerate() {
        vocab.insert(c.to_string(), json!(i));
    }
    let space = table[b' ' as usize];
    let mut merges: Vec<String> = Vec::new();
    let add = |tok: String, vocab: &mut serde_json::Map<String, Value>| {
        if !vocab.contains_key(&tok) {
            let id = vocab.len();
            vocab.insert(tok, json!(id));
        }
    };
    for w in BYTE_TOKENIZER_WORDS {
        let chars: Vec<char> = w.chars().collect();
        let mut acc = chars[0].to_string();
        for c in &chars[1..] {
            merges.push(format!("{acc} {c}"));
            acc.push(*c);
            add(acc.clone(), &mut vocab);
        }
        merges.push(format!("{space} {acc}"));
        add(format!("{space}{acc}"), &mut vocab);
    }
    let first_special = vocab.len();
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": first_special + i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string())?;
    let cfg = json!({
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": null,
        "chat_template": CHATML_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"
    });
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string())
}

/// The text a model is fed for `prompt`: `prompt_template` (with `{prompt}` replaced),
/// then, with `chat_template`, the model's chat template around one user message with
/// the generation prompt. Without the chat template, a BOS token that the tokenizer's
/// post-processor would add is written out as text, so that the returned string,
/// tokenised **without** special tokens, is exactly the model's input.
pub fn render_context(
    model: &Model,
    prompt: &str,
    prompt_template: &str,
    chat_template: bool,
) -> Result<String, ModelError> {
    render_text_context(
        &TextView::of_model(model),
        prompt,
        prompt_template,
        chat_template,
    )
}

/// [`render_context`] for any model's text side (local weights or a server).
pub fn render_text_context(
    model: &TextView<'_>,
    prompt: &str,
    prompt_template: &str,
    chat_template: bool,
) -> Result<String, ModelError> {
    let text = prompt_template.replace("{prompt}", prompt);
    if chat_template {
        let messages = json!([{"role": "user", "content": text}]);
        return model
            .chat_template
            .ok_or_else(|| ModelError::ChatTemplate("the model has no chat template".into()))?
            .render(&messages, true, None);
    }
    match bos_prefix(model.tokenizer) {
        Some(bos) if !text.starts_with(&bos) => Ok(format!("{bos}{text}")),
        _ => Ok(text),
    }
}

/// The BOS token text when the tokenizer adds one on its own.
fn bos_prefix(tokenizer: &TextTokenizer) -> Option<String> {
    let bos_text = tokenizer.special_token("bos_token")?;
    let bos = tokenizer.token_to_id(&bos_text)?;
    let with = tokenizer.encode("a", true).ok()?;
    (with.first() == Some(&bos)).then_some(bos_text)
}

/// Tokenises a rendered context (no special tokens added: they are in the text).
pub fn encode_context(model: &Model, context: &str) -> Result<Vec<i64>, ModelError> {
    model.tokenizer.encode(context, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_has_single_token_yes_no_and_round_trips() {
        let dir = TempDir::new("tok-test").unwrap();
        write_byte_tokenizer(dir.path()).unwrap();
        let tok = sspo_model::TextTokenizer::from_dir(dir.path()).unwrap();
        for w in [" Yes", "Yes", " yes", " No", "No", " no"] {
            assert_eq!(tok.encode(w, false).unwrap().len(), 1, "{w:?}");
        }
        let text = "Q: 2+3 = ?\n\nStep 1 — ünïcode ✓. The answer is 5.";
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
        assert!(tok.eos_token_id().is_some());
    }

    #[test]
    fn builtin_seed_depends_on_name_only() {
        assert_eq!(builtin_seed("tiny-test"), builtin_seed("tiny-test"));
        assert_ne!(builtin_seed("tiny-test"), builtin_seed("tiny-synth"));
    }

    #[test]
    fn builtin_models_load_with_their_tokenizers() {
        let r = |name: &str| ModelRef {
            name: "base".into(),
            source: ModelSource::Builtin(name.into()),
            options: Default::default(),
            identity: String::new(),
        };
        let synth = load_model(&r("tiny-synth"), "cpu").unwrap();
        assert_eq!(synth.decoder.config().hidden_size, 128);
        assert!(!synth.eos_token_ids().is_empty());
        let err = load_model(&r("tiny-huge"), "cpu").unwrap_err().to_string();
        assert!(err.contains("unknown built-in model `tiny-huge`"), "{err}");
        let mut bad = r("tiny-test");
        bad.options.insert("dtype".into(), json!("fp8"));
        let err = load_model(&bad, "cpu").unwrap_err().to_string();
        assert!(err.contains("model `base`") && err.contains("fp8"), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let dir = TempDir::new("bad-model").unwrap();
        let r = ModelRef {
            name: "mine".into(),
            source: ModelSource::Dir(dir.path().to_path_buf()),
            options: Default::default(),
            identity: String::new(),
        };
        let err = load_model(&r, "cpu").unwrap_err().to_string();
        assert!(
            err.contains("model `mine`") && err.contains("missing config.json"),
            "{err}"
        );
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let err = load_model(&r, "cpu").unwrap_err().to_string();
        assert!(err.contains("missing tokenizer.json"), "{err}");
        write_byte_tokenizer(dir.path()).unwrap();
        let err = load_model(&r, "cpu").unwrap_err().to_string();
        assert!(err.contains("missing weights"), "{err}");
    }
}
