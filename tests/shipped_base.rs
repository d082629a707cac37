//! The shipped overthinking base, `pipelines/models/tiny-synth-sft`, is what
//! `pipelines/sft-base.yaml` trains, byte for byte. It takes about 18 minutes on 2 cores,
//! so it is not part of the default suite:
//!
//! ```sh
//! cargo test --release --test shipped_base -- --ignored
//! ```

mod common;

use common::*;

#[test]
#[ignore = "about 18 minutes on 2 cores; run with --ignored"]
fn sft_base_reproduces_the_shipped_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = repo().join("pipelines/sft-base.yaml");
    run_ok(
        dir.path(),
        &[
            spec.to_str().expect("utf-8 path"),
            "--run-dir",
            "run",
            "--progress",
            "log",
        ],
    );
    let shipped = repo().join("pipelines/models/tiny-synth-sft");
    let trained = dir.path().join("run/sft/model");
    for file in [
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        let want = std::fs::read(shipped.join(file)).expect("shipped file");
        let got = std::fs::read(trained.join(file)).expect("trained file");
        assert!(
            want == got,
            "{file} differs from the shipped one ({} vs {} bytes)",
            got.len(),
            want.len()
        );
    }
}
