//! Checkpointed resume for nodes that are not row-wise (training): the node's work is a
//! sequence of steps with state carried from one to the next, and it writes one output
//! row per step.
//!
//! Every `every` steps (and after the last) the engine writes a checkpoint, then commits
//! the rows of the interval as one chunk, then prunes old checkpoints. The node supplies
//! only what a checkpoint holds ([`Checkpointed::save`] / [`Checkpointed::load`]) and
//! its rows; the engine owns the rest:
//!
//! * Where: `<node>/scratch/ckpt-NNNNNNNNN/` (steps done, 9 digits), which survives
//!   interrupted runs of the same fingerprint. Each holds the node's files and
//!   `state.json`: the fingerprint, the steps done, the steps planned, the node's own
//!   fields, and the rows of the interval (`pending`), committed after the checkpoint.
//! * Atomic: written to `.tmp-ckpt-…`, flushed, renamed; a checkpoint directory is always
//!   complete, and one whose `state.json` does not read back is not a checkpoint.
//! * Resume: committed steps are the end of the last committed chunk; the run loads the
//!   newest checkpoint of this fingerprint at or after them. A checkpoint one interval
//!   ahead (the run was killed between writing it and committing its rows) commits its
//!   stored rows first, so manifest and checkpoints always agree and a resumed run
//!   commits exactly the rows of an uninterrupted one.
//! * Pruning: the newest `keep` checkpoints stay; every other file of the scratch
//!   directory goes, except the node's caches named in [`StepPlan::keep_files`]. A fresh
//!   start removes every checkpoint first: nothing of another configuration lingers.
//!   Once the node completes, the executor deletes the whole scratch directory (unless
//!   `RunOptions::keep_scratch`): a complete node is cached, never resumed.
//!
//! Row-wise operators use [`RunContext::run_chunks`] instead.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::OpError;
use crate::run::{cancel_requested, ChunkOutput, RunContext};
use crate::store::StoreError;

/// Prefix of a checkpoint directory's name.
pub const CHECKPOINT_PREFIX: &str = "ckpt-";
/// The engine's file in every checkpoint directory.
pub const STATE_FILE: &str = "state.json";

/// The directory name of the checkpoint after `done` steps.
pub fn checkpoint_name(done: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{done:09}")
}

/// How a checkpointed node steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    /// Steps of the whole run, one output row each (the node's "input rows").
    pub steps: u64,
    /// Steps between checkpoints; the rows of each interval are committed as one chunk.
    pub every: u64,
    /// Checkpoints kept in the scratch directory (the newest).
    pub keep: usize,
    /// Files of the scratch directory besides checkpoints that pruning leaves alone (the
    /// node's caches of this fingerprint).
    pub keep_files: Vec<String>,
}

/// A node whose work is a sequence of steps with state carried between them.
pub trait Checkpointed {
    /// One output row per step; kept in the checkpoint until it is committed, so it must
    /// read back exactly (store floats as their bits).
    type Row: Serialize + DeserializeOwned;
    /// The node's own fields of `state.json`.
    type State: Serialize + DeserializeOwned;

    /// Does step `step` (0-based) and returns its row.
    fn step(&mut self, ctx: &mut RunContext, step: u64) -> Result<Self::Row, OpError>;

    /// Writes what resuming after `done` steps needs into `dir` (a new, empty
    /// directory), and returns the node's fields of `state.json`.
    fn save(&mut self, dir: &Path, done: u64) -> Result<Self::State, OpError>;

    /// Restores what [`Self::save`] wrote into `dir` after `done` steps.
    fn load(&mut self, dir: &Path, done: u64, state: &Self::State) -> Result<(), OpError>;

    /// The chunk committed for the rows of one interval (it may also set metrics, which
    /// the commit records).
    fn output(&self, ctx: &mut RunContext, rows: &[Self::Row]) -> Result<ChunkOutput, OpError>;
}

/// A checkpoint's `state.json`: the engine's fields around the node's own `S` (flattened
/// in), then the rows `R` of the interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState<S, R> {
    /// The node's fingerprint: a checkpoint of another configuration is never resumed.
    pub fingerprint: String,
    /// Steps done.
    pub step: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    #[serde(flatten)]
    pub node: S,
    /// Rows of the steps since the previous checkpoint (committed after this one).
    pub pending: Vec<R>,
}

/// A complete checkpoint on disk.
#[derive(Debug)]
struct Saved<S, R> {
    dir: PathBuf,
    state: CheckpointState<S, R>,
}

/// The checkpoints of a running node, and the one it resumes from. Made by
/// [`RunContext::checkpoints`] (which checks the plan against the committed chunks);
/// [`Self::run`] does the steps. In between the node may prepare what must see its input
/// state, before a checkpoint replaces it (e.g. outputs of the untrained model).
#[derive(Debug)]
pub struct Checkpoints<S, R> {
    plan: StepPlan,
    scratch: Scratch,
    committed: u64,
    resume: Option<Saved<S, R>>,
}

impl RunContext<'_> {
    /// Opens the checkpoints of a node that steps by `plan`: checks the plan against the
    /// chunks an interrupted run committed, chooses the newest checkpoint of this
    /// fingerprint at or after them, and on a fresh start clears the scratch directory
    /// (all but `plan.keep_files`).
    ///
    /// A node whose damaged chunks were dropped before this run starts over: an interval's
    /// steps continue from the state of the steps before it, which is not kept once the
    /// node completes, so a chunk cannot be recomputed alone.
    pub fn checkpoints<S, R>(&mut self, plan: StepPlan) -> Result<Checkpoints<S, R>, OpError>
    where
        S: DeserializeOwned,
        R: DeserializeOwned,
    {
        if plan.every == 0 {
            return Err(OpError::internal("a step plan checkpoints every 0 steps"));
        }
        if !self.repaired_chunks().is_empty() {
            let chunks: Vec<String> = self.repaired_chunks().iter().map(u64::to_string).collect();
            self.start_over(&format!(
                "chunk {} was damaged, and a checkpointed node cannot recompute a chunk alone",
                chunks.join(", ")
            ))?;
        }
        let node = self.node_id();
        let committed = match self.resumed_manifest() {
            Some(m) => {
                if m.input_rows != plan.steps || m.chunk_rows != plan.every {
                    return Err(OpError::msg(format!(
                        "the interrupted run planned {} steps in chunks of {}, this one {} in chunks of {}; re-run with --force {node}",
                        m.input_rows, m.chunk_rows, plan.steps, plan.every
                    )));
                }
                m.chunks.iter().map(|c| c.input_end).max().unwrap_or(0)
            }
            None => 0,
        };
        let scratch = Scratch {
            dir: self.scratch_dir()?,
            fingerprint: self.fingerprint().to_string(),
            keep_files: plan.keep_files.clone(),
        };
        let resume = scratch
            .list::<S, R>()
            .into_iter()
            .rev()
            .find(|s| s.state.step >= committed);
        if committed > 0 && resume.is_none() {
            return Err(OpError::msg(format!(
                "{committed} steps are committed but their checkpoint in {} is missing; re-run with --force {node}",
                scratch.dir.display()
            )));
        }
        if resume.is_none() {
            scratch.prune::<S, R>(0);
        }
        Ok(Checkpoints {
            plan,
            scratch,
            committed,
            resume,
        })
    }
}

impl<S, R> Checkpoints<S, R>
where
    S: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    /// Steps done by the checkpoint the run resumes from; `None` for a fresh start.
    pub fn resumes_from(&self) -> Option<u64> {
        self.resume.as_ref().map(|s| s.state.step)
    }

    /// Loads the checkpoint to resume from (committing its rows if the interrupted run
    /// did not), then does the remaining steps: a checkpoint and a committed chunk every
    /// `plan.every` steps and after the last. Stops with [`OpError::Cancelled`] before a
    /// step when Ctrl-C was pressed.
    pub fn run<J>(self, ctx: &mut RunContext, job: &mut J) -> Result<(), OpError>
    where
        J: Checkpointed<State = S, Row = R>,
    {
        let Checkpoints {
            plan,
            scratch,
            committed,
            resume,
        } = self;
        let mut start = 0;
        if let Some(Saved { dir, state }) = resume {
            job.load(&dir, state.step, &state.node)?;
            start = state.step;
            if state.step > committed {
                // Killed between writing the checkpoint and committing its rows.
                let first = state.step.checked_sub(state.pending.len() as u64);
                if state.pending.is_empty() || first != Some(committed) {
                    return Err(OpError::msg(format!(
                        "checkpoint at step {} does not follow the {committed} committed steps; re-run with --force {}",
                        state.step, ctx.node_id()
                    )));
                }
                commit(ctx, job, &plan, committed, state.step, &state.pending)?;
            }
            ctx.log(&format!(
                "resuming from the checkpoint at step {}",
                state.step
            ));
        }

        ctx.progress().set_total(plan.steps);
        ctx.progress().set_done(start);
        let mut pending = Vec::new();
        let mut interval_start = start;
        for step in start..plan.steps {
            if cancel_requested() {
                return Err(OpError::Cancelled);
            }
            pending.push(job.step(ctx, step)?);
            ctx.progress().inc(1);
            let done = step + 1;
            if done % plan.every == 0 || done == plan.steps {
                let rows = scratch.write(job, done, plan.steps, std::mem::take(&mut pending))?;
                commit(ctx, job, &plan, interval_start, done, &rows)?;
                interval_start = done;
                scratch.prune::<S, R>(plan.keep);
            }
        }
        Ok(())
    }
}

/// Commits the rows of steps `from..to` as the chunk of their interval.
fn commit<J: Checkpointed>(
    ctx: &mut RunContext,
    job: &J,
    plan: &StepPlan,
    from: u64,
    to: u64,
    rows: &[J::Row],
) -> Result<(), OpError> {
    let out = job.output(ctx, rows)?;
    ctx.commit_chunk(
        from / plan.every,
        from as usize..to as usize,
        plan.every as usize,
        plan.steps as usize,
        out,
    )
}

/// The scratch directory of one fingerprint.
#[derive(Debug)]
struct Scratch {
    dir: PathBuf,
    fingerprint: String,
    keep_files: Vec<String>,
}

impl Scratch {
    /// Complete checkpoints of this fingerprint, oldest first.
    fn list<S: DeserializeOwned, R: DeserializeOwned>(&self) -> Vec<Saved<S, R>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(CHECKPOINT_PREFIX) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(e.path().join(STATE_FILE)) else {
                continue;
            };
            let Ok(state) = serde_json::from_str::<CheckpointState<S, R>>(&text) else {
                continue;
            };
            if state.fingerprint == self.fingerprint {
                out.push(Saved {
                    dir: e.path(),
                    state,
                });
            }
        }
        out.sort_by_key(|s| s.state.step);
        out
    }

    /// Writes the checkpoint after `done` steps into a temporary directory, then renames
    /// it into place. Gives the rows back for their commit.
    fn write<J: Checkpointed>(
        &self,
        job: &mut J,
        done: u64,
        total_steps: u64,
        pending: Vec<J::Row>,
    ) -> Result<Vec<J::Row>, OpError> {
        let name = checkpoint_name(done);
        let tmp = self.dir.join(format!(".tmp-{name}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let node = job.save(&tmp, done)?;
        let state = CheckpointState {
            fingerprint: self.fingerprint.clone(),
            step: done,
            total_steps,
            node,
            pending,
        };
        let text = serde_json::to_string_pretty(&state)
            .map_err(|e| OpError::context("checkpoint state", e))?;
        std::fs::write(tmp.join(STATE_FILE), text).map_err(io_err(&tmp))?;
        sync_dir(&tmp);
        let dst = self.dir.join(&name);
        if dst.exists() {
            std::fs::remove_dir_all(&dst).map_err(io_err(&dst))?;
        }
        std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        sync_dir(&self.dir);
        Ok(state.pending)
    }

    /// Keeps the newest `keep` checkpoints and the kept files; removes everything else
    /// (older checkpoints, temporary directories, other configurations' files). Best
    /// effort: a file that cannot be removed now is removed by a later prune.
    fn prune<S: DeserializeOwned, R: DeserializeOwned>(&self, keep: usize) {
        let ckpts = self.list::<S, R>();
        let kept: Vec<PathBuf> = ckpts[ckpts.len().saturating_sub(keep)..]
            .iter()
            .map(|s| s.dir.clone())
            .collect();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if kept.contains(&path) || self.keep_files.contains(&name) {
                continue;
            }
            if path.is_dir() {
                let _ = std::fs::remove_dir_all(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpError + '_ {
    move |source| {
        OpError::Store(StoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Flushes a directory's files to disk (best effort).
fn sync_dir(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(f) = std::fs::File::open(e.path()) {
            let _ = f.sync_all();
        }
    }
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::{NodeProgress, Progress, ProgressMode};
    use crate::store::{Manifest, NodeDir, NodeState};
    use arrow::array::{ArrayRef, AsArray, RecordBatch, UInt64Array};
    use arrow::datatypes::UInt64Type;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// A job whose state is one number: each step mixes the step into it, so a resume
    /// from the wrong state or position gives different rows.
    #[derive(Default)]
    struct Counter {
        value: u64,
        fail_at: Option<u64>,
        stepped: Vec<u64>,
        loaded: Option<u64>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Note {
        saved_at: u64,
    }

    impl Checkpointed for Counter {
        type Row = u64;
        type State = Note;

        fn step(&mut self, _ctx: &mut RunContext, step: u64) -> Result<u64, OpError> {
            if self.fail_at == Some(step) {
                return Err(OpError::msg(format!("step {step} failed")));
            }
            self.stepped.push(step);
            self.value = self.value.wrapping_mul(31).wrapping_add(step + 1);
            Ok(self.value)
        }

        fn save(&mut self, dir: &Path, done: u64) -> Result<Note, OpError> {
            std::fs::write(dir.join("value"), self.value.to_string()).unwrap();
            Ok(Note { saved_at: done })
        }

        fn load(&mut self, dir: &Path, done: u64, state: &Note) -> Result<(), OpError> {
            assert_eq!(state.saved_at, done);
            let text = std::fs::read_to_string(dir.join("value")).unwrap();
            self.value = text.parse().unwrap();
            self.loaded = Some(done);
            Ok(())
        }

        fn output(&self, ctx: &mut RunContext, rows: &[u64]) -> Result<ChunkOutput, OpError> {
            ctx.set_metric("last", serde_json::json!(rows.last()));
            let col = Arc::new(UInt64Array::from(rows.to_vec())) as ArrayRef;
            Ok(RecordBatch::try_from_iter(vec![("value", col)])?.into())
        }
    }

    const STEPS: u64 = 7;

    fn plan() -> StepPlan {
        StepPlan {
            steps: STEPS,
            every: 3,
            keep: 2,
            keep_files: vec!["cache.bin".into()],
        }
    }

    struct Node {
        dir: tempfile::TempDir,
        _progress: Progress,
        bar: NodeProgress,
    }

    impl Node {
        fn new() -> Self {
            let progress = Progress::new(ProgressMode::Quiet);
            let bar = progress.node("n", "steps");
            Self {
                dir: tempfile::tempdir().unwrap(),
                _progress: progress,
                bar,
            }
        }

        fn store(&self) -> NodeDir {
            NodeDir::new(self.dir.path(), "n")
        }

        fn scratch(&self) -> PathBuf {
            self.store().path.join("scratch")
        }

        /// Runs the node as the executor would: from what is committed on disk.
        fn run(&self, job: &mut Counter, plan: StepPlan) -> Result<Manifest, OpError> {
            let log = |_: &str| {};
            let manifest = self.store().read_manifest().unwrap();
            let mut ctx = RunContext::new(
                "n".into(),
                "t".into(),
                1,
                "fp".into(),
                0,
                "cpu".into(),
                self.dir.path().to_path_buf(),
                BTreeMap::new(),
                &self.bar,
                manifest,
                &log,
            );
            let ckpts = ctx.checkpoints::<Note, u64>(plan)?;
            ckpts.run(&mut ctx, job)?;
            ctx.finish()
        }

        fn values(&self) -> Vec<u64> {
            let store = self.store();
            let m = store.read_manifest().unwrap().unwrap();
            let t = store.read_table(&m, "").unwrap();
            t.column(0).as_primitive::<UInt64Type>().values().to_vec()
        }

        fn checkpoints(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.scratch())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }

        /// As if the run had been killed after the last checkpoint, before its commit.
        fn uncommit_last_chunk(&self) {
            let store = self.store();
            let mut m = store.read_manifest().unwrap().unwrap();
            let last = m.chunks.pop().unwrap();
            for f in &last.files {
                *m.rows.get_mut(&f.table).unwrap() -= f.rows;
            }
            m.state = NodeState::Partial;
            store.write_manifest(&m).unwrap();
        }
    }

    /// The rows of an uninterrupted run.
    fn clean_values() -> Vec<u64> {
        let node = Node::new();
        node.run(&mut Counter::default(), plan()).unwrap();
        node.values()
    }

    #[test]
    fn a_run_commits_one_chunk_per_interval_and_keeps_the_newest_checkpoints() {
        let node = Node::new();
        // Leftovers of an earlier configuration; the cache is the node's to keep.
        let scratch = node.scratch();
        std::fs::create_dir_all(scratch.join(".tmp-ckpt-000000009")).unwrap();
        std::fs::write(scratch.join("cache.bin"), b"c").unwrap();
        std::fs::write(scratch.join("stale.parquet"), b"s").unwrap();
        let mut job = Counter::default();
        let m = node.run(&mut job, plan()).unwrap();
        assert_eq!(job.stepped, (0..STEPS).collect::<Vec<_>>());
        assert_eq!(job.loaded, None);
        let ranges: Vec<_> = m
            .chunks
            .iter()
            .map(|c| (c.index, c.input_start, c.input_end))
            .collect();
        assert_eq!(ranges, [(0, 0, 3), (1, 3, 6), (2, 6, 7)]);
        assert_eq!((m.chunk_rows, m.input_rows), (3, STEPS));
        assert_eq!(node.values().len(), STEPS as usize);
        assert_eq!(m.metrics["last"], serde_json::json!(node.values()[6]));
        assert_eq!(
            node.checkpoints(),
            ["cache.bin", "ckpt-000000006", "ckpt-000000007"]
        );
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(scratch.join("ckpt-000000007").join(STATE_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            state,
            serde_json::json!({
                "fingerprint": "fp", "step": 7, "total_steps": 7, "saved_at": 7,
                "pending": [node.values()[6]],
            })
        );
    }

    #[test]
    fn a_failed_run_resumes_from_its_last_checkpoint_with_the_same_rows() {
        let node = Node::new();
        let mut job = Counter {
            fail_at: Some(4),
            ..Counter::default()
        };
        let err = node.run(&mut job, plan()).unwrap_err();
        assert!(err.to_string().contains("step 4 failed"), "{err}");
        assert_eq!(node.values().len(), 3, "the first interval stays committed");
        let mut job = Counter::default();
        node.run(&mut job, plan()).unwrap();
        assert_eq!(job.loaded, Some(3));
        assert_eq!(job.stepped, (3..STEPS).collect::<Vec<_>>());
        assert_eq!(node.values(), clean_values());
    }

    #[test]
    fn rows_of_a_checkpoint_that_was_not_committed_are_committed_on_resume() {
        let node = Node::new();
        node.run(&mut Counter::default(), plan()).unwrap();
        node.uncommit_last_chunk();
        let mut job = Counter::default();
        let m = node.run(&mut job, plan()).unwrap();
        assert_eq!(job.loaded, Some(7));
        assert!(job.stepped.is_empty(), "nothing is recomputed");
        assert_eq!(m.chunks.len(), 3);
        assert_eq!(node.values(), clean_values());

        // Without that checkpoint, its interval is recomputed from the one before.
        node.uncommit_last_chunk();
        std::fs::remove_dir_all(node.scratch().join("ckpt-000000007")).unwrap();
        let mut job = Counter::default();
        node.run(&mut job, plan()).unwrap();
        assert_eq!((job.loaded, job.stepped), (Some(6), vec![6]));
        assert_eq!(node.values(), clean_values());
    }

    #[test]
    fn a_changed_plan_or_a_missing_checkpoint_is_refused() {
        let node = Node::new();
        node.run(&mut Counter::default(), plan()).unwrap();
        node.uncommit_last_chunk();
        let other = StepPlan { every: 2, ..plan() };
        let err = node.run(&mut Counter::default(), other).unwrap_err();
        assert!(
            err.to_string().contains(
                "the interrupted run planned 7 steps in chunks of 3, this one 7 in chunks of 2; re-run with --force n"
            ),
            "{err}"
        );
        for name in ["ckpt-000000006", "ckpt-000000007"] {
            std::fs::remove_dir_all(node.scratch().join(name)).unwrap();
        }
        let err = node.run(&mut Counter::default(), plan()).unwrap_err();
        assert!(
            err.to_string()
                .contains("6 steps are committed but their checkpoint in"),
            "{err}"
        );
    }

    #[test]
    fn checkpoints_of_another_fingerprint_or_unreadable_are_not_resumed() {
        let node = Node::new();
        let scratch = node.scratch();
        let foreign = scratch.join(checkpoint_name(3));
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("value"), "5").unwrap();
        let state = r#"{"fingerprint": "other", "step": 3, "total_steps": 7, "saved_at": 3, "pending": [1, 2, 3]}"#;
        std::fs::write(foreign.join(STATE_FILE), state).unwrap();
        let broken = scratch.join(checkpoint_name(6));
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join(STATE_FILE), "{\"fingerprint\": \"fp\"").unwrap();
        let mut job = Counter::default();
        node.run(&mut job, plan()).unwrap();
        assert_eq!(job.loaded, None);
        assert_eq!(node.values(), clean_values());
        assert_eq!(node.checkpoints(), ["ckpt-000000006", "ckpt-000000007"]);
    }

    #[test]
    fn state_json_has_the_engine_fields_around_the_nodes_own() {
        let state = CheckpointState {
            fingerprint: "fp".to_string(),
            step: 3,
            total_steps: 7,
            node: Note { saved_at: 3 },
            pending: vec![1u64, 2, 3],
        };
        let text = serde_json::to_string_pretty(&state).unwrap();
        assert_eq!(
            text,
            "{\n  \"fingerprint\": \"fp\",\n  \"step\": 3,\n  \"total_steps\": 7,\n  \"saved_at\": 3,\n  \"pending\": [\n    1,\n    2,\n    3\n  ]\n}"
        );
        let back: CheckpointState<Note, u64> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
    }
}
