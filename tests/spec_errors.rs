//! Broken specs: every error is reported at once, located as FILE:LINE:COL, specific,
//! with a suggestion where a name is misspelt; `validate` exits with 2.

mod common;

use common::*;

fn validate(spec: &str, extra: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("data.jsonl"),
        "{\"prompt\": \"1+1?\", \"answer\": \"2\"}\n",
    )
    .expect("data");
    std::fs::write(dir.path().join("bad.yaml"), spec).expect("spec");
    let mut args = vec!["validate", "bad.yaml"];
    args.extend(extra);
    let o = sspo(dir.path(), &args);
    (o.status.code().unwrap_or(-1), stderr(&o))
}

/// Asserts that `err` has a line starting with `bad.yaml:LINE:COL: error: ` that
/// contains `text`, and returns that line with the following help line, if any.
fn expect_error(err: &str, line: u32, col: u32, text: &str) -> String {
    let prefix = format!("bad.yaml:{line}:{col}: error: ");
    let lines: Vec<&str> = err.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with(&prefix) && l.contains(text))
        .unwrap_or_else(|| panic!("no error `{prefix}…{text}…` in:\n{err}"));
    let mut out = lines[i].to_string();
    if let Some(next) = lines
        .get(i + 1)
        .filter(|l| l.trim_start().starts_with("help:"))
    {
        out.push('\n');
        out.push_str(next);
    }
    out
}

#[test]
fn a_valid_spec_passes() {
    let (code, err) = validate(
        "nodes:\n  a: {op: source, params: {path: data.jsonl}}\n  b: {op: segment, inputs: {traces: a}, params: {column: prompt}}\n",
        &[],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn misspelt_names_get_suggestions() {
    let spec = "\
name: broken
sede: 3
nodes:
  problems:
    op: sourse
    params: {path: data.jsonl}
  steps:
    op: segment
    inputs: {traces: problms}
    params: {colum: prompt}
";
    let (code, err) = validate(spec, &[]);
    assert_eq!(code, 2, "{err}");
    let e = expect_error(&err, 2, 1, "unknown key `sede`");
    assert!(e.contains("did you mean `seed`?"), "{e}");
    let e = expect_error(&err, 5, 9, "unknown operator `sourse`");
    assert!(e.contains("did you mean `source`?"), "{e}");
    let e = expect_error(
        &err,
        9,
        22,
        "names `problms`, which is neither a node nor a model",
    );
    assert!(e.contains("did you mean `problems`?"), "{e}");
    let e = expect_error(&err, 10, 14, "unknown key `colum`");
    assert!(e.contains("did you mean `column`?"), "{e}");
    assert!(err.contains("4 errors found"), "{err}");
}

#[test]
fn cycles_are_named_as_a_chain() {
    let spec = "\
nodes:
  src: {op: source, params: {path: data.jsonl}}
  a: {op: segment, inputs: {traces: c}}
  b: {op: segment, inputs: {traces: a}}
  c: {op: segment, inputs: {traces: b}}
";
    let (code, err) = validate(spec, &[]);
    assert_eq!(code, 2);
    let e = expect_error(&err, 3, 3, "cycle: ");
    assert!(
        e.contains("a -> b -> c -> a")
            || e.contains("c -> a -> b -> c")
            || e.contains("b -> c -> a -> b"),
        "{e}"
    );
}

#[test]
fn port_kinds_and_names_are_checked() {
    let spec = "\
models:
  base: {builtin: tiny-synth}
nodes:
  src: {op: source, params: {path: data.jsonl}}
  a: {op: segment, inputs: {traces: base}}
  b: {op: segment, inputs: {tracez: src}}
";
    let (code, err) = validate(spec, &[]);
    assert_eq!(code, 2);
    expect_error(
        &err,
        5,
        37,
        "port `traces` of `segment` takes a table, but `base` is a model",
    );
    let e = expect_error(&err, 6, 29, "has no input port `tracez`");
    assert!(e.contains("did you mean `traces`?"), "{e}");
    expect_error(&err, 6, 3, "needs input `traces`");
}

#[test]
fn a_column_the_upstream_table_lacks_is_reported() {
    let spec = "\
nodes:
  src: {op: source, params: {path: data.jsonl}}
  steps: {op: segment, inputs: {traces: src}, params: {column: prompt}}
  again:
    op: segment
    inputs: {traces: steps}
    params: {column: response}
";
    let (code, err) = validate(spec, &[]);
    assert_eq!(code, 2);
    let e = expect_error(
        &err,
        6,
        22,
        "needs column `response` on port `traces`, but `steps` (op `segment`) does not produce it",
    );
    assert!(e.contains("help:"), "{e}");
}

#[test]
fn missing_files_and_bad_values_are_located() {
    let spec = "\
device: tpu
models:
  m: {path: /no/such/model}
nodes:
  src:
    op: source
    params:
      path: missing.jsonl
      split: {test_fraction: 2.5}
  steps:
    op: segment
    inputs: {traces: src}
    params: {min_chars: many}
";
    let (code, err) = validate(spec, &[]);
    assert_eq!(code, 2);
    expect_error(&err, 1, 9, "unknown device `tpu`");
    expect_error(
        &err,
        3,
        13,
        "model directory `/no/such/model` does not exist",
    );
    expect_error(&err, 8, 13, "missing.jsonl");
    expect_error(&err, 13, 25, "invalid type");
}

#[test]
fn set_overrides_are_validated_like_the_file() {
    let spec = "nodes:\n  src: {op: source, params: {path: data.jsonl}}\n  b: {op: segment, inputs: {traces: src}}\n";
    let (code, err) = validate(spec, &["--set", "nodes.b.params.min_chars=lots"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--set nodes.b.params.min_chars=lots:1:"),
        "{err}"
    );
    assert!(err.contains("invalid type"), "{err}");
    let (code, err) = validate(spec, &["--set", "nodes.b.params.max_stepz=3"]);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean `max_steps`?"), "{err}");
    let (code, err) = validate(spec, &["--set", "nodes.b.params.min_chars=3"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn yaml_syntax_errors_are_located() {
    let (code, err) = validate("nodes:\n  a: {op: source\n  b: 1\n", &[]);
    assert_eq!(code, 2);
    assert!(err.starts_with("bad.yaml:"), "{err}");
    assert!(err.contains("invalid YAML"), "{err}");
}

#[test]
fn a_node_named_like_an_evaluate_summary_table_is_refused() {
    let spec = "\
models:
  base: {builtin: tiny-synth}
nodes:
  p: {op: source, params: {path: data.jsonl}}
  eval: {op: evaluate, inputs: {prompts: p, models: [base]}}
  eval_summary: {op: segment, inputs: {traces: p}, params: {column: prompt}}
";
    let (code, err) = validate(spec, &[]);
    assert_eq!(code, 2, "{err}");
    let e = expect_error(&err, 6, 3, "would both be the SQL table `eval_summary`");
    assert!(e.contains("help: rename node `eval_summary`"), "{e}");
}

// A spec with one bad value reports exactly one error: a node whose operator, params or
// inputs are wrong adds no errors to the nodes that read it, while independent errors are
// all kept.

/// `validate pipelines/quickstart.yaml --set SET`: exactly one error, containing `text`.
fn quickstart_one_error(set: &str, text: &str) {
    let o = sspo(
        &repo(),
        &["validate", "pipelines/quickstart.yaml", "--set", set],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(text), "{err}");
    assert!(err.contains("1 error found"), "{set}:\n{err}");
}

#[test]
fn a_bad_param_of_a_node_is_its_only_error() {
    quickstart_one_error(
        "nodes.rollouts.params.samples=four",
        "--set nodes.rollouts.params.samples=four:1:31: error: invalid type: string \"four\", expected usize",
    );
}

#[test]
fn an_unknown_operator_or_input_is_its_only_error() {
    quickstart_one_error("nodes.rollouts.op=generat", "unknown operator `generat`");
    quickstart_one_error(
        "nodes.rollouts.inputs.prompts=problemz",
        "names `problemz`, which is neither a node nor a model",
    );
    // `steps` reads `rollouts`; `pairs` and `probes` read both.
    quickstart_one_error(
        "nodes.steps.inputs.tracez=rollouts",
        "has no input port `tracez`",
    );
}

#[test]
fn a_failed_node_on_a_list_port_is_its_only_error() {
    // `eval` reads the trained model `sspo` through `models: [base, sspo]`.
    quickstart_one_error("nodes.sspo.params.lr=fast", "invalid type");
}

#[test]
fn independent_errors_are_all_kept() {
    let o = sspo(
        &repo(),
        &[
            "validate",
            "pipelines/quickstart.yaml",
            "--set",
            "nodes.rollouts.params.samples=four",
            "--set",
            "nodes.test_problems.params.synth.n=many",
        ],
    );
    let err = stderr(&o);
    assert!(err.contains("2 errors found"), "{err}");
}

#[test]
fn a_node_without_op_is_reported_once() {
    // `steps` reads the broken node and `again` reads `steps`: neither adds an error.
    let spec = "nodes:\n  src: {params: {path: data.jsonl}}\n  steps: {op: segment, inputs: {traces: src}}\n  again: {op: segment, inputs: {traces: steps}}\n";
    let (code, err) = validate(spec, &[]);
    assert_eq!(code, 2, "{err}");
    expect_error(&err, 2, 3, "node `src` has no `op`");
    assert!(err.contains("1 error found"), "{err}");
}

#[test]
fn a_model_without_a_source_is_reported_once() {
    // The node that names the broken model does not add "neither a node nor a model".
    let spec = "models:\n  base: {dtype: fp32}\nnodes:\n  src: {op: source, params: {path: data.jsonl}}\n  steps: {op: segment, inputs: {traces: src, model: base}, params: {column: prompt}}\n";
    let (code, err) = validate(spec, &[]);
    assert_eq!(code, 2, "{err}");
    expect_error(
        &err,
        2,
        3,
        "model `base` needs `builtin`, `path` or `server`",
    );
    assert!(err.contains("1 error found"), "{err}");
}
