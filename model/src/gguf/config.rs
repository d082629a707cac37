//! The architecture and [`ModelConfig`] of a GGUF file, from its `{arch}.*` metadata.
//!
//! The configuration is written as the `config.json` transformers would have and parsed by
//! [`ModelConfig::from_json`], so validation (and what `save_dir` writes back) is the same as
//! for a Hugging Face directory.

use serde_json::{json, Value};

use super::error::{GgufError, GgufResult};
use super::metadata::{missing, Metadata};
use super::reader::GgufFile;
use super::tokenizer::Vocabulary;
use crate::config::ModelConfig;

/// `general.architecture` values this crate loads.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// A supported architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    /// The architecture of the file, or an error listing the supported ones.
    pub(crate) fn of(md: &Metadata) -> GgufResult<Self> {
        let key = "general.architecture";
        match md.string(key)?.ok_or_else(|| missing(key))? {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => Err(GgufError::UnsupportedArchitecture {
                arch: other.to_string(),
                supported: SUPPORTED_ARCHITECTURES.join(", "),
            }),
        }
    }

    /// The GGUF name, which is also transformers' `model_type`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// `{arch}.context_length`: the tokenizer's `model_max_length` as well.
pub(crate) fn context_length(md: &Metadata, arch: Arch) -> GgufResult<u64> {
    let key = format!("{}.context_length", arch.name());
    md.count(&key)?.ok_or_else(|| missing(&key))
}

/// The decoder configuration of `file`.
pub(crate) fn model_config(
    file: &GgufFile,
    arch: Arch,
    vocab: &Vocabulary,
) -> GgufResult<ModelConfig> {
    let md = file.metadata();
    let key = |k: &str| format!("{}.{k}", arch.name());
    let count = |k: &str| -> GgufResult<Option<u64>> { md.count(&key(k)) };
    let required = |k: &str| -> GgufResult<u64> { count(k)?.ok_or_else(|| missing(&key(k))) };

    let hidden = required("embedding_length")?;
    let heads = required("attention.head_count")?;
    let kv_heads = count("attention.head_count_kv")?.unwrap_or(heads);
    if let Some(experts) = count("expert_count")?.filter(|&n| n > 0) {
        return Err(GgufError::Unsupported(format!(
            "mixture-of-experts models are not supported ({} = {experts})",
            key("expert_count")
        )));
    }
    let head_dim = match count("attention.key_length")? {
        Some(d) => d,
        None if heads > 0 && hidden % heads == 0 => hidden / heads,
        None => {
            return Err(GgufError::BadValue {
                key: key("attention.head_count"),
                why: format!("{heads} heads do not divide the embedding length {hidden}"),
            })
        }
    };
    if let Some(v) = count("attention.value_length")?.filter(|&v| v != head_dim) {
        return Err(GgufError::Unsupported(format!(
            "value heads of {v} dimensions differ from key heads of {head_dim}"
        )));
    }
    if let Some(r) = count("rope.dimension_count")?.filter(|&r| r != head_dim) {
        return Err(GgufError::Unsupported(format!(
            "partial rotary embeddings are not supported ({} = {r}, head dimension {head_dim})",
            key("rope.dimension_count")
        )));
    }
    let eps_key = key("attention.layer_norm_rms_epsilon");
    let rms_norm_eps = md.float(&eps_key)?.ok_or_else(|| missing(&eps_key))?;
    let rope_theta = md.float(&key("rope.freq_base"))?.unwrap_or(10000.0);
    let has = |name: &str| file.tensor(name).is_some();
    let mut cfg = json!({
        "model_type": arch.name(),
        "vocab_size": vocab.n_tokens,
        "hidden_size": hidden,
        "intermediate_size": required("feed_forward_length")?,
        "num_hidden_layers": required("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": rms_norm_eps,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling(md, arch)?,
        "max_position_embeddings": context_length(md, arch)?,
        // llama.cpp reuses the embedding as the head when there is no output tensor.
        "tie_word_embeddings": !has("output.weight"),
        "bos_token_id": vocab.bos,
        "eos_token_id": vocab.eos,
    });
    if let Value::Object(m) = &mut cfg {
        if let Some(pad) = vocab.pad {
            m.insert("pad_token_id".into(), json!(pad));
        }
        match arch {
            Arch::Llama => {
                m.insert("attention_bias".into(), json!(has("blk.0.attn_q.bias")));
                m.insert("mlp_bias".into(), json!(has("blk.0.ffn_gate.bias")));
            }
            Arch::Qwen2 => {
                m.insert("use_sliding_window".into(), json!(false));
            }
        }
    }
    Ok(ModelConfig::from_json(&cfg)?)
}

/// `rope_scaling` of `config.json` from `{arch}.rope.scaling.*` (or the older
/// `{arch}.rope.scale_linear`): none or linear; other kinds are refused.
fn rope_scaling(md: &Metadata, arch: Arch) -> GgufResult<Value> {
    let key = |k: &str| format!("{}.{k}", arch.name());
    let kind_key = key("rope.scaling.type");
    let factor = match md.float(&key("rope.scaling.factor"))? {
        Some(f) => Some(f),
        None => md.float(&key("rope.scale_linear"))?,
    };
    let kind = md.string(&kind_key)?;
    // A factor of 0 or 1 means no scaling in llama.cpp; a factor alone means linear.
    let scaled = factor.filter(|&f| f != 0.0 && f != 1.0);
    let implied = if scaled.is_some() { "linear" } else { "none" };
    match kind.unwrap_or(implied) {
        "none" => Ok(Value::Null),
        "linear" => match scaled {
            None => Ok(Value::Null),
            Some(f) if f > 0.0 => Ok(json!({"rope_type": "linear", "factor": f})),
            Some(f) => Err(GgufError::BadValue {
                key: key("rope.scaling.factor"),
                why: format!("must be positive, got {f}"),
            }),
        },
        other => Err(GgufError::Unsupported(format!(
            "rope scaling {other:?} ({kind_key}) is not supported (supported: none, linear)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::metadata::MetaValue;

    fn metadata(pairs: &[(&str, MetaValue)]) -> Metadata {
        let mut md = Metadata::default();
        for (k, v) in pairs {
            md.insert(k.to_string(), v.clone()).unwrap();
        }
        md
    }

    #[test]
    fn rope_scaling_keys() {
        let s = |v: &str| MetaValue::String(v.into());
        let cases = [
            (vec![], Value::Null),
            (vec![("llama.rope.scaling.type", s("none"))], Value::Null),
            (
                vec![("llama.rope.scaling.factor", MetaValue::F32(1.0))],
                Value::Null,
            ),
            (
                vec![
                    ("llama.rope.scaling.type", s("linear")),
                    ("llama.rope.scaling.factor", MetaValue::F32(4.0)),
                ],
                json!({"rope_type": "linear", "factor": 4.0}),
            ),
            (
                vec![("llama.rope.scale_linear", MetaValue::F32(2.0))],
                json!({"rope_type": "linear", "factor": 2.0}),
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(
                rope_scaling(&metadata(&pairs), Arch::Llama).unwrap(),
                want,
                "{pairs:?}"
            );
        }
        let yarn = metadata(&[
            ("qwen2.rope.scaling.type", s("yarn")),
            ("qwen2.rope.scaling.factor", MetaValue::F32(4.0)),
        ]);
        let err = rope_scaling(&yarn, Arch::Qwen2).unwrap_err().to_string();
        assert!(
            err.contains("\"yarn\"") && err.contains("supported: none, linear"),
            "{err}"
        );
        let negative = metadata(&[("llama.rope.scaling.factor", MetaValue::F32(-2.0))]);
        assert!(rope_scaling(&negative, Arch::Llama).is_err());
    }

    #[test]
    fn architecture_errors_list_the_supported_ones() {
        let md = metadata(&[("general.architecture", MetaValue::String("phi3".into()))]);
        let err = Arch::of(&md).unwrap_err().to_string();
        assert_eq!(
            err,
            "architecture \"phi3\" is not supported (supported: llama, qwen2)"
        );
        let err = Arch::of(&Metadata::default()).unwrap_err().to_string();
        assert_eq!(err, "missing metadata key \"general.architecture\"");
        let md = metadata(&[("general.architecture", MetaValue::U32(1))]);
        let err = Arch::of(&md).unwrap_err().to_string();
        assert_eq!(
            err,
            "metadata key \"general.architecture\" must be a string, found uint32"
        );
    }
}
