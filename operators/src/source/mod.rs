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
//!
//! Layout: this module holds the params, their checks and the kernel; `read` reads the
//! files into one table, `synthetic` generates the synthetic task's tables, and
//! `prepare` maps columns, checks rows and writes the problem table.

mod prepare;
mod read;
mod synthetic;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sspo_engine::{
    Columns, ConfigureContext, Diagnostics, NodeKernel, OpError, Operator, Params, Port, RunContext,
};

pub use prepare::{content_id, split_score};
pub use read::{BadRows, FileFormat};

use crate::tasks::synth::{self, SynthConfig};
use crate::tasks::AnswerFormat;
use prepare::{resolve_names, Prepared};

/// The `source` operator.
pub struct Source;

/// Columns every `source` table starts with.
pub const CORE_COLUMNS: [&str; 5] = ["id", "prompt", "answer", "answer_text", "split"];

/// Params of `source`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceParams {
    /// The data file, or a glob (`data/*.jsonl`, matches read in sorted order), relative
    /// to the pipeline file's directory. Exactly one of `path` and `synth`.
    pub path: Option<String>,
    /// Generate the synthetic overthinking task instead of reading a file (see
    /// `docs/operators/synth.md`). Exactly one of `path` and `synth`.
    pub synth: Option<SynthConfig>,
    /// With `synth`: `problems` (default) gives one row per problem; `sft` gives the SFT
    /// corpus instead: per problem its trace as `response` (`kind: trace`), then, when the
    /// config has `probe_sft: true`, the rows that teach the verbal probe question
    /// (`kind: probe`).
    pub synth_rows: SynthRows,
    /// File format; by default from each file's extension (`.jsonl`/`.ndjson`, `.json`,
    /// `.parquet`/`.pq`, `.csv`).
    pub format: Option<FileFormat>,
    /// Which file columns become `prompt`, `answer` and `id`.
    pub columns: ColumnMap,
    /// How the final answer is written in the answer column (default `auto`).
    pub answer_format: AnswerFormat,
    /// An optional deterministic train/test split by a seeded hash of the id.
    pub split: Option<SplitParams>,
    /// At most this many rows are emitted: the first usable rows in file order.
    pub limit: Option<usize>,
    /// Input rows per committed chunk (the unit of resume).
    pub chunk_rows: usize,
    /// A JSONL line that is not a JSON object: `fail` the run (default) or `skip` it,
    /// counted in the manifest with the first line numbers.
    pub bad_rows: BadRows,
}

impl Default for SourceParams {
    fn default() -> Self {
        SourceParams {
            path: None,
            synth: None,
            synth_rows: SynthRows::Problems,
            format: None,
            columns: ColumnMap::default(),
            answer_format: AnswerFormat::default(),
            split: None,
            limit: None,
            chunk_rows: 10_000,
            bad_rows: BadRows::Fail,
        }
    }
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
#[serde(default, deny_unknown_fields)]
pub struct ColumnMap {
    /// Default: the first of `prompt`, `question`, `problem` the file has.
    pub prompt: Option<String>,
    /// Default: the first of `answer`, `solution` the file has.
    pub answer: Option<String>,
    /// Default: `id` when the file has it, else a content hash of prompt and answer.
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
        if p.bad_rows == BadRows::Skip {
            if p.synth.is_some() {
                diags.push(params.error(
                    &["bad_rows"],
                    "`bad_rows` applies to files read with `path`, not to `synth`",
                ));
            }
            if let Some((f, fmt)) = files.iter().find(|(_, fmt)| *fmt != FileFormat::Jsonl) {
                diags.push(
                    params
                        .error(
                            &["bad_rows"],
                            format!(
                                "`bad_rows: skip` skips malformed JSONL lines, but {} is read as {}",
                                f.display(),
                                format_name(*fmt)
                            ),
                        )
                        .with_help("leave `bad_rows` out (a malformed file of this format fails the run with its position)"),
                );
            }
        }
        diags.into_result()?;
        let fingerprint = fingerprint_json(&p, &files, split_seed);
        Ok(Arc::new(SourceKernel {
            params: p,
            fingerprint,
            files,
            split_seed,
        }))
    }
}

/// The name `format:` takes for `fmt`.
fn format_name(fmt: FileFormat) -> String {
    serde_json::to_value(fmt)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The fingerprinted form of the params: paths are left out on purpose (the files'
/// content enters the fingerprint), the formats and the split seed as applied are in.
/// `bad_rows` enters only when it is `skip`, so the fingerprints of specs written before
/// it existed stay as they were.
fn fingerprint_json(
    p: &SourceParams,
    files: &[(PathBuf, FileFormat)],
    split_seed: u64,
) -> serde_json::Value {
    let mut value = json!({
        "formats": files.iter().map(|(_, f)| *f).collect::<Vec<_>>(),
        "columns": p.columns,
        "answer_format": p.answer_format,
        "split": p.split.as_ref().map(|s| json!({"test_fraction": s.test_fraction, "seed": split_seed})),
        "limit": p.limit,
        "chunk_rows": p.chunk_rows,
        "synth": p.synth.as_ref().map(|c| json!({
            "config": c,
            "generator": synth::GENERATOR_VERSION,
            "tokenizer": synth::TOKENIZER_VERSION,
            "rows": p.synth_rows,
        })),
    });
    if p.bad_rows == BadRows::Skip {
        value["bad_rows"] = json!(p.bad_rows);
    }
    if p.synth.is_some() && p.synth_rows == SynthRows::Sft {
        // The SFT corpus gained its `context` and `target` columns in layout 2.
        value["synth"]["sft_layout"] = json!(synth::SFT_LAYOUT_VERSION);
    }
    value
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
    fingerprint: serde_json::Value,
    files: Vec<(PathBuf, FileFormat)>,
    split_seed: u64,
}

impl NodeKernel for SourceKernel {
    fn params_json(&self) -> serde_json::Value {
        self.fingerprint.clone()
    }

    /// Every chunk is its input rows, prepared.
    fn shardable(&self) -> bool {
        true
    }

    fn external_files(&self) -> Vec<PathBuf> {
        self.files.iter().map(|(f, _)| f.clone()).collect()
    }

    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::open(CORE_COLUMNS)
    }

    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let (table, skipped) = self.load()?;
        let prepared = Prepared::new(&table, &self.params, self.split_seed)?;
        let n_input = prepared.input_rows();
        ctx.set_metric("files", json!(self.files.len()));
        ctx.set_metric("file_rows", json!(table.num_rows()));
        if skipped.total > 0 {
            ctx.set_metric("malformed_lines_first", json!(skipped.first));
        }
        ctx.run_chunks(n_input, self.params.chunk_rows, |ctx, range| {
            // Counted with the first chunk, which commits once, so a resumed run does
            // not count the lines again.
            if range.start == 0 {
                skipped.count(ctx);
            }
            prepared.chunk(ctx, range)
        })
    }
}

/// The malformed lines `bad_rows: skip` left out, over all files.
#[derive(Default)]
struct SkippedLines {
    total: u64,
    /// `file:line` of the first few, for the log and the manifest.
    first: Vec<String>,
}

impl SkippedLines {
    /// How many positions the log and the manifest keep.
    const SHOWN: usize = 10;

    fn add(&mut self, path: &std::path::Path, lines: &[usize]) {
        self.total += lines.len() as u64;
        let room = Self::SHOWN.saturating_sub(self.first.len());
        self.first.extend(
            lines
                .iter()
                .take(room)
                .map(|l| format!("{}:{l}", path.display())),
        );
    }

    fn count(&self, ctx: &mut RunContext) {
        if self.total == 0 {
            return;
        }
        ctx.count(
            "malformed_lines",
            self.total,
            "malformed line{|s} {was|were} skipped (bad_rows: skip)",
        );
        ctx.log(&format!(
            "malformed lines, first: {}",
            self.first.join(", ")
        ));
    }
}

impl SourceKernel {
    /// All files as one batch (columns united by name; a column whose type differs
    /// between files is read as text).
    fn load(&self) -> Result<(RecordBatch, SkippedLines), OpError> {
        if let Some(cfg) = &self.params.synth {
            let table = match self.params.synth_rows {
                SynthRows::Problems => synthetic::problems_table(cfg),
                SynthRows::Sft => synthetic::sft_table(cfg),
            }?;
            return Ok((table, SkippedLines::default()));
        }
        let mapping = &self.params.columns;
        let text_columns = |names: &[String]| -> Vec<String> {
            let m = resolve_names(mapping, names);
            [m.prompt, m.answer, m.id].into_iter().flatten().collect()
        };
        let mut batches = Vec::with_capacity(self.files.len());
        let mut skipped = SkippedLines::default();
        for (path, fmt) in &self.files {
            let read = read::read_file(path, *fmt, &text_columns, self.params.bad_rows)?;
            skipped.add(path, &read.skipped_lines);
            batches.push(read.batch);
        }
        let table = if batches.len() == 1 {
            batches
                .pop()
                .unwrap_or_else(|| RecordBatch::new_empty(Arc::new(Schema::empty())))
        } else {
            read::unite(batches)?
        };
        Ok((table, skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // `bad_rows: skip` changes what a file yields, so it enters the fingerprint.
        assert_eq!(
            fingerprint(json!({"path": "d.jsonl", "bad_rows": "skip"})),
            r#"{"answer_format":"auto","bad_rows":"skip","chunk_rows":10000,"columns":{"answer":null,"id":null,"prompt":null},"formats":["jsonl"],"limit":null,"split":null,"synth":null}"#
        );
        assert_eq!(
            fingerprint(json!({"synth": {}})),
            r#"{"answer_format":"auto","chunk_rows":10000,"columns":{"answer":null,"id":null,"prompt":null},"formats":[],"limit":null,"split":null,"synth":{"config":{"addend":[2,30],"factor":[2,4],"fix_rate":0.5,"group_count":[2,5],"group_size":[2,12],"max_ops":4,"max_rechecks":4,"max_value":999,"min_ops":2,"n":2000,"ops":["add","sub","mul","div","groups"],"probe_per_problem":4,"probe_sft":false,"recheck_error_rate":0.15,"seed":0,"start":[5,50],"task":"arithmetic"},"generator":1,"rows":"problems","tokenizer":1}}"#
        );
        assert_eq!(
            fingerprint(json!({"synth": {"n": 7, "probe_sft": true}, "synth_rows": "sft"})),
            r#"{"answer_format":"auto","chunk_rows":10000,"columns":{"answer":null,"id":null,"prompt":null},"formats":[],"limit":null,"split":null,"synth":{"config":{"addend":[2,30],"factor":[2,4],"fix_rate":0.5,"group_count":[2,5],"group_size":[2,12],"max_ops":4,"max_rechecks":4,"max_value":999,"min_ops":2,"n":7,"ops":["add","sub","mul","div","groups"],"probe_per_problem":4,"probe_sft":true,"recheck_error_rate":0.15,"seed":0,"start":[5,50],"task":"arithmetic"},"generator":1,"rows":"sft","sft_layout":2,"tokenizer":1}}"#
        );
    }
}
