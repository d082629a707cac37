//! `sspo-run PIPELINE --shard I/N [--node NODE]` and `sspo-run commit`: the command-line
//! side of sharded runs (the engine's `executor::run_shard` and `executor::commit`).

use sspo_engine::executor::{self, RunError};
use sspo_engine::shard::Shard;
use sspo_engine::{Diagnostics, Plan, RunOptions};

use crate::cli::{invalid, print_outcomes, shown, Failure};

/// The shard of `--shard TEXT`; a node named by `--node` that cannot be sharded is a
/// located spec error (exit 2), like every other `validate` error.
pub fn parse_shard(plan: &Plan, text: &str, node: Option<&str>) -> Result<Shard, Failure> {
    if let Some(d) = node.and_then(|n| executor::shard_diagnostic(plan, n)) {
        let mut diags = Diagnostics::new();
        diags.push(d);
        return Err(invalid(diags));
    }
    let parsed = if text == "auto" {
        Shard::from_env(|k| std::env::var(k).ok())
    } else {
        Shard::parse(text)
    };
    parsed.map_err(|e| Failure::error(2, &e))
}

/// Runs one shard and says what it did.
pub fn run(
    plan: &Plan,
    opts: &RunOptions,
    shard: Shard,
    node: Option<&str>,
    auto_commit: bool,
) -> Result<(), Failure> {
    let report = executor::run_shard(plan, opts, shard, node, auto_commit).map_err(run_failure)?;
    for n in &report.ran {
        eprintln!(
            "  {:<20} shard {shard}: {} of {} chunks of the node done ({} rows)  {:.1}s",
            n.node, n.done, n.chunks, n.rows, n.seconds
        );
    }
    for s in &report.skipped {
        eprintln!("  not run: {s}");
    }
    if !report.committed.is_empty() {
        eprintln!("every chunk was done: committed");
        print_outcomes(&report.committed, &shown(opts));
    } else {
        eprintln!("run directory: {}", shown(opts));
    }
    Ok(())
}

/// Commits the node (or every node with shards' chunks).
pub fn commit(plan: &Plan, opts: &RunOptions, node: Option<&str>) -> Result<(), Failure> {
    let outcomes =
        executor::commit(plan, opts, node, &|line| eprintln!("{line}")).map_err(run_failure)?;
    if outcomes.is_empty() {
        eprintln!("nothing to commit: no node has chunks from shards");
    }
    for o in &outcomes {
        if o.action == "cached" {
            eprintln!("  {:<20} already committed ({} rows)", o.node, o.rows);
        }
    }
    let committed: Vec<_> = outcomes
        .into_iter()
        .filter(|o| o.action != "cached")
        .collect();
    print_outcomes(&committed, &shown(opts));
    Ok(())
}

/// Usage problems exit 2, the rest 1, an interruption 130.
fn run_failure(e: RunError) -> Failure {
    match e {
        RunError::Interrupted(_) => Failure {
            code: 130,
            message: e.to_string(),
        },
        RunError::UnknownNode(..) | RunError::NotShardable { .. } => Failure::error(2, &e),
        _ => Failure::error(1, &e),
    }
}
