//! The synthetic arithmetic task: determinism, correct answers (recomputed from the prompt
//! text alone), traces consistent with the answer extractor, oracle traces, the redundancy and
//! slip mechanics at their configured rates, probe-teaching labels, and the config contract.

use std::collections::HashMap;

use regex::Regex;
use sspo_operators::tasks::synth::{
    generate, probe_examples, settled_at, sft_rows, SftKind, StepKind, SynthConfig, SynthError,
    SynthProblem, PROBE_NO, PROBE_QUESTION, PROBE_YES, STEP_SEPARATOR,
};
use sspo_operators::tasks::{verify, AnswerFormat};

fn problems(n: usize, seed: u64) -> Vec<SynthProblem> {
    generate(&SynthConfig {
        n,
        seed,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn same_seed_same_problems_other_seed_others() {
    let a = problems(300, 7);
    let b = problems(300, 7);
    assert_eq!(a, b);
    let c = problems(300, 8);
    let same = a
        .iter()
        .zip(&c)
        .filter(|(x, y)| x.prompt == y.prompt)
        .count();
    assert!(same < 5, "{same} identical prompts across seeds");
    // Problem i depends only on (seed, i): a smaller n is a prefix.
    let small = problems(40, 7);
    assert_eq!(small[..], a[..40]);
    // Ids are unique and stable.
    let ids: std::collections::HashSet<_> = a.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids.len(), a.len());
    assert_eq!(a[12].id, "synth-000012");
}

/// Recomputes the answer from the prompt's sentences, knowing only the story templates.
fn solve_prompt(prompt: &str) -> i64 {
    let num = Regex::new(r"\d+").unwrap();
    let sentences: Vec<&str> = prompt
        .split_inclusive(['.', '?'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let nums = |s: &str| -> Vec<i64> {
        num.find_iter(s)
            .map(|m| m.as_str().parse().unwrap())
            .collect()
    };
    let mut x: Option<i64> = None;
    for s in &sentences {
        let n = nums(s);
        if s.starts_with("How many") {
            assert!(n.is_empty());
            continue;
        }
        let Some(cur) = x else {
            assert!(
                s.contains(" has ") || s.contains(" starts with ") || s.contains(" collects "),
                "{s}"
            );
            x = Some(n[0]);
            continue;
        };
        let next = if s.contains(" each") || s.contains(" boxes of ") || s.contains(" in each") {
            cur + n[0] * n[1]
        } else if s.contains(" more") {
            cur + n[0]
        } else if s.contains("gives away") || s.contains("loses") || s.contains("sells") {
            cur - n[0]
        } else if s.contains("doubles") {
            cur * 2
        } else if s.contains("triples") {
            cur * 3
        } else if s.contains("times as many") {
            cur * n[0]
        } else if s.contains("equal") {
            assert_eq!(cur % n[0], 0, "{prompt}");
            cur / n[0]
        } else {
            panic!("unknown sentence {s:?} in {prompt:?}");
        };
        assert!(next >= 1, "{prompt}");
        x = Some(next);
    }
    x.unwrap()
}

/// Every `a op b = c` in a text, with whether it is arithmetically right.
fn equations(text: &str) -> Vec<(i64, bool)> {
    let eq = Regex::new(r"(\d+) ([-+*/]) (\d+) = (\d+)").unwrap();
    eq.captures_iter(text)
        .map(|c| {
            let (a, b, r): (i64, i64, i64) = (
                c[1].parse().unwrap(),
                c[3].parse().unwrap(),
                c[4].parse().unwrap(),
            );
            let ok = match &c[2] {
                "+" => a + b == r,
                "-" => a - b == r,
                "*" => a * b == r,
                _ => b != 0 && a % b == 0 && a / b == r,
            };
            (r, ok)
        })
        .collect()
}

#[test]
fn answers_recomputed_from_the_prompt() {
    for p in problems(2000, 1) {
        let expected = solve_prompt(&p.prompt);
        assert_eq!(p.answer, expected.to_string(), "{}", p.prompt);
        assert!(expected < 1000);
        // The needed steps are correct equations and the last one yields the answer.
        let needed: Vec<_> = p.steps[..p.n_needed_steps as usize]
            .iter()
            .flat_map(|s| equations(&s.text))
            .collect();
        assert_eq!(needed.len(), p.n_needed_steps as usize, "{}", p.trace);
        assert!(needed.iter().all(|(_, ok)| *ok), "{}", p.trace);
        assert_eq!(needed.last().unwrap().0, expected);
        // Correct re-checks and fixes hold only right equations; a slip holds a wrong one.
        for s in &p.steps {
            let eqs = equations(&s.text);
            match s.kind {
                StepKind::Error => assert!(eqs.iter().any(|(_, ok)| !ok), "{}", s.text),
                StepKind::Fix => {
                    assert!(eqs.iter().all(|(_, ok)| *ok), "{}", s.text);
                    assert!(
                        s.text.ends_with(&format!("{expected} after all."))
                            || s.text.ends_with(&format!("is {expected}."))
                    );
                }
                _ => assert!(eqs.iter().all(|(_, ok)| *ok), "{}", s.text),
            }
        }
    }
}

#[test]
fn numbers_stay_below_max_value() {
    let num = Regex::new(r"\d+").unwrap();
    for p in problems(2000, 2) {
        for text in [&p.prompt, &p.trace] {
            for m in num.find_iter(text) {
                assert!(m.as_str().parse::<u32>().unwrap() <= 999, "{text}");
            }
        }
    }
}

#[test]
fn trace_correct_agrees_with_the_answer_extractor() {
    let mut wrong = 0;
    for p in problems(2000, 3) {
        for fmt in [AnswerFormat::AnswerIs, AnswerFormat::Auto] {
            let got = fmt.extract(&p.trace).expect("trace has a final answer");
            assert_eq!(got, p.trace_answer);
            assert_eq!(fmt.verify(&got, &p.answer), p.trace_correct, "{}", p.trace);
            let oracle = fmt.extract(&p.oracle_trace).unwrap();
            assert!(verify(&oracle, &p.answer));
        }
        assert_eq!(
            AnswerFormat::Auto.extract_reference(&p.answer).as_deref(),
            Some(p.answer.as_str())
        );
        // Earlier steps never look like a final answer.
        let body = &p.trace[..p.trace.rfind(STEP_SEPARATOR).unwrap_or(0)];
        assert_eq!(AnswerFormat::AnswerIs.extract(body), None, "{body}");
        wrong += usize::from(!p.trace_correct);
    }
    assert!(wrong > 0, "the base traces must contain real mistakes");
}

#[test]
fn oracle_is_the_trace_without_redundancy() {
    for p in problems(2000, 4) {
        let texts: Vec<&str> = p.steps.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts.join(STEP_SEPARATOR), p.trace);
        assert!(texts.iter().all(|t| !t.contains('\n') && !t.is_empty()));
        let k = p.n_needed_steps as usize;
        assert!(p.trace.starts_with(&texts[..k].join(STEP_SEPARATOR)));
        assert_eq!(
            p.oracle_trace,
            format!(
                "{}{STEP_SEPARATOR}The answer is {}.",
                texts[..k].join(STEP_SEPARATOR),
                p.answer
            )
        );
        assert!(p.oracle_tokens <= p.trace_tokens);
        assert!(p.oracle_trace.len() <= p.trace.len());
        assert_eq!(
            p.steps.len(),
            p.n_needed_steps as usize + p.n_redundant_steps as usize + 1
        );
        if p.n_redundant_steps == 0 {
            assert_eq!(p.trace, p.oracle_trace);
            assert_eq!(p.trace_tokens, p.oracle_tokens);
        }
        assert!(p.steps[..k].iter().all(|s| s.kind == StepKind::Needed));
        assert_eq!(p.steps.last().unwrap().kind, StepKind::Final);
        assert!(p.steps[k..p.steps.len() - 1]
            .iter()
            .all(|s| s.kind != StepKind::Needed && s.kind != StepKind::Final));
        assert_eq!(
            p.n_errors as usize,
            p.steps.iter().filter(|s| s.kind == StepKind::Error).count()
        );
        assert_eq!(
            p.n_fixes as usize,
            p.steps.iter().filter(|s| s.kind == StepKind::Fix).count()
        );
        // An unfixed slip is the last re-check and decides the answer.
        assert_eq!(p.trace_correct, p.n_errors == p.n_fixes);
    }
}

#[test]
fn needed_and_redundant_steps_follow_the_config() {
    let cfg = SynthConfig {
        n: 6000,
        seed: 5,
        min_ops: 2,
        max_ops: 5,
        max_rechecks: 3,
        recheck_error_rate: 0.0,
        ..Default::default()
    };
    let ps = generate(&cfg).unwrap();
    let mut needed: HashMap<u32, usize> = HashMap::new();
    let mut redundant: HashMap<u32, usize> = HashMap::new();
    for p in &ps {
        *needed.entry(p.n_needed_steps).or_default() += 1;
        *redundant.entry(p.n_redundant_steps).or_default() += 1;
        assert!(p.trace_correct);
        assert_eq!(p.n_errors, 0);
    }
    let n = ps.len() as f64;
    for k in 2..=5 {
        let f = needed.get(&k).copied().unwrap_or(0) as f64 / n;
        assert!((f - 0.25).abs() < 0.03, "needed {k}: {f}");
    }
    assert_eq!(needed.keys().filter(|k| !(2..=5).contains(*k)).count(), 0);
    for r in 0..=3 {
        let f = redundant.get(&r).copied().unwrap_or(0) as f64 / n;
        assert!((f - 0.25).abs() < 0.03, "redundant {r}: {f}");
    }
    assert_eq!(redundant.keys().filter(|k| **k > 3).count(), 0);

    // No re-checks at all: every trace is its oracle.
    let cfg = SynthConfig {
        n: 200,
        max_rechecks: 0,
        ..Default::default()
    };
    for p in generate(&cfg).unwrap() {
        assert_eq!(p.trace, p.oracle_trace);
    }
}

#[test]
fn slips_and_fixes_at_the_configured_rates() {
    let (e, f, max_r) = (0.2, 0.4, 4u32);
    let cfg = SynthConfig {
        n: 8000,
        seed: 6,
        max_rechecks: max_r,
        recheck_error_rate: e,
        fix_rate: f,
        ..Default::default()
    };
    let ps = generate(&cfg).unwrap();
    let (mut checks, mut slips, mut fixes, mut correct) = (0usize, 0usize, 0usize, 0usize);
    for p in &ps {
        for s in &p.steps {
            match s.kind {
                StepKind::Recheck => checks += 1,
                StepKind::Error => slips += 1,
                StepKind::Fix => fixes += 1,
                _ => {}
            }
        }
        correct += usize::from(p.trace_correct);
    }
    let slip_rate = slips as f64 / (checks + slips) as f64;
    let fix_rate = fixes as f64 / slips as f64;
    assert!((slip_rate - e).abs() < 0.015, "slip rate {slip_rate}");
    assert!((fix_rate - f).abs() < 0.04, "fix rate {fix_rate}");
    // P(correct) = E_r[(1 - e (1 - f))^r], r uniform in 0..=max_r.
    let q: f64 = 1.0 - e * (1.0 - f);
    let expected = (0..=max_r).map(|r| q.powi(r as i32)).sum::<f64>() / f64::from(max_r + 1);
    let acc = correct as f64 / ps.len() as f64;
    assert!(
        (acc - expected).abs() < 0.02,
        "accuracy {acc} vs {expected}"
    );

    // Never slipping, or always fixing, keeps every trace correct.
    for (e, f) in [(0.0, 0.0), (1.0, 1.0)] {
        let cfg = SynthConfig {
            n: 300,
            recheck_error_rate: e,
            fix_rate: f,
            ..Default::default()
        };
        assert!(generate(&cfg).unwrap().iter().all(|p| p.trace_correct));
    }
    // Always slipping, never fixing: wrong whenever there is a re-check.
    let cfg = SynthConfig {
        n: 300,
        recheck_error_rate: 1.0,
        fix_rate: 0.0,
        ..Default::default()
    };
    for p in generate(&cfg).unwrap() {
        assert_eq!(p.trace_correct, p.n_redundant_steps == 0, "{}", p.trace);
        assert!(p.n_redundant_steps <= 1);
    }
}

#[test]
fn default_config_statistics() {
    let ps = problems(2000, 0);
    let n = ps.len() as f64;
    let mean = |f: &dyn Fn(&SynthProblem) -> f64| ps.iter().map(f).sum::<f64>() / n;
    let trace = mean(&|p| f64::from(p.trace_tokens));
    let oracle = mean(&|p| f64::from(p.oracle_tokens));
    let acc = mean(&|p| f64::from(u8::from(p.trace_correct)));
    let red = mean(&|p| f64::from(p.n_redundant_steps));
    eprintln!(
        "default config: mean trace tokens {trace:.1}, oracle tokens {oracle:.1} \
         (removable {:.1}%), redundant steps {red:.2}, trace accuracy {acc:.3}",
        100.0 * (1.0 - oracle / trace)
    );
    assert!(oracle < 0.8 * trace);
    assert!((0.8..0.95).contains(&acc), "{acc}");
}

#[test]
fn probe_labels_follow_the_trace() {
    for p in problems(1000, 9) {
        let all = probe_examples(&p, 0, 0);
        assert_eq!(all.len(), p.steps.len() + 1);
        let k_needed = p.n_needed_steps as usize;
        for ex in &all {
            let k = ex.boundary;
            assert!(ex.context.ends_with(PROBE_QUESTION));
            let prefix = &ex.context[..ex.context.len() - PROBE_QUESTION.len()];
            assert!(p.trace.starts_with(prefix));
            assert_eq!(ex.settled, settled_at(&p, k));
            assert_eq!(ex.target, if ex.settled { PROBE_YES } else { PROBE_NO });
            assert_eq!(ex.response(), format!("{}{}", ex.context, ex.target));
            if k < k_needed {
                assert!(!ex.settled);
            }
            if k == k_needed {
                assert!(ex.settled);
            }
            if k > 0 && p.steps[k - 1].kind == StepKind::Error {
                assert!(!ex.settled);
            }
            if k > 0 && p.steps[k - 1].kind == StepKind::Fix {
                assert!(ex.settled);
            }
        }
        assert_eq!(all.last().unwrap().settled, p.trace_correct);
        assert_eq!(all[0].context, PROBE_QUESTION);

        // A deterministic subset, in boundary order.
        let some = probe_examples(&p, 3, 11);
        assert_eq!(some, probe_examples(&p, 3, 11));
        assert_eq!(some.len(), 3.min(all.len()));
        assert!(some.windows(2).all(|w| w[0].boundary < w[1].boundary));
        assert!(some.iter().all(|e| all.contains(e)));
    }
}

#[test]
fn sft_rows_with_and_without_probe_teaching() {
    let cfg = SynthConfig {
        n: 100,
        ..Default::default()
    };
    let ps = generate(&cfg).unwrap();
    let rows = sft_rows(&cfg, &ps);
    assert_eq!(rows.len(), 100);
    assert!(rows.iter().zip(&ps).all(|(r, p)| r.kind == SftKind::Trace
        && r.response == p.trace
        && r.prompt == p.prompt
        && r.id == p.id));

    let cfg = SynthConfig {
        probe_sft: true,
        probe_per_problem: 2,
        ..cfg
    };
    let rows = sft_rows(&cfg, &ps);
    assert_eq!(rows.len(), 300);
    let probes: Vec<_> = rows.iter().filter(|r| r.kind == SftKind::Probe).collect();
    assert_eq!(probes.len(), 200);
    let yes = probes
        .iter()
        .filter(|r| r.response.ends_with(PROBE_YES))
        .count();
    assert!((40..160).contains(&yes), "{yes} yes of 200");
    let ids: std::collections::HashSet<_> = rows.iter().map(|r| &r.id).collect();
    assert_eq!(ids.len(), rows.len());
}

#[test]
fn config_defaults_and_unknown_keys() {
    let cfg: SynthConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg, SynthConfig::default());
    let cfg: SynthConfig = serde_json::from_str(
        r#"{"task": "arithmetic", "n": 5, "ops": ["add", "groups"], "start": [1, 9]}"#,
    )
    .unwrap();
    assert_eq!(cfg.n, 5);
    assert_eq!(cfg.start, [1, 9]);
    let back: SynthConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let err = serde_json::from_str::<SynthConfig>(r#"{"max_recheck": 3}"#).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `max_recheck`"),
        "{err}"
    );
    assert!(serde_json::from_str::<SynthConfig>(r#"{"task": "geometry"}"#).is_err());

    // Only additions: every problem still solves.
    let cfg = SynthConfig {
        n: 50,
        ops: vec![sspo_operators::tasks::synth::OpKind::Add],
        ..Default::default()
    };
    for p in generate(&cfg).unwrap() {
        assert_eq!(p.answer, solve_prompt(&p.prompt).to_string());
        assert!(!p.oracle_trace.contains(" - "));
    }
}

#[test]
fn invalid_configs_are_rejected_with_the_field_named() {
    let base = SynthConfig::default();
    let cases: Vec<(SynthConfig, &str)> = vec![
        (
            SynthConfig {
                n: 0,
                ..base.clone()
            },
            "n must",
        ),
        (
            SynthConfig {
                min_ops: 5,
                max_ops: 3,
                ..base.clone()
            },
            "min_ops",
        ),
        (
            SynthConfig {
                min_ops: 0,
                ..base.clone()
            },
            "min_ops",
        ),
        (
            SynthConfig {
                ops: vec![],
                ..base.clone()
            },
            "ops",
        ),
        (
            SynthConfig {
                start: [9, 3],
                ..base.clone()
            },
            "start",
        ),
        (
            SynthConfig {
                factor: [1, 3],
                ..base.clone()
            },
            "factor",
        ),
        (
            SynthConfig {
                max_value: 10,
                ..base.clone()
            },
            "max_value",
        ),
        (
            SynthConfig {
                recheck_error_rate: 1.5,
                ..base.clone()
            },
            "recheck_error_rate",
        ),
        (
            SynthConfig {
                fix_rate: -0.1,
                ..base.clone()
            },
            "fix_rate",
        ),
        (
            SynthConfig {
                max_rechecks: 100,
                ..base.clone()
            },
            "max_rechecks",
        ),
    ];
    for (cfg, needle) in cases {
        let err = generate(&cfg).unwrap_err();
        assert!(matches!(err, SynthError::InvalidConfig(_)));
        assert!(err.to_string().contains(needle), "{err} lacks {needle}");
    }
    // Satisfiable only in theory: a clear error rather than a hang.
    let cfg = SynthConfig {
        n: 3,
        ops: vec![sspo_operators::tasks::synth::OpKind::Mul],
        min_ops: 8,
        max_ops: 8,
        start: [50, 50],
        max_value: 60,
        ..base
    };
    let err = generate(&cfg).unwrap_err();
    assert!(
        err.to_string().contains("could not build a problem"),
        "{err}"
    );
}
