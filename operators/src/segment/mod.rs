//! `segment`: splits each response into reasoning steps `s_1..s_K` with their character
//! and token spans.
//!
//! A step ends after its delimiter (and, for `delimiter`, after any whitespace that
//! follows it), so the steps of a text concatenate back to the text exactly. Fragments
//! shorter than `min_chars` merge into the previous step (leading ones into the next);
//! steps beyond `max_steps` merge into the last. Character offsets count Unicode scalar
//! values (Python `str` indices); token spans index the tokens of the steps as the shared
//! rule tokenises them (`step_tokens::trace_tokens`, step by step), so they are the
//! tokens `probe` and `train` see.
//!
//! `split` holds the splitting rules; this module turns a table of texts into the
//! steps table.

mod split;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Builder, RecordBatch, StringBuilder, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use rayon::prelude::*;
use regex::Regex;
use serde::Deserialize;
use serde_json::json;
use sspo_engine::{
    Columns, ConfigureContext, Diagnostics, NodeKernel, OpError, Operator, Params, Port, RunContext,
};
use sspo_model::TextTokenizer;

pub use split::{Boundary, Splitter};

use crate::columns::{key_column, to_i32, TextColumn};
use crate::model_port::load_tokenizer;
use crate::step_tokens::trace_tokens;

/// The `segment` operator.
pub struct Segment;

/// Output columns after the key column.
pub const STEP_COLUMNS: [&str; 7] = [
    "step",
    "text",
    "char_start",
    "char_end",
    "tok_start",
    "tok_end",
    "n_tokens",
];

/// Params of `segment`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentParams {
    /// The text column of the `traces` table (default `response`).
    pub column: String,
    /// The literal step delimiter (default a blank line, `"\n\n"`).
    pub delimiter: Option<String>,
    /// A regular expression instead of `delimiter`: a step ends where a match ends, or,
    /// when the regex has a capture group, where group 1 starts.
    pub regex: Option<String>,
    /// Fragments with fewer characters (whitespace around them not counted) merge into
    /// the previous step; leading ones into the next. Default 0 (only blank fragments).
    pub min_chars: usize,
    /// At most this many steps per text; the tail merges into the last step.
    pub max_steps: Option<usize>,
    /// A Hugging Face `tokenizer.json` for token spans (relative to the pipeline file);
    /// without it the token columns are null.
    pub tokenizer: Option<String>,
    /// Input rows per committed chunk.
    pub chunk_rows: usize,
}

impl Default for SegmentParams {
    fn default() -> Self {
        SegmentParams {
            column: "response".into(),
            delimiter: None,
            regex: None,
            min_chars: 0,
            max_steps: None,
            tokenizer: None,
            chunk_rows: 4096,
        }
    }
}

impl SegmentParams {
    /// The fingerprinted form: the delimiter as applied (the default written out, none
    /// with a regex) and whether a tokenizer is given (its file enters the fingerprint as
    /// an external file, so the path itself does not).
    fn fingerprint_json(&self) -> serde_json::Value {
        let (delimiter, regex) = match (&self.delimiter, &self.regex) {
            (_, Some(r)) => (None, Some(r.clone())),
            (d, None) => (Some(d.clone().unwrap_or_else(|| "\n\n".into())), None),
        };
        json!({
            "column": self.column,
            "delimiter": delimiter,
            "regex": regex,
            "min_chars": self.min_chars,
            "max_steps": self.max_steps,
            "tokenizer": self.tokenizer.is_some(),
            "chunk_rows": self.chunk_rows,
        })
    }
}

/// The steps of one text, ready for the output columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextSteps {
    /// Byte ranges.
    pub bytes: Vec<Range<usize>>,
    /// Character (Unicode scalar value) ranges.
    pub chars: Vec<(i32, i32)>,
    /// Token ranges (when a tokenizer is given).
    pub tokens: Option<Vec<(i32, i32)>>,
}

/// Splits one text and computes its character and token spans.
pub fn segment_text(
    splitter: &Splitter,
    tokenizer: Option<&TextTokenizer>,
    text: &str,
) -> Result<TextSteps, OpError> {
    let bytes = splitter.split(text);
    let mut chars = Vec::with_capacity(bytes.len());
    let ascii = text.is_ascii();
    let mut c = 0usize;
    for r in &bytes {
        let n = if ascii {
            r.len()
        } else {
            text[r.clone()].chars().count()
        };
        chars.push((to_i32(c, "offset")?, to_i32(c + n, "offset")?));
        c += n;
    }
    let tokens = match tokenizer {
        Some(tok) => {
            // The shared rule (step by step), so spans index the tokens `probe` and
            // `train` see for the same steps.
            let steps: Vec<&str> = bytes.iter().map(|r| &text[r.clone()]).collect();
            let tt = trace_tokens(tok, "", &steps).map_err(|e| OpError::context("tokenizer", e))?;
            Some(
                tt.step_spans
                    .iter()
                    .map(|&(a, b)| Ok((to_i32(a, "offset")?, to_i32(b, "offset")?)))
                    .collect::<Result<Vec<_>, OpError>>()?,
            )
        }
        None => None,
    };
    Ok(TextSteps {
        bytes,
        chars,
        tokens,
    })
}

/// The steps of rows `range` of `texts` (in parallel), `None` for an empty text.
fn segment_rows(
    splitter: &Splitter,
    tokenizer: Option<&TextTokenizer>,
    texts: &TextColumn,
    range: Range<usize>,
) -> Result<Vec<Option<TextSteps>>, OpError> {
    range
        .into_par_iter()
        .map(|i| match texts.get(i) {
            Some(t) if !t.trim().is_empty() => segment_text(splitter, tokenizer, t).map(Some),
            _ => Ok(None),
        })
        .collect()
}

impl Operator for Segment {
    fn name(&self) -> &'static str {
        "segment"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "splits responses into reasoning steps with character and token spans"
    }
    fn ports(&self) -> &'static [Port] {
        const PORTS: &[Port] = &[
            Port::table(
                "traces",
                "rows with a text column to split (e.g. `generate`'s rollouts)",
            ),
            Port::model(
                "model",
                "the model whose tokenizer gives the token spans (only its tokenizer is read)",
            )
            .optional()
            .tokenizer_only(),
        ];
        PORTS
    }
    fn configure(
        &self,
        params: &Params,
        ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: SegmentParams = params.parse()?;
        let mut diags = Diagnostics::new();
        let boundary = match (&p.delimiter, &p.regex) {
            (Some(_), Some(_)) => {
                diags
                    .push(params.error(&["regex"], "give either `delimiter` or `regex`, not both"));
                None
            }
            (Some(d), None) if d.is_empty() => {
                diags.push(params.error(&["delimiter"], "`delimiter` must not be empty"));
                None
            }
            (Some(d), None) => Some(Boundary::Delimiter(d.clone())),
            (None, Some(r)) => match Regex::new(r) {
                Ok(re) if re.is_match("") && re.captures_len() == 1 => {
                    diags.push(params.error(
                        &["regex"],
                        "`regex` matches the empty string, so it cannot mark step ends",
                    ));
                    None
                }
                Ok(re) => Some(Boundary::Regex(re)),
                Err(e) => {
                    diags.push(params.error(&["regex"], format!("invalid regex: {e}")));
                    None
                }
            },
            (None, None) => Some(Boundary::Delimiter("\n\n".into())),
        };
        if p.max_steps == Some(0) {
            diags.push(params.error(&["max_steps"], "`max_steps` must be at least 1"));
        }
        if p.chunk_rows == 0 {
            diags.push(params.error(&["chunk_rows"], "`chunk_rows` must be at least 1"));
        }
        if p.column.is_empty() {
            diags.push(params.error(&["column"], "`column` must not be empty"));
        }
        let mut tokenizer = None;
        let mut tokenizer_path = None;
        if let Some(t) = &p.tokenizer {
            let path = ctx.resolve(t);
            if !path.is_file() {
                diags.push(
                    params.error(&["tokenizer"], format!("no such file: {}", path.display())),
                );
            } else {
                match tokenizers::Tokenizer::from_file(&path) {
                    Ok(tok) => {
                        let tok = TextTokenizer::new(tok, serde_json::Value::Null);
                        tokenizer = Some(Arc::new(tok));
                        tokenizer_path = Some(path);
                    }
                    Err(e) => diags.push(params.error(
                        &["tokenizer"],
                        format!("{} is not a readable tokenizer.json: {e}", path.display()),
                    )),
                }
            }
        }
        diags.into_result()?;
        // Every way to no boundary pushed a diagnostic above.
        let Some(boundary) = boundary else {
            return Err(params
                .error(
                    &[],
                    "internal error: no step boundary although the params passed",
                )
                .into());
        };
        Ok(Arc::new(SegmentKernel {
            splitter: Splitter::new(boundary, p.min_chars, p.max_steps),
            fingerprint: p.fingerprint_json(),
            params: p,
            tokenizer,
            tokenizer_path,
        }))
    }
}

struct SegmentKernel {
    params: SegmentParams,
    fingerprint: serde_json::Value,
    splitter: Splitter,
    tokenizer: Option<Arc<TextTokenizer>>,
    tokenizer_path: Option<PathBuf>,
}

impl NodeKernel for SegmentKernel {
    fn params_json(&self) -> serde_json::Value {
        self.fingerprint.clone()
    }

    /// Every chunk is its traces' steps.
    fn shardable(&self) -> bool {
        true
    }

    fn external_files(&self) -> Vec<PathBuf> {
        self.tokenizer_path.iter().cloned().collect()
    }

    fn required_columns(&self) -> Vec<(&'static str, Vec<String>)> {
        vec![("traces", vec![self.params.column.clone()])]
    }

    fn output_columns(&self, inputs: &BTreeMap<String, Columns>) -> Columns {
        let has = inputs
            .get("traces")
            .is_some_and(|c| c.contains("rollout_id"));
        let mut names = vec![key_column(has)];
        names.extend(STEP_COLUMNS);
        Columns::exact(names)
    }

    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let table = ctx.input_table("traces")?;
        let has_rollout = table.column_by_name("rollout_id").is_some();
        let key_name = key_column(has_rollout);
        let key = table.column_by_name(key_name).cloned().ok_or_else(|| {
            OpError::msg("the `traces` table has neither `rollout_id` nor `id`: segment keeps one of them as its key")
        })?;
        let col = table
            .column_by_name(&self.params.column)
            .cloned()
            .ok_or_else(|| {
                OpError::msg(format!(
                    "the `traces` table has no column `{}`",
                    self.params.column
                ))
            })?;
        let texts = TextColumn::new(&col).ok_or_else(|| {
            OpError::msg(format!(
                "column `{}` is {}, not text",
                self.params.column,
                col.data_type()
            ))
        })?;
        let port_tokenizer = if ctx.has_input("model") {
            if self.tokenizer.is_some() {
                return Err(OpError::msg(
                    "give either the `tokenizer` param or a `model` input, not both",
                ));
            }
            Some(load_tokenizer(ctx.input_model("model")?)?)
        } else {
            None
        };
        let tok = port_tokenizer.as_ref().or(self.tokenizer.as_deref());
        let n = table.num_rows();
        let mut total_steps = 0u64;
        ctx.run_chunks(n, self.params.chunk_rows, |ctx, range| {
            let (batch, empty) = self.segment_chunk(tok, &texts, &key, key_name, range)?;
            ctx.count(
                "empty_texts",
                empty,
                "row{|s} with an empty text produced no steps",
            );
            total_steps += batch.num_rows() as u64;
            Ok(batch.into())
        })?;
        ctx.set_metric("steps_this_run", json!(total_steps));
        Ok(())
    }
}

impl SegmentKernel {
    fn segment_chunk(
        &self,
        tok: Option<&TextTokenizer>,
        texts: &TextColumn,
        key: &ArrayRef,
        key_name: &str,
        range: Range<usize>,
    ) -> Result<(RecordBatch, u64), OpError> {
        let per_row = segment_rows(&self.splitter, tok, texts, range.clone())?;
        let empty = per_row.iter().filter(|r| r.is_none()).count() as u64;
        let batch = build_batch(texts, key, key_name, range, &per_row, tok.is_some())?;
        Ok((batch, empty))
    }
}

/// The output rows of a chunk, in input order then step order.
fn build_batch(
    texts: &TextColumn,
    key: &ArrayRef,
    key_name: &str,
    range: Range<usize>,
    per_row: &[Option<TextSteps>],
    with_tokens: bool,
) -> Result<RecordBatch, OpError> {
    let n_steps: usize = per_row.iter().flatten().map(|s| s.bytes.len()).sum();
    let n_bytes: usize = range
        .clone()
        .zip(per_row)
        .filter(|(_, s)| s.is_some())
        .map(|(i, _)| texts.get(i).map_or(0, str::len))
        .sum();
    let mut rows = Vec::with_capacity(n_steps);
    let mut step = Int32Builder::with_capacity(n_steps);
    let mut text = StringBuilder::with_capacity(n_steps, n_bytes);
    let mut cs = Int32Builder::with_capacity(n_steps);
    let mut ce = Int32Builder::with_capacity(n_steps);
    let mut ts = Int32Builder::with_capacity(n_steps);
    let mut te = Int32Builder::with_capacity(n_steps);
    let mut nt = Int32Builder::with_capacity(n_steps);
    for (i, steps) in range.zip(per_row) {
        let Some(steps) = steps else { continue };
        let t = texts.get(i).unwrap_or("");
        for (k, r) in steps.bytes.iter().enumerate() {
            rows.push(i as u32);
            step.append_value(k as i32 + 1);
            text.append_value(&t[r.clone()]);
            cs.append_value(steps.chars[k].0);
            ce.append_value(steps.chars[k].1);
            if let Some(tok) = &steps.tokens {
                let (a, b) = tok[k];
                ts.append_value(a);
                te.append_value(b);
                nt.append_value(b - a);
            }
        }
    }
    let (ts, te, nt): (ArrayRef, ArrayRef, ArrayRef) = if with_tokens {
        (
            Arc::new(ts.finish()),
            Arc::new(te.finish()),
            Arc::new(nt.finish()),
        )
    } else {
        let null = arrow::array::new_null_array(&DataType::Int32, n_steps);
        (null.clone(), null.clone(), null)
    };
    let key_col = arrow::compute::take(key.as_ref(), &UInt32Array::from(rows), None)?;
    let fields = vec![
        Field::new(key_name, key.data_type().clone(), true),
        Field::new("step", DataType::Int32, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("char_start", DataType::Int32, false),
        Field::new("char_end", DataType::Int32, false),
        Field::new("tok_start", DataType::Int32, true),
        Field::new("tok_end", DataType::Int32, true),
        Field::new("n_tokens", DataType::Int32, true),
    ];
    let columns: Vec<ArrayRef> = vec![
        key_col,
        Arc::new(step.finish()),
        Arc::new(text.finish()),
        Arc::new(cs.finish()),
        Arc::new(ce.finish()),
        ts,
        te,
        nt,
    ];
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Segments a whole column without the engine (benchmarks): the output batch.
pub fn segment_column(
    splitter: &Splitter,
    tokenizer: Option<&TextTokenizer>,
    key: &ArrayRef,
    key_name: &str,
    texts: &ArrayRef,
) -> Result<RecordBatch, OpError> {
    let texts = TextColumn::new(texts).ok_or_else(|| OpError::msg("not a text column"))?;
    let range = 0..key.len();
    let per_row = segment_rows(splitter, tokenizer, &texts, range.clone())?;
    build_batch(&texts, key, key_name, range, &per_row, tokenizer.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_offsets_count_scalar_values() {
        let t = "Sei x = 3 · 4 = 12.\n\nDann ist die Lösung 12 ✓.\n\n答案是 12。";
        let s = segment_text(&Splitter::blank_lines(), None, t).unwrap();
        let chars: Vec<char> = t.chars().collect();
        assert_eq!(s.chars.len(), 3);
        let mut prev = 0;
        for ((a, b), r) in s.chars.iter().zip(&s.bytes) {
            assert_eq!(*a, prev);
            let from_chars: String = chars[*a as usize..*b as usize].iter().collect();
            assert_eq!(from_chars, &t[r.clone()]);
            prev = *b;
        }
        assert_eq!(prev as usize, chars.len());
        assert!(s.tokens.is_none());
    }

    /// The fingerprint JSON of segment's params, as recorded before the params were
    /// reshaped: fingerprints decide caching, so it must not change.
    #[test]
    fn fingerprint_json_is_unchanged() {
        let ctx = ConfigureContext {
            node_id: "s".into(),
            base_dir: ".".into(),
            seed: 1,
        };
        let fingerprint = |spec: serde_json::Value| {
            let k = Segment
                .configure(&Params::from_json(&spec), &ctx)
                .ok()
                .unwrap();
            serde_json::to_string(&k.params_json()).unwrap()
        };
        assert_eq!(
            fingerprint(json!({})),
            r#"{"chunk_rows":4096,"column":"response","delimiter":"\n\n","max_steps":null,"min_chars":0,"regex":null,"tokenizer":false}"#
        );
        assert_eq!(
            fingerprint(json!({"regex": "\\.\\s+", "min_chars": 3, "max_steps": 5})),
            r#"{"chunk_rows":4096,"column":"response","delimiter":null,"max_steps":5,"min_chars":3,"regex":"\\.\\s+","tokenizer":false}"#
        );
    }
}
