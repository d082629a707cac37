//! Named tiny architectures for tests and synthetic pipelines (random weights).

use serde_json::Map;

use crate::config::{Family, ModelConfig};
use crate::error::{ModelError, Result};

/// Names accepted by [`builtin_config`].
pub const BUILTIN_NAMES: &[&str] = &["tiny-synth", "tiny-test"];

/// The architecture of a built-in model, with the vocabulary size of the tokenizer it will use.
pub fn builtin_config(name: &str, vocab_size: i64) -> Result<ModelConfig> {
    // (hidden, layers, heads, kv heads, intermediate, max positions)
    let (h, layers, heads, kv, inter, max_pos) = match name {
        "tiny-synth" => (128, 4, 4, 2, 384, 1024),
        "tiny-test" => (64, 2, 4, 2, 128, 512),
        other => {
            return Err(ModelError::UnknownBuiltin(
                other.to_string(),
                BUILTIN_NAMES.join(", "),
            ))
        }
    };
    let cfg = ModelConfig {
        family: Family::Qwen2,
        model_type: "qwen2".into(),
        vocab_size,
        hidden_size: h,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: h / heads,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: max_pos,
        tie_word_embeddings: true,
        qkv_bias: true,
        o_bias: false,
        mlp_bias: false,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
        pad_token_id: None,
        torch_dtype: Some("float32".into()),
        raw: Map::new(),
    };
    cfg.validate()?;
    Ok(cfg)
}
