//! `evaluate` through the engine on tiny built-in models: per-sample rows per model, the
//! summary recomputed with SQL from the per-sample table, the base's own deltas, split
//! filtering, resume after an interruption, the report, and counted problem rows.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int32Type};
use sspo_engine::store::{Manifest, NodeDir, NodeState};
use sspo_model::{LoadOptions, Model};

/// A `tiny-synth` model with other random weights than the built-in one, saved as a model
/// directory `dir/other`.
fn other_model(dir: &Path) -> PathBuf {
    let tok = dir.join("tok");
    sspo_operators::tasks::synth::write_tokenizer(&tok).unwrap();
    let m = Model::builtin("tiny-synth", &tok, &LoadOptions::default(), 12345).unwrap();
    let out = dir.join("other");
    m.save_dir(&out).unwrap();
    out
}

const EVAL: &str = "{samples: 2, temperature: 1.0, max_new_tokens: 24, chunk_rows: 2}";

fn synth_pipeline(source: &str, params: &str) -> String {
    format!(
        "name: e\nseed: 3\ndevice: cpu\nmodels:\n  base: {{builtin: tiny-synth}}\n  other: {{path: other}}\nnodes:\n  problems: {{op: source, params: {source}}}\n  eval:\n    op: evaluate\n    inputs: {{prompts: problems, models: [base, other]}}\n    params: {params}\n"
    )
}

const SYNTH_SPLIT: &str =
    "{synth: {task: arithmetic, n: 10, seed: 1}, split: {test_fraction: 0.5, seed: 2}}";

/// A fresh directory with the second model, and the run of `params` in it.
fn run_synth(source: &str, params: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    other_model(dir.path());
    let run_dir = run(dir.path(), &synth_pipeline(source, params)).unwrap();
    (dir, run_dir)
}

fn summary_table(run_dir: &Path, node: &str) -> RecordBatch {
    let d = NodeDir::new(run_dir, node);
    let m = d.read_manifest().unwrap().unwrap();
    d.read_table(&m, "summary").unwrap()
}

/// A column as optional floats (any numeric type).
fn floats(b: &RecordBatch, col: &str) -> Vec<Option<f64>> {
    let c = b
        .column_by_name(col)
        .unwrap_or_else(|| panic!("no column {col}"));
    let c = arrow::compute::cast(c, &DataType::Float64).unwrap();
    let c = c.as_primitive::<Float64Type>();
    (0..c.len())
        .map(|i| (!c.is_null(i)).then(|| c.value(i)))
        .collect()
}

/// A column cast to text (DataFusion may give Utf8View).
fn text(b: &RecordBatch, col: &str) -> Vec<String> {
    let c = arrow::compute::cast(b.column_by_name(col).unwrap(), &DataType::Utf8).unwrap();
    let c = c.as_string::<i32>();
    (0..c.len()).map(|i| c.value(i).to_string()).collect()
}

fn ints(b: &RecordBatch, col: &str) -> Vec<i32> {
    let c = b.column_by_name(col).unwrap().as_primitive::<Int32Type>();
    (0..c.len()).map(|i| c.value(i)).collect()
}

fn names(b: &RecordBatch) -> Vec<String> {
    b.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// Every summary column, recomputed from the per-sample table `eval` with SQL (the
/// query documented in docs/operators/evaluate.md), base = `base`.
fn sql_summary(run_dir: &Path, base: &str) -> RecordBatch {
    let sql = format!(
        "WITH per AS (
           SELECT model, COUNT(*) AS n,
                  AVG(CASE WHEN correct THEN 1.0 ELSE 0.0 END) AS accuracy,
                  AVG(CAST(n_tokens AS DOUBLE)) AS mean_tokens,
                  AVG(CAST(n_steps AS DOUBLE)) AS mean_steps,
                  AVG(CASE WHEN finish_reason = 'length' THEN 1.0 ELSE 0.0 END) AS clipped_ratio,
                  AVG(CAST(oracle_tokens AS DOUBLE)) AS oracle_tokens
           FROM eval GROUP BY model),
         ranked AS (
           SELECT model, n_tokens,
                  ROW_NUMBER() OVER (PARTITION BY model ORDER BY n_tokens) AS k,
                  COUNT(*) OVER (PARTITION BY model) AS n
           FROM eval),
         q AS (
           SELECT model,
                  MAX(CASE WHEN k = (n + 1) / 2 THEN n_tokens END) AS median_tokens,
                  MAX(CASE WHEN k = (9 * n + 9) / 10 THEN n_tokens END) AS p90_tokens
           FROM ranked GROUP BY model),
         b AS (SELECT mean_tokens AS lb, accuracy AS ab, oracle_tokens AS ob
               FROM per WHERE model = '{base}')
         SELECT per.model, per.n, per.accuracy, per.mean_tokens, q.median_tokens,
                q.p90_tokens, per.mean_steps, per.clipped_ratio,
                1 - per.mean_tokens / b.lb AS length_reduction,
                per.accuracy - b.ab AS accuracy_delta,
                per.oracle_tokens,
                CASE WHEN b.lb - b.ob > 0
                     THEN (b.lb - per.mean_tokens) / (b.lb - b.ob) END AS redundancy_removed
         FROM per JOIN q ON per.model = q.model CROSS JOIN b
         ORDER BY per.model"
    );
    let batches = sspo_engine::sql::query(run_dir, &sql).unwrap();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn sorted_by_model(b: &RecordBatch) -> RecordBatch {
    let idx =
        arrow::compute::sort_to_indices(b.column_by_name("model").unwrap(), None, None).unwrap();
    arrow::compute::take_record_batch(b, &idx).unwrap()
}

fn assert_summary_matches_sql(run_dir: &Path, node_summary: &RecordBatch, base: &str) {
    let sql = sql_summary(run_dir, base);
    let ours = sorted_by_model(node_summary);
    assert_eq!(text(&ours, "model"), text(&sql, "model"));
    for col in sspo_operators::evaluate::SUMMARY_COLUMNS.iter().skip(1) {
        let (a, b) = (floats(&ours, col), floats(&sql, col));
        assert_eq!(a.len(), b.len(), "{col}");
        for (x, y) in a.iter().zip(&b) {
            match (x, y) {
                (Some(x), Some(y)) => assert!((x - y).abs() < 1e-9, "{col}: {x} vs {y}"),
                _ => assert_eq!(x, y, "{col}"),
            }
        }
    }
}

#[test]
fn per_sample_rows_summary_sql_and_report() {
    let (_dir, run_dir) = run_synth(SYNTH_SPLIT, EVAL);
    let (problems, _) = table(&run_dir, "problems");
    let test_ids: Vec<String> = strings(&problems, "id")
        .into_iter()
        .zip(strings(&problems, "split"))
        .filter(|(_, s)| s == "test")
        .map(|(id, _)| id)
        .collect();
    assert!(!test_ids.is_empty() && test_ids.len() < 10, "{test_ids:?}");
    let (b, m) = table(&run_dir, "eval");
    assert_eq!(names(&b), sspo_operators::evaluate::EVALUATE_COLUMNS);
    let n = test_ids.len();
    assert_eq!(b.num_rows(), 2 * n * 2, "models × test prompts × samples");
    // Model-major, then prompt order, then sample order.
    let models = strings(&b, "model");
    let ids = strings(&b, "id");
    let samples = ints(&b, "sample");
    for i in 0..b.num_rows() {
        let model = if i < 2 * n { "base" } else { "other" };
        assert_eq!(models[i], model, "row {i}");
        assert_eq!(ids[i], test_ids[(i % (2 * n)) / 2], "row {i}");
        assert_eq!(samples[i], (i % 2) as i32);
    }
    // Both models answer a prompt's sample with the same seed.
    let seeds = floats(&b, "seed");
    assert_eq!(seeds[..2 * n], seeds[2 * n..]);
    // The oracle is the synthetic task's: known for every row, and under the
    // `tiny-synth` tokenizer one more than the source's count (the token that ends a
    // response).
    let source_oracle: std::collections::HashMap<String, f64> = strings(&problems, "id")
        .into_iter()
        .zip(floats(&problems, "oracle_tokens"))
        .map(|(id, n)| (id, n.unwrap()))
        .collect();
    for (id, n) in ids.iter().zip(floats(&b, "oracle_tokens")) {
        assert_eq!(n, Some(source_oracle[id] + 1.0), "{id}");
    }
    let n_tok = ints(&b, "n_tokens");
    let n_steps = ints(&b, "n_steps");
    for (i, resp) in strings(&b, "response").iter().enumerate() {
        assert!(n_tok[i] >= 1 && n_tok[i] <= 24);
        let expect = if resp.trim().is_empty() {
            0
        } else {
            resp.split("\n\n").count() as i32
        };
        assert!(n_steps[i] <= expect, "row {i}: {resp:?}");
    }
    // The two models really differ.
    assert_ne!(
        strings(&b, "response")[..2 * n],
        strings(&b, "response")[2 * n..]
    );

    let s = summary_table(&run_dir, "eval");
    assert_eq!(names(&s), sspo_operators::evaluate::SUMMARY_COLUMNS);
    assert_eq!(
        opt_strings(&s, "model"),
        [Some("base".into()), Some("other".into())]
    );
    assert_eq!(floats(&s, "length_reduction")[0], Some(0.0));
    assert_eq!(floats(&s, "accuracy_delta")[0], Some(0.0));
    assert_eq!(
        floats(&s, "n"),
        [Some(2.0 * n as f64), Some(2.0 * n as f64)]
    );
    assert_summary_matches_sql(&run_dir, &s, "base");

    // The summary is an SQL table of the run, and the CLI's end-of-run text names both.
    let tables: Vec<String> = sspo_engine::sql::tables(&run_dir)
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(tables.contains(&"eval_summary".to_string()), "{tables:?}");
    let text = m.summary().expect("an end-of-run summary");
    assert!(text.contains("base") && text.contains("other"), "{text}");
    assert!(text.contains("length reduction"), "{text}");
    assert_eq!(m.state, NodeState::Complete);

    let node = run_dir.join("eval");
    let md = std::fs::read_to_string(node.join("report.md")).unwrap();
    assert!(md.contains("| base (base) |"), "{md}");
    for p in sspo_operators::evaluate::report::PLOTS {
        assert!(md.contains(p), "{md}");
        let svg = std::fs::read_to_string(node.join(p)).unwrap();
        assert!(svg.starts_with("<svg"), "{p}");
        assert!(svg.trim_end().ends_with("</svg>"), "{p}");
    }
}

#[test]
fn split_filter_limit_and_another_base() {
    let (_dir, run_dir) = run_synth(
        SYNTH_SPLIT,
        "{split: all, limit: 3, max_new_tokens: 12, base: other, chunk_rows: 4}",
    );
    let (b, _) = table(&run_dir, "eval");
    assert_eq!(b.num_rows(), 6, "3 prompts × 2 models × 1 sample");
    let (problems, _) = table(&run_dir, "problems");
    let first3: Vec<String> = strings(&problems, "id").into_iter().take(3).collect();
    assert_eq!(strings(&b, "id")[..3], first3[..]);
    let s = summary_table(&run_dir, "eval");
    assert_eq!(floats(&s, "length_reduction")[1], Some(0.0));
    assert_eq!(floats(&s, "accuracy_delta")[1], Some(0.0));
    assert_summary_matches_sql(&run_dir, &s, "other");

    // `split: train` keeps the other rows; a split no row has is an error saying so.
    let (_dir, run_dir) = run_synth(SYNTH_SPLIT, "{split: train, max_new_tokens: 4}");
    let (b, _) = table(&run_dir, "eval");
    let train = strings(&problems, "split")
        .iter()
        .filter(|s| *s == "train")
        .count();
    assert_eq!(b.num_rows(), 2 * train);
    let dir = tempfile::tempdir().unwrap();
    other_model(dir.path());
    let err = run(
        dir.path(),
        &synth_pipeline("{synth: {n: 4}}", "{max_new_tokens: 4}"),
    )
    .unwrap_err();
    assert!(err.contains("no prompt row has `split` = `test`"), "{err}");
    assert!(err.contains("split: all"), "{err}");
}

/// Turns a complete run of `node` into the state a kill after its first `keep` chunks
/// leaves: later chunk records (and the summary) dropped from the manifest, their files
/// deleted, the report gone.
fn interrupt_after(run_dir: &Path, node: &str, keep: u64) {
    let d = NodeDir::new(run_dir, node);
    let mut m: Manifest = d.read_manifest().unwrap().unwrap();
    let (kept, dropped): (Vec<_>, Vec<_>) = m.chunks.drain(..).partition(|c| c.index < keep);
    for c in &dropped {
        for f in &c.files {
            std::fs::remove_file(d.path.join(&f.file)).unwrap();
        }
    }
    m.chunks = kept;
    m.rows.clear();
    m.schema.retain(|t, _| t.is_empty());
    for c in &m.chunks {
        for f in &c.files {
            *m.rows.entry(f.table.clone()).or_default() += f.rows;
        }
    }
    m.state = NodeState::Partial;
    m.metrics.clear();
    d.write_manifest(&m).unwrap();
    std::fs::remove_file(d.path.join("report.md")).unwrap();
}

#[test]
fn resumed_run_equals_an_uninterrupted_one() {
    let (dir, run_dir) = run_synth(SYNTH_SPLIT, EVAL);
    let (full, m) = table(&run_dir, "eval");
    let full_summary = summary_table(&run_dir, "eval");
    let n_chunks = m.chunks.len() as u64;
    assert!(n_chunks >= 5, "several chunks per model, plus the summary");
    // Killed inside the second model's chunks, then after everything but the summary.
    for keep in [n_chunks / 2 + 1, n_chunks - 1] {
        interrupt_after(&run_dir, "eval", keep);
        let partial = table(&run_dir, "eval").0;
        assert!(partial.num_rows() < full.num_rows() || keep == n_chunks - 1);
        run(dir.path(), &synth_pipeline(SYNTH_SPLIT, EVAL)).unwrap();
        let (again, m2) = table(&run_dir, "eval");
        assert_eq!(again, full, "keep {keep}");
        assert_eq!(summary_table(&run_dir, "eval"), full_summary, "keep {keep}");
        assert_eq!(m2.state, NodeState::Complete);
        assert_eq!(m2.chunks.len() as u64, n_chunks);
        assert_eq!(m2.rows.get("summary"), Some(&2));
        assert!(m2.summary().is_some());
        assert!(run_dir.join("eval").join("report.md").is_file());
    }
}

#[test]
fn problem_rows_are_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let long = "word ".repeat(120);
    let data = [
        serde_json::json!({"id": "ok", "prompt": "What is 1 + 1?", "answer": "2", "oracle_trace": "1 + 1 = 2."}),
        serde_json::json!({"id": "long", "prompt": long, "answer": "1", "oracle_trace": ""}),
        serde_json::json!({"id": "also-ok", "prompt": "What is 3 + 3?", "answer": "6"}),
    ]
    .map(|v| v.to_string())
    .join("\n");
    std::fs::write(dir.path().join("p.jsonl"), data).unwrap();
    // The same random weights under two names: equal rows, zero deltas.
    let yaml = "name: e\nseed: 1\ndevice: cpu\nmodels:\n  a: {builtin: tiny-test}\n  b: {builtin: tiny-test, dtype: fp32}\nnodes:\n  problems: {op: source, params: {path: p.jsonl}}\n  eval:\n    op: evaluate\n    inputs: {prompts: problems, models: [a, b]}\n    params: {split: all, max_new_tokens: 8, base: b}\n";
    let run_dir = run(dir.path(), yaml).unwrap();
    let (b, m) = table(&run_dir, "eval");
    // (`source` drops rows without a prompt or reference answer; `evaluate` skips and
    // counts them when they come from elsewhere: see the unit tests of `prepare`.)
    assert_eq!(
        m.counters.get("prompts_too_long"),
        Some(&2),
        "once per model: {:?}",
        m.counters
    );
    assert_eq!(
        strings(&b, "id"),
        ["ok", "also-ok", "ok", "also-ok"].map(String::from)
    );
    let oracle = floats(&b, "oracle_tokens");
    // Byte-level tokenizer: 10 bytes + the token that ends a response.
    assert_eq!(oracle, [Some(11.0), None, Some(11.0), None]);
    assert_eq!(strings(&b, "response")[..2], strings(&b, "response")[2..]);
    let s = summary_table(&run_dir, "eval");
    assert_eq!(floats(&s, "length_reduction"), [Some(0.0), Some(0.0)]);
    assert_eq!(floats(&s, "accuracy_delta"), [Some(0.0), Some(0.0)]);
    assert_summary_matches_sql(&run_dir, &s, "b");
}

#[test]
fn bad_params_and_models_are_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.jsonl"),
        "{\"id\": \"a\", \"prompt\": \"1+1?\", \"answer\": \"2\"}\n",
    )
    .unwrap();
    let yaml = |params: &str| {
        format!("name: e\nseed: 1\ndevice: cpu\nmodels:\n  a: {{builtin: tiny-test}}\nnodes:\n  problems: {{op: source, params: {{path: p.jsonl}}}}\n  eval:\n    op: evaluate\n    inputs: {{prompts: problems, models: [a]}}\n    params: {params}\n")
    };
    let err = run(
        dir.path(),
        &yaml("{split: all, sampels: 2, delimiter: \"\"}"),
    )
    .unwrap_err();
    assert!(err.contains("did you mean `samples`"), "{err}");
    let err = run(dir.path(), &yaml("{split: all, delimiter: \"\", limit: 0}")).unwrap_err();
    assert!(err.contains("`delimiter` must not be empty"), "{err}");
    assert!(err.contains("`limit` must be at least 1"), "{err}");
    let err = run(dir.path(), &yaml("{split: all, oracle: minimal}")).unwrap_err();
    assert!(err.contains("minimal"), "{err}");
    let err = run(
        dir.path(),
        &yaml("{split: all, base: z, max_new_tokens: 4}"),
    )
    .unwrap_err();
    assert!(err.contains("`base: z` is not one of the models"), "{err}");
}
