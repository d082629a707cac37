//! End-to-end tests of the engine through the `sspo-run` binary: caching, invalidation,
//! kill -9 and resume, run-dir locking, SQL.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PIPELINE: &str = r#"
name: cli
seed: 3
nodes:
  problems:
    op: source
    params:
      path: data.jsonl
      columns: {prompt: question}
      split: {test_fraction: 0.25}
  steps:
    op: segment
    inputs: {traces: problems}
    params: {column: answer_text}
  lines:
    op: segment
    inputs: {traces: problems}
    params: {column: answer_text, delimiter: "\n"}
"#;

fn setup(rows: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_gsm8k_like(&dir.path().join("data.jsonl"), rows);
    std::fs::write(dir.path().join("p.yaml"), PIPELINE).expect("write spec");
    dir
}

#[test]
fn rerun_is_fully_cached_and_rewrites_nothing() {
    let dir = setup(200);
    let first = run_ok(dir.path(), &["p.yaml"]);
    for node in ["problems", "steps", "lines"] {
        assert_eq!(action_of(&first, node).as_deref(), Some("ran"), "{first}");
    }
    let before = part_files(&dir.path().join("runs/cli"));
    assert!(before.len() >= 3);
    std::thread::sleep(Duration::from_millis(20));
    let second = run_ok(dir.path(), &["p.yaml"]);
    for node in ["problems", "steps", "lines"] {
        assert_eq!(
            action_of(&second, node).as_deref(),
            Some("cached"),
            "{second}"
        );
    }
    assert_eq!(
        before,
        part_files(&dir.path().join("runs/cli")),
        "part files were rewritten"
    );
    let status = stdout(&sspo(dir.path(), &["status", "p.yaml"]));
    assert_eq!(status.matches(" cached ").count(), 3, "{status}");
}

#[test]
fn a_changed_param_recomputes_only_that_node_and_its_descendants() {
    let dir = setup(100);
    run_ok(dir.path(), &["p.yaml"]);
    // A param of one leaf: only that leaf.
    let set = "--set=nodes.steps.params.min_chars=40";
    let status = stdout(&sspo(dir.path(), &["status", "p.yaml", set]));
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("steps") && l.contains("stale")),
        "{status}"
    );
    let out = run_ok(dir.path(), &["p.yaml", set]);
    assert_eq!(action_of(&out, "problems").as_deref(), Some("cached"));
    assert_eq!(action_of(&out, "steps").as_deref(), Some("ran"));
    assert_eq!(action_of(&out, "lines").as_deref(), Some("cached"));
    // A param of the root: everything downstream.
    let out = run_ok(
        dir.path(),
        &["p.yaml", set, "--set", "nodes.problems.params.limit=50"],
    );
    for node in ["problems", "steps", "lines"] {
        assert_eq!(action_of(&out, node).as_deref(), Some("ran"), "{out}");
    }
    let n = sql_csv(dir.path(), "runs/cli", "select count(*) as n from problems");
    assert_eq!(n.lines().nth(1), Some("50"));
    // --force recomputes a cached node and its descendants; --until stops early.
    let out = run_ok(
        dir.path(),
        &[
            "p.yaml",
            set,
            "--set",
            "nodes.problems.params.limit=50",
            "--force",
            "steps",
        ],
    );
    assert_eq!(action_of(&out, "problems").as_deref(), Some("cached"));
    assert_eq!(action_of(&out, "steps").as_deref(), Some("ran"));
    let out = run_ok(dir.path(), &["p.yaml", "--until", "problems"]);
    assert_eq!(action_of(&out, "problems").as_deref(), Some("ran"));
    assert_eq!(action_of(&out, "steps"), None, "{out}");
}

#[test]
fn kill_dash_nine_then_resume_gives_the_same_tables_as_a_clean_run() {
    let dir = setup(60_000);
    let p = dir.path();
    let small_chunks = [
        "--set",
        "nodes.steps.params.chunk_rows=500",
        "--set",
        "nodes.lines.params.chunk_rows=500",
    ];
    // Reference: an uninterrupted run in its own run dir.
    let mut args = vec!["p.yaml", "--run-dir", "clean"];
    args.extend(small_chunks);
    let t0 = Instant::now();
    run_ok(p, &args);
    let clean_secs = t0.elapsed().as_secs_f64();

    // Interrupted runs: kill -9 at spread-out moments, then finish.
    let mut killed_mid_way = 0;
    for fraction in [0.15, 0.4, 0.7] {
        let mut args: Vec<&str> = ["p.yaml", "--run-dir", "killed"].to_vec();
        args.extend(small_chunks);
        let mut child = spawn(p, &args, Stdio::null());
        std::thread::sleep(Duration::from_secs_f64(clean_secs * fraction));
        if child.try_wait().expect("wait").is_none() {
            killed_mid_way += 1;
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }
    assert!(
        killed_mid_way >= 2,
        "runs finished before they could be killed"
    );
    let mut args = vec!["status", "p.yaml", "--run-dir", "killed"];
    args.extend(small_chunks);
    let status = stdout(&sspo(p, &args));
    assert!(!status.contains("stale"), "{status}");
    let mut args = vec!["p.yaml", "--run-dir", "killed"];
    args.extend(small_chunks);
    run_ok(p, &args);

    for (table, key) in [
        ("problems", "id"),
        ("steps", "id, step"),
        ("lines", "id, step"),
    ] {
        let q = format!("select * from {table} order by {key}");
        let a = sql_csv(p, "clean", &q);
        let b = sql_csv(p, "killed", &q);
        assert!(a.lines().count() > 1000 || table == "problems");
        assert!(a == b, "table {table} differs after kill + resume");
    }
    // Nothing half-written is left behind.
    for (path, _) in part_files(&p.join("killed")) {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with("part-"), "{name}");
    }
}

#[test]
fn a_second_run_on_a_busy_run_dir_is_refused_at_once() {
    let dir = setup(60_000);
    let p = dir.path();
    let mut first = spawn(
        p,
        &["p.yaml", "--set", "nodes.steps.params.chunk_rows=200"],
        Stdio::null(),
    );
    // Wait until the first run has started writing.
    wait_for(&p.join("runs/cli/problems/manifest.json"), 60);
    let t0 = Instant::now();
    let second = sspo(p, &["p.yaml"]);
    let waited = t0.elapsed();
    let still_running = first.try_wait().expect("wait").is_none();
    first.kill().ok();
    first.wait().ok();
    assert!(
        still_running,
        "the first run ended before the second started; the test proves nothing"
    );
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("in use by another sspo-run process"),
        "{}",
        stderr(&second)
    );
    assert!(
        waited < Duration::from_secs(10),
        "the second run waited instead of failing"
    );
}

#[test]
fn sql_answers_match_counts_of_the_input() {
    let rows = 400;
    let dir = setup(rows);
    let p = dir.path();
    run_ok(p, &["p.yaml"]);
    // Independent counts from the generator's structure: row i has 2 + i % 4 steps
    // (plus the final `####` line) and level i % 3.
    let expected_steps: usize = (0..rows).map(|i| 2 + i % 4 + 1).sum();
    let out = sql_csv(
        p,
        "p.yaml",
        "select count(*) as n, count(distinct id) as ids from steps",
    );
    assert_eq!(
        out.lines().nth(1),
        Some(format!("{expected_steps},{rows}").as_str()),
        "{out}"
    );
    let out = sql_csv(
        p,
        "p.yaml",
        "select level, count(*) as n from problems group by level order by level",
    );
    let want: Vec<String> = (0..3)
        .map(|l| format!("{l},{}", (0..rows).filter(|i| i % 3 == l).count()))
        .collect();
    assert_eq!(out.lines().skip(1).collect::<Vec<_>>(), want, "{out}");
    // Steps joined back to their problems: every step belongs to a problem.
    let out = sql_csv(
        p,
        "p.yaml",
        "select count(*) from steps s left join problems p on s.id = p.id where p.id is null",
    );
    assert_eq!(out.lines().nth(1), Some("0"));
    // Split is a partition with roughly the requested fraction.
    let out = sql_csv(
        p,
        "p.yaml",
        "select sum(case when split = 'test' then 1 else 0 end) as t, count(*) as n from problems",
    );
    let fields: Vec<usize> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split(',')
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(fields.len(), 2);
    assert_eq!(fields[1], rows);
    assert!((60..140).contains(&fields[0]), "test rows: {}", fields[0]);
    // JSON output parses and has the same count.
    let o = sspo(
        p,
        &[
            "sql",
            "p.yaml",
            "select id from problems",
            "--format",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(rows));
    // `show` limits rows.
    let o = sspo(
        p,
        &[
            "show", "runs/cli", "steps", "--limit", "3", "--format", "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(3));
}

#[test]
fn sql_sees_a_partial_node() {
    let dir = setup(60_000);
    let p = dir.path();
    let mut child = spawn(
        p,
        &["p.yaml", "--set", "nodes.steps.params.chunk_rows=300"],
        Stdio::null(),
    );
    let manifest = p.join("runs/cli/steps/manifest.json");
    wait_for(&manifest, 60);
    child.kill().ok();
    child.wait().ok();
    let status = stdout(&sspo(
        p,
        &[
            "status",
            "p.yaml",
            "--set",
            "nodes.steps.params.chunk_rows=300",
        ],
    ));
    if status
        .lines()
        .any(|l| l.starts_with("steps") && l.contains("partial"))
    {
        let out = sql_csv(p, "runs/cli", "select count(*) from steps");
        let n: usize = out.lines().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
        assert!(n > 0, "a partial node's committed rows are queryable");
    }
    assert!(Path::new(&manifest).exists());
}

#[test]
fn the_synthetic_task_is_a_source_with_ground_truth_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(
        p.join("s.yaml"),
        "nodes:\n  problems:\n    op: source\n    params:\n      synth: {task: arithmetic, n: 300, seed: 5}\n      split: {test_fraction: 0.2}\n  steps: {op: segment, inputs: {traces: problems}, params: {column: trace}}\n",
    )
    .expect("spec");
    run_ok(p, &["s.yaml", "--run-dir", "a"]);
    run_ok(p, &["s.yaml", "--run-dir", "b"]);
    let q = "select * from problems order by id";
    assert_eq!(sql_csv(p, "a", q), sql_csv(p, "b", q), "not deterministic");
    let out = sql_csv(
        p,
        "a",
        "select count(*), sum(case when oracle_tokens <= trace_tokens then 1 else 0 end), \
         sum(case when trace_correct then 1 else 0 end) from problems",
    );
    let v: Vec<usize> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split(',')
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(v[0], 300);
    assert_eq!(v[1], 300, "the oracle is never longer than the trace");
    assert!(
        v[2] > 150 && v[2] < 300,
        "the base traces have real mistakes: {} of 300 correct",
        v[2]
    );
    // Every problem has steps, and the steps rebuild each trace.
    let out = sql_csv(
        p,
        "a",
        "select count(*) from problems p join (select id, string_agg(text, '' order by step) as t from steps group by id) s \
         on p.id = s.id where p.trace = s.t",
    );
    assert_eq!(out.lines().nth(1), Some("300"));
}

#[test]
fn ctrl_c_commits_the_current_chunk_and_exits_130() {
    let dir = setup(60_000);
    let p = dir.path();
    let args = [
        "p.yaml",
        "--set",
        "nodes.steps.params.chunk_rows=300",
        "--progress",
        "log",
    ];
    let child = spawn(p, &args, Stdio::piped());
    let manifest = p.join("runs/cli/steps/manifest.json");
    wait_for(&manifest, 60);
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT")
        .success();
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(interrupted);
    if out.status.code() == Some(0) {
        // The run finished before the signal landed: nothing to check.
        return;
    }
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted during node `steps`"), "{err}");
    let status = stdout(&sspo(
        p,
        &[
            "status",
            "p.yaml",
            "--set",
            "nodes.steps.params.chunk_rows=300",
        ],
    ));
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("steps") && l.contains("partial")),
        "{status}"
    );
    let resumed = run_ok(p, &args);
    assert_eq!(
        action_of(&resumed, "steps").as_deref(),
        Some("resumed"),
        "{resumed}"
    );
    let a = sql_csv(
        p,
        "runs/cli",
        "select count(*), count(distinct id) from steps",
    );
    run_ok(
        p,
        &[
            "p.yaml",
            "--run-dir",
            "clean",
            "--set",
            "nodes.steps.params.chunk_rows=300",
        ],
    );
    assert_eq!(
        a,
        sql_csv(p, "clean", "select count(*), count(distinct id) from steps")
    );
}

/// A JSONL file with a truncated object on line 2, an array on line 4 and a row without
/// an answer on line 7.
const SCRAPED: &str = r#####"{"question": "one", "answer": "#### 1"}
{"question": "two", "answer": "#### 2"
{"question": "three", "answer": "#### 3"}
[4, 4]

{"question": "five", "answer": "#### 5"}
{"question": "six"}
"#####;

#[test]
fn malformed_jsonl_lines_fail_at_their_line_or_are_skipped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(p.join("scraped.jsonl"), SCRAPED).expect("write data");
    let spec = |bad_rows: &str| {
        format!(
            "name: scraped\nnodes:\n  problems:\n    op: source\n    params: {{path: scraped.jsonl{bad_rows}}}\n"
        )
    };
    std::fs::write(p.join("fail.yaml"), spec("")).expect("write spec");
    std::fs::write(p.join("skip.yaml"), spec(", bad_rows: skip")).expect("write spec");

    // The default fails at the first malformed line, naming file and line.
    let o = sspo(p, &["fail.yaml"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("scraped.jsonl:2: invalid JSON"),
        "{}",
        stderr(&o)
    );

    // `skip` keeps the three good rows and records the two bad lines.
    let log = run_ok(p, &["skip.yaml"]);
    assert!(log.contains("2 malformed lines were skipped"), "{log}");
    // A count of one reads in the singular.
    assert!(
        log.contains("1 row without a usable answer was skipped"),
        "{log}"
    );
    let out = sql_csv(
        p,
        "skip.yaml",
        "select prompt from problems order by prompt",
    );
    assert_eq!(
        out.lines().skip(1).collect::<Vec<_>>(),
        ["five", "one", "three"]
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.join("runs/scraped/problems/manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    assert_eq!(manifest["counters"]["malformed_lines"], 2);
    let first: Vec<String> = manifest["metrics"]["malformed_lines_first"]
        .as_array()
        .expect("first lines")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first[0].ends_with("scraped.jsonl:2"), "{first:?}");
    assert!(first[1].ends_with("scraped.jsonl:4"), "{first:?}");

    // `skip` on a CSV file is refused before anything runs, at the param.
    std::fs::write(p.join("data.csv"), "question,answer\nq,1\n").expect("write csv");
    std::fs::write(
        p.join("csv.yaml"),
        "name: csv\nnodes:\n  problems:\n    op: source\n    params: {path: data.csv, bad_rows: skip}\n",
    )
    .expect("write spec");
    let o = sspo(p, &["validate", "csv.yaml"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("csv.yaml:5:"), "{err}");
    assert!(err.contains("is read as csv"), "{err}");
}
