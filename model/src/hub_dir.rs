//! A model as a HF directory: `config.json`, safetensors weights, tokenizer files,
//! `generation_config.json` and chat template, loaded together and saved so that
//! `transformers.AutoModelForCausalLM.from_pretrained(dir)` reads them back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::Device;

use crate::builtin::builtin_config;
use crate::chat::ChatTemplate;
use crate::config::{parse_token_ids, ModelConfig};
use crate::decoder::{Decoder, Init};
use crate::error::{read_json, write_json, ModelError, Result};
use crate::runtime::DType;
use crate::tokenizer::TextTokenizer;
use crate::weights;

/// Where the weights go and in which precision.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// Sampling defaults and stop ids from `generation_config.json`.
#[derive(Debug, Clone, Default)]
pub struct GenerationDefaults {
    pub eos_token_ids: Vec<i64>,
    pub bos_token_id: Option<i64>,
    pub pad_token_id: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    /// The raw file (empty object when absent), saved back with updated ids.
    pub raw: Value,
}

impl GenerationDefaults {
    fn from_json(v: &Value) -> Result<Self> {
        let id = |k: &str| v.get(k).and_then(Value::as_i64);
        Ok(GenerationDefaults {
            eos_token_ids: parse_token_ids(
                v.get("eos_token_id"),
                "generation_config eos_token_id",
            )?,
            bos_token_id: id("bos_token_id"),
            pad_token_id: id("pad_token_id"),
            temperature: v.get("temperature").and_then(Value::as_f64),
            top_p: v.get("top_p").and_then(Value::as_f64),
            top_k: id("top_k"),
            raw: v.clone(),
        })
    }

    fn to_json(&self) -> Value {
        let mut m = self.raw.as_object().cloned().unwrap_or_default();
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        m.insert("eos_token_id".into(), eos);
        if let Some(b) = self.bos_token_id {
            m.insert("bos_token_id".into(), json!(b));
        }
        if let Some(p) = self.pad_token_id {
            m.insert("pad_token_id".into(), json!(p));
        }
        m.entry("_from_model_config").or_insert(json!(true));
        Value::Object(m)
    }
}

/// A decoder with its tokenizer, chat template and generation defaults.
#[derive(Debug)]
pub struct Model {
    pub decoder: Decoder,
    pub tokenizer: TextTokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub generation: GenerationDefaults,
}

impl Model {
    /// Loads a HF model directory (e.g. a local copy of `Qwen/Qwen2.5-0.5B-Instruct`).
    pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let cfg = read_config(dir)?;
        let decoder = Decoder::build(&cfg, opts.dtype, opts.device, Init::Zeros)?;
        let params: HashMap<String, tch::Tensor> = decoder.var_store().variables();
        weights::load_into(dir, &params)?;
        let tokenizer = TextTokenizer::from_dir(dir)?;
        let chat_template = ChatTemplate::from_dir(dir, &tokenizer)?;
        let generation = read_generation(dir)?;
        Ok(Model {
            decoder,
            tokenizer,
            chat_template,
            generation,
        })
    }

    /// A built-in architecture (see [`crate::builtin::BUILTIN_NAMES`]) with random weights drawn
    /// from `seed`, using the tokenizer (and chat template) found in `tokenizer_dir`.
    pub fn builtin(
        name: &str,
        tokenizer_dir: &Path,
        opts: &LoadOptions,
        seed: u64,
    ) -> Result<Self> {
        let tokenizer = TextTokenizer::from_dir(tokenizer_dir)?;
        let chat_template = ChatTemplate::from_dir(tokenizer_dir, &tokenizer)?;
        let mut cfg = builtin_config(name, tokenizer.vocab_size() as i64)?;
        cfg.eos_token_ids = tokenizer.eos_token_id().into_iter().collect();
        cfg.bos_token_id = tokenizer.bos_token_id();
        cfg.torch_dtype = Some(opts.dtype.torch_name().into());
        let decoder = Decoder::random(&cfg, opts.dtype, opts.device, seed)?;
        let generation = GenerationDefaults {
            eos_token_ids: cfg.eos_token_ids.clone(),
            bos_token_id: cfg.bos_token_id,
            raw: json!({}),
            ..Default::default()
        };
        Ok(Model {
            decoder,
            tokenizer,
            chat_template,
            generation,
        })
    }

    /// Token ids that end a generation: `generation_config.json`, else `config.json`, else the
    /// tokenizer's `eos_token`.
    pub fn eos_token_ids(&self) -> Vec<i64> {
        if !self.generation.eos_token_ids.is_empty() {
            return self.generation.eos_token_ids.clone();
        }
        let cfg = &self.decoder.config().eos_token_ids;
        if !cfg.is_empty() {
            return cfg.clone();
        }
        self.tokenizer.eos_token_id().into_iter().collect()
    }

    /// Renders the chat template (see [`ChatTemplate::render`]).
    pub fn apply_chat_template(
        &self,
        messages: &Value,
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.chat_template
            .as_ref()
            .ok_or_else(|| ModelError::ChatTemplate("the model has no chat template".into()))?
            .render(messages, add_generation_prompt, None)
    }

    /// Writes a HF directory: `config.json`, `model.safetensors` (tied weights once),
    /// `tokenizer.json`, `tokenizer_config.json` (with the chat template) and
    /// `generation_config.json`.
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut cfg = self.decoder.config().clone();
        cfg.torch_dtype = Some(self.decoder.dtype().torch_name().into());
        write_json(&dir.join("config.json"), &cfg.to_json())?;
        weights::save_file(
            &dir.join(weights::SINGLE_FILE),
            &self.decoder.named_parameters(),
        )?;
        // A stale index from an earlier sharded save would shadow the new single file.
        remove_if_exists(&dir.join(weights::INDEX_FILE))?;
        let mut tok = self.tokenizer.clone();
        if let (Some(t), Value::Object(m)) = (&self.chat_template, &mut tok.config) {
            m.insert("chat_template".into(), json!(t.source()));
        }
        if let Value::Object(m) = &mut tok.config {
            m.entry("tokenizer_class")
                .or_insert(json!("PreTrainedTokenizerFast"));
        }
        tok.save(dir)?;
        // transformers prefers chat_template.jinja over tokenizer_config.json; drop a stale one.
        remove_if_exists(&dir.join("chat_template.jinja"))?;
        let mut gen = self.generation.clone();
        if gen.eos_token_ids.is_empty() {
            gen.eos_token_ids = self.eos_token_ids();
        }
        write_json(&dir.join(GENERATION_FILE), &gen.to_json())
    }
}

/// The `config.json` of a model directory.
pub(crate) fn read_config(dir: &Path) -> Result<ModelConfig> {
    ModelConfig::from_json(&read_json(&dir.join("config.json"))?)
}

/// The `generation_config.json` of a model directory (defaults when absent).
pub(crate) fn read_generation(dir: &Path) -> Result<GenerationDefaults> {
    let path = dir.join(GENERATION_FILE);
    if !path.exists() {
        return Ok(GenerationDefaults {
            raw: json!({}),
            ..Default::default()
        });
    }
    GenerationDefaults::from_json(&read_json(&path)?)
}

pub(crate) const GENERATION_FILE: &str = "generation_config.json";

fn remove_if_exists(path: &Path) -> Result<()> {
    if path.exists() {
        std::fs::remove_file(path).map_err(|source| ModelError::Io {
            path: PathBuf::from(path),
            source,
        })?;
    }
    Ok(())
}
