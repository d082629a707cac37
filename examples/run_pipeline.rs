//! Run a pipeline from Rust code instead of the CLI, then query its tables with SQL.
//!
//! ```sh
//! cargo run --example run_pipeline -- pipelines/quickstart.yaml
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use sspo_engine::{executor, sql, Pipeline, Plan, ProgressMode, RunOptions};

fn main() -> Result<()> {
    let path: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "pipelines/quickstart.yaml".into())
        .into();
    // Parse (with `--set`-style overrides) and check against the built-in operators.
    let spec =
        Pipeline::load(&path, &["seed=11".to_string()]).map_err(|d| anyhow::anyhow!("{d}"))?;
    let plan =
        Plan::build(spec, &sspo_operators::registry()).map_err(|d| anyhow::anyhow!("{d}"))?;
    // The spec's `cpu:` settings, before any tensor work (libtorch reads them once).
    sspo_operators::model_port::configure_cpu(&plan.pipeline.cpu)?;

    let run_dir = std::env::temp_dir().join("sspo-example-run");
    let outcomes = executor::run(
        &plan,
        &RunOptions {
            run_dir: run_dir.clone(),
            force: Vec::new(),
            until: None,
            progress: ProgressMode::Log,
            keep_scratch: false,
            remote: None,
        },
    )
    .context("running the pipeline")?;
    for o in &outcomes {
        println!("{:<12} {:<8} {} rows", o.node, o.action, o.rows);
    }

    // Every node is a SQL table named after it.
    let first = &plan.nodes[plan.order[0]];
    let batches = sql::query(
        &run_dir,
        &format!("SELECT count(*) AS rows FROM \"{}\"", first.id()),
    )?;
    println!("{}", sql::render(&batches, sql::Format::Table)?);
    Ok(())
}
