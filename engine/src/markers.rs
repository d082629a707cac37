//! Chunk markers: how the shards of a sharded node run commit chunks without touching
//! the node's manifest.
//!
//! A shard writes each chunk's parts under names unique to its attempt
//! (`part-NNNNN-<attempt>.parquet`) and then the chunk's marker,
//! `<node>/shards/<fingerprint>/chunk-NNNNN.json`, which lists them. Both are written
//! create-only ([`write_create_only`]): the marker is the chunk's commit point, the first
//! attempt to create it wins, and a later attempt of the same chunk (the same shard run
//! twice, or re-run after a kill) deletes its own parts and changes nothing. Parts that
//! no marker lists (an attempt killed before its marker) are invisible to readers and
//! deleted by the commit.
//!
//! Readers see a node through [`node_view`]: a complete manifest as it is, otherwise the
//! manifest (if any) plus the chunks the markers of its fingerprint add, still partial.
//! `sspo-run commit` turns a view that covers every chunk into the node's manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::store::{
    now_s, ChunkRecord, ColumnRecord, Manifest, NodeDir, NodeState, StoreError, MANIFEST_FORMAT,
};

/// The directory of a node's markers, one sub-directory per fingerprint.
pub const SHARDS_DIR: &str = "shards";
/// The marker format this build writes and the newest it reads.
pub const MARKER_FORMAT: u32 = 1;

/// One chunk committed by a shard: everything the manifest needs to list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkMarker {
    pub format: u32,
    /// Node, operator, fingerprint, chunking and attempt: the same in every marker of an
    /// attempt (flattened: the file keeps one flat JSON object).
    #[serde(flatten)]
    pub header: MarkerHeader,
    pub chunk: ChunkRecord,
    /// Columns of each table the chunk wrote ("" is the primary table).
    pub schema: BTreeMap<String, Vec<ColumnRecord>>,
    /// Problem rows counted while computing this chunk.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub written_at: f64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `<node>/shards/<fingerprint>`.
pub fn marker_dir(dir: &NodeDir, fingerprint: &str) -> PathBuf {
    dir.path.join(SHARDS_DIR).join(fingerprint)
}

fn marker_path(dir: &NodeDir, fingerprint: &str, index: u64) -> PathBuf {
    marker_dir(dir, fingerprint).join(format!("chunk-{index:05}.json"))
}

/// Whether some attempt has committed chunk `index`.
pub fn has_marker(dir: &NodeDir, fingerprint: &str, index: u64) -> bool {
    marker_path(dir, fingerprint, index).is_file()
}

/// A tag unique to this attempt (process, time, call), for file names no other writer
/// uses.
pub fn attempt_tag() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!(
        "{}:{nanos}:{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    );
    crate::fingerprint::hash_bytes(seed.as_bytes())[..12].to_string()
}

/// Commits one chunk of a shard: each table's part under a name unique to the attempt,
/// then the marker, all create-only. Returns `false` when another attempt had committed
/// the chunk already: this attempt's parts are deleted and the other's stand.
pub fn commit_chunk(
    dir: &NodeDir,
    mut marker: ChunkMarker,
    tables: &[(&str, &RecordBatch)],
) -> Result<bool, StoreError> {
    let index = marker.chunk.index;
    let tag = marker.header.attempt.clone();
    let name = format!("part-{index:05}-{tag}.parquet");
    let mut files = Vec::with_capacity(tables.len());
    for (table, batch) in tables {
        let part = dir.write_part_as(table, &name, batch, |path, bytes| {
            if dir.create_file(path, bytes, &tag)? {
                Ok(())
            } else {
                Err(io_err(path)(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a part of this attempt's name exists already",
                )))
            }
        })?;
        files.push(part);
    }
    marker.chunk.files = files;
    let mdir = marker_dir(dir, &marker.header.fingerprint);
    fs::create_dir_all(&mdir).map_err(io_err(&mdir))?;
    let path = marker_path(dir, &marker.header.fingerprint, index);
    let bytes = serde_json::to_vec_pretty(&marker).map_err(|source| StoreError::Manifest {
        path: path.clone(),
        source,
    })?;
    if dir.create_file(&path, &bytes, &tag)? {
        return Ok(true);
    }
    for f in &marker.chunk.files {
        let _ = dir.remove_file(&dir.path.join(&f.file));
    }
    Ok(false)
}

/// The markers of `fingerprint`, in chunk order.
pub fn read_markers(dir: &NodeDir, fingerprint: &str) -> Result<Vec<ChunkMarker>, StoreError> {
    let mdir = marker_dir(dir, fingerprint);
    let entries = match fs::read_dir(&mdir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&mdir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("chunk-") && name.ends_with(".json")) {
            continue;
        }
        let path = entry.path();
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        out.push(parse_marker(&path, &bytes)?);
    }
    out.sort_by_key(|m| m.chunk.index);
    Ok(out)
}

/// A marker's bytes (`path` names it in errors), refused if of a newer format.
pub fn parse_marker(path: &Path, bytes: &[u8]) -> Result<ChunkMarker, StoreError> {
    let invalid = |source| StoreError::Manifest {
        path: path.to_path_buf(),
        source,
    };
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let Format { format } = serde_json::from_slice(bytes).map_err(invalid)?;
    if format > MARKER_FORMAT {
        return Err(StoreError::NewerFormat {
            path: path.to_path_buf(),
            format,
            supported: MARKER_FORMAT,
        });
    }
    serde_json::from_slice::<ChunkMarker>(bytes).map_err(invalid)
}

/// Fingerprints with markers, the most recently written first.
pub fn marker_fingerprints(dir: &NodeDir) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir.path.join(SHARDS_DIR)) else {
        return Vec::new();
    };
    let mut found: Vec<(std::time::SystemTime, String)> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let mtime = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (mtime, e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    found.sort_by(|a, b| b.cmp(a));
    found.into_iter().map(|(_, fp)| fp).collect()
}

/// Whether the node has markers of any fingerprint.
pub fn has_shards(dir: &NodeDir) -> bool {
    !marker_fingerprints(dir).is_empty()
}

/// Deletes the markers of `chunks` (their parts were found damaged).
pub fn remove_markers(
    dir: &NodeDir,
    fingerprint: &str,
    chunks: &BTreeSet<u64>,
) -> Result<(), StoreError> {
    for &c in chunks {
        dir.remove_file(&marker_path(dir, fingerprint, c))?;
    }
    Ok(())
}

/// Deletes the markers of every fingerprint but `keep` (output of an earlier spec).
/// Best effort: shards of one fingerprint may do it at the same time.
pub fn retire_other_fingerprints(dir: &NodeDir, keep: &str) {
    for fp in marker_fingerprints(dir) {
        if fp != keep {
            let _ = dir.remove_dir(&dir.path.join(SHARDS_DIR).join(fp));
        }
    }
}

/// Deletes every marker: the node's manifest is complete and lists their chunks.
pub fn remove_all(dir: &NodeDir) {
    let _ = dir.remove_dir(&dir.path.join(SHARDS_DIR));
}

/// The node as readers see it: a complete manifest as it is; otherwise the manifest (if
/// any) with the chunks the markers of its fingerprint add (of `fingerprint` when given,
/// else of the most recent markers), still partial. A manifest of another fingerprint
/// than `fingerprint` is returned as it is (the node is stale).
pub fn node_view(dir: &NodeDir, fingerprint: Option<&str>) -> Result<Option<Manifest>, StoreError> {
    let manifest = dir.read_manifest()?;
    if manifest
        .as_ref()
        .is_some_and(|m| m.state == NodeState::Complete)
    {
        return Ok(manifest);
    }
    let fp = match (fingerprint, &manifest) {
        (Some(f), _) => f.to_string(),
        (None, Some(m)) => m.fingerprint.clone(),
        (None, None) => match marker_fingerprints(dir).into_iter().next() {
            Some(f) => f,
            None => return Ok(None),
        },
    };
    if manifest.as_ref().is_some_and(|m| m.fingerprint != fp) {
        return Ok(manifest);
    }
    Ok(with_markers(manifest, &read_markers(dir, &fp)?))
}

/// `manifest` (or a new partial one) with the markers' chunks it does not list yet.
/// Markers of another chunking than the manifest's are left out.
pub fn with_markers(manifest: Option<Manifest>, markers: &[ChunkMarker]) -> Option<Manifest> {
    let mut m = match manifest {
        Some(m) => m,
        None => {
            let first = markers.first()?;
            Manifest {
                format: MANIFEST_FORMAT,
                node: first.header.node.clone(),
                op: first.header.op.clone(),
                op_version: first.header.op_version,
                fingerprint: first.header.fingerprint.clone(),
                state: NodeState::Partial,
                chunk_rows: first.header.chunk_rows,
                input_rows: first.header.input_rows,
                chunks: Vec::new(),
                rows: BTreeMap::new(),
                schema: BTreeMap::new(),
                started_at: first.written_at - first.elapsed_s,
                updated_at: first.written_at,
                elapsed_s: 0.0,
                counters: BTreeMap::new(),
                metrics: Default::default(),
                artifact: None,
                files: Vec::new(),
            }
        }
    };
    let listed: BTreeSet<u64> = m.chunks.iter().map(|c| c.index).collect();
    for mk in markers {
        let same_plan =
            mk.header.chunk_rows == m.chunk_rows && mk.header.input_rows == m.input_rows;
        if !same_plan || listed.contains(&mk.chunk.index) {
            continue;
        }
        for (table, cols) in &mk.schema {
            m.schema
                .entry(table.clone())
                .or_insert_with(|| cols.clone());
        }
        for f in &mk.chunk.files {
            *m.rows.entry(f.table.clone()).or_default() += f.rows;
        }
        for (name, n) in &mk.counters {
            *m.counters.entry(name.clone()).or_default() += n;
        }
        m.elapsed_s += mk.elapsed_s;
        m.started_at = m.started_at.min(mk.written_at - mk.elapsed_s);
        m.updated_at = m.updated_at.max(mk.written_at);
        m.chunks.push(mk.chunk.clone());
    }
    m.chunks.sort_by_key(|c| c.index);
    Some(m)
}

/// The number of chunks of a node's chunk loop (final records excluded).
pub fn chunk_count(m: &Manifest) -> u64 {
    m.input_rows.div_ceil(m.chunk_rows.max(1)).max(1)
}

/// The chunks of the chunk loop that `m` does not list.
pub fn missing_chunks(m: &Manifest) -> Vec<u64> {
    let listed: BTreeSet<u64> = m.chunks.iter().map(|c| c.index).collect();
    (0..chunk_count(m))
        .filter(|c| !listed.contains(c))
        .collect()
}

/// A marker for chunk `chunk` of a shard's attempt, written at `now_s()` (its files are
/// filled in by [`commit_chunk`]).
pub fn new_marker(
    m: &MarkerHeader,
    chunk: ChunkRecord,
    schema: BTreeMap<String, Vec<ColumnRecord>>,
    counters: BTreeMap<String, u64>,
    elapsed_s: f64,
) -> ChunkMarker {
    ChunkMarker {
        format: MARKER_FORMAT,
        header: m.clone(),
        chunk,
        schema,
        counters,
        elapsed_s,
        written_at: now_s(),
    }
}

/// What every marker of one shard attempt of a node shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarkerHeader {
    pub node: String,
    pub op: String,
    pub op_version: u32,
    pub fingerprint: String,
    pub chunk_rows: u64,
    pub input_rows: u64,
    pub shard: String,
    pub attempt: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    fn batch(n: i64) -> RecordBatch {
        let col = Int64Array::from_iter_values(0..n);
        RecordBatch::try_from_iter(vec![("i", Arc::new(col) as arrow::array::ArrayRef)]).unwrap()
    }

    fn header(attempt: &str) -> MarkerHeader {
        MarkerHeader {
            node: "n".into(),
            op: "t".into(),
            op_version: 1,
            fingerprint: "fp".into(),
            chunk_rows: 2,
            input_rows: 5,
            shard: "0/2".into(),
            attempt: attempt.into(),
        }
    }

    fn marker(attempt: &str, index: u64) -> ChunkMarker {
        let chunk = ChunkRecord {
            index,
            input_start: 2 * index,
            input_end: (2 * index + 2).min(5),
            files: Vec::new(),
        };
        let counters = [("empty".to_string(), 1)].into();
        new_marker(&header(attempt), chunk, BTreeMap::new(), counters, 0.5)
    }

    #[test]
    fn the_first_attempt_of_a_chunk_wins_and_a_later_one_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = NodeDir::new(tmp.path(), "n");
        let b = batch(2);
        assert!(commit_chunk(&dir, marker("a1", 0), &[("", &b), ("x", &b)]).unwrap());
        assert!(!commit_chunk(&dir, marker("b2", 0), &[("", &b), ("x", &b)]).unwrap());
        let markers = read_markers(&dir, "fp").unwrap();
        assert_eq!(markers.len(), 1);
        assert_eq!(markers[0].header.attempt, "a1");
        let files: Vec<&str> = markers[0]
            .chunk
            .files
            .iter()
            .map(|f| f.file.as_str())
            .collect();
        assert_eq!(files, ["part-00000-a1.parquet", "x/part-00000-a1.parquet"]);
        assert!(!dir.path.join("part-00000-b2.parquet").exists());
        assert!(!dir.path.join("x/part-00000-b2.parquet").exists());
        assert!(has_marker(&dir, "fp", 0) && !has_marker(&dir, "fp", 1));
    }

    #[test]
    fn the_view_adds_marker_chunks_to_a_partial_manifest_and_tells_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = NodeDir::new(tmp.path(), "n");
        assert_eq!(node_view(&dir, None).unwrap(), None);
        let b = batch(2);
        commit_chunk(&dir, marker("a", 2), &[("", &batch(1))]).unwrap();
        commit_chunk(&dir, marker("a", 0), &[("", &b)]).unwrap();
        let m = node_view(&dir, None).unwrap().unwrap();
        assert_eq!(m.state, NodeState::Partial);
        assert_eq!(m.chunks.iter().map(|c| c.index).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(m.primary_rows(), 3);
        assert_eq!(m.counters.get("empty"), Some(&2));
        assert_eq!(missing_chunks(&m), [1]);
        assert_eq!(dir.read_table(&m, "").unwrap().num_rows(), 3);
        // Another fingerprint's markers are not this one's.
        assert_eq!(node_view(&dir, Some("other")).unwrap(), None);

        // A partial manifest that lists chunk 0 already: the marker adds only chunk 2.
        let mut first = with_markers(None, &read_markers(&dir, "fp").unwrap()[..1]).unwrap();
        first.counters.insert("empty".into(), 1);
        dir.write_manifest(&first).unwrap();
        let m = node_view(&dir, Some("fp")).unwrap().unwrap();
        assert_eq!(m.chunks.len(), 2);
        assert_eq!(m.counters.get("empty"), Some(&2));
        remove_markers(&dir, "fp", &[2].into()).unwrap();
        assert_eq!(node_view(&dir, None).unwrap().unwrap().chunks.len(), 1);
        retire_other_fingerprints(&dir, "new");
        assert!(!has_shards(&dir));
    }
}
