//! End to end through the engine: a GSM8K-format JSONL source → generate → segment →
//! probe (both kinds) on the built-in `tiny-test` model; and probing reference solutions
//! straight from `source` (key `id`, no `context` column, an over-long trace counted).

mod common;
use common::*;

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type};

const GSM8K: &str = r#"{"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?", "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"}
{"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?", "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"}
{"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3 + 4 = 7\n#### 7"}
"#;

fn ints(b: &RecordBatch, col: &str) -> Vec<i32> {
    b.column_by_name(col)
        .unwrap()
        .as_primitive::<Int32Type>()
        .values()
        .to_vec()
}

/// `(step, value, p_yes null?, answer_logprob null?, early_correct null?)` per key.
type Probes = HashMap<String, Vec<(i32, Option<f64>, bool, bool, bool)>>;

fn probes_by_key(b: &RecordBatch, key: &str) -> Probes {
    let keys = opt_strings(b, key);
    let steps = ints(b, "step");
    let value = b
        .column_by_name("value")
        .unwrap()
        .as_primitive::<Float64Type>();
    let p_yes = b.column_by_name("p_yes").unwrap();
    let alp = b.column_by_name("answer_logprob").unwrap();
    let ec = b.column_by_name("early_correct").unwrap();
    let mut out: Probes = HashMap::new();
    for i in 0..b.num_rows() {
        out.entry(keys[i].clone().unwrap()).or_default().push((
            steps[i],
            value.is_valid(i).then(|| value.value(i)),
            p_yes.is_null(i),
            alp.is_null(i),
            ec.is_null(i),
        ));
    }
    out
}

fn steps_per_key(b: &RecordBatch, key: &str) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for k in opt_strings(b, key) {
        *n.entry(k.unwrap()).or_default() += 1;
    }
    n
}

/// Every key has boundaries 0..=K in order, each with a value in [0, 1].
fn check_boundaries(probes: &Probes, steps: &HashMap<String, usize>, keys: &[String]) {
    for k in keys {
        let n_steps = steps.get(k).copied().unwrap_or(0);
        let rows = probes.get(k).unwrap_or_else(|| panic!("no probes for {k}"));
        let got: Vec<i32> = rows.iter().map(|r| r.0).collect();
        let want: Vec<i32> = (0..=n_steps as i32).collect();
        assert_eq!(got, want, "boundaries of {k}");
        for r in rows {
            let v =
                r.1.unwrap_or_else(|| panic!("{k} step {} has no value", r.0));
            assert!((0.0..=1.0).contains(&v), "{k} step {}: {v}", r.0);
        }
    }
}

#[test]
fn generate_segment_probe_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gsm8k.jsonl"), GSM8K).unwrap();
    let yaml = r#"name: e2e
seed: 11
device: cpu
models:
  base: {builtin: tiny-test}
nodes:
  problems: {op: source, params: {path: gsm8k.jsonl, answer_format: gsm8k}}
  rollouts:
    op: generate
    inputs: {prompts: problems, model: base}
    params: {samples: 2, max_new_tokens: 24, prompt_template: "Question: {prompt}\nAnswer:", chunk_rows: 2}
  steps:
    op: segment
    inputs: {traces: rollouts}
    params: {regex: "(?s).{6}"}
  values:
    op: probe
    inputs: {steps: steps, rollouts: rollouts, model: base}
    params: {kind: answer, early_answer_tokens: 4, chunk_rows: 4}
  verbal:
    op: probe
    inputs: {steps: steps, rollouts: rollouts, model: base}
    params: {kind: verbal}
"#;
    let run_dir = run(dir.path(), yaml).unwrap();
    let (rollouts, _) = table(&run_dir, "rollouts");
    assert_eq!(rollouts.num_rows(), 6);
    let (steps, _) = table(&run_dir, "steps");
    let per_key = steps_per_key(&steps, "rollout_id");
    let keys: Vec<String> = opt_strings(&rollouts, "rollout_id")
        .into_iter()
        .map(Option::unwrap)
        .collect();
    for (k, resp) in keys.iter().zip(opt_strings(&rollouts, "response")) {
        if !resp.unwrap().trim().is_empty() {
            assert!(per_key.get(k).copied().unwrap_or(0) >= 1, "{k} has steps");
        }
    }
    assert!(
        per_key.values().any(|&n| n >= 3),
        "several steps per rollout"
    );

    let (values, vm) = table(&run_dir, "values");
    assert_eq!(
        values
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        [
            "rollout_id",
            "step",
            "value",
            "p_yes",
            "answer_logprob",
            "early_answer",
            "early_correct"
        ]
    );
    let probes = probes_by_key(&values, "rollout_id");
    check_boundaries(&probes, &per_key, &keys);
    for rows in probes.values() {
        for &(_, _, p_yes_null, alp_null, ec_null) in rows {
            assert!(p_yes_null && !alp_null && !ec_null);
        }
    }
    assert_eq!(vm.counters.get("traces_too_long"), None);
    let early = opt_strings(&values, "early_answer");
    assert!(early.iter().all(Option::is_some));

    let (verbal, _) = table(&run_dir, "verbal");
    let vprobes = probes_by_key(&verbal, "rollout_id");
    check_boundaries(&vprobes, &per_key, &keys);
    for rows in vprobes.values() {
        for &(_, _, p_yes_null, alp_null, ec_null) in rows {
            assert!(!p_yes_null && alp_null && ec_null);
        }
    }
}

#[test]
fn probe_reference_solutions_keyed_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!(
        "{}\n#### 1",
        (0..40)
            .map(|i| format!("Line {i} of a long derivation."))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let data = format!(
        "{GSM8K}{}\n",
        serde_json::json!({"question": "A long one?", "answer": long})
    );
    std::fs::write(dir.path().join("gsm8k.jsonl"), data).unwrap();
    let yaml = r#"name: refs
device: cpu
models:
  base: {builtin: tiny-test}
nodes:
  problems: {op: source, params: {path: gsm8k.jsonl, answer_format: gsm8k}}
  steps:
    op: segment
    inputs: {traces: problems}
    params: {column: answer_text, delimiter: "\n"}
  values:
    op: probe
    inputs: {steps: steps, rollouts: problems, model: base}
    params: {prompt_template: "Question: {prompt}\nAnswer:", early_answer_tokens: 2}
"#;
    let run_dir = run(dir.path(), yaml).unwrap();
    let (problems, _) = table(&run_dir, "problems");
    let (steps, _) = table(&run_dir, "steps");
    let (values, m) = table(&run_dir, "values");
    assert_eq!(values.schema().field(0).name(), "id");
    assert_eq!(m.counters.get("traces_too_long"), Some(&1));
    let per_key = steps_per_key(&steps, "id");
    let ids: Vec<String> = opt_strings(&problems, "id")
        .into_iter()
        .map(Option::unwrap)
        .take(3)
        .collect();
    assert_eq!(per_key[&ids[0]], 3);
    let probes = probes_by_key(&values, "id");
    assert_eq!(probes.len(), 3, "the long trace is skipped");
    check_boundaries(&probes, &per_key, &ids);
}
