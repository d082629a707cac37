//! Generation behaviour that needs no reference implementation: batching invariance,
//! continuous batching, stop conditions.

mod common;

use sspo_model::{
    FinishReason, GenerationOutput, GenerationRequest, Generator, GeneratorConfig, Model,
    SamplingParams,
};

fn run(
    model: &Model,
    requests: &[GenerationRequest],
    max_batch: usize,
    eos: Vec<i64>,
) -> Vec<GenerationOutput> {
    Generator::new(
        &model.decoder,
        &model.tokenizer,
        GeneratorConfig {
            max_batch,
            eos_token_ids: eos,
        },
    )
    .generate(requests)
    .unwrap()
}

fn requests(model: &Model, sampling: bool) -> Vec<GenerationRequest> {
    let prompts = [
        "Let us think step by step.",
        "7 * 8 = ",
        "A much longer prompt, so that the batch needs real left padding here.",
        "x",
        "The answer is",
        "Wait, let me verify: 12 + 30",
        "ok",
    ];
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| GenerationRequest {
            prompt_ids: model.tokenizer.encode(p, false).unwrap(),
            params: SamplingParams {
                temperature: if sampling { 1.0 } else { 0.0 },
                top_p: if sampling { 0.95 } else { 1.0 },
                top_k: if sampling && i % 2 == 0 { 50 } else { 0 },
                // Different lengths so rows leave the batch at different steps.
                max_new_tokens: 3 + 5 * (i % 3),
                seed: 1000 + i as u64,
                stop: Vec::new(),
            },
        })
        .collect()
}

/// Sampling with per-request seeds: a request's output does not depend on its batch mates,
/// and continuous batching (more prompts than slots) gives the same result as one at a time.
#[test]
fn batched_sampling_equals_one_at_a_time() {
    let model = common::tiny_model(3);
    let reqs = requests(&model, true);
    let single: Vec<GenerationOutput> = reqs
        .iter()
        .map(|r| run(&model, std::slice::from_ref(r), 1, vec![]).remove(0))
        .collect();
    for max_batch in [2, 3, 16] {
        let batched = run(&model, &reqs, max_batch, vec![]);
        assert_eq!(batched, single, "max_batch {max_batch}");
    }
    for (r, o) in reqs.iter().zip(&single) {
        assert_eq!(o.n_tokens, r.params.max_new_tokens);
        assert_eq!(o.finish_reason, FinishReason::Length);
    }
    // Different seeds give different samples (the seed is really used).
    let mut other = reqs.clone();
    other.iter_mut().for_each(|r| r.params.seed += 1);
    assert_ne!(run(&model, &other, 4, vec![]), single);
}

#[test]
fn greedy_is_batch_invariant() {
    let model = common::tiny_model(4);
    let reqs = requests(&model, false);
    let a = run(&model, &reqs, 1, vec![]);
    let b = run(&model, &reqs, 3, vec![]);
    assert_eq!(a, b);
}

#[test]
fn stops_on_eos_and_stop_strings() {
    let model = common::tiny_model(5);
    let prompt = model.tokenizer.encode("Let us think.", false).unwrap();
    let base = GenerationRequest {
        prompt_ids: prompt.clone(),
        params: SamplingParams {
            max_new_tokens: 8,
            ..Default::default()
        },
    };
    let free = run(&model, std::slice::from_ref(&base), 1, vec![]).remove(0);
    assert_eq!(free.n_tokens, 8);
    // Declaring the 3rd generated token an eos id ends generation right there.
    let eos = free.token_ids[2];
    let first = free.token_ids.iter().position(|&t| t == eos).unwrap();
    let out = run(&model, std::slice::from_ref(&base), 1, vec![eos]).remove(0);
    assert_eq!(out.finish_reason, FinishReason::Eos);
    assert_eq!(out.token_ids, free.token_ids[..=first].to_vec());
    // A stop string taken from the free-running text cuts the text before it.
    let text = &free.text;
    let stop: String = text.chars().skip(3).take(2).collect();
    assert!(!stop.is_empty(), "free text too short: {text:?}");
    let mut req = base.clone();
    req.params.stop = vec![stop.clone()];
    let out = run(&model, &[req], 1, vec![]).remove(0);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    let cut = text.find(&stop).unwrap();
    assert_eq!(out.text, text[..cut]);
    assert!(out.n_tokens < 8);
    // max_new_tokens = 0 produces nothing.
    let mut req = base;
    req.params.max_new_tokens = 0;
    let out = run(&model, &[req], 1, vec![]).remove(0);
    assert_eq!((out.n_tokens, out.finish_reason), (0, FinishReason::Length));
}

#[test]
fn rejects_bad_requests() {
    let model = common::tiny_model(6);
    let bad = GenerationRequest {
        prompt_ids: vec![],
        params: SamplingParams::default(),
    };
    let err = Generator::new(
        &model.decoder,
        &model.tokenizer,
        GeneratorConfig {
            max_batch: 2,
            eos_token_ids: vec![],
        },
    )
    .generate(&[bad])
    .unwrap_err();
    assert!(err.to_string().contains("empty prompt"), "{err}");
}
