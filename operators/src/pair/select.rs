//! The pure rules of `pair`'s second half: where a rollout is cut, how its concluding
//! answer step is written, and which rollouts of a query make outcome pairs. No tables,
//! no engine; only values, early-exit answers, the answer verifier's extraction and
//! lengths (nothing specific to a task).

use sspo_common::rng::SplitMix64;

use crate::tasks::AnswerFormat;

/// `k*`: the first boundary `k` in `1..K` (a step boundary that leaves at least one step
/// to cut) with `V_k ≥ τ` whose early-exit answer is correct, and so are the next
/// `settle − 1` boundaries (as far as the trace goes: boundary `K` at most). `values` (the
/// cut values, `cut_value`; a NaN never passes) and `early_correct` hold boundaries `0..=K`.
pub fn vvp_cut(
    values: &[f64],
    early_correct: &[Option<bool>],
    tau: f64,
    settle: usize,
) -> Option<usize> {
    let k_total = values.len().checked_sub(1)?;
    let passes =
        |k: usize| values[k] >= tau && early_correct.get(k).copied().flatten() == Some(true);
    (1..k_total).find(|&k| (k..=(k + settle.max(1) - 1).min(k_total)).all(passes))
}

/// A boundary drawn uniformly from `1..=K−2` with `seed`; `None` when `K < 3`. (Cutting
/// at `K−1` and then appending the rollout's own last step would rebuild the rollout
/// unchanged, so the draw is over the boundaries that remove at least one step.) The same
/// seed always gives the same boundary.
pub fn random_cut(k_total: usize, seed: u64) -> Option<usize> {
    if k_total < 3 {
        return None;
    }
    // The first draw of a SplitMix64 seeded with `seed`, by Lemire's multiply-shift:
    // uniform up to 2^-64 bias.
    Some(SplitMix64::new(seed).below((k_total - 2) as u64) as usize + 1)
}

/// Why a rollout's last step cannot be turned into a concluding step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcludeError {
    /// The last step has no answer in the answer format (e.g. a truncated rollout).
    NoFinalAnswer,
    /// The format extracts an answer that is not written verbatim in the step (it was
    /// normalised on extraction), so there is nothing to replace.
    AnswerNotInStep,
    /// The early-exit answer is empty.
    EmptyEarlyAnswer,
}

/// The concluding answer step of a compressed rollout: the rollout's own last step with
/// its final answer (as `format` extracts it; the last verbatim occurrence) replaced by
/// the early-exit answer. The rest of the step — wording, markup, trailing whitespace —
/// is kept, so the step has the rollout's own final-step format.
pub fn concluding_step(
    format: &AnswerFormat,
    last_step: &str,
    early_answer: &str,
) -> Result<String, ConcludeError> {
    let early = early_answer.trim();
    if early.is_empty() {
        return Err(ConcludeError::EmptyEarlyAnswer);
    }
    let pred = format
        .extract(last_step)
        .filter(|p| !p.trim().is_empty())
        .ok_or(ConcludeError::NoFinalAnswer)?;
    let pred = pred.trim();
    let at = last_step
        .rfind(pred)
        .ok_or(ConcludeError::AnswerNotInStep)?;
    let mut out = String::with_capacity(last_step.len() + early.len());
    out.push_str(&last_step[..at]);
    out.push_str(early);
    out.push_str(&last_step[at + pred.len()..]);
    Ok(out)
}

/// Token count of a rewritten step, estimated from the step it was rewritten from:
/// `round(tokens · chars(new) / chars(old))`, at least 1 for a non-blank text, exactly
/// `tokens` when the text is unchanged.
pub fn estimate_tokens(old_text: &str, old_tokens: i64, new_text: &str) -> i64 {
    if old_text == new_text {
        return old_tokens;
    }
    if new_text.trim().is_empty() {
        return 0;
    }
    let old_chars = old_text.chars().count().max(1) as f64;
    let new_chars = new_text.chars().count() as f64;
    ((old_tokens as f64 * new_chars / old_chars).round() as i64).max(1)
}

/// Number of leading steps two step lists share with identical texts.
pub fn shared_prefix(a: &[String], b: &[String]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A rollout as an outcome-pair candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    pub rollout_id: &'a str,
    pub correct: bool,
    /// Mean relative advantage of its steps.
    pub mean_adv: f64,
    pub tokens: i64,
}

/// Outcome pairs of one query as `(chosen, rejected)` indices into `cands`: correct
/// rollouts ranked by mean `Â` (highest first, ties → fewer tokens), incorrect ones by
/// mean `Â` (lowest first, ties → more tokens), rollout id last; the i-th of each list
/// pair up, for `i < n`.
pub fn outcome_pairs(cands: &[Candidate], n: usize) -> Vec<(usize, usize)> {
    let mut good: Vec<usize> = (0..cands.len()).filter(|&i| cands[i].correct).collect();
    let mut bad: Vec<usize> = (0..cands.len()).filter(|&i| !cands[i].correct).collect();
    let by_id = |a: &Candidate, b: &Candidate| a.rollout_id.cmp(b.rollout_id);
    good.sort_by(|&a, &b| {
        let (x, y) = (&cands[a], &cands[b]);
        y.mean_adv
            .total_cmp(&x.mean_adv)
            .then(x.tokens.cmp(&y.tokens))
            .then_with(|| by_id(x, y))
    });
    bad.sort_by(|&a, &b| {
        let (x, y) = (&cands[a], &cands[b]);
        x.mean_adv
            .total_cmp(&y.mean_adv)
            .then(y.tokens.cmp(&x.tokens))
            .then_with(|| by_id(x, y))
    });
    good.into_iter().zip(bad).take(n).collect()
}

/// Mean of a slice (0 for an empty one).
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vvp_cut_is_the_first_settled_correct_boundary() {
        let v = [0.1, 0.3, 0.6, 0.9, 0.95];
        let e = [None, Some(true), Some(false), Some(true), Some(true)];
        // k=1: value below τ; k=2: early answer wrong; k=3: first that qualifies.
        assert_eq!(vvp_cut(&v, &e, 0.5, 1), Some(3));
        assert_eq!(vvp_cut(&v, &e, 0.2, 1), Some(1));
        // k = K = 4 never qualifies: nothing would be cut.
        assert_eq!(vvp_cut(&v, &e, 0.92, 1), None);
        // Null early answers never qualify.
        assert_eq!(vvp_cut(&v, &[None; 5], 0.0, 1), None);
        // One step: no boundary in 1..K.
        assert_eq!(vvp_cut(&[0.9, 0.9], &[Some(true); 2], 0.0, 1), None);
        assert_eq!(vvp_cut(&[], &[], 0.0, 1), None);
    }

    #[test]
    fn settle_needs_the_answer_to_stay() {
        // The answer is right by chance at k=1, lost at k=2, then settled from k=3.
        let v = [0.1, 0.9, 0.9, 0.9, 0.9, 0.95];
        let e = [
            None,
            Some(true),
            Some(false),
            Some(true),
            Some(true),
            Some(true),
        ];
        assert_eq!(vvp_cut(&v, &e, 0.5, 1), Some(1));
        assert_eq!(vvp_cut(&v, &e, 0.5, 2), Some(3));
        assert_eq!(vvp_cut(&v, &e, 0.5, 3), Some(3));
        // The window stops at the last boundary K = 5: k = 4 with settle 5 checks 4..=5.
        let e = [
            None,
            Some(false),
            Some(false),
            Some(false),
            Some(true),
            Some(true),
        ];
        assert_eq!(vvp_cut(&v, &e, 0.5, 5), Some(4));
        // A value below τ inside the window breaks it too.
        let v = [0.1, 0.9, 0.4, 0.9, 0.9, 0.95];
        let e = [
            None,
            Some(true),
            Some(true),
            Some(true),
            Some(true),
            Some(true),
        ];
        assert_eq!(vvp_cut(&v, &e, 0.5, 2), Some(3));
    }

    #[test]
    fn random_cut_is_deterministic_and_in_range() {
        assert_eq!(random_cut(2, 7), None);
        assert_eq!(random_cut(0, 7), None);
        assert_eq!(random_cut(3, 7), Some(1));
        let mut seen = [0usize; 6];
        for seed in 0..600u64 {
            let k = random_cut(6, seed).unwrap();
            assert!((1..=4).contains(&k));
            assert_eq!(random_cut(6, seed), Some(k));
            seen[k] += 1;
        }
        // Roughly uniform over 1..=4 (150 expected each); never 0 or K−1 = 5.
        for (k, &count) in seen.iter().enumerate().take(5).skip(1) {
            assert!((100..=200).contains(&count), "boundary {k}: {count}");
        }
        assert_eq!((seen[0], seen[5]), (0, 0));
    }

    #[test]
    fn random_cuts_are_unchanged() {
        // Recorded from the first implementation: the shipped ablation depends on them.
        let cuts: Vec<usize> = (0..16u64)
            .map(|s| random_cut(12, s.wrapping_mul(0x1234_5678_9ABC_DEF1)).unwrap())
            .collect();
        assert_eq!(cuts, [9, 9, 8, 5, 9, 9, 6, 2, 8, 3, 5, 3, 4, 5, 1, 10]);
    }

    #[test]
    fn concluding_step_replaces_the_final_answer() {
        let f = AnswerFormat::Auto;
        assert_eq!(
            concluding_step(&f, "The answer is 13.", "12").unwrap(),
            "The answer is 12."
        );
        // The last occurrence is replaced; the step keeps its markup and whitespace.
        assert_eq!(
            concluding_step(&f, "So 13 + 0 = 13, and \\boxed{13}\n", " 12 ").unwrap(),
            "So 13 + 0 = 13, and \\boxed{12}\n"
        );
        assert_eq!(
            concluding_step(&AnswerFormat::Gsm8k, "Total: 40 + 32 = 72\n#### 72", "72").unwrap(),
            "Total: 40 + 32 = 72\n#### 72"
        );
        // A truncated last step has no answer.
        assert_eq!(
            concluding_step(&f, "Hmm, let me look at this again", "12"),
            Err(ConcludeError::NoFinalAnswer)
        );
        assert_eq!(
            concluding_step(&AnswerFormat::Boxed, "The answer is 12.", "12"),
            Err(ConcludeError::NoFinalAnswer)
        );
        assert_eq!(
            concluding_step(&f, "The answer is 12.", "  "),
            Err(ConcludeError::EmptyEarlyAnswer)
        );
        // Extraction normalises `**B**.` to `B`, which is in the text: fine.
        assert_eq!(
            concluding_step(&AnswerFormat::Choice, "Answer: B", "C").unwrap(),
            "Answer: C"
        );
    }

    #[test]
    fn token_estimates() {
        assert_eq!(
            estimate_tokens("The answer is 13.", 6, "The answer is 13."),
            6
        );
        // 17 chars → 18 chars: 6 · 18 / 17 = 6.35 → 6.
        assert_eq!(
            estimate_tokens("The answer is 13.", 6, "The answer is 125."),
            6
        );
        // 10 chars → 20 chars: 4 → 8.
        assert_eq!(estimate_tokens("abcdefghij", 4, "abcdefghijabcdefghij"), 8);
        assert_eq!(estimate_tokens("abcdefghij", 4, "a"), 1);
        assert_eq!(estimate_tokens("abc", 4, " "), 0);
    }

    #[test]
    fn prefixes() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(shared_prefix(&s(&["a", "b", "c"]), &s(&["a", "b", "x"])), 2);
        assert_eq!(shared_prefix(&s(&["a"]), &s(&["a", "b"])), 1);
        assert_eq!(shared_prefix(&s(&["x"]), &s(&["a", "b"])), 0);
    }

    #[test]
    fn outcome_pairs_rank_by_mean_advantage() {
        let c = |id, correct, mean_adv, tokens| Candidate {
            rollout_id: id,
            correct,
            mean_adv,
            tokens,
        };
        let cands = [
            c("q#0", true, 0.2, 50),
            c("q#1", false, -0.3, 40),
            c("q#2", true, 0.5, 80),
            c("q#3", false, -0.9, 60),
            c("q#4", true, 0.5, 30),
            c("q#5", false, 0.1, 20),
        ];
        // Correct: q#4 (0.5, 30 tokens) before q#2 (0.5, 80), then q#0.
        // Incorrect: q#3 (−0.9), q#1 (−0.3), q#5 (0.1).
        assert_eq!(outcome_pairs(&cands, 1), vec![(4, 3)]);
        assert_eq!(outcome_pairs(&cands, 2), vec![(4, 3), (2, 1)]);
        assert_eq!(outcome_pairs(&cands, 9), vec![(4, 3), (2, 1), (0, 5)]);
        assert!(outcome_pairs(&cands, 0).is_empty());
        // No incorrect rollout: no pair.
        assert!(outcome_pairs(&cands[..1], 1).is_empty());
        // Incorrect ties: more tokens first.
        let t = [
            c("a", true, 0.0, 1),
            c("b", false, -1.0, 5),
            c("c", false, -1.0, 9),
        ];
        assert_eq!(outcome_pairs(&t, 1), vec![(0, 2)]);
    }
}
