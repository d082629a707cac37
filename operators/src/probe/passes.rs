//! The forward passes of probing, behind one interface so the driver (`trace.rs`) runs
//! the same way over the cached batch (`cached.rs`) and the reference (`naive.rs`).

use sspo_model::{Model, ModelError};
use tch::{Kind, Tensor};

/// How the probes of a set of traces are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// Several traces per batch: each trace's keys and values computed once, every
    /// boundary's block run as short queries against its own prefix, early answers
    /// decoded incrementally from the cache. A batch holds at most `max_batch_tokens`
    /// cache columns summed over its rows (traces); a longer trace gets a batch alone.
    Cached { max_batch_tokens: usize },
    /// One forward pass per boundary (and per early-answer token) over
    /// `trace[..b] ⊕ block`: the reference the cached passes are tested against.
    Naive,
}

/// One probe block: the tokens appended after `boundary` and what to read from it.
#[derive(Debug, Clone)]
pub(super) struct Block {
    pub(super) boundary: usize,
    /// The suffix, then any teacher-forced tokens.
    pub(super) tokens: Vec<i64>,
    /// How many leading `tokens` the early answer continues from (the suffix); the
    /// teacher-forced rest is invisible to it.
    pub(super) shared: usize,
    /// Whether an early answer grows from this block (after its shared tokens).
    pub(super) early: bool,
    /// Read points: `p` = the distribution of the token after `tokens[..p]`.
    pub(super) reads: Vec<Read>,
}

#[derive(Debug, Clone)]
pub(super) enum Read {
    /// Log-prob of one token.
    Target { point: usize, token: i64 },
    /// Log-probs of several tokens and the argmax.
    Dist { point: usize, tokens: Vec<i64> },
}

impl Read {
    pub(super) fn point(&self) -> usize {
        match self {
            Read::Target { point, .. } | Read::Dist { point, .. } => *point,
        }
    }
    fn tokens(&self) -> &[i64] {
        match self {
            Read::Target { token, .. } => std::slice::from_ref(token),
            Read::Dist { tokens, .. } => tokens,
        }
    }
}

/// Per read: the gathered log-probs and the argmax of the distribution.
pub(super) type ReadOut = (Vec<f32>, i64);

/// One early-answer step of one block: `(trace, block, token)` = append `token` to the
/// early answer of block `block` of trace `trace`.
pub(super) type Extend = (usize, usize, i64);

/// The passes over one batch of traces.
pub(super) trait Passes {
    /// Runs every block of every trace and returns, per trace and block, its reads.
    fn blocks(&mut self, blocks: &[Vec<Block>]) -> Result<Vec<Vec<Vec<ReadOut>>>, ModelError>;

    /// Appends one token to each listed block's early answer (after the block's shared
    /// tokens and the early tokens so far) and returns the greedy next token of each.
    fn extend(&mut self, steps: &[Extend]) -> Result<Vec<i64>, ModelError>;
}

/// The reads of `reads` from `hidden` `[n, hidden]` (one row per read): log-probs of each
/// read's tokens and the argmax of its distribution.
pub(super) fn read_hidden(
    model: &Model,
    hidden: &Tensor,
    reads: &[&Read],
) -> Result<Vec<ReadOut>, ModelError> {
    if reads.is_empty() {
        return Ok(Vec::new());
    }
    let device = model.decoder.device();
    let logits = model.decoder.logits(hidden)?;
    let argmax = Vec::<i64>::try_from(&logits.f_argmax(-1, false)?.f_to_device(tch::Device::Cpu)?)?;
    let width = reads
        .iter()
        .map(|r| r.tokens().len())
        .max()
        .unwrap_or(1)
        .max(1);
    if reads.iter().all(|r| r.tokens().is_empty()) {
        return Ok(argmax.into_iter().map(|g| (Vec::new(), g)).collect());
    }
    let mut gather = vec![0i64; reads.len() * width];
    for (i, r) in reads.iter().enumerate() {
        gather[i * width..i * width + r.tokens().len()].copy_from_slice(r.tokens());
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
