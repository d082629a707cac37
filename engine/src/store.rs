//! The on-disk store of a run.
//!
//! `<run_dir>/<node>/part-NNNNN.parquet` (primary table) and
//! `<run_dir>/<node>/<table>/part-NNNNN.parquet` (extra tables), each written to a
//! hidden temp name, fsynced and renamed into place (then the directory fsynced: see
//! [`write_atomic`]); `manifest.json` is rewritten the same way after every chunk and is
//! the only source of truth: a part file it does not list does not exist for readers, and
//! is deleted on the next run.
//!
//! Every part is recorded with its byte size and blake3 hash ([`PartFile`]), so a part
//! that was truncated, altered or deleted after its commit is noticed: by a stat before
//! a node is called cached, by the hash whenever a part is read ([`NodeDir::read_table`])
//! and by `sspo-run verify` (see [`crate::integrity`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::fingerprint::hash_bytes;
use crate::remote::{RemoteError, RemoteRun};

pub const MANIFEST: &str = "manifest.json";
/// The manifest format this build writes and the newest it reads. Format 1 gained the
/// optional integrity fields of [`PartFile`] without a bump: older manifests (and the
/// parts they list) read as before, with sizes and hashes unknown.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: invalid manifest: {source}")]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("run directory {0} is in use by another sspo-run process (lock {1} is held); wait for it to finish or use another --run-dir")]
    Locked(PathBuf, PathBuf),
    #[error("{path}: written by a newer sspo-run (format {format}, this binary reads ≤ {supported}); nothing was changed: use a newer sspo-run or another --run-dir")]
    NewerFormat {
        path: PathBuf,
        format: u32,
        supported: u32,
    },
    #[error("node `{node}`, chunk {chunk}: {path}: {source}")]
    Part {
        node: String,
        chunk: u64,
        path: PathBuf,
        source: Box<parquet::errors::ParquetError>,
    },
    #[error("{0}: another commit wrote this manifest first; nothing was changed")]
    Committed(PathBuf),
    #[error("{0}; `sspo-run verify` lists every damaged part, and the next run recomputes them")]
    Damaged(Box<Damage>),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Partial,
    Complete,
}

/// One file of one committed chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartFile {
    /// Empty for the primary table.
    pub table: String,
    /// Relative to the node directory.
    pub file: String,
    pub rows: u64,
    /// Size in bytes at commit; `None` in manifests of builds that did not record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Hex blake3 of the file at commit; `None` as for `bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

/// What is wrong with a committed part file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartProblem {
    Missing,
    /// It could not be stat'ed or read (the I/O error's text).
    Unreadable(String),
    Size {
        expected: u64,
        actual: u64,
    },
    /// Same size, other content.
    Hash,
}

impl From<std::io::Error> for PartProblem {
    /// A failed stat or read: `Missing` if there is no file.
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => PartProblem::Missing,
            _ => PartProblem::Unreadable(e.to_string()),
        }
    }
}

impl std::fmt::Display for PartProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartProblem::Missing => write!(f, "the file is missing"),
            PartProblem::Unreadable(e) => write!(f, "cannot read the file: {e}"),
            PartProblem::Size { expected, actual } => write!(
                f,
                "the file has {actual} bytes, the manifest recorded {expected}"
            ),
            PartProblem::Hash => write!(
                f,
                "the file's content differs from the manifest's blake3 hash"
            ),
        }
    }
}

/// A damaged part: which node, which chunk, which file, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub node: String,
    /// The chunk record's index.
    pub chunk: u64,
    /// The part's path (the node directory joined with the manifest's relative name).
    pub path: PathBuf,
    pub problem: PartProblem,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node `{}`, chunk {}: {}: {}",
            self.node,
            self.chunk,
            self.path.display(),
            self.problem
        )
    }
}

/// How far a check of a part goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Exists and has the recorded size (a stat).
    Size,
    /// And has the recorded blake3 hash (reads the file).
    Hash,
}

impl PartFile {
    /// Checks the file at `path` against the record. A record without a size or hash
    /// (an older manifest) checks what it has: at least that the file exists.
    pub fn check_file(&self, path: &Path, check: Check) -> Result<(), PartProblem> {
        let meta = fs::metadata(path)?;
        self.check_size(meta.len())?;
        if check == Check::Hash && self.blake3.is_some() {
            let bytes = fs::read(path)?;
            self.check_bytes(&bytes)?;
        }
        Ok(())
    }

    /// Checks a file's content, read into memory, against the record.
    pub fn check_bytes(&self, bytes: &[u8]) -> Result<(), PartProblem> {
        self.check_size(bytes.len() as u64)?;
        match &self.blake3 {
            Some(h) if *h != hash_bytes(bytes) => Err(PartProblem::Hash),
            _ => Ok(()),
        }
    }

    fn check_size(&self, actual: u64) -> Result<(), PartProblem> {
        match self.bytes {
            Some(expected) if expected != actual => Err(PartProblem::Size { expected, actual }),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub index: u64,
    pub input_start: u64,
    pub input_end: u64,
    pub files: Vec<PartFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnRecord {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

/// The commit point of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub node: String,
    pub op: String,
    pub op_version: u32,
    pub fingerprint: String,
    pub state: NodeState,
    /// Chunking of the input (the unit of resume); a different plan restarts the node.
    pub chunk_rows: u64,
    pub input_rows: u64,
    pub chunks: Vec<ChunkRecord>,
    /// Rows per table ("" is the primary table).
    pub rows: BTreeMap<String, u64>,
    pub schema: BTreeMap<String, Vec<ColumnRecord>>,
    pub started_at: f64,
    pub updated_at: f64,
    /// Seconds of work spent on this node, summed over resumed runs.
    pub elapsed_s: f64,
    /// Counted problems (rows without an answer, empty responses, ...).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    #[serde(default)]
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Relative path of the model artifact, when the node produces one.
    #[serde(default)]
    pub artifact: Option<String>,
    /// The node's other files (its artifact's files, reports), recorded when the run
    /// directory is on object storage: the exact list a working copy fetches. Empty (and
    /// not written) for local run directories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<StoredFile>,
}

/// A node's file that is not a table part (see [`Manifest::files`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Relative to the node directory, `/`-separated.
    pub file: String,
    pub bytes: u64,
    pub blake3: String,
}

impl Manifest {
    /// The end-of-run summary an operator left (metric `summary`).
    pub fn summary(&self) -> Option<String> {
        self.metrics
            .get("summary")
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }

    pub fn primary_rows(&self) -> u64 {
        self.rows.get("").copied().unwrap_or(0)
    }

    /// Part files of `table`, in chunk order.
    pub fn files_of(&self, table: &str) -> Vec<&PartFile> {
        self.parts()
            .filter(|(_, f)| f.table == table)
            .map(|(_, f)| f)
            .collect()
    }

    /// Every part file with its chunk's index, in chunk order.
    pub fn parts(&self) -> impl Iterator<Item = (u64, &PartFile)> {
        self.chunks
            .iter()
            .flat_map(|c| c.files.iter().map(move |f| (c.index, f)))
    }

    /// Forgets the chunks `indices` (their rows too) and marks the node partial: the
    /// repair of damaged parts, which the next run's chunk loop recomputes.
    pub fn drop_chunks(&mut self, indices: &std::collections::BTreeSet<u64>) {
        let (dropped, kept) = std::mem::take(&mut self.chunks)
            .into_iter()
            .partition::<Vec<_>, _>(|c| indices.contains(&c.index));
        self.chunks = kept;
        for f in dropped.iter().flat_map(|c| c.files.iter()) {
            if let Some(r) = self.rows.get_mut(&f.table) {
                *r = r.saturating_sub(f.rows);
            }
        }
        if !dropped.is_empty() {
            self.state = NodeState::Partial;
        }
    }

    /// Names of all tables this node has written ("" first).
    pub fn table_names(&self) -> Vec<String> {
        self.schema.keys().cloned().collect()
    }
}

pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Writes `bytes` to `path` atomically and durably: a hidden temp file in the same
/// directory is written and fsynced, renamed over `path`, and the directory is fsynced
/// so that the rename itself survives a crash. Readers see the old content or the new,
/// never a part of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    replace_atomically(path, None, |tmp| {
        write_synced(tmp, bytes)?;
        crate::failpoint::before_rename(tmp).map_err(io_err(tmp))
    })
}

/// Writes `bytes` to a new file at `tmp` and fsyncs it.
fn write_synced(tmp: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(tmp).map_err(io_err(tmp))?;
    f.write_all(bytes).map_err(io_err(tmp))?;
    f.sync_all().map_err(io_err(tmp))
}

/// [`write_atomic`] with a temp file named after `tag` (unique to the writer): for
/// writers that may race on the same path with the same content (working copies shared
/// by the processes of one machine).
pub fn write_atomic_as(path: &Path, bytes: &[u8], tag: &str) -> Result<(), StoreError> {
    replace_atomically(path, Some(tag), |tmp| write_synced(tmp, bytes))
}

/// Writes `bytes` to `path` only if nothing is there yet, durably and atomically: a temp
/// file named after `tag` (unique to the writer, so concurrent writers never share one)
/// is written and fsynced, then hard-linked to `path`, which fails if `path` exists.
/// Returns whether this call created `path`; `false` means another writer was first,
/// and nothing was changed. The first writer wins, whoever comes later.
pub fn write_create_only(path: &Path, bytes: &[u8], tag: &str) -> Result<bool, StoreError> {
    let (dir, name) = dir_and_name(path);
    let tmp = dir.join(format!(".{name}.{tag}.tmp"));
    let written = (|| {
        write_synced(&tmp, bytes)?;
        crate::failpoint::before_rename(&tmp).map_err(io_err(&tmp))?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(path)(e)),
        }
    })();
    let _ = fs::remove_file(&tmp);
    let created = written?;
    if created {
        sync_dir(dir)?;
    }
    Ok(created)
}

fn dir_and_name(path: &Path) -> (&Path, String) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (dir, name)
}

/// Fsyncs a directory, making the renames and new entries in it durable. A file system
/// that cannot sync directories (it answers "invalid argument") is taken as it is.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        let f = File::open(dir).map_err(io_err(dir))?;
        match f.sync_all() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
            Err(e) => Err(io_err(dir)(e)),
        }
    }
    #[cfg(not(unix))]
    {
        // Elsewhere a directory cannot be opened as a file; the rename is as durable as
        // the platform makes it.
        let _ = dir;
        Ok(())
    }
}

/// The protocol behind [`write_atomic`], for writers that produce the file themselves:
/// `write` fills (and fsyncs) the temp path `.<name>.tmp` next to `path`, which is then
/// renamed over `path`, and the directory fsynced. With a `tag` the temp file is
/// `.<name>.<tag>.tmp`, unique to its writer, and deleted if the write fails; without
/// one a failed write's temp file is left for the next run's cleanup.
fn replace_atomically(
    path: &Path,
    tag: Option<&str>,
    write: impl FnOnce(&Path) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let (dir, name) = dir_and_name(path);
    let tmp = match tag {
        Some(tag) => dir.join(format!(".{name}.{tag}.tmp")),
        None => dir.join(format!(".{name}.tmp")),
    };
    let written = write(&tmp).and_then(|()| fs::rename(&tmp, path).map_err(io_err(path)));
    if written.is_err() && tag.is_some() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// The directory of one node. When the run directory is on object storage, `path` is in
/// the local working copy and every write that commits something is made on the store
/// as well, the store deciding (see [`crate::remote`]).
#[derive(Debug, Clone)]
pub struct NodeDir {
    pub path: PathBuf,
    pub remote: Option<Arc<RemoteRun>>,
}

impl NodeDir {
    pub fn new(run_dir: &Path, node: &str) -> Self {
        Self {
            path: run_dir.join(node),
            remote: None,
        }
    }

    /// The same directory, committing to `remote` as well.
    pub fn with_remote(mut self, remote: Option<Arc<RemoteRun>>) -> Self {
        self.remote = remote;
        self
    }

    /// The store and the path inside the run directory of `local` (a path in this
    /// node's directory), when the run directory is on object storage.
    fn remote_rel(&self, local: &Path) -> Option<(&RemoteRun, String)> {
        let remote = self.remote.as_deref()?;
        Some((remote, remote.rel_of(local)?))
    }

    /// Writes `bytes` at `path` (in this node's directory) only if nothing is there: on
    /// object storage the store's conditional create decides, then the working copy gets
    /// the file. `false` means another writer was first and nothing was changed.
    pub fn create_file(&self, path: &Path, bytes: &[u8], tag: &str) -> Result<bool, StoreError> {
        match self.remote_rel(path) {
            Some((remote, rel)) => {
                crate::failpoint::before_rename(path).map_err(io_err(path))?;
                if !remote.create(&rel, bytes)? {
                    return Ok(false);
                }
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(io_err(dir))?;
                }
                write_atomic_as(path, bytes, tag)?;
                Ok(true)
            }
            None => write_create_only(path, bytes, tag),
        }
    }

    /// Deletes the file at `path` (in this node's directory), here and on the store.
    pub fn remove_file(&self, path: &Path) -> Result<(), StoreError> {
        if let Some((remote, rel)) = self.remote_rel(path) {
            remote.delete(&rel)?;
        }
        unless_missing(fs::remove_file(path), path)
    }

    /// Deletes the directory at `path` (in this node's directory) with everything in
    /// it, here and on the store.
    pub fn remove_dir(&self, path: &Path) -> Result<(), StoreError> {
        if let Some((remote, rel)) = self.remote_rel(path) {
            remote.delete_dir(&rel)?;
        }
        unless_missing(fs::remove_dir_all(path), path)
    }

    /// The node's id (the directory's name).
    pub fn node(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.path.join(MANIFEST)
    }

    /// The manifest, if the node has ever committed anything.
    pub fn read_manifest(&self) -> Result<Option<Manifest>, StoreError> {
        read_manifest(&self.manifest_path())
    }

    /// Commits `m`: replaces the manifest. On object storage the files it lists are
    /// uploaded first, then the manifest itself (the commit point), then the working
    /// copy's manifest is replaced.
    pub fn write_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        let path = self.manifest_path();
        match self.remote_rel(&path) {
            Some((remote, rel)) => {
                let bytes = self.push_listed(remote, m)?;
                crate::failpoint::before_rename(&path).map_err(io_err(&path))?;
                remote.put(&rel, &bytes)?;
                write_atomic_as(&path, &bytes, "commit")
            }
            None => write_atomic(&path, &self.manifest_bytes(m)?),
        }
    }

    /// Writes the node's first manifest, create-only: `false` if one exists already
    /// (another commit was first), and nothing is changed. On object storage the store's
    /// conditional create decides.
    pub fn create_manifest(&self, m: &Manifest, tag: &str) -> Result<bool, StoreError> {
        let path = self.manifest_path();
        match self.remote_rel(&path) {
            Some((remote, rel)) => {
                let bytes = self.push_listed(remote, m)?;
                crate::failpoint::before_rename(&path).map_err(io_err(&path))?;
                if !remote.create(&rel, &bytes)? {
                    return Ok(false);
                }
                write_atomic_as(&path, &bytes, tag)?;
                Ok(true)
            }
            None => write_create_only(&path, &self.manifest_bytes(m)?, tag),
        }
    }

    fn manifest_bytes(&self, m: &Manifest) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec_pretty(m).map_err(|source| StoreError::Manifest {
            path: self.manifest_path(),
            source,
        })
    }

    /// Uploads every file `m` lists (a complete node's other files recorded in it
    /// first) and returns the manifest's bytes, ready to commit.
    fn push_listed(&self, remote: &RemoteRun, m: &Manifest) -> Result<Vec<u8>, StoreError> {
        let mut m = m.clone();
        if m.state == NodeState::Complete {
            m.files = self.other_files(&m)?;
        }
        let node = self.node();
        let mut files: Vec<(String, Option<String>)> = m
            .parts()
            .map(|(_, f)| (format!("{node}/{}", f.file), f.blake3.clone()))
            .collect();
        files.extend(
            m.files
                .iter()
                .map(|f| (format!("{node}/{}", f.file), Some(f.blake3.clone()))),
        );
        remote.upload(&files)?;
        self.manifest_bytes(&m)
    }

    /// The node's files that are neither parts, markers, scratch nor hidden: its
    /// artifact and reports, with sizes and hashes.
    fn other_files(&self, m: &Manifest) -> Result<Vec<StoredFile>, StoreError> {
        let listed: std::collections::HashSet<&str> =
            m.parts().map(|(_, f)| f.file.as_str()).collect();
        let mut out = Vec::new();
        let mut dirs = vec![self.path.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = fs::read_dir(&dir).map_err(io_err(&dir))?;
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(rel) = relative_name(&self.path, &path) else {
                    continue;
                };
                let skipped = name.starts_with('.')
                    || rel == MANIFEST
                    || rel == crate::markers::SHARDS_DIR
                    || rel == SCRATCH_DIR
                    || (name.starts_with("part-") && name.ends_with(".parquet"))
                    || listed.contains(rel.as_str());
                if skipped {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                } else if path.is_file() {
                    let mut hasher = blake3::Hasher::new();
                    hasher.update_mmap(&path).map_err(io_err(&path))?;
                    let bytes = fs::metadata(&path).map_err(io_err(&path))?.len();
                    out.push(StoredFile {
                        file: rel,
                        bytes,
                        blake3: hasher.finalize().to_hex().to_string(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(out)
    }

    /// Removes everything (a different fingerprint, or `--force`), here and on the
    /// store.
    pub fn wipe(&self) -> Result<(), StoreError> {
        if let Some((remote, rel)) = self.remote_rel(&self.path) {
            remote.delete_dir(&rel)?;
        }
        if self.path.exists() {
            fs::remove_dir_all(&self.path).map_err(io_err(&self.path))?;
        }
        Ok(())
    }

    pub fn ensure(&self) -> Result<(), StoreError> {
        fs::create_dir_all(&self.path).map_err(io_err(&self.path))
    }

    /// Deletes part files and temp files that the manifest does not list: leftovers of
    /// a run killed between writing a part and committing it.
    pub fn remove_uncommitted(&self, manifest: Option<&Manifest>) -> Result<usize, StoreError> {
        let listed: std::collections::HashSet<String> = manifest
            .map(|m| {
                m.chunks
                    .iter()
                    .flat_map(|c| c.files.iter().map(|f| f.file.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut removed = 0;
        let mut dirs = vec![self.path.clone()];
        if let Some(m) = manifest {
            dirs.extend(
                m.table_names()
                    .into_iter()
                    .filter(|t| !t.is_empty())
                    .map(|t| self.path.join(t)),
            );
        }
        if let Some((remote, node)) = self.remote_rel(&self.path) {
            for key in remote.list(&node)? {
                let Some(rel) = key.strip_prefix(&format!("{node}/")) else {
                    continue;
                };
                let in_table_dir = match rel.rsplit_once('/') {
                    None => true,
                    Some((table, _)) => dirs.contains(&self.path.join(table)),
                };
                let name = rel.rsplit('/').next().unwrap_or(rel);
                if in_table_dir && uncommitted(name, rel, &listed) {
                    remote.delete(&key)?;
                }
            }
        }
        for dir in dirs {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(rel) = relative_name(&self.path, &entry.path()) else {
                    continue;
                };
                if uncommitted(&name, &rel, &listed) {
                    fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Writes one table's batch of chunk `index` and returns its record, with the file's
    /// size and hash (not yet committed: the caller commits by rewriting the manifest).
    pub fn write_part(
        &self,
        table: &str,
        index: u64,
        batch: &RecordBatch,
    ) -> Result<PartFile, StoreError> {
        self.write_part_as(
            table,
            &format!("part-{index:05}.parquet"),
            batch,
            write_atomic,
        )
    }

    /// Writes one table's batch as the part file `name` with `write` (atomic, or
    /// create-only for a shard's attempt) and returns its record.
    pub(crate) fn write_part_as(
        &self,
        table: &str,
        name: &str,
        batch: &RecordBatch,
        write: impl FnOnce(&Path, &[u8]) -> Result<(), StoreError>,
    ) -> Result<PartFile, StoreError> {
        let dir = if table.is_empty() {
            self.path.clone()
        } else {
            self.path.join(table)
        };
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(name);
        // Encoded in memory so that the hash is of exactly the bytes written.
        let bytes = encode_parquet(&path, batch)?;
        write(&path, &bytes)?;
        let name = name.to_string();
        let file = if table.is_empty() {
            name
        } else {
            format!("{table}/{name}")
        };
        Ok(PartFile {
            table: table.to_string(),
            file,
            rows: batch.num_rows() as u64,
            bytes: Some(bytes.len() as u64),
            blake3: Some(hash_bytes(&bytes)),
        })
    }

    /// All committed rows of `table` as one batch. Each part is checked against its
    /// recorded size and hash as it is read: damaged output is never used silently.
    pub fn read_table(&self, manifest: &Manifest, table: &str) -> Result<RecordBatch, StoreError> {
        let mut batches = Vec::new();
        let mut schema: Option<SchemaRef> = None;
        for (chunk, f) in manifest.parts().filter(|(_, f)| f.table == table) {
            let path = self.path.join(&f.file);
            let damaged = |problem: PartProblem| {
                StoreError::Damaged(Box::new(Damage {
                    node: self.node(),
                    chunk,
                    path: path.clone(),
                    problem,
                }))
            };
            let bytes = fs::read(&path).map_err(|e| damaged(e.into()))?;
            f.check_bytes(&bytes).map_err(damaged)?;
            let (s, mut b) =
                decode_parquet(bytes::Bytes::from(bytes)).map_err(|source| StoreError::Part {
                    node: self.node(),
                    chunk,
                    path: path.clone(),
                    source: Box::new(source),
                })?;
            schema.get_or_insert(s);
            batches.append(&mut b);
        }
        let schema = schema.unwrap_or_else(|| Arc::new(Schema::empty()));
        Ok(arrow::compute::concat_batches(&schema, &batches)?)
    }
}

/// A deletion's result, where nothing to delete is success.
fn unless_missing(result: std::io::Result<()>, path: &Path) -> Result<(), StoreError> {
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// Whether the file `name` (at `rel` in a node's directory or a table's) is a leftover a
/// run deletes: a temp file, or a part the manifest does not list.
fn uncommitted(name: &str, rel: &str, listed: &std::collections::HashSet<String>) -> bool {
    let is_part = name.starts_with("part-") && name.ends_with(".parquet");
    let is_tmp = name.starts_with('.') && name.ends_with(".tmp");
    is_tmp || (is_part && !listed.contains(rel))
}

/// `path` relative to `base`, `/`-separated.
pub(crate) fn relative_name(base: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(base).ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    Some(parts.join("/"))
}

/// The name of a node's scratch directory (checkpoints, caches: never committed).
pub const SCRATCH_DIR: &str = "scratch";

/// The manifest at `path`, if there is one. A manifest of a newer format is refused
/// before anything else is read from it, so nothing acts on a format it does not know.
pub fn read_manifest(path: &Path) -> Result<Option<Manifest>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    parse_manifest(path, &bytes).map(Some)
}

/// A manifest's bytes (`path` names it in errors), refused if of a newer format.
pub fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, StoreError> {
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let invalid = |source| StoreError::Manifest {
        path: path.to_path_buf(),
        source,
    };
    let Format { format } = serde_json::from_slice(bytes).map_err(invalid)?;
    if format > MANIFEST_FORMAT {
        return Err(StoreError::NewerFormat {
            path: path.to_path_buf(),
            format,
            supported: MANIFEST_FORMAT,
        });
    }
    serde_json::from_slice(bytes).map_err(invalid)
}

/// `batch` as a Parquet file's bytes (`path` names it in errors).
fn encode_parquet(path: &Path, batch: &RecordBatch) -> Result<Vec<u8>, StoreError> {
    let pq_err = |source| StoreError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props)).map_err(pq_err)?;
    writer.write(batch).map_err(pq_err)?;
    writer.into_inner().map_err(pq_err)
}

fn decode_parquet(
    bytes: bytes::Bytes,
) -> Result<(SchemaRef, Vec<RecordBatch>), parquet::errors::ParquetError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let schema = builder.schema().clone();
    let reader = builder.with_batch_size(65536).build()?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parquet::errors::ParquetError::ArrowError(e.to_string()))?;
    Ok((schema, batches))
}

/// A Parquet file's schema and rows.
pub fn read_parquet(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>), StoreError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    decode_parquet(bytes::Bytes::from(bytes)).map_err(|source| StoreError::Parquet {
        path: path.to_path_buf(),
        source,
    })
}

/// Exclusive lock on a run directory for the lifetime of this value.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// How a [`RunLock`] is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// A whole run or a commit: it may wipe, repair and rewrite manifests.
    Exclusive,
    /// A shard of a sharded node run: it writes only create-only files, so any number of
    /// shards share the run directory, but no exclusive holder runs beside them.
    Shared,
}

impl RunLock {
    /// The exclusive lock, or [`StoreError::Locked`] at once if anyone holds the lock.
    pub fn acquire(run_dir: &Path) -> Result<Self, StoreError> {
        let (file, path) = Self::open(run_dir)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => {
                Err(StoreError::Locked(run_dir.to_path_buf(), path))
            }
            Err(fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }

    /// The lock in `mode`, waiting for conflicting holders to finish; `waiting` is called
    /// once if it has to wait (to say so).
    pub fn acquire_waiting(
        run_dir: &Path,
        mode: LockMode,
        waiting: impl FnOnce(&Path),
    ) -> Result<Self, StoreError> {
        let (file, path) = Self::open(run_dir)?;
        let tried = match mode {
            LockMode::Exclusive => file.try_lock(),
            LockMode::Shared => file.try_lock_shared(),
        };
        match tried {
            Ok(()) => return Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => waiting(&path),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        let locked = match mode {
            LockMode::Exclusive => file.lock(),
            LockMode::Shared => file.lock_shared(),
        };
        locked.map_err(io_err(&path))?;
        Ok(Self { _file: file })
    }

    fn open(run_dir: &Path) -> Result<(File, PathBuf), StoreError> {
        fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
        let path = run_dir.join(".lock");
        let file = File::create(&path).map_err(io_err(&path))?;
        Ok((file, path))
    }
}

/// `schema` as manifest records.
pub fn schema_records(schema: &Schema) -> Vec<ColumnRecord> {
    schema
        .fields()
        .iter()
        .map(|f| ColumnRecord {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("r{i}")),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn uncommitted_parts_are_removed_and_committed_kept() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeDir::new(dir.path(), "n");
        node.ensure().unwrap();
        let p0 = node.write_part("", 0, &batch(3)).unwrap();
        let _p1 = node.write_part("", 1, &batch(2)).unwrap();
        std::fs::write(node.path.join(".part-00002.parquet.tmp"), b"half").unwrap();
        let m = Manifest {
            format: MANIFEST_FORMAT,
            node: "n".into(),
            op: "t".into(),
            op_version: 1,
            fingerprint: "f".into(),
            state: NodeState::Partial,
            chunk_rows: 3,
            input_rows: 9,
            chunks: vec![ChunkRecord {
                index: 0,
                input_start: 0,
                input_end: 3,
                files: vec![p0],
            }],
            rows: [("".to_string(), 3)].into(),
            schema: [("".to_string(), schema_records(&batch(0).schema()))].into(),
            started_at: 0.0,
            updated_at: 0.0,
            elapsed_s: 0.0,
            counters: Default::default(),
            metrics: Default::default(),
            artifact: None,
            files: Vec::new(),
        };
        node.write_manifest(&m).unwrap();
        assert_eq!(node.remove_uncommitted(Some(&m)).unwrap(), 2);
        let back = node.read_manifest().unwrap().unwrap();
        assert_eq!(back, m);
        let table = node.read_table(&back, "").unwrap();
        assert_eq!(table.num_rows(), 3);
        assert!(!node.path.join("part-00001.parquet").exists());
    }

    #[test]
    fn a_part_is_recorded_with_its_size_and_hash_and_each_problem_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeDir::new(dir.path(), "n");
        let part = node.write_part("t", 4, &batch(5)).unwrap();
        let path = node.path.join(&part.file);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(part.file, "t/part-00004.parquet");
        assert_eq!(part.bytes, Some(bytes.len() as u64));
        assert_eq!(part.blake3.as_deref(), Some(hash_bytes(&bytes).as_str()));
        assert_eq!(part.check_file(&path, Check::Hash), Ok(()));

        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(
            part.check_file(&path, Check::Size),
            Ok(()),
            "a stat cannot tell"
        );
        assert_eq!(part.check_file(&path, Check::Hash), Err(PartProblem::Hash));

        std::fs::write(&path, &bytes[..7]).unwrap();
        let size = PartProblem::Size {
            expected: bytes.len() as u64,
            actual: 7,
        };
        assert_eq!(part.check_file(&path, Check::Size), Err(size));

        // An older record (no size, no hash) checks presence only.
        let old = PartFile {
            bytes: None,
            blake3: None,
            ..part.clone()
        };
        assert_eq!(old.check_file(&path, Check::Hash), Ok(()));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            old.check_file(&path, Check::Size),
            Err(PartProblem::Missing)
        );
    }

    #[test]
    fn dropped_chunks_take_their_rows_and_leave_the_node_partial() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeDir::new(dir.path(), "n");
        let chunks: Vec<ChunkRecord> = (0..3)
            .map(|i| ChunkRecord {
                index: i,
                input_start: 3 * i,
                input_end: 3 * i + 3,
                files: vec![
                    node.write_part("", i, &batch(3)).unwrap(),
                    node.write_part("x", i, &batch(1)).unwrap(),
                ],
            })
            .collect();
        let mut m = Manifest {
            format: MANIFEST_FORMAT,
            node: "n".into(),
            op: "t".into(),
            op_version: 1,
            fingerprint: "f".into(),
            state: NodeState::Complete,
            chunk_rows: 3,
            input_rows: 9,
            chunks,
            rows: [("".to_string(), 9), ("x".to_string(), 3)].into(),
            schema: Default::default(),
            started_at: 0.0,
            updated_at: 0.0,
            elapsed_s: 0.0,
            counters: Default::default(),
            metrics: Default::default(),
            artifact: None,
            files: Vec::new(),
        };
        m.drop_chunks(&[1].into());
        assert_eq!(m.state, NodeState::Partial);
        assert_eq!(m.chunks.iter().map(|c| c.index).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(m.rows, [("".to_string(), 6), ("x".to_string(), 2)].into());
        assert_eq!(node.read_table(&m, "").unwrap().num_rows(), 6);
    }

    #[test]
    fn a_manifest_of_a_newer_format_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST);
        // Not a manifest this build could parse: only `format` is read.
        std::fs::write(&path, br#"{"format": 2, "chunks": "something new"}"#).unwrap();
        let err = read_manifest(&path).unwrap_err();
        assert!(
            err.to_string()
                .contains("written by a newer sspo-run (format 2, this binary reads ≤ 1)"),
            "{err}"
        );
        std::fs::write(&path, br#"{"format": 1}"#).unwrap();
        assert!(matches!(
            read_manifest(&path),
            Err(StoreError::Manifest { .. })
        ));
    }

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["f.json"]);
        sync_dir(dir.path()).unwrap();
        assert!(sync_dir(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = RunLock::acquire(dir.path()).unwrap();
        let err = RunLock::acquire(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("in use by another sspo-run"),
            "{err}"
        );
    }
}
