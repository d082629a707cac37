//! From the read table to the problem table: which file columns feed `prompt`, `answer`
//! and `id`, which rows are emitted (with what id, answer and split), and the output
//! chunks.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, StringBuilder, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use rayon::prelude::*;
use sspo_common::rng::{blake3_parts, blake3_u64, unit_f64};
use sspo_common::suggest::did_you_mean;
use sspo_engine::{ChunkOutput, OpError, RunContext};

use super::{ColumnMap, SourceParams, CORE_COLUMNS};
use crate::columns::{as_utf8, cell};

/// Default mapping candidates, first present wins.
const PROMPT_CANDIDATES: [&str; 3] = ["prompt", "question", "problem"];
const ANSWER_CANDIDATES: [&str; 2] = ["answer", "solution"];

/// The file columns that feed `prompt`, `answer`, `id` (written mapping, else defaults).
#[derive(Debug, Clone, Default)]
pub(super) struct Resolved {
    pub prompt: Option<String>,
    pub answer: Option<String>,
    pub id: Option<String>,
}

pub(super) fn resolve_names(m: &ColumnMap, names: &[String]) -> Resolved {
    let has = |c: &str| names.iter().any(|n| n == c);
    let pick = |cands: &[&str]| cands.iter().find(|c| has(c)).map(|c| c.to_string());
    Resolved {
        prompt: m.prompt.clone().or_else(|| pick(&PROMPT_CANDIDATES)),
        answer: m.answer.clone().or_else(|| pick(&ANSWER_CANDIDATES)),
        id: m.id.clone().or_else(|| pick(&["id"])),
    }
}

/// Why an input row is not emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    NoPrompt,
    NoAnswer,
    DuplicateId,
    BeyondLimit,
}

/// The whole file, checked once: which rows are emitted, with what id and answer.
pub(super) struct Prepared {
    prompt: StringArray,
    answer_text: StringArray,
    /// Per input row: (id, answer) when emitted, else why not.
    rows: Vec<Result<(String, String), Skip>>,
    extras: Vec<(String, ArrayRef)>,
    test_fraction: Option<f64>,
    split_seed: u64,
}

impl Prepared {
    pub fn new(table: &RecordBatch, p: &SourceParams, split_seed: u64) -> Result<Self, OpError> {
        let names: Vec<String> = table
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let r = resolve_names(&p.columns, &names);
        let column = |role: &str,
                      name: &Option<String>,
                      cands: &[&str]|
         -> Result<StringArray, OpError> {
            let Some(name) = name else {
                return Err(OpError::msg(format!(
                    "no {role} column: the data has columns [{}]; expected one of {} or `columns: {{{role}: ...}}`",
                    names.join(", "),
                    cands.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
                )));
            };
            let col = table.column_by_name(name).ok_or_else(|| {
                let hint = did_you_mean(name, names.iter().map(String::as_str))
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                OpError::msg(format!(
                    "columns.{role}: the data has no column `{name}`{hint}; it has [{}]",
                    names.join(", ")
                ))
            })?;
            as_utf8(col).map_err(|e| {
                OpError::context(
                    format!("column `{name}` ({role}) cannot be read as text"),
                    e,
                )
            })
        };
        let prompt = column("prompt", &r.prompt, &PROMPT_CANDIDATES)?;
        let answer_text = column("answer", &r.answer, &ANSWER_CANDIDATES)?;
        let ids = match (&r.id, p.columns.id.is_some()) {
            (Some(_), _) => Some(column("id", &r.id, &["id"])?),
            (None, _) => None,
        };

        let fmt = p.answer_format;
        let n = table.num_rows();
        let firsts: Vec<Result<(String, String), Skip>> = (0..n)
            .into_par_iter()
            .map(|i| {
                let text = cell(&prompt, i)
                    .filter(|t| !t.trim().is_empty())
                    .ok_or(Skip::NoPrompt)?;
                let raw = cell(&answer_text, i).unwrap_or("");
                let answer = fmt.extract_reference(raw).ok_or(Skip::NoAnswer)?;
                let id = match ids.as_ref().and_then(|ids| cell(ids, i)) {
                    Some(id) if !id.is_empty() => id.to_string(),
                    _ => content_id(text, raw),
                };
                Ok((id, answer))
            })
            .collect();
        let mut seen = HashSet::new();
        let mut kept = 0usize;
        let rows = firsts
            .into_iter()
            .map(|r| {
                let (id, answer) = r?;
                if p.limit.is_some_and(|l| kept >= l) {
                    return Err(Skip::BeyondLimit);
                }
                if !seen.insert(id.clone()) {
                    return Err(Skip::DuplicateId);
                }
                kept += 1;
                Ok((id, answer))
            })
            .collect();

        let used: Vec<&String> = [&r.prompt, &r.answer, &r.id]
            .into_iter()
            .flatten()
            .collect();
        let extras = names
            .iter()
            .zip(table.columns())
            .filter(|(n, _)| !used.contains(n))
            .map(|(n, c)| {
                let name = if CORE_COLUMNS.contains(&n.as_str()) {
                    format!("input_{n}")
                } else {
                    n.clone()
                };
                (name, c.clone())
            })
            .collect();
        Ok(Self {
            prompt,
            answer_text,
            rows,
            extras,
            test_fraction: p.split.as_ref().map(|s| s.test_fraction),
            split_seed,
        })
    }

    /// Input rows the chunk loop walks: up to the last emitted row (rows beyond `limit`
    /// are neither read nor counted).
    pub fn input_rows(&self) -> usize {
        self.rows
            .iter()
            .rposition(|r| !matches!(r, Err(Skip::BeyondLimit)))
            .map_or(0, |i| i + 1)
    }

    pub fn chunk(&self, ctx: &mut RunContext, range: Range<usize>) -> Result<ChunkOutput, OpError> {
        let rows = &self.rows[range.clone()];
        let count = |s: Skip| {
            rows.iter()
                .filter(|r| matches!(r, Err(k) if *k == s))
                .count() as u64
        };
        ctx.count(
            "rows_without_prompt",
            count(Skip::NoPrompt),
            "row{|s} without a prompt {was|were} skipped",
        );
        ctx.count(
            "rows_without_answer",
            count(Skip::NoAnswer),
            "row{|s} without a usable answer {was|were} skipped",
        );
        ctx.count(
            "duplicate_ids",
            count(Skip::DuplicateId),
            "row{|s} with an id seen before {was|were} skipped (the first is kept)",
        );

        let keep: Vec<u32> = range
            .clone()
            .zip(rows)
            .filter(|(_, r)| r.is_ok())
            .map(|(i, _)| i as u32)
            .collect();
        let indices = UInt32Array::from(keep);
        let n = indices.len();
        let mut ids = StringBuilder::with_capacity(n, n * 16);
        let mut answers = StringBuilder::with_capacity(n, n * 8);
        let mut splits = StringBuilder::with_capacity(n, n * 5);
        for (id, answer) in rows.iter().flatten() {
            ids.append_value(id);
            answers.append_value(answer);
            splits.append_value(match self.test_fraction {
                Some(f) if split_score(self.split_seed, id) < f => "test",
                _ => "train",
            });
        }
        let take = |a: &dyn Array| arrow::compute::take(a, &indices, None);
        let mut fields = vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("prompt", DataType::Utf8, false),
            Field::new("answer", DataType::Utf8, false),
            Field::new("answer_text", DataType::Utf8, false),
            Field::new("split", DataType::Utf8, false),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(ids.finish()),
            take(&self.prompt)?,
            Arc::new(answers.finish()),
            take(&self.answer_text)?,
            Arc::new(splits.finish()),
        ];
        for (name, col) in &self.extras {
            fields.push(Field::new(name, col.data_type().clone(), true));
            columns.push(take(col.as_ref())?);
        }
        Ok(RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )?
        .into())
    }
}

/// The id of a row without one: the first 16 hex digits of blake3 over the prompt and the
/// answer cell (length-prefixed, so no two different pairs collide by concatenation).
pub fn content_id(prompt: &str, answer_text: &str) -> String {
    blake3_parts(&[prompt.as_bytes(), answer_text.as_bytes()]).to_hex()[..16].to_string()
}

/// A uniform number in [0, 1) from the split seed and the id.
pub fn split_score(seed: u64, id: &str) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(b"sspo-split");
    h.update(&seed.to_le_bytes());
    h.update(id.as_bytes());
    unit_f64(blake3_u64(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ids_are_stable_and_distinct() {
        assert_eq!(
            content_id("What is 2+2?", "4"),
            content_id("What is 2+2?", "4")
        );
        assert_eq!(content_id("a", "b").len(), 16);
        assert_ne!(content_id("ab", "c"), content_id("a", "bc"));
    }

    #[test]
    fn split_scores_are_uniform_enough() {
        let n = 10_000;
        let test = (0..n)
            .filter(|i| split_score(7, &i.to_string()) < 0.2)
            .count();
        assert!((1_800..2_200).contains(&test), "{test}");
        assert_eq!(split_score(1, "x"), split_score(1, "x"));
        assert_ne!(split_score(1, "x"), split_score(2, "x"));
    }

    #[test]
    fn ids_and_split_scores_are_unchanged() {
        // Recorded from the first implementation: ids and splits of shipped runs.
        assert_eq!(content_id("What is 2+2?", "4"), "4733f83e3e9a3b29");
        assert_eq!(split_score(7, "synth-000042").to_bits(), 0x3fcc9d82d745a514);
    }

    #[test]
    fn default_columns() {
        let names: Vec<String> = ["qid", "question", "solution", "answer"]
            .map(String::from)
            .to_vec();
        let r = resolve_names(&ColumnMap::default(), &names);
        assert_eq!(r.prompt.as_deref(), Some("question"));
        assert_eq!(r.answer.as_deref(), Some("answer"));
        assert_eq!(r.id, None);
        let m = ColumnMap {
            id: Some("qid".into()),
            ..Default::default()
        };
        assert_eq!(resolve_names(&m, &names).id.as_deref(), Some("qid"));
    }
}
