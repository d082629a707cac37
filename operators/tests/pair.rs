//! `pair` through the engine: hand-written `rollouts` / `steps` / `values` tables (served
//! by a test-only `fixture` operator) → pairs and the `advantages` extra table, counted
//! bad rows, chunking, plan-time column checks and SQL on the outputs; then a smoke run
//! on real `generate → segment → probe` output of the built-in `tiny-test` model.

mod common;
use common::*;

#[path = "../src/pair/fixtures.rs"]
mod fixtures;
use fixtures::{broken_recheck, f64s, ints, list_f32, list_i32, list_strs, overthinker, Rollout};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use serde::Deserialize;
use sspo_engine::store::NodeDir;
use sspo_engine::{
    Columns, ConfigureContext, Diagnostics, NodeKernel, OpError, Operator, Params, Pipeline, Plan,
    Port, ProgressMode, Registry, RunContext, RunOptions,
};

// ---------------------------------------------------------------------------------------
// A test-only operator serving in-memory tables, and a runner with it registered.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureParams {
    table: String,
}

struct Fixture(BTreeMap<String, RecordBatch>);

struct FixtureKernel {
    name: String,
    batch: RecordBatch,
}

impl Operator for Fixture {
    fn name(&self) -> &'static str {
        "fixture"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "a hand-written table (tests)"
    }
    fn ports(&self) -> &'static [Port] {
        &[]
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: FixtureParams = params.parse()?;
        let batch = self
            .0
            .get(&p.table)
            .cloned()
            .ok_or_else(|| Diagnostics::from(params.error(&["table"], "no such fixture")))?;
        Ok(Arc::new(FixtureKernel {
            name: p.table,
            batch,
        }))
    }
}

impl NodeKernel for FixtureKernel {
    fn params_json(&self) -> serde_json::Value {
        serde_json::json!({"table": self.name, "content": format!("{:?}", self.batch)})
    }
    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::exact(
            self.batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone()),
        )
    }
    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let n = self.batch.num_rows();
        ctx.run_chunks(n, n.max(1), |_, _| Ok(self.batch.clone().into()))
    }
}

fn registry(tables: &Tables) -> Registry {
    let mut r = sspo_operators::registry();
    r.register(Arc::new(Fixture(tables.clone())));
    r
}

fn plan(dir: &Path, yaml: &str, tables: &Tables) -> Result<Plan, String> {
    let spec = dir.join("pipeline.yaml");
    std::fs::write(&spec, yaml).map_err(|e| e.to_string())?;
    let pipeline = Pipeline::from_text(yaml, &spec, &[]).map_err(|d| d.to_string())?;
    Plan::build(pipeline, &registry(tables)).map_err(|d| d.to_string())
}

fn run_with(dir: &Path, yaml: &str, tables: &Tables) -> Result<PathBuf, String> {
    let plan = plan(dir, yaml, tables)?;
    let run_dir = dir.join("run");
    sspo_engine::run(
        &plan,
        &RunOptions {
            run_dir: run_dir.clone(),
            force: vec![],
            until: None,
            progress: ProgressMode::Quiet,
            keep_scratch: false,
            remote: None,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(run_dir)
}

fn extra_table(run_dir: &Path, node: &str, table: &str) -> RecordBatch {
    let d = NodeDir::new(run_dir, node);
    let m = d.read_manifest().unwrap().unwrap();
    d.read_table(&m, table).unwrap()
}

// ---------------------------------------------------------------------------------------
// Hand-written input tables.

type Tables = BTreeMap<String, RecordBatch>;

/// `rollouts`, `steps` and `values` of the rollouts (with a two-kind probe's value
/// columns), plus `values_min` (no early answers) and `values_one_kind` (early answers,
/// no per-kind value columns).
fn tables(rs: &[Rollout]) -> Tables {
    let (rollouts, steps, values) = fixtures::tables(rs);
    let mut t = Tables::new();
    t.insert("rollouts".into(), rollouts);
    t.insert("steps".into(), steps);
    t.insert("values_min".into(), values.project(&[0, 1, 2]).unwrap());
    t.insert(
        "values_one_kind".into(),
        values.project(&[0, 1, 2, 3, 4]).unwrap(),
    );
    t.insert("values".into(), values);
    t
}

/// Incorrect and truncated: its last step holds no answer.
fn truncated<'a>(rid: &'a str, id: &'a str) -> Rollout<'a> {
    let mut r = overthinker(rid, id);
    r.correct = Some(false);
    r.steps[3] = ("Hmm, let me look at it once more", Some(9));
    r
}

fn fixture_set() -> Tables {
    let mut no_values = overthinker("b#0", "b");
    no_values.values.clear();
    let mut nan = overthinker("b#1", "b");
    nan.values[2].1 = Some(f64::NAN);
    let mut gap = overthinker("b#2", "b");
    gap.values.remove(4);
    tables(&[
        overthinker("q#0", "q"),
        broken_recheck("q#1", "q"),
        truncated("q#2", "q"),
        no_values,
        nan,
        gap,
        overthinker("b#3", "b"),
        broken_recheck("r#0", "r"),
    ])
}

const PIPELINE: &str = r#"name: pair-test
seed: 5
nodes:
  rollouts: {op: fixture, params: {table: rollouts}}
  steps: {op: fixture, params: {table: steps}}
  values: {op: fixture, params: {table: values}}
  pairs:
    op: pair
    inputs: {rollouts: rollouts, steps: steps, values: values}
    params: PARAMS
"#;

fn pipeline(params: &str) -> String {
    PIPELINE.replace("PARAMS", params)
}

// ---------------------------------------------------------------------------------------
// Column readers.

/// A text column of a SQL result (DataFusion may give Utf8View).
fn sql_strings(b: &RecordBatch, col: &str) -> Vec<String> {
    let c = arrow::compute::cast(
        b.column_by_name(col).unwrap(),
        &arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    let s = c.as_string::<i32>();
    (0..s.len()).map(|i| s.value(i).to_string()).collect()
}

fn row_of(b: &RecordBatch, pair_id: &str) -> usize {
    strings(b, "pair_id")
        .iter()
        .position(|p| p == pair_id)
        .unwrap_or_else(|| panic!("no pair {pair_id}: {:?}", strings(b, "pair_id")))
}

/// The invariants every pair satisfies.
fn check_pair_invariants(b: &RecordBatch) {
    for row in 0..b.num_rows() {
        for side in ["chosen", "rejected"] {
            let steps = list_strs(b, &format!("{side}_steps"), row);
            assert_eq!(steps.concat(), strings(b, side)[row], "{side} of row {row}");
            assert_eq!(steps.len(), list_f32(b, &format!("{side}_adv"), row).len());
            assert_eq!(
                steps.len(),
                list_i32(b, &format!("{side}_tokens"), row).len()
            );
        }
        let cs = list_strs(b, "chosen_steps", row);
        let rs = list_strs(b, "rejected_steps", row);
        let shared = ints(b, "prefix_steps")[row].unwrap() as usize;
        assert_eq!(cs[..shared], rs[..shared]);
        assert!(shared == cs.len().min(rs.len()) || cs[shared] != rs[shared]);
        let ct = list_i32(b, "chosen_tokens", row);
        assert_eq!(
            ints(b, "prefix_tokens")[row].unwrap(),
            ct[..shared].iter().map(|&t| t as i64).sum::<i64>()
        );
        assert_ne!(cs, rs, "chosen differs from rejected");
    }
}

// ---------------------------------------------------------------------------------------

#[test]
fn pairs_and_advantages_through_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let t = fixture_set();
    let run_dir = run_with(dir.path(), &pipeline("{lambda: 0.5}"), &t).unwrap();
    let (pairs, m) = table(&run_dir, "pairs");
    check_pair_invariants(&pairs);
    // Compression: q#0 (k* = 1), q#1 (k* = 1, 13 → 12), b#3, r#0; q#2 is truncated.
    // Outcome: q (q#0 against q#1 or q#2); b has no incorrect rollout; r no correct one.
    let mut ids = strings(&pairs, "pair_id");
    ids.sort();
    assert_eq!(ids, ["b#3/c", "q#0/c", "q#1/c", "q/o/0", "r#0/c"]);

    let q1 = row_of(&pairs, "q#1/c");
    assert_eq!(strings(&pairs, "kind")[q1], "compression");
    assert_eq!(
        strings(&pairs, "chosen")[q1],
        "5 + 7 = 12.\n\nSo the final answer is \\boxed{12}."
    );
    assert_eq!(
        strings(&pairs, "rejected")[q1],
        "5 + 7 = 12.\n\nCheck: 5 + 8 = 13, so it is 13.\n\nSo the final answer is \\boxed{13}."
    );
    assert_eq!(ints(&pairs, "cut_step")[q1], Some(1));
    // 42 tokens − (10 + 12) = 20.
    assert_eq!(ints(&pairs, "saved_tokens")[q1], Some(20));
    assert_eq!(ints(&pairs, "prefix_tokens")[q1], Some(10));
    assert_eq!(list_i32(&pairs, "chosen_tokens", q1), [10, 12]);
    assert_eq!(strings(&pairs, "prompt")[q1], "What is 5 + 7? (q)");
    assert_eq!(
        strings(&pairs, "context")[q1],
        "Question: What is 5 + 7? (q)\nAnswer:"
    );
    assert_eq!(strings(&pairs, "chosen_rollout")[q1], "q#1");
    assert_eq!(strings(&pairs, "rejected_rollout")[q1], "q#1");

    let o = row_of(&pairs, "q/o/0");
    assert_eq!(strings(&pairs, "chosen_rollout")[o], "q#0");
    assert_eq!(strings(&pairs, "kind")[o], "outcome");
    assert_eq!(ints(&pairs, "saved_tokens")[o], None);
    assert_eq!(ints(&pairs, "cut_step")[o], None);

    // The advantages table: q#0, q#1, q#2, b#3, r#0 (4 + 3 + 4 + 4 + 3 steps).
    let adv = extra_table(&run_dir, "pairs", "advantages");
    assert_eq!(adv.num_rows(), 18);
    let rid = strings(&adv, "rollout_id");
    let q0: Vec<usize> = (0..adv.num_rows()).filter(|&i| rid[i] == "q#0").collect();
    assert_eq!(
        q0.iter()
            .map(|&i| ints(&adv, "step")[i])
            .collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3), Some(4)]
    );
    // By hand (c = 0.01, γ = 1, λ = 0.5), tokens 10, 15, 12, 6, V = 0.1, 0.8, 0.85, 0.9:
    //   r = −0.1, −0.15, −0.12, 0.94;  δ = 0.6, −0.1, −0.07, 0.04
    //   A4 = 0.04, A3 = −0.05, A2 = −0.125, A1 = 0.6 − 0.0625 = 0.5375
    let a = f64s(&adv, "advantage");
    let d = f64s(&adv, "delta");
    for (&i, (want_a, want_d)) in
        q0.iter()
            .zip([(0.5375, 0.6), (-0.125, -0.1), (-0.05, -0.07), (0.04, 0.04)])
    {
        assert!((a[i] - want_a).abs() < 1e-12, "A: {} vs {want_a}", a[i]);
        assert!((d[i] - want_d).abs() < 1e-12, "δ: {} vs {want_d}", d[i]);
    }
    // Â is relative per query: mean 0 over the 11 steps of q.
    let rel = f64s(&adv, "rel_advantage");
    let ids = strings(&adv, "id");
    let q_rel: Vec<f64> = (0..adv.num_rows())
        .filter(|&i| ids[i] == "q")
        .map(|i| rel[i])
        .collect();
    assert_eq!(q_rel.len(), 11);
    assert!(q_rel.iter().sum::<f64>().abs() < 1e-9);
    // The chosen steps carry the rollout's Â; the concluding step 0.
    let ca = list_f32(&pairs, "chosen_adv", row_of(&pairs, "q#0/c"));
    assert_eq!(ca.len(), 2);
    assert!((ca[0] as f64 - rel[q0[0]]).abs() < 1e-6);
    assert_eq!(ca[1], 0.0);

    // Counted rows.
    let c = |k: &str| m.counters.get(k).copied().unwrap_or(0);
    assert_eq!(c("rollouts_without_values"), 1);
    assert_eq!(c("nan_values"), 1);
    assert_eq!(c("missing_values"), 1);
    assert_eq!(c("compression_no_final_answer"), 1);
    assert_eq!(m.metrics["compression_pairs_this_run"], 4);
    assert_eq!(m.metrics["outcome_pairs_this_run"], 1);

    // SQL on both tables, as in docs/operators/pair.md.
    let q = |sql: &str| sspo_engine::sql::query(&run_dir, sql).unwrap();
    let by_kind = q("SELECT kind, count(*) AS n, avg(saved_tokens) AS saved FROM pairs GROUP BY kind ORDER BY kind");
    let b = &by_kind[0];
    assert_eq!(sql_strings(b, "kind"), ["compression", "outcome"]);
    assert_eq!(ints(b, "n"), [Some(4), Some(1)]);
    let worst = q(
        "SELECT rollout_id, step, rel_advantage FROM pairs_advantages \
                   WHERE id = 'q' ORDER BY rel_advantage LIMIT 1",
    );
    assert_eq!(worst.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let lens = q("SELECT pair_id, array_length(chosen_steps) AS k FROM pairs WHERE kind = 'compression' ORDER BY pair_id");
    assert_eq!(ints(&lens[0], "k"), [Some(2), Some(2), Some(2), Some(2)]);
    let n_rows = |b: &[RecordBatch]| b.iter().map(|b| b.num_rows()).sum::<usize>();
    let joined = q("SELECT a.rollout_id, a.step, a.rel_advantage, s.text \
         FROM pairs_advantages a JOIN steps s ON a.rollout_id = s.rollout_id AND a.step = s.step \
         WHERE a.id = 'q' ORDER BY a.rel_advantage LIMIT 5");
    assert_eq!(n_rows(&joined), 5);
    let cuts = q(
        "SELECT cut_step, array_length(rejected_steps) AS k, saved_tokens \
         FROM pairs WHERE kind = 'compression' ORDER BY saved_tokens DESC LIMIT 20",
    );
    assert_eq!(n_rows(&cuts), 4);
    let lonely = q(
        "SELECT r.id FROM rollouts r LEFT JOIN pairs p ON r.id = p.id \
         GROUP BY r.id HAVING count(p.pair_id) = 0",
    );
    assert_eq!(n_rows(&lonely), 0);
}

#[test]
fn chunking_by_query_does_not_change_the_rows() {
    let t = fixture_set();
    let one = tempfile::tempdir().unwrap();
    let many = tempfile::tempdir().unwrap();
    let a = run_with(one.path(), &pipeline("{chunk_rows: 1}"), &t).unwrap();
    let b = run_with(many.path(), &pipeline("{chunk_rows: 100}"), &t).unwrap();
    let (pa, ma) = table(&a, "pairs");
    let (pb, mb) = table(&b, "pairs");
    assert_eq!(pa, pb);
    assert_eq!(ma.chunks.len(), 3, "one chunk per query (q, b, r)");
    assert_eq!(mb.chunks.len(), 1);
    assert_eq!(
        extra_table(&a, "pairs", "advantages"),
        extra_table(&b, "pairs", "advantages")
    );
    assert_eq!(ma.counters, mb.counters);
}

#[test]
fn random_cuts_are_seeded_and_reproducible() {
    let t = fixture_set();
    let params = "{cut: random, kinds: [compression], min_saving: 1}";
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let a = run_with(d1.path(), &pipeline(params), &t).unwrap();
    let b = run_with(d2.path(), &pipeline(params), &t).unwrap();
    let (pa, ma) = table(&a, "pairs");
    let (pb, _) = table(&b, "pairs");
    assert_eq!(pa, pb);
    check_pair_invariants(&pa);
    // Only correct rollouts are cut: q#0, b#3; the incorrect ones are counted.
    let mut ids = strings(&pa, "pair_id");
    ids.sort();
    assert_eq!(ids, ["b#3/c", "q#0/c"], "{:?}", ma.counters);
    assert_eq!(ma.counters["compression_incorrect_rollouts"], 3);
    for row in 0..pa.num_rows() {
        let cut = ints(&pa, "cut_step")[row].unwrap();
        assert!((1..=2).contains(&cut), "cut {cut} in 1..=K−2");
        let steps = list_strs(&pa, "chosen_steps", row);
        assert_eq!(steps.len() as i64, cut + 1);
        assert_eq!(steps.last().unwrap(), "The answer is 12.");
        assert_eq!(strings(&pa, "cut")[row], "random");
    }
    // Random cuts do not need early answers: a values table without them plans and runs.
    let d3 = tempfile::tempdir().unwrap();
    let yaml = pipeline(params).replace("{table: values}", "{table: values_min}");
    let c = run_with(d3.path(), &yaml, &t).unwrap();
    assert_eq!(table(&c, "pairs").0, pa);
}

#[test]
fn missing_columns_are_reported_at_plan_time() {
    let t = fixture_set();
    let dir = tempfile::tempdir().unwrap();
    let yaml = pipeline("{}").replace("{table: values}", "{table: values_min}");
    let err = plan(dir.path(), &yaml, &t).err().unwrap();
    assert!(
        err.contains("early_correct") && err.contains("early_answer"),
        "{err}"
    );
    // Outcome pairs only: no early answers needed.
    let yaml = pipeline("{kinds: [outcome]}").replace("{table: values}", "{table: values_min}");
    assert!(plan(dir.path(), &yaml, &t).is_ok());
    // Cutting on a per-kind value needs a two-kind probe's column, reported at the input.
    let one_kind =
        |params: &str| pipeline(params).replace("{table: values}", "{table: values_one_kind}");
    let err = plan(dir.path(), &one_kind("{cut_value: verbal}"), &t)
        .err()
        .unwrap();
    assert!(
        err.contains("pipeline.yaml:9:") && err.contains("column `verbal_value` on port `values`"),
        "{err}"
    );
    assert!(!err.contains("answer_value"), "{err}");
    assert!(plan(dir.path(), &one_kind("{}"), &t).is_ok());
    assert!(plan(dir.path(), &pipeline("{cut_value: min}"), &t).is_ok());
    // A steps table without `n_tokens`; a misspelt param.
    let mut t2 = t.clone();
    let steps = t2["steps"].project(&[0, 1, 2]).unwrap();
    t2.insert("steps".into(), steps);
    let err = plan(dir.path(), &pipeline("{}"), &t2).err().unwrap();
    assert!(err.contains("n_tokens"), "{err}");
    let err = plan(dir.path(), &pipeline("{lamda: 0.9}"), &t)
        .err()
        .unwrap();
    assert!(err.contains("did you mean `lambda`"), "{err}");
}

#[test]
fn untokenised_steps_fail_the_run_clearly() {
    let mut rs = vec![overthinker("q#0", "q")];
    for s in &mut rs[0].steps {
        s.1 = None;
    }
    let t = tables(&rs);
    let dir = tempfile::tempdir().unwrap();
    let err = run_with(dir.path(), &pipeline("{}"), &t).err().unwrap();
    assert!(
        err.contains("n_tokens") && err.contains("tokenizer"),
        "{err}"
    );
}

#[test]
fn verbal_values_cannot_drive_vvp_cuts() {
    let mut r = overthinker("q#0", "q");
    for v in &mut r.values {
        v.2 = None;
        v.3 = None;
    }
    let t = tables(&[r]);
    let dir = tempfile::tempdir().unwrap();
    let err = run_with(dir.path(), &pipeline("{}"), &t).err().unwrap();
    assert!(
        err.contains("early_correct") && err.contains("kind: answer"),
        "{err}"
    );
}

/// Real upstream tables: tiny-test (random weights) generates, `segment` counts tokens
/// with the model's byte tokenizer, `probe` gives values and early answers, `pair` runs.
/// With random weights few pairs exist; the point is that the contract holds end to end.
#[test]
fn pair_after_generate_segment_probe() {
    let dir = tempfile::tempdir().unwrap();
    sspo_operators::model_port::write_byte_tokenizer(&dir.path().join("tok")).unwrap();
    std::fs::write(
        dir.path().join("q.jsonl"),
        "{\"question\": \"What is 3 + 4?\", \"answer\": \"7\"}\n{\"question\": \"What is 2 * 5?\", \"answer\": \"10\"}\n",
    )
    .unwrap();
    let yaml = r#"name: e2e-pair
seed: 3
device: cpu
models:
  base: {builtin: tiny-test}
nodes:
  problems: {op: source, params: {path: q.jsonl}}
  rollouts:
    op: generate
    inputs: {prompts: problems, model: base}
    params: {samples: 3, max_new_tokens: 24, prompt_template: "Question: {prompt}\nAnswer:"}
  steps:
    op: segment
    inputs: {traces: rollouts}
    params: {regex: "(?s).{6}", tokenizer: tok/tokenizer.json}
  values:
    op: probe
    inputs: {steps: steps, rollouts: rollouts, model: base}
    params: {kind: answer, early_answer_tokens: 3}
  pairs:
    op: pair
    inputs: {rollouts: rollouts, steps: steps, values: values}
    params: {tau: 0.0, min_saving: 1}
"#;
    let run_dir = run(dir.path(), yaml).unwrap();
    let (steps, _) = table(&run_dir, "steps");
    let (pairs, m) = table(&run_dir, "pairs");
    check_pair_invariants(&pairs);
    assert_eq!(m.state, sspo_engine::store::NodeState::Complete);
    let adv = extra_table(&run_dir, "pairs", "advantages");
    // Every step of every rollout has an advantage (no bad rows upstream).
    assert_eq!(
        adv.num_rows(),
        steps.num_rows(),
        "counters: {:?}",
        m.counters
    );
    for v in f64s(&adv, "rel_advantage") {
        assert!(v.is_finite());
    }
}
