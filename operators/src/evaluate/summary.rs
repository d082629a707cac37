//! The `summary` table: one row per model, computed from the committed per-sample rows,
//! and the lines the CLI prints from it.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder,
};
use arrow::datatypes::{Field, Int32Type, Schema};
use serde::Serialize;
use sspo_engine::OpError;

use crate::columns::{cell, utf8_column};

/// Columns of the `summary` table, in order.
pub const SUMMARY_COLUMNS: [&str; 12] = [
    "model",
    "n",
    "accuracy",
    "mean_tokens",
    "median_tokens",
    "p90_tokens",
    "mean_steps",
    "clipped_ratio",
    "length_reduction",
    "accuracy_delta",
    "oracle_tokens",
    "redundancy_removed",
];

/// The per-sample rows of one model that the summary and the report read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelRows {
    pub model: String,
    pub n_tokens: Vec<i32>,
    pub n_steps: Vec<i32>,
    pub clipped: Vec<bool>,
    pub correct: Vec<bool>,
    /// Oracle lengths of the rows that have one.
    pub oracle_tokens: Vec<i32>,
}

/// The committed rows, grouped by model in the order the models are listed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerModel(pub Vec<ModelRows>);

impl PerModel {
    /// Reads the per-sample table; rows of models not in `names` are ignored.
    pub fn from_table(table: &RecordBatch, names: &[String]) -> Result<Self, OpError> {
        let mut out: Vec<ModelRows> = names
            .iter()
            .map(|n| ModelRows {
                model: n.clone(),
                ..Default::default()
            })
            .collect();
        if table.num_rows() == 0 {
            return Ok(PerModel(out));
        }
        let index: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let col = |name: &str| {
            table
                .column_by_name(name)
                .ok_or_else(|| OpError::msg(format!("the evaluation table has no `{name}`")))
        };
        let model = utf8_column(table, "model")?
            .ok_or_else(|| OpError::msg("the evaluation table has no `model`"))?;
        let finish = utf8_column(table, "finish_reason")?
            .ok_or_else(|| OpError::msg("the evaluation table has no `finish_reason`"))?;
        let n_tokens = col("n_tokens")?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| OpError::msg("`n_tokens` is not Int32"))?;
        let n_steps = col("n_steps")?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| OpError::msg("`n_steps` is not Int32"))?;
        let oracle = col("oracle_tokens")?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| OpError::msg("`oracle_tokens` is not Int32"))?;
        let correct = col("correct")?
            .as_boolean_opt()
            .ok_or_else(|| OpError::msg("`correct` is not Boolean"))?;
        for i in 0..table.num_rows() {
            let Some(&m) = cell(&model, i).and_then(|m| index.get(m)) else {
                continue;
            };
            let r = &mut out[m];
            r.n_tokens.push(n_tokens.value(i));
            r.n_steps.push(n_steps.value(i));
            r.clipped.push(cell(&finish, i) == Some("length"));
            r.correct.push(correct.is_valid(i) && correct.value(i));
            if oracle.is_valid(i) {
                r.oracle_tokens.push(oracle.value(i));
            }
        }
        Ok(PerModel(out))
    }
}

/// One row of the `summary` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    pub model: String,
    pub n: i64,
    pub accuracy: Option<f64>,
    pub mean_tokens: Option<f64>,
    pub median_tokens: Option<i32>,
    pub p90_tokens: Option<i32>,
    pub mean_steps: Option<f64>,
    pub clipped_ratio: Option<f64>,
    pub length_reduction: Option<f64>,
    pub accuracy_delta: Option<f64>,
    pub oracle_tokens: Option<f64>,
    pub redundancy_removed: Option<f64>,
}

/// The nearest-rank `pct`-th percentile of `values` (sorted ascending inside): the value
/// of rank `ceil(pct · n / 100)` (1-based, at least 1), computed in integers so that SQL
/// can reproduce it exactly: median = rank `(n + 1) / 2`, p90 = rank `(9n + 9) / 10`.
pub fn nearest_rank(values: &[i32], pct: usize) -> Option<i32> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    let rank = (pct * n).div_ceil(100).max(1);
    v.get(rank - 1).copied()
}

fn mean<T: Copy + Into<f64>>(v: &[T]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    Some(v.iter().map(|x| (*x).into()).sum::<f64>() / v.len() as f64)
}

fn share(v: &[bool]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    Some(v.iter().filter(|b| **b).count() as f64 / v.len() as f64)
}

/// The summary rows, one per model in order; `base` indexes the baseline.
pub fn summarize(per_model: &PerModel, base: usize) -> Vec<ModelSummary> {
    let mut rows: Vec<ModelSummary> = per_model
        .0
        .iter()
        .map(|r| ModelSummary {
            model: r.model.clone(),
            n: r.n_tokens.len() as i64,
            accuracy: share(&r.correct),
            mean_tokens: mean(&r.n_tokens),
            median_tokens: nearest_rank(&r.n_tokens, 50),
            p90_tokens: nearest_rank(&r.n_tokens, 90),
            mean_steps: mean(&r.n_steps),
            clipped_ratio: share(&r.clipped),
            length_reduction: None,
            accuracy_delta: None,
            oracle_tokens: mean(&r.oracle_tokens),
            redundancy_removed: None,
        })
        .collect();
    let Some(b) = rows.get(base).cloned() else {
        return rows;
    };
    for r in &mut rows {
        r.length_reduction = match (r.mean_tokens, b.mean_tokens) {
            (Some(l), Some(lb)) if lb > 0.0 => Some(1.0 - l / lb),
            _ => None,
        };
        r.accuracy_delta = match (r.accuracy, b.accuracy) {
            (Some(a), Some(ab)) => Some(a - ab),
            _ => None,
        };
        r.redundancy_removed = match (r.mean_tokens, b.mean_tokens, b.oracle_tokens) {
            (Some(l), Some(lb), Some(ob)) if lb - ob > 0.0 => Some((lb - l) / (lb - ob)),
            _ => None,
        };
    }
    rows
}

/// The `summary` table.
pub fn summary_batch(rows: &[ModelSummary]) -> Result<RecordBatch, OpError> {
    let n = rows.len();
    let mut model = StringBuilder::with_capacity(n, n * 8);
    let mut count = Int64Builder::with_capacity(n);
    let mut f: Vec<Float64Builder> = (0..8).map(|_| Float64Builder::with_capacity(n)).collect();
    let mut median = Int32Builder::with_capacity(n);
    let mut p90 = Int32Builder::with_capacity(n);
    for r in rows {
        model.append_value(&r.model);
        count.append_value(r.n);
        median.append_option(r.median_tokens);
        p90.append_option(r.p90_tokens);
        let floats = [
            r.accuracy,
            r.mean_tokens,
            r.mean_steps,
            r.clipped_ratio,
            r.length_reduction,
            r.accuracy_delta,
            r.oracle_tokens,
            r.redundancy_removed,
        ];
        for (b, v) in f.iter_mut().zip(floats) {
            b.append_option(v);
        }
    }
    let mut fin = |i: usize| -> ArrayRef { Arc::new(f[i].finish()) };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(model.finish()),
        Arc::new(count.finish()),
        fin(0),
        fin(1),
        Arc::new(median.finish()),
        Arc::new(p90.finish()),
        fin(2),
        fin(3),
        fin(4),
        fin(5),
        fin(6),
        fin(7),
    ];
    let fields: Vec<Field> = SUMMARY_COLUMNS
        .iter()
        .zip(&cols)
        .map(|(name, c)| {
            Field::new(
                *name,
                c.data_type().clone(),
                *name != "model" && *name != "n",
            )
        })
        .collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// A few lines the CLI prints at the end of the run.
/// (The CLI prints it under the node's name.)
pub fn summary_text(rows: &[ModelSummary], base: usize) -> String {
    let mut out = String::from("accuracy and response length per model (n = responses):");
    let width = rows.iter().map(|r| r.model.len()).max().unwrap_or(0);
    for (i, r) in rows.iter().enumerate() {
        let mut line = format!(
            "\n  {:<width$}  n {:>5}  accuracy {}  mean tokens {}",
            r.model,
            r.n,
            fmt_opt(r.accuracy, 3),
            fmt_opt(r.mean_tokens, 1),
        );
        if i == base {
            line.push_str("  (base)");
        } else {
            line.push_str(&format!(
                "  length reduction {}  accuracy delta {}",
                fmt_pct(r.length_reduction),
                fmt_signed(r.accuracy_delta, 3)
            ));
            if let Some(x) = r.redundancy_removed {
                line.push_str(&format!("  redundancy removed {:.1}%", 100.0 * x));
            }
        }
        out.push_str(&line);
    }
    out
}

pub(crate) fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

pub(crate) fn fmt_signed(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:+.digits$}"))
}

pub(crate) fn fmt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{:.1}%", 100.0 * x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The integer forms below are the SQL ones the docs give, written out on purpose.
    #[allow(clippy::manual_div_ceil)]
    fn nearest_rank_percentiles() {
        assert_eq!(nearest_rank(&[], 50), None);
        assert_eq!(nearest_rank(&[7], 50), Some(7));
        assert_eq!(nearest_rank(&[7], 90), Some(7));
        // n = 4: median rank 2, p90 rank 4.
        assert_eq!(nearest_rank(&[4, 1, 3, 2], 50), Some(2));
        assert_eq!(nearest_rank(&[4, 1, 3, 2], 90), Some(4));
        // n = 10: p90 rank 9; n = 11: rank 10; n = 20: rank 18.
        let ten: Vec<i32> = (1..=10).collect();
        assert_eq!(nearest_rank(&ten, 90), Some(9));
        assert_eq!(nearest_rank(&ten, 50), Some(5));
        let eleven: Vec<i32> = (1..=11).collect();
        assert_eq!(nearest_rank(&eleven, 90), Some(10));
        assert_eq!(nearest_rank(&eleven, 50), Some(6));
        let twenty: Vec<i32> = (1..=20).collect();
        assert_eq!(nearest_rank(&twenty, 90), Some(18));
        // The integer forms the docs give for SQL agree with it.
        for n in 1..200usize {
            assert_eq!((50 * n).div_ceil(100), n.div_ceil(2));
            assert_eq!((50 * n).div_ceil(100), (n + 1) / 2);
            assert_eq!((90 * n).div_ceil(100), (9 * n + 9) / 10);
        }
    }

    fn rows(model: &str, toks: &[i32], correct: &[bool], oracle: &[i32]) -> ModelRows {
        ModelRows {
            model: model.into(),
            n_tokens: toks.to_vec(),
            n_steps: toks.iter().map(|t| t / 10).collect(),
            clipped: toks.iter().map(|t| *t >= 100).collect(),
            correct: correct.to_vec(),
            oracle_tokens: oracle.to_vec(),
        }
    }

    #[test]
    fn summary_against_the_base() {
        let pm = PerModel(vec![
            rows(
                "base",
                &[100, 100, 60, 60],
                &[true, false, false, true],
                &[20, 20, 20, 20],
            ),
            rows(
                "short",
                &[40, 40, 20, 20],
                &[true, true, false, true],
                &[20, 20, 20, 20],
            ),
            rows("empty", &[], &[], &[]),
        ]);
        let s = summarize(&pm, 0);
        assert_eq!(s[0].length_reduction, Some(0.0));
        assert_eq!(s[0].accuracy_delta, Some(0.0));
        assert_eq!(s[0].redundancy_removed, Some(0.0));
        assert_eq!(s[0].mean_tokens, Some(80.0));
        assert_eq!(s[0].median_tokens, Some(60));
        assert_eq!(s[0].p90_tokens, Some(100));
        assert_eq!(s[0].clipped_ratio, Some(0.5));
        assert_eq!(s[0].mean_steps, Some(8.0));
        assert_eq!(s[1].mean_tokens, Some(30.0));
        assert_eq!(s[1].length_reduction, Some(1.0 - 30.0 / 80.0));
        assert_eq!(s[1].accuracy_delta, Some(0.25));
        assert_eq!(s[1].oracle_tokens, Some(20.0));
        // (80 − 30) / (80 − 20)
        assert_eq!(s[1].redundancy_removed, Some(50.0 / 60.0));
        assert_eq!(s[2].n, 0);
        assert_eq!(s[2].accuracy, None);
        assert_eq!(s[2].length_reduction, None);
        // Another base.
        let s = summarize(&pm, 1);
        assert_eq!(s[1].length_reduction, Some(0.0));
        assert_eq!(s[0].accuracy_delta, Some(-0.25));
        let b = summary_batch(&s).unwrap();
        let names: Vec<String> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, SUMMARY_COLUMNS);
        assert_eq!(b.num_rows(), 3);
        let text = summary_text(&s, 1);
        assert!(text.contains("(base)"), "{text}");
        assert!(text.contains("length reduction -166.7%"), "{text}");
    }
}
