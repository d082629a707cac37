//! Runs a [`Plan`] against a run directory: cached nodes are skipped, partial ones
//! resumed, stale ones recomputed (with everything downstream, since fingerprints chain),
//! damaged ones repaired ([`repair`]).

mod commit;
mod repair;
mod shard;

pub use commit::commit;
pub use shard::{run_shard, shard_diagnostic, ShardNode, ShardReport};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sspo_common::suggest::did_you_mean;

use crate::error::OpError;
use crate::fingerprint::ContentHasher;
use crate::markers;
use crate::plan::{Plan, PlanError};
use crate::progress::{Progress, ProgressMode};
use crate::remote::sync::{self, PullMode};
use crate::remote::{Lease, RemoteRun};
use crate::run::RunContext;
use crate::store::{LockMode, Manifest, NodeDir, NodeState, RunLock, StoreError};

/// The state of a node's output relative to the current spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Complete, same fingerprint: a run skips it.
    Cached,
    /// Interrupted, same fingerprint: a run resumes it.
    Partial,
    /// Output of another fingerprint: a run recomputes it.
    Stale,
    /// Nothing written yet.
    Missing,
    /// Same fingerprint, but a committed part is missing or differs from its record: a
    /// run recomputes its chunk (and everything downstream).
    Damaged,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Cached => "cached",
            NodeStatus::Partial => "partial",
            NodeStatus::Stale => "stale",
            NodeStatus::Missing => "missing",
            NodeStatus::Damaged => "damaged",
        }
    }
}

pub fn status_of(manifest: Option<&Manifest>, fingerprint: &str) -> NodeStatus {
    match manifest {
        None => NodeStatus::Missing,
        Some(m) if m.fingerprint != fingerprint => NodeStatus::Stale,
        Some(m) if m.state == NodeState::Complete => NodeStatus::Cached,
        Some(_) => NodeStatus::Partial,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("node `{node}` (op `{op}`) failed: {source}")]
    Node {
        node: String,
        op: String,
        #[source]
        source: OpError,
    },
    #[error("interrupted during node `{0}`; committed chunks are kept and the next run resumes from them")]
    Interrupted(String),
    #[error("unknown node `{0}`{1}")]
    UnknownNode(String, String),
    #[error(
        "node `{node}` (op `{op}`) cannot be sharded; run it without --shard (`--until {node}`)"
    )]
    NotShardable { node: String, op: String },
    #[error("node `{node}` reads `{input}`, which is {status}, not committed: run (or commit) `{input}` first")]
    InputNotCommitted {
        node: String,
        input: String,
        status: &'static str,
    },
    #[error("node `{node}` has damaged parts; a sharded run does not repair: run `sspo-run PIPELINE --until {node}` (or `sspo-run verify`)")]
    NeedsRepair { node: String },
    #[error("cannot commit node `{node}`: {} not committed yet ({owners}); run the shards that own {}, then commit again", chunks_phrase(.missing), if .missing.len() == 1 { "it" } else { "them" })]
    MissingChunks {
        node: String,
        missing: Vec<u64>,
        /// Which shard owns each, as far as the markers tell (`shard 1/4: chunk 1, 5`).
        owners: String,
    },
    #[error("nothing to commit for node `{0}`: no shard has committed a chunk of it (run `sspo-run PIPELINE --shard I/N --node {0}` first)")]
    NothingToCommit(String),
    #[error("a sharded run has nothing it can run now:{0}")]
    NothingToShard(String),
}

/// "chunk 3" or "chunks 1, 5 and 9" (at most 20 listed).
fn chunks_phrase(chunks: &[u64]) -> String {
    let shown: Vec<String> = chunks.iter().take(20).map(u64::to_string).collect();
    let more = if chunks.len() > shown.len() {
        format!(" and {} more", chunks.len() - shown.len())
    } else {
        String::new()
    };
    match shown.as_slice() {
        [one] => format!("chunk {one}"),
        [init @ .., last] if more.is_empty() => format!("chunks {} and {last}", init.join(", ")),
        _ => format!("chunks {}{more}", shown.join(", ")),
    }
}

/// What happened to each node in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeOutcome {
    pub node: String,
    /// `cached`, `ran`, `resumed`, `repaired` (damaged chunks recomputed).
    pub action: &'static str,
    pub rows: u64,
    pub seconds: f64,
    /// The node's end-of-run summary ([`crate::RunContext::set_summary`]), if any.
    pub summary: Option<String>,
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub run_dir: PathBuf,
    /// Recompute these (and everything downstream) even when cached.
    pub force: Vec<String>,
    /// Run only this node and what it needs.
    pub until: Option<String>,
    pub progress: ProgressMode,
    /// Keep a completed node's `scratch/` directory (checkpoints, caches) instead of
    /// deleting it: for inspecting what a run wrote there.
    pub keep_scratch: bool,
    /// The object store the run directory lives on, when it is a URL; `run_dir` is then
    /// its local working copy (see [`crate::remote`]).
    pub remote: Option<Arc<RemoteRun>>,
}

impl RunOptions {
    /// Node `id`'s directory, committing to the object store when there is one.
    pub fn node_dir(&self, id: &str) -> NodeDir {
        NodeDir::new(&self.run_dir, id).with_remote(self.remote.clone())
    }
}

/// What a process holds while it works on a run directory: the working copy's lock and,
/// on object storage, the lease.
pub(crate) struct Held {
    _lock: RunLock,
    _lease: Option<Lease>,
}

/// Takes the run directory in `mode` (waiting for conflicting holders if `wait`, and
/// saying so through `log`), then brings an object-store run's working copy up to date.
pub(crate) fn hold(
    opts: &RunOptions,
    mode: LockMode,
    wait: bool,
    log: &dyn Fn(&str),
) -> Result<Held, RunError> {
    let lock = if wait {
        RunLock::acquire_waiting(&opts.run_dir, mode, |path| {
            log(&format!(
                "waiting for the run-dir lock {} (another process is at work on it)",
                path.display()
            ))
        })?
    } else {
        RunLock::acquire(&opts.run_dir)?
    };
    let lease = match &opts.remote {
        Some(remote) => {
            let lease = Lease::acquire(remote, mode, wait, log).map_err(StoreError::from)?;
            let pull_mode = match mode {
                LockMode::Exclusive => PullMode::Mirror,
                LockMode::Shared => PullMode::Add,
            };
            sync::pull_logged(remote, pull_mode, log)?;
            Some(lease)
        }
        None => None,
    };
    Ok(Held {
        _lock: lock,
        _lease: lease,
    })
}

/// The default run directory: `runs/<name>` under the working directory.
pub fn default_run_dir(plan: &Plan) -> PathBuf {
    Path::new("runs").join(&plan.pipeline.name)
}

pub fn hasher_for(run_dir: &Path) -> ContentHasher {
    ContentHasher::new(Some(run_dir.join(".cache").join("content-hashes.json")))
}

/// One node's line of `status`.
#[derive(Debug, Clone)]
pub struct NodeReport {
    pub node: String,
    pub status: NodeStatus,
    pub manifest: Option<Manifest>,
    /// Why a node with output is not cached (damaged parts, damage upstream); empty
    /// otherwise.
    pub reasons: Vec<String>,
}

/// Status of every node (no lock taken: read-only). Every listed part is stat'ed: a
/// node with a missing or truncated part is [`NodeStatus::Damaged`], and the nodes
/// downstream of it stale.
pub fn status(plan: &Plan, run_dir: &Path) -> Result<Vec<NodeReport>, RunError> {
    let hasher = hasher_for(run_dir);
    let fps = plan.fingerprints(&hasher)?;
    let scans = repair::scan(plan, run_dir, &fps, &plan.order, &[])?;
    Ok(scans
        .into_iter()
        .map(|s| {
            let reasons = match (&s.damaged_upstream, s.status) {
                (Some(up), _) => vec![format!(
                    "computed from `{up}`, which is damaged: a run recomputes it"
                )],
                (None, NodeStatus::Damaged) => s.damage.iter().map(ToString::to_string).collect(),
                (None, NodeStatus::Partial) => sharded_progress(plan, run_dir, &s),
                _ => Vec::new(),
            };
            NodeReport {
                node: plan.nodes[s.index].id().to_string(),
                status: s.status,
                manifest: s.manifest,
                reasons,
            }
        })
        .collect())
}

/// For a partial node with chunks committed by shards: how far it is.
fn sharded_progress(plan: &Plan, run_dir: &Path, s: &repair::Scanned) -> Vec<String> {
    let dir = NodeDir::new(run_dir, plan.nodes[s.index].id());
    let Some(m) = &s.manifest else {
        return Vec::new();
    };
    if !markers::has_shards(&dir) {
        return Vec::new();
    }
    let missing = markers::missing_chunks(m);
    let total = markers::chunk_count(m);
    if missing.is_empty() {
        vec![format!(
            "sharded: all {total} chunks done; `sspo-run commit` completes the node"
        )]
    } else {
        vec![format!(
            "sharded: {} of {total} chunks done; not yet: {}",
            total - missing.len() as u64,
            chunks_phrase(&missing)
        )]
    }
}

pub(crate) fn resolve_node(plan: &Plan, id: &str) -> Result<usize, RunError> {
    plan.index(id).ok_or_else(|| {
        let ids: Vec<&str> = plan.nodes.iter().map(|n| n.id()).collect();
        let hint = did_you_mean(id, ids.iter().copied())
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        RunError::UnknownNode(id.to_string(), hint)
    })
}

/// Runs the plan. Holds the run-dir lock throughout.
pub fn run(plan: &Plan, opts: &RunOptions) -> Result<Vec<NodeOutcome>, RunError> {
    let progress = Progress::new(opts.progress);
    let _held = hold(opts, LockMode::Exclusive, false, &|line| {
        progress.println(line)
    })?;
    drop(progress);
    let hasher = hasher_for(&opts.run_dir);
    let fps = plan.fingerprints(&hasher)?;
    let targets: Vec<usize> = match &opts.until {
        Some(id) => plan.upstream_of(resolve_node(plan, id)?),
        None => plan.order.clone(),
    };
    let mut forced = Vec::new();
    for id in &opts.force {
        forced.extend(plan.downstream_of(resolve_node(plan, id)?));
    }
    let order: Vec<usize> = plan
        .order
        .iter()
        .copied()
        .filter(|i| targets.contains(i))
        .collect();
    run_nodes(plan, opts, &fps, &hasher, &order, &forced, RunMode::Run)
}

/// Whether [`run_nodes`] runs nodes or commits sharded ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunMode {
    Run,
    /// Every chunk is committed by markers: the node's run does only what follows its
    /// chunk loop, and its first manifest is written create-only.
    Commit,
}

/// Runs the nodes `order` (in plan order) with the lock held by the caller.
fn run_nodes(
    plan: &Plan,
    opts: &RunOptions,
    fps: &[String],
    hasher: &ContentHasher,
    order: &[usize],
    forced: &[usize],
    mode: RunMode,
) -> Result<Vec<NodeOutcome>, RunError> {
    let progress = Progress::new(opts.progress);
    let log = |line: &str| progress.println(line);
    // Damaged output is repaired on disk before anything runs; the scan then reads
    // repaired nodes as partial and the nodes below them as missing. A node's run writes
    // only its own directory, so the scan stays true for the nodes after it.
    let mut scans = repair::scan(plan, &opts.run_dir, fps, order, forced)?;
    repair::hash_read_parts(plan, &opts.run_dir, &mut scans);
    let repaired = repair::repair(plan, opts, &mut scans, &log)?;
    let mut outcomes = Vec::new();
    for scanned in scans {
        let i = scanned.index;
        let node = &plan.nodes[i];
        let id = node.id();
        let dir = opts.node_dir(id);
        let mut manifest = scanned.manifest;
        match scanned.status {
            NodeStatus::Cached => {
                let rows = manifest.as_ref().map_or(0, Manifest::primary_rows);
                progress.skipped(id, &format!("cached ({rows} rows)"));
                outcomes.push(NodeOutcome {
                    node: id.to_string(),
                    action: "cached",
                    rows,
                    seconds: 0.0,
                    summary: manifest.as_ref().and_then(Manifest::summary),
                });
                continue;
            }
            NodeStatus::Stale => {
                dir.wipe()?;
                manifest = None;
            }
            // A damaged node was repaired above: the scan now reads it partial.
            NodeStatus::Partial | NodeStatus::Missing | NodeStatus::Damaged => {}
        }
        dir.ensure()?;
        dir.remove_uncommitted(manifest.as_ref())?;
        let resumed = manifest.is_some();
        let dropped = repaired
            .iter()
            .find(|r| r.index == i)
            .map(|r| r.chunks.clone())
            .unwrap_or_default();
        let inputs = plan.inputs_of(i, &opts.run_dir, fps, hasher)?;
        let bar = progress.node(id, "rows");
        let start = Instant::now();
        let mut ctx =
            RunContext::for_node(plan, i, fps[i].clone(), opts, inputs, &bar, manifest, &log);
        let action = if !dropped.is_empty() {
            "repaired"
        } else if mode == RunMode::Commit {
            "committed"
        } else if resumed {
            "resumed"
        } else {
            "ran"
        };
        ctx.set_repaired(dropped);
        if mode == RunMode::Commit && !dir.manifest_path().exists() {
            ctx.set_create_first_manifest();
        }
        let node_err = |source| RunError::Node {
            node: id.to_string(),
            op: node.op.name().to_string(),
            source,
        };
        let finished = match node.kernel.run(&mut ctx) {
            Ok(()) => ctx.finish(),
            Err(e) => Err(e),
        };
        let m = match finished {
            Ok(m) => m,
            Err(OpError::Cancelled) => {
                bar.abandon("interrupted");
                return Err(RunError::Interrupted(id.to_string()));
            }
            Err(OpError::Store(StoreError::Committed(_))) => {
                // Another commit of this node wrote its manifest first: it stands.
                bar.finish("committed by another process");
                let m = dir.read_manifest()?;
                outcomes.push(NodeOutcome {
                    node: id.to_string(),
                    action: "cached",
                    rows: m.as_ref().map_or(0, Manifest::primary_rows),
                    seconds: 0.0,
                    summary: m.as_ref().and_then(Manifest::summary),
                });
                continue;
            }
            Err(e) => {
                bar.abandon("failed");
                return Err(node_err(e));
            }
        };
        if !opts.keep_scratch {
            remove_scratch(&dir.path);
        }
        // The complete manifest lists every chunk the shards' markers did.
        markers::remove_all(&dir);
        let seconds = start.elapsed().as_secs_f64();
        bar.finish(&format!("done: {} rows in {seconds:.1}s", m.primary_rows()));
        outcomes.push(NodeOutcome {
            node: id.to_string(),
            action,
            rows: m.primary_rows(),
            seconds,
            summary: m.summary(),
        });
    }
    Ok(outcomes)
}

/// Deletes a completed node's `scratch/` directory. A complete node is cached, never
/// resumed, so what kept it resumable (checkpoints, caches) is dead weight: gigabytes for
/// a trained model. Best effort: a leftover directory costs disk, not correctness.
fn remove_scratch(node_dir: &Path) {
    let scratch = node_dir.join("scratch");
    if scratch.exists() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
}
