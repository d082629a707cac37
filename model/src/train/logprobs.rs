//! Per-token log-probs of padded batches: `log_softmax(logits)` gathered at the next token,
//! only at the scored positions (logits are never built for the context).

use tch::{Kind, Tensor};

use crate::decoder::{Attention, Decoder};
use crate::error::{ModelError, Result};

/// One sequence to score: the tokens `ids[from..]` are scored, each given the tokens
/// before it (`from >= 1`: the first token has no prediction).
#[derive(Debug, Clone, Copy)]
pub struct ScoredSeq<'a> {
    pub ids: &'a [i64],
    pub from: usize,
}

impl ScoredSeq<'_> {
    /// Number of scored tokens.
    pub fn scored(&self) -> usize {
        self.ids.len().saturating_sub(self.from)
    }
}

/// `log π(ids[t] | ids[..t])` for every scored token of every sequence, flattened in order
/// (sequence 0's tokens `from..len`, then sequence 1's, ...), as a float32 tensor `[n]` on
/// the decoder's device. Differentiable with respect to the decoder's parameters unless
/// called under `tch::no_grad`. Sequences are right-padded into one batch.
pub fn token_logprobs(decoder: &Decoder, seqs: &[ScoredSeq<'_>]) -> Result<Tensor> {
    let device = decoder.device();
    for (i, s) in seqs.iter().enumerate() {
        if s.from == 0 || s.from > s.ids.len() {
            return Err(ModelError::Input(format!(
                "sequence {i}: scored tokens must start in 1..={} (got {})",
                s.ids.len(),
                s.from
            )));
        }
    }
    let n: usize = seqs.iter().map(ScoredSeq::scored).sum();
    if n == 0 {
        return Ok(Tensor::f_zeros([0], (Kind::Float, device))?);
    }
    let b = seqs.len();
    let len = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(1);
    let mut tokens = vec![0i64; b * len];
    let mut pad = vec![false; b * len];
    let mut rows = Vec::with_capacity(n);
    let mut targets = Vec::with_capacity(n);
    for (r, s) in seqs.iter().enumerate() {
        for (j, &t) in s.ids.iter().enumerate() {
            tokens[r * len + j] = t;
            pad[r * len + j] = true;
        }
        for t in s.from..s.ids.len() {
            rows.push((r * len + t - 1) as i64);
            targets.push(s.ids[t]);
        }
    }
    let (b64, l64) = (b as i64, len as i64);
    let tokens = Tensor::from_slice(&tokens)
        .f_view([b64, l64])?
        .f_to_device(device)?;
    let pad = Tensor::from_slice(&pad)
        .f_view([b64, l64])?
        .f_to_device(device)?;
    let hidden = decoder.hidden_states(&tokens, Attention::Padded(&pad))?;
    let idx = Tensor::from_slice(&rows).f_to_device(device)?;
    let h = hidden.f_reshape([b64 * l64, -1])?.f_index_select(0, &idx)?;
    let tgt = Tensor::from_slice(&targets)
        .f_to_device(device)?
        .f_unsqueeze(1)?;
    Ok(decoder
        .logits(&h)?
        .f_log_softmax(-1, Kind::Float)?
        .f_gather(1, &tgt, false)?
        .f_view([-1])?)
}

/// Reference log-probs without gradient: [`token_logprobs`] of `max_batch` sequences at a
/// time (in order), one `Vec` per sequence.
pub fn reference_logprobs(
    decoder: &Decoder,
    seqs: &[ScoredSeq<'_>],
    max_batch: usize,
) -> Result<Vec<Vec<f32>>> {
    if max_batch == 0 {
        return Err(ModelError::Input("max_batch must be > 0".into()));
    }
    let mut out = Vec::with_capacity(seqs.len());
    tch::no_grad(|| -> Result<()> {
        for chunk in seqs.chunks(max_batch) {
            let lp = token_logprobs(decoder, chunk)?.f_to_device(tch::Device::Cpu)?;
            let flat = Vec::<f32>::try_from(&lp)?;
            let mut at = 0;
            for s in chunk {
                out.push(flat[at..at + s.scored()].to_vec());
                at += s.scored();
            }
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::builtin_config;
    use crate::runtime::DType;

    #[test]
    fn padded_batch_logprobs_match_one_sequence_at_a_time_and_have_gradients() {
        let cfg = builtin_config("tiny-test", 40).unwrap();
        let dec = Decoder::random(&cfg, DType::F32, tch::Device::Cpu, 3).unwrap();
        let a: Vec<i64> = vec![1, 5, 7, 9, 2, 3];
        let b: Vec<i64> = vec![4, 8, 6];
        let seqs = [
            ScoredSeq { ids: &a, from: 2 },
            ScoredSeq { ids: &b, from: 1 },
        ];
        let lp = token_logprobs(&dec, &seqs).unwrap();
        assert_eq!(lp.size(), [6]);
        let got = Vec::<f32>::try_from(&lp.detach()).unwrap();
        let mut want = Vec::new();
        for s in &seqs {
            let t = Tensor::from_slice(s.ids).view([1, -1]);
            let logits = tch::no_grad(|| dec.forward(&t, Attention::Causal)).unwrap();
            let ls = logits.log_softmax(-1, Kind::Float);
            for i in s.from..s.ids.len() {
                want.push(ls.double_value(&[0, i as i64 - 1, s.ids[i]]) as f32);
            }
        }
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        lp.sum(Kind::Float).backward();
        let (_, any) = dec.var_store().variables().into_iter().next().unwrap();
        assert!(any.grad().defined());
        let r = reference_logprobs(&dec, &seqs, 1).unwrap();
        assert_eq!(r[0].len(), 4);
        assert_eq!(r[1].len(), 2);
        assert!((r[1][1] - want[5]).abs() < 1e-5);
        assert!(token_logprobs(&dec, &[ScoredSeq { ids: &a, from: 0 }]).is_err());
    }
}
