//! The `tiny-synth` tokenizer: exact round trips on generated texts (and on arbitrary ones),
//! one token per digit and per template word, byte-for-byte deterministic files, and the
//! model crate building and running `tiny-synth` with it.

use sspo_model::{Attention, LoadOptions, Model, TextTokenizer};
use sspo_operators::tasks::synth::{
    build_tokenizer, count_tokens, generate, probe_examples, tokenizer_json, write_tokenizer,
    SynthConfig, BOS_TOKEN, EOS_TOKEN, IM_START, PROBE_NO, PROBE_QUESTION, PROBE_YES, UNK_TOKEN,
};

fn texts(n: usize) -> Vec<String> {
    let ps = generate(&SynthConfig {
        n,
        seed: 21,
        ..Default::default()
    })
    .unwrap();
    let mut out = Vec::new();
    for p in &ps {
        out.push(p.prompt.clone());
        out.push(p.trace.clone());
        out.push(p.oracle_trace.clone());
        out.extend(p.steps.iter().map(|s| s.text.clone()));
        for ex in probe_examples(p, 2, 0) {
            out.push(ex.response());
        }
    }
    out
}

#[test]
fn round_trip_is_exact_on_generated_texts() {
    let tok = build_tokenizer().unwrap();
    let texts = texts(2000);
    assert!(texts.len() > 10_000);
    for t in &texts {
        let enc = tok.encode(t.as_str(), false).unwrap();
        let ids = enc.get_ids();
        assert_eq!(tok.decode(ids, false).unwrap(), *t);
        assert_eq!(tok.decode(ids, true).unwrap(), *t);
        for (id, piece) in ids.iter().zip(enc.get_tokens()) {
            // No unknown or byte-fallback token: every character of the task is in the
            // vocabulary, and every word is a single token.
            assert!(*id >= 4 + 256, "{piece:?} in {t:?}");
            // One token per digit.
            if piece.chars().any(|c| c.is_ascii_digit()) {
                assert_eq!(piece.len(), 1, "{piece:?} in {t:?}");
            }
            let letters = piece.trim_start_matches(' ');
            if letters.chars().all(|c| c.is_ascii_alphabetic()) && letters.len() == 1 {
                assert_eq!(letters, "A", "word split into letters in {t:?}");
            }
        }
        assert_eq!(count_tokens(t), ids.len());
    }
}

#[test]
fn round_trip_is_exact_on_arbitrary_text() {
    let tok = build_tokenizer().unwrap();
    for t in [
        "",
        " ",
        "\n\n\n",
        "\t tab and  two spaces \r\n",
        "Zebra quokka xylophone 12345 -7 3.14 1,000 \\boxed{42} $5 #### 8",
        "naïve café — 東京 🙂",
        "<0x41> literal <unk> text",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "Is the answer settled? Yes",
    ] {
        let ids = tok.encode(t, false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), t);
    }
    // Special tokens are single tokens and dropped by skip_special_tokens.
    let t = "<|im_start|>user\n3 + 4<|im_end|>";
    let enc = tok.encode(t, false).unwrap();
    assert_eq!(enc.get_ids()[0], 2);
    assert_eq!(*enc.get_ids().last().unwrap(), 3);
    assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "user\n3 + 4");
}

#[test]
fn probe_targets_and_separator_are_single_tokens() {
    let tok = build_tokenizer().unwrap();
    let one = |s: &str| tok.encode(s, false).unwrap().get_ids().len();
    assert_eq!(one(PROBE_YES), 1);
    assert_eq!(one(PROBE_NO), 1);
    assert_eq!(one("\n\n"), 1);
    assert_eq!(one(" = "), 1);
    assert_eq!(one("The answer is"), 3);
    assert_eq!(count_tokens("3 + 4 = 7."), 6);
    assert_eq!(count_tokens("Let me double-check: 50 + 13 = 63."), 16);
    assert_eq!(one(" 344"), 4);
    // The question's tokens do not depend on what precedes it.
    let alone = tok
        .encode(PROBE_QUESTION, false)
        .unwrap()
        .get_ids()
        .to_vec();
    let after = tok
        .encode(format!("3 + 4 = 7.{PROBE_QUESTION}").as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert!(after.ends_with(&alone));
}

#[test]
fn tokenizer_files_are_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let pa = write_tokenizer(a.path()).unwrap();
    let pb = write_tokenizer(&b.path().join("nested/dir")).unwrap();
    assert_eq!(pa, a.path().join("tokenizer.json"));
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        let x = std::fs::read(a.path().join(name)).unwrap();
        let y = std::fs::read(pb.parent().unwrap().join(name)).unwrap();
        assert_eq!(x, y, "{name} differs between writes");
    }
    assert_eq!(
        std::fs::read_to_string(&pa).unwrap(),
        tokenizer_json().unwrap()
    );
    // Rewriting in place gives the same bytes and leaves no temporary files.
    let before = std::fs::read(&pa).unwrap();
    write_tokenizer(a.path()).unwrap();
    assert_eq!(std::fs::read(&pa).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(a.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // The file reloads into the same tokenizer.
    let reloaded = tokenizers::Tokenizer::from_file(&pa).unwrap();
    let t = "Tom has 12 apples.\n\nThe answer is 21.";
    assert_eq!(
        reloaded.encode(t, false).unwrap().get_ids(),
        build_tokenizer()
            .unwrap()
            .encode(t, false)
            .unwrap()
            .get_ids()
    );
}

#[test]
fn model_crate_builds_tiny_synth_and_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer(dir.path()).unwrap();
    let tok = TextTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.special_token("eos_token").as_deref(), Some(EOS_TOKEN));
    assert_eq!(tok.special_token("bos_token").as_deref(), Some(BOS_TOKEN));
    assert_eq!(tok.special_token("unk_token").as_deref(), Some(UNK_TOKEN));
    assert_eq!(tok.eos_token_id(), Some(3));
    assert_eq!(tok.token_to_id(IM_START), Some(2));
    let vocab = tok.vocab_size();
    assert!((500..2000).contains(&vocab), "vocab {vocab}");

    let model = Model::builtin("tiny-synth", dir.path(), &LoadOptions::default(), 0).unwrap();
    assert_eq!(model.eos_token_ids(), vec![3]);
    let p = &generate(&SynthConfig {
        n: 1,
        ..Default::default()
    })
    .unwrap()[0];
    let messages = serde_json::json!([{"role": "user", "content": p.prompt}]);
    let context = model.apply_chat_template(&messages, true).unwrap();
    assert_eq!(
        context,
        format!(
            "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            p.prompt
        )
    );
    let full = format!("{context}{}<|im_end|>", p.trace);
    let ids = model.tokenizer.encode(&full, false).unwrap();
    assert_eq!(model.tokenizer.decode(&ids, false).unwrap(), full);
    let input = tch::Tensor::from_slice(&ids).unsqueeze(0);
    let logits = model.decoder.forward(&input, Attention::Causal).unwrap();
    assert_eq!(logits.size(), vec![1, ids.len() as i64, vocab as i64]);
    assert!(bool::try_from(logits.isfinite().all()).unwrap());
}

/// The python that has `transformers` (`$SSPO_PYTHON`, default `.venv/bin/python` of the
/// workspace), or `None` when there is none.
fn python_with_transformers() -> Option<std::path::PathBuf> {
    let py = std::env::var_os("SSPO_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
        });
    let ok = std::process::Command::new(&py)
        .args(["-c", "import transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

#[test]
fn transformers_reads_the_same_tokens() {
    let Some(py) = python_with_transformers() else {
        eprintln!("skipped: no python with transformers (set SSPO_PYTHON)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer(dir.path()).unwrap();
    let mut sample: Vec<String> = texts(100);
    sample.push("naïve café 🙂 <0x41>\t\n\n\n".into());
    let tok = build_tokenizer().unwrap();
    let ids: Vec<Vec<u32>> = sample
        .iter()
        .map(|t| tok.encode(t.as_str(), false).unwrap().get_ids().to_vec())
        .collect();
    let input = dir.path().join("texts.json");
    std::fs::write(&input, serde_json::to_string(&sample).unwrap()).unwrap();
    let script = r#"
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
texts = json.load(open(sys.argv[2]))
ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
dec = [tok.decode(i) for i in ids]
chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
print(json.dumps({"ids": ids, "decoded": dec, "eos": tok.eos_token_id, "chat": chat}))
"#;
    let out = std::process::Command::new(&py)
        .args(["-c", script])
        .arg(dir.path())
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let py_ids: Vec<Vec<u32>> = serde_json::from_value(v["ids"].clone()).unwrap();
    let py_dec: Vec<String> = serde_json::from_value(v["decoded"].clone()).unwrap();
    assert_eq!(py_ids, ids);
    assert_eq!(py_dec, sample);
    assert_eq!(v["eos"], 3);
    assert_eq!(
        v["chat"],
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn step_boundaries_are_token_boundaries() {
    // Probes cut a trace after step k: that cut must fall between two tokens, and the
    // tokens of a prefix must be the first tokens of the whole trace.
    let tok = build_tokenizer().unwrap();
    let ps = generate(&SynthConfig {
        n: 500,
        seed: 22,
        ..Default::default()
    })
    .unwrap();
    for p in &ps {
        let enc = tok.encode(p.trace.as_str(), false).unwrap();
        let ids = enc.get_ids();
        let ends: std::collections::HashSet<usize> =
            enc.get_offsets().iter().map(|o| o.1).collect();
        let mut end = 0;
        for (i, s) in p.steps.iter().enumerate() {
            end += s.text.len() + if i > 0 { 2 } else { 0 };
            assert!(ends.contains(&end), "cut after step {i} of {:?}", p.trace);
            let prefix = tok.encode(&p.trace[..end], false).unwrap();
            assert!(ids.starts_with(prefix.get_ids()));
        }
        assert_eq!(end, p.trace.len());
    }
}
