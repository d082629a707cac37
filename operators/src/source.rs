//! `source`: reads a dataset file (JSONL, JSON, Parquet, CSV; one file or a glob), or
//! generates the synthetic overthinking task (`synth:`), into the problem table
//! `id, prompt, answer, answer_text, split` plus the file's (or task's) other columns.
//!
//! The reference answer is extracted from the answer cell with the pipeline's
//! [`AnswerFormat`] (GSM8K's `... #### 72` gives `72`; the cell itself is kept in
//! `answer_text`). Rows without a prompt or a usable answer, and repeated ids, are
//! counted in the manifest and skipped. Ids come from the file or, when it has none,
//! from a hash of the prompt and answer text, so they are stable across runs and file
//! formats; the optional train/test split is a seeded hash of the id.

mod read;

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, StringBuilder, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sspo_engine::diag::did_you_mean;
use sspo_engine::{
    ChunkOutput, Columns, ConfigureContext, Diagnostics, NodeKernel, OpError, Operator, Params,
    Port, RunContext,
};

pub use read::FileFormat;

use crate::tasks::synth::{self, SynthConfig};
use crate::tasks::AnswerFormat;

/// The `source` operator.
pub struct Source;

/// Columns every `source` table starts with.
pub const CORE_COLUMNS: [&str; 5] = ["id", "prompt", "answer", "answer_text", "split"];

/// Default mapping candidates, first present wins.
const PROMPT_CANDIDATES: [&str; 3] = ["prompt", "question", "problem"];
const ANSWER_CANDIDATES: [&str; 2] = ["answer", "solution"];

/// Params of `source`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceParams {
    /// The data file, or a glob (`data/*.jsonl`, matches read in sorted order), relative
    /// to the pipeline file's directory. Exactly one of `path` and `synth`.
    pub path: Option<String>,
    /// Generate the synthetic overthinking task instead of reading a file (see
    /// `docs/operators/synth.md`). Exactly one of `path` and `synth`.
    #[serde(default)]
    pub synth: Option<SynthConfig>,
    /// With `synth`: `problems` (default) gives one row per problem; `sft` gives the SFT
    /// corpus instead: per problem its trace as `response` (`kind: trace`), then, when the
    /// config has `probe_sft: true`, the rows that teach the verbal probe question
    /// (`kind: probe`).
    #[serde(default)]
    pub synth_rows: SynthRows,
    /// File format; by default from each file's extension (`.jsonl`/`.ndjson`, `.json`,
    /// `.parquet`/`.pq`, `.csv`).
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// Which file columns become `prompt`, `answer` and `id`.
    #[serde(default)]
    pub columns: ColumnMap,
    /// How the final answer is written in the answer column (default `auto`).
    #[serde(default)]
    pub answer_format: AnswerFormat,
    /// An optional deterministic train/test split by a seeded hash of the id.
    #[serde(default)]
    pub split: Option<SplitParams>,
    /// At most this many rows are emitted: the first usable rows in file order.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Input rows per committed chunk (the unit of resume).
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
}

fn default_chunk_rows() -> usize {
    10_000
}

/// Which rows a `synth:` source emits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SynthRows {
    /// One row per problem, with its ground truth.
    #[default]
    Problems,
    /// The SFT corpus: traces, plus probe-teaching rows with `probe_sft`.
    Sft,
}

/// `columns:` — our column ← the file's column.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMap {
    /// Default: the first of `prompt`, `question`, `problem` the file has.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Default: the first of `answer`, `solution` the file has.
    #[serde(default)]
    pub answer: Option<String>,
    /// Default: `id` when the file has it, else a content hash of prompt and answer.
    #[serde(default)]
    pub id: Option<String>,
}

/// `split:` — `{test_fraction: 0.1, seed: 3}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitParams {
    /// Share of rows (0..=1) marked `test`; the others are `train`.
    pub test_fraction: f64,
    /// Seed of the hash; default the pipeline's `seed`.
    #[serde(default)]
    pub seed: Option<u64>,
}

impl Operator for Source {
    fn name(&self) -> &'static str {
        "source"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "reads problems (prompt, reference answer) from a JSONL, JSON, Parquet or CSV file"
    }
    fn ports(&self) -> &'static [Port] {
        &[]
    }
    fn configure(
        &self,
        params: &Params,
        ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: SourceParams = params.parse()?;
        let mut diags = Diagnostics::new();
        if p.chunk_rows == 0 {
            diags.push(params.error(&["chunk_rows"], "`chunk_rows` must be at least 1"));
        }
        if p.limit == Some(0) {
            diags.push(params.error(
                &["limit"],
                "`limit` must be at least 1 (leave it out for all rows)",
            ));
        }
        let mut split_seed = ctx.seed;
        if let Some(s) = &p.split {
            if !(0.0..=1.0).contains(&s.test_fraction) {
                diags.push(params.error(
                    &["split", "test_fraction"],
                    format!(
                        "`test_fraction` must be between 0 and 1, got {}",
                        s.test_fraction
                    ),
                ));
            }
            split_seed = s.seed.unwrap_or(ctx.seed);
        }
        let mut files = Vec::new();
        if let Some(cfg) = &p.synth {
            if let Err(e) = cfg.validate() {
                diags.push(params.error(&["synth"], e.to_string()));
            }
        }
        if p.synth.is_none() && p.synth_rows != SynthRows::Problems {
            diags.push(params.error(&["synth_rows"], "`synth_rows` needs `synth`"));
        }
        match (&p.path, &p.synth) {
            (None, None) => diags.push(
                params
                    .error(
                        &[],
                        "`source` needs `path` (a data file or a glob) or `synth`",
                    )
                    .with_help(
                        "e.g. `path: data/train.jsonl` or `synth: {task: arithmetic, n: 2000}`",
                    ),
            ),
            (Some(_), Some(_)) => {
                diags.push(params.error(&["synth"], "`source` takes `path` or `synth`, not both"))
            }
            (None, Some(_)) => {}
            (Some(path), None) => match find_files(ctx, path) {
                Ok(found) => {
                    for f in found {
                        match p.format.or_else(|| FileFormat::from_extension(&f)) {
                            Some(fmt) => files.push((f, fmt)),
                            None => diags.push(
                                params
                                    .error(
                                        &["path"],
                                        format!(
                                            "cannot tell the format of {} from its extension",
                                            f.display()
                                        ),
                                    )
                                    .with_help("set `format:` to jsonl, json, parquet or csv"),
                            ),
                        }
                    }
                }
                Err(msg) => diags.push(params.error(&["path"], msg)),
            },
        }
        diags.into_result()?;
        Ok(Arc::new(SourceKernel {
            params: p,
            files,
            split_seed,
        }))
    }
}

/// The files `path` names: one existing file, or the sorted matches of a glob.
fn find_files(ctx: &ConfigureContext, path: &str) -> Result<Vec<PathBuf>, String> {
    let full = ctx.resolve(path);
    let is_glob = path.contains(['*', '?', '[']);
    if !is_glob {
        return if full.is_file() {
            Ok(vec![full])
        } else if full.exists() {
            Err(format!("{} is not a file", full.display()))
        } else {
            Err(format!("no such file: {}", full.display()))
        };
    }
    let pattern = full.to_string_lossy().to_string();
    let entries = glob::glob(&pattern).map_err(|e| format!("invalid glob `{path}`: {e}"))?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(format!("no file matches {pattern}"));
    }
    Ok(out)
}

struct SourceKernel {
    params: SourceParams,
    files: Vec<(PathBuf, FileFormat)>,
    split_seed: u64,
}

impl NodeKernel for SourceKernel {
    fn params_json(&self) -> serde_json::Value {
        // Paths are left out on purpose: the files' content enters the fingerprint.
        let p = &self.params;
        json!({
            "formats": self.files.iter().map(|(_, f)| *f).collect::<Vec<_>>(),
            "columns": p.columns,
            "answer_format": p.answer_format,
            "split": p.split.as_ref().map(|s| json!({"test_fraction": s.test_fraction, "seed": self.split_seed})),
            "limit": p.limit,
            "chunk_rows": p.chunk_rows,
            "synth": p.synth.as_ref().map(|c| json!({
                "config": c,
                "generator": synth::GENERATOR_VERSION,
                "tokenizer": synth::TOKENIZER_VERSION,
                "rows": p.synth_rows,
            })),
        })
    }

    fn external_files(&self) -> Vec<PathBuf> {
        self.files.iter().map(|(f, _)| f.clone()).collect()
    }

    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::open(CORE_COLUMNS)
    }

    fn chunk_rows(&self) -> usize {
        self.params.chunk_rows
    }

    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let table = self.load()?;
        let prepared = Prepared::new(&table, &self.params, self.split_seed)?;
        let n_input = prepared.input_rows();
        ctx.set_metric("files", json!(self.files.len()));
        ctx.set_metric("file_rows", json!(table.num_rows()));
        ctx.run_chunks(n_input, self.params.chunk_rows, |ctx, range| {
            prepared.chunk(ctx, range)
        })
    }
}

impl SourceKernel {
    /// All files as one batch (columns united by name; a column whose type differs
    /// between files is read as text).
    fn load(&self) -> Result<RecordBatch, OpError> {
        if let Some(cfg) = &self.params.synth {
            return match self.params.synth_rows {
                SynthRows::Problems => synth_table(cfg),
                SynthRows::Sft => synth_sft_table(cfg),
            };
        }
        let mapping = &self.params.columns;
        let text_columns = |names: &[String]| -> Vec<String> {
            let m = resolve_names(mapping, names);
            [m.prompt, m.answer, m.id].into_iter().flatten().collect()
        };
        let mut batches = Vec::with_capacity(self.files.len());
        for (path, fmt) in &self.files {
            batches.push(read::read_file(path, *fmt, &text_columns)?);
        }
        if batches.len() == 1 {
            return Ok(batches
                .pop()
                .unwrap_or_else(|| RecordBatch::new_empty(Arc::new(Schema::empty()))));
        }
        unite(batches)
    }
}

/// The synthetic task as a table: the core columns come out of the same mapping, split and
/// limit logic as a file's, and the task's ground truth (oracle trace and length,
/// redundancy and slip counts) rides along as extra columns for evaluation.
fn synth_table(cfg: &SynthConfig) -> Result<RecordBatch, OpError> {
    use arrow::array::BooleanArray;
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
/// kind`, in problem order, each problem's trace row before its probe-teaching rows.
fn synth_sft_table(cfg: &SynthConfig) -> Result<RecordBatch, OpError> {
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

/// Concatenates batches whose schemas may differ: columns in first-seen order, missing
/// ones null, conflicting types cast to text.
fn unite(batches: Vec<RecordBatch>) -> Result<RecordBatch, OpError> {
    let mut fields: Vec<(String, DataType)> = Vec::new();
    for b in &batches {
        for f in b.schema().fields() {
            match fields.iter_mut().find(|(n, _)| n == f.name()) {
                None => fields.push((f.name().clone(), f.data_type().clone())),
                Some((_, ty)) if ty != f.data_type() => *ty = DataType::Utf8,
                Some(_) => {}
            }
        }
    }
    let schema = Arc::new(Schema::new(
        fields
            .iter()
            .map(|(n, t)| Field::new(n, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let mut out = Vec::with_capacity(batches.len());
    for b in &batches {
        let mut cols = Vec::with_capacity(fields.len());
        for (name, ty) in &fields {
            let col = match b.column_by_name(name) {
                Some(c) if c.data_type() == ty => c.clone(),
                Some(c) => arrow::compute::cast(c, ty).map_err(|e| {
                    OpError::context(
                        format!("column `{name}` has different types in different files"),
                        e,
                    )
                })?,
                None => arrow::array::new_null_array(ty, b.num_rows()),
            };
            cols.push(col);
        }
        out.push(RecordBatch::try_new_with_options(
            schema.clone(),
            cols,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
        )?);
    }
    Ok(arrow::compute::concat_batches(&schema, &out)?)
}

/// The file columns that feed `prompt`, `answer`, `id` (written mapping, else defaults).
#[derive(Debug, Clone, Default)]
struct Resolved {
    prompt: Option<String>,
    answer: Option<String>,
    id: Option<String>,
}

fn resolve_names(m: &ColumnMap, names: &[String]) -> Resolved {
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
struct Prepared {
    prompt: StringArray,
    answer_text: StringArray,
    /// Per input row: (id, answer) when emitted, else why not.
    rows: Vec<Result<(String, String), Skip>>,
    extras: Vec<(String, ArrayRef)>,
    test_fraction: Option<f64>,
    split_seed: u64,
}

impl Prepared {
    fn new(table: &RecordBatch, p: &SourceParams, split_seed: u64) -> Result<Self, OpError> {
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
            as_text(col).map_err(|e| {
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
                let prompt_ok = prompt.is_valid(i) && !prompt.value(i).trim().is_empty();
                if !prompt_ok {
                    return Err(Skip::NoPrompt);
                }
                let raw = if answer_text.is_valid(i) {
                    answer_text.value(i)
                } else {
                    ""
                };
                let answer = fmt.extract_reference(raw).ok_or(Skip::NoAnswer)?;
                let id = match &ids {
                    Some(ids) if ids.is_valid(i) && !ids.value(i).is_empty() => {
                        ids.value(i).to_string()
                    }
                    _ => content_id(prompt.value(i), raw),
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
    fn input_rows(&self) -> usize {
        self.rows
            .iter()
            .rposition(|r| !matches!(r, Err(Skip::BeyondLimit)))
            .map_or(0, |i| i + 1)
    }

    fn chunk(&self, ctx: &mut RunContext, range: Range<usize>) -> Result<ChunkOutput, OpError> {
        let rows = &self.rows[range.clone()];
        let count = |s: Skip| {
            rows.iter()
                .filter(|r| matches!(r, Err(k) if *k == s))
                .count() as u64
        };
        ctx.count(
            "rows_without_prompt",
            count(Skip::NoPrompt),
            "rows without a prompt were skipped",
        );
        ctx.count(
            "rows_without_answer",
            count(Skip::NoAnswer),
            "rows without a usable answer were skipped",
        );
        ctx.count(
            "duplicate_ids",
            count(Skip::DuplicateId),
            "rows with an id seen before were skipped (the first is kept)",
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

/// A column as UTF-8 text (numbers and booleans formatted, other string types cast).
fn as_text(col: &ArrayRef) -> Result<StringArray, arrow::error::ArrowError> {
    let c = match col.data_type() {
        DataType::Utf8 => col.clone(),
        _ => arrow::compute::cast(col, &DataType::Utf8)?,
    };
    Ok(c.as_string::<i32>().clone())
}

/// The id of a row without one: the first 16 hex digits of blake3 over the prompt and the
/// answer cell (length-prefixed, so no two different pairs collide by concatenation).
pub fn content_id(prompt: &str, answer_text: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&(prompt.len() as u64).to_le_bytes());
    h.update(prompt.as_bytes());
    h.update(&(answer_text.len() as u64).to_le_bytes());
    h.update(answer_text.as_bytes());
    h.finalize().to_hex()[..16].to_string()
}

/// A uniform number in [0, 1) from the split seed and the id.
pub fn split_score(seed: u64, id: &str) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(b"sspo-split");
    h.update(&seed.to_le_bytes());
    h.update(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    (u64::from_le_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
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

    /// The fingerprint JSON of source's params, as recorded before the params were
    /// reshaped: fingerprints decide caching, so it must not change.
    #[test]
    fn fingerprint_json_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("d.jsonl"),
            "{\"prompt\": \"p\", \"answer\": \"1\"}\n",
        )
        .unwrap();
        let ctx = ConfigureContext {
            node_id: "s".into(),
            base_dir: dir.path().to_path_buf(),
            seed: 1,
        };
        let fingerprint = |spec: serde_json::Value| {
            let k = Source
                .configure(&Params::from_json(&spec), &ctx)
                .ok()
                .unwrap();
            serde_json::to_string(&k.params_json()).unwrap()
        };
        assert_eq!(
            fingerprint(json!({"path": "d.jsonl"})),
            r#"{"answer_format":"auto","chunk_rows":10000,"columns":{"answer":null,"id":null,"prompt":null},"formats":["jsonl"],"limit":null,"split":null,"synth":null}"#
        );
        assert_eq!(
            fingerprint(json!({
                "path": "d.jsonl", "split": {"test_fraction": 0.1},
                "columns": {"id": "qid"}, "limit": 4
            })),
            r#"{"answer_format":"auto","chunk_rows":10000,"columns":{"answer":null,"id":"qid","prompt":null},"formats":["jsonl"],"limit":4,"split":{"seed":1,"test_fraction":0.1},"synth":null}"#
        );
        assert_eq!(
            fingerprint(json!({"synth": {}})),
            r#"{"answer_format":"auto","chunk_rows":10000,"columns":{"answer":null,"id":null,"prompt":null},"formats":[],"limit":null,"split":null,"synth":{"config":{"addend":[2,30],"factor":[2,4],"fix_rate":0.5,"group_count":[2,5],"group_size":[2,12],"max_ops":4,"max_rechecks":4,"max_value":999,"min_ops":2,"n":2000,"ops":["add","sub","mul","div","groups"],"probe_per_problem":4,"probe_sft":false,"recheck_error_rate":0.15,"seed":0,"start":[5,50],"task":"arithmetic"},"generator":1,"rows":"problems","tokenizer":1}}"#
        );
        assert_eq!(
            fingerprint(json!({"synth": {"n": 7, "probe_sft": true}, "synth_rows": "sft"})),
            r#"{"answer_format":"auto","chunk_rows":10000,"columns":{"answer":null,"id":null,"prompt":null},"formats":[],"limit":null,"split":null,"synth":{"config":{"addend":[2,30],"factor":[2,4],"fix_rate":0.5,"group_count":[2,5],"group_size":[2,12],"max_ops":4,"max_rechecks":4,"max_value":999,"min_ops":2,"n":7,"ops":["add","sub","mul","div","groups"],"probe_per_problem":4,"probe_sft":true,"recheck_error_rate":0.15,"seed":0,"start":[5,50],"task":"arithmetic"},"generator":1,"rows":"sft","tokenizer":1}}"#
        );
    }
}
