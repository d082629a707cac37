//! `train` through the engine on the built-in `tiny-test` model: `sft` lowers the loss and
//! writes a model directory that our loader and transformers read with equal logits;
//! `dpo` / `sspo` / `step_pg` on hand-made `pair`-shaped rows; a resume from a checkpoint
//! whose metrics were not committed (killed between the two) ends with the same weights;
//! zero-step plans and non-finite losses are refused.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type};
use sspo_engine::store::{NodeDir, NodeState};
use sspo_model::{Attention, LoadOptions, Model};
use tch::Tensor;

/// Prompts and short answers the tiny model can learn to repeat.
fn write_sft_data(path: &Path, n: usize) {
    let mut s = String::new();
    for i in 0..n {
        let row = serde_json::json!({
            "id": format!("q{i}"),
            "prompt": format!("What is {i} + {i}?"),
            "response": format!("{i} + {i} = {}.", 2 * i),
            "answer": format!("{}", 2 * i),
        });
        s.push_str(&row.to_string());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// Rows shaped like `pair`'s output (lists arrive as JSON text through `source`).
fn write_pairs(path: &Path, n: usize) {
    let mut s = String::new();
    for i in 0..n {
        let shared = format!("We add {i} and {i}. ");
        let chosen = vec![shared.clone(), format!("So {}.", 2 * i)];
        let rejected = vec![
            shared.clone(),
            format!("Maybe {}? ", 2 * i + 1),
            format!("Check again. So {}.", 2 * i),
        ];
        let row = serde_json::json!({
            "pair_id": format!("p{i}"),
            "id": format!("q{i}"),
            "kind": "vvp",
            "answer": format!("{}", 2 * i),
            "prompt": format!("What is {i} + {i}?"),
            "context": format!("Q: What is {i} + {i}?\nA: "),
            "chosen": chosen.concat(),
            "rejected": rejected.concat(),
            "chosen_steps": chosen,
            "rejected_steps": rejected,
            "chosen_adv": [0.0, 0.6],
            "rejected_adv": [0.0, -0.4, 0.1],
        });
        s.push_str(&row.to_string());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn floats(b: &arrow::array::RecordBatch, col: &str) -> Vec<Option<f64>> {
    let c = b.column_by_name(col).unwrap().as_primitive::<Float64Type>();
    (0..c.len())
        .map(|i| c.is_valid(i).then(|| c.value(i)))
        .collect()
}

fn steps(b: &arrow::array::RecordBatch) -> Vec<i64> {
    b.column_by_name("step")
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

/// `key: value` params: `base` with the keys of `over` replaced or added.
fn params(base: &[(&str, &str)], over: &[(&str, &str)]) -> String {
    let mut kv: Vec<(String, String)> = base
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in over {
        match kv.iter_mut().find(|(kk, _)| kk == k) {
            Some(e) => e.1 = v.to_string(),
            None => kv.push((k.to_string(), v.to_string())),
        }
    }
    let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", body.join(", "))
}

fn sft_spec(over: &[(&str, &str)]) -> String {
    let base = [
        ("loss", "sft"),
        ("lr", "0.003"),
        ("epochs", "6"),
        ("batch_size", "4"),
        ("warmup", "2"),
        ("checkpoint_every", "4"),
        ("prompt_template", "\"Q: {prompt}\\nA: \""),
    ];
    format!(
        r#"
name: t
seed: 5
models:
  base: {{builtin: tiny-test}}
nodes:
  data: {{op: source, params: {{path: data.jsonl}}}}
  sft:
    op: train
    inputs: {{model: base, data: data}}
    params: {}
"#,
        params(&base, over)
    )
}

fn python() -> PathBuf {
    std::env::var_os("SSPO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

#[test]
fn sft_lowers_the_loss_and_writes_a_model_transformers_reads() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    write_sft_data(&p.join("data.jsonl"), 8);
    let spec = format!(
        "{}  gen:\n    op: generate\n    inputs: {{prompts: data, model: sft}}\n    params: {{samples: 1, temperature: 0, max_new_tokens: 4}}\n",
        sft_spec(&[])
    );
    let run = run(p, &spec).unwrap();
    let (m, manifest) = table(&run, "sft");
    // 8 rows, batch 4 → 2 steps per epoch, 6 epochs; chunks of 4 steps.
    assert_eq!(steps(&m), (1..=12).collect::<Vec<_>>());
    assert_eq!(manifest.chunks.len(), 3);
    let loss: Vec<f64> = floats(&m, "loss").into_iter().map(|x| x.unwrap()).collect();
    let first = (loss[0] + loss[1]) / 2.0;
    let last = (loss[10] + loss[11]) / 2.0;
    assert!(last < 0.7 * first, "loss {first} → {last}: {loss:?}");
    assert!(floats(&m, "margin").iter().all(Option::is_none));
    assert!(floats(&m, "pref_acc").iter().all(Option::is_none));
    let lr: Vec<f64> = floats(&m, "lr").into_iter().map(|x| x.unwrap()).collect();
    assert!(
        (lr[0] - 0.0015).abs() < 1e-12 && (lr[1] - 0.003).abs() < 1e-12,
        "{lr:?}"
    );
    assert!(floats(&m, "grad_norm").iter().all(|g| g.unwrap() > 0.0));
    assert!(floats(&m, "tokens_per_s").iter().all(|g| g.unwrap() > 0.0));

    // The artifact: a HF directory, read by our loader and by the downstream node.
    let model_dir = run.join("sft/model");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(model_dir.join(f).is_file(), "missing {f}");
    }
    assert_eq!(manifest.artifact.as_deref(), Some("model"));
    let (g, _) = table(&run, "gen");
    assert_eq!(g.num_rows(), 8);
    let ours = Model::load_dir(&model_dir, &LoadOptions::default()).unwrap();
    let ids: Vec<i64> = ours
        .tokenizer
        .encode("Q: What is 3 + 3?\nA: ", false)
        .unwrap();
    let t = Tensor::from_slice(&ids).view([1, -1]);
    let logits = tch::no_grad(|| ours.decoder.forward(&t, Attention::Causal)).unwrap();
    let ours_logits = Vec::<f32>::try_from(&logits.view([-1])).unwrap();

    // transformers reads the same directory and gives the same logits.
    let req = p.join("req.json");
    let out = p.join("hf.json");
    let request = serde_json::json!([{"dir": model_dir, "prompt_ids": [ids], "conversations": []}]);
    std::fs::write(&req, request.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/model/hf_logits.py");
    let o = Command::new(python())
        .args([script.as_os_str(), req.as_os_str(), out.as_os_str()])
        .output()
        .expect("python starts (set SSPO_PYTHON or create .venv)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let hf_logits: Vec<f64> = hf[0]["logits"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(hf_logits.len(), ours_logits.len());
    let d = hf_logits
        .iter()
        .zip(&ours_logits)
        .map(|(a, b)| (a - *b as f64).abs())
        .fold(0.0, f64::max);
    assert!(d < 1e-4, "max |logit diff| {d}");
}

fn pref_spec(loss: &str, over: &[(&str, &str)]) -> String {
    let base = [
        ("loss", loss),
        ("lr", "0.002"),
        ("beta", "0.5"),
        ("epochs", "2"),
        ("batch_size", "2"),
        ("warmup", "0"),
        ("checkpoint_every", "2"),
    ];
    format!(
        r#"
name: t
seed: 9
models:
  base: {{builtin: tiny-test}}
nodes:
  pairs: {{op: source, params: {{path: pairs.jsonl}}}}
  pt:
    op: train
    inputs: {{model: base, data: pairs}}
    params: {}
"#,
        params(&base, over)
    )
}

#[test]
fn preference_losses_train_on_pair_rows() {
    for loss in ["dpo", "sspo", "step_pg"] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        write_pairs(&p.join("pairs.jsonl"), 6);
        let run = run_with(p, &pref_spec(loss, &[("epochs", "4")]), true)
            .unwrap_or_else(|e| panic!("{loss}: {e}"));
        let (m, manifest) = table(&run, "pt");
        assert_eq!(steps(&m), (1..=12).collect::<Vec<_>>(), "{loss}");
        let margin: Vec<f64> = floats(&m, "margin")
            .into_iter()
            .map(|x| x.unwrap())
            .collect();
        let acc: Vec<f64> = floats(&m, "pref_acc")
            .into_iter()
            .map(|x| x.unwrap())
            .collect();
        // Before the first update the policy is the reference: margin 0.
        assert!(margin[0].abs() < 1e-4, "{loss}: {margin:?}");
        if loss != "step_pg" {
            assert!(
                margin[11] > 0.05 && acc[11] == 1.0,
                "{loss}: {margin:?} {acc:?}"
            );
        }
        // Reference log-probs are cached in the scratch directory.
        let scratch = run.join("pt/scratch");
        let cached = std::fs::read_dir(&scratch)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("ref_logprobs-"));
        assert!(cached, "{loss}: no reference cache");
        assert!(manifest.counters.is_empty(), "{:?}", manifest.counters);
        assert!(run.join("pt/model/model.safetensors").is_file());
    }
}

#[test]
fn unusable_rows_are_counted_and_a_zero_step_plan_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // Every row is unusable: no steps, mismatched advantages, identical sides.
    let rows = [
        serde_json::json!({"prompt": "1", "answer": "1", "context": "Q: 1\n", "chosen_steps": [], "rejected_steps": ["a"], "chosen_adv": [], "rejected_adv": [0.1]}),
        serde_json::json!({"prompt": "2", "answer": "2", "context": "Q: 2\n", "chosen_steps": ["a"], "rejected_steps": ["b"], "chosen_adv": [0.1, 0.2], "rejected_adv": [0.1]}),
        serde_json::json!({"prompt": "3", "answer": "3", "context": "Q: 3\n", "chosen_steps": ["a"], "rejected_steps": ["a"], "chosen_adv": [0.1], "rejected_adv": [0.1]}),
    ];
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(p.join("pairs.jsonl"), text).unwrap();
    let err = run(p, &pref_spec("sspo", &[])).unwrap_err();
    assert!(
        err.contains("zero steps") && err.contains("no usable training rows"),
        "{err}"
    );
    let m = NodeDir::new(&p.join("run"), "pt").read_manifest().unwrap();
    assert!(m.is_none_or(|m| m.state != NodeState::Complete));

    // max_steps: 0 is refused when the spec is read.
    let err = run(p, &pref_spec("dpo", &[("max_steps", "0")])).unwrap_err();
    assert!(
        err.contains("max_steps") && err.contains("zero steps"),
        "{err}"
    );
}

#[test]
fn a_non_finite_loss_stops_the_node_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    write_sft_data(&p.join("data.jsonl"), 8);
    let spec = sft_spec(&[
        ("lr", "1.0e30"),
        ("max_grad_norm", "0"),
        ("checkpoint_every", "1"),
    ]);
    let err = run(p, &spec).unwrap_err();
    assert!(err.contains("not finite") && err.contains("step "), "{err}");
    assert!(err.contains("the checkpoint at step"), "{err}");
    // The metrics of the good steps stay committed; no model was written.
    let (m, manifest) = table(&p.join("run"), "sft");
    assert!(m.num_rows() >= 1);
    assert_ne!(manifest.state, NodeState::Complete);
    assert!(!p.join("run/sft/model/model.safetensors").exists());
}

/// Drops the last committed chunk of `node` (as if the run had been killed after writing
/// the checkpoint but before committing its metrics) and removes the artifact.
fn uncommit_last_chunk(run: &Path, node: &str) {
    let d = NodeDir::new(run, node);
    let mut m = d.read_manifest().unwrap().unwrap();
    let last = m.chunks.pop().unwrap();
    for f in &last.files {
        *m.rows.get_mut(&f.table).unwrap() -= f.rows;
    }
    m.state = NodeState::Partial;
    m.artifact = None;
    d.write_manifest(&m).unwrap();
    std::fs::remove_dir_all(run.join(node).join("model")).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn resuming_from_a_checkpoint_gives_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    write_pairs(&p.join("pairs.jsonl"), 5);
    let spec = pref_spec(
        "sspo",
        &[
            ("batch_size", "1"),
            ("grad_accum", "2"),
            ("keep_checkpoints", "2"),
        ],
    );
    // The clean run keeps its scratch directory: the copies below resume from it.
    let clean = run_with(p, &spec, true).unwrap();
    let want = std::fs::read(clean.join("pt/model/model.safetensors")).unwrap();
    let (want_metrics, _) = table(&clean, "pt");
    // 5 pairs, 2 per step → 3 steps per epoch, 2 epochs: 6 steps, checkpoints 2, 4, 6.
    assert_eq!(want_metrics.num_rows(), 6);
    let ckpts = |run: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(run.join("pt/scratch"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ckpt-"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ckpts(&clean), ["ckpt-000000004", "ckpt-000000006"]);

    // Killed between the last checkpoint and its commit: the rows come from the checkpoint.
    let a = p.join("a");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::copy(p.join("pairs.jsonl"), a.join("pairs.jsonl")).unwrap();
    copy_dir(&clean, &a.join("run"));
    uncommit_last_chunk(&a.join("run"), "pt");
    let ra = run(&a, &spec).unwrap();
    // Completed, the node's checkpoints and caches are deleted.
    assert!(!ra.join("pt/scratch").exists());
    assert_eq!(
        std::fs::read(ra.join("pt/model/model.safetensors")).unwrap(),
        want
    );
    assert_eq!(table(&ra, "pt").0, want_metrics);

    // Killed mid-interval (the newest checkpoint never written): steps 5-6 are retrained.
    let b = p.join("b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(p.join("pairs.jsonl"), b.join("pairs.jsonl")).unwrap();
    copy_dir(&clean, &b.join("run"));
    uncommit_last_chunk(&b.join("run"), "pt");
    std::fs::remove_dir_all(b.join("run/pt/scratch/ckpt-000000006")).unwrap();
    let rb = run(&b, &spec).unwrap();
    assert_eq!(
        std::fs::read(rb.join("pt/model/model.safetensors")).unwrap(),
        want,
        "weights differ after resuming from step 4"
    );
    let got = table(&rb, "pt").0;
    assert_eq!(steps(&got), steps(&want_metrics));
    assert_eq!(floats(&got, "loss"), floats(&want_metrics, "loss"));
}
