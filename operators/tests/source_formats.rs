//! `source` end to end through the engine: every file format, column mapping, GSM8K
//! answers, stable ids, the split, counted problem rows and located configure errors.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

fn names(b: &RecordBatch) -> Vec<String> {
    b.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

fn source_pipeline(params: &str) -> String {
    format!("name: t\nseed: 7\nnodes:\n  problems:\n    op: source\n    params: {params}\n")
}

const GSM8K: &str = r#"{"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?", "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"}
{"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?", "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"}

{"question": "Betty is saving money for a new wallet which costs $100. How much more money does Betty need?", "answer": "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\n#### 5"}
"#;

#[test]
fn source_reads_gsm8k_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gsm8k.jsonl"), GSM8K).unwrap();
    let run_dir = run(dir.path(), &source_pipeline("{path: gsm8k.jsonl}")).unwrap();
    let (b, m) = table(&run_dir, "problems");
    assert_eq!(b.num_rows(), 3);
    assert_eq!(
        names(&b),
        ["id", "prompt", "answer", "answer_text", "split"]
    );
    assert_eq!(strings(&b, "answer"), ["72", "10", "5"]);
    assert!(strings(&b, "answer_text")[0].ends_with("April and May.\n#### 72"));
    assert!(strings(&b, "prompt")[1].starts_with("Weng earns $12"));
    assert_eq!(strings(&b, "split"), ["train"; 3]);
    let ids = strings(&b, "id");
    assert!(ids
        .iter()
        .all(|id| id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit())));
    assert_eq!(
        ids[0],
        sspo_operators::source::content_id(
            "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
        )
    );
    assert!(m.counters.is_empty(), "{:?}", m.counters);
}

#[test]
fn source_ids_are_stable_across_runs_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        ("What is 2+2?", "4"),
        ("What is 3*3?", "9"),
        ("Capital of France?", "Paris"),
    ];
    // JSONL
    let jsonl: String = rows
        .iter()
        .map(|(q, a)| format!("{}\n", serde_json::json!({"problem": q, "solution": a})))
        .collect();
    std::fs::write(dir.path().join("d.jsonl"), jsonl).unwrap();
    // JSON wrapped in {"data": [...]}
    let json = serde_json::json!({"version": 1, "data": rows.iter().map(|(q, a)| serde_json::json!({"problem": q, "solution": a})).collect::<Vec<_>>()});
    std::fs::write(dir.path().join("d.json"), json.to_string()).unwrap();
    // CSV (a comma and quotes inside a field)
    let mut csv = String::from("problem,solution\n");
    for (q, a) in rows {
        csv.push_str(&format!("\"{q}\",{a}\n"));
    }
    std::fs::write(dir.path().join("d.csv"), csv).unwrap();
    // Parquet
    let schema = Arc::new(Schema::new(vec![
        Field::new("problem", DataType::Utf8, false),
        Field::new("solution", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    let f = std::fs::File::create(dir.path().join("d.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();

    let mut all = Vec::new();
    for ext in ["jsonl", "json", "csv", "parquet"] {
        let sub = dir.path().join(ext);
        std::fs::create_dir(&sub).unwrap();
        let yaml = source_pipeline(&format!("{{path: ../d.{ext}}}"));
        let run_dir = run(&sub, &yaml).unwrap_or_else(|e| panic!("{ext}: {e}"));
        let (b, _) = table(&run_dir, "problems");
        assert_eq!(strings(&b, "answer"), ["4", "9", "Paris"], "{ext}");
        assert_eq!(strings(&b, "prompt")[2], "Capital of France?", "{ext}");
        all.push(strings(&b, "id"));
        // A second run is cached and gives the same table.
        let again = run(&sub, &yaml).unwrap();
        assert_eq!(
            strings(&table(&again, "problems").0, "id"),
            *all.last().unwrap()
        );
    }
    assert!(all.windows(2).all(|w| w[0] == w[1]), "{all:?}");
}

#[test]
fn source_maps_columns_and_keeps_extras_typed() {
    let dir = tempfile::tempdir().unwrap();
    let data = r#"{"qid": 17, "q": "How many legs does a spider have?", "gold": "The answer is 8.", "level": 1, "score": 0.5, "ok": true, "meta": {"src": "x"}, "split": "dev"}
{"qid": 18, "q": "What is 10% of 50?", "gold": "\\boxed{5}", "level": 2, "score": 1, "ok": false, "meta": [1, 2], "split": "dev"}
"#;
    std::fs::write(dir.path().join("d.jsonl"), data).unwrap();
    let yaml = source_pipeline("{path: d.jsonl, columns: {prompt: q, answer: gold, id: qid}}");
    let run_dir = run(dir.path(), &yaml).unwrap();
    let (b, _) = table(&run_dir, "problems");
    assert_eq!(
        names(&b),
        [
            "id",
            "prompt",
            "answer",
            "answer_text",
            "split",
            "level",
            "score",
            "ok",
            "meta",
            "input_split"
        ]
    );
    assert_eq!(strings(&b, "id"), ["17", "18"]);
    assert_eq!(strings(&b, "answer"), ["8", "5"]);
    assert_eq!(
        strings(&b, "answer_text"),
        ["The answer is 8.", "\\boxed{5}"]
    );
    let level = b
        .column_by_name("level")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(level.values(), &[1, 2]);
    let score = b
        .column_by_name("score")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(score.values(), &[0.5, 1.0]);
    assert_eq!(
        b.column_by_name("ok").unwrap().data_type(),
        &DataType::Boolean
    );
    assert_eq!(strings(&b, "meta"), [r#"{"src":"x"}"#, "[1,2]"]);
    assert_eq!(strings(&b, "input_split"), ["dev", "dev"]);
}

#[test]
fn source_counts_problem_rows_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = r#"{"id": "a", "question": "1+1?", "answer": "2"}
{"id": "b", "question": "", "answer": "3"}
{"id": "c", "answer": "3"}
{"id": "d", "question": "no answer here", "answer": null}
{"id": "e", "question": "worked, no number", "answer": "We think about it.\nThen we stop."}
{"id": "a", "question": "duplicate id", "answer": "5"}
{"id": "f", "question": "2+2?", "answer": 4}
"#;
    std::fs::write(dir.path().join("d.jsonl"), data).unwrap();
    let run_dir = run(
        dir.path(),
        &source_pipeline("{path: d.jsonl, answer_format: gsm8k}"),
    )
    .unwrap();
    let (b, m) = table(&run_dir, "problems");
    assert_eq!(strings(&b, "id"), ["a", "f"]);
    assert_eq!(strings(&b, "prompt"), ["1+1?", "2+2?"]);
    assert_eq!(strings(&b, "answer"), ["2", "4"]);
    let expected: BTreeMap<String, u64> = [
        ("rows_without_prompt".to_string(), 2),
        ("rows_without_answer".to_string(), 2),
        ("duplicate_ids".to_string(), 1),
    ]
    .into();
    assert_eq!(m.counters, expected);
}

#[test]
fn source_split_is_deterministic_and_near_the_fraction() {
    let dir = tempfile::tempdir().unwrap();
    let data: String = (0..2000)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"id": i, "prompt": format!("{i}+1?"), "answer": i + 1})
            )
        })
        .collect();
    std::fs::write(dir.path().join("d.jsonl"), data).unwrap();
    let yaml =
        source_pipeline("{path: d.jsonl, split: {test_fraction: 0.1, seed: 3}, chunk_rows: 300}");
    let run_dir = run(dir.path(), &yaml).unwrap();
    let (b, m) = table(&run_dir, "problems");
    assert_eq!(b.num_rows(), 2000);
    assert_eq!(m.chunks.len(), 7);
    let split = strings(&b, "split");
    let test = split.iter().filter(|s| *s == "test").count();
    assert!((140..=260).contains(&test), "{test} test rows of 2000");
    assert!(split.iter().all(|s| s == "test" || s == "train"));
    // Same seed in another run dir: the same split; another seed: a different one.
    let sub = dir.path().join("again");
    std::fs::create_dir(&sub).unwrap();
    let yaml2 = source_pipeline("{path: ../d.jsonl, split: {test_fraction: 0.1, seed: 3}}");
    assert_eq!(
        strings(&table(&run(&sub, &yaml2).unwrap(), "problems").0, "split"),
        split
    );
    let sub = dir.path().join("other");
    std::fs::create_dir(&sub).unwrap();
    let yaml3 = source_pipeline("{path: ../d.jsonl, split: {test_fraction: 0.1, seed: 4}}");
    assert_ne!(
        strings(&table(&run(&sub, &yaml3).unwrap(), "problems").0, "split"),
        split
    );
}

#[test]
fn source_limit_and_glob() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("data/b.jsonl"),
        "{\"id\": 3, \"prompt\": \"p3\", \"answer\": \"3\"}\n{\"id\": 4, \"prompt\": \"p4\", \"answer\": \"4\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("data/a.csv"),
        "id,prompt,answer,extra\n1,p1,1,x\n2,,2,y\n5,p5,5,z\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("data/notes.txt"), "ignored").unwrap();
    let run_dir = run(dir.path(), &source_pipeline("{path: \"data/*.*sv\"}")).unwrap();
    assert_eq!(strings(&table(&run_dir, "problems").0, "id"), ["1", "5"]);
    let sub = dir.path().join("lim");
    std::fs::create_dir(&sub).unwrap();
    let run_dir = run(&sub, &source_pipeline("{path: \"../data/*l\", limit: 3}"));
    // `*l` matches only b.jsonl.
    assert_eq!(
        strings(&table(&run_dir.unwrap(), "problems").0, "id"),
        ["3", "4"]
    );
    let sub = dir.path().join("lim2");
    std::fs::create_dir(&sub).unwrap();
    let run_dir = run(
        &sub,
        &source_pipeline("{path: \"../data/[ab].*s*\", limit: 3}"),
    )
    .unwrap();
    let (b, m) = table(&run_dir, "problems");
    // a.csv then b.jsonl; the prompt-less row is counted; three rows emitted.
    assert_eq!(strings(&b, "id"), ["1", "5", "3"]);
    assert_eq!(m.counters.get("rows_without_prompt"), Some(&1));
    assert_eq!(
        strings(&b, "extra")[..2],
        ["x".to_string(), "z".to_string()]
    );
    assert!(b.column_by_name("extra").unwrap().is_null(2));
}

#[test]
fn source_configure_errors_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let err = run(dir.path(), &source_pipeline("{path: missing.jsonl}")).unwrap_err();
    assert!(err.contains("pipeline.yaml:6:"), "{err}");
    assert!(
        err.contains("no such file") && err.contains("missing.jsonl"),
        "{err}"
    );
    let err = run(dir.path(), &source_pipeline("{path: \"nothing/*.jsonl\"}")).unwrap_err();
    assert!(err.contains("no file matches"), "{err}");
    std::fs::write(dir.path().join("d.txt"), "x").unwrap();
    let err = run(dir.path(), &source_pipeline("{path: d.txt}")).unwrap_err();
    assert!(err.contains("cannot tell the format"), "{err}");
    let err = run(
        dir.path(),
        &source_pipeline("{path: d.txt, answer_fromat: gsm8k}"),
    )
    .unwrap_err();
    assert!(err.contains("did you mean `answer_format`"), "{err}");
    let err = run(
        dir.path(),
        &source_pipeline("{path: d.txt, answer_format: gsm}"),
    )
    .unwrap_err();
    assert!(err.contains("unknown value `gsm`"), "{err}");
    let err = run(dir.path(), &source_pipeline("{columns: {prompt: q}}")).unwrap_err();
    assert!(err.contains("needs `path`"), "{err}");
    std::fs::write(
        dir.path().join("d.jsonl"),
        "{\"prompt\": \"a\", \"answer\": \"1\"}\n",
    )
    .unwrap();
    let err = run(
        dir.path(),
        &source_pipeline("{path: d.jsonl, split: {test_fraction: 1.5}}"),
    )
    .unwrap_err();
    assert!(err.contains("test_fraction"), "{err}");
}

#[test]
fn source_run_errors_name_the_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.jsonl"),
        "{\"prompt\": \"a\", \"answer\": \"1\"}\n\n{\"prompt\": \"b\", \"answer\": 2,}\n",
    )
    .unwrap();
    let err = run(dir.path(), &source_pipeline("{path: bad.jsonl}")).unwrap_err();
    assert!(err.contains("bad.jsonl:3: invalid JSON"), "{err}");
    std::fs::write(
        dir.path().join("d.jsonl"),
        "{\"question\": \"a\", \"answer\": \"1\"}\n",
    )
    .unwrap();
    let err = run(
        dir.path(),
        &source_pipeline("{path: d.jsonl, columns: {prompt: questoin}}"),
    )
    .unwrap_err();
    assert!(
        err.contains("no column `questoin`") && err.contains("did you mean `question`"),
        "{err}"
    );
    std::fs::write(dir.path().join("e.json"), "{\"a\": 1}").unwrap();
    let err = run(dir.path(), &source_pipeline("{path: e.json}")).unwrap_err();
    assert!(err.contains("no array of objects"), "{err}");
}

#[test]
fn source_fingerprint_follows_content_not_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("d.jsonl"),
        "{\"prompt\": \"a\", \"answer\": \"1\"}\n",
    )
    .unwrap();
    let yaml = source_pipeline("{path: d.jsonl}");
    let run_dir = run(dir.path(), &yaml).unwrap();
    let fp1 = table(&run_dir, "problems").1.fingerprint;
    std::fs::write(
        dir.path().join("d.jsonl"),
        "{\"prompt\": \"a\", \"answer\": \"2\"}\n",
    )
    .unwrap();
    let run_dir = run(dir.path(), &yaml).unwrap();
    let (b, m) = table(&run_dir, "problems");
    assert_ne!(m.fingerprint, fp1);
    assert_eq!(strings(&b, "answer"), ["2"]);
}

/// `synth_rows: sft` gives the SFT corpus: each problem's trace row, then (with
/// `probe_sft`) its probe-teaching rows, with the problem's answer on every row.
#[test]
fn source_synth_sft_rows() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "\
nodes:
  problems: {op: source, params: {synth: {n: 5, seed: 4}}}
  corpus: {op: source, params: {synth: {n: 5, seed: 4, probe_sft: true, probe_per_problem: 2}, synth_rows: sft}}
";
    let run_dir = run(dir.path(), yaml).unwrap();
    let (p, _) = table(&run_dir, "problems");
    let (c, _) = table(&run_dir, "corpus");
    let kinds = strings(&c, "kind");
    let ids = strings(&c, "id");
    let responses = strings(&c, "response");
    let answers = strings(&c, "answer");
    assert_eq!(kinds.iter().filter(|k| *k == "trace").count(), 5);
    assert_eq!(kinds.iter().filter(|k| *k == "probe").count(), 10);
    let traces = strings(&p, "trace");
    let p_answers = strings(&p, "answer");
    for (i, id) in strings(&p, "id").iter().enumerate() {
        let j = ids.iter().position(|x| x == id).expect("trace row");
        assert_eq!(kinds[j], "trace");
        assert_eq!(responses[j], traces[i]);
        // Its probe rows follow, and carry the problem's answer.
        for k in 1..=2 {
            assert!(
                ids[j + k].starts_with(&format!("{id}-probe-")),
                "{}",
                ids[j + k]
            );
            assert_eq!(kinds[j + k], "probe");
            assert_eq!(answers[j + k], p_answers[i]);
        }
    }
    let err = run(
        dir.path(),
        "nodes:\n  a: {op: source, params: {path: x.jsonl, synth_rows: sft}}\n",
    )
    .unwrap_err();
    assert!(err.contains("`synth_rows` needs `synth`"), "{err}");
}
