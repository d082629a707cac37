//! Per-token log-probs of padded batches: `log_softmax(logits)` gathered at the next token,
//! only at the scored positions (logits are never built for the context), and over the
//! vocabulary in chunks of positions ([`crate::logits`]), in the forward pass and in the
//! backward pass alike.

use tch::{Kind, Tensor};

use crate::decoder::{Attention, Decoder};
use crate::error::{ModelError, Result};
use crate::logits::{chunk_logprobs, chunk_rows, chunks, target_logprobs};

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

/// The log-probs of a batch's scored tokens, for a loss to be built on.
///
/// Autograd would keep a `[tokens, vocab]` log-softmax for the backward pass; instead the
/// log-probs are a leaf tensor, and [`ScoredTokens::backward`] (called after the loss's
/// own `backward`, which fills the leaf's gradient) recomputes the logits one chunk of
/// positions at a time, back-propagates each chunk into the final hidden states and the
/// output projection, then back-propagates the hidden states through the decoder once.
/// The gradients equal plain autograd's; the peak holds one chunk of logits.
#[derive(Debug)]
pub struct ScoredTokens<'d> {
    decoder: &'d Decoder,
    /// Final hidden states of the scored positions `[n, hidden]`, attached to the graph.
    hidden: Tensor,
    targets: Tensor,
    logp: Tensor,
    rows: i64,
}

impl ScoredTokens<'_> {
    /// `log π(ids[t] | ids[..t])` of every scored token, flattened in order (sequence 0's
    /// tokens `from..len`, then sequence 1's, ...): float32 `[n]` on the decoder's device,
    /// a leaf that requires grad.
    pub fn logprobs(&self) -> &Tensor {
        &self.logp
    }

    /// Back-propagates the gradient that the loss left on [`ScoredTokens::logprobs`] into
    /// the decoder's parameters (nothing when the loss did not use them).
    pub fn backward(self) -> Result<()> {
        let g = self.logp.grad();
        if !g.defined() {
            return Ok(());
        }
        let leaf = self.hidden.f_detach()?.set_requires_grad(true);
        let n = leaf.size()[0];
        for (s, len) in chunks(n, self.rows) {
            let lp = chunk_logprobs(
                self.decoder,
                &leaf.f_narrow(0, s, len)?,
                &self.targets.f_narrow(0, s, len)?,
            )?;
            lp.f_mul(&g.f_narrow(0, s, len)?)?
                .f_sum(Kind::Float)?
                .f_backward()?;
        }
        let dh = leaf.grad();
        if dh.defined() {
            self.hidden.f_mul(&dh)?.f_sum(Kind::Float)?.f_backward()?;
        }
        Ok(())
    }
}

/// Scored positions of a padded batch: their final hidden states `[n, hidden]` and the
/// token each predicts `[n]`, on the decoder's device.
fn scored_hidden(decoder: &Decoder, seqs: &[ScoredSeq<'_>]) -> Result<(Tensor, Tensor)> {
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
        let hidden = decoder.config().hidden_size;
        return Ok((
            Tensor::f_zeros([0, hidden], (decoder.dtype().kind(), device))?,
            Tensor::f_zeros([0], (Kind::Int64, device))?,
        ));
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
    Ok((h, Tensor::from_slice(&targets).f_to_device(device)?))
}

/// The scored tokens' log-probs of right-padded `seqs`, for a loss with gradient (see
/// [`ScoredTokens`]); the vocabulary is projected [`chunk_rows`] positions at a time.
pub fn token_logprobs<'d>(
    decoder: &'d Decoder,
    seqs: &[ScoredSeq<'_>],
) -> Result<ScoredTokens<'d>> {
    token_logprobs_in_chunks(decoder, seqs, chunk_rows(decoder.config().vocab_size))
}

/// [`token_logprobs`] with `rows` positions per chunk of logits.
pub fn token_logprobs_in_chunks<'d>(
    decoder: &'d Decoder,
    seqs: &[ScoredSeq<'_>],
    rows: i64,
) -> Result<ScoredTokens<'d>> {
    let (hidden, targets) = scored_hidden(decoder, seqs)?;
    let logp =
        target_logprobs(decoder, &hidden.f_detach()?, &targets, rows)?.set_requires_grad(true);
    Ok(ScoredTokens {
        decoder,
        hidden,
        targets,
        logp,
        rows,
    })
}

/// Reference log-probs without gradient, `max_batch` sequences at a time (in order), one
/// `Vec` per sequence.
pub fn reference_logprobs(
    decoder: &Decoder,
    seqs: &[ScoredSeq<'_>],
    max_batch: usize,
) -> Result<Vec<Vec<f32>>> {
    if max_batch == 0 {
        return Err(ModelError::Input("max_batch must be > 0".into()));
    }
    let rows = chunk_rows(decoder.config().vocab_size);
    let mut out = Vec::with_capacity(seqs.len());
    tch::no_grad(|| -> Result<()> {
        for chunk in seqs.chunks(max_batch) {
            let (h, targets) = scored_hidden(decoder, chunk)?;
            let lp = target_logprobs(decoder, &h, &targets, rows)?.f_to_device(tch::Device::Cpu)?;
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
        let scored = token_logprobs(&dec, &seqs).unwrap();
        let lp = scored.logprobs();
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
        scored.backward().unwrap();
        let (_, any) = dec.var_store().variables().into_iter().next().unwrap();
        assert!(any.grad().defined());
        let r = reference_logprobs(&dec, &seqs, 1).unwrap();
        assert_eq!(r[0].len(), 4);
        assert_eq!(r[1].len(), 2);
        assert!((r[1][1] - want[5]).abs() < 1e-5);
        assert!(token_logprobs(&dec, &[ScoredSeq { ids: &a, from: 0 }]).is_err());
    }

    /// The gradients of every parameter, in name order.
    fn grads(dec: &Decoder) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = dec
            .var_store()
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.grad().copy()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn chunked_backward_gives_the_gradients_of_plain_autograd() {
        let cfg = builtin_config("tiny-test", 40).unwrap();
        let dec = Decoder::random(&cfg, DType::F32, tch::Device::Cpu, 9).unwrap();
        let a: Vec<i64> = vec![1, 5, 7, 9, 2, 3, 11];
        let b: Vec<i64> = vec![4, 8, 6, 30];
        let seqs = [
            ScoredSeq { ids: &a, from: 2 },
            ScoredSeq { ids: &b, from: 1 },
        ];
        // A loss that is not linear in the log-probs, as DPO's is not.
        let w = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.25, 1.0, -0.5, 1.5, -2.0]);
        let loss_of = |lp: &Tensor| (lp * &w).sum(Kind::Float).log_sigmoid().neg();
        // Plain autograd: the whole log-softmax in the graph.
        let mut plain = Vec::new();
        for s in &seqs {
            let t = Tensor::from_slice(s.ids).view([1, -1]);
            let ls = dec
                .forward(&t, Attention::Causal)
                .unwrap()
                .log_softmax(-1, Kind::Float);
            for i in s.from..s.ids.len() {
                plain.push(ls.get(0).get(i as i64 - 1).get(s.ids[i]));
            }
        }
        loss_of(&Tensor::stack(&plain, 0)).backward();
        let want = grads(&dec);
        for (_, t) in dec.var_store().variables() {
            let _ = t.grad().zero_();
        }
        // Chunks of 3 positions: 8 scored tokens in 3 chunks.
        let scored = token_logprobs_in_chunks(&dec, &seqs, 3).unwrap();
        loss_of(scored.logprobs()).backward();
        scored.backward().unwrap();
        for ((name, g), (_, h)) in grads(&dec).iter().zip(&want) {
            let diff = (g - h).abs().max().double_value(&[]);
            let scale = h.abs().max().double_value(&[]).max(1e-3);
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "{name}: {diff} (max {scale})"
            );
        }
    }
}
