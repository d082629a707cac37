//! Does a node's committed output still match its manifest? Every part's size (a stat)
//! or size and blake3 hash (a read) against what the commit recorded; and `verify`, the
//! same over a whole run directory.
//!
//! Who checks what: `status` and every run stat every listed part before calling a node
//! cached; a run also hashes the parts it is about to read (those of the nodes it runs
//! and of their table inputs), and [`crate::store::NodeDir::read_table`] checks each
//! part it reads; `verify` hashes everything. Parts of older manifests, which lack the
//! records, are checked for presence only.

use std::path::{Path, PathBuf};

use crate::store::{Check, Damage, Manifest, NodeDir, StoreError, MANIFEST};

/// Every damaged part of a node, in chunk order.
pub fn check_node(dir: &NodeDir, manifest: &Manifest, check: Check) -> Vec<Damage> {
    manifest
        .parts()
        .filter_map(|(chunk, f)| {
            let path = dir.path.join(&f.file);
            f.check_file(&path, check).err().map(|problem| Damage {
                node: dir.node(),
                chunk,
                path,
                problem,
            })
        })
        .collect()
}

/// What `verify` found in one node.
#[derive(Debug)]
pub struct NodeVerdict {
    pub node: String,
    /// The parts checked, or why the manifest could not be read.
    pub result: Result<PartsChecked, StoreError>,
}

#[derive(Debug, Default)]
pub struct PartsChecked {
    pub parts: usize,
    /// Their recorded sizes, summed.
    pub bytes: u64,
    /// Parts without a recorded hash (an older manifest): checked for presence only.
    pub unhashed: usize,
    pub damage: Vec<Damage>,
}

impl NodeVerdict {
    pub fn is_ok(&self) -> bool {
        self.result.as_ref().is_ok_and(|c| c.damage.is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0} is not a run directory (it cannot be read)")]
    NotARun(PathBuf),
    #[error("no node `{node}` in {run_dir}{hint}")]
    UnknownNode {
        node: String,
        run_dir: PathBuf,
        /// " (did you mean `x`?)" or "".
        hint: String,
    },
}

/// The node directories of a run (those with a manifest, or with chunks committed by
/// the shards of a sharded run), sorted by name.
pub fn node_dirs(run_dir: &Path) -> Option<Vec<NodeDir>> {
    let entries = std::fs::read_dir(run_dir).ok()?;
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(MANIFEST).is_file() || p.join(crate::markers::SHARDS_DIR).is_dir())
        .collect();
    dirs.sort();
    Some(
        dirs.into_iter()
            .map(|path| NodeDir { path, remote: None })
            .collect(),
    )
}

/// Checks the manifest and the size and hash of every listed part of every node of
/// `run_dir` (or of `only`).
pub fn verify(run_dir: &Path, only: Option<&str>) -> Result<Vec<NodeVerdict>, VerifyError> {
    // A run directory where nothing is committed yet has nothing to be damaged.
    let mut dirs = node_dirs(run_dir).ok_or_else(|| VerifyError::NotARun(run_dir.to_path_buf()))?;
    if let Some(node) = only {
        let names: Vec<String> = dirs.iter().map(NodeDir::node).collect();
        if !names.iter().any(|n| n == node) {
            let hint = sspo_common::suggest::did_you_mean(node, names.iter().map(String::as_str))
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(VerifyError::UnknownNode {
                node: node.to_string(),
                run_dir: run_dir.to_path_buf(),
                hint,
            });
        }
        dirs.retain(|d| d.node() == node);
    }
    Ok(dirs.iter().map(verify_node).collect())
}

fn verify_node(dir: &NodeDir) -> NodeVerdict {
    // A manifest that vanished since the listing (another process wiped the node) lists
    // nothing, so nothing of it can be damaged.
    let result = crate::markers::node_view(dir, None).map(|m| {
        m.map(|m| PartsChecked {
            parts: m.parts().count(),
            bytes: m.parts().filter_map(|(_, f)| f.bytes).sum(),
            unhashed: m.parts().filter(|(_, f)| f.blake3.is_none()).count(),
            damage: check_node(dir, &m, Check::Hash),
        })
        .unwrap_or_default()
    });
    NodeVerdict {
        node: dir.node(),
        result,
    }
}
