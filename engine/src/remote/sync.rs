//! Pull: brings a run directory's working copy up to date with its object store.
//!
//! For every node the store holds, its manifest is fetched, then exactly the files it
//! lists (parts, and a complete node's other files), each checked against the size and
//! blake3 hash recorded for it; a file the working copy already holds with that hash is
//! not fetched again. The shard markers of a node are fetched the same way, with the
//! parts each lists. The manifest is written into the working copy last, so the working
//! copy never lists a file it lacks.

use std::collections::BTreeSet;
use std::path::Path;

use futures::StreamExt;
use object_store::ObjectStoreExt;

use super::{RemoteError, RemoteRun, PARALLEL_TRANSFERS};
use crate::markers::{self, SHARDS_DIR};
use crate::store::{self, StoreError, MANIFEST};

/// How much a pull may delete from the working copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullMode {
    /// The caller holds the run exclusively: the working copy becomes the store's image,
    /// and node directories, manifests and markers the store lacks are deleted.
    Mirror,
    /// Others may be writing (shards, readers): only manifests and markers the store
    /// lacks are deleted; files are only added or replaced.
    Add,
}

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Nodes the store holds.
    pub nodes: usize,
    /// Files fetched (the rest were in the working copy already).
    pub fetched: usize,
    pub bytes: u64,
}

/// One file to bring into the working copy: where, and what it must hash to.
struct Wanted {
    rel: String,
    blake3: Option<String>,
}

/// Brings the working copy up to date (see the module's docs).
pub fn pull(remote: &RemoteRun, mode: PullMode) -> Result<PullReport, StoreError> {
    let nodes: Vec<String> = remote
        .subdirs("")?
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    if mode == PullMode::Mirror {
        remove_local_nodes_except(remote.local(), &nodes)?;
    }
    let mut report = PullReport {
        nodes: nodes.len(),
        ..PullReport::default()
    };
    for node in &nodes {
        pull_markers(remote, node, mode, &mut report)?;
        pull_manifest(remote, node, &mut report)?;
    }
    Ok(report)
}

/// [`pull`], saying through `log` what it fetched, if anything.
pub fn pull_logged(
    remote: &RemoteRun,
    mode: PullMode,
    log: &dyn Fn(&str),
) -> Result<PullReport, StoreError> {
    let started = std::time::Instant::now();
    let pulled = pull(remote, mode)?;
    if pulled.fetched > 0 {
        log(&format!(
            "fetched {} files ({:.1} MB) of {} in {:.1}s",
            pulled.fetched,
            pulled.bytes as f64 / 1e6,
            remote.url(),
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(pulled)
}

/// The node's manifest and the files it lists; a manifest the store lacks is deleted.
fn pull_manifest(
    remote: &RemoteRun,
    node: &str,
    report: &mut PullReport,
) -> Result<(), StoreError> {
    let rel = format!("{node}/{MANIFEST}");
    let local = remote.local().join(node).join(MANIFEST);
    let Some(bytes) = remote.get(&rel)? else {
        remove_if_present(&local)?;
        return Ok(());
    };
    let m = store::parse_manifest(Path::new(&remote.url_of(&rel)), &bytes)?;
    let mut wanted: Vec<Wanted> = m
        .parts()
        .map(|(_, f)| Wanted {
            rel: format!("{node}/{}", f.file),
            blake3: f.blake3.clone(),
        })
        .collect();
    wanted.extend(m.files.iter().map(|f| Wanted {
        rel: format!("{node}/{}", f.file),
        blake3: Some(f.blake3.clone()),
    }));
    fetch_all(remote, wanted, report)?;
    write_local(&local, &bytes)
}

/// The node's shard markers and the parts each lists. Markers are written create-only,
/// so one the working copy holds is the store's.
fn pull_markers(
    remote: &RemoteRun,
    node: &str,
    mode: PullMode,
    report: &mut PullReport,
) -> Result<(), StoreError> {
    let dir = format!("{node}/{SHARDS_DIR}");
    let keys: BTreeSet<String> = remote
        .list(&dir)?
        .into_iter()
        .filter(|k| k.ends_with(".json"))
        .collect();
    remove_local_markers_except(remote, &dir, &keys, mode)?;
    for key in keys {
        let local = remote.local().join(&key);
        if local.is_file() {
            continue;
        }
        let Some(bytes) = remote.get(&key)? else {
            continue;
        };
        let marker = markers::parse_marker(Path::new(&remote.url_of(&key)), &bytes)?;
        let wanted = marker
            .chunk
            .files
            .iter()
            .map(|f| Wanted {
                rel: format!("{node}/{}", f.file),
                blake3: f.blake3.clone(),
            })
            .collect();
        fetch_all(remote, wanted, report)?;
        write_local(&local, &bytes)?;
    }
    Ok(())
}

/// Fetches the files the working copy lacks (or holds with another hash), several at
/// once, each checked against its hash before it is written.
fn fetch_all(
    remote: &RemoteRun,
    wanted: Vec<Wanted>,
    report: &mut PullReport,
) -> Result<(), StoreError> {
    let todo: Vec<Wanted> = wanted
        .into_iter()
        .filter(|w| {
            let held = w
                .blake3
                .as_deref()
                .is_some_and(|h| local_hash(&remote.local().join(&w.rel)).as_deref() == Some(h));
            if held {
                remote.remember_hash(&w.rel, w.blake3.as_deref().unwrap_or_default());
            }
            !held
        })
        .collect();
    let results: Vec<Result<u64, StoreError>> = remote.block_on(async {
        futures::stream::iter(todo)
            .map(|w| async move {
                let key = remote.key(&w.rel);
                let got = remote.store.get(&key).await;
                let bytes = match got {
                    Ok(r) => r.bytes().await.map_err(remote.store_err(&w.rel))?,
                    Err(e) => return Err(remote.store_err(&w.rel)(e).into()),
                };
                let hash = crate::fingerprint::hash_bytes(&bytes);
                if w.blake3.as_deref().is_some_and(|h| h != hash) {
                    return Err(RemoteError::Changed {
                        url: remote.url_of(&w.rel),
                    }
                    .into());
                }
                let local = remote.local().join(&w.rel);
                write_local(&local, &bytes)?;
                remote.remember_hash(&w.rel, &hash);
                Ok(bytes.len() as u64)
            })
            .buffer_unordered(PARALLEL_TRANSFERS)
            .collect()
            .await
    });
    for r in results {
        report.bytes += r?;
        report.fetched += 1;
    }
    Ok(())
}

/// The blake3 of a working-copy file, if it is there and readable.
fn local_hash(path: &Path) -> Option<String> {
    if !path.is_file() {
        return None;
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap(path).ok()?;
    Some(hasher.finalize().to_hex().to_string())
}

/// Writes a fetched file into the working copy, atomically, under a temp name unique to
/// this process (the processes of one machine may share a working copy).
fn write_local(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    store::write_atomic_as(path, bytes, &markers::attempt_tag())
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Deletes the working copy's node directories the store does not hold (hidden entries,
/// the lock and caches, are kept).
fn remove_local_nodes_except(local: &Path, nodes: &[String]) -> Result<(), StoreError> {
    let Ok(entries) = std::fs::read_dir(local) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_dir() || nodes.contains(&name) {
            continue;
        }
        std::fs::remove_dir_all(entry.path()).map_err(|source| StoreError::Io {
            path: entry.path(),
            source,
        })?;
    }
    Ok(())
}

/// Deletes the working copy's markers the store does not hold (in [`PullMode::Mirror`]
/// every one; otherwise too, since a marker is only ever written to the store first).
fn remove_local_markers_except(
    remote: &RemoteRun,
    dir: &str,
    keep: &BTreeSet<String>,
    mode: PullMode,
) -> Result<(), StoreError> {
    let root = remote.local().join(dir);
    let Ok(fps) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    for fp in fps.flatten() {
        let Ok(entries) = std::fs::read_dir(fp.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") {
                continue;
            }
            let fp_name = fp.file_name().to_string_lossy().into_owned();
            let key = format!("{dir}/{fp_name}/{name}");
            if !keep.contains(&key) {
                remove_if_present(&entry.path())?;
            }
        }
        if mode == PullMode::Mirror {
            // An emptied fingerprint directory would still be listed as having markers.
            let _ = std::fs::remove_dir(fp.path());
        }
    }
    Ok(())
}
