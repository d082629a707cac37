//! Reading `pair`'s three input tables and joining them per rollout: the rollouts, their
//! steps (from `segment`) and their boundary values (from `probe`).

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, BooleanArray, PrimitiveArray, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int64Type};
use sspo_engine::OpError;

use super::gae::{self, GaeConfig, StepAdvantages};
use super::{Counter, CutValue, PairParams};
use crate::columns::{cell, flag, value, PortTable};

/// One step row of the `steps` table.
#[derive(Debug, Clone)]
struct StepRow {
    step: Option<i64>,
    text: String,
    tokens: Option<i64>,
}

/// One boundary row of the `values` table.
#[derive(Debug, Clone)]
struct ValueRow {
    step: i64,
    value: Option<f64>,
    /// The value the `vvp` cut compares with `tau` (`cut_value`).
    cut: Option<f64>,
    early_correct: Option<bool>,
    early_answer: Option<String>,
}

/// The three input tables, indexed by rollout.
pub struct Inputs {
    rollout_id: StringArray,
    id: StringArray,
    pub(super) prompt: StringArray,
    response: StringArray,
    pub(super) context: Option<StringArray>,
    correct: BooleanArray,
    steps: HashMap<String, Vec<StepRow>>,
    values: HashMap<String, Vec<ValueRow>>,
    pub(super) orphan_steps: u64,
    pub(super) orphan_values: u64,
}

/// The `values` columns `cut_value` combines, when it reads others than `value` and the
/// cut uses them; a missing one is an error naming the probe that writes it.
fn cut_columns(
    values: &PortTable<'_>,
    p: &PairParams,
) -> Result<Option<Vec<PrimitiveArray<Float64Type>>>, OpError> {
    if !p.needs_early_answers() || p.cut_value == CutValue::Value {
        return Ok(None);
    }
    let mut cols = Vec::new();
    for &name in p.cut_value.columns() {
        let col = values.numbers::<Float64Type>(name)?.ok_or_else(|| {
            OpError::msg(format!(
                "the `values` table has no column `{name}`, which `cut_value: {}` reads: \
                 probe with `kind: [verbal, answer]` (a value column per kind), or cut on \
                 `value`",
                p.cut_value.name()
            ))
        })?;
        cols.push(col);
    }
    Ok(Some(cols))
}

/// Rollout rows grouped by query, in order of first appearance.
pub struct Groups {
    pub queries: Vec<(String, Vec<usize>)>,
    pub missing_keys: u64,
    pub duplicates: u64,
}

impl Inputs {
    /// Reads and indexes the input tables; fails on missing columns, on a steps table
    /// without any token count, and (for `cut: vvp` compression) on a values table without
    /// any early-exit answer.
    pub fn load(
        rollouts: &RecordBatch,
        steps: &RecordBatch,
        values: &RecordBatch,
        p: &PairParams,
    ) -> Result<Self, OpError> {
        let rollouts = PortTable::new("rollouts", rollouts);
        let rollout_id = rollouts.need("rollout_id", PortTable::utf8)?;
        let correct = rollouts.need("correct", PortTable::flags)?;
        let known: HashSet<&str> = (0..rollout_id.len())
            .filter_map(|i| cell(&rollout_id, i))
            .collect();

        let steps = PortTable::new("steps", steps);
        let s_key = steps.need("rollout_id", PortTable::utf8)?;
        let s_step = steps.need("step", PortTable::numbers::<Int64Type>)?;
        let s_text = steps.need("text", PortTable::utf8)?;
        let s_tokens = steps.need("n_tokens", PortTable::numbers::<Int64Type>)?;
        let n_steps = steps.table.num_rows();
        if n_steps > 0 && s_tokens.null_count() == n_steps {
            return Err(OpError::msg(
                "the `steps` table has no token counts (`n_tokens` is null in every row): \
                 run `segment` with a `tokenizer` so that step lengths are counted in tokens",
            ));
        }
        let mut step_map: HashMap<String, Vec<StepRow>> = HashMap::new();
        let mut orphan_steps = 0;
        for i in 0..n_steps {
            let Some(k) = cell(&s_key, i) else {
                orphan_steps += 1;
                continue;
            };
            if !known.contains(k) {
                orphan_steps += 1;
                continue;
            }
            step_map.entry(k.to_string()).or_default().push(StepRow {
                step: value(&s_step, i),
                text: cell(&s_text, i).unwrap_or("").to_string(),
                tokens: value(&s_tokens, i),
            });
        }
        for v in step_map.values_mut() {
            v.sort_by_key(|s| s.step);
        }

        let values = PortTable::new("values", values);
        let v_key = values.need("rollout_id", PortTable::utf8)?;
        let v_step = values.need("step", PortTable::numbers::<Int64Type>)?;
        let v_value = values.need("value", PortTable::numbers::<Float64Type>)?;
        let v_early_correct = values.flags("early_correct")?;
        let v_early_answer = values.utf8("early_answer")?;
        let n_values = values.table.num_rows();
        let cut_cols = cut_columns(&values, p)?;
        if p.needs_early_answers() {
            let hint = "`cut: vvp` needs the early-exit answers of a probe whose kinds include \
                        `answer` (`kind: answer`, or `kind: [verbal, answer]` to cut on verbal \
                        values) with `early_answer_tokens` > 0; use such a probe, \
                        `cut: random`, or `kinds: [outcome]`";
            match (&v_early_correct, &v_early_answer) {
                (Some(ec), Some(_)) => {
                    if n_values > 0 && ec.null_count() == n_values {
                        return Err(OpError::msg(format!(
                            "the `values` table has no early-exit answers (`early_correct` is \
                             null in every row, as a `kind: verbal` probe writes it): {hint}"
                        )));
                    }
                }
                _ => {
                    return Err(OpError::msg(format!(
                        "the `values` table has no `early_correct` / `early_answer` columns: {hint}"
                    )))
                }
            }
        }
        let mut value_map: HashMap<String, Vec<ValueRow>> = HashMap::new();
        let mut orphan_values = 0;
        for i in 0..n_values {
            let (Some(k), Some(step)) = (cell(&v_key, i), value(&v_step, i)) else {
                orphan_values += 1;
                continue;
            };
            if !known.contains(k) {
                orphan_values += 1;
                continue;
            }
            let v = value(&v_value, i);
            let cut = match &cut_cols {
                Some(cols) => {
                    let row: Vec<Option<f64>> = cols.iter().map(|c| value(c, i)).collect();
                    p.cut_value.combine(&row)
                }
                None => v,
            };
            value_map.entry(k.to_string()).or_default().push(ValueRow {
                step,
                value: v,
                cut,
                early_correct: v_early_correct.as_ref().and_then(|a| flag(a, i)),
                early_answer: v_early_answer
                    .as_ref()
                    .and_then(|a| cell(a, i))
                    .map(str::to_string),
            });
        }
        for v in value_map.values_mut() {
            v.sort_by_key(|r| r.step);
        }

        Ok(Inputs {
            id: rollouts.need("id", PortTable::utf8)?,
            prompt: rollouts.need("prompt", PortTable::utf8)?,
            response: rollouts.need("response", PortTable::utf8)?,
            context: rollouts.utf8("context")?,
            rollout_id,
            correct,
            steps: step_map,
            values: value_map,
            orphan_steps,
            orphan_values,
        })
    }

    /// Rollout rows grouped by query id; rows without a key and repeated rollout ids are
    /// left out (and counted).
    pub fn queries(&self) -> Groups {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut g = Groups {
            queries: Vec::new(),
            missing_keys: 0,
            duplicates: 0,
        };
        for i in 0..self.rollout_id.len() {
            let (Some(r), Some(q)) = (cell(&self.rollout_id, i), cell(&self.id, i)) else {
                g.missing_keys += 1;
                continue;
            };
            if !seen.insert(r) {
                g.duplicates += 1;
                continue;
            }
            let j = *index.entry(q).or_insert_with(|| {
                g.queries.push((q.to_string(), Vec::new()));
                g.queries.len() - 1
            });
            g.queries[j].1.push(i);
        }
        g
    }

    /// A rollout with its steps, lengths and values, or why it is skipped.
    pub(super) fn rollout(&self, row: usize, cfg: &GaeConfig) -> Result<Rollout, Counter> {
        let key = cell(&self.rollout_id, row).unwrap_or("");
        let steps = self
            .steps
            .get(key)
            .filter(|s| !s.is_empty())
            .ok_or(Counter::RolloutsWithoutSteps)?;
        if steps
            .iter()
            .enumerate()
            .any(|(i, s)| s.step != Some(i as i64 + 1))
        {
            return Err(Counter::BadStepNumbers);
        }
        let texts: Vec<String> = steps.iter().map(|s| s.text.clone()).collect();
        if let Some(resp) = cell(&self.response, row) {
            if texts.concat() != resp {
                return Err(Counter::StepsNotMatchingResponse);
            }
        }
        let tokens: Vec<i64> = steps
            .iter()
            .map(|s| s.tokens.filter(|t| *t >= 0))
            .collect::<Option<_>>()
            .ok_or(Counter::StepsWithoutTokens)?;
        let rows = self
            .values
            .get(key)
            .filter(|v| !v.is_empty())
            .ok_or(Counter::RolloutsWithoutValues)?;
        let k_total = steps.len();
        let mut values = Vec::with_capacity(k_total + 1);
        let mut early_correct = Vec::with_capacity(k_total + 1);
        let mut early_answer = Vec::with_capacity(k_total + 1);
        let mut cut_values = Vec::with_capacity(k_total + 1);
        for k in 0..=k_total as i64 {
            // Rows are sorted by step; the first row of a boundary wins.
            let r = rows
                .iter()
                .find(|r| r.step == k)
                .ok_or(Counter::MissingValues)?;
            let v = r.value.ok_or(Counter::MissingValues)?;
            if !v.is_finite() {
                return Err(Counter::NanValues);
            }
            values.push(v);
            // A missing cut value never passes the cut test (NaN ≥ τ is false).
            cut_values.push(r.cut.unwrap_or(f64::NAN));
            early_correct.push(r.early_correct);
            early_answer.push(r.early_answer.clone());
        }
        let correct = flag(&self.correct, row).ok_or(Counter::RolloutsWithoutOutcome)?;
        let tok_f: Vec<f64> = tokens.iter().map(|&t| t as f64).collect();
        let adv = gae::rollout_advantages(cfg, &tok_f, &values, if correct { 1.0 } else { 0.0 })
            .ok_or(Counter::MissingValues)?;
        Ok(Rollout {
            row,
            rollout_id: key.to_string(),
            correct,
            steps: texts,
            tokens,
            values,
            cut_values,
            early_correct,
            early_answer,
            adv,
            rel: Vec::new(),
        })
    }
}

/// A rollout ready for pairing: its rows of the three tables, joined.
#[derive(Debug, Clone)]
pub(super) struct Rollout {
    /// Row of the rollouts table.
    pub row: usize,
    pub rollout_id: String,
    pub correct: bool,
    pub steps: Vec<String>,
    pub tokens: Vec<i64>,
    /// `V_0..V_K` as probed.
    pub values: Vec<f64>,
    /// The values the `vvp` cut compares with `tau` (`cut_value`), NaN where missing.
    pub cut_values: Vec<f64>,
    pub early_correct: Vec<Option<bool>>,
    pub early_answer: Vec<Option<String>>,
    pub adv: StepAdvantages,
    /// `Â_1..Â_K`, set once the query's rollouts are normalised together.
    pub rel: Vec<f64>,
}

impl Rollout {
    pub fn total_tokens(&self) -> i64 {
        self.tokens.iter().sum()
    }
}
