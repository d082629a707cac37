//! Cached vs naive step-boundary probing on a built-in model with random weights, or on a
//! model file.
//!
//! ```sh
//! cargo run --release -p sspo-operators --example bench_probe -- \
//!     [--model tiny-synth|PATH.gguf|HF_DIR] [--traces 8] [--steps 12] [--threads 1] \
//!     [--repeats 3] [--batch-tokens 8192] [--out DIR]
//! ```
//!
//! For each probe kind, every boundary of every trace is probed once cached (the traces
//! batched, each trace's keys and values computed once) and once naively (one forward
//! pass per boundary and early token); the two must give the same numbers. Prints one JSON line per kind. With `--out DIR` the model is saved there
//! (`Model::save_dir`) with `traces.json` (token ids, boundaries, probe tokens and our
//! values) for `scripts/bench/probe_hf.py`.

use std::time::Instant;

use serde_json::json;
use sspo_engine::{ModelRef, ModelSource};
use sspo_model::Model;
use sspo_operators::model_port::load_inference_model;
use sspo_operators::probe::{
    answer_continuation, probe_traces, trace_tokens, BoundaryProbe, Packing, ProbeKind,
    ProbeParams, ProbeSetup, TraceInput, TraceTokens, DEFAULT_QUESTION, DEFAULT_TRIGGER,
};
use sspo_operators::tasks::synth::PROBE_QUESTION;

struct Args {
    model: String,
    traces: usize,
    steps: usize,
    threads: i32,
    repeats: usize,
    batch_tokens: usize,
    out: Option<std::path::PathBuf>,
}

fn parse_args() -> Args {
    let mut a = Args {
        model: "tiny-synth".into(),
        traces: 8,
        steps: 12,
        threads: 1,
        repeats: 3,
        batch_tokens: 8192,
        out: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--model" => a.model = v,
            "--traces" => a.traces = v.parse().expect("--traces N"),
            "--steps" => a.steps = v.parse().expect("--steps N"),
            "--threads" => a.threads = v.parse().expect("--threads N"),
            "--repeats" => a.repeats = v.parse().expect("--repeats N"),
            "--batch-tokens" => a.batch_tokens = v.parse().expect("--batch-tokens N"),
            "--out" => a.out = Some(v.into()),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// A deterministic arithmetic trace with `steps` steps, the last one the answer line.
fn make_trace(i: usize, steps: usize) -> (String, Vec<String>, String) {
    let mut x = 17 + 7 * i as u64;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % 50 + 1
    };
    let (a, b) = (next(), next());
    let context = format!(
        "Question: A crate holds {a} pears and a basket holds {b}. How many pears are in both?\nAnswer:"
    );
    let mut acc = a;
    let mut out = Vec::with_capacity(steps);
    for s in 1..steps {
        let t = if s == 1 {
            acc = a + b;
            format!(" First, {a} + {b} = {acc}.\n\n")
        } else {
            let c = next().min(acc);
            let d = acc - c;
            format!("Check {s}: {acc} - {c} = {d}, and {d} + {c} = {acc}.\n\n")
        };
        out.push(t);
    }
    out.push(format!("The answer is {acc}."));
    (context, out, acc.to_string())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Case {
    tt: TraceTokens,
    answer_ids: Vec<i64>,
}

fn run_all(
    model: &Model,
    setup: &ProbeSetup,
    cases: &[Case],
    packing: Packing,
) -> Vec<Vec<BoundaryProbe>> {
    let inputs: Vec<TraceInput<'_>> = cases
        .iter()
        .map(|c| TraceInput {
            ids: &c.tt.ids,
            boundaries: &c.tt.boundaries,
            answer: setup
                .has(ProbeKind::Answer)
                .then_some(c.answer_ids.as_slice()),
        })
        .collect();
    probe_traces(model, setup, &inputs, packing).expect("probe")
}

fn max_diff(a: &[Vec<BoundaryProbe>], b: &[Vec<BoundaryProbe>]) -> (f64, bool) {
    let mut d: f64 = 0.0;
    let mut same_early = true;
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        for (p, q) in [
            (x.value(), y.value()),
            (x.p_yes, y.p_yes),
            (x.p_no, y.p_no),
            (x.answer_logprob, y.answer_logprob),
        ] {
            if let (Some(p), Some(q)) = (p, q) {
                d = d.max((p - q).abs());
            }
        }
        same_early &= x.early_ids == y.early_ids;
    }
    (d, same_early)
}

fn main() {
    let args = parse_args();
    tch::set_num_threads(args.threads);
    // A built-in name, or a path: a GGUF file or an HF directory.
    let path = std::path::Path::new(&args.model);
    let source = if ModelSource::is_gguf_path(path) {
        ModelSource::Gguf(path.into())
    } else if path.is_dir() {
        ModelSource::Dir(path.into())
    } else {
        ModelSource::Builtin(args.model.clone())
    };
    let model = load_inference_model(
        &ModelRef {
            name: args.model.clone(),
            source,
            options: Default::default(),
            identity: String::new(),
        },
        "cpu",
    )
    .expect("load model");
    let cases: Vec<Case> = (0..args.traces)
        .map(|i| {
            let (context, steps, answer) = make_trace(i, args.steps);
            let refs: Vec<&str> = steps.iter().map(String::as_str).collect();
            let tt = trace_tokens(&model.tokenizer, &context, &refs).expect("tokenise");
            let answer_ids = model
                .tokenizer
                .encode(&answer_continuation(DEFAULT_TRIGGER, &answer), false)
                .expect("tokenise");
            Case { tt, answer_ids }
        })
        .collect();
    let mean_tokens =
        cases.iter().map(|c| c.tt.ids.len()).sum::<usize>() as f64 / cases.len().max(1) as f64;
    // `verbal` uses the default (long, instruction-style) question; `verbal-short` the
    // synthetic task's question.
    let kinds: [(&str, ProbeKind, usize, &str); 4] = [
        ("answer", ProbeKind::Answer, 0, ""),
        ("verbal", ProbeKind::Verbal, 0, DEFAULT_QUESTION),
        ("verbal-short", ProbeKind::Verbal, 0, PROBE_QUESTION),
        ("answer+early8", ProbeKind::Answer, 8, ""),
    ];
    let mut dump = Vec::new();
    for (name, kind, early, question) in kinds {
        let setup = ProbeSetup::new(
            &model,
            &ProbeParams {
                kind: kind.into(),
                early_answer_tokens: early,
                question: question.to_string(),
                ..Default::default()
            },
        )
        .expect("setup");
        let packing = Packing::Cached {
            max_batch_tokens: args.batch_tokens,
        };
        // Warm-up.
        let _ = run_all(&model, &setup, &cases[..1], packing);
        let _ = run_all(&model, &setup, &cases[..1], Packing::Naive);
        let _ = sspo_model::profile::take_report();
        let (mut tp, mut tn) = (Vec::new(), Vec::new());
        let (mut cached, mut naive) = (Vec::new(), Vec::new());
        // `SSPO_PROFILE=1`: the stages of the first cached repeat.
        let mut profile = None;
        for _ in 0..args.repeats.max(1) {
            let t = Instant::now();
            cached = run_all(&model, &setup, &cases, packing);
            tp.push(t.elapsed().as_secs_f64());
            if profile.is_none() {
                profile = Some(sspo_model::profile::take_report_json());
            }
            let t = Instant::now();
            naive = run_all(&model, &setup, &cases, Packing::Naive);
            tn.push(t.elapsed().as_secs_f64());
        }
        let (diff, same_early) = max_diff(&cached, &naive);
        let probes: usize = cases.iter().map(|c| c.tt.boundaries.len()).sum();
        let (p, n) = (median(tp), median(tn));
        println!(
            "{}",
            json!({
                "impl": "sspo", "model": args.model, "kind": name, "traces": cases.len(),
                "steps": args.steps, "probes": probes, "mean_trace_tokens": mean_tokens,
                "threads": args.threads, "cached_s": p, "naive_s": n, "speedup": n / p,
                "max_abs_diff": diff, "same_early_answers": same_early,
                "profile": profile,
            })
        );
        if early == 0 {
            let values: Vec<Vec<Option<f64>>> = cached
                .iter()
                .map(|t| t.iter().map(BoundaryProbe::value).collect())
                .collect();
            dump.push(json!({
                "kind": name, "suffix": setup.suffix(kind), "yes": setup.yes, "no": setup.no,
                "values": values, "cached_s": p, "naive_s": n,
            }));
        }
    }
    if let Some(out) = &args.out {
        model.save_dir(out).expect("save model");
        let traces: Vec<_> = cases
            .iter()
            .map(
                |c| json!({"ids": c.tt.ids, "boundaries": c.tt.boundaries, "answer": c.answer_ids}),
            )
            .collect();
        let doc = json!({"model": args.model, "traces": traces, "kinds": dump});
        std::fs::write(out.join("traces.json"), doc.to_string()).expect("write traces.json");
    }
}
