//! Chunk-level tests of `pair` on hand-built tables (no engine).

use arrow::array::{ArrayRef, RecordBatch, StringArray};

use super::build::ChunkResult;
use super::fixtures::{
    broken_recheck, f64s, ints, list_f32, list_i32, list_strs, overthinker, strs, tables, Rollout,
};
use super::*;

/// `broken_recheck` with its answer in bold markup instead of `\boxed{}`.
fn bold_broken_recheck<'a>(rid: &'a str, id: &'a str) -> Rollout<'a> {
    let mut r = broken_recheck(rid, id);
    r.steps[2] = ("So the final answer is **13**.", Some(9));
    r
}

fn run(p: &PairParams, rs: &[Rollout]) -> ChunkResult {
    let (r, s, v) = tables(rs);
    let inputs = Inputs::load(&r, &s, &v, p).unwrap();
    let g = inputs.queries();
    build_chunk(p, &inputs, &g.queries, &|rid: &str| {
        rid.bytes().map(u64::from).sum::<u64>()
    })
    .unwrap()
}

#[test]
fn compression_cuts_at_the_first_settled_correct_boundary() {
    let p = PairParams {
        kinds: vec![PairKind::Compression],
        ..PairParams::default()
    };
    let out = run(
        &p,
        &[overthinker("q#0", "q"), bold_broken_recheck("q#1", "q")],
    );
    let b = &out.pairs;
    assert_eq!(b.num_rows(), 2);
    assert_eq!(
        strs(b, "pair_id"),
        [Some("q#0/c".to_string()), Some("q#1/c".to_string())]
    );
    // q#0: k* = 1; the concluding step is its own last step (the answer is unchanged).
    assert_eq!(
        list_strs(b, "chosen_steps", 0),
        ["5 + 7 = 12.\n\n", "The answer is 12."]
    );
    assert_eq!(
        strs(b, "chosen")[0].as_deref(),
        Some("5 + 7 = 12.\n\nThe answer is 12.")
    );
    assert_eq!(list_i32(b, "chosen_tokens", 0), [10, 6]);
    assert_eq!(list_i32(b, "rejected_tokens", 0), [10, 15, 12, 6]);
    // Saved: 43 − 16 = 27 tokens.
    assert_eq!(ints(b, "saved_tokens")[0], Some(27));
    assert_eq!(ints(b, "cut_step")[0], Some(1));
    assert_eq!(ints(b, "prefix_steps")[0], Some(1));
    assert_eq!(ints(b, "prefix_tokens")[0], Some(10));
    // q#1: the wrong final answer 13 is replaced by the early answer 12, markup kept.
    assert_eq!(
        list_strs(b, "chosen_steps", 1),
        ["5 + 7 = 12.\n\n", "So the final answer is **12**."]
    );
    assert_eq!(
        strs(b, "rejected")[1].as_deref(),
        Some("5 + 7 = 12.\n\nCheck: 5 + 8 = 13, so it is 13.\n\nSo the final answer is **13**.")
    );
    // Concatenated steps are the texts.
    for row in 0..b.num_rows() {
        for side in ["chosen", "rejected"] {
            assert_eq!(
                list_strs(b, &format!("{side}_steps"), row).concat(),
                strs(b, side)[row].clone().unwrap()
            );
            assert_eq!(
                list_strs(b, &format!("{side}_steps"), row).len(),
                list_f32(b, &format!("{side}_adv"), row).len()
            );
        }
        // The concluding step gets Â = 0; the kept steps their rollout's Â.
        let ca = list_f32(b, "chosen_adv", row);
        let ra = list_f32(b, "rejected_adv", row);
        assert_eq!(*ca.last().unwrap(), 0.0);
        assert_eq!(ca[0], ra[0]);
    }
    assert_eq!(strs(b, "cut")[0].as_deref(), Some("vvp"));
    assert_eq!(
        strs(b, "context")[0].as_deref(),
        Some("Question: What is 5 + 7? (q)\nAnswer:")
    );
    assert_eq!(out.compression, 2);
}

#[test]
fn compression_skips_are_counted() {
    let p = PairParams {
        kinds: vec![PairKind::Compression],
        ..PairParams::default()
    };
    // Truncated: the last step has no answer.
    let mut truncated = overthinker("t#0", "t");
    truncated.steps[3] = ("Hmm, let me look again at", Some(6));
    // Never settled: no boundary with V ≥ τ and a correct early answer.
    let mut unsure = overthinker("t#1", "t");
    for v in &mut unsure.values {
        v.1 = Some(0.3);
    }
    // Settled only at K − 1: cutting saves 12 + 6 − 6 = 12 ≥ 8... so make it small.
    let mut late = overthinker("t#2", "t");
    for v in &mut late.values[1..3] {
        v.2 = Some(false);
    }
    late.steps[2].1 = Some(3);
    let out = run(&p, &[truncated, unsure, late]);
    assert_eq!(out.pairs.num_rows(), 0);
    assert_eq!(out.counts.get(&Counter::NoFinalAnswer), Some(&1));
    assert_eq!(out.counts.get(&Counter::NoCutBoundary), Some(&1));
    assert_eq!(out.counts.get(&Counter::SavingBelowMin), Some(&1));
    // Advantages are still written for all three.
    assert_eq!(out.advantages.num_rows(), 12);
}

#[test]
fn random_cut_is_seeded_per_rollout() {
    let p = PairParams {
        kinds: vec![PairKind::Compression],
        cut: CutMode::Random,
        min_saving: 1,
        ..PairParams::default()
    };
    let rs = || [overthinker("q#0", "q"), broken_recheck("q#1", "q")];
    let a = run(&p, &rs());
    let b = run(&p, &rs());
    assert_eq!(a.pairs, b.pairs);
    // Incorrect rollouts are not cut.
    assert_eq!(a.counts.get(&Counter::RandomCutIncorrect), Some(&1));
    assert_eq!(a.pairs.num_rows(), 1);
    let cut = ints(&a.pairs, "cut_step")[0].unwrap() as usize;
    let seed: u64 = "q#0".bytes().map(u64::from).sum();
    assert_eq!(Some(cut), select::random_cut(4, seed));
    // The rollout's own last step, verbatim; values and early answers are ignored.
    let chosen = list_strs(&a.pairs, "chosen_steps", 0);
    assert_eq!(chosen.len(), cut + 1);
    assert_eq!(chosen.last().map(String::as_str), Some("The answer is 12."));
    assert_eq!(strs(&a.pairs, "cut")[0].as_deref(), Some("random"));
    // Without early answers in the values table, random cuts still work.
    let mut no_early = overthinker("q#0", "q");
    for v in &mut no_early.values {
        v.2 = None;
        v.3 = None;
    }
    let c = run(&p, &[no_early]);
    assert_eq!(ints(&c.pairs, "cut_step")[0], Some(cut as i64));
}

#[test]
fn outcome_pairs_pick_best_correct_and_worst_incorrect() {
    let p = PairParams {
        kinds: vec![PairKind::Outcome],
        outcome_pairs: 2,
        ..PairParams::default()
    };
    let out = run(
        &p,
        &[
            overthinker("q#0", "q"),
            broken_recheck("q#1", "q"),
            overthinker("q#2", "q"),
            overthinker("solo#0", "solo"),
        ],
    );
    let b = &out.pairs;
    // One incorrect rollout in q → one pair; `solo` has no incorrect one → none.
    assert_eq!(b.num_rows(), 1);
    assert_eq!(strs(b, "pair_id")[0].as_deref(), Some("q/o/0"));
    assert_eq!(strs(b, "kind")[0].as_deref(), Some("outcome"));
    // q#0 and q#2 tie on mean Â and length: the rollout id decides.
    assert_eq!(strs(b, "chosen_rollout")[0].as_deref(), Some("q#0"));
    assert_eq!(strs(b, "rejected_rollout")[0].as_deref(), Some("q#1"));
    assert_eq!(ints(b, "prefix_steps")[0], Some(1));
    assert_eq!(ints(b, "prefix_tokens")[0], Some(10));
    assert_eq!(ints(b, "cut_step")[0], None);
    assert_eq!(ints(b, "saved_tokens")[0], None);
    assert_eq!(strs(b, "cut")[0], None);
    assert_eq!(out.outcome, 1);
    // `outcome_pairs: 0` disables them.
    let none = run(
        &PairParams {
            outcome_pairs: 0,
            ..p.clone()
        },
        &[overthinker("q#0", "q"), broken_recheck("q#1", "q")],
    );
    assert_eq!(none.pairs.num_rows(), 0);
}

#[test]
fn advantages_table_matches_a_hand_calculation() {
    // One rollout alone; c = 0.01, γ = 1, λ = 0.5, tokens 10, 15, 12, 6,
    // V = 0.1, 0.8, 0.85, 0.9, (0.95), R = 1:
    //   r = −0.1, −0.15, −0.12, −0.06 + 1 = 0.94
    //   δ1 = −0.1  + 0.8  − 0.1  =  0.6
    //   δ2 = −0.15 + 0.85 − 0.8  = −0.1
    //   δ3 = −0.12 + 0.9  − 0.85 = −0.07
    //   δ4 =  0.94 + 0    − 0.9  =  0.04
    //   A4 = 0.04; A3 = −0.07 + 0.5·0.04 = −0.05
    //   A2 = −0.1 + 0.5·(−0.05) = −0.125; A1 = 0.6 + 0.5·(−0.125) = 0.5375
    //   mean = (0.5375 − 0.125 − 0.05 + 0.04) / 4 = 0.100625
    let p = PairParams {
        lambda: 0.5,
        eps: 0.0,
        ..PairParams::default()
    };
    let out = run(&p, &[overthinker("q#0", "q")]);
    let a = &out.advantages;
    assert_eq!(ints(a, "step"), [Some(1), Some(2), Some(3), Some(4)]);
    let close = |got: Vec<f64>, want: &[f64]| {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
    };
    close(f64s(a, "value"), &[0.8, 0.85, 0.9, 0.95]);
    close(f64s(a, "reward"), &[-0.1, -0.15, -0.12, 0.94]);
    close(f64s(a, "delta"), &[0.6, -0.1, -0.07, 0.04]);
    close(f64s(a, "advantage"), &[0.5375, -0.125, -0.05, 0.04]);
    let adv = [0.5375, -0.125, -0.05, 0.04];
    let mean = 0.100625;
    let std = (adv
        .iter()
        .map(|x: &f64| (x - mean) * (x - mean))
        .sum::<f64>()
        / 4.0)
        .sqrt();
    let want: Vec<f64> = adv.iter().map(|x| (x - mean) / std).collect();
    close(f64s(a, "rel_advantage"), &want);
    assert_eq!(strs(a, "id")[0].as_deref(), Some("q"));
}

#[test]
fn normalisation_spans_all_rollouts_of_a_query() {
    let p = PairParams::default();
    let out = run(
        &p,
        &[
            overthinker("q#0", "q"),
            broken_recheck("q#1", "q"),
            overthinker("r#0", "r"),
        ],
    );
    let a = &out.advantages;
    let ids = strs(a, "id");
    let rel = f64s(a, "rel_advantage");
    let of = |q: &str| -> Vec<f64> {
        ids.iter()
            .zip(&rel)
            .filter(|(i, _)| i.as_deref() == Some(q))
            .map(|(_, r)| *r)
            .collect()
    };
    let (mq, sq) = gae::mean_std(&of("q"));
    assert_eq!(of("q").len(), 7);
    assert!(mq.abs() < 1e-9 && (sq - 1.0).abs() < 1e-4, "{mq} {sq}");
    let (mr, _) = gae::mean_std(&of("r"));
    assert!(mr.abs() < 1e-9);
}

#[test]
fn bad_rows_are_counted_and_skipped() {
    let p = PairParams::default();
    let mut no_steps = overthinker("b#0", "b");
    no_steps.steps.clear();
    let mut no_values = overthinker("b#1", "b");
    no_values.values.clear();
    let mut gap = overthinker("b#2", "b");
    gap.values.remove(2);
    let mut nan = overthinker("b#3", "b");
    nan.values[1].1 = Some(f64::NAN);
    let mut null_value = overthinker("b#4", "b");
    null_value.values[0].1 = None;
    let mut no_tokens = overthinker("b#5", "b");
    no_tokens.steps[1].1 = None;
    let mut no_outcome = overthinker("b#6", "b");
    no_outcome.correct = None;
    let good = overthinker("b#7", "b");
    let out = run(
        &p,
        &[
            no_steps, no_values, gap, nan, null_value, no_tokens, no_outcome, good,
        ],
    );
    let c = |k| out.counts.get(&k).copied().unwrap_or(0);
    assert_eq!(c(Counter::RolloutsWithoutSteps), 1);
    assert_eq!(c(Counter::RolloutsWithoutValues), 1);
    assert_eq!(c(Counter::MissingValues), 2);
    assert_eq!(c(Counter::NanValues), 1);
    assert_eq!(c(Counter::StepsWithoutTokens), 1);
    assert_eq!(c(Counter::RolloutsWithoutOutcome), 1);
    // Only the good rollout has advantages, normalised over its own steps alone.
    assert_eq!(
        strs(&out.advantages, "rollout_id"),
        vec![Some("b#7".to_string()); 4]
    );
    assert!(select::mean(&f64s(&out.advantages, "rel_advantage")).abs() < 1e-9);
    // Its compression pair exists; no outcome pair (no incorrect rollout).
    assert_eq!(strs(&out.pairs, "pair_id"), [Some("b#7/c".to_string())]);

    // Duplicates and orphans are counted when the table is grouped and loaded.
    let (r, s, v) = tables(&[overthinker("d#0", "d"), overthinker("d#0", "d")]);
    let inputs = Inputs::load(&r, &s, &v, &p).unwrap();
    assert_eq!(inputs.queries().duplicates, 1);
    let (_, s2, v2) = tables(&[overthinker("zz#0", "zz")]);
    let orphans = Inputs::load(&r, &s2, &v2, &p).unwrap();
    assert_eq!((orphans.orphan_steps, orphans.orphan_values), (4, 5));
}

#[test]
fn steps_must_rebuild_the_response() {
    let p = PairParams::default();
    let (r, s, v) = tables(&[overthinker("x#0", "x")]);
    // Replace the response with a different text.
    let mut cols: Vec<ArrayRef> = r.columns().to_vec();
    cols[3] = Arc::new(StringArray::from(vec!["something else"]));
    let r = RecordBatch::try_new(r.schema(), cols).unwrap();
    let inputs = Inputs::load(&r, &s, &v, &p).unwrap();
    let g = inputs.queries();
    let out = build_chunk(&p, &inputs, &g.queries, &|_: &str| 0).unwrap();
    assert_eq!(out.counts.get(&Counter::StepsNotMatchingResponse), Some(&1));
    assert_eq!(out.pairs.num_rows(), 0);
}

#[test]
fn missing_token_counts_and_early_answers_fail_clearly() {
    let p = PairParams::default();
    let mut untokenised = overthinker("x#0", "x");
    for s in &mut untokenised.steps {
        s.1 = None;
    }
    let (r, s, v) = tables(&[untokenised]);
    let err = Inputs::load(&r, &s, &v, &p).err().unwrap().to_string();
    assert!(
        err.contains("n_tokens") && err.contains("tokenizer"),
        "{err}"
    );

    let mut verbal = overthinker("x#0", "x");
    for v in &mut verbal.values {
        v.2 = None;
        v.3 = None;
    }
    let (r, s, v) = tables(&[verbal]);
    let err = Inputs::load(&r, &s, &v, &p).err().unwrap().to_string();
    assert!(
        err.contains("early_correct") && err.contains("cut: random"),
        "{err}"
    );
    // Outcome pairs alone, or random cuts, do not need early answers.
    for ok in [
        PairParams {
            kinds: vec![PairKind::Outcome],
            ..PairParams::default()
        },
        PairParams {
            cut: CutMode::Random,
            ..PairParams::default()
        },
    ] {
        assert!(Inputs::load(&r, &s, &v, &ok).is_ok());
    }
    // A values table without the columns at all.
    let v_min = v.project(&[0, 1, 2]).unwrap();
    let err = Inputs::load(&r, &s, &v_min, &p).err().unwrap().to_string();
    assert!(err.contains("early_correct"), "{err}");
}

#[test]
fn params_are_checked() {
    let bad = Params::from_json(&json!({
        "gamma": 1.5, "lambda": -0.1, "length_cost": -1, "min_saving": 0,
        "kinds": [], "chunk_rows": 0
    }));
    let d = Pair
        .configure(
            &bad,
            &ConfigureContext {
                node_id: "p".into(),
                base_dir: ".".into(),
                seed: 1,
            },
        )
        .err()
        .unwrap()
        .to_string();
    for key in [
        "gamma",
        "lambda",
        "length_cost",
        "min_saving",
        "kinds",
        "chunk_rows",
    ] {
        assert!(d.contains(&format!("`{key}`")), "{key}: {d}");
    }
    let typo = Params::from_json(&json!({"lamda": 0.9}));
    let ctx = ConfigureContext {
        node_id: "p".into(),
        base_dir: ".".into(),
        seed: 1,
    };
    let d = Pair.configure(&typo, &ctx).err().unwrap().to_string();
    assert!(d.contains("lambda"), "{d}");
    let k = Pair
        .configure(
            &Params::from_json(&json!({"kinds": ["outcome"], "cut": "random"})),
            &ctx,
        )
        .ok()
        .unwrap();
    let req = k.required_columns();
    let values = &req.iter().find(|(p, _)| *p == "values").unwrap().1;
    assert!(!values.contains(&"early_correct".to_string()));
    let dflt = Pair
        .configure(&Params::from_json(&json!({})), &ctx)
        .ok()
        .unwrap();
    let req = dflt.required_columns();
    let values = &req.iter().find(|(p, _)| *p == "values").unwrap().1;
    assert!(values.contains(&"early_correct".to_string()));
    assert_eq!(
        dflt.params_json()["kinds"],
        json!(["compression", "outcome"])
    );
}

/// The fingerprint JSON of the default params, as recorded before the params moved to
/// `Params::fingerprint_json`: fingerprints decide caching, so it must not change.
#[test]
fn default_fingerprint_json_is_unchanged() {
    let ctx = ConfigureContext {
        node_id: "p".into(),
        base_dir: ".".into(),
        seed: 1,
    };
    let fingerprint = |spec: serde_json::Value| {
        let k = Pair
            .configure(&Params::from_json(&spec), &ctx)
            .ok()
            .unwrap();
        serde_json::to_string(&k.params_json()).unwrap()
    };
    assert_eq!(
        fingerprint(json!({})),
        r#"{"answer_format":"auto","chunk_rows":256,"cut":"vvp","eps":1e-6,"gamma":1.0,"kinds":["compression","outcome"],"lambda":0.95,"length_cost":0.01,"min_saving":8,"outcome_pairs":1,"settle":1,"tau":0.5}"#
    );
    assert_eq!(
        fingerprint(json!({"kinds": ["outcome", "compression"], "cut": "random", "settle": 2})),
        r#"{"answer_format":"auto","chunk_rows":256,"cut":"random","eps":1e-6,"gamma":1.0,"kinds":["compression","outcome"],"lambda":0.95,"length_cost":0.01,"min_saving":8,"outcome_pairs":1,"settle":2,"tau":0.5}"#
    );
}

/// `overthinker` probed with both kinds: `value` (the answer value, as a `[answer, verbal]`
/// probe writes it) settles at k = 1, the verbal value at k = 2, their minimum at k = 3.
fn probed_both_ways<'a>(rid: &'a str, id: &'a str) -> Rollout<'a> {
    overthinker(rid, id).with_kind_values(&[0.2, 0.3, 0.7, 0.9, 0.9], &[0.1, 0.8, 0.2, 0.8, 0.9])
}

fn cutting_on(cut_value: CutValue) -> PairParams {
    PairParams {
        kinds: vec![PairKind::Compression],
        cut_value,
        ..PairParams::default()
    }
}

#[test]
fn cut_values_read_the_chosen_columns() {
    let want: [(CutValue, [f64; 5]); 6] = [
        (CutValue::Value, [0.1, 0.8, 0.85, 0.9, 0.95]),
        (CutValue::Verbal, [0.2, 0.3, 0.7, 0.9, 0.9]),
        (CutValue::Answer, [0.1, 0.8, 0.2, 0.8, 0.9]),
        (CutValue::Min, [0.1, 0.3, 0.2, 0.8, 0.9]),
        (CutValue::Mean, [0.15, 0.55, 0.45, 0.85, 0.9]),
        (CutValue::Product, [0.02, 0.24, 0.14, 0.72, 0.81]),
    ];
    for (cv, expected) in want {
        let p = cutting_on(cv);
        let (r, s, v) = tables(&[probed_both_ways("q#0", "q")]);
        let inputs = Inputs::load(&r, &s, &v, &p).unwrap();
        let rollout = inputs.rollout(0, &p.gae()).unwrap();
        for (got, w) in rollout.cut_values.iter().zip(expected) {
            assert!((got - w).abs() < 1e-12, "{cv:?}: {:?}", rollout.cut_values);
        }
        // The advantages always use `value`, whatever the cut reads.
        assert_eq!(rollout.values, [0.1, 0.8, 0.85, 0.9, 0.95]);
    }
}

#[test]
fn compression_cuts_on_verbal_values() {
    let rs = || [probed_both_ways("q#0", "q")];
    let cut_of = |cv| {
        let out = run(&cutting_on(cv), &rs());
        (ints(&out.pairs, "cut_step").first().copied().flatten(), out)
    };
    // `value` and the answer value settle at k = 1.
    assert_eq!(cut_of(CutValue::Value).0, Some(1));
    assert_eq!(cut_of(CutValue::Answer).0, Some(1));
    // The verbal value reaches τ = 0.5 only at k = 2: the pair keeps two steps.
    let (cut, out) = cut_of(CutValue::Verbal);
    assert_eq!(cut, Some(2));
    assert_eq!(
        list_strs(&out.pairs, "chosen_steps", 0),
        [
            "5 + 7 = 12.\n\n",
            "Check: 12 - 7 = 5.\n\n",
            "The answer is 12."
        ]
    );
    assert_eq!(ints(&out.pairs, "saved_tokens")[0], Some(12));
    // Their mean passes at k = 1 (0.55); their minimum only at k = 3, where cutting
    // saves nothing: counted, no pair.
    assert_eq!(cut_of(CutValue::Mean).0, Some(1));
    let (cut, out) = cut_of(CutValue::Min);
    assert_eq!(cut, None);
    assert_eq!(out.counts.get(&Counter::SavingBelowMin), Some(&1));
    // The product is below τ until k = 3 as well.
    assert_eq!(cut_of(CutValue::Product).0, None);
}

#[test]
fn a_missing_cut_value_never_passes() {
    // The verbal value of boundary 2 is null: the verbal cut moves on to k = 3.
    let mut r = probed_both_ways("q#0", "q");
    r.kind_values[2].0 = None;
    let p = cutting_on(CutValue::Verbal);
    let out = run(&p, &[r]);
    assert_eq!(out.counts.get(&Counter::SavingBelowMin), Some(&1));
    // The rollout still has its advantages (from `value`).
    assert_eq!(out.advantages.num_rows(), 4);
}

#[test]
fn cut_value_columns_are_required_and_explained() {
    let ctx = ConfigureContext {
        node_id: "p".into(),
        base_dir: ".".into(),
        seed: 1,
    };
    let values_of = |spec: serde_json::Value| -> Vec<String> {
        let k = Pair
            .configure(&Params::from_json(&spec), &ctx)
            .ok()
            .unwrap();
        let req = k.required_columns();
        req.into_iter().find(|(p, _)| *p == "values").unwrap().1
    };
    let min = values_of(json!({"cut_value": "min"}));
    for c in ["value", "early_correct", "verbal_value", "answer_value"] {
        assert!(min.iter().any(|v| v == c), "{c}: {min:?}");
    }
    assert_eq!(min.iter().filter(|v| *v == "value").count(), 1);
    // Only the cut reads them: not with random cuts or outcome pairs alone.
    for spec in [
        json!({"cut_value": "verbal", "cut": "random"}),
        json!({"cut_value": "verbal", "kinds": ["outcome"]}),
    ] {
        assert!(!values_of(spec).iter().any(|v| v == "verbal_value"));
    }
    // A run whose values lack the column says which probe writes it.
    let p = cutting_on(CutValue::Verbal);
    let (r, s, v) = tables(&[overthinker("q#0", "q")]);
    let v = v.project(&[0, 1, 2, 3, 4]).unwrap();
    let err = Inputs::load(&r, &s, &v, &p).err().unwrap().to_string();
    assert!(
        err.contains("verbal_value") && err.contains("kind: [verbal, answer]"),
        "{err}"
    );
    // A misspelt value is located with a suggestion.
    let d = Pair
        .configure(&Params::from_json(&json!({"cut_value": "verbl"})), &ctx)
        .err()
        .unwrap()
        .to_string();
    assert!(d.contains("did you mean `verbal`"), "{d}");
}

#[test]
fn cut_value_enters_the_fingerprint_unless_default() {
    let ctx = ConfigureContext {
        node_id: "p".into(),
        base_dir: ".".into(),
        seed: 1,
    };
    let fingerprint = |spec: serde_json::Value| {
        Pair.configure(&Params::from_json(&spec), &ctx)
            .ok()
            .unwrap()
            .params_json()
    };
    let default = fingerprint(json!({}));
    assert_eq!(default.get("cut_value"), None);
    assert_eq!(fingerprint(json!({"cut_value": "value"})), default);
    for cv in ["verbal", "answer", "min", "mean", "product"] {
        let f = fingerprint(json!({ "cut_value": cv }));
        assert_eq!(f["cut_value"], json!(cv));
        assert_ne!(f, default);
    }
}
