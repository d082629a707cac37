//! Turning a query's rollouts into pairs: relative advantages over the query, then the
//! compression pair of each rollout and the query's outcome pairs.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use sspo_engine::OpError;

use super::input::{Inputs, Rollout};
use super::output::{pair_batch, AdvantageBuilder};
use super::select::{self, Candidate, ConcludeError};
use super::{gae, Counter, CutMode, PairKind, PairParams};

/// One side of a pair.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Side {
    pub rollout_id: String,
    pub steps: Vec<String>,
    pub adv: Vec<f64>,
    pub tokens: Vec<i64>,
}

impl Side {
    fn full(r: &Rollout) -> Self {
        Side {
            rollout_id: r.rollout_id.clone(),
            steps: r.steps.clone(),
            adv: r.rel.clone(),
            tokens: r.tokens.clone(),
        }
    }
}

/// One row of the pairs table.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PairRow {
    pub pair_id: String,
    pub id: String,
    pub kind: PairKind,
    /// Row of the rollouts table the prompt and context come from.
    pub row: usize,
    pub chosen: Side,
    pub rejected: Side,
    pub cut_step: Option<i32>,
    pub saved_tokens: Option<i64>,
}

/// The compression pair of a rollout, or why it has none.
fn compression_pair(
    p: &PairParams,
    query: &str,
    r: &Rollout,
    seed_of: &dyn Fn(&str) -> u64,
) -> Result<PairRow, Counter> {
    let k_total = r.steps.len();
    let last = &r.steps[k_total - 1];
    let (cut, concluding) = match p.cut {
        CutMode::Vvp => {
            let cut = select::vvp_cut(&r.cut_values, &r.early_correct, p.tau, p.settle)
                .ok_or(Counter::NoCutBoundary)?;
            let early = r.early_answer[cut]
                .as_deref()
                .ok_or(Counter::NoEarlyAnswer)?;
            let text =
                select::concluding_step(&p.answer_format, last, early).map_err(|e| match e {
                    ConcludeError::NoFinalAnswer => Counter::NoFinalAnswer,
                    ConcludeError::AnswerNotInStep => Counter::AnswerNotInLastStep,
                    ConcludeError::EmptyEarlyAnswer => Counter::NoEarlyAnswer,
                })?;
            (cut, text)
        }
        CutMode::Random => {
            if !r.correct {
                return Err(Counter::RandomCutIncorrect);
            }
            let cut = select::random_cut(k_total, seed_of(&r.rollout_id))
                .ok_or(Counter::NoCutBoundary)?;
            (cut, last.clone())
        }
    };
    let concluding_tokens = select::estimate_tokens(last, r.tokens[k_total - 1], &concluding);
    let mut chosen = Side {
        rollout_id: r.rollout_id.clone(),
        steps: r.steps[..cut].to_vec(),
        adv: r.rel[..cut].to_vec(),
        tokens: r.tokens[..cut].to_vec(),
    };
    chosen.steps.push(concluding);
    chosen.adv.push(0.0);
    chosen.tokens.push(concluding_tokens);
    let saved = r.total_tokens() - chosen.tokens.iter().sum::<i64>();
    if saved < p.min_saving {
        return Err(Counter::SavingBelowMin);
    }
    Ok(PairRow {
        pair_id: format!("{}/c", r.rollout_id),
        id: query.to_string(),
        kind: PairKind::Compression,
        row: r.row,
        chosen,
        rejected: Side::full(r),
        cut_step: Some(cut as i32),
        saved_tokens: Some(saved),
    })
}

/// The outcome pairs of a query.
fn outcome_pairs(p: &PairParams, query: &str, rolls: &[Rollout]) -> Vec<PairRow> {
    let cands: Vec<Candidate> = rolls
        .iter()
        .map(|r| Candidate {
            rollout_id: &r.rollout_id,
            correct: r.correct,
            mean_adv: select::mean(&r.rel),
            tokens: r.total_tokens(),
        })
        .collect();
    select::outcome_pairs(&cands, p.outcome_pairs)
        .into_iter()
        .enumerate()
        .map(|(i, (g, b))| PairRow {
            pair_id: format!("{query}/o/{i}"),
            id: query.to_string(),
            kind: PairKind::Outcome,
            row: rolls[g].row,
            chosen: Side::full(&rolls[g]),
            rejected: Side::full(&rolls[b]),
            cut_step: None,
            saved_tokens: None,
        })
        .collect()
}

/// What one chunk of queries gives.
pub(super) struct ChunkResult {
    pub pairs: RecordBatch,
    pub advantages: RecordBatch,
    pub counts: BTreeMap<Counter, u64>,
    pub compression: u64,
    pub outcome: u64,
    pub saved: i64,
}

/// Advantages and pairs of the queries of one chunk.
pub(super) fn build_chunk(
    p: &PairParams,
    inputs: &Inputs,
    queries: &[(String, Vec<usize>)],
    seed_of: &dyn Fn(&str) -> u64,
) -> Result<ChunkResult, OpError> {
    let cfg = p.gae();
    let mut counts: BTreeMap<Counter, u64> = BTreeMap::new();
    let mut pairs = Vec::new();
    let mut adv = AdvantageBuilder::default();
    for (query, rows) in queries {
        let mut rolls = Vec::with_capacity(rows.len());
        for &row in rows {
            match inputs.rollout(row, &cfg) {
                Ok(r) => rolls.push(r),
                Err(c) => *counts.entry(c).or_default() += 1,
            }
        }
        let all: Vec<f64> = rolls
            .iter()
            .flat_map(|r| r.adv.advantage.iter().copied())
            .collect();
        let mut rel = gae::normalize(&all, p.eps).into_iter();
        for r in &mut rolls {
            r.rel = rel.by_ref().take(r.steps.len()).collect();
            adv.push(query, r);
        }
        if p.wants(PairKind::Compression) {
            for r in &rolls {
                match compression_pair(p, query, r, seed_of) {
                    Ok(pair) => pairs.push(pair),
                    Err(c) => *counts.entry(c).or_default() += 1,
                }
            }
        }
        if p.wants(PairKind::Outcome) && p.outcome_pairs > 0 {
            pairs.extend(outcome_pairs(p, query, &rolls));
        }
    }
    let compression = pairs
        .iter()
        .filter(|r| r.kind == PairKind::Compression)
        .count() as u64;
    let saved = pairs.iter().filter_map(|r| r.saved_tokens).sum();
    Ok(ChunkResult {
        pairs: pair_batch(inputs, &pairs, p.cut)?,
        advantages: adv.finish()?,
        compression,
        outcome: pairs.len() as u64 - compression,
        saved,
        counts,
    })
}
