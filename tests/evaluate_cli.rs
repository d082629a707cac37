//! `evaluate` through the CLI on two built-in models: killed (`kill -9`) in the middle of
//! its chunks, resumed, and equal — per-sample rows and summary — to an uninterrupted run;
//! the end-of-run summary is printed.

mod common;

use std::process::Stdio;

use common::*;

const SPEC: &str = r#"
name: eval
seed: 5
models:
  base: {builtin: tiny-synth}
  same: {builtin: tiny-synth, dtype: fp32}
nodes:
  problems:
    op: source
    params: {synth: {task: arithmetic, n: 8, seed: 2}}
  eval:
    op: evaluate
    inputs: {prompts: problems, models: [base, same]}
    params: {split: all, samples: 2, temperature: 1.0, max_new_tokens: 24, chunk_rows: 1, batch_size: 2}
"#;

#[test]
fn evaluate_killed_and_resumed_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(p.join("eval.yaml"), SPEC).expect("spec");
    let clean = run_ok(p, &["eval.yaml", "--run-dir", "clean"]);
    assert!(
        clean.contains("accuracy and response length per model"),
        "{clean}"
    );

    let mut child = spawn(p, &["eval.yaml", "--run-dir", "killed"], Stdio::null());
    wait_for(&p.join("killed/eval/manifest.json"), 120);
    let killed_mid_way = child.try_wait().expect("wait").is_none();
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert!(
        killed_mid_way,
        "evaluate finished before it could be killed"
    );
    let status = stdout(&sspo(p, &["status", "eval.yaml", "--run-dir", "killed"]));
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("eval") && l.contains("partial")),
        "{status}"
    );
    let resumed = run_ok(p, &["eval.yaml", "--run-dir", "killed"]);
    assert_eq!(
        action_of(&resumed, "eval").as_deref(),
        Some("resumed"),
        "{resumed}"
    );
    assert!(resumed.contains("same"), "{resumed}");

    for (table, key) in [("eval", "model, id, sample"), ("eval_summary", "model")] {
        let q = format!("select * from {table} order by {key}");
        assert_eq!(
            sql_csv(p, "clean", &q),
            sql_csv(p, "killed", &q),
            "{table} differs"
        );
    }
    let q = "select count(*) from eval";
    assert_eq!(sql_csv(p, "clean", q).lines().nth(1), Some("32"));
    assert!(p.join("killed/eval/report.md").is_file());
}
