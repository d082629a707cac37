//! Rotary position embeddings, computed exactly as transformers does (in float32).

use tch::{Device, Kind, Tensor};

use crate::config::{ModelConfig, RopeScaling};
use crate::error::Result;

/// Inverse frequencies `[head_dim / 2]` (float32), including any `rope_scaling`.
pub(crate) fn inv_freq(cfg: &ModelConfig, device: Device) -> Result<Tensor> {
    let dim = cfg.head_dim;
    let exponent = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, device))?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(dim as f64)?;
    let base = Tensor::f_pow_scalar(cfg.rope_theta, &exponent)?;
    let inv = base.f_reciprocal()?;
    match &cfg.rope_scaling {
        None => Ok(inv),
        Some(RopeScaling::Linear { factor }) => Ok(inv.f_div_scalar(*factor)?),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old_ctx = *original_max_position_embeddings as f64;
            let low_freq_wavelen = old_ctx / low_freq_factor;
            let high_freq_wavelen = old_ctx / high_freq_factor;
            let wavelen = inv
                .f_reciprocal()?
                .f_mul_scalar(2.0 * std::f64::consts::PI)?;
            let scaled = inv.f_div_scalar(*factor)?;
            let is_low = wavelen.f_gt(low_freq_wavelen)?;
            let inv_llama = scaled.f_where_self(&is_low, &inv)?;
            // smooth = (old_ctx / wavelen - low) / (high - low)
            let smooth = wavelen
                .f_reciprocal()?
                .f_mul_scalar(old_ctx)?
                .f_sub_scalar(*low_freq_factor)?
                .f_div_scalar(high_freq_factor - low_freq_factor)?;
            let one_minus = smooth.f_neg()?.f_add_scalar(1.0)?;
            let smoothed = one_minus
                .f_mul(&inv_llama)?
                .f_div_scalar(*factor)?
                .f_add(&smooth.f_mul(&inv_llama)?)?;
            let is_medium = wavelen
                .f_ge(high_freq_wavelen)?
                .f_logical_and(&wavelen.f_le(low_freq_wavelen)?)?;
            Ok(smoothed.f_where_self(&is_medium, &inv_llama)?)
        }
    }
}

/// `(cos, sin)` of shape `[batch, 1, seq, head_dim]` in `kind`, for `positions` `[batch, seq]`.
pub(crate) fn cos_sin(
    inv_freq: &Tensor,
    positions: &Tensor,
    kind: Kind,
) -> Result<(Tensor, Tensor)> {
    let pos = positions.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?; // [B, L, 1]
    let freqs = pos.f_mul(&inv_freq.f_view([1, 1, -1])?)?; // [B, L, D/2]
    let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?.f_unsqueeze(1)?;
    Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
}

/// Applies the rotation to `x` `[batch, heads, seq, head_dim]`.
pub(crate) fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.size()[3] / 2;
    let x1 = x.f_narrow(-1, 0, half)?;
    let x2 = x.f_narrow(-1, half, half)?;
    let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?;
    Ok(x.f_mul(cos)?.f_add(&rotated.f_mul(sin)?)?)
}
