//! The spec's `cpu:` key reaches libtorch: a training run with `cpu: {isa: baseline}` ends
//! with the weights of the same run under libtorch's own environment variables for that
//! instruction set, and, on a CPU with AVX2, not with the native run's; bad settings are
//! refused with their location or a reason.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const PIPELINE: &str = r#"
name: cpu
seed: 3
models:
  init: {builtin: tiny-synth}
nodes:
  corpus:
    op: source
    params:
      synth: {n: 64, seed: 0, min_ops: 2, max_ops: 3, start: [2, 20], addend: [1, 9], factor: [2, 3], group_count: [2, 3], group_size: [2, 5], max_value: 99}
  sft:
    op: train
    inputs: {model: init, data: corpus}
    params: {loss: sft, prompt: prompt, completion: trace, prompt_template: "{prompt}\n\n", lr: 3.0e-3, batch_size: 8, max_steps: 6, checkpoint_every: 6}
"#;

fn weights(dir: &Path, run: &str) -> Vec<u8> {
    std::fs::read(dir.join(run).join("sft/model/model.safetensors")).expect("trained model")
}

#[test]
fn a_pinned_instruction_set_changes_the_kernels_like_libtorchs_own_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(p.join("cpu.yaml"), PIPELINE).expect("spec");

    run_ok(p, &["cpu.yaml", "--run-dir", "native"]);
    run_ok(
        p,
        &[
            "cpu.yaml",
            "--run-dir",
            "pinned",
            "--set",
            "cpu.isa=baseline",
            "--set",
            "cpu.threads=1",
        ],
    );
    // The reference: libtorch, MKL and oneDNN pinned by hand, the spec silent.
    let by_hand = Command::new(bin())
        .args(["cpu.yaml", "--run-dir", "by_hand"])
        .current_dir(p)
        .env("NO_COLOR", "1")
        .env("ATEN_CPU_CAPABILITY", "default")
        .env("MKL_CBWR", "COMPATIBLE")
        .env("ONEDNN_MAX_CPU_ISA", "SSE41")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("sspo-run starts");
    assert!(by_hand.status.success(), "{}", stderr(&by_hand));

    let pinned = weights(p, "pinned");
    assert!(
        pinned == weights(p, "by_hand"),
        "cpu: {{isa: baseline}} did not give the weights of ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Otherwise the key could be ignored and the test above still pass.
        assert!(
            pinned != weights(p, "native"),
            "the baseline kernels gave the native AVX2 weights: the setting had no effect"
        );
    }
}

#[test]
fn bad_cpu_settings_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(p.join("cpu.yaml"), PIPELINE).expect("spec");
    let o = sspo(p, &["validate", "cpu.yaml", "--set", "cpu.isa=avx3"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("unknown CPU instruction set `avx3`") && err.contains("did you mean `avx2`?"),
        "{err}"
    );
    #[cfg(target_arch = "x86_64")]
    if !std::arch::is_x86_feature_detected!("avx512f") {
        let o = sspo(p, &["cpu.yaml", "--set", "cpu.isa=avx512"]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("this CPU does not support it"), "{err}");
        assert!(!p.join("runs/cpu/sft").exists(), "nothing may run");
    }
}
