//! GGUF tensor names and the decoder's (transformers') parameter names, and filling the
//! decoder's parameters with the dequantised tensors.

use std::collections::{HashMap, HashSet};

use tch::Tensor;

use super::config::Arch;
use super::dequant::check_supported;
use super::error::{GgufError, GgufResult};
use super::reader::{GgufFile, TensorInfo};
use crate::config::ModelConfig;

/// Tensors outside the blocks: (GGUF name, parameter name).
const GLOBAL: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Tensors of block N (`blk.N.` / `model.layers.N.`): (GGUF suffix, parameter suffix).
const PER_LAYER: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_gate.bias", "mlp.gate_proj.bias"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_up.bias", "mlp.up_proj.bias"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
    ("ffn_down.bias", "mlp.down_proj.bias"),
];

const GGUF_BLOCK: &str = "blk.";
const HF_BLOCK: &str = "model.layers.";

/// Maps a GGUF name to a parameter name (`to_param`) or back.
fn rename(name: &str, to_param: bool) -> Option<String> {
    let pick = |&(g, h): &(&'static str, &'static str)| if to_param { (g, h) } else { (h, g) };
    let (from_block, to_block) = if to_param {
        (GGUF_BLOCK, HF_BLOCK)
    } else {
        (HF_BLOCK, GGUF_BLOCK)
    };
    if let Some((_, to)) = GLOBAL.iter().map(pick).find(|(from, _)| *from == name) {
        return Some(to.to_string());
    }
    let (layer, part) = name.strip_prefix(from_block)?.split_once('.')?;
    layer.parse::<u32>().ok()?;
    let (_, to) = PER_LAYER.iter().map(pick).find(|(from, _)| *from == part)?;
    Some(format!("{to_block}{layer}.{to}"))
}

/// The decoder parameter a GGUF tensor fills.
pub(crate) fn parameter_name(gguf: &str) -> Option<String> {
    rename(gguf, true)
}

/// The GGUF tensor that fills a decoder parameter.
pub(crate) fn gguf_name(param: &str) -> Option<String> {
    rename(param, false)
}

/// One tensor to copy into one parameter.
pub(crate) struct Load<'f> {
    param: String,
    info: &'f TensorInfo,
    /// llama.cpp permuted the rows of this rotary projection per head; heads to undo it with.
    rotary_heads: Option<i64>,
}

/// Matches every tensor of `file` with a parameter of `expected` (name to shape: same
/// shape, a type that dequantises) and checks that every parameter gets one, before
/// anything is dequantised.
pub(crate) fn plan<'f>(
    file: &'f GgufFile,
    arch: Arch,
    cfg: &ModelConfig,
    expected: &HashMap<String, Vec<i64>>,
) -> GgufResult<Vec<Load<'f>>> {
    let mut loads = Vec::with_capacity(expected.len());
    for info in file.tensors() {
        let (param, shape) = parameter_name(&info.name)
            .and_then(|p| expected.get_key_value(&p))
            .ok_or_else(|| unexpected(info, arch))?;
        if &info.shape() != shape {
            return Err(GgufError::ShapeMismatch {
                tensor: info.name.clone(),
                expected: shape.clone(),
                found: info.shape(),
            });
        }
        let param = param.clone();
        check_supported(info)?;
        let rotary_heads = match arch {
            Arch::Llama if param.contains(".self_attn.q_proj.") => Some(cfg.num_attention_heads),
            Arch::Llama if param.contains(".self_attn.k_proj.") => Some(cfg.num_key_value_heads),
            _ => None,
        };
        loads.push(Load {
            param,
            info,
            rotary_heads,
        });
    }
    let covered: HashSet<&str> = loads.iter().map(|l| l.param.as_str()).collect();
    let mut absent: Vec<&String> = expected
        .keys()
        .filter(|p| !covered.contains(p.as_str()))
        .collect();
    absent.sort();
    match absent.first() {
        Some(p) => Err(GgufError::MissingTensor {
            tensor: gguf_name(p).unwrap_or_else(|| p.to_string()),
        }),
        None => Ok(loads),
    }
}

fn unexpected(info: &TensorInfo, arch: Arch) -> GgufError {
    let hint = if info.name == "rope_freqs.weight" {
        ": it holds per-frequency rope scaling factors (Llama 3.1 style), which are not supported"
    } else {
        ""
    };
    GgufError::UnexpectedTensor {
        tensor: info.name.clone(),
        arch: arch.name().to_string(),
        hint: hint.to_string(),
    }
}

/// Dequantises each planned tensor and copies it into its parameter (converting to the
/// parameter's dtype and device). One tensor is in f32 memory at a time.
pub(crate) fn fill(
    file: &GgufFile,
    loads: &[Load<'_>],
    params: &HashMap<String, Tensor>,
) -> GgufResult<()> {
    for load in loads {
        let values = file.dequantize_info(load.info)?;
        let mut t = Tensor::f_from_slice(&values)?.f_view(load.info.shape().as_slice())?;
        if let Some(heads) = load.rotary_heads {
            t = unpermute_rotary(&t, heads)?;
        }
        tch::no_grad(|| params[&load.param].shallow_clone().f_copy_(&t))?;
    }
    Ok(())
}

/// llama.cpp's converter reorders the rows of each head of the llama Q and K projections
/// (weights and biases) so that the two rotary halves interleave (`permute` in
/// `convert_hf_to_gguf.py`); this puts them back, as transformers' GGUF loader does.
pub(crate) fn unpermute_rotary(t: &Tensor, heads: i64) -> Result<Tensor, tch::TchError> {
    let size = t.size();
    let half_dim = size[0] / heads / 2;
    t.f_reshape([heads, half_dim, 2, -1])?
        .f_transpose(1, 2)?
        .f_reshape(size.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (g, h) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output.weight", "lm_head.weight"),
            ("blk.0.attn_q.bias", "model.layers.0.self_attn.q_proj.bias"),
            (
                "blk.17.ffn_down.weight",
                "model.layers.17.mlp.down_proj.weight",
            ),
            (
                "blk.3.ffn_norm.weight",
                "model.layers.3.post_attention_layernorm.weight",
            ),
        ] {
            assert_eq!(parameter_name(g).as_deref(), Some(h));
            assert_eq!(gguf_name(h).as_deref(), Some(g));
        }
        for unknown in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.0.ffn_gate_exps.weight",
        ] {
            assert_eq!(parameter_name(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn unpermute_inverts_the_converters_permutation() {
        // convert_hf_to_gguf.py: w.reshape(heads, 2, dim/2, -1).swapaxes(1, 2).reshape(w.shape)
        let (heads, head_dim, cols) = (3i64, 4i64, 5i64);
        let hf = Tensor::arange(
            heads * head_dim * cols,
            (tch::Kind::Float, tch::Device::Cpu),
        )
        .view([heads * head_dim, cols]);
        let gguf = hf
            .reshape([heads, 2, head_dim / 2, -1])
            .transpose(1, 2)
            .reshape([heads * head_dim, cols]);
        assert!(!gguf.equal(&hf));
        assert!(unpermute_rotary(&gguf, heads).unwrap().equal(&hf));
        let bias = Tensor::arange(heads * head_dim, (tch::Kind::Float, tch::Device::Cpu));
        let permuted = bias
            .reshape([heads, 2, head_dim / 2])
            .transpose(1, 2)
            .reshape([-1]);
        assert!(unpermute_rotary(&permuted, heads).unwrap().equal(&bias));
    }
}
