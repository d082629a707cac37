//! The store's integrity through the `sspo-run` binary: runs killed (SIGKILL) or
//! stopped (SIGTERM) at chosen writes of a commit, a write that fails, a truncated part,
//! a part with flipped bytes, a manifest of a newer format; `status`, `sql` and `verify`
//! on each, and a resume whose tables equal a clean run's.
//!
//! The kill points come from the test-only fail point `SSPO_FAILPOINT` (the engine's
//! `failpoints` feature, on in test builds only): the N-th atomic write of the process
//! pauses after its temp file is written and before its rename, and tells the test so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

const PIPELINE: &str = r#"
name: integrity
seed: 5
nodes:
  problems:
    op: source
    params:
      path: data.jsonl
      columns: {prompt: question}
      chunk_rows: 40
  steps:
    op: segment
    inputs: {traces: problems}
    params: {column: answer_text, chunk_rows: 30}
"#;

const TABLES: &[(&str, &str)] = &[
    ("problems", "select * from problems order by id"),
    ("steps", "select * from steps order by id, step"),
];

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_gsm8k_like(&dir.path().join("data.jsonl"), 200);
    std::fs::write(dir.path().join("p.yaml"), PIPELINE).expect("write spec");
    run_ok(dir.path(), &["p.yaml", "--run-dir", "clean"]);
    dir
}

/// `sspo-run args` with `SSPO_FAILPOINT` set.
fn with_failpoint(dir: &Path, spec: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).current_dir(dir).env("SSPO_FAILPOINT", spec);
    c
}

/// Every table of run dir `run` equals the clean run's, and `verify` passes.
fn assert_equals_clean(dir: &Path, run: &str) {
    for (table, q) in TABLES {
        assert!(
            sql_csv(dir, "clean", q) == sql_csv(dir, run, q),
            "table {table} of {run} differs from a clean run's"
        );
    }
    let v = sspo(dir, &["verify", run]);
    assert!(v.status.success(), "{}{}", stdout(&v), stderr(&v));
    assert!(stdout(&v).contains(": ok: 2 node(s)"), "{}", stdout(&v));
}

fn status_text(dir: &Path, run: &str) -> String {
    stdout(&sspo(dir, &["status", "p.yaml", "--run-dir", run]))
}

/// The path of part `file` of `node` in run dir `run`.
fn part(dir: &Path, run: &str, node: &str, file: &str) -> PathBuf {
    dir.join(run).join(node).join(file)
}

fn failed(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure: {}", stdout(o));
    format!("{}{}", stdout(o), stderr(o))
}

#[test]
fn killed_or_stopped_at_chosen_writes_then_resumed_equals_a_clean_run() {
    let dir = setup();
    let p = dir.path();
    // The run's writes: the source's parts and manifests, then the segment's. The kill
    // points fall before part renames and before manifest renames, in both nodes.
    for (k, nth) in [1, 2, 3, 4, 7, 12, 15, 18, 23].into_iter().enumerate() {
        let run = format!("killed-{nth}");
        let marker = p.join(format!("paused-at-{nth}"));
        let spec = format!("pause:{nth}:{}", marker.display());
        let mut child = with_failpoint(p, &spec, &["p.yaml", "--run-dir", run.as_str()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        // Not a timing: the child says when it stands at the write.
        while !marker.exists() {
            if let Some(st) = child.try_wait().expect("wait") {
                panic!("the run ended ({st}) before its write {nth}");
            }
            std::thread::park_timeout(std::time::Duration::from_millis(5));
        }
        let sigterm = k % 2 == 1;
        let signal = if sigterm { "TERM" } else { "KILL" };
        let sent = Command::new("kill")
            .args(["-s", signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let out = child.wait_with_output().expect("reap");
        if sigterm {
            // SIGTERM is an interrupt: the paused write finishes, and the run stops
            // after the chunk it was committing, with 130.
            assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
            assert!(stderr(&out).contains("interrupted during node"));
        } else {
            assert_eq!(out.status.code(), None, "killed by a signal");
        }
        let st = status_text(p, &run);
        assert!(!st.contains("damaged") && !st.contains("stale"), "{st}");
        let v = sspo(p, &["verify", run.as_str()]);
        assert!(v.status.success(), "after write {nth}: {}", stdout(&v));

        let out = run_ok(p, &["p.yaml", "--run-dir", run.as_str()]);
        assert!(!out.contains("repaired"), "{out}");
        assert_equals_clean(p, &run);
        // Nothing half-written is left behind.
        for (path, _) in part_files(&p.join(&run)) {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            assert!(name.starts_with("part-"), "{}", path.display());
        }
    }
}

#[test]
fn a_write_that_fails_mid_commit_is_reported_and_the_rerun_finishes() {
    let dir = setup();
    let p = dir.path();
    let o = with_failpoint(p, "error:6", &["p.yaml", "--run-dir", "failed"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("injected write failure"),
        "{}",
        stderr(&o)
    );
    run_ok(p, &["p.yaml", "--run-dir", "failed"]);
    assert_equals_clean(p, "failed");
}

#[test]
fn a_truncated_part_shows_in_status_sql_and_verify_and_the_next_run_repairs_it() {
    let dir = setup();
    let p = dir.path();
    run_ok(p, &["p.yaml", "--run-dir", "run"]);
    let bad = part(p, "run", "steps", "part-00002.parquet");
    std::fs::write(&bad, b"garbage").expect("truncate");
    let bad_text = Path::new("run/steps/part-00002.parquet")
        .display()
        .to_string();

    let st = status_text(p, "run");
    assert!(st.contains("damaged"), "{st}");
    assert!(
        st.contains("node `steps`, chunk 2") && st.contains(&bad_text),
        "{st}"
    );

    let text = failed(&sspo(p, &["sql", "run", "select count(*) from steps"]));
    assert!(
        text.contains("node `steps`, chunk 2") && text.contains(&bad_text),
        "{text}"
    );

    for source in ["run", "p.yaml"] {
        let mut args = vec!["verify", source];
        if source == "p.yaml" {
            args.extend(["--run-dir", "run"]);
        }
        let o = sspo(p, &args);
        assert_eq!(o.status.code(), Some(1));
        let out = stdout(&o);
        assert!(
            out.contains("FAILED node `steps`, chunk 2")
                && out.contains(&bad_text)
                && out.contains("has 7 bytes"),
            "{out}"
        );
        assert!(stderr(&o).contains("1 failure(s)"), "{}", stderr(&o));
    }
    let o = sspo(p, &["verify", "run", "--node", "problems"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let o = sspo(p, &["verify", "run", "--node", "step"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("did you mean `steps`"),
        "{}",
        stderr(&o)
    );

    let out = run_ok(p, &["p.yaml", "--run-dir", "run"]);
    assert_eq!(
        action_of(&out, "steps").as_deref(),
        Some("repaired"),
        "{out}"
    );
    assert!(out.contains("recomputing chunk 2 of `steps`"), "{out}");
    assert_equals_clean(p, "run");
}

#[test]
fn flipped_bytes_fail_verify_and_a_run_that_reads_the_part_repairs_it() {
    let dir = setup();
    let p = dir.path();
    run_ok(p, &["p.yaml", "--run-dir", "run"]);
    let bad = part(p, "run", "problems", "part-00001.parquet");
    let mut bytes = std::fs::read(&bad).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&bad, &bytes).expect("flip");

    let o = sspo(p, &["verify", "run"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("FAILED node `problems`, chunk 1") && stdout(&o).contains("blake3"),
        "{}",
        stdout(&o)
    );
    // `steps` reads `problems`: forcing it makes the run hash what it reads.
    let out = run_ok(p, &["p.yaml", "--run-dir", "run", "--force", "steps"]);
    assert_eq!(
        action_of(&out, "problems").as_deref(),
        Some("repaired"),
        "{out}"
    );
    assert_equals_clean(p, "run");
}

#[test]
fn a_run_dir_of_a_newer_format_is_refused_and_left_alone() {
    let dir = setup();
    let p = dir.path();
    run_ok(p, &["p.yaml", "--run-dir", "run"]);
    let manifest = p.join("run/steps/manifest.json");
    let text = std::fs::read_to_string(&manifest).expect("read");
    let newer = text.replacen("\"format\": 1", "\"format\": 7", 1);
    std::fs::write(&manifest, &newer).expect("write");
    let before = part_files(&p.join("run"));

    let expected = "written by a newer sspo-run (format 7, this binary reads ≤ 1)";
    for args in [
        vec!["p.yaml", "--run-dir", "run"],
        vec!["p.yaml", "--run-dir", "run", "--force", "problems"],
        vec!["status", "p.yaml", "--run-dir", "run"],
        vec!["sql", "run", "select 1"],
        vec!["verify", "run"],
    ] {
        let text = failed(&sspo(p, &args));
        assert!(text.contains(expected), "{args:?}: {text}");
    }
    assert_eq!(std::fs::read_to_string(&manifest).expect("read"), newer);
    assert_eq!(part_files(&p.join("run")), before, "no part was touched");
}
