//! Log-probabilities of given continuations, batched, plus packed probing: one forward pass over
//! a trace followed by several probe blocks, each seeing only the trace before its boundary.

use tch::Tensor;

use crate::decoder::{Attention, Decoder};
use crate::error::{ModelError, Result};
use crate::logits;

/// Score `continuation` given `context` (both token ids; `context` must be non-empty).
#[derive(Debug, Clone)]
pub struct ScoreRequest {
    pub context: Vec<i64>,
    pub continuation: Vec<i64>,
}

/// Per-token log-probs (natural log) of each request's continuation, in request order.
/// Requests are grouped `max_batch` at a time (sorted by length to limit padding).
pub fn continuation_logprobs(
    decoder: &Decoder,
    requests: &[ScoreRequest],
    max_batch: usize,
) -> Result<Vec<Vec<f32>>> {
    if max_batch == 0 {
        return Err(ModelError::Input("max_batch must be > 0".into()));
    }
    for (i, r) in requests.iter().enumerate() {
        if r.context.is_empty() {
            return Err(ModelError::Input(format!(
                "score request {i} has an empty context"
            )));
        }
    }
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| requests[i].context.len() + requests[i].continuation.len());
    let mut out = vec![Vec::new(); requests.len()];
    tch::no_grad(|| -> Result<()> {
        for chunk in order.chunks(max_batch) {
            let rows: Vec<&ScoreRequest> = chunk.iter().map(|&i| &requests[i]).collect();
            for (&i, lp) in chunk.iter().zip(score_batch(decoder, &rows)?) {
                out[i] = lp;
            }
        }
        Ok(())
    })?;
    Ok(out)
}

fn score_batch(decoder: &Decoder, rows: &[&ScoreRequest]) -> Result<Vec<Vec<f32>>> {
    let b = rows.len();
    let len = rows
        .iter()
        .map(|r| r.context.len() + r.continuation.len())
        .max()
        .unwrap_or(1);
    // Right padding: every row starts at column 0, so positions are plain column indices.
    let mut tokens = vec![0i64; b * len];
    let mut pad = vec![false; b * len];
    // (row, column predicting the token, target token) for every continuation token.
    let mut picks: Vec<(usize, usize, i64)> = Vec::new();
    for (row, r) in rows.iter().enumerate() {
        let seq: Vec<i64> = r.context.iter().chain(&r.continuation).copied().collect();
        for (j, &t) in seq.iter().enumerate() {
            tokens[row * len + j] = t;
            pad[row * len + j] = true;
        }
        for (j, &t) in r.continuation.iter().enumerate() {
            picks.push((row, r.context.len() + j - 1, t));
        }
    }
    if picks.is_empty() {
        return Ok(vec![Vec::new(); b]);
    }
    let (b64, l64) = (b as i64, len as i64);
    let tokens = Tensor::from_slice(&tokens).f_view([b64, l64])?;
    let pad = Tensor::from_slice(&pad).f_view([b64, l64])?;
    let hidden = decoder.hidden_states(&tokens, Attention::Padded(&pad))?;
    let flat_idx: Vec<i64> = picks
        .iter()
        .map(|&(r, c, _)| (r * len + c) as i64)
        .collect();
    let targets: Vec<i64> = picks.iter().map(|&(_, _, t)| t).collect();
    let device = decoder.device();
    let idx = Tensor::from_slice(&flat_idx).f_to_device(device)?;
    let h = hidden.f_reshape([b64 * l64, -1])?.f_index_select(0, &idx)?;
    let lp = gather_logprobs(decoder, &h, &targets)?;
    let mut out = vec![Vec::new(); b];
    for (&(row, _, _), v) in picks.iter().zip(lp) {
        out[row].push(v);
    }
    Ok(out)
}

/// `log_softmax(logits(h))[i, targets[i]]` for hidden rows `h` `[n, hidden]`, in chunks of
/// rows (see [`crate::logits`]).
fn gather_logprobs(decoder: &Decoder, h: &Tensor, targets: &[i64]) -> Result<Vec<f32>> {
    let tgt = Tensor::from_slice(targets).f_to_device(decoder.device())?;
    let rows = logits::chunk_rows(decoder.config().vocab_size);
    let lp = logits::target_logprobs(decoder, h, &tgt, rows)?.f_to_device(tch::Device::Cpu)?;
    Ok(Vec::<f32>::try_from(&lp)?)
}

/// Logits `[batch, len, vocab]` for arbitrary masks and positions (see [`Attention::Custom`]).
pub fn forward_logits(
    decoder: &Decoder,
    tokens: &Tensor,
    positions: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    decoder.forward(tokens, Attention::Custom { mask, positions })
}

/// A trace and its probe blocks packed into one sequence: trace tokens attend causally among
/// themselves; probe block `k` (boundary `b_k`) attends to `trace[..b_k]` and causally to itself,
/// with positions `b_k, b_k + 1, ...` as if it were appended at the boundary.
#[derive(Debug, Clone)]
pub struct PackedProbes {
    /// Trace tokens, then every probe block.
    pub tokens: Vec<i64>,
    /// RoPE position of every token.
    pub positions: Vec<i64>,
    /// Row-major `[len, len]` boolean mask (true = may attend).
    pub mask: Vec<bool>,
    /// `(start, len, boundary)` of each probe block in `tokens`.
    pub blocks: Vec<(usize, usize, usize)>,
}

impl PackedProbes {
    /// Packs `trace` with `probes` = `(boundary, probe tokens)`; `boundary <= trace.len()`.
    pub fn new(trace: &[i64], probes: &[(usize, Vec<i64>)]) -> Result<Self> {
        let total = trace.len() + probes.iter().map(|p| p.1.len()).sum::<usize>();
        let mut tokens = trace.to_vec();
        let mut positions: Vec<i64> = (0..trace.len() as i64).collect();
        let mut mask = vec![false; total * total];
        for i in 0..trace.len() {
            for j in 0..=i {
                mask[i * total + j] = true;
            }
        }
        let mut blocks = Vec::with_capacity(probes.len());
        for (k, (boundary, probe)) in probes.iter().enumerate() {
            if *boundary > trace.len() {
                return Err(ModelError::Input(format!(
                    "probe {k}: boundary {boundary} beyond trace of {} tokens",
                    trace.len()
                )));
            }
            let start = tokens.len();
            for (p, &t) in probe.iter().enumerate() {
                let row = start + p;
                tokens.push(t);
                positions.push((boundary + p) as i64);
                for j in 0..*boundary {
                    mask[row * total + j] = true;
                }
                for j in start..=row {
                    mask[row * total + j] = true;
                }
            }
            blocks.push((start, probe.len(), *boundary));
        }
        Ok(PackedProbes {
            tokens,
            positions,
            mask,
            blocks,
        })
    }

    /// `(tokens [1, len], positions [1, len], mask [1, len, len])` for [`forward_logits`].
    pub fn tensors(&self) -> Result<(Tensor, Tensor, Tensor)> {
        let l = self.tokens.len() as i64;
        Ok((
            Tensor::from_slice(&self.tokens).f_view([1, l])?,
            Tensor::from_slice(&self.positions).f_view([1, l])?,
            Tensor::from_slice(&self.mask).f_view([1, l, l])?,
        ))
    }
}

/// Log-probs of every probe's tokens given `trace[..boundary]` and the probe tokens before
/// them, in one packed forward pass. Each boundary must be >= 1 (the first probe token is
/// predicted from the trace token just before the boundary).
pub fn probe_logprobs(
    decoder: &Decoder,
    trace: &[i64],
    probes: &[(usize, Vec<i64>)],
) -> Result<Vec<Vec<f32>>> {
    if let Some(k) = probes.iter().position(|p| p.0 == 0) {
        return Err(ModelError::Input(format!(
            "probe {k}: boundary must be >= 1"
        )));
    }
    let packed = PackedProbes::new(trace, probes)?;
    if packed.tokens.is_empty() {
        return Ok(vec![Vec::new(); probes.len()]);
    }
    let (tokens, positions, mask) = packed.tensors()?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for &(start, len, boundary) in &packed.blocks {
        for p in 0..len {
            rows.push(if p == 0 { boundary - 1 } else { start + p - 1 } as i64);
            targets.push(packed.tokens[start + p]);
        }
    }
    let lp = tch::no_grad(|| -> Result<Vec<f32>> {
        let hidden = decoder.hidden_states(
            &tokens,
            Attention::Custom {
                mask: &mask,
                positions: &positions,
            },
        )?;
        let idx = Tensor::from_slice(&rows).f_to_device(decoder.device())?;
        let h = hidden.f_select(0, 0)?.f_index_select(0, &idx)?;
        gather_logprobs(decoder, &h, &targets)
    })?;
    let mut out = Vec::with_capacity(probes.len());
    let mut it = lp.into_iter();
    for &(_, len, _) in &packed.blocks {
        out.push(it.by_ref().take(len).collect());
    }
    Ok(out)
}
