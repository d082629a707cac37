//! Clear errors for broken model directories and configs.

mod common;

use std::path::{Path, PathBuf};

use sspo_model::{LoadOptions, Model, ModelConfig, ModelError};

fn saved(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("errors-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::tiny_model(1).save_dir(&dir).unwrap();
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

fn load(dir: &Path) -> Result<Model, ModelError> {
    Model::load_dir(dir, &LoadOptions::default())
}

#[test]
fn saved_tiny_model_round_trips() {
    let dir = saved("roundtrip");
    let m = load(&dir).unwrap();
    let orig = common::tiny_model(1);
    let a = m.decoder.named_parameters();
    let b = orig.decoder.named_parameters();
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after save/load");
    }
    assert_eq!(m.eos_token_ids(), orig.eos_token_ids());
    assert_eq!(m.decoder.config().vocab_size, 259);
}

#[test]
fn missing_file_names_the_path() {
    let dir = saved("missing");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(err, ModelError::MissingFile(ref p) if p.ends_with("model.safetensors")),
        "{err}"
    );
    assert!(err.to_string().contains("model.safetensors"));
    let err = load(&dir.join("nope")).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let dir = saved("shape");
    edit_config(&dir, |c| c["intermediate_size"] = 64.into());
    let err = load(&dir).unwrap_err();
    // The error names the weights file and, inside it, the tensor.
    let ModelError::InFile { path, source } = &err else {
        panic!("expected a shape mismatch in a file, got {err}");
    };
    assert!(path.ends_with("model.safetensors"), "{err}");
    match source.as_ref() {
        ModelError::ShapeMismatch {
            name,
            expected,
            found,
        } => {
            assert!(name.contains("mlp"), "{name}");
            assert_ne!(expected, found);
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
}

#[test]
fn missing_tensor_is_reported() {
    let dir = saved("untie");
    // The checkpoint stores the tied head once; an untied config needs lm_head.weight.
    edit_config(&dir, |c| c["tie_word_embeddings"] = false.into());
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(err, ModelError::MissingTensor { ref name, .. } if name == "lm_head.weight"),
        "{err}"
    );
}

#[test]
fn config_errors_are_clear() {
    let base = serde_json::json!({
        "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    });
    assert!(ModelConfig::from_json(&base).is_ok());
    let mut v = base.clone();
    v["model_type"] = "gpt2".into();
    let err = ModelConfig::from_json(&v).unwrap_err();
    assert!(
        matches!(err, ModelError::UnknownModelType(ref t) if t == "gpt2"),
        "{err}"
    );
    let mut v = base.clone();
    v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    let err = ModelConfig::from_json(&v).unwrap_err().to_string();
    assert!(err.contains("yarn"), "{err}");
    let mut v = base.clone();
    v["num_key_value_heads"] = 3.into();
    assert!(ModelConfig::from_json(&v).is_err());
    let mut v = base.clone();
    v.as_object_mut().unwrap().remove("hidden_size");
    let err = ModelConfig::from_json(&v).unwrap_err().to_string();
    assert!(err.contains("hidden_size"), "{err}");
    let mut v = base.clone();
    v["eos_token_id"] = serde_json::json!([128001, 128009]);
    v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    let cfg = ModelConfig::from_json(&v).unwrap();
    assert_eq!(cfg.eos_token_ids, vec![128001, 128009]);
    // Serialising and parsing again gives the same config.
    assert_eq!(
        ModelConfig::from_json(&cfg.to_json()).unwrap().rope_scaling,
        cfg.rope_scaling
    );
    assert_eq!(
        ModelConfig::from_json(&cfg.to_json())
            .unwrap()
            .eos_token_ids,
        cfg.eos_token_ids
    );
    let err = sspo_model::parse_device("tpu").unwrap_err().to_string();
    assert!(err.contains("tpu"), "{err}");
    assert_eq!(sspo_model::parse_device("cpu").unwrap(), tch::Device::Cpu);
}

#[test]
fn unknown_builtin_lists_the_names() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("errors-builtin");
    common::write_byte_tokenizer(&dir);
    let err = Model::builtin("huge", &dir, &LoadOptions::default(), 0).unwrap_err();
    assert!(err.to_string().contains("tiny-synth"), "{err}");
}
