//! One shard of a sharded run (`sspo-run PIPELINE --shard I/N [--node NODE]`).
//!
//! A shard holds the run directory's lock shared: any number of shards (of one node or
//! several, duplicates included) run side by side, while a plain run or a commit, which
//! hold it exclusively, wait for them or make them wait. A shard writes nothing but
//! create-only files ([`crate::markers`]): it never writes, repairs or wipes a manifest,
//! except that it retires a manifest of an earlier fingerprint, which no reader should
//! take for this spec's output.
//!
//! Which nodes a shard runs: `--node NODE` names one, which must be shardable
//! ([`crate::NodeKernel::shardable`]) and whose inputs must be committed. Without it,
//! every shardable node that is not complete and whose inputs are all committed: one
//! stage of the pipeline. The others are reported with the reason.
//!
//! When the last chunk of a node is committed, the shard that sees it commits the node
//! ([`super::commit`]); two shards that both see it are serialised by the lock, and the
//! second finds the node committed.

use std::time::Instant;

use super::repair::{self, Scanned};
use super::{commit, hasher_for, resolve_node, NodeOutcome, NodeStatus, RunError, RunOptions};
use crate::diag::Diagnostic;
use crate::error::OpError;
use crate::markers;
use crate::plan::{Binding, Plan};
use crate::progress::Progress;
use crate::run::RunContext;
use crate::shard::Shard;
use crate::store::LockMode;

/// What one shard did to one node.
#[derive(Debug, Clone)]
pub struct ShardNode {
    pub node: String,
    /// Chunks of the node committed so far (by every shard), and their number.
    pub done: u64,
    pub chunks: u64,
    /// Primary rows committed so far (by every shard).
    pub rows: u64,
    pub seconds: f64,
}

/// What a shard run did.
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    pub ran: Vec<ShardNode>,
    /// Nodes this shard committed because it found every chunk done.
    pub committed: Vec<NodeOutcome>,
    /// Nodes it left alone, and why.
    pub skipped: Vec<String>,
}

/// The located error `--shard` gets for a node that cannot be sharded (at its `op:`).
pub fn shard_diagnostic(plan: &Plan, node: &str) -> Option<Diagnostic> {
    let n = &plan.nodes[plan.index(node)?];
    if n.kernel.shardable() {
        return None;
    }
    Some(
        Diagnostic::at(
            Some(n.spec.op_loc.clone()),
            format!(
                "node `{node}` (op `{}`) cannot be sharded: its output is not a set of \
                 independent chunks of its input rows",
                n.spec.op
            ),
        )
        .with_help(format!(
            "run it in one process: `sspo-run {} --until {node}`; sharded ops: {}",
            plan.pipeline.path.display(),
            shardable_ops(plan)
        )),
    )
}

/// The op names of the plan's shardable nodes, or a phrase when there are none.
fn shardable_ops(plan: &Plan) -> String {
    let mut ops: Vec<&str> = plan
        .nodes
        .iter()
        .filter(|n| n.kernel.shardable())
        .map(|n| n.op.name())
        .collect();
    ops.sort_unstable();
    ops.dedup();
    if ops.is_empty() {
        "none in this pipeline".to_string()
    } else {
        ops.join(", ")
    }
}

/// Runs shard `shard` of `node` (or of every node ready for it), then, if `auto_commit`,
/// commits every node whose chunks are all done.
pub fn run_shard(
    plan: &Plan,
    opts: &RunOptions,
    shard: Shard,
    node: Option<&str>,
    auto_commit: bool,
) -> Result<ShardReport, RunError> {
    let progress = Progress::new(opts.progress);
    let log = |line: &str| progress.println(line);
    let lock = super::hold(opts, LockMode::Shared, true, &log)?;
    let hasher = hasher_for(&opts.run_dir);
    let fps = plan.fingerprints(&hasher)?;
    let scans = repair::scan(plan, &opts.run_dir, &fps, &plan.order, &[])?;
    let mut report = ShardReport::default();
    let picked = pick_nodes(plan, &scans, node, &mut report.skipped)?;
    let mut complete = Vec::new();
    for i in picked {
        let id = plan.nodes[i].id();
        let dir = opts.node_dir(id);
        let scanned = scans.iter().find(|s| s.index == i);
        let status = scanned.map_or(NodeStatus::Missing, |s| s.status);
        match status {
            NodeStatus::Damaged => return Err(RunError::NeedsRepair { node: id.into() }),
            // An earlier spec's output: retired, so that no reader takes it for this one.
            NodeStatus::Stale => {
                if dir
                    .read_manifest()?
                    .is_some_and(|m| m.fingerprint != fps[i])
                {
                    dir.remove_file(&dir.manifest_path())?;
                }
            }
            NodeStatus::Cached | NodeStatus::Partial | NodeStatus::Missing => {}
        }
        markers::retire_other_fingerprints(&dir, &fps[i]);
        let manifest = markers::node_view(&dir, Some(&fps[i]))?;
        let inputs = plan.inputs_of(i, &opts.run_dir, &fps, &hasher)?;
        let node = &plan.nodes[i];
        let bar = progress.node(id, "rows");
        let start = Instant::now();
        let mut ctx =
            RunContext::for_node(plan, i, fps[i].clone(), opts, inputs, &bar, manifest, &log);
        ctx.set_shard(shard, markers::attempt_tag());
        match node.kernel.run(&mut ctx) {
            Ok(()) | Err(OpError::ShardDone) => {}
            Err(OpError::Cancelled) => {
                bar.abandon("interrupted");
                return Err(RunError::Interrupted(id.to_string()));
            }
            Err(source) => {
                bar.abandon("failed");
                return Err(RunError::Node {
                    node: id.to_string(),
                    op: node.op.name().to_string(),
                    source,
                });
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let view = markers::node_view(&dir, Some(&fps[i]))?;
        let (done, chunks, rows) = view.as_ref().map_or((0, 0, 0), |m| {
            let total = markers::chunk_count(m);
            let missing = markers::missing_chunks(m).len() as u64;
            (total - missing, total, m.primary_rows())
        });
        bar.finish(&format!(
            "shard {shard} done: {done} of {chunks} chunks of the node committed"
        ));
        if auto_commit && chunks > 0 && done == chunks {
            complete.push(id.to_string());
        }
        report.ran.push(ShardNode {
            node: id.to_string(),
            done,
            chunks,
            rows,
            seconds,
        });
    }
    // The commit takes the lock exclusively: this shard's share goes first.
    drop(lock);
    for id in complete {
        report
            .committed
            .extend(commit(plan, opts, Some(&id), &|line| eprintln!("{line}"))?);
    }
    Ok(report)
}

/// The nodes this shard runs: `node` if given (checked), else every ready one; the
/// others are described in `skipped`.
fn pick_nodes(
    plan: &Plan,
    scans: &[Scanned],
    node: Option<&str>,
    skipped: &mut Vec<String>,
) -> Result<Vec<usize>, RunError> {
    let status = |i: usize| {
        scans
            .iter()
            .find(|s| s.index == i)
            .map_or(NodeStatus::Missing, |s| s.status)
    };
    let uncommitted_input = |i: usize| {
        plan.nodes[i].bindings.values().find_map(|b| match b {
            Binding::Node(j) if status(*j) != NodeStatus::Cached => Some(*j),
            _ => None,
        })
    };
    if let Some(id) = node {
        let i = resolve_node(plan, id)?;
        let n = &plan.nodes[i];
        if !n.kernel.shardable() {
            return Err(RunError::NotShardable {
                node: id.to_string(),
                op: n.op.name().to_string(),
            });
        }
        if let Some(j) = uncommitted_input(i) {
            return Err(RunError::InputNotCommitted {
                node: id.to_string(),
                input: plan.nodes[j].id().to_string(),
                status: status(j).as_str(),
            });
        }
        if status(i) == NodeStatus::Cached {
            skipped.push(format!("`{id}`: already committed"));
            return Ok(Vec::new());
        }
        return Ok(vec![i]);
    }
    let mut picked = Vec::new();
    for &i in &plan.order {
        let n = &plan.nodes[i];
        let id = n.id();
        if status(i) == NodeStatus::Cached {
            continue;
        }
        if !n.kernel.shardable() {
            skipped.push(format!(
                "`{id}` (op `{}`): cannot be sharded; run it without --shard",
                n.op.name()
            ));
        } else if let Some(j) = uncommitted_input(i) {
            skipped.push(format!(
                "`{id}`: waits for `{}` to be committed",
                plan.nodes[j].id()
            ));
        } else {
            picked.push(i);
        }
    }
    if picked.is_empty() && !skipped.is_empty() {
        let reasons: String = skipped.iter().map(|s| format!("\n  {s}")).collect();
        return Err(RunError::NothingToShard(reasons));
    }
    Ok(picked)
}
