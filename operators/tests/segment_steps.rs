//! `segment` end to end through the engine: spans that reproduce the text, merging,
//! caps, regexes, unicode, token spans from a tokenizer.json, the key column, counted
//! empty texts and located configure errors.

mod common;
use common::*;

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int32Type;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::Tokenizer;

fn ints(b: &RecordBatch, col: &str) -> Vec<Option<i32>> {
    let a = b.column_by_name(col).unwrap().as_primitive::<Int32Type>();
    (0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i)))
        .collect()
}

const RESPONSES: [&str; 4] = [
    "First, 48 / 2 = 24 clips in May.\n\nThen 48 + 24 = 72.\n\nLet me double-check: 24 + 48 = 72.\n\nThe answer is 72.",
    "Ok.\n\nSo 3 * 4 = 12.\n\n\n\nHmm.\n\nThe answer is 12.",
    "",
    "Sei x = 3 · 4 = 12.\n\nDann ist die Lösung 12 ✓.\n\n答案是 12。\n\n🙂 fertig",
];

/// A `source` over rows with a `response` column, then `segment` with `params`.
fn pipeline(dir: &Path, params: &str, key: &str) -> String {
    let data: String = RESPONSES
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "{}\n",
                serde_json::json!({key: format!("r{i}"), "prompt": format!("q{i}"), "answer": "1", "response": r})
            )
        })
        .collect();
    std::fs::write(dir.join("traces.jsonl"), data).unwrap();
    format!(
        "name: t\nnodes:\n  rollouts: {{op: source, params: {{path: traces.jsonl, columns: {{id: {key}}}}}}}\n  steps:\n    op: segment\n    inputs: {{traces: rollouts}}\n    params: {params}\n"
    )
}

/// Steps of each key, in order, as (text, char_start, char_end).
fn steps_by_key(b: &RecordBatch, key: &str) -> HashMap<String, Vec<(String, i32, i32)>> {
    let keys = strings(b, key);
    let texts = strings(b, "text");
    let cs = ints(b, "char_start");
    let ce = ints(b, "char_end");
    let step = ints(b, "step");
    let mut out: HashMap<String, Vec<(String, i32, i32)>> = HashMap::new();
    for i in 0..b.num_rows() {
        let v = out.entry(keys[i].clone()).or_default();
        assert_eq!(
            step[i],
            Some(v.len() as i32 + 1),
            "steps are 1-based and consecutive"
        );
        v.push((texts[i].clone(), cs[i].unwrap(), ce[i].unwrap()));
    }
    out
}

fn assert_cover(steps: &[(String, i32, i32)], text: &str) {
    let chars: Vec<char> = text.chars().collect();
    let joined: String = steps.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(joined, text);
    let mut prev = 0;
    for (t, a, b) in steps {
        assert_eq!(*a, prev);
        let sub: String = chars[*a as usize..*b as usize].iter().collect();
        assert_eq!(&sub, t);
        prev = *b;
    }
    assert_eq!(prev as usize, chars.len());
}

#[test]
fn segment_spans_reproduce_each_response() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = pipeline(dir.path(), "{}", "id");
    let run_dir = run(dir.path(), &yaml).unwrap();
    let (b, m) = table(&run_dir, "steps");
    let schema = b.schema();
    let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        cols,
        [
            "id",
            "step",
            "text",
            "char_start",
            "char_end",
            "tok_start",
            "tok_end",
            "n_tokens"
        ]
    );
    let by = steps_by_key(&b, "id");
    assert_eq!(by["r0"].len(), 4);
    assert_eq!(by["r0"][1].0, "Then 48 + 24 = 72.\n\n");
    assert_eq!(by["r1"].len(), 4);
    assert_eq!(by["r1"][1].0, "So 3 * 4 = 12.\n\n\n\n");
    assert_eq!(by["r3"].len(), 4);
    for (i, r) in RESPONSES.iter().enumerate() {
        if r.is_empty() {
            assert!(!by.contains_key("r2"));
            continue;
        }
        assert_cover(&by[&format!("r{i}")], r);
    }
    assert!(ints(&b, "tok_start").iter().all(Option::is_none));
    assert!(ints(&b, "n_tokens").iter().all(Option::is_none));
    assert_eq!(m.counters.get("empty_texts"), Some(&1));
    // Output order: input order, then step order.
    let keys = strings(&b, "id");
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}

#[test]
fn segment_keeps_rollout_id_as_key() {
    let dir = tempfile::tempdir().unwrap();
    // The file's key column is `rollout_id`; `source` also makes an `id`.
    let data = "{\"rollout_id\": \"x-1\", \"prompt\": \"q\", \"answer\": \"1\", \"response\": \"a\\n\\nb\"}\n";
    std::fs::write(dir.path().join("traces.jsonl"), data).unwrap();
    let yaml = "name: t\nnodes:\n  rollouts: {op: source, params: {path: traces.jsonl}}\n  steps: {op: segment, inputs: {traces: rollouts}}\n";
    let run_dir = run(dir.path(), yaml).unwrap();
    let (b, _) = table(&run_dir, "steps");
    assert_eq!(b.schema().field(0).name(), "rollout_id");
    assert_eq!(strings(&b, "rollout_id"), ["x-1", "x-1"]);
}

#[test]
fn segment_min_chars_and_max_steps() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = pipeline(dir.path(), "{min_chars: 6, max_steps: 3}", "id");
    let run_dir = run(dir.path(), &yaml).unwrap();
    let by = steps_by_key(&table(&run_dir, "steps").0, "id");
    // "Ok." merges into the next step, "Hmm." into the previous one.
    let r1: Vec<&str> = by["r1"].iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        r1,
        ["Ok.\n\nSo 3 * 4 = 12.\n\n\n\nHmm.\n\n", "The answer is 12."]
    );
    // r0 has four long steps: capped at three, the tail merged into the last.
    assert_eq!(by["r0"].len(), 3);
    assert_eq!(
        by["r0"][2].0,
        "Let me double-check: 24 + 48 = 72.\n\nThe answer is 72."
    );
    for (i, r) in RESPONSES.iter().enumerate() {
        if let Some(s) = by.get(&format!("r{i}")) {
            assert_cover(s, r);
        }
    }
}

#[test]
fn segment_regex_and_custom_delimiter() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = pipeline(dir.path(), "{regex: '[.。]\\s*'}", "id");
    let run_dir = run(dir.path(), &yaml).unwrap();
    let by = steps_by_key(&table(&run_dir, "steps").0, "id");
    let r0: Vec<&str> = by["r0"].iter().map(|s| s.0.as_str()).collect();
    assert_eq!(r0[0], "First, 48 / 2 = 24 clips in May.\n\n");
    assert_eq!(*r0.last().unwrap(), "The answer is 72.");
    assert_cover(&by["r3"], RESPONSES[3]);
    assert!(by["r3"].iter().any(|s| s.0 == "答案是 12。\n\n"));

    let sub = dir.path().join("delim");
    std::fs::create_dir(&sub).unwrap();
    let yaml = pipeline(&sub, "{delimiter: \"=\"}", "id");
    let run_dir = run(&sub, &yaml).unwrap();
    let by = steps_by_key(&table(&run_dir, "steps").0, "id");
    assert_eq!(by["r0"][0].0, "First, 48 / 2 = ");
    assert_cover(&by["r0"], RESPONSES[0]);
}

/// A word-level tokenizer over the words of the test responses, saved as tokenizer.json.
fn write_tokenizer(path: &Path) -> Tokenizer {
    let mut vocab: HashMap<String, u32> = HashMap::new();
    vocab.insert("[UNK]".into(), 0);
    for r in RESPONSES {
        for w in r
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let n = vocab.len() as u32;
            vocab.entry(w.to_string()).or_insert(n);
        }
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok.save(path, false).unwrap();
    Tokenizer::from_file(path).unwrap()
}

#[test]
fn segment_token_spans_index_the_whole_response() {
    let dir = tempfile::tempdir().unwrap();
    let tok = write_tokenizer(&dir.path().join("tokenizer.json"));
    let yaml = pipeline(dir.path(), "{tokenizer: tokenizer.json}", "id");
    let run_dir = run(dir.path(), &yaml).unwrap();
    let (b, _) = table(&run_dir, "steps");
    let keys = strings(&b, "id");
    let texts = strings(&b, "text");
    let (ts, te, nt) = (
        ints(&b, "tok_start"),
        ints(&b, "tok_end"),
        ints(&b, "n_tokens"),
    );
    for (i, r) in RESPONSES.iter().enumerate() {
        if r.is_empty() {
            continue;
        }
        let enc = tok.encode(*r, false).unwrap();
        let all: Vec<String> = enc.get_tokens().to_vec();
        let rows: Vec<usize> = (0..b.num_rows())
            .filter(|&j| keys[j] == format!("r{i}"))
            .collect();
        let mut prev = 0;
        for j in rows {
            let (a, e) = (ts[j].unwrap() as usize, te[j].unwrap() as usize);
            assert_eq!(a, prev, "token spans are contiguous");
            assert_eq!(nt[j], Some((e - a) as i32));
            // The step's own tokens are those of the full response in its span.
            let step_tokens: Vec<String> = tok
                .encode(texts[j].as_str(), false)
                .unwrap()
                .get_tokens()
                .to_vec();
            assert_eq!(&all[a..e], &step_tokens[..], "step {:?}", texts[j]);
            prev = e;
        }
        assert_eq!(prev, all.len(), "every token belongs to a step");
    }
}

#[test]
fn segment_configure_errors_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let err = run(
        dir.path(),
        &pipeline(dir.path(), "{regex: '(unclosed'}", "id"),
    )
    .unwrap_err();
    assert!(
        err.contains("pipeline.yaml:7:") && err.contains("invalid regex"),
        "{err}"
    );
    let err = run(
        dir.path(),
        &pipeline(dir.path(), "{regex: 'a', delimiter: b}", "id"),
    )
    .unwrap_err();
    assert!(err.contains("not both"), "{err}");
    let err = run(
        dir.path(),
        &pipeline(dir.path(), "{tokenizer: nope.json}", "id"),
    )
    .unwrap_err();
    assert!(
        err.contains("no such file") && err.contains("nope.json"),
        "{err}"
    );
    let err = run(dir.path(), &pipeline(dir.path(), "{max_steps: 0}", "id")).unwrap_err();
    assert!(err.contains("max_steps"), "{err}");
    let err = run(dir.path(), &pipeline(dir.path(), "{min_char: 3}", "id")).unwrap_err();
    assert!(err.contains("did you mean `min_chars`"), "{err}");
    let err = run(dir.path(), &pipeline(dir.path(), "{regex: 'x*'}", "id")).unwrap_err();
    assert!(err.contains("empty string"), "{err}");
}

/// With a `model` input, token spans follow the shared step-wise rule with that model's
/// tokenizer: the spans `probe` and `train` use for the same steps after any context.
#[test]
fn segment_token_spans_from_a_model_port_match_the_probe_rule() {
    use sspo_engine::{ModelRef, ModelSource};
    use sspo_operators::model_port::load_tokenizer;
    use sspo_operators::step_tokens::trace_tokens;

    let dir = tempfile::tempdir().unwrap();
    let yaml = "\
models:
  m: {builtin: tiny-synth}
nodes:
  problems: {op: source, params: {synth: {n: 6, seed: 3}}}
  steps: {op: segment, inputs: {traces: problems, model: m}, params: {column: trace}}
";
    let run_dir = run(dir.path(), yaml).unwrap();
    let (b, _) = table(&run_dir, "steps");
    let (p, _) = table(&run_dir, "problems");
    let tok = load_tokenizer(&ModelRef {
        name: "m".into(),
        source: ModelSource::Builtin("tiny-synth".into()),
        options: Default::default(),
        identity: String::new(),
    })
    .unwrap();
    let keys = strings(&b, "id");
    let texts = strings(&b, "text");
    let (ts, te) = (ints(&b, "tok_start"), ints(&b, "tok_end"));
    let context = "Q: some prompt\nA:";
    for id in strings(&p, "id") {
        let rows: Vec<usize> = (0..b.num_rows()).filter(|&j| keys[j] == id).collect();
        assert!(rows.len() >= 3, "{id} has its steps");
        let steps: Vec<&str> = rows.iter().map(|&j| texts[j].as_str()).collect();
        let tt = trace_tokens(&tok, context, &steps).unwrap();
        for (k, &j) in rows.iter().enumerate() {
            let (a, e) = tt.step_spans[k];
            assert_eq!(
                (ts[j].unwrap() as usize, te[j].unwrap() as usize),
                (a - tt.context_len, e - tt.context_len),
                "{id} step {k}"
            );
            let decoded = tok.decode(&tt.ids[a..e], false).unwrap();
            assert_eq!(decoded, steps[k], "{id} step {k} round-trips");
        }
    }
}
