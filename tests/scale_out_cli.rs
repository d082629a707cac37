//! Sharded node runs through the `sspo-run` binary, on the built-in tiny model: shards
//! run two at a time and committed equal a single-process run row for row; a shard
//! killed mid-chunk and re-run loses and duplicates nothing; the same shard twice at once
//! leaves one part per chunk; two concurrent commits write one manifest; a missing chunk
//! makes the commit refuse; the Slurm and Kubernetes launch files name the right shards,
//! dependencies and commands (and the Slurm scripts, run one after another, reproduce the
//! single-process run); `pair`'s table exported for TRL, and a model saved by
//! `transformers` evaluated as a `path:` model.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::*;

const SPEC: &str = SHARD_SPEC;

/// The shardable nodes in stage order, with their chunk counts.
const STAGES: &[(&str, usize)] = &[("problems", 3), ("rollouts", 6), ("steps", 5), ("eval", 4)];

const TABLES: &[(&str, &str)] = SHARD_TABLES;

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("p.yaml"), SPEC).expect("spec");
    run_ok(dir.path(), &["p.yaml", "--run-dir", "clean"]);
    dir
}

fn shard_cmd(dir: &Path, run: &str, shard: &str, node: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(["p.yaml", "--run-dir", run, "--shard", shard, "--node", node])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn finish(child: Child) -> Output {
    child.wait_with_output().expect("reap")
}

fn assert_ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}", stderr(o));
    stderr(o)
}

/// Every table of `run` equals the single-process run's.
fn assert_equals_clean(dir: &Path, run: &str) {
    for (table, q) in TABLES {
        assert!(
            sql_csv(dir, "clean", q) == sql_csv(dir, run, q),
            "table {table} of {run} differs from the single-process run's"
        );
    }
    let v = sspo(dir, &["verify", run]);
    assert!(v.status.success(), "{}", stdout(&v));
}

/// Part files (and leftover temp files) of `node` in `run`, its extra tables included.
fn node_files(dir: &Path, run: &str, node: &str) -> Vec<String> {
    let root = dir.join(run).join(node);
    part_files(&root)
        .into_iter()
        .map(|(p, _)| p.strip_prefix(&root).unwrap_or(&p).display().to_string())
        .collect()
}

fn status_line(dir: &Path, run: &str, node: &str) -> String {
    let st = stdout(&sspo(dir, &["status", "p.yaml", "--run-dir", run]));
    let mut lines = st
        .lines()
        .skip_while(|l| !l.starts_with(&format!("{node} ")));
    let mut out = lines.next().unwrap_or_default().to_string();
    for l in lines.take_while(|l| l.starts_with("    ")) {
        out.push('\n');
        out.push_str(l);
    }
    out
}

#[test]
fn four_shards_two_at_a_time_then_a_commit_equal_a_single_process_run() {
    let dir = setup();
    let p = dir.path();
    for (node, chunks) in STAGES {
        for pair in [["0/4", "1/4"], ["2/4", "3/4"]] {
            let children: Vec<Child> = pair
                .iter()
                .map(|s| {
                    shard_cmd(p, "sharded", s, node, &["--no-commit"])
                        .spawn()
                        .expect("spawn")
                })
                .collect();
            for c in children {
                assert_ok(&finish(c), &format!("a shard of {node}"));
            }
        }
        let st = status_line(p, "sharded", node);
        assert!(
            st.contains("partial") && st.contains(&format!("all {chunks} chunks done")),
            "{st}"
        );
        let out = run_ok(
            p,
            &["commit", "p.yaml", "--run-dir", "sharded", "--node", node],
        );
        assert!(out.contains("committed"), "{out}");
        assert!(status_line(p, "sharded", node).contains("cached"));
        // The markers went with the commit; one part per chunk and table is left.
        assert!(!p.join("sharded").join(node).join("shards").exists());
        // `eval` adds its summary table's part, written at the commit.
        let finals = if *node == "eval" { 1 } else { 0 };
        assert_eq!(
            node_files(p, "sharded", node).len(),
            chunks + finals,
            "{:?}",
            node_files(p, "sharded", node)
        );
    }
    assert_equals_clean(p, "sharded");
    // A second commit finds nothing left to do.
    let again = run_ok(p, &["commit", "p.yaml", "--run-dir", "sharded"]);
    assert!(again.contains("nothing to commit"), "{again}");
}

#[test]
fn a_shard_killed_mid_chunk_and_rerun_loses_and_duplicates_nothing() {
    let dir = setup();
    let p = dir.path();
    run_ok(p, &["p.yaml", "--run-dir", "killed", "--until", "problems"]);
    // Shard 1/2 of `rollouts` owns chunks 1, 3 and 5; each is a part then a marker. The
    // kills fall before chunk 3's part (write 3) and before its marker (write 4).
    for (k, nth) in [3, 4].into_iter().enumerate() {
        let run = format!("killed-{nth}");
        let _ = std::fs::remove_dir_all(p.join(&run));
        copy_dir(&p.join("killed"), &p.join(&run));
        let marker = p.join(format!("paused-{nth}"));
        let mut child = shard_cmd(p, &run, "1/2", "rollouts", &[])
            .env(
                "SSPO_FAILPOINT",
                format!("pause:{nth}:{}", marker.display()),
            )
            .spawn()
            .expect("spawn");
        wait_paused(&[marker], std::slice::from_mut(&mut child));
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        // Until the commit the node is partial, with exactly the chunk committed.
        let st = status_line(p, &run, "rollouts");
        assert!(
            st.contains("partial") && st.contains("1 of 6 chunks done"),
            "after write {nth}: {st}"
        );
        let rows = sql_csv(p, &run, "select count(*) as n from rollouts");
        assert_eq!(rows, "n\n4\n", "chunk 1's 2 prompts × 2 samples");

        // Re-run the killed shard (in the second case with the other shard first).
        let order = if k == 0 {
            ["1/2", "0/2"]
        } else {
            ["0/2", "1/2"]
        };
        for s in order {
            assert_ok(
                &shard_cmd(p, &run, s, "rollouts", &[])
                    .output()
                    .expect("run"),
                s,
            );
        }
        assert!(status_line(p, &run, "rollouts").contains("cached"));
        let files = node_files(p, &run, "rollouts");
        assert_eq!(files.len(), 6, "one part per chunk: {files:?}");
        run_ok(p, &["p.yaml", "--run-dir", &run]);
        let q = "select * from rollouts order by rollout_id";
        assert!(
            sql_csv(p, "clean", q) == sql_csv(p, &run, q),
            "after write {nth}"
        );
    }
}

#[test]
fn the_same_shard_twice_at_once_leaves_exactly_one_part_per_chunk() {
    let dir = setup();
    let p = dir.path();
    run_ok(p, &["p.yaml", "--run-dir", "twice", "--until", "problems"]);
    // Both attempts stop at their first write (chunk 0's part), so both have computed
    // the same chunk; SIGTERM lets each finish that chunk's commit and stop.
    let markers: Vec<PathBuf> = (0..2).map(|k| p.join(format!("twice-{k}"))).collect();
    let mut children: Vec<Child> = markers
        .iter()
        .map(|m| {
            shard_cmd(p, "twice", "0/2", "rollouts", &[])
                .env("SSPO_FAILPOINT", format!("pause:1:{}", m.display()))
                .spawn()
                .expect("spawn")
        })
        .collect();
    wait_paused(&markers, &mut children);
    interrupt_all(children);
    let files = node_files(p, "twice", "rollouts");
    assert_eq!(files.len(), 1, "one attempt's part of chunk 0: {files:?}");
    let markers_dir = std::fs::read_dir(p.join("twice/rollouts/shards"))
        .expect("markers")
        .flatten()
        .next()
        .expect("one fingerprint")
        .path();
    let marker: serde_json::Value = serde_json::from_slice(
        &std::fs::read(markers_dir.join("chunk-00000.json")).expect("marker"),
    )
    .expect("json");
    assert_eq!(marker["chunk"]["files"][0]["file"], files[0].as_str());

    for s in ["0/2", "0/2", "1/2"] {
        assert_ok(
            &shard_cmd(p, "twice", s, "rollouts", &[])
                .output()
                .expect("run"),
            s,
        );
    }
    assert_eq!(node_files(p, "twice", "rollouts").len(), 6);
    let q = "select * from rollouts order by rollout_id";
    assert!(sql_csv(p, "clean", q) == sql_csv(p, "twice", q));
}

#[test]
fn two_concurrent_commits_write_one_manifest_and_a_missing_chunk_is_refused() {
    let dir = setup();
    let p = dir.path();
    run_ok(p, &["p.yaml", "--run-dir", "c", "--until", "problems"]);
    for s in ["0/4", "1/4", "3/4"] {
        assert_ok(
            &shard_cmd(p, "c", s, "rollouts", &["--no-commit"])
                .output()
                .expect("run"),
            s,
        );
    }
    // Chunk 2 (shard 2/4) is missing: the node is partial, and the commit refuses.
    let st = status_line(p, "c", "rollouts");
    assert!(st.contains("5 of 6 chunks done; not yet: chunk 2"), "{st}");
    let o = sspo(
        p,
        &["commit", "p.yaml", "--run-dir", "c", "--node", "rollouts"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(
            "cannot commit node `rollouts`: chunk 2 not committed yet (shard 2/4: chunk 2)"
        ),
        "{}",
        stderr(&o)
    );
    assert!(!p.join("c/rollouts/manifest.json").exists());
    let rows = sql_csv(p, "c", "select count(*) as n from rollouts");
    assert_eq!(rows, "n\n20\n", "five chunks of 2 prompts × 2 samples");

    assert_ok(
        &shard_cmd(p, "c", "2/4", "rollouts", &["--no-commit"])
            .output()
            .expect("run"),
        "shard 2/4",
    );
    let commits: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(bin())
                .args(["commit", "p.yaml", "--run-dir", "c", "--node", "rollouts"])
                .current_dir(p)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let texts: Vec<String> = commits
        .into_iter()
        .map(|c| assert_ok(&finish(c), "a commit"))
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
    let manifests: Vec<_> = std::fs::read_dir(p.join("c/rollouts"))
        .expect("node dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("manifest"))
        .collect();
    assert_eq!(manifests, ["manifest.json"]);
    assert_eq!(node_files(p, "c", "rollouts").len(), 6);
    let q = "select * from rollouts order by rollout_id";
    assert!(sql_csv(p, "clean", q) == sql_csv(p, "c", q));
}

#[test]
fn a_node_that_cannot_be_sharded_is_a_located_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let spec = "name: t\nmodels:\n  base: {builtin: tiny-synth}\nnodes:\n  problems:\n    op: source\n    params: {synth: {task: arithmetic, n: 4, seed: 2}}\n  tuned:\n    op: train\n    inputs: {data: problems, model: base}\n    params: {loss: sft, completion: answer_text, max_steps: 1}\n";
    std::fs::write(p.join("t.yaml"), spec).expect("spec");
    let o = sspo(p, &["t.yaml", "--shard", "0/2", "--node", "tuned"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("t.yaml:9:9: error: node `tuned` (op `train`) cannot be sharded"),
        "{}",
        stderr(&o)
    );
    // The whole pipeline sharded: the source runs (and, as the only shard, commits);
    // then nothing is left that a shard can run, and it says why.
    run_ok(p, &["t.yaml", "--shard", "0/1"]);
    let o = sspo(p, &["t.yaml", "--shard", "0/1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("`tuned` (op `train`): cannot be sharded; run it without --shard"),
        "{}",
        stderr(&o)
    );
    let o = Command::new(bin())
        .args(["t.yaml", "--shard", "auto"])
        .current_dir(p)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("none of SLURM_ARRAY_TASK_ID"),
        "{}",
        stderr(&o)
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn slurm_and_kubernetes_launch_files_chain_the_stages_and_the_scripts_reproduce_the_run() {
    let dir = setup();
    let p = dir.path();
    let listed = stdout(&sspo(
        p,
        &[
            "plan",
            "p.yaml",
            "--shards",
            "3",
            "--emit",
            "slurm",
            "--out",
            "slurm",
            "--run-dir",
            "viaslurm",
        ],
    ));
    let expected = [
        "01-problems.sbatch",
        "02-problems-commit.sbatch",
        "03-rollouts.sbatch",
        "04-rollouts-commit.sbatch",
        "05-steps.sbatch",
        "06-steps-commit.sbatch",
        "07-eval.sbatch",
        "08-eval-commit.sbatch",
        "submit.sh",
    ];
    for f in expected {
        assert!(listed.contains(f), "{listed}");
    }
    let gen = read(&p.join("slurm/03-rollouts.sbatch"));
    assert!(gen.contains("#SBATCH --array=0-2\n"), "{gen}");
    assert!(gen.contains("#SBATCH --gres=gpu:1\n"), "{gen}");
    assert!(
        gen.contains("exec \"${SSPO_RUN:-sspo-run}\" run p.yaml --shard auto --node rollouts --progress log --run-dir viaslurm\n"),
        "{gen}"
    );
    let seg = read(&p.join("slurm/05-steps.sbatch"));
    assert!(
        !seg.contains("--gres"),
        "segment reads only a tokenizer: {seg}"
    );
    let commit = read(&p.join("slurm/04-rollouts-commit.sbatch"));
    assert!(
        !commit.contains("--array") && !commit.contains("gres"),
        "{commit}"
    );
    assert!(
        commit.contains("commit p.yaml --node rollouts --run-dir viaslurm"),
        "{commit}"
    );
    let submit = read(&p.join("slurm/submit.sh"));
    assert!(
        submit.contains("job1=$(sbatch --parsable \"$here/01-problems.sbatch\")"),
        "{submit}"
    );
    for k in 2..=8 {
        let line = format!(
            "job{k}=$(sbatch --parsable --dependency=afterok:$job{} \"$here/{}\")",
            k - 1,
            expected[k - 1]
        );
        assert!(submit.contains(&line), "{line}\n{submit}");
    }

    // Run the scripts as Slurm would: each array task with its task id and count.
    for f in &expected[..8] {
        let script = p.join("slurm").join(f);
        let tasks: Vec<Option<u32>> = if read(&script).contains("--array") {
            (0..3).map(Some).collect()
        } else {
            vec![None]
        };
        for t in tasks {
            let mut c = Command::new("bash");
            c.arg(&script).current_dir(p).env("SSPO_RUN", bin());
            c.env_remove("SLURM_ARRAY_TASK_ID")
                .env_remove("JOB_COMPLETION_INDEX");
            if let Some(t) = t {
                c.env("SLURM_ARRAY_TASK_ID", t.to_string())
                    .env("SLURM_ARRAY_TASK_COUNT", "3");
            }
            let o = c.output().expect("bash");
            assert!(o.status.success(), "{f} task {t:?}: {}", stderr(&o));
        }
    }
    assert_equals_clean(p, "viaslurm");

    run_ok(
        p,
        &[
            "plan",
            "p.yaml",
            "--shards",
            "4",
            "--emit",
            "k8s",
            "--out",
            "k8s",
            "--image",
            "reg/sspo:1",
        ],
    );
    let job = read(&p.join("k8s/03-rollouts.yaml"));
    for needle in [
        "kind: Job",
        "name: sspo-shard-rollouts\n",
        "completionMode: Indexed",
        "completions: 4",
        "parallelism: 4",
        "backoffLimitPerIndex: 2",
        "restartPolicy: Never",
        "image: \"reg/sspo:1\"",
        "command: [\"sspo-run\", \"run\", \"p.yaml\", \"--shard\", \"auto\", \"--node\", \"rollouts\", \"--progress\", \"log\"]",
        "- name: SSPO_SHARD_COUNT\n          value: \"4\"",
        "nvidia.com/gpu: 1",
        "claimName: \"sspo-work\"",
    ] {
        assert!(job.contains(needle), "{needle}\n{job}");
    }
    let commit = read(&p.join("k8s/04-rollouts-commit.yaml"));
    assert!(
        !commit.contains("Indexed") && !commit.contains("nvidia.com/gpu"),
        "{commit}"
    );
    assert!(
        commit.contains("\"commit\", \"p.yaml\", \"--node\", \"rollouts\""),
        "{commit}"
    );
    let submit = read(&p.join("k8s/submit.sh"));
    let applies: Vec<&str> = submit
        .lines()
        .filter(|l| l.starts_with("kubectl apply") || l.starts_with("wait_job "))
        .collect();
    assert_eq!(applies.len(), 16, "{submit}");
    assert_eq!(applies[0], "kubectl apply -f \"$here/01-problems.yaml\"");
    assert_eq!(applies[1], "wait_job sspo-shard-problems");
    assert_eq!(applies[3], "wait_job sspo-shard-problems-commit");

    let o = sspo(p, &["plan", "p.yaml", "--shards", "0", "--emit", "k8s"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

const PAIR_SPEC: &str = r#"
name: pairs
seed: 11
models:
  base: {path: BASE}
nodes:
  problems:
    op: source
    params: {synth: {task: arithmetic, n: 8, seed: 2}}
  rollouts:
    op: generate
    inputs: {prompts: problems, model: base}
    params: {samples: 4, max_new_tokens: 24, temperature: 1.0, chunk_rows: 4, batch_size: 8}
  steps:
    op: segment
    inputs: {traces: rollouts, model: base}
  values:
    op: probe
    inputs: {steps: steps, rollouts: rollouts, model: base}
    params: {kind: answer}
  pairs:
    op: pair
    inputs: {rollouts: rollouts, steps: steps, values: values}
"#;

#[test]
fn pairs_export_as_a_trl_dpo_dataset_with_step_advantages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    // The shipped base, taught verbose traces: its rollouts give compression pairs.
    let base = repo().join("pipelines/models/tiny-synth-sft");
    let spec = PAIR_SPEC.replace("BASE", &format!("{:?}", base.display().to_string()));
    std::fs::write(p.join("p.yaml"), spec).expect("spec");
    run_ok(p, &["p.yaml"]);
    let out = run_ok(
        p,
        &[
            "export",
            "p.yaml",
            "--node",
            "pairs",
            "--format",
            "trl-dpo",
            "--out",
            "out/dpo.parquet",
        ],
    );
    let (schema, batches) =
        sspo_engine::store::read_parquet(&p.join("out/dpo.parquet")).expect("parquet");
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        &names[..7],
        [
            "prompt",
            "chosen",
            "rejected",
            "chosen_steps",
            "rejected_steps",
            "chosen_adv",
            "rejected_adv"
        ]
    );
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert!(rows > 0, "the pipeline made no pairs");
    let n = sql_csv(p, "runs/pairs", "select count(*) as n from pairs");
    assert_eq!(n, format!("n\n{rows}\n"));
    assert!(out.contains(&format!("{rows} rows")), "{out}");
    let o = sspo(
        p,
        &[
            "export",
            "p.yaml",
            "--node",
            "steps",
            "--format",
            "trl-dpo",
            "--out",
            "x.parquet",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("exports the table of a `pair` node"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_model_saved_by_transformers_is_evaluated_as_a_path_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let base = repo().join("pipelines/models/tiny-synth-sft");
    let saved = p.join("trl-out");
    // What `trainer.save_model()` of TRL leaves: transformers' save_pretrained, plus the
    // tokenizer.
    let script = format!(
        "import shutil, transformers\n\
         m = transformers.AutoModelForCausalLM.from_pretrained({base:?})\n\
         m.save_pretrained({saved:?})\n\
         for f in ['tokenizer.json', 'tokenizer_config.json']:\n    shutil.copy({base:?} + '/' + f, {saved:?})\n",
        base = base.display().to_string(),
        saved = saved.display().to_string(),
    );
    let o = Command::new(python())
        .args(["-c", &script])
        .output()
        .expect("python");
    assert!(o.status.success(), "{}", stderr(&o));
    let spec = format!(
        "name: imported\nseed: 3\nmodels:\n  base: {{path: {base:?}}}\n  trl: {{path: {saved:?}}}\nnodes:\n  problems:\n    op: source\n    params: {{synth: {{task: arithmetic, n: 4, seed: 2}}}}\n  eval:\n    op: evaluate\n    inputs: {{prompts: problems, models: [base, trl]}}\n    params: {{split: all, samples: 1, temperature: 0.0, max_new_tokens: 24}}\n",
        base = base.display().to_string(),
        saved = saved.display().to_string(),
    );
    std::fs::write(p.join("e.yaml"), spec).expect("spec");
    run_ok(p, &["validate", "e.yaml"]);
    run_ok(p, &["e.yaml"]);
    // Greedy decoding of the same weights: the imported model answers as the base does.
    let q = "select id, response from eval where model = '{}' order by id";
    let b = sql_csv(p, "runs/imported", &q.replace("{}", "base"));
    let t = sql_csv(p, "runs/imported", &q.replace("{}", "trl"));
    assert_eq!(b, t);
    let n = sql_csv(
        p,
        "runs/imported",
        "select count(*) as n from eval where model = 'trl'",
    );
    assert_eq!(n, "n\n4\n");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}
