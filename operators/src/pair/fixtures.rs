//! Hand-written `rollouts` / `steps` / `values` tables and column readers for `pair`'s
//! tests: the chunk-level unit tests (`tests.rs`) and the engine-level ones
//! (`operators/tests/pair.rs`, which includes this file by path). Each side uses a subset.
#![allow(dead_code)]

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int32Builder, ListArray, RecordBatch,
    StringBuilder,
};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type};

/// A boundary row: `(step, value, early_correct, early_answer)`.
pub type Boundary<'a> = (i32, Option<f64>, Option<bool>, Option<&'a str>);

/// A hand-written rollout: its steps `(text, tokens)` and boundary values.
pub struct Rollout<'a> {
    pub rid: &'a str,
    pub id: &'a str,
    pub correct: Option<bool>,
    pub steps: Vec<(&'a str, Option<i32>)>,
    pub values: Vec<Boundary<'a>>,
    /// A two-kind probe's `(verbal_value, answer_value)` per row of `values`; rows past
    /// its end are null.
    pub kind_values: Vec<(Option<f64>, Option<f64>)>,
}

impl Rollout<'_> {
    /// Sets the two-kind probe's value columns, one entry per row of `values`.
    pub fn with_kind_values(mut self, verbal: &[f64], answer: &[f64]) -> Self {
        self.kind_values = verbal
            .iter()
            .zip(answer)
            .map(|(&v, &a)| (Some(v), Some(a)))
            .collect();
        self
    }
}

/// `(rollouts, steps, values)` of the rollouts; `values` has the columns of a two-kind
/// probe (`verbal_value`, `answer_value`: null unless set with `with_kind_values`).
/// Prompts read `What is 5 + 7? (<id>)`; contexts wrap them as `Question: <prompt>\nAnswer:`.
pub fn tables(rs: &[Rollout]) -> (RecordBatch, RecordBatch, RecordBatch) {
    let mut rid = StringBuilder::new();
    let mut id = StringBuilder::new();
    let mut prompt = StringBuilder::new();
    let mut response = StringBuilder::new();
    let mut context = StringBuilder::new();
    let mut correct = BooleanBuilder::new();
    let mut s_key = StringBuilder::new();
    let mut s_step = Int32Builder::new();
    let mut s_text = StringBuilder::new();
    let mut s_tok = Int32Builder::new();
    let mut v_key = StringBuilder::new();
    let mut v_step = Int32Builder::new();
    let mut v_val = Float64Builder::new();
    let mut v_ec = BooleanBuilder::new();
    let mut v_ea = StringBuilder::new();
    let mut v_verbal = Float64Builder::new();
    let mut v_answer = Float64Builder::new();
    for r in rs {
        rid.append_value(r.rid);
        id.append_value(r.id);
        prompt.append_value(format!("What is 5 + 7? ({})", r.id));
        context.append_value(format!("Question: What is 5 + 7? ({})\nAnswer:", r.id));
        response.append_value(r.steps.iter().map(|s| s.0).collect::<String>());
        correct.append_option(r.correct);
        for (k, (t, n)) in r.steps.iter().enumerate() {
            s_key.append_value(r.rid);
            s_step.append_value(k as i32 + 1);
            s_text.append_value(t);
            s_tok.append_option(*n);
        }
        for (i, (k, v, ec, ea)) in r.values.iter().enumerate() {
            v_key.append_value(r.rid);
            v_step.append_value(*k);
            v_val.append_option(*v);
            v_ec.append_option(*ec);
            v_ea.append_option(*ea);
            let (verbal, answer) = r.kind_values.get(i).copied().unwrap_or_default();
            v_verbal.append_option(verbal);
            v_answer.append_option(answer);
        }
    }
    let batch = |cols: Vec<(&str, ArrayRef)>| RecordBatch::try_from_iter(cols).unwrap();
    (
        batch(vec![
            ("rollout_id", Arc::new(rid.finish()) as ArrayRef),
            ("id", Arc::new(id.finish())),
            ("prompt", Arc::new(prompt.finish())),
            ("response", Arc::new(response.finish())),
            ("context", Arc::new(context.finish())),
            ("correct", Arc::new(correct.finish())),
        ]),
        batch(vec![
            ("rollout_id", Arc::new(s_key.finish()) as ArrayRef),
            ("step", Arc::new(s_step.finish())),
            ("text", Arc::new(s_text.finish())),
            ("n_tokens", Arc::new(s_tok.finish())),
        ]),
        batch(vec![
            ("rollout_id", Arc::new(v_key.finish()) as ArrayRef),
            ("step", Arc::new(v_step.finish())),
            ("value", Arc::new(v_val.finish())),
            ("early_correct", Arc::new(v_ec.finish())),
            ("early_answer", Arc::new(v_ea.finish())),
            ("verbal_value", Arc::new(v_verbal.finish())),
            ("answer_value", Arc::new(v_answer.finish())),
        ]),
    )
}

/// Correct; settled after step 1 (V_1 = 0.8, early answer 12), then two re-checks.
pub fn overthinker<'a>(rid: &'a str, id: &'a str) -> Rollout<'a> {
    Rollout {
        rid,
        id,
        correct: Some(true),
        steps: vec![
            ("5 + 7 = 12.\n\n", Some(10)),
            ("Check: 12 - 7 = 5.\n\n", Some(15)),
            ("Again: 7 + 5 = 12.\n\n", Some(12)),
            ("The answer is 12.", Some(6)),
        ],
        values: vec![
            (0, Some(0.1), Some(false), Some("7")),
            (1, Some(0.8), Some(true), Some("12")),
            (2, Some(0.85), Some(true), Some("12")),
            (3, Some(0.9), Some(true), Some("12")),
            (4, Some(0.95), Some(true), Some("12")),
        ],
        kind_values: Vec::new(),
    }
}

/// Incorrect; right after step 1, then a re-check that breaks the answer.
pub fn broken_recheck<'a>(rid: &'a str, id: &'a str) -> Rollout<'a> {
    Rollout {
        rid,
        id,
        correct: Some(false),
        steps: vec![
            ("5 + 7 = 12.\n\n", Some(10)),
            ("Check: 5 + 8 = 13, so it is 13.\n\n", Some(20)),
            ("So the final answer is \\boxed{13}.", Some(12)),
        ],
        values: vec![
            (0, Some(0.1), Some(false), Some("7")),
            (1, Some(0.7), Some(true), Some("12")),
            (2, Some(0.2), Some(false), Some("13")),
            (3, Some(0.1), Some(false), Some("13")),
        ],
        kind_values: Vec::new(),
    }
}

// Column readers.

pub fn strs(b: &RecordBatch, col: &str) -> Vec<Option<String>> {
    let c = arrow::compute::cast(b.column_by_name(col).unwrap(), &DataType::Utf8).unwrap();
    let a = c.as_string::<i32>();
    (0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
        .collect()
}

pub fn ints(b: &RecordBatch, col: &str) -> Vec<Option<i64>> {
    let c = arrow::compute::cast(b.column_by_name(col).unwrap(), &DataType::Int64).unwrap();
    let a = c.as_primitive::<Int64Type>();
    (0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i)))
        .collect()
}

pub fn f64s(b: &RecordBatch, col: &str) -> Vec<f64> {
    b.column_by_name(col)
        .unwrap()
        .as_primitive::<Float64Type>()
        .values()
        .to_vec()
}

pub fn list_strs(b: &RecordBatch, col: &str, row: usize) -> Vec<String> {
    let l: &ListArray = b.column_by_name(col).unwrap().as_list::<i32>();
    let v = l.value(row);
    let s = v.as_string::<i32>();
    (0..s.len()).map(|i| s.value(i).to_string()).collect()
}

pub fn list_f32(b: &RecordBatch, col: &str, row: usize) -> Vec<f32> {
    let l: &ListArray = b.column_by_name(col).unwrap().as_list::<i32>();
    l.value(row).as_primitive::<Float32Type>().values().to_vec()
}

pub fn list_i32(b: &RecordBatch, col: &str, row: usize) -> Vec<i32> {
    let l: &ListArray = b.column_by_name(col).unwrap().as_list::<i32>();
    l.value(row).as_primitive::<Int32Type>().values().to_vec()
}
