//! `log_softmax(logits(h))[i, target_i]` from final hidden states, a bounded number of rows at
//! a time: the `[rows, vocab]` logits exist for one chunk only, so memory does not grow with
//! vocabulary × scored tokens (151,936 × 2,000 tokens is 1.2 GB per copy in fp32).

use tch::{Kind, Tensor};

use crate::decoder::Decoder;
use crate::error::Result;

/// Logits computed at once: 2^24, 64 MiB in fp32 (341 rows of a 49,152 vocabulary,
/// 110 of a 151,936 one).
pub const CHUNK_LOGITS: i64 = 1 << 24;

/// Rows per chunk for a vocabulary of `vocab` entries.
pub fn chunk_rows(vocab: i64) -> i64 {
    (CHUNK_LOGITS / vocab.max(1)).max(1)
}

/// The row ranges `(start, len)` of `n` rows in chunks of `rows`.
pub(crate) fn chunks(n: i64, rows: i64) -> impl Iterator<Item = (i64, i64)> {
    let rows = rows.max(1);
    (0..n)
        .step_by(rows as usize)
        .map(move |s| (s, rows.min(n - s)))
}

/// Log-probs `[len]` (float32) of `targets` `[len]` (int64) under the logits of `h`
/// `[len, hidden]`, differentiable when gradients are on.
pub(crate) fn chunk_logprobs(decoder: &Decoder, h: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(decoder
        .logits(h)?
        .f_log_softmax(-1, Kind::Float)?
        .f_gather(1, &targets.f_unsqueeze(1)?, false)?
        .f_view([-1])?)
}

/// Without gradient: the log-probs `[n]` (float32) of `targets` `[n]` (int64, on the
/// decoder's device) under the logits of `h` `[n, hidden]`, `rows` rows at a time.
pub fn target_logprobs(
    decoder: &Decoder,
    h: &Tensor,
    targets: &Tensor,
    rows: i64,
) -> Result<Tensor> {
    let n = h.size().first().copied().unwrap_or(0);
    tch::no_grad(|| {
        let parts = chunks(n, rows)
            .map(|(s, len)| {
                chunk_logprobs(
                    decoder,
                    &h.f_narrow(0, s, len)?,
                    &targets.f_narrow(0, s, len)?,
                )
            })
            .collect::<Result<Vec<Tensor>>>()?;
        if parts.is_empty() {
            return Ok(Tensor::f_zeros([0], (Kind::Float, decoder.device()))?);
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::builtin_config;
    use crate::runtime::DType;

    #[test]
    fn chunked_logprobs_equal_one_pass_over_all_rows() {
        let cfg = builtin_config("tiny-test", 40).unwrap();
        let dec = Decoder::random(&cfg, DType::F32, tch::Device::Cpu, 5).unwrap();
        let h = Tensor::randn([7, cfg.hidden_size], (Kind::Float, tch::Device::Cpu));
        let targets = Tensor::from_slice(&[0i64, 3, 39, 5, 5, 12, 1]);
        let whole = tch::no_grad(|| chunk_logprobs(&dec, &h, &targets)).unwrap();
        for rows in [1, 3, 7, 100] {
            let got = target_logprobs(&dec, &h, &targets, rows).unwrap();
            assert_eq!(got.size(), [7]);
            let diff = (&got - &whole).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "rows {rows}: {diff}");
        }
        assert_eq!(chunks(7, 3).collect::<Vec<_>>(), [(0, 3), (3, 3), (6, 1)]);
        assert_eq!(chunk_rows(151_936), 110);
        let none = target_logprobs(&dec, &h.narrow(0, 0, 0), &targets.narrow(0, 0, 0), 4).unwrap();
        assert_eq!(none.size(), [0]);
    }
}
