//! Cached probing (traces batched, each trace's keys and values computed once, every
//! boundary's blocks runs of queries against their own prefix, early answers decoded from
//! the cache) against the naive computation (one forward per block and early token), the
//! model crate's scoring and greedy generation, on the built-in `tiny-test` model with
//! random weights; for each kind and for both kinds in one pass.

use sspo_engine::{ModelRef, ModelSource};
use sspo_model::{
    continuation_logprobs, GenerationRequest, Generator, GeneratorConfig, Model, SamplingParams,
    ScoreRequest,
};
use sspo_operators::model_port::load_model;
use sspo_operators::probe::{
    answer_continuation, cut_early_answer, probe_trace, probe_traces, trace_tokens, BoundaryProbe,
    Packing, ProbeKind, ProbeKinds, ProbeParams, ProbeSetup, TraceInput, TraceTokens,
};

fn tiny() -> Model {
    load_model(
        &ModelRef {
            name: "base".into(),
            source: ModelSource::Builtin("tiny-test".into()),
            options: Default::default(),
            identity: String::new(),
        },
        "cpu",
    )
    .unwrap()
}

const CONTEXT: &str =
    "Question: Tom has 3 apples and buys 4 more, then eats 2. How many are left?\nAnswer:";

const STEPS: [&str; 9] = [
    " Tom starts with 3 apples.\n\n",
    "He buys 4 more: 3 + 4 = 7.\n\n",
    "He eats 2: 7 - 2 = 5.\n\n",
    "Let me check: 3 + 4 is 7.\n\n",
    "And 7 - 2 is 5.\n\n",
    "Check again: 5 + 2 = 7.\n\n",
    "Yes, 7 - 2 = 5.\n\n",
    "So 5 apples are left.\n\n",
    "The answer is 5.",
];

fn trace(model: &Model) -> TraceTokens {
    trace_tokens(&model.tokenizer, CONTEXT, &STEPS).unwrap()
}

fn setup(model: &Model, kind: impl Into<ProbeKinds>) -> ProbeSetup {
    ProbeSetup::new(
        model,
        &ProbeParams {
            kind: kind.into(),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Both kinds in one pass.
fn both() -> ProbeKinds {
    ProbeKinds::new(vec![ProbeKind::Verbal, ProbeKind::Answer])
}

/// Each kind alone, then both in one pass.
fn every_kind() -> [ProbeKinds; 3] {
    [ProbeKind::Verbal.into(), ProbeKind::Answer.into(), both()]
}

fn answer_ids(model: &Model) -> Vec<i64> {
    model
        .tokenizer
        .encode(
            &answer_continuation(sspo_operators::probe::DEFAULT_TRIGGER, "5"),
            false,
        )
        .unwrap()
}

fn close(a: Option<f64>, b: Option<f64>, what: &str) {
    match (a, b) {
        (Some(x), Some(y)) => assert!((x - y).abs() < 1e-4, "{what}: {x} vs {y}"),
        (None, None) => {}
        _ => panic!("{what}: {a:?} vs {b:?}"),
    }
}

fn assert_same(cached: &[BoundaryProbe], naive: &[BoundaryProbe]) {
    assert_eq!(cached.len(), naive.len());
    for (k, (p, n)) in cached.iter().zip(naive).enumerate() {
        close(p.p_yes, n.p_yes, &format!("p_yes at {k}"));
        close(p.p_no, n.p_no, &format!("p_no at {k}"));
        close(
            p.answer_logprob,
            n.answer_logprob,
            &format!("answer_logprob at {k}"),
        );
        close(p.value(), n.value(), &format!("value at {k}"));
        assert_eq!(p.early_ids, n.early_ids, "early answer at {k}");
    }
}

#[test]
fn trace_tokenisation_rule() {
    let model = tiny();
    let t = trace(&model);
    assert_eq!(t.boundaries.len(), STEPS.len() + 1);
    assert_eq!(t.boundaries[0], t.context_len);
    assert_eq!(
        model.tokenizer.decode(&t.ids, false).unwrap(),
        format!("{CONTEXT}{}", STEPS.concat())
    );
    let mut pos = t.context_len;
    for (k, &(s, e)) in t.step_spans.iter().enumerate() {
        assert_eq!(s, pos, "steps are contiguous");
        let b = t.boundaries[k + 1];
        assert!(s <= b && b <= e);
        // The boundary is the step without its trailing whitespace.
        assert_eq!(
            model.tokenizer.decode(&t.ids[s..b], false).unwrap(),
            STEPS[k].trim_end()
        );
        pos = e;
    }
    assert_eq!(pos, t.ids.len());
}

const CACHED: Packing = Packing::Cached {
    max_batch_tokens: 1 << 20,
};

#[test]
fn cached_equals_naive_for_every_kind() {
    let model = tiny();
    let t = trace(&model);
    let a = answer_ids(&model);
    for kinds in every_kind() {
        let s = setup(&model, kinds.clone());
        let ans = s.has(ProbeKind::Answer).then_some(a.as_slice());
        let cached = probe_trace(&model, &s, &t.ids, &t.boundaries, ans, CACHED).unwrap();
        let naive = probe_trace(&model, &s, &t.ids, &t.boundaries, ans, Packing::Naive).unwrap();
        assert_same(&cached, &naive);
        for p in &cached {
            for kind in [ProbeKind::Verbal, ProbeKind::Answer] {
                let v = p.value_of(kind);
                assert_eq!(v.is_some(), kinds.has(kind), "{kinds:?}");
                assert!(v.is_none_or(|v| (0.0..=1.0).contains(&v)), "{v:?}");
            }
            if kinds.has(ProbeKind::Verbal) {
                assert!(p.p_yes.unwrap() > 0.0);
            }
            if kinds.has(ProbeKind::Answer) {
                assert!(p.answer_logprob.unwrap() < 0.0);
                assert!(!p.early_ids.is_empty() && p.early_ids.len() <= 8);
            } else {
                assert!(p.early_ids.is_empty());
            }
        }
    }
}

/// Both kinds in one pass give each kind's own numbers: the verbal block and the answer
/// block of a boundary never see each other.
#[test]
fn both_kinds_in_one_pass_equal_each_kind_alone() {
    let model = tiny();
    let t = trace(&model);
    let a = answer_ids(&model);
    let probe = |kinds: ProbeKinds, ans: Option<&[i64]>| {
        let s = setup(&model, kinds);
        probe_trace(&model, &s, &t.ids, &t.boundaries, ans, CACHED).unwrap()
    };
    let combined = probe(both(), Some(&a));
    let verbal = probe(ProbeKind::Verbal.into(), None);
    let answer = probe(ProbeKind::Answer.into(), Some(&a));
    for (k, ((c, v), w)) in combined.iter().zip(&verbal).zip(&answer).enumerate() {
        close(c.p_yes, v.p_yes, &format!("p_yes at {k}"));
        close(c.p_no, v.p_no, &format!("p_no at {k}"));
        close(
            c.answer_logprob,
            w.answer_logprob,
            &format!("answer at {k}"),
        );
        assert_eq!(c.early_ids, w.early_ids, "early answer at {k}");
    }
    // The order written does not change the numbers (it only picks `value`).
    let reversed = probe(
        ProbeKinds::new(vec![ProbeKind::Answer, ProbeKind::Verbal]),
        Some(&a),
    );
    assert_eq!(combined, reversed);
}

/// Traces of different lengths, contexts and answers: one batch, several batches (a small
/// budget) and one trace at a time all give the naive numbers, in input order.
#[test]
fn batched_traces_equal_naive_in_input_order() {
    let model = tiny();
    let contexts = [
        CONTEXT,
        "Q: 2 + 2?\nA:",
        "Question: How many legs do 3 cats have?\nAnswer:",
    ];
    let traces: Vec<TraceTokens> = [9usize, 2, 5, 1, 7]
        .iter()
        .enumerate()
        .map(|(i, &n)| trace_tokens(&model.tokenizer, contexts[i % 3], &STEPS[..n]).unwrap())
        .collect();
    let answers: Vec<Vec<i64>> = ["5", "4", "12", "5", "5"]
        .iter()
        .map(|a| {
            let text = answer_continuation(sspo_operators::probe::DEFAULT_TRIGGER, a);
            model.tokenizer.encode(&text, false).unwrap()
        })
        .collect();
    for kinds in every_kind() {
        let s = setup(&model, kinds);
        let inputs: Vec<TraceInput<'_>> = traces
            .iter()
            .zip(&answers)
            .map(|(t, a)| TraceInput {
                ids: &t.ids,
                boundaries: &t.boundaries,
                answer: s.has(ProbeKind::Answer).then_some(a.as_slice()),
            })
            .collect();
        let naive = probe_traces(&model, &s, &inputs, Packing::Naive).unwrap();
        let longest = traces.iter().map(|t| t.ids.len()).max().unwrap();
        for budget in [1 << 20, 2 * longest, 1] {
            let packing = Packing::Cached {
                max_batch_tokens: budget,
            };
            let cached = probe_traces(&model, &s, &inputs, packing).unwrap();
            assert_eq!(cached.len(), traces.len());
            for (t, (c, n)) in cached.iter().zip(&naive).enumerate() {
                assert_eq!(c.len(), traces[t].boundaries.len(), "trace {t}");
                assert_same(c, n);
            }
        }
    }
}

#[test]
fn answer_logprob_equals_continuation_scoring() {
    let model = tiny();
    let t = trace(&model);
    let a = answer_ids(&model);
    let s = setup(&model, ProbeKind::Answer);
    let cached = probe_trace(&model, &s, &t.ids, &t.boundaries, Some(&a), CACHED).unwrap();
    let requests: Vec<ScoreRequest> = t
        .boundaries
        .iter()
        .map(|&b| {
            let mut context = t.ids[..b].to_vec();
            context.extend(&s.trigger);
            ScoreRequest {
                context,
                continuation: a.clone(),
            }
        })
        .collect();
    let scored = continuation_logprobs(&model.decoder, &requests, 4).unwrap();
    for (k, (p, lp)) in cached.iter().zip(&scored).enumerate() {
        let mean = lp.iter().map(|&x| x as f64).sum::<f64>() / lp.len() as f64;
        close(p.answer_logprob, Some(mean), &format!("boundary {k}"));
    }
}

#[test]
fn early_answers_equal_greedy_generation() {
    let model = tiny();
    let t = trace(&model);
    let a = answer_ids(&model);
    for kinds in [ProbeKind::Answer.into(), both()] {
        let s = setup(&model, kinds);
        // Alone, without a reference; with both kinds, beside the forced answer and the
        // verbal question, which the early answer must not see.
        let ans = s.has(ProbeKind::Verbal).then_some(a.as_slice());
        let cached = probe_trace(&model, &s, &t.ids, &t.boundaries, ans, CACHED).unwrap();
        assert_greedy(&model, &s, &t, &cached);
    }
}

/// The early answers of `cached` are what the model crate's greedy generation writes.
fn assert_greedy(model: &Model, s: &ProbeSetup, t: &TraceTokens, cached: &[BoundaryProbe]) {
    let requests: Vec<GenerationRequest> = t
        .boundaries
        .iter()
        .map(|&b| {
            let mut prompt_ids = t.ids[..b].to_vec();
            prompt_ids.extend(&s.trigger);
            GenerationRequest {
                prompt_ids,
                params: SamplingParams {
                    temperature: 0.0,
                    max_new_tokens: s.early_tokens,
                    ..Default::default()
                },
            }
        })
        .collect();
    let gen = Generator::new(
        &model.decoder,
        &model.tokenizer,
        GeneratorConfig {
            max_batch: 16,
            eos_token_ids: model.eos_token_ids(),
        },
    );
    let outs = gen.generate(&requests).unwrap();
    for (k, (p, o)) in cached.iter().zip(&outs).enumerate() {
        let ours = cut_early_answer(&model.tokenizer.decode(&p.early_ids, true).unwrap()).0;
        let theirs = cut_early_answer(&o.text).0;
        assert_eq!(ours, theirs, "boundary {k}");
        assert!(o.token_ids.starts_with(&p.early_ids), "boundary {k}");
    }
}

#[test]
fn verbal_probe_needs_single_token_forms() {
    let model = tiny();
    let err = ProbeSetup::new(
        &model,
        &ProbeParams {
            kind: ProbeKind::Verbal.into(),
            yes: vec![" Certainly".into()],
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("none of the `yes` forms"), "{err}");
    // Only single-token forms are used: " Yes" counts, " Yes indeed" does not.
    let s = ProbeSetup::new(
        &model,
        &ProbeParams {
            kind: ProbeKind::Verbal.into(),
            yes: vec![" Yes".into(), " Yes indeed".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.yes.len(), 1);
    assert_eq!(s.no.len(), 3);
}

#[test]
fn boundaries_must_be_inside_the_trace() {
    let model = tiny();
    let t = trace(&model);
    let s = setup(&model, ProbeKind::Verbal);
    let err = probe_trace(&model, &s, &t.ids, &[0], None, Packing::Naive).unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
}

/// An empty trigger: the first answer token and the early answer are read at the trace
/// token before the boundary, which the cached pass computes with the trace itself.
#[test]
fn empty_trigger_reads_the_boundary_token() {
    let model = tiny();
    let t = trace(&model);
    let s = ProbeSetup::new(
        &model,
        &ProbeParams {
            trigger: String::new(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(s.trigger.is_empty());
    let a = model
        .tokenizer
        .encode(&answer_continuation("", "5"), false)
        .unwrap();
    let cached = probe_trace(&model, &s, &t.ids, &t.boundaries, Some(&a), CACHED).unwrap();
    let naive = probe_trace(&model, &s, &t.ids, &t.boundaries, Some(&a), Packing::Naive).unwrap();
    assert_same(&cached, &naive);
    assert!(cached.iter().all(|p| p.answer_logprob.is_some()));
}
