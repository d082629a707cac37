//! Verbal and answer values from one probe pass, through the CLI on the shipped base:
//! `probe` with `kind: [verbal, answer]` writes both values and the early-exit answers,
//! `pair` cuts on the verbal value, and the calibration recipes of
//! `docs/operators/probe.md` run exactly as written there and give the AUCs a pairwise
//! count over the same rows gives.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;

const SPEC: &str = r#"
name: calibration
seed: 5
models:
  base: {path: BASE}
nodes:
  problems:
    op: source
    params:
      synth: {n: 8, seed: 1, min_ops: 2, max_ops: 3, start: [2, 20], addend: [1, 9], factor: [2, 3], group_count: [2, 3], group_size: [2, 5], max_value: 99}
  rollouts:
    op: generate
    inputs: {prompts: problems, model: base}
    params: {samples: 4, temperature: 1.0, max_new_tokens: 160, prompt_template: "{prompt}\n\n"}
  steps:
    op: segment
    inputs: {traces: rollouts, model: base}
  probes:
    op: probe
    inputs: {steps: steps, rollouts: rollouts, model: base}
    params: {kind: [verbal, answer], question: "\n\nIs the answer settled?"}
  pairs:
    op: pair
    inputs: {rollouts: rollouts, steps: steps, values: probes}
    params: {cut_value: verbal, tau: TAU, kinds: [compression]}
"#;

/// The verbal value the cut needs.
const TAU: f64 = 0.5;

/// The calibration recipes of the probe page: its ```sql blocks that compute an `auc`.
fn recipes() -> Vec<String> {
    let doc = std::fs::read_to_string(repo().join("docs/operators/probe.md")).expect("doc");
    doc.split("```sql\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter(|sql| sql.contains(" AS auc"))
        .map(str::to_string)
        .collect()
}

/// The rows of a CSV query result after its header, split on commas (the queries here
/// select no text with commas).
fn rows(dir: &Path, query: &str) -> Vec<Vec<String>> {
    sql_csv(dir, "run", query)
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn float(cell: &str) -> Option<f64> {
    (!cell.is_empty()).then(|| cell.parse().expect("a number"))
}

fn flag(cell: &str) -> Option<bool> {
    match cell {
        "true" => Some(true),
        "false" => Some(false),
        "" => None,
        other => panic!("not a boolean: {other:?}"),
    }
}

/// AUC by counting pairs: P(positive scores above negative), ties half; `None` when a
/// class is empty.
fn pairwise_auc(scored: &[(f64, bool)]) -> Option<f64> {
    let pos: Vec<f64> = scored.iter().filter(|s| s.1).map(|s| s.0).collect();
    let neg: Vec<f64> = scored.iter().filter(|s| !s.1).map(|s| s.0).collect();
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (pos.len() * neg.len()) as f64)
}

/// `kind → (n, positives, auc)` from a recipe's result.
fn recipe_result(dir: &Path, sql: &str) -> HashMap<String, (usize, usize, Option<f64>)> {
    rows(dir, sql)
        .into_iter()
        .map(|r| {
            let n = r[1].parse().expect("n");
            let pos = r[2].parse().expect("positives");
            (r[0].clone(), (n, pos, float(&r[3])))
        })
        .collect()
}

fn assert_auc(
    what: &str,
    got: &HashMap<String, (usize, usize, Option<f64>)>,
    kind: &str,
    scored: &[(f64, bool)],
) {
    let (n, pos, auc) = got[kind];
    assert_eq!(n, scored.len(), "{what} {kind}: rows");
    assert_eq!(pos, scored.iter().filter(|s| s.1).count(), "{what} {kind}");
    let want = pairwise_auc(scored);
    match (auc, want) {
        (Some(a), Some(w)) => assert!((a - w).abs() < 1e-9, "{what} {kind}: {a} vs {w}"),
        _ => assert_eq!(auc, want, "{what} {kind}"),
    }
}

#[test]
fn verbal_values_cut_pairs_and_calibration_recipes_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let base = repo().join("pipelines/models/tiny-synth-sft");
    let spec = SPEC
        .replace("BASE", base.to_str().expect("utf-8 path"))
        .replace("TAU", &TAU.to_string());
    std::fs::write(p.join("calibration.yaml"), spec).expect("spec");
    run_ok(p, &["calibration.yaml", "--run-dir", "run"]);

    // Both values on every row; `value` is the first kind's (verbal); early answers.
    let probes = rows(
        p,
        "SELECT rollout_id, step, value, verbal_value, answer_value, early_answer IS NOT NULL, \
         early_correct FROM probes ORDER BY rollout_id, step",
    );
    assert!(!probes.is_empty());
    for r in &probes {
        let (value, verbal, answer) = (float(&r[2]), float(&r[3]), float(&r[4]));
        assert_eq!(value, verbal, "{r:?}");
        assert!(verbal.is_some_and(|v| (0.0..=1.0).contains(&v)), "{r:?}");
        assert!(answer.is_some_and(|v| (0.0..=1.0).contains(&v)), "{r:?}");
        assert_eq!(r[5], "true", "an early answer on every row: {r:?}");
        assert!(flag(&r[6]).is_some(), "{r:?}");
    }

    // Compression pairs cut at the first boundary whose verbal value reaches τ with a
    // correct early answer.
    let cut_rows = rows(
        p,
        &format!(
            "SELECT x.pair_id, p.verbal_value >= {TAU} AND p.early_correct FROM pairs x \
             JOIN probes p ON p.rollout_id = x.chosen_rollout AND p.step = x.cut_step"
        ),
    );
    let earlier = rows(
        p,
        &format!(
            "SELECT count(*) FROM pairs x JOIN probes p ON p.rollout_id = x.chosen_rollout \
             WHERE p.step >= 1 AND p.step < x.cut_step AND p.verbal_value >= {TAU} \
             AND p.early_correct"
        ),
    );
    assert!(!cut_rows.is_empty(), "no compression pair was cut");
    assert!(cut_rows.iter().all(|r| r[1] == "true"), "{cut_rows:?}");
    assert_eq!(earlier[0][0], "0");

    // The recipes, as the doc writes them, against a pairwise count in Rust.
    let recipes = recipes();
    assert_eq!(recipes.len(), 2, "the probe page's calibration recipes");
    let early = recipe_result(p, &recipes[0]);
    let outcome = recipe_result(p, &recipes[1]);
    let correct: HashMap<String, Option<bool>> =
        rows(p, "SELECT rollout_id, correct FROM rollouts")
            .into_iter()
            .map(|r| (r[0].clone(), flag(&r[1])))
            .collect();
    let mut last: HashMap<&str, &Vec<String>> = HashMap::new();
    for r in &probes {
        last.insert(&r[0], r); // ordered by step: the last row of a rollout wins
    }
    for (kind, col) in [("verbal", 3), ("answer", 4)] {
        let scored: Vec<(f64, bool)> = probes
            .iter()
            .filter_map(|r| Some((float(&r[col])?, flag(&r[6])?)))
            .collect();
        assert_auc("early", &early, kind, &scored);
        let scored: Vec<(f64, bool)> = last
            .values()
            .filter_map(|r| Some((float(&r[col])?, correct[&r[0]]?)))
            .collect();
        assert_auc("outcome", &outcome, kind, &scored);
    }
    // Both classes occur, so the AUCs are numbers, not nulls.
    for got in [&early, &outcome] {
        for kind in ["verbal", "answer"] {
            assert!(got[kind].2.is_some(), "{kind}: {got:?}");
        }
    }
    eprintln!("calibration: early {early:?}, outcome {outcome:?}");
}

/// The shipped base taught the question (`pipelines/sft-base-verbal.yaml`): its verbal value
/// ranks boundaries whose early answer is right above the others, and it never asks the
/// question in its own rollouts (the corpus puts the question in the context, not the loss).
#[test]
fn the_verbal_base_answers_the_question_without_asking_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let base = repo().join("pipelines/models/tiny-synth-sft-verbal");
    let spec = SPEC
        .replace("BASE", base.to_str().expect("utf-8 path"))
        .replace("TAU", &TAU.to_string());
    std::fs::write(p.join("calibration.yaml"), spec).expect("spec");
    run_ok(p, &["calibration.yaml", "--run-dir", "run"]);

    let asked = rows(
        p,
        "SELECT count(*) FROM rollouts WHERE response LIKE '%Is the answer settled?%'",
    );
    assert_eq!(asked[0][0], "0", "the base asks the probe question itself");
    let scored: Vec<(f64, bool)> = rows(p, "SELECT verbal_value, early_correct FROM probes")
        .iter()
        .filter_map(|r| Some((float(&r[0])?, flag(&r[1])?)))
        .collect();
    let auc = pairwise_auc(&scored).expect("both classes");
    assert!(
        auc > 0.75,
        "verbal AUC {auc} over {} boundaries",
        scored.len()
    );
}
