//! `generate` through the engine on the built-in `tiny-test` model: output columns, per-row
//! seeds (independent of batching and chunking), greedy decoding equal to the model
//! crate's greedy, counted problem rows and located param errors.

mod common;
use common::*;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type, UInt64Type};
use sspo_engine::store::Manifest;
use sspo_engine::{ModelRef, ModelSource};
use sspo_model::{GenerationRequest, Generator, GeneratorConfig, SamplingParams};
use sspo_operators::model_port::{encode_context, load_model, render_context};

const PROBLEMS: &str = r#"{"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3 + 4 = 7\n#### 7"}
{"question": "A box holds 6 eggs. How many eggs in 2 boxes?", "answer": "6 * 2 = 12\n#### 12"}
{"question": "What is 10 - 8?", "answer": "10 - 8 = 2\n#### 2"}
"#;

fn pipeline(seed: u64, params: &str, data: &str) -> String {
    format!(
        "name: g\nseed: {seed}\ndevice: cpu\nmodels:\n  base: {{builtin: tiny-test}}\nnodes:\n  problems: {{op: source, params: {{path: {data}}}}}\n  rollouts:\n    op: generate\n    inputs: {{prompts: problems, model: base}}\n    params: {params}\n"
    )
}

/// Runs `params` on the three problems in a fresh directory.
fn rollouts(seed: u64, params: &str) -> (RecordBatch, Manifest) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.jsonl"), PROBLEMS).unwrap();
    let run_dir = run(dir.path(), &pipeline(seed, params, "p.jsonl")).unwrap();
    table(&run_dir, "rollouts")
}

fn names(b: &RecordBatch) -> Vec<String> {
    b.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

const SAMPLING: &str = "{samples: 3, temperature: 1.0, max_new_tokens: 10, chunk_rows: 8";

#[test]
fn rollout_table_has_the_contract_columns() {
    let (b, m) = rollouts(7, &format!("{SAMPLING}}}"));
    assert_eq!(
        names(&b),
        [
            "rollout_id",
            "id",
            "sample",
            "prompt",
            "response",
            "n_tokens",
            "finish_reason",
            "pred_answer",
            "correct",
            "seed",
            "answer",
            "context"
        ]
    );
    assert_eq!(b.num_rows(), 9);
    let ids = opt_strings(&b, "id");
    let rids = opt_strings(&b, "rollout_id");
    let samples = b
        .column_by_name("sample")
        .unwrap()
        .as_primitive::<Int32Type>();
    for i in 0..9 {
        assert_eq!(samples.value(i), (i % 3) as i32);
        let expect = format!("{}#{}", ids[i].as_deref().unwrap(), i % 3);
        assert_eq!(rids[i].as_deref(), Some(expect.as_str()));
    }
    assert_eq!(
        opt_strings(&b, "answer"),
        ["7", "7", "7", "12", "12", "12", "2", "2", "2"].map(|s| Some(s.to_string()))
    );
    let n_tok = b
        .column_by_name("n_tokens")
        .unwrap()
        .as_primitive::<Int32Type>();
    for (i, fr) in opt_strings(&b, "finish_reason").into_iter().enumerate() {
        let fr = fr.unwrap();
        assert!(fr == "stop" || fr == "length", "{fr}");
        assert!(n_tok.value(i) >= 1 && n_tok.value(i) <= 10);
        if fr == "length" {
            assert_eq!(n_tok.value(i), 10);
        }
    }
    // Random weights: answers are rarely right, but `correct` is never null with a reference.
    let correct = b.column_by_name("correct").unwrap().as_boolean();
    assert_eq!(correct.null_count(), 0);
    assert_eq!(
        b.column_by_name("seed").unwrap().data_type(),
        &DataType::UInt64
    );
    let seeds = b
        .column_by_name("seed")
        .unwrap()
        .as_primitive::<UInt64Type>();
    let mut distinct: Vec<u64> = seeds.values().to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 9, "every (row, sample) has its own seed");
    assert!(m.metrics.contains_key("tokens_per_s"));
    // The raw prompt is the context (no template, no BOS for this tokenizer).
    assert_eq!(opt_strings(&b, "context"), opt_strings(&b, "prompt"));
}

/// Everything but timing-dependent columns, row by row.
fn content(b: &RecordBatch) -> Vec<String> {
    let cols = [
        "rollout_id",
        "response",
        "finish_reason",
        "pred_answer",
        "context",
    ];
    let seeds = b
        .column_by_name("seed")
        .unwrap()
        .as_primitive::<UInt64Type>();
    let n_tok = b
        .column_by_name("n_tokens")
        .unwrap()
        .as_primitive::<Int32Type>();
    (0..b.num_rows())
        .map(|i| {
            let mut s: Vec<String> = cols
                .iter()
                .map(|c| format!("{:?}", opt_strings(b, c)[i]))
                .collect();
            s.push(seeds.value(i).to_string());
            s.push(n_tok.value(i).to_string());
            s.join("|")
        })
        .collect()
}

#[test]
fn rows_do_not_depend_on_batching_or_chunking() {
    let (a, _) = rollouts(7, &format!("{SAMPLING}, batch_size: 1}}"));
    let (b, _) = rollouts(7, &format!("{SAMPLING}, batch_size: 5}}"));
    let (c, _) = rollouts(
        7,
        "{samples: 3, temperature: 1.0, max_new_tokens: 10, chunk_rows: 1, batch_size: 2}",
    );
    assert_eq!(content(&a), content(&b));
    assert_eq!(content(&a), content(&c));
    let (d, _) = rollouts(8, &format!("{SAMPLING}, batch_size: 5}}"));
    assert_ne!(
        content(&a),
        content(&d),
        "another run seed gives other samples"
    );
}

#[test]
fn greedy_generation_equals_the_model_crates_greedy() {
    let (b, _) = rollouts(
        7,
        "{samples: 2, temperature: 0, max_new_tokens: 12, prompt_template: \"Q: {prompt}\\nA:\"}",
    );
    let model = load_model(
        &ModelRef {
            name: "base".into(),
            source: ModelSource::Builtin("tiny-test".into()),
            options: Default::default(),
            identity: String::new(),
        },
        "cpu",
    )
    .unwrap();
    let prompts = opt_strings(&b, "prompt");
    let requests: Vec<GenerationRequest> = prompts
        .iter()
        .map(|p| {
            let ctx =
                render_context(&model, p.as_deref().unwrap(), "Q: {prompt}\nA:", false).unwrap();
            GenerationRequest {
                prompt_ids: encode_context(&model, &ctx).unwrap(),
                params: SamplingParams {
                    temperature: 0.0,
                    max_new_tokens: 12,
                    seed: 99,
                    ..Default::default()
                },
            }
        })
        .collect();
    let gen = Generator::new(
        &model.decoder,
        &model.tokenizer,
        GeneratorConfig {
            max_batch: 1,
            eos_token_ids: model.eos_token_ids(),
        },
    );
    let outs = gen.generate(&requests).unwrap();
    let responses = opt_strings(&b, "response");
    let n_tok = b
        .column_by_name("n_tokens")
        .unwrap()
        .as_primitive::<Int32Type>();
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(responses[i].as_deref(), Some(o.text.as_str()), "row {i}");
        assert_eq!(n_tok.value(i) as usize, o.n_tokens);
    }
    // Greedy: both samples of a prompt agree, whatever their seeds.
    for p in 0..3 {
        assert_eq!(responses[2 * p], responses[2 * p + 1]);
    }
    assert!(opt_strings(&b, "context")[0]
        .as_deref()
        .unwrap()
        .starts_with("Q: Tom has 3 apples"));
}

#[test]
fn problem_rows_are_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let long = "word ".repeat(120);
    let data = format!(
        "{}\n{}\n",
        serde_json::json!({"id": "ok", "prompt": "What is 1 + 1?", "answer": "2"}),
        serde_json::json!({"id": "long", "prompt": long, "answer": "1"}),
    );
    std::fs::write(dir.path().join("p.jsonl"), data).unwrap();
    let run_dir = run(
        dir.path(),
        &pipeline(1, "{samples: 2, max_new_tokens: 8}", "p.jsonl"),
    )
    .unwrap();
    let (b, m) = table(&run_dir, "rollouts");
    assert_eq!(m.counters.get("prompts_too_long"), Some(&1));
    assert_eq!(b.num_rows(), 2);
    assert_eq!(
        opt_strings(&b, "id"),
        [Some("ok".to_string()), Some("ok".to_string())]
    );
}

#[test]
fn bad_params_are_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.jsonl"), PROBLEMS).unwrap();
    let err = run(
        dir.path(),
        &pipeline(1, "{samples: 2, temprature: 0.5}", "p.jsonl"),
    )
    .unwrap_err();
    assert!(err.contains("unknown key `temprature`"), "{err}");
    assert!(err.contains("did you mean `temperature`"), "{err}");
    let err = run(
        dir.path(),
        &pipeline(1, "{top_p: 0, prompt_template: \"Q:\"}", "p.jsonl"),
    )
    .unwrap_err();
    assert!(err.contains("`top_p` must be in (0, 1]"), "{err}");
    assert!(err.contains("placeholder `{prompt}`"), "{err}");
    let err = run(dir.path(), &pipeline(1, "{max_new_tokens: 600}", "p.jsonl")).unwrap_err();
    assert!(err.contains("leaves no room for a prompt"), "{err}");
}
