//! Shared helpers for the integration tests: the python reference and small comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

mod raw_f32;
#[allow(unused_imports)] // each test file uses what it needs
pub use raw_f32::{f32s, read_f32};

/// The python interpreter with transformers: `$SSPO_PYTHON`, else the repository's `.venv`.
pub fn python() -> PathBuf {
    let py = std::env::var_os("SSPO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", "import transformers, torch, tokenizers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python with transformers not found at {} (set SSPO_PYTHON or run `make venv`); \
         the parity tests need it",
        py.display()
    );
    py
}

pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/model")
}

pub fn run_python(args: &[&str]) {
    let out = Command::new(python())
        .args(args)
        .output()
        .expect("failed to start python");
    assert!(
        out.status.success(),
        "python {:?} failed:\n{}\n{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cases built by `scripts/model/make_reference.py`.
pub const CASES: &[&str] = &[
    "qwen2_gqa2_tied",
    "llama_kv1_untied_sharded",
    "llama_h6kv3_bias_llama3",
    "qwen2_mha_untied",
];

pub const SPEC: &str = r#"{"cases": [
 {"name": "qwen2_gqa2_tied", "model_type": "qwen2", "config": {"tie_word_embeddings": true, "rope_theta": 1000000.0}, "seed": 1, "template_location": "jinja"},
 {"name": "llama_kv1_untied_sharded", "model_type": "llama", "config": {"num_key_value_heads": 1, "tie_word_embeddings": false, "rope_theta": 10000.0}, "seed": 2, "shard": true, "template": "inst", "template_location": "config"},
 {"name": "llama_h6kv3_bias_llama3", "model_type": "llama", "config": {"hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 3, "attention_bias": true, "tie_word_embeddings": true, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}, "seed": 3, "template_location": "config_list"},
 {"name": "qwen2_mha_untied", "model_type": "qwen2", "config": {"num_key_value_heads": 4, "tie_word_embeddings": false}, "seed": 4}
],
"prompts": ["Let us think step by step.", "The answer is 84. Wait, let me verify: 7 * 8 = 56 and 12 + 30 = 42, so", "hi"],
"max_new_tokens": 12,
"conversations": [
  [{"role": "user", "content": "What is 7 * 8?"}],
  [{"role": "user", "content": "Sum 2 and 3."}, {"role": "assistant", "content": " 5 "}, {"role": "user", "content": "Thanks"}],
  [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Sum 2 and 3.  "}, {"role": "assistant", "content": "5"}, {"role": "user", "content": "Thanks — ünïcode ✓"}],
  [{"role": "tool", "content": "x"}]
]}"#;

/// Directory holding one sub-directory per case (built once per test binary).
pub fn reference_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("model-reference-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create reference dir");
        let spec = root.join("spec.json");
        std::fs::write(&spec, SPEC).expect("write spec");
        let script = scripts_dir().join("make_reference.py");
        run_python(&[
            script.to_str().expect("utf8 path"),
            root.to_str().expect("utf8 path"),
            spec.to_str().expect("utf8 path"),
        ]);
        root
    })
}

pub fn case_dir(name: &str) -> PathBuf {
    reference_root().join(name)
}

pub fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(case_dir(name).join("reference.json")).expect("reference");
    serde_json::from_str(&text).expect("reference json")
}

pub fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("int"))
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn tensor_to_vec(t: &tch::Tensor) -> Vec<f32> {
    let t = t
        .to_kind(tch::Kind::Float)
        .to_device(tch::Device::Cpu)
        .contiguous()
        .view([-1]);
    Vec::<f32>::try_from(&t).expect("tensor to vec")
}

pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Writes a byte-level tokenizer (256 byte tokens + `<|endoftext|>`=256, `<|im_start|>`=257,
/// `<|im_end|>`=258) and a ChatML `tokenizer_config.json` into `dir`; no python needed.
pub fn write_byte_tokenizer(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let vocab: serde_json::Map<String, Value> = sspo_model::tokenizer::gpt2_byte_chars()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), Value::from(i)))
        .collect();
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let cfg = serde_json::json!({
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": null,
        "chat_template": CHATML, "tokenizer_class": "PreTrainedTokenizerFast"
    });
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

/// The built-in `tiny-test` model with random weights and the byte tokenizer.
pub fn tiny_model(seed: u64) -> sspo_model::Model {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "byte-tokenizer-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    write_byte_tokenizer(&dir);
    sspo_model::Model::builtin("tiny-test", &dir, &Default::default(), seed).unwrap()
}
