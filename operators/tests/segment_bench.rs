//! Throughput of `segment` without the engine: split + Arrow output columns over
//! synthetic reasoning traces. Ignored by default; run with
//! `cargo test --release -p sspo-operators --test segment_bench -- --ignored --nocapture`
//! (`SSPO_BENCH_MB` sets the amount of text, default 1024).

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, StringArray, StringBuilder};
use sspo_operators::segment::{segment_column, Boundary, Splitter};

/// Traces of ~2 KB: steps of 40–300 characters separated by blank lines, some
/// non-ASCII, some short fragments.
fn traces(total_bytes: usize) -> (ArrayRef, ArrayRef) {
    let words = [
        "First",
        "we",
        "compute",
        "48",
        "/",
        "2",
        "=",
        "24",
        "clips",
        "then",
        "add",
        "them",
        "Let",
        "me",
        "double-check",
        "this",
        "result",
        "carefully",
        "Lösung",
        "✓",
        "so",
        "the",
        "total",
        "is",
        "72",
        "Wait,",
        "verify",
        "again:",
        "24",
        "+",
        "48",
    ];
    let mut ids = StringBuilder::new();
    let mut out = StringBuilder::with_capacity(total_bytes / 2000 + 1, total_bytes + 4096);
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut written = 0usize;
    let mut row = 0usize;
    let mut text = String::with_capacity(4096);
    while written < total_bytes {
        text.clear();
        let target = 1000 + (next() % 2000) as usize;
        while text.len() < target {
            let step_len = if next() % 10 == 0 {
                5
            } else {
                40 + (next() % 260) as usize
            };
            let start = text.len();
            while text.len() - start < step_len {
                text.push_str(words[(next() % words.len() as u64) as usize]);
                text.push(' ');
            }
            text.push_str(".\n\n");
        }
        text.push_str("The answer is 72.");
        written += text.len();
        out.append_value(&text);
        ids.append_value(format!("r{row}"));
        row += 1;
    }
    (Arc::new(ids.finish()), Arc::new(out.finish()))
}

#[test]
#[ignore]
fn segment_throughput() {
    let mb: usize = std::env::var("SSPO_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let (ids, texts) = traces(mb << 20);
    let bytes = texts
        .as_any()
        .downcast_ref::<StringArray>()
        .map(|a| a.value_data().len())
        .unwrap_or(0);
    println!(
        "{} rows, {:.1} MB of text, {} rayon threads",
        ids.len(),
        bytes as f64 / 1e6,
        rayon::current_num_threads()
    );
    for (name, splitter) in [
        ("blank lines", Splitter::blank_lines()),
        (
            "blank lines, min_chars 20, max_steps 30",
            Splitter::new(Boundary::Delimiter("\n\n".into()), 20, Some(30)),
        ),
        (
            "regex [.]\\s+",
            Splitter::new(
                Boundary::Regex(regex::Regex::new(r"[.]\s+").unwrap()),
                0,
                None,
            ),
        ),
    ] {
        // In chunks of 4096 rows, as the operator commits them.
        let start = Instant::now();
        let mut steps = 0usize;
        let mut offset = 0;
        while offset < ids.len() {
            let len = 4096.min(ids.len() - offset);
            let b = segment_column(
                &splitter,
                None,
                &ids.slice(offset, len),
                "id",
                &texts.slice(offset, len),
            )
            .unwrap();
            steps += b.num_rows();
            offset += len;
        }
        let s = start.elapsed().as_secs_f64();
        println!(
            "{name}: {steps} steps in {s:.2} s = {:.0} MB/s",
            bytes as f64 / 1e6 / s
        );
    }
}

/// The same traces through the engine: `source` (Parquet) → `segment`, Parquet in and
/// out, chunked commits. `SSPO_BENCH_E2E_MB` sets the amount of text (default 256).
#[test]
#[ignore]
fn segment_node_throughput() {
    use arrow::array::RecordBatch;
    use arrow::datatypes::{DataType, Field, Schema};
    use sspo_engine::{Pipeline, Plan, ProgressMode, RunOptions};

    let mb: usize = std::env::var("SSPO_BENCH_E2E_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let (ids, texts) = traces(mb << 20);
    let bytes = texts
        .as_any()
        .downcast_ref::<StringArray>()
        .map(|a| a.value_data().len())
        .unwrap_or(0);
    let n = ids.len();
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("answer", DataType::Utf8, false),
        Field::new("response", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            ids,
            Arc::new(StringArray::from(vec!["q"; n])),
            Arc::new(StringArray::from(vec!["72"; n])),
            texts,
        ],
    )
    .unwrap();
    let f = std::fs::File::create(dir.path().join("traces.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    drop(batch);
    let yaml = "name: bench\nnodes:\n  rollouts: {op: source, params: {path: traces.parquet}}\n  steps: {op: segment, inputs: {traces: rollouts}}\n";
    let spec = dir.path().join("pipeline.yaml");
    std::fs::write(&spec, yaml).unwrap();
    let plan = Plan::build(
        Pipeline::from_text(yaml, &spec, &[]).unwrap(),
        &sspo_operators::registry(),
    )
    .unwrap();
    let outcomes = sspo_engine::run(
        &plan,
        &RunOptions {
            run_dir: dir.path().join("run"),
            force: vec![],
            until: None,
            progress: ProgressMode::Quiet,
            keep_scratch: false,
            remote: None,
        },
    )
    .unwrap();
    for o in outcomes {
        println!(
            "{}: {} rows in {:.2} s = {:.0} MB/s of text",
            o.node,
            o.rows,
            o.seconds,
            bytes as f64 / 1e6 / o.seconds
        );
    }
}
