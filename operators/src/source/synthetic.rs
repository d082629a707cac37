//! The synthetic task as tables, for `source: {synth: ...}`.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{Field, Schema};
use sspo_engine::OpError;

use crate::tasks::synth::{self, SynthConfig};

/// The synthetic task as a table: the core columns come out of the same mapping, split and
/// limit logic as a file's, and the task's ground truth (oracle trace and length,
/// redundancy and slip counts) rides along as extra columns for evaluation.
pub(super) fn problems_table(cfg: &SynthConfig) -> Result<RecordBatch, OpError> {
    let problems = synth::generate(cfg).map_err(|e| OpError::context("synth", e))?;
    let text = |f: fn(&synth::SynthProblem) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(problems.iter().map(f)))
    };
    let count = |f: fn(&synth::SynthProblem) -> u32| -> ArrayRef {
        Arc::new(UInt32Array::from_iter_values(problems.iter().map(f)))
    };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", text(|p| &p.id)),
        ("prompt", text(|p| &p.prompt)),
        ("answer", text(|p| &p.answer)),
        ("trace", text(|p| &p.trace)),
        ("oracle_trace", text(|p| &p.oracle_trace)),
        ("trace_answer", text(|p| &p.trace_answer)),
        (
            "trace_correct",
            Arc::new(BooleanArray::from_iter(
                problems.iter().map(|p| Some(p.trace_correct)),
            )),
        ),
        ("n_needed_steps", count(|p| p.n_needed_steps)),
        ("n_redundant_steps", count(|p| p.n_redundant_steps)),
        ("n_errors", count(|p| p.n_errors)),
        ("n_fixes", count(|p| p.n_fixes)),
        ("trace_tokens", count(|p| p.trace_tokens)),
        ("oracle_tokens", count(|p| p.oracle_tokens)),
    ];
    batch_of(columns)
}

/// The synthetic task's SFT corpus (`synth_rows: sft`): `id, prompt, answer, response,
/// context, target, kind`, in problem order, each problem's trace row before its
/// probe-teaching rows.
pub(super) fn sft_table(cfg: &SynthConfig) -> Result<RecordBatch, OpError> {
    let problems = synth::generate(cfg).map_err(|e| OpError::context("synth", e))?;
    let rows = synth::sft_rows(cfg, &problems);
    // Rows come problem by problem, each starting with its trace row.
    let mut answers = Vec::with_capacity(rows.len());
    let mut current = problems.iter();
    let mut answer = "";
    for r in &rows {
        if r.kind == synth::SftKind::Trace {
            answer = current.next().map_or("", |p| p.answer.as_str());
        }
        answers.push(answer);
    }
    let text = |v: Vec<&str>| -> ArrayRef { Arc::new(StringArray::from_iter_values(v)) };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", text(rows.iter().map(|r| r.id.as_str()).collect())),
        (
            "prompt",
            text(rows.iter().map(|r| r.prompt.as_str()).collect()),
        ),
        ("answer", text(answers)),
        (
            "response",
            text(rows.iter().map(|r| r.response.as_str()).collect()),
        ),
        (
            "context",
            text(rows.iter().map(|r| r.context.as_str()).collect()),
        ),
        (
            "target",
            text(rows.iter().map(|r| r.target.as_str()).collect()),
        ),
        (
            "kind",
            text(
                rows.iter()
                    .map(|r| match r.kind {
                        synth::SftKind::Trace => "trace",
                        synth::SftKind::Probe => "probe",
                    })
                    .collect(),
            ),
        ),
    ];
    batch_of(columns)
}

/// A batch of non-null named columns.
fn batch_of(columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch, OpError> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, a)| Field::new(*name, a.data_type().clone(), false))
            .collect::<Vec<_>>(),
    ));
    Ok(RecordBatch::try_new(
        schema,
        columns.into_iter().map(|(_, a)| a).collect(),
    )?)
}
