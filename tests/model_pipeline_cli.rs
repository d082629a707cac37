//! generate → segment → probe through the CLI on the built-in tiny model: killed in the
//! middle of `generate`, resumed, and equal to an uninterrupted run; every rollout has
//! its steps and every step boundary a value in [0, 1].

mod common;

use std::process::Stdio;

use common::*;

const SPEC: &str = r#"
name: probe
seed: 11
models:
  base: {builtin: tiny-synth}
nodes:
  problems:
    op: source
    params: {synth: {task: arithmetic, n: 8, seed: 2}}
  rollouts:
    op: generate
    inputs: {prompts: problems, model: base}
    params: {samples: 2, max_new_tokens: 24, temperature: 1.0, chunk_rows: 1, batch_size: 4}
  steps:
    op: segment
    inputs: {traces: rollouts}
  values:
    op: probe
    inputs: {steps: steps, rollouts: rollouts, model: base}
    params: {kind: answer, chunk_rows: 4}
"#;

#[test]
fn generate_killed_and_resumed_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(p.join("probe.yaml"), SPEC).expect("spec");
    run_ok(p, &["probe.yaml", "--run-dir", "clean"]);

    let mut child = spawn(p, &["probe.yaml", "--run-dir", "killed"], Stdio::null());
    let manifest = p.join("killed/rollouts/manifest.json");
    wait_for(&manifest, 120);
    let killed_mid_way = child.try_wait().expect("wait").is_none();
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert!(
        killed_mid_way,
        "generate finished before it could be killed"
    );
    let status = stdout(&sspo(p, &["status", "probe.yaml", "--run-dir", "killed"]));
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("rollouts") && l.contains("partial")),
        "{status}"
    );
    let resumed = run_ok(p, &["probe.yaml", "--run-dir", "killed"]);
    assert_eq!(
        action_of(&resumed, "rollouts").as_deref(),
        Some("resumed"),
        "{resumed}"
    );

    for (table, key) in [
        ("rollouts", "rollout_id"),
        ("steps", "rollout_id, step"),
        ("\"values\"", "rollout_id, step"),
    ] {
        let q = format!("select * from {table} order by {key}");
        assert_eq!(
            sql_csv(p, "clean", &q),
            sql_csv(p, "killed", &q),
            "{table} differs"
        );
    }

    // Every rollout has steps; every rollout has boundaries 0..=K, each valued in [0, 1].
    let q = "select count(*) from rollouts r where not exists (select 1 from steps s where s.rollout_id = r.rollout_id) and length(trim(r.response)) > 0";
    assert_eq!(sql_csv(p, "clean", q).lines().nth(1), Some("0"));
    let q = "select count(*) from (select s.rollout_id, max(s.step) as k from steps s group by s.rollout_id) s \
             join (select rollout_id, count(*) as n, min(step) as lo, max(step) as hi, \
                   sum(case when value >= 0 and value <= 1 then 1 else 0 end) as ok from \"values\" group by rollout_id) v \
             on s.rollout_id = v.rollout_id where v.n = s.k + 1 and v.lo = 0 and v.hi = s.k and v.ok = v.n";
    let q_all = "select count(distinct rollout_id) from steps";
    assert_eq!(
        sql_csv(p, "clean", q).lines().nth(1),
        sql_csv(p, "clean", q_all).lines().nth(1)
    );
}
