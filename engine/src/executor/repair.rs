//! What a run can trust of the committed output before it starts, and the repair of
//! what it cannot.
//!
//! A part that is missing, or whose size (a stat, for every node) or hash (for the parts
//! the run will read) differs from its record, is damage. The repair drops the damaged
//! chunks from the node's manifest, which makes the node partial: its chunk loop
//! recomputes just those chunks. Every node downstream is wiped first: its rows came from
//! the damaged ones, and its fingerprint (made of upstream fingerprints, not content)
//! cannot tell. In that order a run killed between the two steps leaves the damage on
//! disk to be found again, never a cached node over a repaired input.

use std::collections::BTreeSet;
use std::path::Path;

use super::{status_of, NodeStatus};
use crate::integrity::check_node;
use crate::markers;
use crate::plan::{Binding, Plan};
use crate::store::{Check, Damage, Manifest, NodeDir, StoreError};

/// One node as the scan found it.
#[derive(Debug)]
pub(super) struct Scanned {
    pub index: usize,
    pub manifest: Option<Manifest>,
    pub status: NodeStatus,
    /// Damaged parts (the node is [`NodeStatus::Damaged`] unless damage upstream made it
    /// stale).
    pub damage: Vec<Damage>,
    /// For a node made stale by damage upstream: the damaged node.
    pub damaged_upstream: Option<String>,
}

/// Reads the manifests of `nodes` (in plan order) and stats the parts of every node a
/// run would keep; `forced` nodes are stale.
pub(super) fn scan(
    plan: &Plan,
    run_dir: &Path,
    fps: &[String],
    nodes: &[usize],
    forced: &[usize],
) -> Result<Vec<Scanned>, StoreError> {
    let mut out = Vec::with_capacity(nodes.len());
    for &i in nodes {
        let dir = NodeDir::new(run_dir, plan.nodes[i].id());
        // With the chunks that shards of a sharded run have committed since.
        let manifest = markers::node_view(&dir, Some(&fps[i]))?;
        let mut status = status_of(manifest.as_ref(), &fps[i]);
        if forced.contains(&i) && status != NodeStatus::Missing {
            status = NodeStatus::Stale;
        }
        let damage = match (&manifest, status) {
            (Some(m), NodeStatus::Cached | NodeStatus::Partial) => check_node(&dir, m, Check::Size),
            _ => Vec::new(),
        };
        out.push(Scanned {
            index: i,
            manifest,
            status,
            damage,
            damaged_upstream: None,
        });
    }
    mark(plan, &mut out);
    Ok(out)
}

/// Hashes the parts the run will read: the committed parts of every node it runs and
/// of those nodes' inputs. Damage found makes more nodes run, so it repeats until
/// nothing new is found.
pub(super) fn hash_read_parts(plan: &Plan, run_dir: &Path, scans: &mut [Scanned]) {
    let mut hashed = BTreeSet::new();
    loop {
        let runs: Vec<usize> = scans
            .iter()
            .filter(|s| s.status != NodeStatus::Cached)
            .map(|s| s.index)
            .collect();
        let mut found = false;
        for s in scans.iter_mut() {
            let kept = matches!(s.status, NodeStatus::Cached | NodeStatus::Partial);
            let read = runs.contains(&s.index) || runs.iter().any(|&j| reads(plan, j, s.index));
            if !kept || !read || !hashed.insert(s.index) {
                continue;
            }
            if let Some(m) = &s.manifest {
                let dir = NodeDir::new(run_dir, plan.nodes[s.index].id());
                s.damage = check_node(&dir, m, Check::Hash);
                found |= !s.damage.is_empty();
            }
        }
        if !found {
            return;
        }
        mark(plan, scans);
    }
}

/// Whether node `j` is bound to node `i`'s output.
fn reads(plan: &Plan, j: usize, i: usize) -> bool {
    plan.nodes[j]
        .bindings
        .values()
        .any(|b| *b == Binding::Node(i))
}

/// Nodes with damage become [`NodeStatus::Damaged`], and every node downstream of one
/// (with output) stale.
fn mark(plan: &Plan, scans: &mut [Scanned]) {
    for s in scans.iter_mut() {
        let kept = matches!(s.status, NodeStatus::Cached | NodeStatus::Partial);
        if kept && !s.damage.is_empty() {
            s.status = NodeStatus::Damaged;
        }
    }
    for k in 0..scans.len() {
        if scans[k].status != NodeStatus::Damaged {
            continue;
        }
        let id = plan.nodes[scans[k].index].id().to_string();
        let below = plan.downstream_of(scans[k].index);
        for s in scans.iter_mut() {
            let has_output = s.manifest.is_some();
            if s.index != below[0] && below.contains(&s.index) && has_output {
                s.status = NodeStatus::Stale;
                s.damaged_upstream.get_or_insert_with(|| id.clone());
            }
        }
    }
}

/// What [`repair`] did to one node.
#[derive(Debug)]
pub(super) struct Repaired {
    pub index: usize,
    /// The dropped chunks, which its next run recomputes.
    pub chunks: Vec<u64>,
}

/// Repairs every damaged node of the scan (see the module's text) and updates the scan
/// to match the disk: a repaired node partial, the nodes wiped below it missing. Logs
/// each damaged part and what will be recomputed.
pub(super) fn repair(
    plan: &Plan,
    opts: &super::RunOptions,
    scans: &mut [Scanned],
    log: &dyn Fn(&str),
) -> Result<Vec<Repaired>, StoreError> {
    let mut out = Vec::new();
    for k in 0..scans.len() {
        let s = &scans[k];
        if s.status != NodeStatus::Damaged {
            continue;
        }
        let Some(manifest) = &s.manifest else {
            continue;
        };
        let index = s.index;
        let id = plan.nodes[index].id();
        let mut m = manifest.clone();
        let chunks: BTreeSet<u64> = s.damage.iter().map(|d| d.chunk).collect();
        for d in &s.damage {
            log(&format!("damaged: {d}"));
        }
        let mut wiped = Vec::new();
        for j in plan.downstream_of(index).into_iter().skip(1) {
            let dir = opts.node_dir(plan.nodes[j].id());
            if dir.path.exists() {
                dir.wipe()?;
                wiped.push(format!("`{}`", plan.nodes[j].id()));
            }
            if let Some(below) = scans.iter_mut().find(|s| s.index == j) {
                below.manifest = None;
                below.status = NodeStatus::Missing;
            }
        }
        m.drop_chunks(&chunks);
        let dir = opts.node_dir(id);
        // A dropped chunk's marker would add it back to the view.
        markers::remove_markers(&dir, &m.fingerprint, &chunks)?;
        dir.write_manifest(&m)?;
        scans[k].manifest = Some(m);
        scans[k].status = NodeStatus::Partial;
        let list: Vec<String> = chunks.iter().map(u64::to_string).collect();
        let below = if wiped.is_empty() {
            String::new()
        } else {
            format!(", and everything computed from it: {}", wiped.join(", "))
        };
        log(&format!(
            "[{id}] recomputing chunk {} of `{id}`{below}",
            list.join(", ")
        ));
        out.push(Repaired {
            index,
            chunks: chunks.into_iter().collect(),
        });
    }
    Ok(out)
}
