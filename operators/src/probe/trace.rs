//! Probing every boundary of a batch of traces: the values, then the greedy early
//! answers one token per pass, over either kind of [`Passes`].

use sspo_model::{profile, Model, ModelError, TextTokenizer};
use tch::Device;

use super::cached::CachedPasses;
use super::early::cut_early_answer;
use super::naive::NaivePasses;
use super::params::ProbeKind;
use super::passes::{Block, Extend, Packing, Passes, Read, ReadOut};
use super::setup::ProbeSetup;

/// What one boundary's probe gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoundaryProbe {
    /// Σ p(yes forms) (verbal).
    pub p_yes: Option<f64>,
    /// Σ p(no forms) (verbal).
    pub p_no: Option<f64>,
    /// Mean log-prob of the answer tokens (answer kind, with a reference).
    pub answer_logprob: Option<f64>,
    /// Greedy tokens after the trigger (answer kind), without the eos token.
    pub early_ids: Vec<i64>,
}

impl BoundaryProbe {
    /// The verbal value `p_yes / (p_yes + p_no)`, when probed.
    pub fn verbal_value(&self) -> Option<f64> {
        match (self.p_yes, self.p_no) {
            (Some(y), Some(n)) if y + n > 0.0 => Some(y / (y + n)),
            _ => None,
        }
    }

    /// The answer value `exp(answer_logprob)`, when probed with a reference.
    pub fn answer_value(&self) -> Option<f64> {
        self.answer_logprob.map(|lp| lp.exp().clamp(0.0, 1.0))
    }

    /// The value of `kind`.
    pub fn value_of(&self, kind: ProbeKind) -> Option<f64> {
        match kind {
            ProbeKind::Verbal => self.verbal_value(),
            ProbeKind::Answer => self.answer_value(),
        }
    }

    /// `V_k` of a single-kind probe: the verbal value, else the answer value.
    pub fn value(&self) -> Option<f64> {
        self.verbal_value().or_else(|| self.answer_value())
    }
}

/// One trace to probe: its tokens, its boundaries (each in `1..=ids.len()`) and, for the
/// answer kind, the tokenised answer continuation (see [`answer_continuation`]; ignored
/// without the answer kind).
///
/// [`answer_continuation`]: super::answer_continuation
#[derive(Debug, Clone, Copy)]
pub struct TraceInput<'a> {
    pub ids: &'a [i64],
    pub boundaries: &'a [usize],
    pub answer: Option<&'a [i64]>,
}

/// Probes every boundary of one trace (see [`probe_traces`]).
pub fn probe_trace(
    model: &Model,
    setup: &ProbeSetup,
    trace: &[i64],
    boundaries: &[usize],
    answer: Option<&[i64]>,
    packing: Packing,
) -> Result<Vec<BoundaryProbe>, ModelError> {
    let input = TraceInput {
        ids: trace,
        boundaries,
        answer,
    };
    Ok(probe_traces(model, setup, &[input], packing)?
        .pop()
        .unwrap_or_default())
}

/// Probes every boundary of every trace; the result is in input order. With
/// [`Packing::Cached`] the traces are batched by length within the token budget.
pub fn probe_traces(
    model: &Model,
    setup: &ProbeSetup,
    traces: &[TraceInput<'_>],
    packing: Packing,
) -> Result<Vec<Vec<BoundaryProbe>>, ModelError> {
    for t in traces {
        if let Some(b) = t.boundaries.iter().find(|&&b| b == 0 || b > t.ids.len()) {
            return Err(ModelError::Input(format!(
                "probe boundary {b} outside 1..={}",
                t.ids.len()
            )));
        }
    }
    tch::no_grad(|| match packing {
        Packing::Naive => {
            let ids = traces.iter().map(|t| t.ids).collect();
            let mut passes = NaivePasses::new(model, ids);
            probe_batch(
                &model.tokenizer,
                model.decoder.device(),
                setup,
                traces,
                &mut passes,
            )
        }
        Packing::Cached { max_batch_tokens } => {
            let mut out = vec![Vec::new(); traces.len()];
            for group in batches(setup, traces, max_batch_tokens) {
                let batch: Vec<TraceInput<'_>> = group.iter().map(|&i| traces[i]).collect();
                let ids = batch.iter().map(|t| t.ids).collect();
                let mut passes = CachedPasses::new(model, ids, setup.early_tokens);
                let device = model.decoder.device();
                let probes = probe_batch(&model.tokenizer, device, setup, &batch, &mut passes)?;
                for (i, p) in group.into_iter().zip(probes) {
                    out[i] = p;
                }
            }
            Ok(out)
        }
    })
}

/// Cache columns a trace's row needs: the trace to its last boundary, every block, and
/// room for the early answers.
fn row_columns(setup: &ProbeSetup, t: &TraceInput<'_>) -> usize {
    let end = t.boundaries.iter().max().copied().unwrap_or(0);
    let answer = t.answer.map_or(0, <[i64]>::len);
    let blocks =
        setup.block_tokens(ProbeKind::Verbal, 0) + setup.block_tokens(ProbeKind::Answer, answer);
    end + t.boundaries.len() * (blocks + setup.early_tokens)
}

/// Batches of trace indices, similar lengths together (less padding), each within
/// `budget` cache columns over its rows (a trace over budget gets a batch alone).
fn batches(setup: &ProbeSetup, traces: &[TraceInput<'_>], budget: usize) -> Vec<Vec<usize>> {
    let cols: Vec<usize> = traces.iter().map(|t| row_columns(setup, t)).collect();
    let mut order: Vec<usize> = (0..traces.len()).collect();
    order.sort_by_key(|&i| cols[i]);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending: the newest trace is the widest row of the batch.
        if !current.is_empty() && (current.len() + 1) * cols[i] > budget {
            out.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// What a block asks: its boundary's index among the trace's boundaries, and its kind.
#[derive(Debug, Clone, Copy)]
struct Role {
    boundary: usize,
    kind: ProbeKind,
}

/// The blocks of one trace: per boundary, one block per kind (verbal first, whatever the
/// order written, so a kind's numbers do not depend on it).
fn trace_blocks(setup: &ProbeSetup, t: &TraceInput<'_>) -> (Vec<Block>, Vec<Role>) {
    let answer = t.answer.filter(|a| !a.is_empty());
    let kinds: Vec<ProbeKind> = [ProbeKind::Verbal, ProbeKind::Answer]
        .into_iter()
        .filter(|&k| setup.has(k))
        .collect();
    t.boundaries
        .iter()
        .enumerate()
        .flat_map(|(i, &b)| {
            kinds.iter().map(move |&kind| {
                let role = Role { boundary: i, kind };
                (kind_block(setup, kind, b, answer), role)
            })
        })
        .unzip()
}

/// One block at `boundary`. Verbal: the question, read at its end. Answer: the trigger and
/// the teacher-forced answer, with the reads of its log-probs and of the first
/// early-answer token.
fn kind_block(
    setup: &ProbeSetup,
    kind: ProbeKind,
    boundary: usize,
    answer: Option<&[i64]>,
) -> Block {
    let mut tokens = setup.suffix(kind).to_vec();
    let s = tokens.len();
    let early = kind == ProbeKind::Answer && setup.early_tokens > 0;
    let mut reads = Vec::new();
    match kind {
        ProbeKind::Verbal => {
            let mut forms = setup.yes.clone();
            forms.extend(&setup.no);
            reads.push(Read::Dist {
                point: s,
                tokens: forms,
            });
        }
        ProbeKind::Answer => {
            if early {
                reads.push(Read::Dist {
                    point: s,
                    tokens: Vec::new(),
                });
            }
            if let Some(a) = answer {
                for (j, &tok) in a.iter().enumerate() {
                    reads.push(Read::Target {
                        point: s + j,
                        token: tok,
                    });
                }
                tokens.extend(a);
            }
        }
    }
    Block {
        boundary,
        tokens,
        shared: s,
        early,
        reads,
    }
}

/// Fills `probe` from the reads of one of its blocks. Returns the first early-answer
/// token when the block reads one.
fn take_reads(
    setup: &ProbeSetup,
    block: &Block,
    kind: ProbeKind,
    reads: Vec<ReadOut>,
    probe: &mut BoundaryProbe,
) -> Option<i64> {
    let mut it = reads.into_iter();
    match kind {
        ProbeKind::Verbal => {
            if let Some((lp, _)) = it.next() {
                let ny = setup.yes.len();
                let p = |v: &[f32]| v.iter().map(|&x| (x as f64).exp()).sum::<f64>();
                probe.p_yes = Some(p(&lp[..ny]));
                probe.p_no = Some(p(&lp[ny..]));
            }
            None
        }
        ProbeKind::Answer => {
            let first = if block.early {
                it.next().map(|(_, g)| g)
            } else {
                None
            };
            let lps: Vec<f64> = it.map(|(lp, _)| lp[0] as f64).collect();
            if !lps.is_empty() {
                probe.answer_logprob = Some(lps.iter().sum::<f64>() / lps.len() as f64);
            }
            first
        }
    }
}

/// Probes one batch of traces: the values and first early tokens in one pass, then the
/// early answers one greedy token per pass (`device`: where the passes run, for profiling).
pub(super) fn probe_batch(
    tokenizer: &TextTokenizer,
    device: Device,
    setup: &ProbeSetup,
    traces: &[TraceInput<'_>],
    passes: &mut dyn Passes,
) -> Result<Vec<Vec<BoundaryProbe>>, ModelError> {
    let (blocks, roles): (Vec<Vec<Block>>, Vec<Vec<Role>>) =
        traces.iter().map(|t| trace_blocks(setup, t)).unzip();
    let results = {
        let _t = profile::scope("probe_blocks", device);
        passes.blocks(&blocks)?
    };
    let mut out: Vec<Vec<BoundaryProbe>> = Vec::with_capacity(traces.len());
    // Unfinished early answers: (trace, block).
    let mut open: Vec<(usize, usize)> = Vec::new();
    for (t, per_block) in results.into_iter().enumerate() {
        let mut probes = vec![BoundaryProbe::default(); traces[t].boundaries.len()];
        for (k, res) in per_block.into_iter().enumerate() {
            let Role { boundary, kind } = roles[t][k];
            let probe = &mut probes[boundary];
            let Some(g) = take_reads(setup, &blocks[t][k], kind, res, probe) else {
                continue;
            };
            if !setup.eos.contains(&g) {
                probe.early_ids.push(g);
                if !early_done(tokenizer, &probe.early_ids, setup.early_tokens)? {
                    open.push((t, k));
                }
            }
        }
        out.push(probes);
    }
    while !open.is_empty() {
        let early = |t: usize, k: usize| roles[t][k].boundary;
        let steps: Vec<Extend> = open
            .iter()
            .map(|&(t, k)| {
                (
                    t,
                    k,
                    out[t][early(t, k)].early_ids.last().copied().unwrap_or(0),
                )
            })
            .collect();
        let next = {
            let _t = profile::scope("probe_early", device);
            passes.extend(&steps)?
        };
        let mut still = Vec::new();
        for (&(t, k), g) in open.iter().zip(next) {
            if setup.eos.contains(&g) {
                continue;
            }
            let ids = &mut out[t][early(t, k)].early_ids;
            ids.push(g);
            if !early_done(tokenizer, ids, setup.early_tokens)? {
                still.push((t, k));
            }
        }
        open = still;
    }
    Ok(out)
}

fn early_done(tokenizer: &TextTokenizer, ids: &[i64], budget: usize) -> Result<bool, ModelError> {
    if ids.len() >= budget {
        return Ok(true);
    }
    let text = tokenizer.decode(ids, true)?;
    Ok(cut_early_answer(&text).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_from_probes() {
        let v = BoundaryProbe {
            p_yes: Some(0.3),
            p_no: Some(0.1),
            ..Default::default()
        };
        assert!((v.value().unwrap() - 0.75).abs() < 1e-12);
        let a = BoundaryProbe {
            answer_logprob: Some((0.5f64).ln()),
            ..Default::default()
        };
        assert!((a.value().unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(BoundaryProbe::default().value(), None);
    }
}
