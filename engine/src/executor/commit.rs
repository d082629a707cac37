//! `sspo-run commit`: turns the chunks the shards of a sharded run committed (their
//! markers) into the node's manifest, once every chunk is there.
//!
//! The commit holds the run directory's exclusive lock (waiting for running shards to
//! finish), checks that the markers and any partial manifest cover every chunk (or
//! refuses, naming the missing chunks and their shards), then runs the node as a plain
//! run would: its chunk loop finds every chunk done, so only what follows the loop runs
//! (`evaluate`'s summary), and the node's manifest is written. The node's first manifest
//! is written create-only, so of two commits that race past the lock (a file system
//! without working locks) exactly one writes it; the other reports it committed.

use std::collections::BTreeMap;

use super::{
    hasher_for, resolve_node, run_nodes, status_of, NodeOutcome, NodeStatus, RunError, RunMode,
    RunOptions,
};
use crate::markers::{self, ChunkMarker};
use crate::plan::Plan;
use crate::shard::Shard;
use crate::store::LockMode;

/// Commits `node`, or every node with markers when `node` is `None`. `log` says when the
/// commit waits for the lock.
pub fn commit(
    plan: &Plan,
    opts: &RunOptions,
    node: Option<&str>,
    log: &dyn Fn(&str),
) -> Result<Vec<NodeOutcome>, RunError> {
    let _held = super::hold(opts, LockMode::Exclusive, true, log)?;
    let hasher = hasher_for(&opts.run_dir);
    let fps = plan.fingerprints(&hasher)?;
    let targets: Vec<usize> = match node {
        Some(id) => vec![resolve_node(plan, id)?],
        None => plan
            .order
            .iter()
            .copied()
            .filter(|&i| markers::has_shards(&opts.node_dir(plan.nodes[i].id())))
            .collect(),
    };
    let mut to_run = Vec::new();
    let mut outcomes = Vec::new();
    for &i in &targets {
        let id = plan.nodes[i].id();
        let dir = opts.node_dir(id);
        let view = markers::node_view(&dir, Some(&fps[i]))?;
        match (status_of(view.as_ref(), &fps[i]), &view) {
            (NodeStatus::Cached, Some(m)) => outcomes.push(NodeOutcome {
                node: id.to_string(),
                action: "cached",
                rows: m.primary_rows(),
                seconds: 0.0,
                summary: m.summary(),
            }),
            (NodeStatus::Partial, Some(m)) => {
                let missing = markers::missing_chunks(m);
                if !missing.is_empty() {
                    let markers = markers::read_markers(&dir, &fps[i])?;
                    return Err(RunError::MissingChunks {
                        node: id.to_string(),
                        owners: owners(&missing, &markers),
                        missing,
                    });
                }
                to_run.push(i);
            }
            _ => return Err(RunError::NothingToCommit(id.to_string())),
        }
    }
    let order: Vec<usize> = plan
        .order
        .iter()
        .copied()
        .filter(|i| to_run.contains(i))
        .collect();
    outcomes.extend(run_nodes(
        plan,
        opts,
        &fps,
        &hasher,
        &order,
        &[],
        RunMode::Commit,
    )?);
    Ok(outcomes)
}

/// Which shard owns each missing chunk, from the shard count the markers record:
/// `shard 1/4: chunk 1, 5`, grouped by shard.
fn owners(missing: &[u64], markers: &[ChunkMarker]) -> String {
    let count = markers
        .iter()
        .find_map(|m| Shard::parse(&m.header.shard).ok())
        .map(|s| s.count);
    let Some(count) = count else {
        return "no shard has committed any chunk".to_string();
    };
    let mut by_shard: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for &c in missing {
        by_shard
            .entry(Shard::owner_of(c, count))
            .or_default()
            .push(c.to_string());
    }
    by_shard
        .iter()
        .map(|(s, chunks)| {
            let word = if chunks.len() == 1 { "chunk" } else { "chunks" };
            format!("shard {s}/{count}: {word} {}", chunks.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}
