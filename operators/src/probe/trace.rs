//! Probing every boundary of one trace: the values, then the greedy early answers one
//! token per pass.

use sspo_model::{Model, ModelError};

use super::early::cut_early_answer;
use super::packed::{run_blocks, Block, Packing, Read};
use super::params::ProbeKind;
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
    /// `V_k`, when the kind provides it.
    pub fn value(&self) -> Option<f64> {
        match (self.p_yes, self.p_no, self.answer_logprob) {
            (Some(y), Some(n), _) if y + n > 0.0 => Some(y / (y + n)),
            (_, _, Some(lp)) => Some(lp.exp().clamp(0.0, 1.0)),
            _ => None,
        }
    }
}

/// Probes every boundary of one trace. `answer` (answer kind) is the tokenised answer
/// continuation (see [`answer_continuation`]); every boundary must be ≥ 1.
pub fn probe_trace(
    model: &Model,
    setup: &ProbeSetup,
    trace: &[i64],
    boundaries: &[usize],
    answer: Option<&[i64]>,
    packing: Packing,
) -> Result<Vec<BoundaryProbe>, ModelError> {
    if let Some(b) = boundaries.iter().find(|&&b| b == 0 || b > trace.len()) {
        return Err(ModelError::Input(format!(
            "probe boundary {b} outside 1..={}",
            trace.len()
        )));
    }
    tch::no_grad(|| probe_trace_inner(model, setup, trace, boundaries, answer, packing))
}

fn probe_trace_inner(
    model: &Model,
    setup: &ProbeSetup,
    trace: &[i64],
    boundaries: &[usize],
    answer: Option<&[i64]>,
    packing: Packing,
) -> Result<Vec<BoundaryProbe>, ModelError> {
    let s = setup.suffix.len();
    let mut out = vec![BoundaryProbe::default(); boundaries.len()];
    let answer = answer.filter(|a| !a.is_empty() && setup.kind == ProbeKind::Answer);
    // Pass 0: the values, and the first greedy token of the early answer.
    let want_early = setup.kind == ProbeKind::Answer && setup.early_tokens > 0;
    let blocks: Vec<Block> = boundaries
        .iter()
        .map(|&b| {
            let mut tokens = setup.suffix.clone();
            let mut reads = Vec::new();
            match setup.kind {
                ProbeKind::Verbal => {
                    let mut forms = setup.yes.clone();
                    forms.extend(&setup.no);
                    reads.push(Read::Dist {
                        point: s,
                        tokens: forms,
                    });
                }
                ProbeKind::Answer => {
                    if want_early {
                        reads.push(Read::Dist {
                            point: s,
                            tokens: Vec::new(),
                        });
                    }
                    if let Some(a) = answer {
                        for (j, &t) in a.iter().enumerate() {
                            reads.push(Read::Target {
                                point: s + j,
                                token: t,
                            });
                        }
                        tokens.extend(a);
                    }
                }
            }
            Block {
                boundary: b,
                tokens,
                reads,
            }
        })
        .collect();
    let results = run_blocks(model, trace, &blocks, packing)?;
    let eos: Vec<i64> = setup.eos.clone();
    // Unfinished early answers: (boundary index).
    let mut open: Vec<usize> = Vec::new();
    for (k, res) in results.into_iter().enumerate() {
        let mut it = res.into_iter();
        match setup.kind {
            ProbeKind::Verbal => {
                if let Some((lp, _)) = it.next() {
                    let ny = setup.yes.len();
                    let p = |v: &[f32]| v.iter().map(|&x| (x as f64).exp()).sum::<f64>();
                    out[k].p_yes = Some(p(&lp[..ny]));
                    out[k].p_no = Some(p(&lp[ny..]));
                }
            }
            ProbeKind::Answer => {
                if want_early {
                    if let Some((_, g)) = it.next() {
                        if !eos.contains(&g) {
                            out[k].early_ids.push(g);
                            if !early_done(model, &out[k].early_ids, setup.early_tokens)? {
                                open.push(k);
                            }
                        }
                    }
                }
                if answer.is_some() {
                    let lps: Vec<f64> = it.map(|(lp, _)| lp[0] as f64).collect();
                    if !lps.is_empty() {
                        out[k].answer_logprob = Some(lps.iter().sum::<f64>() / lps.len() as f64);
                    }
                }
            }
        }
    }
    // Greedy extension of the early answers, one token per pass.
    while !open.is_empty() {
        let blocks: Vec<Block> = open
            .iter()
            .map(|&k| {
                let mut tokens = setup.suffix.clone();
                tokens.extend(&out[k].early_ids);
                Block {
                    boundary: boundaries[k],
                    reads: vec![Read::Dist {
                        point: tokens.len(),
                        tokens: Vec::new(),
                    }],
                    tokens,
                }
            })
            .collect();
        let results = run_blocks(model, trace, &blocks, packing)?;
        let mut still = Vec::new();
        for (&k, res) in open.iter().zip(results) {
            let g = res.first().map(|r| r.1).unwrap_or(0);
            if eos.contains(&g) {
                continue;
            }
            out[k].early_ids.push(g);
            if !early_done(model, &out[k].early_ids, setup.early_tokens)? {
                still.push(k);
            }
        }
        open = still;
    }
    Ok(out)
}

fn early_done(model: &Model, ids: &[i64], budget: usize) -> Result<bool, ModelError> {
    if ids.len() >= budget {
        return Ok(true);
    }
    let text = model.tokenizer.decode(ids, true)?;
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
