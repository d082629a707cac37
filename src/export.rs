//! `sspo-run export`: a node's table in another tool's format.
//!
//! `trl-dpo`: a `pair` node's pairs as TRL's DPO dataset, one Parquet file with the
//! columns `prompt` (the exact model input the rollouts were sampled from, or the query's
//! prompt where the rollouts kept none), `chosen` and `rejected` (the full responses),
//! and alongside them what a step-weighted loss needs: `chosen_steps` /
//! `rejected_steps` (step texts, concatenated they are the responses), `chosen_adv` /
//! `rejected_adv` (`Â` per step), `prefix_steps` (leading steps both sides share), and
//! `pair_id`, `id`, `kind`. Rows are in `pair_id` order.

use std::path::Path;

use anyhow::{bail, Context};
use sspo_engine::sql;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// TRL's DPO dataset (prompt, chosen, rejected) with step advantages alongside.
    TrlDpo,
}

/// Writes `node`'s table of `run_dir` to `out`; returns the number of rows.
pub fn export(run_dir: &Path, node: &str, format: ExportFormat, out: &Path) -> anyhow::Result<u64> {
    let tables = sql::tables(run_dir).with_context(|| format!("reading {}", run_dir.display()))?;
    let Some(table) = tables.iter().find(|t| t.name == node && t.table.is_empty()) else {
        bail!("no node `{node}` with output in {}", run_dir.display());
    };
    if table.state != "complete" {
        bail!(
            "node `{node}` is {}: finish it (or commit its shards) before exporting it",
            table.state
        );
    }
    let query = match format {
        ExportFormat::TrlDpo => {
            let columns = sql::query(
                run_dir,
                &format!("SELECT column_name FROM information_schema.columns WHERE table_name = '{node}'"),
            )
            .context("reading the table's columns")?;
            let names = sql::render(&columns, sql::Format::Csv)?;
            for needed in ["pair_id", "context", "chosen_steps", "chosen_adv"] {
                if !names.lines().any(|l| l.trim() == needed) {
                    bail!("node `{node}` has no column `{needed}`: trl-dpo exports the table of a `pair` node");
                }
            }
            format!(
                "SELECT coalesce(context, prompt) AS prompt, chosen, rejected, \
                 chosen_steps, rejected_steps, chosen_adv, rejected_adv, prefix_steps, \
                 pair_id, id, kind \
                 FROM \"{node}\" ORDER BY pair_id"
            )
        }
    };
    sql::query_to_parquet(run_dir, &query, out)
        .with_context(|| format!("exporting `{node}` to {}", out.display()))
}
