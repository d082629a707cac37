//! The forward passes of probing: a trace's probe blocks packed into one sequence with
//! a custom mask (split into several passes when longer than the budget), or, for
//! reference, one causal pass per block; and the log-probs read at the blocks' read
//! points.

use std::ops::Range;

use sspo_model::{Attention, Model, ModelError, PackedProbes};
use tch::{Kind, Tensor};

/// How the probes of one trace are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// All boundaries in one forward pass (split when longer than `max_tokens`).
    Packed { max_tokens: usize },
    /// One forward pass per boundary over `trace[..b] ⊕ block` (reference implementation).
    Naive,
}

/// One probe block: the tokens appended after `boundary` and what to read from it.
pub(super) struct Block {
    pub(super) boundary: usize,
    pub(super) tokens: Vec<i64>,
    /// Read points: `p` = the distribution of the token after `tokens[..p]`.
    pub(super) reads: Vec<Read>,
}

#[derive(Clone)]
pub(super) enum Read {
    /// Log-prob of one token.
    Target { point: usize, token: i64 },
    /// Log-probs of several tokens and the argmax.
    Dist { point: usize, tokens: Vec<i64> },
}

impl Read {
    fn point(&self) -> usize {
        match self {
            Read::Target { point, .. } | Read::Dist { point, .. } => *point,
        }
    }
    fn tokens(&self) -> Vec<i64> {
        match self {
            Read::Target { token, .. } => vec![*token],
            Read::Dist { tokens, .. } => tokens.clone(),
        }
    }
}

/// Per read: the gathered log-probs and the argmax of the distribution.
pub(super) type ReadOut = (Vec<f32>, i64);

/// Runs blocks over `trace` and returns, per block, its reads.
pub(super) fn run_blocks(
    model: &Model,
    trace: &[i64],
    blocks: &[Block],
    packing: Packing,
) -> Result<Vec<Vec<ReadOut>>, ModelError> {
    match packing {
        Packing::Naive => blocks
            .iter()
            .map(|b| {
                let mut seq = trace[..b.boundary].to_vec();
                seq.extend(&b.tokens);
                let rows: Vec<i64> = b
                    .reads
                    .iter()
                    .map(|r| (b.boundary + r.point()) as i64 - 1)
                    .collect();
                let n = seq.len() as i64;
                let tokens = Tensor::from_slice(&seq)
                    .f_view([1, n])?
                    .f_to_device(model.decoder.device())?;
                let hidden = model.decoder.hidden_states(&tokens, Attention::Causal)?;
                read_rows(model, &hidden, &rows, &b.reads)
            })
            .collect(),
        Packing::Packed { max_tokens } => {
            let mut out = Vec::with_capacity(blocks.len());
            for group in pack_groups(blocks, max_tokens) {
                out.extend(run_packed(model, trace, &blocks[group])?);
            }
            Ok(out)
        }
    }
}

/// Consecutive groups of blocks whose packed sequence (trace up to the group's last
/// boundary, then the blocks) fits `max_tokens`; a group has at least one block.
fn pack_groups(blocks: &[Block], max_tokens: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut max_b = 0;
    let mut sum = 0;
    for (i, b) in blocks.iter().enumerate() {
        let nb = max_b.max(b.boundary);
        let ns = sum + b.tokens.len();
        if i > start && nb + ns > max_tokens {
            groups.push(start..i);
            start = i;
            max_b = b.boundary;
            sum = b.tokens.len();
        } else {
            max_b = nb;
            sum = ns;
        }
    }
    if start < blocks.len() {
        groups.push(start..blocks.len());
    }
    groups
}

fn run_packed(
    model: &Model,
    trace: &[i64],
    blocks: &[Block],
) -> Result<Vec<Vec<ReadOut>>, ModelError> {
    let end = blocks.iter().map(|b| b.boundary).max().unwrap_or(0);
    let probes: Vec<(usize, Vec<i64>)> = blocks
        .iter()
        .map(|b| (b.boundary, b.tokens.clone()))
        .collect();
    let packed = PackedProbes::new(&trace[..end], &probes)?;
    let mut rows = Vec::new();
    let mut reads = Vec::new();
    for (b, &(start, _, boundary)) in blocks.iter().zip(&packed.blocks) {
        for r in &b.reads {
            let p = r.point();
            rows.push(if p == 0 { boundary - 1 } else { start + p - 1 } as i64);
            reads.push(r.clone());
        }
    }
    let (tokens, positions, mask) = packed.tensors()?;
    let hidden = model.decoder.hidden_states(
        &tokens.f_to_device(model.decoder.device())?,
        Attention::Custom {
            mask: &mask,
            positions: &positions,
        },
    )?;
    let flat = read_rows(model, &hidden, &rows, &reads)?;
    let mut it = flat.into_iter();
    Ok(blocks
        .iter()
        .map(|b| it.by_ref().take(b.reads.len()).collect())
        .collect())
}

/// Log-probs of each read's tokens and the argmax, at hidden rows `rows` of `hidden`
/// `[1, len, hidden]`.
fn read_rows(
    model: &Model,
    hidden: &Tensor,
    rows: &[i64],
    reads: &[Read],
) -> Result<Vec<ReadOut>, ModelError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let device = model.decoder.device();
    let idx = Tensor::from_slice(rows).f_to_device(device)?;
    let h = hidden.f_select(0, 0)?.f_index_select(0, &idx)?;
    let logits = model.decoder.logits(&h)?;
    let argmax = Vec::<i64>::try_from(&logits.f_argmax(-1, false)?.f_to_device(tch::Device::Cpu)?)?;
    let width = reads
        .iter()
        .map(|r| r.tokens().len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut gather = vec![0i64; reads.len() * width];
    for (i, r) in reads.iter().enumerate() {
        for (j, t) in r.tokens().into_iter().enumerate() {
            gather[i * width + j] = t;
        }
    }
    let g = Tensor::from_slice(&gather)
        .f_view([reads.len() as i64, width as i64])?
        .f_to_device(device)?;
    let lp = logits
        .f_log_softmax(-1, Kind::Float)?
        .f_gather(1, &g, false)?
        .f_to_device(tch::Device::Cpu)?
        .f_view([-1])?;
    let lp = Vec::<f32>::try_from(&lp)?;
    Ok(reads
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let n = r.tokens().len();
            (lp[i * width..i * width + n].to_vec(), argmax[i])
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_fit_the_budget() {
        let blocks: Vec<Block> = [5usize, 10, 20, 30]
            .iter()
            .map(|&b| Block {
                boundary: b,
                tokens: vec![1; 4],
                reads: Vec::new(),
            })
            .collect();
        assert_eq!(pack_groups(&blocks, 1000), vec![0..4]);
        assert_eq!(pack_groups(&blocks, 20), vec![0..2, 2..3, 3..4]);
        assert_eq!(pack_groups(&blocks, 1), vec![0..1, 1..2, 2..3, 3..4]);
    }
}
