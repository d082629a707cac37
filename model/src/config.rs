//! Architecture description parsed from (and written back to) HF `config.json`.

use serde_json::{json, Map, Value};

use crate::error::{ModelError, Result};

/// Model families that share the decoder implemented in [`crate::decoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Qwen2 / Qwen2.5: q/k/v projections always carry a bias, o_proj never.
    Qwen2,
    /// Llama 2/3 and Mistral-style configs: biases controlled by `attention_bias` / `mlp_bias`.
    Llama,
}

/// RoPE frequency scaling variants accepted in `rope_scaling`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `rope_type: linear`: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// `rope_type: llama3` (Llama 3.1+): wavelength-dependent smooth interpolation.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: i64,
    },
}

/// Hyper-parameters of a Qwen2/Llama decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    /// The original `model_type` string (`qwen2`, `llama`, `mistral`), written back on save.
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection (Llama `attention_bias`).
    pub o_bias: bool,
    /// Bias on gate/up/down projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
    /// `torch_dtype` as written in the file (`float32`, `bfloat16`, ...), if any.
    pub torch_dtype: Option<String>,
    /// Every key of the source file, so that saving keeps fields this crate does not model.
    pub raw: Map<String, Value>,
}

fn get<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn req_i64(m: &Map<String, Value>, key: &str) -> Result<i64> {
    let v = get(m, key).ok_or_else(|| ModelError::Config(format!("missing field {key:?}")))?;
    v.as_i64()
        .ok_or_else(|| ModelError::Config(format!("field {key:?} must be an integer, got {v}")))
}

fn opt_i64(m: &Map<String, Value>, key: &str) -> Result<Option<i64>> {
    match get(m, key) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            ModelError::Config(format!("field {key:?} must be an integer, got {v}"))
        }),
    }
}

fn opt_f64(m: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match get(m, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ModelError::Config(format!("field {key:?} must be a number, got {v}"))),
    }
}

fn opt_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match get(m, key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| ModelError::Config(format!("field {key:?} must be a boolean, got {v}"))),
    }
}

/// `eos_token_id` may be an int or a list of ints (Llama 3).
pub(crate) fn parse_token_ids(v: Option<&Value>, what: &str) -> Result<Vec<i64>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(|i| vec![i])
            .ok_or_else(|| ModelError::Config(format!("{what} must be an integer, got {n}"))),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_i64().ok_or_else(|| {
                    ModelError::Config(format!("{what} must hold integers, got {i}"))
                })
            })
            .collect(),
        Some(other) => Err(ModelError::Config(format!(
            "{what} must be an integer or a list of integers, got {other}"
        ))),
    }
}

fn parse_rope_scaling(m: &Map<String, Value>) -> Result<Option<RopeScaling>> {
    let Some(v) = get(m, "rope_scaling") else {
        return Ok(None);
    };
    let s = v
        .as_object()
        .ok_or_else(|| ModelError::Config(format!("rope_scaling must be an object, got {v}")))?;
    // transformers accepts both keys; `rope_type` is the current one.
    let kind = get(s, "rope_type")
        .or_else(|| get(s, "type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = |key: &str| -> Result<f64> {
        opt_f64(s, key)?
            .ok_or_else(|| ModelError::Config(format!("rope_scaling of type {kind} needs {key:?}")))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: factor("factor")?,
        })),
        "llama3" => {
            let original = match opt_i64(s, "original_max_position_embeddings")? {
                Some(v) => v,
                None => req_i64(m, "max_position_embeddings")?,
            };
            let scaling = RopeScaling::Llama3 {
                factor: factor("factor")?,
                low_freq_factor: factor("low_freq_factor")?,
                high_freq_factor: factor("high_freq_factor")?,
                original_max_position_embeddings: original,
            };
            if let RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                ..
            } = scaling
            {
                if high_freq_factor <= low_freq_factor {
                    return Err(ModelError::Config(
                        "rope_scaling llama3 needs high_freq_factor > low_freq_factor".into(),
                    ));
                }
            }
            Ok(Some(scaling))
        }
        other => Err(ModelError::Config(format!(
            "unsupported rope_scaling type {other:?} (supported: default, linear, llama3)"
        ))),
    }
}

impl ModelConfig {
    /// Parses the contents of a HF `config.json`.
    pub fn from_json(value: &Value) -> Result<Self> {
        let m = value
            .as_object()
            .ok_or_else(|| ModelError::Config("config.json must hold a JSON object".into()))?;
        let model_type = get(m, "model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::Config("missing field \"model_type\"".into()))?
            .to_string();
        let family = match model_type.as_str() {
            "qwen2" => Family::Qwen2,
            "llama" | "mistral" => Family::Llama,
            other => return Err(ModelError::UnknownModelType(other.to_string())),
        };
        if let Some(act) = get(m, "hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(ModelError::Config(format!(
                    "hidden_act {act:?} is not supported (only silu)"
                )));
            }
        }
        if family == Family::Qwen2 && opt_bool(m, "use_sliding_window")?.unwrap_or(false) {
            return Err(ModelError::Config(
                "use_sliding_window=true is not supported".into(),
            ));
        }
        if model_type == "mistral" && get(m, "sliding_window").is_some() {
            return Err(ModelError::Config(
                "mistral sliding_window attention is not supported (set it to null)".into(),
            ));
        }
        let hidden_size = req_i64(m, "hidden_size")?;
        let num_attention_heads = req_i64(m, "num_attention_heads")?;
        let num_key_value_heads = opt_i64(m, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match opt_i64(m, "head_dim")? {
            Some(d) => d,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => 0,
        };
        let (qkv_bias, o_bias, mlp_bias) = match family {
            Family::Qwen2 => (true, false, false),
            Family::Llama => {
                let attn = opt_bool(m, "attention_bias")?.unwrap_or(false);
                (attn, attn, opt_bool(m, "mlp_bias")?.unwrap_or(false))
            }
        };
        let cfg = ModelConfig {
            family,
            model_type,
            vocab_size: req_i64(m, "vocab_size")?,
            hidden_size,
            intermediate_size: req_i64(m, "intermediate_size")?,
            num_hidden_layers: req_i64(m, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: opt_f64(m, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: opt_f64(m, "rope_theta")?.unwrap_or(10000.0),
            rope_scaling: parse_rope_scaling(m)?,
            max_position_embeddings: opt_i64(m, "max_position_embeddings")?.unwrap_or(32768),
            tie_word_embeddings: opt_bool(m, "tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias,
            bos_token_id: opt_i64(m, "bos_token_id")?,
            eos_token_ids: parse_token_ids(get(m, "eos_token_id"), "eos_token_id")?,
            pad_token_id: opt_i64(m, "pad_token_id")?,
            torch_dtype: get(m, "torch_dtype")
                .or_else(|| get(m, "dtype"))
                .and_then(Value::as_str)
                .map(str::to_string),
            raw: m.clone(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the sizes are positive and consistent with each other.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v <= 0 {
                return Err(ModelError::Config(format!("{name} must be > 0, got {v}")));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(ModelError::Config(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(ModelError::Config(format!(
                "head_dim must be even for RoPE, got {}",
                self.head_dim
            )));
        }
        if self.rms_norm_eps <= 0.0 || self.rope_theta <= 0.0 {
            return Err(ModelError::Config(
                "rms_norm_eps and rope_theta must be > 0".into(),
            ));
        }
        Ok(())
    }

    /// Query heads per key/value head (GQA group size).
    pub fn gqa_groups(&self) -> i64 {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Serialises to a `config.json` that transformers accepts. Keys of the source file that
    /// this crate does not model are kept; the modelled ones are overwritten.
    pub fn to_json(&self) -> Value {
        let mut m = self.raw.clone();
        let arch = match self.family {
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Llama if self.model_type == "mistral" => "MistralForCausalLM",
            Family::Llama => "LlamaForCausalLM",
        };
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let rope_scaling = match &self.rope_scaling {
            None => Value::Null,
            Some(RopeScaling::Linear { factor }) => {
                json!({"rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        let fields = [
            ("architectures", json!([arch])),
            ("model_type", json!(self.model_type)),
            ("vocab_size", json!(self.vocab_size)),
            ("hidden_size", json!(self.hidden_size)),
            ("intermediate_size", json!(self.intermediate_size)),
            ("num_hidden_layers", json!(self.num_hidden_layers)),
            ("num_attention_heads", json!(self.num_attention_heads)),
            ("num_key_value_heads", json!(self.num_key_value_heads)),
            ("head_dim", json!(self.head_dim)),
            ("hidden_act", json!("silu")),
            ("rms_norm_eps", json!(self.rms_norm_eps)),
            ("rope_theta", json!(self.rope_theta)),
            ("rope_scaling", rope_scaling),
            (
                "max_position_embeddings",
                json!(self.max_position_embeddings),
            ),
            ("tie_word_embeddings", json!(self.tie_word_embeddings)),
            ("bos_token_id", json!(self.bos_token_id)),
            ("eos_token_id", eos),
            ("torch_dtype", json!(self.torch_dtype)),
        ];
        for (k, v) in fields {
            m.insert(k.to_string(), v);
        }
        if self.pad_token_id.is_some() {
            m.insert("pad_token_id".into(), json!(self.pad_token_id));
        }
        if self.family == Family::Llama {
            m.insert("attention_bias".into(), json!(self.qkv_bias));
            m.insert("mlp_bias".into(), json!(self.mlp_bias));
        } else {
            m.entry("use_sliding_window").or_insert(json!(false));
        }
        Value::Object(m)
    }
}
