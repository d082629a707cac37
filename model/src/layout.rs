//! The decoder's parameters, by transformers name, with the shapes a [`ModelConfig`]
//! implies: what [`Decoder`](crate::Decoder) creates, known without allocating it, so a
//! checkpoint's headers can be checked against a config before any weight is read.

use std::collections::HashMap;

use crate::config::ModelConfig;

/// Every parameter of the decoder `cfg` describes, with its shape. A tied head has no
/// `lm_head.weight` of its own (it is the embedding), as in the decoder's var store.
pub fn parameter_shapes(cfg: &ModelConfig) -> HashMap<String, Vec<i64>> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let mut out = HashMap::new();
    out.insert("model.embed_tokens.weight".into(), vec![v, h]);
    out.insert("model.norm.weight".into(), vec![h]);
    if !cfg.tie_word_embeddings {
        out.insert("lm_head.weight".into(), vec![v, h]);
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.insert(format!("{p}.input_layernorm.weight"), vec![h]);
        out.insert(format!("{p}.post_attention_layernorm.weight"), vec![h]);
        let linears = [
            ("self_attn.q_proj", q, h, cfg.qkv_bias),
            ("self_attn.k_proj", kv, h, cfg.qkv_bias),
            ("self_attn.v_proj", kv, h, cfg.qkv_bias),
            ("self_attn.o_proj", h, q, cfg.o_bias),
            ("mlp.gate_proj", i, h, cfg.mlp_bias),
            ("mlp.up_proj", i, h, cfg.mlp_bias),
            ("mlp.down_proj", h, i, cfg.mlp_bias),
        ];
        for (name, rows, cols, bias) in linears {
            out.insert(format!("{p}.{name}.weight"), vec![rows, cols]);
            if bias {
                out.insert(format!("{p}.{name}.bias"), vec![rows]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::builtin_config;
    use crate::{DType, Decoder, Family};

    /// The layout is a second description of what `Decoder::build` creates: it must list
    /// exactly the decoder's parameters, for every kind of config (tied or not, biases on
    /// attention and mlp, grouped-query attention, an explicit head_dim).
    #[test]
    fn matches_the_decoders_parameters() {
        let qwen = builtin_config("tiny-test", 300).unwrap();
        let mut untied = qwen.clone();
        untied.tie_word_embeddings = false;
        let mut llama = qwen.clone();
        llama.family = Family::Llama;
        llama.model_type = "llama".into();
        llama.qkv_bias = true;
        llama.o_bias = true;
        llama.mlp_bias = true;
        llama.head_dim = 8;
        llama.tie_word_embeddings = false;
        for cfg in [qwen, untied, llama] {
            let dec = Decoder::random(&cfg, DType::F32, tch::Device::Cpu, 0).unwrap();
            let built: HashMap<String, Vec<i64>> = dec
                .var_store()
                .variables()
                .into_iter()
                .map(|(k, t)| (k, t.size()))
                .collect();
            assert_eq!(parameter_shapes(&cfg), built, "{cfg:?}");
        }
    }
}
