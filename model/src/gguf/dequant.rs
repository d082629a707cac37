//! Dequantisation of ggml blocks into f32, following ggml's block layouts (`ggml-common.h`)
//! and its reference dequantisers. Products are evaluated in the same order as ggml and
//! gguf-py (`(d * scale) * q - (dmin * min)`), in f32 without fused multiply-adds, so the
//! values are bit-identical to `gguf.quants.dequantize`.
//!
//! Blocks are independent: large tensors are split into runs of blocks dequantised in
//! parallel.

use rayon::prelude::*;

use super::error::{GgufError, GgufResult};
use super::ggml_type::GgmlType;
use super::reader::TensorInfo;

/// Values each parallel task dequantises (a few hundred KiB of output).
const VALUES_PER_TASK: usize = 1 << 16;

/// Refuses a tensor whose type cannot be dequantised, naming the tensor and the type.
pub(crate) fn check_supported(t: &TensorInfo) -> GgufResult<()> {
    if t.ggml_type.dequantizable() {
        Ok(())
    } else {
        Err(unsupported(t))
    }
}

fn unsupported(t: &TensorInfo) -> GgufError {
    GgufError::UnsupportedTensorType {
        tensor: t.name.clone(),
        ggml_type: t.ggml_type.name(),
        supported: GgmlType::dequantizable_names(),
    }
}

/// Dequantises the data `src` of tensor `t` into `dst` (sized from the tensor's shape).
pub(crate) fn dequantize(t: &TensorInfo, src: &[u8], dst: &mut [f32]) -> GgufResult<()> {
    use GgmlType::*;
    let ty = t.ggml_type;
    match ty {
        F32 => run(ty, src, dst, |b, y| {
            y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }),
        F16 => run(ty, src, dst, |b, y| y[0] = f16_at(b, 0)),
        BF16 => run(ty, src, dst, |b, y| {
            y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
        }),
        Q8_0 => run(ty, src, dst, q8_0),
        Q4_0 => run(ty, src, dst, q4_0),
        Q4_1 => run(ty, src, dst, q4_1),
        Q5_0 => run(ty, src, dst, q5_0),
        Q5_1 => run(ty, src, dst, q5_1),
        Q4_K => run(ty, src, dst, q4_k),
        Q5_K => run(ty, src, dst, q5_k),
        Q6_K => run(ty, src, dst, q6_k),
        _ => return Err(unsupported(t)),
    }
    Ok(())
}

/// Applies `block` (one block's bytes → its values) to every block, in parallel runs.
fn run(ty: GgmlType, src: &[u8], dst: &mut [f32], block: impl Fn(&[u8], &mut [f32]) + Sync) {
    let (values, bytes) = (ty.block_size() as usize, ty.type_size() as usize);
    let blocks_per_task = (VALUES_PER_TASK / values).max(1);
    dst.par_chunks_mut(blocks_per_task * values)
        .zip(src.par_chunks(blocks_per_task * bytes))
        .for_each(|(out, inp)| {
            for (y, b) in out.chunks_exact_mut(values).zip(inp.chunks_exact(bytes)) {
                block(b, y);
            }
        });
}

/// IEEE half → single precision (exact: every half is a single).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exponent = u32::from((h >> 10) & 0x1F);
    let mantissa = u32::from(h & 0x03FF);
    match (exponent, mantissa) {
        (0, 0) => f32::from_bits(sign),
        (0, m) => {
            // Subnormal: m * 2^-24, exact in f32.
            let v = m as f32 * (1.0 / 16_777_216.0);
            if sign == 0 {
                v
            } else {
                -v
            }
        }
        (0x1F, m) => f32::from_bits(sign | 0x7F80_0000 | (m << 13)),
        (e, m) => f32::from_bits(sign | ((e + 112) << 23) | (m << 13)),
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// `{ f16 d; i8 qs[32] }`: `q * d`.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = f32::from(q as i8) * d;
    }
}

/// `{ f16 d; u8 qs[16] }`: low nibbles are values 0..16, high nibbles 16..32; `(q - 8) * d`.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * f32::from(i16::from(q & 0x0F) - 8);
        y[j + 16] = d * f32::from(i16::from(q >> 4) - 8);
    }
}

/// `{ f16 d; f16 m; u8 qs[16] }`: `q * d + m`.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = d * f32::from(q & 0x0F) + m;
        y[j + 16] = d * f32::from(q >> 4) + m;
    }
}

/// The fifth bits of a Q5 block: bit `j` of the little-endian `qh` belongs to value `j`.
fn high_bit(qh: u32, j: usize) -> u8 {
    (((qh >> j) & 1) << 4) as u8
}

/// `{ f16 d; u8 qh[4]; u8 qs[16] }`: 5-bit values, `(q - 16) * d`.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let lo = (q & 0x0F) | high_bit(qh, j);
        let hi = (q >> 4) | high_bit(qh, j + 16);
        y[j] = d * f32::from(i16::from(lo) - 16);
        y[j + 16] = d * f32::from(i16::from(hi) - 16);
    }
}

/// `{ f16 d; f16 m; u8 qh[4]; u8 qs[16] }`: 5-bit values, `q * d + m`.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let lo = (q & 0x0F) | high_bit(qh, j);
        let hi = (q >> 4) | high_bit(qh, j + 16);
        y[j] = d * f32::from(lo) + m;
        y[j + 16] = d * f32::from(hi) + m;
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed 6-bit pairs of Q4_K / Q5_K.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The (scale, min) multipliers of sub-block `j` of a Q4_K / Q5_K block.
fn k4_factors(d: f32, dmin: f32, scales: &[u8], j: usize) -> (f32, f32) {
    let (sc, m) = scale_min_k4(j, scales);
    (d * f32::from(sc), dmin * f32::from(m))
}

/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }`: 8 sub-blocks of 32 4-bit values;
/// each 32 bytes of `qs` hold two sub-blocks (low nibbles, then high nibbles).
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for (c, (qs, y)) in b[16..144]
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(64))
        .enumerate()
    {
        let (d1, m1) = k4_factors(d, dmin, scales, 2 * c);
        let (d2, m2) = k4_factors(d, dmin, scales, 2 * c + 1);
        for (l, &q) in qs.iter().enumerate() {
            y[l] = d1 * f32::from(q & 0x0F) - m1;
            y[l + 32] = d2 * f32::from(q >> 4) - m2;
        }
    }
}

/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }`: Q4_K plus a fifth bit per
/// value, bit `s` of `qh[l]` for value `l` of sub-block `s`.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (c, (qs, y)) in b[48..176]
        .chunks_exact(32)
        .zip(y.chunks_exact_mut(64))
        .enumerate()
    {
        let (d1, m1) = k4_factors(d, dmin, scales, 2 * c);
        let (d2, m2) = k4_factors(d, dmin, scales, 2 * c + 1);
        for (l, &q) in qs.iter().enumerate() {
            let lo = (q & 0x0F) | (((qh[l] >> (2 * c)) & 1) << 4);
            let hi = (q >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
            y[l] = d1 * f32::from(lo) - m1;
            y[l + 32] = d2 * f32::from(hi) - m2;
        }
    }
}

/// `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }`: 6-bit values in two halves of 128;
/// each half takes 64 bytes of `ql` (low 4 bits) and 32 of `qh` (2 bits per value), and
/// 16 values share an 8-bit scale: `d * scale * (q - 32)`.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    for half in 0..2 {
        let ql = &ql[64 * half..64 * half + 64];
        let qh = &qh[32 * half..32 * half + 32];
        let sc = &scales[8 * half..8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q =
                |low: u8, shift: u8| f32::from(i16::from(low | (((qh[l] >> shift) & 3) << 4)) - 32);
            let scale = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = scale(0) * q(ql[l] & 0x0F, 0);
            y[l + 32] = scale(2) * q(ql[l + 32] & 0x0F, 2);
            y[l + 64] = scale(4) * q(ql[l] >> 4, 4);
            y[l + 96] = scale(6) * q(ql[l + 32] >> 4, 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_converts_exactly() {
        assert_eq!(f16_to_f32(0x3C00), 1.0);
        assert_eq!(f16_to_f32(0xC000), -2.0);
        assert_eq!(f16_to_f32(0x7BFF), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x03FF), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(f16_to_f32(0x7C00), f32::INFINITY);
        assert!(f16_to_f32(0x7E00).is_nan());
    }

    #[test]
    fn q4_0_block_matches_the_reference_formula() {
        // d = 0.5, qs[0] = 0x1F: value 0 is (15 - 8) * 0.5, value 16 is (1 - 8) * 0.5.
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&0x3800u16.to_le_bytes());
        b[2] = 0x1F;
        let t = TensorInfo {
            name: "t".into(),
            dims: vec![32],
            ggml_type: GgmlType::Q4_0,
            offset: 0,
            n_bytes: 18,
        };
        let mut y = vec![0f32; 32];
        dequantize(&t, &b, &mut y).unwrap();
        assert_eq!((y[0], y[16], y[1]), (3.5, -3.5, -4.0));
    }
}
