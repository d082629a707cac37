//! Run directories on object storage, through the `sspo-run` binary against an
//! S3-compatible server on 127.0.0.1 (moto's server mode, started and stopped by each
//! test): a run on `s3://` equals a local run and reads back from any working copy; the
//! store holds exactly what the manifests list; four shards with their own working
//! copies (as on four machines), run two at a time and committed, equal a single-process
//! run; a shard killed mid-chunk leaves a stale lease that is reported and taken over,
//! and nothing is lost or duplicated; the same shard twice at once leaves one part per
//! chunk; two commits at once write one manifest; a missing chunk is refused; a live
//! lease keeps a second run out; no credential reaches the store or the logs; `file://`
//! works too.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};

use common::*;

const SPEC: &str = SHARD_SPEC;

const BUCKET: &str = "runs";
const SECRET: &str = "test-secret-key";

const TABLES: &[(&str, &str)] = SHARD_TABLES;

fn server_script() -> PathBuf {
    repo().join("tests/servers/s3_server.py")
}

/// The S3 server of one test; stopped when dropped (its stdin closes).
struct S3 {
    child: Child,
    stdin: Option<ChildStdin>,
    endpoint: String,
}

impl S3 {
    fn start() -> Self {
        let mut child = Command::new(python())
            .arg(server_script())
            .args(["serve", BUCKET])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the S3 server");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server says its port");
        let port = line
            .trim()
            .strip_prefix("port ")
            .unwrap_or_else(|| panic!("unexpected first line from the S3 server: {line:?}"));
        Self {
            child,
            stdin,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `sspo-run args` in `dir` with the store's environment, working copy `cache`.
    fn cmd(&self, dir: &Path, cache: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .args(["--cache-dir", cache])
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test-access-key")
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", "us-east-1")
            .env("SSPO_LEASE_TTL_S", "3")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, dir: &Path, cache: &str, args: &[&str]) -> Output {
        let o = self
            .cmd(dir, cache, args)
            .output()
            .expect("sspo-run starts");
        for text in [stdout(&o), stderr(&o)] {
            assert!(!text.contains(SECRET), "a credential in the output: {text}");
        }
        o
    }

    fn ok(&self, dir: &Path, cache: &str, args: &[&str]) -> String {
        let o = self.run(dir, cache, args);
        assert!(
            o.status.success(),
            "sspo-run {args:?} failed ({:?}):\n{}\n{}",
            o.status.code(),
            stdout(&o),
            stderr(&o)
        );
        stderr(&o)
    }

    fn sql(&self, dir: &Path, cache: &str, url: &str, q: &str) -> String {
        let o = self.run(dir, cache, &["sql", url, q, "--format", "csv"]);
        assert!(o.status.success(), "sql failed: {}", stderr(&o));
        stdout(&o)
    }

    fn client(&self, args: &[&str], body: Option<&[u8]>) -> Vec<u8> {
        let mut c = Command::new(python());
        c.arg(server_script())
            .arg(args[0])
            .arg(&self.endpoint)
            .arg(BUCKET)
            .args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("python starts");
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(b) = body {
            stdin.write_all(b).expect("write body");
        }
        drop(stdin);
        let o = child.wait_with_output().expect("client");
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o.stdout
    }

    /// Every object under `prefix`, with its size.
    fn objects(&self, prefix: &str) -> BTreeMap<String, u64> {
        String::from_utf8_lossy(&self.client(&["list", prefix], None))
            .lines()
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, n)| (k.to_string(), n.parse().unwrap_or(0)))
            .collect()
    }

    fn cat(&self, key: &str) -> Vec<u8> {
        self.client(&["cat", key], None)
    }

    fn put(&self, key: &str, body: &[u8]) {
        self.client(&["put", key], Some(body));
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

fn setup() -> (tempfile::TempDir, S3) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("p.yaml"), SPEC).expect("spec");
    run_ok(dir.path(), &["p.yaml", "--run-dir", "clean"]);
    (dir, S3::start())
}

/// Every table read through a fresh working copy equals the local run's.
fn assert_equals_clean(s3: &S3, dir: &Path, url: &str, cache: &str) {
    for (table, q) in TABLES {
        assert!(
            sql_csv(dir, "clean", q) == s3.sql(dir, cache, url, q),
            "table {table} of {url} differs from the local run's"
        );
    }
    let v = s3.run(dir, cache, &["verify", url]);
    assert!(v.status.success(), "{}", stdout(&v));
}

/// The part objects of `node` in run `run`.
fn part_objects(s3: &S3, run: &str, node: &str) -> Vec<String> {
    s3.objects(&format!("{run}/{node}/"))
        .into_keys()
        .filter(|k| k.ends_with(".parquet"))
        .collect()
}

fn shard(s3: &S3, dir: &Path, url: &str, cache: &str, shard: &str, node: &str) -> Command {
    let mut c = s3.cmd(
        dir,
        cache,
        &["p.yaml", "--run-dir", url, "--shard", shard, "--node", node],
    );
    c.stdout(Stdio::null());
    c
}

fn assert_ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}", stderr(o));
    stderr(o)
}

#[test]
fn a_run_on_s3_equals_a_local_run_and_the_store_holds_exactly_what_manifests_list() {
    let (dir, s3) = setup();
    let p = dir.path();
    let url = "s3://runs/one";
    let out = s3.ok(p, "m1", &["p.yaml", "--run-dir", url]);
    assert!(out.contains("run directory: s3://runs/one"), "{out}");
    assert_equals_clean(&s3, p, url, "m2");

    // The store holds the manifests and exactly the files they list: no lease, no temp
    // file, nothing unlisted.
    let objects = s3.objects("one/");
    let mut listed = std::collections::BTreeSet::new();
    for node in ["problems", "rollouts", "steps", "eval"] {
        let key = format!("one/{node}/manifest.json");
        let m: serde_json::Value = serde_json::from_slice(&s3.cat(&key)).expect("manifest");
        assert_eq!(m["state"], "complete");
        listed.insert(key);
        for chunk in m["chunks"].as_array().expect("chunks") {
            for f in chunk["files"].as_array().expect("files") {
                let key = format!("one/{node}/{}", f["file"].as_str().expect("file"));
                assert_eq!(objects.get(&key).copied(), f["bytes"].as_u64(), "{key}");
                listed.insert(key);
            }
        }
        for f in m["files"].as_array().into_iter().flatten() {
            let key = format!("one/{node}/{}", f["file"].as_str().expect("file"));
            assert_eq!(objects.get(&key).copied(), f["bytes"].as_u64(), "{key}");
            listed.insert(key);
        }
    }
    let stored: std::collections::BTreeSet<String> = objects.keys().cloned().collect();
    assert_eq!(stored, listed);
    assert!(stored.contains("one/eval/report.md"), "{stored:?}");
    for key in &stored {
        let body = String::from_utf8_lossy(&s3.cat(key)).into_owned();
        assert!(!body.contains(SECRET), "{key} holds a credential");
    }

    // A new working copy (another machine) finds every node cached.
    let again = s3.ok(p, "m3", &["p.yaml", "--run-dir", url]);
    for node in ["problems", "rollouts", "steps", "eval"] {
        assert_eq!(
            action_of(&again, node).as_deref(),
            Some("cached"),
            "{again}"
        );
    }
    assert!(again.contains("fetched"), "{again}");

    // `--force` recomputes a node: the store's old parts go with it.
    let forced = s3.ok(p, "m1", &["p.yaml", "--run-dir", url, "--force", "steps"]);
    assert_eq!(
        action_of(&forced, "steps").as_deref(),
        Some("ran"),
        "{forced}"
    );
    assert_eq!(part_objects(&s3, "one", "steps").len(), 5);
    assert_equals_clean(&s3, p, url, "m4");
}

#[test]
fn four_shards_on_four_working_copies_then_a_commit_equal_a_single_process_run() {
    let (dir, s3) = setup();
    let p = dir.path();
    let url = "s3://runs/sharded";
    let stages: &[(&str, usize)] = &[("problems", 3), ("rollouts", 6), ("steps", 5), ("eval", 4)];
    for (node, chunks) in stages {
        for pair in [[0, 1], [2, 3]] {
            let children: Vec<Child> = pair
                .iter()
                .map(|k| {
                    let mut c = shard(
                        &s3,
                        p,
                        url,
                        &format!("machine-{k}"),
                        &format!("{k}/4"),
                        node,
                    );
                    c.arg("--no-commit");
                    c.spawn().expect("spawn")
                })
                .collect();
            for c in children {
                assert_ok(&c.wait_with_output().expect("reap"), node);
            }
        }
        let st = stdout(&s3.run(p, "reader", &["status", "p.yaml", "--run-dir", url]));
        assert!(st.contains(&format!("all {chunks} chunks done")), "{st}");
        let out = s3.ok(
            p,
            "committer",
            &["commit", "p.yaml", "--run-dir", url, "--node", node],
        );
        assert!(out.contains("committed"), "{out}");
        let finals = usize::from(*node == "eval");
        assert_eq!(part_objects(&s3, "sharded", node).len(), chunks + finals);
        assert!(
            s3.objects(&format!("sharded/{node}/shards/")).is_empty(),
            "the markers went with the commit"
        );
    }
    assert_equals_clean(&s3, p, url, "reader-2");
    assert!(
        s3.objects("sharded/.lease/").is_empty(),
        "every lease released"
    );
}

#[test]
fn a_killed_shard_leaves_a_stale_lease_that_is_taken_over_and_nothing_is_lost_or_duplicated() {
    let (dir, s3) = setup();
    let p = dir.path();
    let url = "s3://runs/killed";
    s3.ok(
        p,
        "m0",
        &["p.yaml", "--run-dir", url, "--until", "problems"],
    );
    // Shard 1/2 of `rollouts` owns chunks 1, 3 and 5, each a part then a marker: killed
    // before chunk 3's marker (its 4th write).
    let flag = p.join("paused");
    let mut child = shard(&s3, p, url, "m1", "1/2", "rollouts")
        .env("SSPO_FAILPOINT", format!("pause:4:{}", flag.display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_paused(&[flag], std::slice::from_mut(&mut child));
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert_eq!(
        s3.objects("killed/.lease/").len(),
        1,
        "the killed shard's lease stays"
    );
    let st = stdout(&s3.run(p, "reader", &["status", "p.yaml", "--run-dir", url]));
    assert!(st.contains("1 of 6 chunks done"), "{st}");

    // The shards again, on other machines; the last commits once the stale lease of the
    // killed one has expired, and says so.
    let mut logs = String::new();
    for (k, s) in ["1/2", "0/2"].iter().enumerate() {
        let o = shard(&s3, p, url, &format!("m{}", k + 2), s, "rollouts")
            .output()
            .expect("run");
        logs.push_str(&assert_ok(&o, s));
    }
    assert!(logs.contains("stale lease"), "{logs}");
    assert!(logs.contains("every chunk was done: committed"), "{logs}");
    assert_eq!(part_objects(&s3, "killed", "rollouts").len(), 6);
    let q = "select * from rollouts order by rollout_id";
    assert!(sql_csv(p, "clean", q) == s3.sql(p, "reader", url, q));
}

#[test]
fn the_same_shard_twice_at_once_leaves_exactly_one_part_per_chunk() {
    let (dir, s3) = setup();
    let p = dir.path();
    let url = "s3://runs/twice";
    s3.ok(
        p,
        "m0",
        &["p.yaml", "--run-dir", url, "--until", "problems"],
    );
    // Both attempts stop at their first write (chunk 0's part), on two machines; SIGTERM
    // lets each finish that chunk's commit and stop.
    let flags: Vec<PathBuf> = (0..2).map(|k| p.join(format!("twice-{k}"))).collect();
    let mut children: Vec<Child> = flags
        .iter()
        .enumerate()
        .map(|(k, f)| {
            shard(&s3, p, url, &format!("m{}", k + 1), "0/2", "rollouts")
                .env("SSPO_FAILPOINT", format!("pause:1:{}", f.display()))
                .spawn()
                .expect("spawn")
        })
        .collect();
    wait_paused(&flags, &mut children);
    interrupt_all(children);
    let parts = part_objects(&s3, "twice", "rollouts");
    assert_eq!(parts.len(), 1, "one attempt's part of chunk 0: {parts:?}");
    let markers: Vec<String> = s3.objects("twice/rollouts/shards/").into_keys().collect();
    assert_eq!(markers.len(), 1, "{markers:?}");
    let marker: serde_json::Value = serde_json::from_slice(&s3.cat(&markers[0])).expect("json");
    let file = marker["chunk"]["files"][0]["file"].as_str().expect("file");
    assert_eq!(parts[0], format!("twice/rollouts/{file}"));

    for (k, s) in ["0/2", "1/2"].iter().enumerate() {
        assert_ok(
            &shard(&s3, p, url, &format!("m{}", k + 3), s, "rollouts")
                .output()
                .expect("run"),
            s,
        );
    }
    assert_eq!(part_objects(&s3, "twice", "rollouts").len(), 6);
    let q = "select * from rollouts order by rollout_id";
    assert!(sql_csv(p, "clean", q) == s3.sql(p, "reader", url, q));
}

#[test]
fn two_commits_at_once_write_one_manifest_and_a_missing_chunk_is_refused() {
    let (dir, s3) = setup();
    let p = dir.path();
    let url = "s3://runs/c";
    s3.ok(
        p,
        "m0",
        &["p.yaml", "--run-dir", url, "--until", "problems"],
    );
    for s in ["0/4", "1/4", "3/4"] {
        let mut c = shard(&s3, p, url, &format!("m-{}", &s[..1]), s, "rollouts");
        c.arg("--no-commit");
        assert_ok(&c.output().expect("run"), s);
    }
    let o = s3.run(
        p,
        "c1",
        &["commit", "p.yaml", "--run-dir", url, "--node", "rollouts"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("chunk 2 not committed yet (shard 2/4: chunk 2)"),
        "{}",
        stderr(&o)
    );
    assert!(!s3
        .objects("c/rollouts/")
        .contains_key("c/rollouts/manifest.json"));

    let mut c = shard(&s3, p, url, "m-2", "2/4", "rollouts");
    c.arg("--no-commit");
    assert_ok(&c.output().expect("run"), "shard 2/4");
    let commits: Vec<Child> = (0..2)
        .map(|k| {
            s3.cmd(
                p,
                &format!("c{k}"),
                &["commit", "p.yaml", "--run-dir", url, "--node", "rollouts"],
            )
            .spawn()
            .expect("spawn")
        })
        .collect();
    let texts: Vec<String> = commits
        .into_iter()
        .map(|c| assert_ok(&c.wait_with_output().expect("reap"), "a commit"))
        .collect();
    let committed = texts
        .iter()
        .filter(|t| t.contains("rollouts             committed"))
        .count();
    let already = texts
        .iter()
        .filter(|t| t.contains("rollouts             already committed"))
        .count();
    assert_eq!((committed, already), (1, 1), "{texts:?}");
    assert_eq!(part_objects(&s3, "c", "rollouts").len(), 6);
    let q = "select * from rollouts order by rollout_id";
    assert!(sql_csv(p, "clean", q) == s3.sql(p, "reader", url, q));
}

#[test]
fn a_live_lease_keeps_a_second_run_out_and_a_stale_one_is_reported_and_taken_over() {
    let (dir, s3) = setup();
    let p = dir.path();
    let url = "s3://runs/leased";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let lease = |expires: f64| {
        format!(
            r#"{{"holder": "gpu-node-7:4242", "mode": "exclusive", "acquired_at": {now}, "expires_at": {expires}}}"#
        )
    };
    s3.put(
        "leased/.lease/exclusive.json",
        lease(now + 600.0).as_bytes(),
    );
    let o = s3.run(p, "m1", &["p.yaml", "--run-dir", url]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("s3://runs/leased is leased by gpu-node-7:4242 (exclusive)"),
        "{err}"
    );
    assert!(s3.objects("leased/problems/").is_empty(), "nothing ran");

    s3.put("leased/.lease/exclusive.json", lease(now - 30.0).as_bytes());
    let out = s3.ok(
        p,
        "m1",
        &["p.yaml", "--run-dir", url, "--until", "problems"],
    );
    assert!(
        out.contains("stale lease s3://runs/leased/.lease/exclusive.json: gpu-node-7:4242"),
        "{out}"
    );
    assert!(
        s3.objects("leased/.lease/").is_empty(),
        "released at the end"
    );
}

#[test]
fn file_urls_work_and_bad_urls_say_what_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(p.join("p.yaml"), SPEC).expect("spec");
    run_ok(p, &["p.yaml", "--run-dir", "clean", "--until", "steps"]);
    let store = p.join("store");
    let url = format!("file://{}", store.display());
    run_ok(
        p,
        &[
            "p.yaml",
            "--run-dir",
            &url,
            "--until",
            "steps",
            "--cache-dir",
            "wc",
        ],
    );
    assert!(store.join("rollouts/manifest.json").is_file());
    let q = "select * from steps order by rollout_id, step";
    let o = sspo(
        p,
        &["sql", &url, q, "--format", "csv", "--cache-dir", "wc2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), sql_csv(p, "clean", q));

    let o = sspo(p, &["p.yaml", "--run-dir", "ftp://host/run"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unsupported scheme `ftp://`"),
        "{}",
        stderr(&o)
    );
    let o = sspo(p, &["p.yaml", "--run-dir", "s3://key:secret@bucket/run"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("credentials in the URL"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("secret@"), "{}", stderr(&o));
}
