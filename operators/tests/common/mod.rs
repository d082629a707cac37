//! Shared by the operator tests: run a pipeline given as YAML text, read a node's table.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use sspo_engine::store::{Manifest, NodeDir};
use sspo_engine::{Pipeline, Plan, ProgressMode, RunOptions};

/// Writes `yaml` as `dir/pipeline.yaml` (relative paths resolve in `dir`), plans it with
/// the built-in operators and runs it into `dir/run`.
pub fn run(dir: &Path, yaml: &str) -> Result<PathBuf, String> {
    run_with(dir, yaml, false)
}

/// [`run`], keeping completed nodes' scratch directories (checkpoints) when
/// `keep_scratch`, as `sspo-run --keep-scratch` does.
pub fn run_with(dir: &Path, yaml: &str, keep_scratch: bool) -> Result<PathBuf, String> {
    let spec = dir.join("pipeline.yaml");
    std::fs::write(&spec, yaml).map_err(|e| e.to_string())?;
    let pipeline = Pipeline::from_text(yaml, &spec, &[]).map_err(|d| d.to_string())?;
    let plan = Plan::build(pipeline, &sspo_operators::registry()).map_err(|d| d.to_string())?;
    let run_dir = dir.join("run");
    sspo_engine::run(
        &plan,
        &RunOptions {
            run_dir: run_dir.clone(),
            force: vec![],
            until: None,
            progress: ProgressMode::Quiet,
            keep_scratch,
            remote: None,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(run_dir)
}

/// A node's committed table and manifest.
pub fn table(run_dir: &Path, node: &str) -> (RecordBatch, Manifest) {
    let d = NodeDir::new(run_dir, node);
    let m = d.read_manifest().unwrap().expect("node has a manifest");
    (d.read_table(&m, "").unwrap(), m)
}

/// A text column, nulls as `None`.
pub fn opt_strings(b: &RecordBatch, col: &str) -> Vec<Option<String>> {
    let c = b
        .column_by_name(col)
        .unwrap_or_else(|| panic!("no column {col}"));
    let s = c.as_string::<i32>();
    (0..s.len())
        .map(|i| (!s.is_null(i)).then(|| s.value(i).to_string()))
        .collect()
}

/// A text column, nulls as empty strings.
pub fn strings(b: &RecordBatch, col: &str) -> Vec<String> {
    opt_strings(b, col)
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect()
}
