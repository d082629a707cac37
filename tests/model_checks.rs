//! `validate` checks the models on disk: broken HF directories and GGUF files are refused
//! with an error located at the model's `path:` value, naming the file and what is wrong,
//! before anything runs; good ones pass.

mod common;

use std::path::Path;

use serde_json::Value;
use sspo_model::{LoadOptions, Model};

use common::*;

/// `base` (line 2) is the model under test: its path value starts at column 16. The
/// generate node asks for the chat template when `chat` says so.
fn spec(path: &Path, chat: bool) -> String {
    format!(
        "models:\n  base: {{path: {}}}\nnodes:\n  problems: {{op: source, params: {{path: data.jsonl}}}}\n  rollouts:\n    op: generate\n    inputs: {{prompts: problems, model: base}}\n    params: {{chat_template: {chat}}}\n",
        path.display()
    )
}

/// Runs `sspo-run ARGS` with `bad.yaml` = `spec` and a data file in `dir`.
fn sspo_on(dir: &Path, spec: &str, args: &[&str]) -> (i32, String) {
    std::fs::write(
        dir.join("data.jsonl"),
        "{\"prompt\": \"1+1?\", \"answer\": \"2\"}\n",
    )
    .expect("data");
    std::fs::write(dir.join("bad.yaml"), spec).expect("spec");
    let o = sspo(dir, args);
    (o.status.code().unwrap_or(-1), stderr(&o))
}

fn validate(dir: &Path, spec: &str) -> (i32, String) {
    sspo_on(dir, spec, &["validate", "bad.yaml"])
}

/// A tiny model saved as a HF directory `dir/m` (tokenizer with a chat template).
fn good_model(dir: &Path) -> std::path::PathBuf {
    let tok = dir.join("tok");
    sspo_operators::model_port::write_byte_tokenizer(&tok).expect("tokenizer");
    let m = Model::builtin("tiny-test", &tok, &LoadOptions::default(), 3).expect("model");
    let out = dir.join("m");
    m.save_dir(&out).expect("save");
    out
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
    f(&mut v);
    std::fs::write(path, v.to_string()).expect("write");
}

/// The one error of a failed validation, at the model's path value, and its help line.
fn the_model_error(code: i32, err: &str) -> String {
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("1 error found"), "{err}");
    let line = err
        .lines()
        .position(|l| l.starts_with("bad.yaml:2:16: error: model `base`: "))
        .unwrap_or_else(|| panic!("no error at the model's path in:\n{err}"));
    err.lines()
        .skip(line)
        .take(2)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Breaks a saved model in `dir` with `edit` and returns the error `validate` reports.
fn broken(edit: impl FnOnce(&Path)) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = good_model(tmp.path());
    edit(&model);
    let (code, err) = validate(tmp.path(), &spec(&model, false));
    the_model_error(code, &err)
}

#[test]
fn a_good_directory_passes_with_and_without_the_chat_template() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = good_model(tmp.path());
    for chat in [false, true] {
        let (code, err) = validate(tmp.path(), &spec(&model, chat));
        assert_eq!(code, 0, "{err}");
    }
}

#[test]
fn a_directory_without_tokenizer_json_is_refused() {
    let e = broken(|m| std::fs::remove_file(m.join("tokenizer.json")).expect("rm"));
    assert!(e.contains("tokenizer.json"), "{e}");
    assert!(e.contains("help: copy tokenizer.json"), "{e}");
}

#[test]
fn a_config_with_a_syntax_error_is_refused() {
    let e = broken(|m| {
        std::fs::write(m.join("config.json"), "{\"model_type\": \"qwen2\",,}").expect("write")
    });
    assert!(
        e.contains("config.json") && e.contains("invalid JSON"),
        "{e}"
    );
    assert!(e.contains("at line 1 column"), "{e}");
}

#[test]
fn an_unsupported_model_type_is_refused() {
    let e = broken(|m| edit_json(&m.join("config.json"), |c| c["model_type"] = "gpt2".into()));
    assert!(
        e.contains(
            "config.json: unsupported model_type \"gpt2\" (supported: qwen2, llama, mistral)"
        ),
        "{e}"
    );
}

#[test]
fn a_safetensors_file_with_a_truncated_header_is_refused() {
    let e = broken(|m| {
        let path = m.join("model.safetensors");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..40]).expect("truncate");
    });
    assert!(
        e.contains("model.safetensors") && e.contains("the file ends inside its header"),
        "{e}"
    );
}

#[test]
fn a_weight_whose_shape_does_not_fit_the_config_is_refused() {
    let e = broken(|m| {
        edit_json(&m.join("config.json"), |c| {
            c["intermediate_size"] = 96.into()
        })
    });
    // The first tensor in the file that the new size changes.
    assert!(
        e.contains("model.safetensors: tensor \"model.layers.") && e.contains(".mlp."),
        "{e}"
    );
    assert!(
        e.contains("has shape [") && e.contains("], expected ["),
        "{e}"
    );
    assert!(e.contains("96"), "{e}");
    assert!(
        e.contains("help: the weights do not fit config.json"),
        "{e}"
    );
}

#[test]
fn a_missing_weight_is_refused() {
    let e = broken(|m| {
        // The same file without the final norm's weight.
        let path = m.join("model.safetensors");
        let bytes = std::fs::read(&path).expect("read");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let kept: Vec<(String, safetensors::tensor::TensorView)> = st
            .tensors()
            .into_iter()
            .filter(|(name, _)| name != "model.norm.weight")
            .collect();
        let out = safetensors::tensor::serialize(kept, None).expect("serialize");
        std::fs::write(&path, out).expect("write");
    });
    assert!(
        e.contains("missing tensor \"model.norm.weight\" in checkpoint"),
        "{e}"
    );
}

#[test]
fn a_missing_chat_template_is_refused_only_when_a_node_asks_for_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = good_model(tmp.path());
    edit_json(&model.join("tokenizer_config.json"), |c| {
        c.as_object_mut().expect("object").remove("chat_template");
    });
    let (code, err) = validate(tmp.path(), &spec(&model, false));
    assert_eq!(code, 0, "{err}");
    let (code, err) = validate(tmp.path(), &spec(&model, true));
    let e = the_model_error(code, &err);
    assert!(e.contains("has no chat template"), "{e}");
    assert!(
        e.contains("but node `rollouts` asks for one with `chat_template: true`"),
        "{e}"
    );
    assert!(
        e.contains("help: set `chat_template: false` on node `rollouts`"),
        "{e}"
    );
}

#[test]
fn independent_problems_of_one_directory_are_all_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = good_model(tmp.path());
    std::fs::remove_file(model.join("tokenizer.json")).expect("rm");
    std::fs::remove_file(model.join("model.safetensors")).expect("rm");
    let (code, err) = validate(tmp.path(), &spec(&model, false));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("2 errors found"), "{err}");
    assert!(err.contains("tokenizer.json"), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn a_run_fails_before_any_node_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = good_model(tmp.path());
    std::fs::remove_file(model.join("tokenizer.json")).expect("rm");
    let (code, err) = sspo_on(
        tmp.path(),
        &spec(&model, false),
        &["bad.yaml", "--run-dir", "run"],
    );
    the_model_error(code, &err);
    assert!(!tmp.path().join("run/problems").exists(), "a node ran");
}

#[test]
fn reading_a_run_does_not_need_its_models_to_load() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = good_model(tmp.path());
    // A run that commits `problems`, then the model breaks.
    let (code, err) = sspo_on(
        tmp.path(),
        &spec(&model, false),
        &["bad.yaml", "--run-dir", "run", "--until", "problems"],
    );
    assert_eq!(code, 0, "{err}");
    std::fs::remove_file(model.join("tokenizer.json")).expect("rm");
    let (code, err) = validate(tmp.path(), &spec(&model, false));
    the_model_error(code, &err);
    // What the run wrote stays readable through the pipeline file.
    for args in [
        &["status", "bad.yaml", "--run-dir", "run"][..],
        &[
            "sql",
            "bad.yaml",
            "select count(*) from problems",
            "--run-dir",
            "run",
        ],
        &["verify", "bad.yaml", "--run-dir", "run"],
    ] {
        let o = sspo(tmp.path(), args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
}

// ------------------------------------------------------------------ GGUF

/// A GGUF v3 file with the given string metadata and no tensors.
fn gguf_with(strings: &[(&str, &str)]) -> Vec<u8> {
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes()); // version
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend((strings.len() as u64).to_le_bytes());
    for (key, value) in strings {
        string(&mut b, key);
        b.extend(8u32.to_le_bytes()); // the string value type
        string(&mut b, value);
    }
    b
}

#[test]
fn the_smollm2_gguf_passes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (code, err) = validate(tmp.path(), &spec(&smollm2_gguf(), true));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_truncated_gguf_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("cut.gguf");
    let mut head = vec![0u8; 1 << 20];
    let mut f = std::fs::File::open(smollm2_gguf()).expect("open");
    std::io::Read::read_exact(&mut f, &mut head).expect("read");
    std::fs::write(&path, head).expect("write");
    let (code, err) = validate(tmp.path(), &spec(&path, false));
    let e = the_model_error(code, &err);
    assert!(e.contains(&format!("GGUF file {}:", path.display())), "{e}");
    assert!(
        ["runs past the end", "the file ends inside", "cannot fit in"]
            .iter()
            .any(|t| e.contains(t)),
        "{e}"
    );
    assert!(e.contains("help: the file looks truncated"), "{e}");
}

#[test]
fn a_gguf_of_an_unsupported_architecture_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("gpt2.gguf");
    std::fs::write(&path, gguf_with(&[("general.architecture", "gpt2")])).expect("write");
    let (code, err) = validate(tmp.path(), &spec(&path, false));
    let e = the_model_error(code, &err);
    assert!(
        e.contains("architecture \"gpt2\" is not supported (supported: llama, qwen2)"),
        "{e}"
    );
}

#[test]
fn a_model_only_segment_reads_needs_only_its_tokenizer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = good_model(tmp.path());
    std::fs::remove_file(model.join("model.safetensors")).expect("rm");
    let spec = format!(
        "models:\n  base: {{path: {}}}\nnodes:\n  problems: {{op: source, params: {{path: data.jsonl}}}}\n  steps: {{op: segment, inputs: {{traces: problems, model: base}}, params: {{column: prompt}}}}\n",
        model.display()
    );
    let (code, err) = validate(tmp.path(), &spec);
    assert_eq!(code, 0, "{err}");
    std::fs::remove_file(model.join("tokenizer.json")).expect("rm");
    let (code, err) = validate(tmp.path(), &spec);
    assert!(
        the_model_error(code, &err).contains("tokenizer.json"),
        "{err}"
    );
}
