//! Write a custom operator, register it next to the built-in ones, and run it.
//!
//! The operator, `char_stats`, reads one text column of its `rows` input and writes
//! `id, chars, lines` per row. It shows the whole extension surface: typed params with
//! located errors, ports, declared columns (checked by `validate`), and the chunk loop
//! that makes it resumable.
//!
//! ```sh
//! cargo run --example custom_operator
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use arrow::array::{Array, Int64Builder, RecordBatch, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use sspo_engine::{
    executor, Columns, ConfigureContext, Diagnostics, NodeKernel, OpError, Operator, Params,
    Pipeline, Plan, Port, ProgressMode, RunContext, RunOptions,
};

/// Params of `char_stats`; unknown keys are rejected with a "did you mean", absent ones
/// take the values of `Default`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CharStatsParams {
    /// The text column to measure.
    column: String,
}

impl Default for CharStatsParams {
    fn default() -> Self {
        Self {
            column: "prompt".into(),
        }
    }
}

struct CharStats;

impl Operator for CharStats {
    fn name(&self) -> &'static str {
        "char_stats"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "characters and lines of a text column"
    }
    fn ports(&self) -> &'static [Port] {
        const PORTS: &[Port] = &[Port::table("rows", "rows with an `id` and a text column")];
        PORTS
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: CharStatsParams = params.parse()?;
        if p.column.is_empty() {
            return Err(params
                .error(&["column"], "`column` must not be empty")
                .into());
        }
        // What enters the fingerprint: every param here changes the output.
        let fingerprinted = params.fingerprint_json(&p, &[])?;
        Ok(Arc::new(CharStatsKernel { p, fingerprinted }))
    }
}

struct CharStatsKernel {
    p: CharStatsParams,
    fingerprinted: serde_json::Value,
}

impl NodeKernel for CharStatsKernel {
    fn params_json(&self) -> serde_json::Value {
        self.fingerprinted.clone()
    }
    fn required_columns(&self) -> Vec<(&'static str, Vec<String>)> {
        vec![("rows", vec!["id".into(), self.p.column.clone()])]
    }
    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::exact(["id", "chars", "lines"])
    }
    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let input = ctx.input_table("rows")?;
        let text_col = |name: &str| -> Result<StringArray, OpError> {
            let col = input
                .column_by_name(name)
                .ok_or_else(|| OpError::msg(format!("input has no column `{name}`")))?;
            let casted = arrow::compute::cast(col, &DataType::Utf8)?;
            casted
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| OpError::msg(format!("column `{name}` is not text")))
        };
        let ids = text_col("id")?;
        let texts = text_col(&self.p.column)?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("chars", DataType::Int64, false),
            Field::new("lines", DataType::Int64, false),
        ]));
        // The chunk loop commits every 2 rows here, so a killed run resumes mid-table.
        ctx.run_chunks(input.num_rows(), 2, |_ctx, range| {
            let (mut id, mut chars, mut lines) = (
                StringBuilder::new(),
                Int64Builder::new(),
                Int64Builder::new(),
            );
            for i in range {
                let text = if texts.is_null(i) { "" } else { texts.value(i) };
                id.append_value(ids.value(i));
                chars.append_value(text.chars().count() as i64);
                lines.append_value(text.lines().count() as i64);
            }
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(id.finish()),
                    Arc::new(chars.finish()),
                    Arc::new(lines.finish()),
                ],
            )?;
            Ok(batch.into())
        })
    }
}

fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("q.jsonl"),
        "{\"id\": \"a\", \"prompt\": \"one line\", \"answer\": \"1\"}\n\
         {\"id\": \"b\", \"prompt\": \"two\\nlines\", \"answer\": \"2\"}\n\
         {\"id\": \"c\", \"prompt\": \"three\\nshort\\nlines\", \"answer\": \"3\"}\n",
    )?;
    let spec = "\
name: custom
nodes:
  questions: {op: source, params: {path: q.jsonl}}
  stats: {op: char_stats, inputs: {rows: questions}, params: {column: prompt}}
";
    let mut registry = sspo_operators::registry();
    registry.register(Arc::new(CharStats));
    let pipeline = Pipeline::from_text(spec, &dir.path().join("custom.yaml"), &[])
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    let plan = Plan::build(pipeline, &registry).map_err(|d| anyhow::anyhow!("{d}"))?;
    let run_dir = dir.path().join("run");
    executor::run(
        &plan,
        &RunOptions {
            run_dir: run_dir.clone(),
            force: Vec::new(),
            until: None,
            progress: ProgressMode::Quiet,
            keep_scratch: false,
            remote: None,
        },
    )?;
    let batches =
        sspo_engine::sql::query(&run_dir, "SELECT id, chars, lines FROM stats ORDER BY id")?;
    println!(
        "{}",
        sspo_engine::sql::render(&batches, sspo_engine::sql::Format::Table)?
    );
    Ok(())
}
