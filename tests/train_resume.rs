//! `train` through the CLI: a training node killed with `kill -9` after a checkpoint (twice)
//! and re-run ends with the weights of an uninterrupted run (byte-identical in most runs,
//! within float noise always) and the same metrics table.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::*;

const PIPELINE: &str = r#"
name: train-resume
seed: 13
models:
  base: {builtin: tiny-test}
nodes:
  pairs: {op: source, params: {path: pairs.jsonl}}
  pt:
    op: train
    inputs: {model: base, data: pairs}
    params: {loss: sspo, lr: 0.001, beta: 0.5, epochs: 12, batch_size: 2, grad_accum: 2, warmup: 5, checkpoint_every: 8, log_every: 8, keep_checkpoints: 2}
"#;

fn write_pairs(path: &Path, n: usize) {
    let mut s = String::new();
    for i in 0..n {
        let shared = format!("Add {i} to {i}. ");
        let chosen = vec![shared.clone(), format!("That is {}.", 2 * i)];
        let rejected = vec![
            shared,
            format!("Perhaps {}? ", 2 * i + 3),
            format!("No: {}.", 2 * i),
        ];
        let row = serde_json::json!({
            "pair_id": format!("p{i}"), "id": format!("q{i}"), "kind": "vvp",
            "prompt": format!("{i} + {i}?"), "answer": format!("{}", 2 * i),
            "context": format!("Q: {i} + {i}?\nA: "),
            "chosen": chosen.concat(), "rejected": rejected.concat(),
            "chosen_steps": chosen, "rejected_steps": rejected,
            "chosen_adv": [0.0, 0.5], "rejected_adv": [0.0, -0.5, 0.2],
        });
        s.push_str(&format!("{row}\n"));
    }
    std::fs::write(path, s).expect("write pairs");
}

/// Largest absolute difference between two safetensors files with the same tensors.
fn max_weight_diff(a: &[u8], b: &[u8]) -> f64 {
    let (a, b) = (
        safetensors::SafeTensors::deserialize(a).expect("clean safetensors"),
        safetensors::SafeTensors::deserialize(b).expect("resumed safetensors"),
    );
    let mut names = a.names();
    names.sort();
    let mut other = b.names();
    other.sort();
    assert_eq!(names, other, "tensor names");
    let floats = |v: safetensors::tensor::TensorView<'_>| -> Vec<f32> {
        assert_eq!(v.dtype(), safetensors::Dtype::F32);
        f32s(v.data())
    };
    let mut max = 0.0f64;
    for n in names {
        let (x, y) = (a.tensor(n).expect("tensor"), b.tensor(n).expect("tensor"));
        assert_eq!(x.shape(), y.shape(), "{n}");
        for (p, q) in floats(x).iter().zip(floats(y)) {
            max = max.max((f64::from(*p) - f64::from(q)).abs());
        }
    }
    max
}

/// The same CSV rows: equal text per cell, or numbers within float noise.
fn assert_rows_close(a: &str, b: &str) {
    assert_eq!(a.lines().count(), b.lines().count());
    for (la, lb) in a.lines().zip(b.lines()) {
        for (x, y) in la.split(',').zip(lb.split(',')) {
            if x == y {
                continue;
            }
            let (x, y): (f64, f64) = match (x.parse(), y.parse()) {
                (Ok(x), Ok(y)) => (x, y),
                _ => panic!("rows differ: {la} vs {lb}"),
            };
            assert!(
                (x - y).abs() <= 1e-4 * x.abs().max(1.0),
                "rows differ: {la} vs {lb}"
            );
        }
    }
}

#[test]
fn a_killed_train_node_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    write_pairs(&p.join("pairs.jsonl"), 16);
    std::fs::write(p.join("t.yaml"), PIPELINE).expect("spec");
    // 16 pairs, 4 per step → 4 steps per epoch, 12 epochs: 48 steps, checkpoints every 8.
    run_ok(p, &["t.yaml", "--run-dir", "clean"]);
    let want = std::fs::read(p.join("clean/pt/model/model.safetensors")).expect("clean model");

    let mut killed_mid_way = 0;
    for ckpt in ["ckpt-000000008", "ckpt-000000024"] {
        let mut child = spawn(p, &["t.yaml", "--run-dir", "killed"], Stdio::null());
        wait_for(&p.join("killed/pt/scratch").join(ckpt), 120);
        if child.try_wait().expect("wait").is_none() {
            killed_mid_way += 1;
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }
    assert!(
        killed_mid_way >= 1,
        "training finished before it could be killed"
    );
    assert!(!p.join("killed/pt/model/model.safetensors").exists());
    let log = run_ok(p, &["t.yaml", "--run-dir", "killed"]);
    assert!(
        log.contains("resuming from the checkpoint at step"),
        "{log}"
    );
    let got = std::fs::read(p.join("killed/pt/model/model.safetensors")).expect("resumed model");
    // Usually byte-identical. Now and then the first backward pass after a resume differs
    // from the uninterrupted run's in the last float bits (same loss, grad norm off by
    // ~1e-7 relative; cause not yet found), so the check allows float noise. A lost or
    // misplaced optimizer state, step or data position moves the weights by far more.
    let diff = max_weight_diff(&want, &got);
    assert!(
        diff < 1e-4,
        "model.safetensors differs after kill -9 + resume: max |diff| {diff}"
    );

    let q = "select step, epoch, loss, lr, grad_norm, margin, pref_acc from pt order by step";
    let a = sql_csv(p, "clean", q);
    assert_eq!(a.lines().count(), 49);
    assert_rows_close(&a, &sql_csv(p, "killed", q));
    // Completed, the node leaves only its model: checkpoints and caches are deleted.
    assert!(!p.join("killed/pt/scratch").exists());
    assert!(!p.join("clean/pt/scratch").exists());
}
