//! Teaching the verbal probe: SFT examples that ask, after `k` steps of a trace, whether the
//! answer is already settled, with the target the trace's structure implies.

use sspo_common::rng::{blake3_u64, SplitMix64};

use super::{SynthProblem, STEP_SEPARATOR};

/// The probe question appended after a trace prefix (a new paragraph). A `probe` node of
/// `kind: verbal` on a model taught with [`probe_examples`] must use exactly this suffix.
pub const PROBE_QUESTION: &str = "\n\nIs the answer settled?";
/// Target after [`PROBE_QUESTION`] when the prefix already holds the correct final result.
pub const PROBE_YES: &str = " Yes";
/// Target after [`PROBE_QUESTION`] otherwise.
pub const PROBE_NO: &str = " No";

/// One probe-teaching example: the assistant-side text up to the question, and its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeExample {
    /// Number of trace steps before the question (0 = right after the prompt).
    pub boundary: usize,
    /// Steps `1..=boundary` of the trace joined by the step separator, then [`PROBE_QUESTION`].
    pub context: String,
    /// [`PROBE_YES`] or [`PROBE_NO`].
    pub target: String,
    /// Whether the prefix holds the correct final result (a correct last needed step or a fix,
    /// not overridden by a later slip).
    pub settled: bool,
}

impl ProbeExample {
    /// The full assistant response to train on: context then target.
    pub fn response(&self) -> String {
        format!("{}{}", self.context, self.target)
    }
}

/// Whether the answer is settled after `k` steps of `problem`'s trace (`k = 0..=steps.len()`).
pub fn settled_at(problem: &SynthProblem, k: usize) -> bool {
    k > 0 && problem.steps[k - 1].settled
}

/// Probe-teaching examples for `problem`: every boundary `k = 0..=K` of its trace (`K` steps,
/// the final answer line included), or `max_examples` of them chosen at random (deterministic
/// in `seed` and the problem id) when `max_examples > 0` and there are more boundaries.
/// Returned in boundary order.
pub fn probe_examples(problem: &SynthProblem, max_examples: usize, seed: u64) -> Vec<ProbeExample> {
    let n_boundaries = problem.steps.len() + 1;
    let mut chosen: Vec<usize> = (0..n_boundaries).collect();
    if max_examples > 0 && max_examples < n_boundaries {
        let idx = blake3_u64(&blake3::hash(problem.id.as_bytes()));
        let mut rng = SplitMix64::derive(seed, 0x50_52_4F_42, idx);
        rng.shuffle(&mut chosen);
        chosen.truncate(max_examples);
        chosen.sort_unstable();
    }
    chosen
        .into_iter()
        .map(|k| {
            let prefix: Vec<&str> = problem.steps[..k].iter().map(|s| s.text.as_str()).collect();
            let settled = settled_at(problem, k);
            ProbeExample {
                boundary: k,
                context: format!("{}{PROBE_QUESTION}", prefix.join(STEP_SEPARATOR)),
                target: if settled { PROBE_YES } else { PROBE_NO }.to_string(),
                settled,
            }
        })
        .collect()
}
