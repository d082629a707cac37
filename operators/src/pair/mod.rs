//! `pair`: step-wise relative advantages and self-traced preference pairs.
//!
//! First half (per rollout with values `V_0..V_K` from `probe` and step lengths from
//! `segment`): step rewards `r_k = −c·tokens(s_k)` (+ the outcome `R` on the last step),
//! TD errors `δ_k = r_k + γ·V_k − V_{k−1}` with `V_K := 0`, GAE backwards, then
//! `Â = (A − mean) / (std + ε)` over all steps of all rollouts of the same query
//! ([`gae`]). Second half ([`select`]): compression pairs (the rollout cut at the first
//! settled boundary with a correct early-exit answer, closed by a rewritten answer step,
//! against the full rollout) and outcome pairs (a correct rollout against an incorrect
//! one of the same query).
//!
//! Pure Rust: no model, no tokenizer. Token counts come from `segment`'s `n_tokens`.
//! Work is chunked by query (in order of first appearance in the rollouts table), so a
//! resumed node writes the same rows as an uninterrupted one. This is the project's
//! formulation of the method (see `docs/operators/pair.md`), not the paper's equations.
//!
//! Layout: `params` (what a node may ask for), `input` (reading the three input tables
//! and joining them per rollout), `build` (a query's rollouts to pairs), `output` (the
//! pairs and advantages tables).

mod build;
pub mod gae;
mod input;
mod output;
mod params;
pub mod select;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use sspo_engine::{
    ChunkOutput, Columns, ConfigureContext, Diagnostics, NodeKernel, OpError, Operator, Params,
    Port, RunContext,
};

use build::build_chunk;
pub use input::{Groups, Inputs};
pub use output::{ADVANTAGE_COLUMNS, PAIR_COLUMNS};
pub use params::{CutMode, CutValue, PairKind, PairParams};

/// The `pair` operator.
pub struct Pair;

impl Operator for Pair {
    fn name(&self) -> &'static str {
        "pair"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "step-wise relative advantages (GAE over probe values) and self-traced preference pairs"
    }
    fn ports(&self) -> &'static [Port] {
        const PORTS: &[Port] = &[
            Port::table(
                "rollouts",
                "rollouts from `generate`: `rollout_id`, `id`, `prompt`, `response`, `correct` (and `context`)",
            ),
            Port::table(
                "steps",
                "steps from `segment` (with a tokenizer): `rollout_id`, `step`, `text`, `n_tokens`",
            ),
            Port::table(
                "values",
                "values from `probe`: `rollout_id`, `step` (boundary 0..K), `value` (and `early_answer`, `early_correct` and the `cut_value` columns for `cut: vvp`)",
            ),
        ];
        PORTS
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: PairParams = params.parse()?;
        p.check(params).into_result()?;
        // The order of `kinds` does not change the output, so it does not enter the
        // fingerprint.
        let mut canonical = p.clone();
        canonical.kinds.sort();
        let fingerprint = params.fingerprint_json(&canonical, &[])?;
        Ok(Arc::new(PairKernel {
            params: p,
            fingerprint,
        }))
    }
}

/// A configured `pair` node.
pub struct PairKernel {
    pub params: PairParams,
    fingerprint: serde_json::Value,
}

impl NodeKernel for PairKernel {
    fn params_json(&self) -> serde_json::Value {
        self.fingerprint.clone()
    }

    fn required_columns(&self) -> Vec<(&'static str, Vec<String>)> {
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let mut values = s(&["rollout_id", "step", "value"]);
        if self.params.needs_early_answers() {
            values.extend(s(&["early_answer", "early_correct"]));
            for c in self.params.cut_value.columns() {
                if !values.iter().any(|v| v == c) {
                    values.push(c.to_string());
                }
            }
        }
        vec![
            (
                "rollouts",
                s(&["rollout_id", "id", "prompt", "response", "correct"]),
            ),
            ("steps", s(&["rollout_id", "step", "text", "n_tokens"])),
            ("values", values),
        ]
    }

    fn extra_tables(&self) -> Vec<&'static str> {
        vec!["advantages"]
    }

    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::exact(PAIR_COLUMNS)
    }

    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let rollouts = ctx.input_table("rollouts")?;
        let steps = ctx.input_table("steps")?;
        let values = ctx.input_table("values")?;
        let inputs = Inputs::load(&rollouts, &steps, &values, &self.params)?;
        let groups = inputs.queries();
        let mut made = (0u64, 0u64);
        let mut saved_sum = 0i64;
        ctx.run_chunks(
            groups.queries.len(),
            self.params.chunk_rows,
            |ctx, range| {
                if range.start == 0 {
                    for (counter, n) in [
                        (Counter::RolloutsWithoutKey, groups.missing_keys),
                        (Counter::DuplicateRollouts, groups.duplicates),
                        (Counter::StepsWithoutRollout, inputs.orphan_steps),
                        (Counter::ValuesWithoutRollout, inputs.orphan_values),
                    ] {
                        ctx.count(counter.name(), n, counter.what());
                    }
                }
                let out = {
                    let seed_of = |rollout_id: &str| {
                        ctx.row_seed(&[b"pair/random-cut", rollout_id.as_bytes()])
                    };
                    build_chunk(
                        &self.params,
                        &inputs,
                        &groups.queries[range.clone()],
                        &seed_of,
                    )?
                };
                for (counter, n) in &out.counts {
                    ctx.count(counter.name(), *n, counter.what());
                }
                made.0 += out.compression;
                made.1 += out.outcome;
                saved_sum += out.saved;
                Ok(ChunkOutput {
                    main: out.pairs,
                    extra: vec![("advantages".into(), out.advantages)],
                })
            },
        )?;
        ctx.set_metric("compression_pairs_this_run", json!(made.0));
        ctx.set_metric("outcome_pairs_this_run", json!(made.1));
        if made.0 > 0 {
            ctx.set_metric(
                "mean_saved_tokens_this_run",
                json!(saved_sum as f64 / made.0 as f64),
            );
        }
        Ok(())
    }
}

/// Everything counted: skipped rows and rollouts that gave no compression pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    RolloutsWithoutKey,
    DuplicateRollouts,
    StepsWithoutRollout,
    ValuesWithoutRollout,
    RolloutsWithoutSteps,
    BadStepNumbers,
    StepsNotMatchingResponse,
    StepsWithoutTokens,
    RolloutsWithoutValues,
    MissingValues,
    NanValues,
    RolloutsWithoutOutcome,
    NoCutBoundary,
    SavingBelowMin,
    NoFinalAnswer,
    AnswerNotInLastStep,
    NoEarlyAnswer,
    RandomCutIncorrect,
}

impl Counter {
    /// The manifest counter name.
    pub fn name(self) -> &'static str {
        match self {
            Counter::RolloutsWithoutKey => "rollouts_without_key",
            Counter::DuplicateRollouts => "duplicate_rollouts",
            Counter::StepsWithoutRollout => "steps_without_rollout",
            Counter::ValuesWithoutRollout => "values_without_rollout",
            Counter::RolloutsWithoutSteps => "rollouts_without_steps",
            Counter::BadStepNumbers => "bad_step_numbers",
            Counter::StepsNotMatchingResponse => "steps_not_matching_response",
            Counter::StepsWithoutTokens => "steps_without_tokens",
            Counter::RolloutsWithoutValues => "rollouts_without_values",
            Counter::MissingValues => "missing_values",
            Counter::NanValues => "nan_values",
            Counter::RolloutsWithoutOutcome => "rollouts_without_outcome",
            Counter::NoCutBoundary => "compression_no_boundary",
            Counter::SavingBelowMin => "compression_saving_below_min",
            Counter::NoFinalAnswer => "compression_no_final_answer",
            Counter::AnswerNotInLastStep => "compression_answer_not_in_last_step",
            Counter::NoEarlyAnswer => "compression_no_early_answer",
            Counter::RandomCutIncorrect => "compression_incorrect_rollouts",
        }
    }

    /// The log line after the count.
    pub fn what(self) -> &'static str {
        match self {
            Counter::RolloutsWithoutKey => "rollout row{|s} had no `rollout_id` or no `id` and {was|were} skipped",
            Counter::DuplicateRollouts => "rollout row{|s} repeated an earlier `rollout_id` and {was|were} skipped",
            Counter::StepsWithoutRollout => "step row{|s} {has|have} a `rollout_id` that is not in the rollouts table (ignored)",
            Counter::ValuesWithoutRollout => "value row{|s} {has|have} a `rollout_id` that is not in the rollouts table (ignored)",
            Counter::RolloutsWithoutSteps => "rollout{|s} had no steps and {was|were} skipped",
            Counter::BadStepNumbers => "rollout{|s} had steps not numbered 1..K and {was|were} skipped",
            Counter::StepsNotMatchingResponse => "rollout{|s} whose steps do not concatenate to the response {was|were} skipped",
            Counter::StepsWithoutTokens => "rollout{|s} had a step without a token count and {was|were} skipped",
            Counter::RolloutsWithoutValues => "rollout{|s} had no values and {was|were} skipped",
            Counter::MissingValues => "rollout{|s} lacked the value of a boundary 0..K and {was|were} skipped",
            Counter::NanValues => "rollout{|s} had a NaN or infinite value and {was|were} skipped",
            Counter::RolloutsWithoutOutcome => "rollout{|s} had a null `correct` and {was|were} skipped",
            Counter::NoCutBoundary => "rollout{|s} had no boundary to cut at (no compression pair)",
            Counter::SavingBelowMin => "{rollout's cut|rollouts' cuts} saved fewer than `min_saving` tokens (no compression pair)",
            Counter::NoFinalAnswer => "{rollout's last step has|rollouts' last steps have} no extractable answer, e.g. truncated (no compression pair)",
            Counter::AnswerNotInLastStep => "{rollout's extracted answer is|rollouts' extracted answers are} not written verbatim in the last step (no compression pair)",
            Counter::NoEarlyAnswer => "rollout{|s} had a correct early answer flag but no early answer text (no compression pair)",
            Counter::RandomCutIncorrect => "incorrect rollout{|s} {is|are} not cut by `cut: random` (no compression pair)",
        }
    }
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;
