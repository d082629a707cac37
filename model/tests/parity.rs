//! Parity with transformers on tiny random checkpoints built by `scripts/model/make_reference.py`.

mod common;

use common::*;
use sspo_model::{Attention, LoadOptions, Model};
use tch::Tensor;

fn load(name: &str) -> Model {
    Model::load_dir(&case_dir(name), &LoadOptions::default()).expect("load model")
}

/// The model as the inference operators use it on the CPU: weights packed for MKL.
fn load_packed(name: &str) -> Model {
    let mut model = load(name);
    model.decoder.pack_for_inference().expect("pack");
    model
}

fn logits_of(model: &Model, ids: &[i64]) -> Vec<f32> {
    let t = Tensor::from_slice(ids).view([1, -1]);
    let logits = tch::no_grad(|| model.decoder.forward(&t, Attention::Causal)).expect("forward");
    tensor_to_vec(&logits)
}

#[test]
fn logits_match_transformers() {
    for (case, model) in CASES
        .iter()
        .flat_map(|c| [(c, load(c)), (c, load_packed(c))])
    {
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

/// Our save → transformers load gives the same logits, chat template, eos ids and tying.
#[test]
fn saved_directory_loads_in_transformers() {
    let out_root = reference_root().join("resaved");
    let conversation = serde_json::json!([{"role": "user", "content": "What is 7 * 8?"}]);
    let mut requests = Vec::new();
    let mut models = Vec::new();
    for case in CASES {
        let model = load(case);
        let dir = out_root.join(case);
        model.save_dir(&dir).expect("save");
        assert!(dir.join("model.safetensors").exists());
        requests.push(serde_json::json!({
            "dir": dir,
            "prompt_ids": reference(case)["prompt_ids"],
            "conversations": [conversation],
        }));
        models.push((case, model, dir));
    }
    let req_path = out_root.join("request.json");
    let out_path = out_root.join("hf_out.json");
    std::fs::write(&req_path, serde_json::Value::from(requests).to_string()).unwrap();
    let script = scripts_dir().join("hf_logits.py");
    run_python(&[
        script.to_str().unwrap(),
        req_path.to_str().unwrap(),
        out_path.to_str().unwrap(),
    ]);
    let hf_all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
    for ((case, model, dir), hf) in models.iter().zip(hf_all.as_array().unwrap()) {
        let r = reference(case);
        for (ids, want) in r["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(hf["logits"].as_array().unwrap())
        {
            let got = logits_of(model, &common::ids(ids));
            let d = max_abs_diff(&got, &floats(want));
            assert!(d < 1e-4, "{case}: resaved max |logit diff| = {d}");
        }
        let chat = model
            .apply_chat_template(&conversation, true)
            .expect("render");
        assert_eq!(
            hf["chat"][0].as_str().unwrap(),
            chat,
            "{case}: chat template"
        );
        assert_eq!(
            hf["tied"].as_bool().unwrap(),
            model.decoder.config().tie_word_embeddings,
            "{case}: tying"
        );
        let hf_eos = &hf["eos_token_id"];
        let hf_eos = if hf_eos.is_array() {
            common::ids(hf_eos)
        } else {
            vec![hf_eos.as_i64().unwrap()]
        };
        assert_eq!(hf_eos, model.eos_token_ids(), "{case}: eos ids");
        // Tied weights are stored once, as transformers does.
        let names = safetensor_names(&dir.join("model.safetensors"));
        assert_eq!(
            names.contains(&"lm_head.weight".to_string()),
            !model.decoder.config().tie_word_embeddings,
            "{case}: lm_head.weight presence"
        );
    }
}

fn safetensor_names(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.names().into_iter().map(str::to_string).collect()
}

/// Greedy decoding reproduces `transformers.generate(do_sample=False)` token for token, both
/// one prompt at a time and with all prompts batched (left padding, different lengths).
#[test]
fn greedy_matches_transformers() {
    use sspo_model::{GenerationRequest, Generator, GeneratorConfig, SamplingParams};
    for case in CASES {
        let model = load(case);
        let r = reference(case);
        let requests: Vec<GenerationRequest> = r["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| GenerationRequest {
                prompt_ids: common::ids(p),
                params: SamplingParams {
                    max_new_tokens: 12,
                    ..Default::default()
                },
            })
            .collect();
        let want: Vec<Vec<i64>> = r["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(common::ids)
            .collect();
        for max_batch in [1, 3] {
            let gen = Generator::new(
                &model.decoder,
                &model.tokenizer,
                GeneratorConfig {
                    max_batch,
                    eos_token_ids: model.eos_token_ids(),
                },
            );
            let out = gen.generate(&requests).expect("generate");
            for (o, w) in out.iter().zip(&want) {
                assert_eq!(&o.token_ids, w, "{case}: greedy (max_batch {max_batch})");
                assert_eq!(o.n_tokens, w.len());
            }
        }
        // Packed weights, with enough rows decoding together to take the packed products.
        let packed = load_packed(case);
        let twice: Vec<GenerationRequest> = requests.iter().chain(&requests).cloned().collect();
        let gen = Generator::new(
            &packed.decoder,
            &packed.tokenizer,
            GeneratorConfig {
                max_batch: twice.len(),
                eos_token_ids: packed.eos_token_ids(),
            },
        );
        assert!(twice.len() >= 4, "{case}: too few prompts to decode packed");
        let out = gen.generate(&twice).expect("generate");
        for (o, w) in out.iter().zip(want.iter().cycle()) {
            assert_eq!(&o.token_ids, w, "{case}: greedy with packed weights");
        }
    }
}

/// Chat templates render exactly as `tokenizer.apply_chat_template`, including errors raised
/// by the template.
#[test]
fn chat_template_matches_transformers() {
    for case in CASES {
        let model = load(case);
        let r = reference(case);
        for item in r["chat"].as_array().unwrap() {
            let agp = item["add_generation_prompt"].as_bool().unwrap();
            let ours = model.apply_chat_template(&item["messages"], agp);
            match item["text"].as_str() {
                Some(want) => assert_eq!(ours.expect("render"), want, "{case}: {item}"),
                None => {
                    let err = ours.expect_err("template should raise").to_string();
                    let want = item["error"].as_str().unwrap();
                    assert!(err.contains(want), "{case}: error {err:?} lacks {want:?}");
                }
            }
        }
    }
}
