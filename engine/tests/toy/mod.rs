//! Toy operators for the engine's integration tests: no model, no torch, a few lines
//! each, with knobs to interrupt or hold a run from the test.
//!
//! - `count` (source): `n = offset + i` for `i` in `0..rows`, in chunks of `chunk_rows`;
//! - `double` (on port `rows`): `n = factor * n` of the input, and the input's `n` as
//!   `input`; it leaves a file per chunk in its scratch directory;
//! - `tally` (on port `rows`): the input's `n`, and an extra table `summary` (the row
//!   count `count_n` and sum `sum_n`) committed after the chunks; `tally_b` writes it
//!   as `b_summary`;
//! - `steps` (source, checkpointed): `steps` rows, each a running value that depends on
//!   every step before it, checkpointed every `every` steps.

#![allow(dead_code)] // shared by several test crates, each using a part of it

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::Int64Type;
use serde::{Deserialize, Serialize};
use sspo_engine::ChunkOutput;
use sspo_engine::{
    Checkpointed, Columns, ConfigureContext, Diagnostics, NodeKernel, OpError, Operator, Params,
    Pipeline, Plan, Port, ProgressMode, Registry, RunContext, RunOptions, StepPlan,
};

/// What a test can do to running toy nodes, and what it can see of them.
#[derive(Default)]
pub struct Knobs {
    /// `(node, chunk)`: that node stops, as if interrupted, before computing that chunk
    /// (the chunks before it are committed). Cleared when it fires.
    pub interrupt: Mutex<Option<(String, usize)>>,
    /// Held by the next `count` node that runs: it says so and waits for the release.
    pub gate: Mutex<Option<Gate>>,
    /// `(node, first input row)` of every chunk computed, in order.
    pub computed: Mutex<Vec<(String, usize)>>,
}

pub struct Gate {
    pub entered: Sender<()>,
    pub release: Receiver<()>,
}

impl Knobs {
    /// The chunks computed so far, as `(node, first row)`, and forgets them.
    pub fn take_computed(&self) -> Vec<(String, usize)> {
        std::mem::take(&mut *lock(&self.computed))
    }

    /// The chunk loop's closure for every toy node: honours the interrupt, records the
    /// chunk.
    fn chunk_starts(
        &self,
        node: &str,
        range: &Range<usize>,
        chunk_rows: usize,
    ) -> Result<(), OpError> {
        let chunk = range.start / chunk_rows.max(1);
        let mut interrupt = lock(&self.interrupt);
        if interrupt.as_ref() == Some(&(node.to_string(), chunk)) {
            *interrupt = None;
            return Err(OpError::Cancelled);
        }
        lock(&self.computed).push((node.to_string(), range.start));
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registry of the toy operators, sharing `knobs`.
pub fn registry(knobs: &Arc<Knobs>) -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(Count(knobs.clone())));
    r.register(Arc::new(Double(knobs.clone())));
    r.register(Arc::new(Tally {
        name: "tally",
        table: "summary",
        knobs: knobs.clone(),
    }));
    r.register(Arc::new(Steps(knobs.clone())));
    r.register(Arc::new(Tally {
        name: "tally_b",
        table: "b_summary",
        knobs: knobs.clone(),
    }));
    r
}

/// The plan of `yaml` (as file `p.yaml`), or its diagnostics as text.
pub fn plan(yaml: &str, registry: &Registry) -> Result<Plan, String> {
    let pipeline =
        Pipeline::from_text(yaml, Path::new("p.yaml"), &[]).map_err(|d| d.to_string())?;
    Plan::build(pipeline, registry).map_err(|d| d.to_string())
}

/// Run options for `run_dir`, quiet.
pub fn options(run_dir: &Path) -> RunOptions {
    RunOptions {
        run_dir: run_dir.to_path_buf(),
        force: Vec::new(),
        until: None,
        progress: ProgressMode::Quiet,
        keep_scratch: false,
        remote: None,
    }
}

/// The `n` column of a batch.
pub fn ints(batch: &RecordBatch, column: &str) -> Vec<i64> {
    batch
        .column_by_name(column)
        .map(|c| c.as_primitive::<Int64Type>().values().to_vec())
        .unwrap_or_default()
}

fn int_batch(columns: Vec<(&str, Vec<i64>)>) -> Result<RecordBatch, OpError> {
    let columns = columns
        .into_iter()
        .map(|(name, values)| (name, Arc::new(Int64Array::from(values)) as ArrayRef));
    Ok(RecordBatch::try_from_iter(columns)?)
}

/// The `n` column of the table on port `rows`.
fn input_n(ctx: &RunContext) -> Result<Vec<i64>, OpError> {
    let table = ctx.input_table("rows")?;
    let col = table
        .column_by_name("n")
        .ok_or_else(|| OpError::msg("input has no column `n`"))?;
    let col = col
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| OpError::msg("column `n` is not an integer"))?;
    Ok((0..col.len()).map(|i| col.value(i)).collect())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CountParams {
    rows: usize,
    offset: i64,
    chunk_rows: usize,
}

impl Default for CountParams {
    fn default() -> Self {
        Self {
            rows: 10,
            offset: 0,
            chunk_rows: 3,
        }
    }
}

struct Count(Arc<Knobs>);

struct CountKernel {
    params: CountParams,
    fingerprinted: serde_json::Value,
    knobs: Arc<Knobs>,
}

impl Operator for Count {
    fn name(&self) -> &'static str {
        "count"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "the integers offset..offset+rows"
    }
    fn ports(&self) -> &'static [Port] {
        &[]
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: CountParams = params.parse()?;
        Ok(Arc::new(CountKernel {
            fingerprinted: params.fingerprint_json(&p, &[])?,
            params: p,
            knobs: self.0.clone(),
        }))
    }
}

impl NodeKernel for CountKernel {
    fn params_json(&self) -> serde_json::Value {
        self.fingerprinted.clone()
    }
    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::exact(["n"])
    }
    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let gate = lock(&self.knobs.gate).take();
        if let Some(gate) = gate {
            let _ = gate.entered.send(());
            let _ = gate.release.recv();
        }
        let p = &self.params;
        ctx.run_chunks(p.rows, p.chunk_rows, |ctx, range| {
            self.knobs
                .chunk_starts(ctx.node_id(), &range, p.chunk_rows)?;
            let n = range.map(|i| p.offset + i as i64).collect();
            Ok(int_batch(vec![("n", n)])?.into())
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DoubleParams {
    factor: i64,
    chunk_rows: usize,
}

impl Default for DoubleParams {
    fn default() -> Self {
        Self {
            factor: 2,
            chunk_rows: 4,
        }
    }
}

struct Double(Arc<Knobs>);

struct DoubleKernel {
    params: DoubleParams,
    fingerprinted: serde_json::Value,
    knobs: Arc<Knobs>,
}

const ROWS: &[Port] = &[Port::table("rows", "a table with an integer column `n`")];

impl Operator for Double {
    fn name(&self) -> &'static str {
        "double"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "factor * n, and n as `input`"
    }
    fn ports(&self) -> &'static [Port] {
        ROWS
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: DoubleParams = params.parse()?;
        Ok(Arc::new(DoubleKernel {
            fingerprinted: params.fingerprint_json(&p, &[])?,
            params: p,
            knobs: self.0.clone(),
        }))
    }
}

impl NodeKernel for DoubleKernel {
    fn params_json(&self) -> serde_json::Value {
        self.fingerprinted.clone()
    }
    fn required_columns(&self) -> Vec<(&'static str, Vec<String>)> {
        vec![("rows", vec!["n".into()])]
    }
    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::exact(["n", "input"])
    }
    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let n = input_n(ctx)?;
        let p = &self.params;
        ctx.run_chunks(n.len(), p.chunk_rows, |ctx, range| {
            self.knobs
                .chunk_starts(ctx.node_id(), &range, p.chunk_rows)?;
            // What a resumable node keeps between runs (a checkpoint, say).
            let marker = ctx.scratch_dir()?.join(format!("chunk-{}", range.start));
            std::fs::write(&marker, b"").map_err(|e| OpError::context("scratch", e))?;
            let input = n[range].to_vec();
            let doubled = input.iter().map(|x| p.factor * x).collect();
            Ok(int_batch(vec![("n", doubled), ("input", input)])?.into())
        })
    }
}

/// `tally` and `tally_b`: the same operator under two names, with different extra tables.
struct Tally {
    name: &'static str,
    table: &'static str,
    knobs: Arc<Knobs>,
}

struct TallyKernel {
    table: &'static str,
    knobs: Arc<Knobs>,
}

impl Operator for Tally {
    fn name(&self) -> &'static str {
        self.name
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "the input's rows, and their count and sum as an extra table"
    }
    fn ports(&self) -> &'static [Port] {
        ROWS
    }
    fn configure(
        &self,
        _params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        Ok(Arc::new(TallyKernel {
            table: self.table,
            knobs: self.knobs.clone(),
        }))
    }
}

impl NodeKernel for TallyKernel {
    fn params_json(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::exact(["n"])
    }
    fn extra_tables(&self) -> Vec<&'static str> {
        vec![self.table]
    }
    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let n = input_n(ctx)?;
        ctx.run_chunks(n.len(), 5, |ctx, range| {
            self.knobs.chunk_starts(ctx.node_id(), &range, 5)?;
            Ok(int_batch(vec![("n", n[range].to_vec())])?.into())
        })?;
        let all = ints(&ctx.committed_table("")?, "n");
        let summary = int_batch(vec![
            ("count_n", vec![all.len() as i64]),
            ("sum_n", vec![all.iter().sum()]),
        ])?;
        ctx.commit_final(vec![(self.table.to_string(), summary)])
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct StepsParams {
    steps: u64,
    every: u64,
}

impl Default for StepsParams {
    fn default() -> Self {
        Self { steps: 7, every: 3 }
    }
}

struct Steps(Arc<Knobs>);

struct StepsKernel {
    params: StepsParams,
    fingerprinted: serde_json::Value,
    knobs: Arc<Knobs>,
}

impl Operator for Steps {
    fn name(&self) -> &'static str {
        "steps"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "a running value per step, checkpointed"
    }
    fn ports(&self) -> &'static [Port] {
        &[]
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: StepsParams = params.parse()?;
        Ok(Arc::new(StepsKernel {
            fingerprinted: params.fingerprint_json(&p, &[])?,
            params: p,
            knobs: self.0.clone(),
        }))
    }
}

impl NodeKernel for StepsKernel {
    fn params_json(&self) -> serde_json::Value {
        self.fingerprinted.clone()
    }
    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::exact(["n"])
    }
    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let checkpoints = ctx.checkpoints::<StepState, i64>(StepPlan {
            steps: self.params.steps,
            every: self.params.every,
            keep: 2,
            keep_files: Vec::new(),
        })?;
        let mut job = StepJob {
            value: 0,
            knobs: self.knobs.clone(),
        };
        checkpoints.run(ctx, &mut job)
    }
}

#[derive(Serialize, Deserialize)]
struct StepState {
    value: i64,
}

struct StepJob {
    value: i64,
    knobs: Arc<Knobs>,
}

impl Checkpointed for StepJob {
    type Row = i64;
    type State = StepState;

    fn step(&mut self, ctx: &mut RunContext, step: u64) -> Result<i64, OpError> {
        lock(&self.knobs.computed).push((ctx.node_id().to_string(), step as usize));
        self.value = (self.value * 31 + step as i64 + 1) % 1_000_003;
        Ok(self.value)
    }
    fn save(&mut self, _dir: &Path, _done: u64) -> Result<StepState, OpError> {
        Ok(StepState { value: self.value })
    }
    fn load(&mut self, _dir: &Path, _done: u64, state: &StepState) -> Result<(), OpError> {
        self.value = state.value;
        Ok(())
    }
    fn output(&self, _ctx: &mut RunContext, rows: &[i64]) -> Result<ChunkOutput, OpError> {
        Ok(int_batch(vec![("n", rows.to_vec())])?.into())
    }
}
