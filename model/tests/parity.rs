//! Parity with transformers on tiny random checkpoints built by `scripts/model/make_reference.py`.

mod common;

use common::*;
use sspo_model::{Attention, LoadOptions, Model};
use tch::Tensor;

fn load(name: &str) -> Model {
    Model::load_dir(&case_dir(name), &LoadOptions::default()).expect("load model")
}

fn logits_of(model: &Model, ids: &[i64]) -> Vec<f32> {
    let t = Tensor::from_slice(ids).view([1, -1]);
    let logits = tch::no_grad(|| model.decoder.forward(&t, Attention::Causal)).expect("forward");
    tensor_to_vec(&logits)
}

#[test]
fn logits_match_transformers() {
    for case in CASES {
        let model = load(case);
        let r = reference(case);
        for (ids, want) in r["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(r["logits"].as_array().unwrap())
        {
            let got = logits_of(&model, &common::ids(ids));
            let d = max_abs_diff(&got, &floats(want));
            assert!(d < 1e-4, "{case}: max |logit diff| = {d}");
        }
    }
}
