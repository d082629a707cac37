//! `pair`'s params: what a node may ask for, their defaults and their checks.

use serde::{Deserialize, Serialize};
use sspo_engine::{Diagnostics, Params};

use super::gae::GaeConfig;
use crate::tasks::AnswerFormat;

/// Where compression pairs cut a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutMode {
    /// The first boundary with `V_k ≥ τ` and a correct early-exit answer.
    #[default]
    Vvp,
    /// A boundary drawn uniformly from `1..=K−2` per correct rollout (the "without VVP"
    /// ablation).
    Random,
}

impl CutMode {
    pub(super) fn name(self) -> &'static str {
        match self {
            CutMode::Vvp => "vvp",
            CutMode::Random => "random",
        }
    }
}

/// Which value the `vvp` cut compares with `tau`: a column of the `values` table, or a
/// combination of a two-kind probe's value columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutValue {
    /// `value` (the probe's first kind; the value the advantages use).
    #[default]
    Value,
    /// `verbal_value`: `p_yes / (p_yes + p_no)`.
    Verbal,
    /// `answer_value`: `exp(mean log-prob of the reference answer)`.
    Answer,
    /// `min(verbal_value, answer_value)`: both must be at least `tau`.
    Min,
    /// `(verbal_value + answer_value) / 2`.
    Mean,
    /// `verbal_value · answer_value`.
    Product,
}

impl CutValue {
    /// The `values` columns it reads.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            CutValue::Value => &["value"],
            CutValue::Verbal => &["verbal_value"],
            CutValue::Answer => &["answer_value"],
            CutValue::Min | CutValue::Mean | CutValue::Product => &["verbal_value", "answer_value"],
        }
    }

    /// The cut value from the values of [`CutValue::columns`], in that order; `None` if
    /// any is missing.
    pub fn combine(self, v: &[Option<f64>]) -> Option<f64> {
        let v: Vec<f64> = v.iter().copied().collect::<Option<_>>()?;
        match (self, v.as_slice()) {
            (CutValue::Value | CutValue::Verbal | CutValue::Answer, [x]) => Some(*x),
            (CutValue::Min, [a, b]) => Some(a.min(*b)),
            (CutValue::Mean, [a, b]) => Some((a + b) / 2.0),
            (CutValue::Product, [a, b]) => Some(a * b),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CutValue::Value => "value",
            CutValue::Verbal => "verbal",
            CutValue::Answer => "answer",
            CutValue::Min => "min",
            CutValue::Mean => "mean",
            CutValue::Product => "product",
        }
    }

    /// The default, which is left out of the fingerprint so that configs written before
    /// the param existed keep theirs.
    fn is_value(&self) -> bool {
        *self == CutValue::Value
    }
}

/// Which pairs `pair` emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairKind {
    Compression,
    Outcome,
}

impl PairKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            PairKind::Compression => "compression",
            PairKind::Outcome => "outcome",
        }
    }
}

/// Params of `pair`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairParams {
    /// Discount `γ` in `[0, 1]`.
    pub gamma: f64,
    /// GAE `λ` in `[0, 1]`.
    pub lambda: f64,
    /// Length cost `c ≥ 0` per token of a step.
    pub length_cost: f64,
    /// `ε` of the relative normalisation.
    pub eps: f64,
    /// Value threshold `τ` of the compression cut.
    pub tau: f64,
    /// Boundaries in a row (from `k*` on, up to the last) that must pass the cut test, so
    /// that an answer the model reaches by chance and then leaves is not taken as settled.
    /// 1 = the first passing boundary.
    pub settle: usize,
    /// A compression pair must save at least this many tokens (≥ 1).
    pub min_saving: i64,
    /// `vvp` (default) or `random` (the ablation).
    pub cut: CutMode,
    /// The value the `vvp` cut compares with `tau`.
    #[serde(skip_serializing_if = "CutValue::is_value")]
    pub cut_value: CutValue,
    /// Pair kinds to emit (default both).
    pub kinds: Vec<PairKind>,
    /// Outcome pairs per query (0 = none).
    pub outcome_pairs: usize,
    /// How the final answer is written in the last step (as in `generate`).
    pub answer_format: AnswerFormat,
    /// Queries per committed chunk.
    pub chunk_rows: usize,
}

impl Default for PairParams {
    fn default() -> Self {
        PairParams {
            gamma: 1.0,
            lambda: 0.95,
            length_cost: 0.01,
            eps: 1e-6,
            tau: 0.5,
            settle: 1,
            min_saving: 8,
            cut: CutMode::Vvp,
            cut_value: CutValue::Value,
            kinds: vec![PairKind::Compression, PairKind::Outcome],
            outcome_pairs: 1,
            answer_format: AnswerFormat::Auto,
            chunk_rows: 256,
        }
    }
}

impl PairParams {
    /// Semantic checks, located at the offending key.
    pub fn check(&self, params: &Params) -> Diagnostics {
        let mut d = Diagnostics::new();
        let mut err = |key: &str, msg: &str| d.push(params.error(&[key], msg.to_string()));
        if !(0.0..=1.0).contains(&self.gamma) {
            err("gamma", "`gamma` must be in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.lambda) {
            err("lambda", "`lambda` must be in [0, 1]");
        }
        if !(self.length_cost >= 0.0 && self.length_cost.is_finite()) {
            err("length_cost", "`length_cost` must be a finite number >= 0");
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            err("eps", "`eps` must be a finite number >= 0");
        }
        if self.settle == 0 {
            err("settle", "`settle` must be at least 1");
        }
        if !self.tau.is_finite() {
            err("tau", "`tau` must be a finite number");
        }
        if self.min_saving < 1 {
            err(
                "min_saving",
                "`min_saving` must be at least 1 (a compression pair must save tokens)",
            );
        }
        if self.kinds.is_empty() {
            err(
                "kinds",
                "`kinds` must list at least one of `compression`, `outcome`",
            );
        }
        let mut seen = self.kinds.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.kinds.len() {
            err("kinds", "`kinds` lists a kind twice");
        }
        if self.chunk_rows == 0 {
            err("chunk_rows", "`chunk_rows` must be at least 1");
        }
        d
    }

    pub(super) fn wants(&self, kind: PairKind) -> bool {
        self.kinds.contains(&kind)
    }

    /// Whether the values table must carry early-exit answers.
    pub(super) fn needs_early_answers(&self) -> bool {
        self.wants(PairKind::Compression) && self.cut == CutMode::Vvp
    }

    pub(super) fn gae(&self) -> GaeConfig {
        GaeConfig {
            gamma: self.gamma,
            lambda: self.lambda,
            length_cost: self.length_cost,
        }
    }
}
