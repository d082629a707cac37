//! The shipped pipelines: the quickstart itself, shrunk with `--set` so it finishes in
//! about a minute, end to end on the shipped base checkpoint (generate → segment → probe →
//! pair → train → evaluate), checked through SQL; the ablation and GSM8K templates
//! validate.

mod common;

use std::path::Path;

use common::*;

/// One number from a one-cell CSV query.
fn scalar(dir: &Path, run: &str, q: &str) -> f64 {
    let out = sql_csv(dir, run, q);
    let cell = out
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("no row for {q}: {out}"));
    cell.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{q} gave {cell:?}"))
}

#[test]
fn quickstart_small_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let spec = repo().join("pipelines/quickstart.yaml");
    let spec = spec.to_str().unwrap();
    let run_dir = dir.path().join("run");
    let run = run_dir.to_str().unwrap();
    let err = run_ok(
        dir.path(),
        &[
            spec,
            "--run-dir",
            run,
            "--set",
            "nodes.problems.params.synth.n=16",
            "--set",
            "nodes.test_problems.params.synth.n=12",
            "--set",
            "nodes.sspo.params.epochs=1",
        ],
    );
    for node in [
        "problems", "rollouts", "steps", "probes", "pairs", "sspo", "eval",
    ] {
        assert_eq!(
            action_of(&err, node).as_deref(),
            Some("ran"),
            "{node}: {err}"
        );
    }
    // The end-of-run summary names both models.
    assert!(err.contains("\neval:\n"), "{err}");
    assert!(err.contains("base ") && err.contains("sspo "), "{err}");

    let q = |sql: &str| scalar(dir.path(), run, sql);
    assert_eq!(q("SELECT count(*) FROM rollouts"), 64.0);
    // Every rollout with text has steps, and every step boundary 0..K a value in [0, 1].
    assert_eq!(
        q("SELECT count(*) FROM rollouts r WHERE trim(r.response) <> '' AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.rollout_id = r.rollout_id)"),
        0.0
    );
    let boundaries = q("SELECT count(*) + count(DISTINCT rollout_id) FROM steps");
    assert_eq!(q("SELECT count(*) FROM probes"), boundaries);
    assert_eq!(
        q("SELECT count(*) FROM probes WHERE value IS NULL OR value < 0 OR value > 1"),
        0.0
    );
    // Pairs exist, and their step lists rebuild their texts.
    assert!(q("SELECT count(*) FROM pairs") > 0.0);
    assert_eq!(
        q("SELECT count(*) FROM pairs WHERE array_to_string(chosen_steps, '') <> chosen OR array_to_string(rejected_steps, '') <> rejected"),
        0.0
    );
    // Training ran with finite losses, and wrote a model directory evaluate loaded.
    assert!(q("SELECT count(*) FROM sspo") >= 1.0);
    assert_eq!(
        q("SELECT count(*) FROM sspo WHERE isnan(loss) OR loss IS NULL"),
        0.0
    );
    assert!(run_dir.join("sspo/model/model.safetensors").is_file());
    // The summary agrees with the per-sample rows.
    for model in ["base", "sspo"] {
        let acc = q(&format!(
            "SELECT accuracy FROM eval_summary WHERE model = '{model}'"
        ));
        let recomputed = q(&format!(
            "SELECT avg(CASE WHEN correct THEN 1.0 ELSE 0.0 END) FROM eval WHERE model = '{model}'"
        ));
        assert!(
            (acc - recomputed).abs() < 1e-9,
            "{model}: {acc} vs {recomputed}"
        );
        let mean = q(&format!(
            "SELECT mean_tokens FROM eval_summary WHERE model = '{model}'"
        ));
        let recomputed = q(&format!(
            "SELECT avg(n_tokens) FROM eval WHERE model = '{model}'"
        ));
        assert!(
            (mean - recomputed).abs() < 1e-9,
            "{model}: {mean} vs {recomputed}"
        );
    }
    assert_eq!(
        q("SELECT length_reduction FROM eval_summary WHERE model = 'base'"),
        0.0
    );
    // The shipped base solves some problems (a random model solves none); its accuracy is
    // about 0.8, so on 24 responses it is above zero with near certainty on any CPU.
    let base_acc = q("SELECT accuracy FROM eval_summary WHERE model = 'base'");
    assert!(base_acc > 0.0, "base accuracy {base_acc}");
}

#[test]
fn shipped_pipelines_validate() {
    let dir = tempfile::tempdir().unwrap();
    for p in [
        "quickstart.yaml",
        "ablation.yaml",
        "sft-base.yaml",
        "quickstart-verbal.yaml",
        "sft-base-verbal.yaml",
    ] {
        let spec = repo().join("pipelines").join(p);
        run_ok_validate(dir.path(), &[spec.to_str().unwrap()]);
    }
    // The GSM8K template with a local model directory and GSM8K-format files.
    let model = dir.path().join("model");
    copy_dir(&repo().join("pipelines/models/tiny-synth-sft"), &model);
    write_gsm8k_like(&dir.path().join("train.jsonl"), 8);
    write_gsm8k_like(&dir.path().join("test.jsonl"), 4);
    let sets = [
        format!("models.base.path={}", model.display()),
        format!(
            "nodes.train_problems.params.path={}",
            dir.path().join("train.jsonl").display()
        ),
        format!(
            "nodes.test_problems.params.path={}",
            dir.path().join("test.jsonl").display()
        ),
    ];
    let spec = repo().join("pipelines/gsm8k.yaml");
    let mut args = vec![spec.to_str().unwrap()];
    for s in &sets {
        args.push("--set");
        args.push(s);
    }
    run_ok_validate(dir.path(), &args);
}

fn run_ok_validate(dir: &Path, args: &[&str]) {
    let mut a = vec!["validate"];
    a.extend_from_slice(args);
    let o = sspo(dir, &a);
    assert!(o.status.success(), "validate {args:?}: {}", stderr(&o));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
