//! What a node sees while it runs: its inputs, its store, progress, cancellation,
//! and the chunk loop that makes every row-wise operator resumable.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arrow::array::RecordBatch;

use crate::binding::{split_binding_key, Input, ModelRef};
use crate::error::OpError;
use crate::progress::NodeProgress;
use crate::shard::Shard;
use crate::store::{now_s, schema_records, ChunkRecord, Manifest, NodeDir, NodeState};

mod sharded;

static CANCEL: AtomicBool = AtomicBool::new(false);

/// Asks running nodes to stop after the chunk they are committing (Ctrl-C).
pub fn request_cancel() {
    CANCEL.store(true, Ordering::SeqCst);
}

pub fn cancel_requested() -> bool {
    CANCEL.load(Ordering::SeqCst)
}

/// One chunk's output: the primary table and any extra tables.
#[derive(Debug, Clone)]
pub struct ChunkOutput {
    pub main: RecordBatch,
    pub extra: Vec<(String, RecordBatch)>,
}

impl From<RecordBatch> for ChunkOutput {
    fn from(main: RecordBatch) -> Self {
        Self {
            main,
            extra: Vec::new(),
        }
    }
}

/// The running node's view of the world.
pub struct RunContext<'a> {
    node_id: String,
    op: String,
    op_version: u32,
    fingerprint: String,
    seed: u64,
    device: String,
    run_dir: PathBuf,
    dir: NodeDir,
    inputs: BTreeMap<String, Input>,
    progress: &'a NodeProgress,
    manifest: Option<Manifest>,
    counters: BTreeMap<String, u64>,
    metrics: serde_json::Map<String, serde_json::Value>,
    artifact: Option<String>,
    log: &'a (dyn Fn(&str) + Sync),
    started: Instant,
    /// Chunks dropped from the manifest as damaged before this run (see
    /// [`Self::repaired_chunks`]).
    repaired: Vec<u64>,
    /// In a shard of a sharded run: which shard, and this attempt's tag. The chunk loop
    /// then commits the shard's chunks through markers and never writes the manifest.
    shard: Option<(Shard, String)>,
    /// A commit of a sharded node where no manifest exists yet: the node's first
    /// manifest is written create-only, so that of two concurrent commits one writes it.
    create_first_manifest: bool,
}

impl<'a> RunContext<'a> {
    /// The context of plan node `index`: its id and operator, the pipeline's seed and device.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn for_node(
        plan: &crate::plan::Plan,
        index: usize,
        fingerprint: String,
        opts: &crate::executor::RunOptions,
        inputs: BTreeMap<String, Input>,
        progress: &'a NodeProgress,
        manifest: Option<Manifest>,
        log: &'a (dyn Fn(&str) + Sync),
    ) -> Self {
        let node = &plan.nodes[index];
        let mut ctx = Self::new(
            node.id().to_string(),
            node.op.name().to_string(),
            node.op.version(),
            fingerprint,
            plan.pipeline.seed,
            plan.pipeline.device.clone(),
            opts.run_dir.clone(),
            inputs,
            progress,
            manifest,
            log,
        );
        // Commits go to the object store too when the run directory is on one.
        ctx.dir = opts.node_dir(node.id());
        ctx
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        node_id: String,
        op: String,
        op_version: u32,
        fingerprint: String,
        seed: u64,
        device: String,
        run_dir: PathBuf,
        inputs: BTreeMap<String, Input>,
        progress: &'a NodeProgress,
        manifest: Option<Manifest>,
        log: &'a (dyn Fn(&str) + Sync),
    ) -> Self {
        let dir = NodeDir::new(&run_dir, &node_id);
        let (counters, metrics, artifact) = manifest
            .as_ref()
            .map(|m| (m.counters.clone(), m.metrics.clone(), m.artifact.clone()))
            .unwrap_or_default();
        Self {
            node_id,
            op,
            op_version,
            fingerprint,
            seed,
            device,
            run_dir,
            dir,
            inputs,
            progress,
            manifest,
            counters,
            metrics,
            artifact,
            log,
            started: Instant::now(),
            repaired: Vec::new(),
            shard: None,
            create_first_manifest: false,
        }
    }

    /// Makes this a shard's run: only the chunks `shard` owns are computed, each committed
    /// create-only under the attempt's tag.
    pub(crate) fn set_shard(&mut self, shard: Shard, attempt: String) {
        self.shard = Some((shard, attempt));
    }

    /// Writes the node's first manifest create-only (see the field).
    pub(crate) fn set_create_first_manifest(&mut self) {
        self.create_first_manifest = true;
    }

    /// The shard this run computes, if it is a shard of a sharded run.
    pub fn shard(&self) -> Option<Shard> {
        self.shard.as_ref().map(|(s, _)| *s)
    }

    /// Writes the manifest: create-only the first time when asked to (a commit that
    /// finds another commit's manifest fails with [`crate::store::StoreError::Committed`]).
    fn write_manifest(&mut self, m: &Manifest) -> Result<(), crate::store::StoreError> {
        if !self.create_first_manifest {
            return self.dir.write_manifest(m);
        }
        if !self
            .dir
            .create_manifest(m, &crate::markers::attempt_tag())?
        {
            return Err(crate::store::StoreError::Committed(
                self.dir.manifest_path(),
            ));
        }
        self.create_first_manifest = false;
        Ok(())
    }

    pub(crate) fn set_repaired(&mut self, chunks: Vec<u64>) {
        self.repaired = chunks;
    }

    /// Chunk indices whose parts were found damaged and dropped from the manifest before
    /// this run: the chunk loop recomputes them. A node that cannot recompute a chunk
    /// alone (a checkpointed one) starts over instead ([`Self::start_over`]).
    pub fn repaired_chunks(&self) -> &[u64] {
        &self.repaired
    }

    /// Discards everything the node has committed (and its scratch directory), with the
    /// reason in the log: the node is computed from the start.
    pub fn start_over(&mut self, why: &str) -> Result<(), OpError> {
        self.log(&format!("{why}; starting over"));
        self.dir.wipe()?;
        self.dir.ensure()?;
        self.manifest = None;
        self.counters.clear();
        self.metrics.clear();
        self.artifact = None;
        Ok(())
    }

    /// The node's id in the spec.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The operator's `op:` name.
    pub fn op(&self) -> &str {
        &self.op
    }

    pub fn op_version(&self) -> u32 {
        self.op_version
    }

    /// The node's fingerprint in this run.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The pipeline's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `auto | cpu | cuda | cuda:N` from the spec.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The run directory (every node's directory is inside it).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// This node's directory in the store.
    pub fn dir(&self) -> &NodeDir {
        &self.dir
    }

    /// The bound inputs, by binding key (`port`, or `port.N` for a list port).
    pub fn inputs(&self) -> &BTreeMap<String, Input> {
        &self.inputs
    }

    /// The node's progress display. It lives as long as the context, not as one borrow
    /// of it, so an operator can report progress while it also commits chunks.
    pub fn progress(&self) -> &'a NodeProgress {
        self.progress
    }

    /// The committed state this run resumes from, if any.
    pub fn resumed_manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// All rows of the table on `port`.
    pub fn input_table(&self, port: &str) -> Result<RecordBatch, OpError> {
        match self.inputs.get(port) {
            Some(Input::Table { node, dir }) => {
                let m = dir.read_manifest()?.ok_or_else(|| {
                    OpError::msg(format!(
                        "input `{node}` on port `{port}` has no committed output"
                    ))
                })?;
                Ok(dir.read_table(&m, "")?)
            }
            Some(Input::Model(_)) => Err(OpError::msg(format!("port `{port}` is a model port"))),
            None => Err(OpError::msg(format!("port `{port}` is not connected"))),
        }
    }

    /// The models on a list port (`models: [base, sspo]`), in the order written; a single
    /// name gives one.
    pub fn input_models(&self, port: &str) -> Result<Vec<&ModelRef>, OpError> {
        let mut found: Vec<(usize, &ModelRef)> = Vec::new();
        for (key, input) in &self.inputs {
            let (base, index) = split_binding_key(key);
            if base != port {
                continue;
            }
            match input {
                Input::Model(m) => found.push((index.unwrap_or(0), m)),
                Input::Table { .. } => {
                    return Err(OpError::msg(format!("port `{port}` is a table port")))
                }
            }
        }
        if found.is_empty() {
            return Err(OpError::msg(format!("port `{port}` is not connected")));
        }
        found.sort_by_key(|(k, _)| *k);
        Ok(found.into_iter().map(|(_, m)| m).collect())
    }

    /// A short text printed at the end of the run (kept in the manifest as the metric
    /// `summary`), e.g. an evaluation's headline numbers.
    pub fn set_summary(&mut self, text: impl Into<String>) {
        self.set_metric("summary", serde_json::Value::String(text.into()));
    }

    pub fn has_input(&self, port: &str) -> bool {
        self.inputs.contains_key(port)
    }

    pub fn input_model(&self, port: &str) -> Result<&ModelRef, OpError> {
        match self.inputs.get(port) {
            Some(Input::Model(m)) => Ok(m),
            Some(Input::Table { .. }) => {
                Err(OpError::msg(format!("port `{port}` is a table port")))
            }
            None => Err(OpError::msg(format!("port `{port}` is not connected"))),
        }
    }

    /// A per-row seed derived from the run seed and the row's identity, so a row's
    /// randomness does not depend on chunking or batching.
    pub fn row_seed(&self, parts: &[&[u8]]) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(&self.seed.to_le_bytes());
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        sspo_common::rng::blake3_u64(&h.finalize())
    }

    /// Logs a line through the run's progress display.
    pub fn log(&self, line: &str) {
        (self.log)(&format!("[{}] {line}", self.node_id));
    }

    /// Counts `n` problem rows under `name`: kept in the manifest, logged once per run
    /// as `n` followed by `what`, whose `{singular|plural}` groups agree with `n`
    /// ([`sspo_common::plural::agree`]).
    pub fn count(&mut self, name: &str, n: u64, what: &str) {
        if n == 0 {
            return;
        }
        *self.counters.entry(name.to_string()).or_default() += n;
        self.log(&format!("{n} {}", sspo_common::plural::agree(n, what)));
    }

    pub fn set_metric(&mut self, key: &str, value: serde_json::Value) {
        self.metrics.insert(key.to_string(), value);
    }

    /// The directory for the node's model artifact (created on demand).
    pub fn artifact_dir(&mut self) -> Result<PathBuf, OpError> {
        let rel = "model".to_string();
        let dir = self.dir.path.join(&rel);
        std::fs::create_dir_all(&dir)
            .map_err(|e| OpError::context(dir.display().to_string(), e))?;
        self.artifact = Some(rel);
        Ok(dir)
    }

    /// A directory that survives interrupted runs of the same fingerprint (checkpoints).
    pub fn scratch_dir(&self) -> Result<PathBuf, OpError> {
        let dir = self.dir.path.join(crate::store::SCRATCH_DIR);
        std::fs::create_dir_all(&dir)
            .map_err(|e| OpError::context(dir.display().to_string(), e))?;
        Ok(dir)
    }

    /// Indices of the chunks `0..n_chunks` the manifest holds. Indices past the last chunk
    /// are final records ([`Self::commit_final`]), not chunks.
    pub(crate) fn committed_chunks(&self, n_chunks: usize) -> std::collections::HashSet<u64> {
        self.manifest
            .as_ref()
            .map(|m| {
                m.chunks
                    .iter()
                    .map(|c| c.index)
                    .filter(|i| *i < n_chunks as u64)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The chunk loop: input rows `0..input_rows` in chunks of `chunk_rows`; chunks
    /// committed by an earlier run with the same plan are skipped; each new chunk's output
    /// is committed (parts, then manifest) before the next starts. Returns after the last
    /// chunk, or with [`OpError::Cancelled`] after a commit when Ctrl-C was pressed.
    pub fn run_chunks<F>(
        &mut self,
        input_rows: usize,
        chunk_rows: usize,
        mut f: F,
    ) -> Result<(), OpError>
    where
        F: FnMut(&mut Self, Range<usize>) -> Result<ChunkOutput, OpError>,
    {
        if let Some((shard, attempt)) = self.shard.clone() {
            return self.run_shard_chunks(shard, attempt, input_rows, chunk_rows, f);
        }
        let chunk_rows = chunk_rows.max(1);
        let n_chunks = input_rows.div_ceil(chunk_rows).max(1);
        let plan_matches = self.manifest.as_ref().is_some_and(|m| {
            m.chunk_rows == chunk_rows as u64 && m.input_rows == input_rows as u64
        });
        if self.manifest.is_some() && !plan_matches {
            self.start_over("input or chunking changed since the interrupted run")?;
        }
        let done = self.committed_chunks(n_chunks);
        let done_rows: usize = (0..n_chunks)
            .filter(|i| done.contains(&(*i as u64)))
            .map(|i| chunk_range(i, chunk_rows, input_rows).len())
            .sum();
        self.progress.set_total(input_rows as u64);
        self.progress.set_done(done_rows as u64);
        if !done.is_empty() {
            self.log(&format!(
                "resuming: {} of {n_chunks} chunks already committed",
                done.len()
            ));
        }
        self.dir.ensure()?;
        for i in 0..n_chunks {
            if done.contains(&(i as u64)) {
                continue;
            }
            if cancel_requested() {
                return Err(OpError::Cancelled);
            }
            let range = chunk_range(i, chunk_rows, input_rows);
            let out = f(self, range.clone())?;
            self.commit_chunk(i as u64, range.clone(), chunk_rows, input_rows, out)?;
            self.progress.inc(range.len() as u64);
        }
        Ok(())
    }

    /// Commits one chunk: parts to disk, then the manifest (the commit point).
    pub fn commit_chunk(
        &mut self,
        index: u64,
        input: Range<usize>,
        chunk_rows: usize,
        input_rows: usize,
        out: ChunkOutput,
    ) -> Result<(), OpError> {
        let mut files = vec![self.dir.write_part("", index, &out.main)?];
        for (table, batch) in &out.extra {
            files.push(self.dir.write_part(table, index, batch)?);
        }
        let now = now_s();
        let mut m = self.manifest.take().unwrap_or_else(|| Manifest {
            format: crate::store::MANIFEST_FORMAT,
            node: self.node_id.clone(),
            op: self.op.clone(),
            op_version: self.op_version,
            fingerprint: self.fingerprint.clone(),
            state: NodeState::Partial,
            chunk_rows: chunk_rows as u64,
            input_rows: input_rows as u64,
            chunks: Vec::new(),
            rows: BTreeMap::new(),
            schema: BTreeMap::new(),
            started_at: now,
            updated_at: now,
            elapsed_s: 0.0,
            counters: BTreeMap::new(),
            metrics: Default::default(),
            artifact: None,
            files: Vec::new(),
        });
        m.schema
            .entry(String::new())
            .or_insert_with(|| schema_records(&out.main.schema()));
        for (table, batch) in &out.extra {
            m.schema
                .entry(table.clone())
                .or_insert_with(|| schema_records(&batch.schema()));
        }
        for f in &files {
            *m.rows.entry(f.table.clone()).or_default() += f.rows;
        }
        m.chunks.push(ChunkRecord {
            index,
            input_start: input.start as u64,
            input_end: input.end as u64,
            files,
        });
        m.chunks.sort_by_key(|c| c.index);
        self.stamp(&mut m);
        self.write_manifest(&m)?;
        self.manifest = Some(m);
        Ok(())
    }

    /// All rows of this node's own `table` ("" = the primary table) committed so far, by
    /// this run or by the interrupted runs it resumes.
    pub fn committed_table(&self, table: &str) -> Result<RecordBatch, OpError> {
        let m = self
            .manifest
            .as_ref()
            .ok_or_else(|| OpError::msg("the node has committed nothing yet"))?;
        Ok(self.dir.read_table(m, table)?)
    }

    /// Commits extra tables computed from the node's whole output (a summary over all
    /// rows), after the chunk loop. They are recorded as one more chunk record, index
    /// `ceil(input_rows / chunk_rows)` (one past the last chunk) with an empty input range
    /// at the end of the input; the chunk loop ignores it when it resumes, and a run that
    /// commits final tables again (a resume after an interruption that came after this
    /// commit) replaces the earlier ones.
    pub fn commit_final(&mut self, tables: Vec<(String, RecordBatch)>) -> Result<(), OpError> {
        if tables.iter().any(|(t, _)| t.is_empty()) {
            return Err(OpError::msg(
                "final tables are extra tables: the primary table is written by chunks",
            ));
        }
        let index = {
            let m = self.manifest.as_ref().ok_or_else(|| {
                OpError::msg(
                    "final tables are committed after the chunk loop has committed a chunk",
                )
            })?;
            m.input_rows.div_ceil(m.chunk_rows.max(1)).max(1)
        };
        // Parts first (invisible until the manifest lists them), then the manifest.
        let mut files = Vec::new();
        for (table, batch) in &tables {
            files.push(self.dir.write_part(table, index, batch)?);
        }
        let Some(mut m) = self.manifest.take() else {
            return Err(OpError::msg("the manifest vanished"));
        };
        if let Some(pos) = m.chunks.iter().position(|c| c.index == index) {
            let old = m.chunks.remove(pos);
            for f in &old.files {
                if let Some(r) = m.rows.get_mut(&f.table) {
                    *r = r.saturating_sub(f.rows);
                }
            }
        }
        for (table, batch) in &tables {
            m.schema
                .insert(table.clone(), schema_records(&batch.schema()));
        }
        for f in &files {
            *m.rows.entry(f.table.clone()).or_default() += f.rows;
        }
        m.chunks.push(ChunkRecord {
            index,
            input_start: m.input_rows,
            input_end: m.input_rows,
            files,
        });
        m.chunks.sort_by_key(|c| c.index);
        self.stamp(&mut m);
        let written = self.write_manifest(&m);
        self.manifest = Some(m);
        Ok(written?)
    }

    fn stamp(&mut self, m: &mut Manifest) {
        let now = now_s();
        m.elapsed_s += self.started.elapsed().as_secs_f64();
        self.started = Instant::now();
        m.updated_at = now;
        m.counters = self.counters.clone();
        m.metrics = self.metrics.clone();
        m.artifact = self.artifact.clone();
    }

    /// Marks the node complete (called by the executor after `run` returns).
    pub(crate) fn finish(mut self) -> Result<Manifest, OpError> {
        let mut m = self
            .manifest
            .take()
            .ok_or_else(|| OpError::msg("the operator finished without committing any output"))?;
        m.state = NodeState::Complete;
        self.stamp(&mut m);
        self.write_manifest(&m)?;
        Ok(m)
    }

    pub fn node_dir(&self) -> &Path {
        &self.dir.path
    }
}

/// Input rows of chunk `i`.
pub fn chunk_range(i: usize, chunk_rows: usize, input_rows: usize) -> Range<usize> {
    let start = (i * chunk_rows).min(input_rows);
    let end = ((i + 1) * chunk_rows).min(input_rows);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::{Progress, ProgressMode};
    use arrow::array::Int64Array;
    use std::sync::Arc;

    fn batch(rows: Range<usize>) -> RecordBatch {
        let col = Int64Array::from_iter_values(rows.map(|i| i as i64));
        RecordBatch::try_from_iter(vec![("i", Arc::new(col) as arrow::array::ArrayRef)]).unwrap()
    }

    #[test]
    fn final_tables_commit_after_the_chunks_and_are_replaced_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let progress = Progress::new(ProgressMode::Quiet);
        let bar = progress.node("n", "rows");
        let log = |_: &str| {};
        let ctx = |manifest| {
            RunContext::new(
                "n".into(),
                "t".into(),
                1,
                "f".into(),
                0,
                "cpu".into(),
                dir.path().to_path_buf(),
                BTreeMap::new(),
                &bar,
                manifest,
                &log,
            )
        };
        let mut c = ctx(None);
        assert!(c.commit_final(vec![("s".into(), batch(0..1))]).is_err());
        c.run_chunks(5, 2, |_, r| Ok(batch(r).into())).unwrap();
        assert_eq!(c.committed_table("").unwrap().num_rows(), 5);
        c.commit_final(vec![("s".into(), batch(0..2))]).unwrap();
        let m = c.resumed_manifest().unwrap().clone();
        assert_eq!(m.chunks.len(), 4);
        assert_eq!(m.chunks[3].index, 3);
        assert_eq!((m.chunks[3].input_start, m.chunks[3].input_end), (5, 5));
        assert_eq!(m.rows.get("s"), Some(&2));
        assert!(c.commit_final(vec![(String::new(), batch(0..1))]).is_err());
        assert_eq!(
            c.resumed_manifest(),
            Some(&m),
            "a refused commit changes nothing"
        );

        // A later run of the same plan: no chunk is redone, the final table is replaced.
        let mut c = ctx(c.dir.read_manifest().unwrap());
        c.run_chunks(5, 2, |_, _| {
            Err(OpError::msg("no chunk is left to compute"))
        })
        .unwrap();
        c.commit_final(vec![("s".into(), batch(0..3))]).unwrap();
        let m = c.dir.read_manifest().unwrap().unwrap();
        assert_eq!(m.chunks.len(), 4);
        assert_eq!(m.rows.get("s"), Some(&3));
        assert_eq!(m.rows.get(""), Some(&5));
        assert_eq!(c.dir.read_table(&m, "s").unwrap().num_rows(), 3);
        assert_eq!(c.finish().unwrap().state, NodeState::Complete);
    }

    #[test]
    fn chunks_cover_the_input_once() {
        let n: usize = 10;
        let ranges: Vec<_> = (0..n.div_ceil(4)).map(|i| chunk_range(i, 4, n)).collect();
        assert_eq!(ranges, vec![0..4, 4..8, 8..10]);
        assert_eq!(chunk_range(0, 4, 0), 0..0);
    }
}
