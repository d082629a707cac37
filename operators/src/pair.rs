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

pub mod gae;
pub mod select;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Builder, Float64Array, Float64Builder, Int32Builder,
    Int64Array, Int64Builder, ListBuilder, RecordBatch, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sspo_engine::{
    ChunkOutput, Columns, ConfigureContext, Diagnostics, NodeKernel, OpError, Operator, Params,
    Port, RunContext,
};

use crate::columns::{cell, utf8_column};
use crate::tasks::AnswerFormat;
use gae::{GaeConfig, StepAdvantages};
use select::{Candidate, ConcludeError};

/// The `pair` operator.
pub struct Pair;

/// Columns of the pairs table, in order.
pub const PAIR_COLUMNS: [&str; 20] = [
    "pair_id",
    "id",
    "kind",
    "prompt",
    "context",
    "chosen",
    "rejected",
    "chosen_steps",
    "rejected_steps",
    "chosen_adv",
    "rejected_adv",
    "chosen_tokens",
    "rejected_tokens",
    "prefix_steps",
    "prefix_tokens",
    "chosen_rollout",
    "rejected_rollout",
    "cut_step",
    "saved_tokens",
    "cut",
];

/// Columns of the extra `advantages` table (SQL table `<node>_advantages`).
pub const ADVANTAGE_COLUMNS: [&str; 8] = [
    "rollout_id",
    "id",
    "step",
    "value",
    "reward",
    "delta",
    "advantage",
    "rel_advantage",
];

/// Where compression pairs cut a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutMode {
    /// The first boundary with `V_k ≥ τ` and a correct early-exit answer.
    #[default]
    Vvp,
    /// A boundary drawn uniformly from `1..=K−2` per correct rollout (the "without VVP"
    /// ablation).
    Random,
}

impl CutMode {
    fn name(self) -> &'static str {
        match self {
            CutMode::Vvp => "vvp",
            CutMode::Random => "random",
        }
    }
}

/// Which pairs `pair` emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairKind {
    Compression,
    Outcome,
}

impl PairKind {
    fn name(self) -> &'static str {
        match self {
            PairKind::Compression => "compression",
            PairKind::Outcome => "outcome",
        }
    }
}

/// Params of `pair`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PairParams {
    /// Discount `γ` in `[0, 1]`.
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// GAE `λ` in `[0, 1]`.
    #[serde(default = "default_lambda")]
    pub lambda: f64,
    /// Length cost `c ≥ 0` per token of a step.
    #[serde(default = "default_length_cost")]
    pub length_cost: f64,
    /// `ε` of the relative normalisation.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Value threshold `τ` of the compression cut.
    #[serde(default = "default_tau")]
    pub tau: f64,
    /// Boundaries in a row (from `k*` on, up to the last) that must pass the cut test, so
    /// that an answer the model reaches by chance and then leaves is not taken as settled.
    /// 1 = the first passing boundary.
    #[serde(default = "default_settle")]
    pub settle: usize,
    /// A compression pair must save at least this many tokens (≥ 1).
    #[serde(default = "default_min_saving")]
    pub min_saving: i64,
    /// `vvp` (default) or `random` (the ablation).
    #[serde(default)]
    pub cut: CutMode,
    /// Pair kinds to emit (default both).
    #[serde(default = "default_kinds")]
    pub kinds: Vec<PairKind>,
    /// Outcome pairs per query (0 = none).
    #[serde(default = "default_outcome_pairs")]
    pub outcome_pairs: usize,
    /// How the final answer is written in the last step (as in `generate`).
    #[serde(default)]
    pub answer_format: AnswerFormat,
    /// Queries per committed chunk.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
}

fn default_gamma() -> f64 {
    1.0
}
fn default_lambda() -> f64 {
    0.95
}
fn default_length_cost() -> f64 {
    0.01
}
fn default_eps() -> f64 {
    1e-6
}
fn default_settle() -> usize {
    1
}
fn default_tau() -> f64 {
    0.5
}
fn default_min_saving() -> i64 {
    8
}
fn default_kinds() -> Vec<PairKind> {
    vec![PairKind::Compression, PairKind::Outcome]
}
fn default_outcome_pairs() -> usize {
    1
}
fn default_chunk_rows() -> usize {
    256
}

impl Default for PairParams {
    fn default() -> Self {
        PairParams {
            gamma: default_gamma(),
            lambda: default_lambda(),
            length_cost: default_length_cost(),
            eps: default_eps(),
            tau: default_tau(),
            settle: default_settle(),
            min_saving: default_min_saving(),
            cut: CutMode::Vvp,
            kinds: default_kinds(),
            outcome_pairs: default_outcome_pairs(),
            answer_format: AnswerFormat::Auto,
            chunk_rows: default_chunk_rows(),
        }
    }
}

impl PairParams {
    /// Semantic checks, located at the offending key.
    pub fn check(&self, params: &Params) -> Diagnostics {
        let mut d = Diagnostics::new();
        let mut err = |key: &str, msg: &str| d.push(params.error(&[key], msg.to_string()));
        if !(0.0..=1.0).contains(&self.gamma) {
            err("gamma", "`gamma` must be in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.lambda) {
            err("lambda", "`lambda` must be in [0, 1]");
        }
        if !(self.length_cost >= 0.0 && self.length_cost.is_finite()) {
            err("length_cost", "`length_cost` must be a finite number >= 0");
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            err("eps", "`eps` must be a finite number >= 0");
        }
        if self.settle == 0 {
            err("settle", "`settle` must be at least 1");
        }
        if !self.tau.is_finite() {
            err("tau", "`tau` must be a finite number");
        }
        if self.min_saving < 1 {
            err(
                "min_saving",
                "`min_saving` must be at least 1 (a compression pair must save tokens)",
            );
        }
        if self.kinds.is_empty() {
            err(
                "kinds",
                "`kinds` must list at least one of `compression`, `outcome`",
            );
        }
        let mut seen = self.kinds.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.kinds.len() {
            err("kinds", "`kinds` lists a kind twice");
        }
        if self.chunk_rows == 0 {
            err("chunk_rows", "`chunk_rows` must be at least 1");
        }
        d
    }

    fn wants(&self, kind: PairKind) -> bool {
        self.kinds.contains(&kind)
    }

    /// Whether the values table must carry early-exit answers.
    fn needs_early_answers(&self) -> bool {
        self.wants(PairKind::Compression) && self.cut == CutMode::Vvp
    }

    fn gae(&self) -> GaeConfig {
        GaeConfig {
            gamma: self.gamma,
            lambda: self.lambda,
            length_cost: self.length_cost,
        }
    }
}

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
                "values from `probe`: `rollout_id`, `step` (boundary 0..K), `value` (and `early_answer`, `early_correct` for `cut: vvp`)",
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
        Ok(Arc::new(PairKernel { params: p }))
    }
}

/// A configured `pair` node.
pub struct PairKernel {
    pub params: PairParams,
}

impl NodeKernel for PairKernel {
    fn params_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).unwrap_or_else(|_| json!({}));
        if let Some(m) = v.as_object_mut() {
            let mut kinds = self.params.kinds.clone();
            kinds.sort();
            m.insert(
                "kinds".into(),
                json!(kinds.iter().map(|k| k.name()).collect::<Vec<_>>()),
            );
        }
        v
    }

    fn required_columns(&self) -> Vec<(&'static str, Vec<String>)> {
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let mut values = s(&["rollout_id", "step", "value"]);
        if self.params.needs_early_answers() {
            values.extend(s(&["early_answer", "early_correct"]));
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
            Counter::RolloutsWithoutKey => "rollout rows had no `rollout_id` or no `id` and were skipped",
            Counter::DuplicateRollouts => "rollout rows repeated an earlier `rollout_id` and were skipped",
            Counter::StepsWithoutRollout => "step rows have a `rollout_id` that is not in the rollouts table (ignored)",
            Counter::ValuesWithoutRollout => "value rows have a `rollout_id` that is not in the rollouts table (ignored)",
            Counter::RolloutsWithoutSteps => "rollouts had no steps and were skipped",
            Counter::BadStepNumbers => "rollouts had steps not numbered 1..K and were skipped",
            Counter::StepsNotMatchingResponse => "rollouts whose steps do not concatenate to the response were skipped",
            Counter::StepsWithoutTokens => "rollouts had a step without a token count and were skipped",
            Counter::RolloutsWithoutValues => "rollouts had no values and were skipped",
            Counter::MissingValues => "rollouts lacked the value of a boundary 0..K and were skipped",
            Counter::NanValues => "rollouts had a NaN or infinite value and were skipped",
            Counter::RolloutsWithoutOutcome => "rollouts had a null `correct` and were skipped",
            Counter::NoCutBoundary => "rollouts had no boundary to cut at (no compression pair)",
            Counter::SavingBelowMin => "rollouts' cuts saved fewer than `min_saving` tokens (no compression pair)",
            Counter::NoFinalAnswer => "rollouts' last step has no extractable answer, e.g. truncated (no compression pair)",
            Counter::AnswerNotInLastStep => "rollouts' extracted answer is not written verbatim in the last step (no compression pair)",
            Counter::NoEarlyAnswer => "rollouts had a correct early answer flag but no early answer text (no compression pair)",
            Counter::RandomCutIncorrect => "incorrect rollouts are not cut by `cut: random` (no compression pair)",
        }
    }
}

/// One step row of the `steps` table.
#[derive(Debug, Clone)]
struct StepRow {
    step: Option<i64>,
    text: String,
    tokens: Option<i64>,
}

/// One boundary row of the `values` table.
#[derive(Debug, Clone)]
struct ValueRow {
    step: i64,
    value: Option<f64>,
    early_correct: Option<bool>,
    early_answer: Option<String>,
}

/// The three input tables, indexed by rollout.
pub struct Inputs {
    rollout_id: StringArray,
    id: StringArray,
    prompt: StringArray,
    response: StringArray,
    context: Option<StringArray>,
    correct: BooleanArray,
    steps: HashMap<String, Vec<StepRow>>,
    values: HashMap<String, Vec<ValueRow>>,
    orphan_steps: u64,
    orphan_values: u64,
}

/// Rollout rows grouped by query, in order of first appearance.
pub struct Groups {
    pub queries: Vec<(String, Vec<usize>)>,
    pub missing_keys: u64,
    pub duplicates: u64,
}

fn need_utf8(table: &RecordBatch, port: &str, name: &str) -> Result<StringArray, OpError> {
    utf8_column(table, name)?
        .ok_or_else(|| OpError::msg(format!("the `{port}` table has no column `{name}`")))
}

fn cast_column(
    table: &RecordBatch,
    port: &str,
    name: &str,
    to: &DataType,
) -> Result<Option<ArrayRef>, OpError> {
    let Some(col) = table.column_by_name(name) else {
        return Ok(None);
    };
    arrow::compute::cast(col, to).map(Some).map_err(|e| {
        OpError::msg(format!(
            "column `{name}` of the `{port}` table is {}, not {to}: {e}",
            col.data_type()
        ))
    })
}

fn need_i64(table: &RecordBatch, port: &str, name: &str) -> Result<Int64Array, OpError> {
    cast_column(table, port, name, &DataType::Int64)?
        .and_then(|a| a.as_any().downcast_ref::<Int64Array>().cloned())
        .ok_or_else(|| OpError::msg(format!("the `{port}` table has no column `{name}`")))
}

fn opt_i64(a: &Int64Array, i: usize) -> Option<i64> {
    a.is_valid(i).then(|| a.value(i))
}

impl Inputs {
    /// Reads and indexes the input tables; fails on missing columns, on a steps table
    /// without any token count, and (for `cut: vvp` compression) on a values table without
    /// any early-exit answer.
    pub fn load(
        rollouts: &RecordBatch,
        steps: &RecordBatch,
        values: &RecordBatch,
        p: &PairParams,
    ) -> Result<Self, OpError> {
        let rollout_id = need_utf8(rollouts, "rollouts", "rollout_id")?;
        let correct = cast_column(rollouts, "rollouts", "correct", &DataType::Boolean)?
            .and_then(|a| a.as_any().downcast_ref::<BooleanArray>().cloned())
            .ok_or_else(|| OpError::msg("the `rollouts` table has no column `correct`"))?;
        let known: std::collections::HashSet<&str> = (0..rollout_id.len())
            .filter_map(|i| cell(&rollout_id, i))
            .collect();

        let s_key = need_utf8(steps, "steps", "rollout_id")?;
        let s_step = need_i64(steps, "steps", "step")?;
        let s_text = need_utf8(steps, "steps", "text")?;
        let s_tokens = need_i64(steps, "steps", "n_tokens")?;
        if steps.num_rows() > 0 && s_tokens.null_count() == steps.num_rows() {
            return Err(OpError::msg(
                "the `steps` table has no token counts (`n_tokens` is null in every row): \
                 run `segment` with a `tokenizer` so that step lengths are counted in tokens",
            ));
        }
        let mut step_map: HashMap<String, Vec<StepRow>> = HashMap::new();
        let mut orphan_steps = 0;
        for i in 0..steps.num_rows() {
            let Some(k) = cell(&s_key, i) else {
                orphan_steps += 1;
                continue;
            };
            if !known.contains(k) {
                orphan_steps += 1;
                continue;
            }
            step_map.entry(k.to_string()).or_default().push(StepRow {
                step: opt_i64(&s_step, i),
                text: cell(&s_text, i).unwrap_or("").to_string(),
                tokens: opt_i64(&s_tokens, i),
            });
        }
        for v in step_map.values_mut() {
            v.sort_by_key(|s| s.step);
        }

        let v_key = need_utf8(values, "values", "rollout_id")?;
        let v_step = need_i64(values, "values", "step")?;
        let v_value = cast_column(values, "values", "value", &DataType::Float64)?
            .and_then(|a| a.as_any().downcast_ref::<Float64Array>().cloned())
            .ok_or_else(|| OpError::msg("the `values` table has no column `value`"))?;
        let v_early_correct = cast_column(values, "values", "early_correct", &DataType::Boolean)?
            .and_then(|a| a.as_any().downcast_ref::<BooleanArray>().cloned());
        let v_early_answer = utf8_column(values, "early_answer")?;
        if p.needs_early_answers() {
            let hint = "`cut: vvp` needs the early-exit answers of a `kind: answer` probe \
                        (with `early_answer_tokens` > 0); use such a probe, `cut: random`, \
                        or `kinds: [outcome]`";
            match (&v_early_correct, &v_early_answer) {
                (Some(ec), Some(_)) => {
                    if values.num_rows() > 0 && ec.null_count() == values.num_rows() {
                        return Err(OpError::msg(format!(
                            "the `values` table has no early-exit answers (`early_correct` is \
                             null in every row, as a `kind: verbal` probe writes it): {hint}"
                        )));
                    }
                }
                _ => {
                    return Err(OpError::msg(format!(
                        "the `values` table has no `early_correct` / `early_answer` columns: {hint}"
                    )))
                }
            }
        }
        let mut value_map: HashMap<String, Vec<ValueRow>> = HashMap::new();
        let mut orphan_values = 0;
        for i in 0..values.num_rows() {
            let (Some(k), Some(step)) = (cell(&v_key, i), opt_i64(&v_step, i)) else {
                orphan_values += 1;
                continue;
            };
            if !known.contains(k) {
                orphan_values += 1;
                continue;
            }
            value_map.entry(k.to_string()).or_default().push(ValueRow {
                step,
                value: v_value.is_valid(i).then(|| v_value.value(i)),
                early_correct: v_early_correct
                    .as_ref()
                    .and_then(|a| a.is_valid(i).then(|| a.value(i))),
                early_answer: v_early_answer
                    .as_ref()
                    .and_then(|a| cell(a, i))
                    .map(str::to_string),
            });
        }
        for v in value_map.values_mut() {
            v.sort_by_key(|r| r.step);
        }

        Ok(Inputs {
            id: need_utf8(rollouts, "rollouts", "id")?,
            prompt: need_utf8(rollouts, "rollouts", "prompt")?,
            response: need_utf8(rollouts, "rollouts", "response")?,
            context: utf8_column(rollouts, "context")?,
            rollout_id,
            correct,
            steps: step_map,
            values: value_map,
            orphan_steps,
            orphan_values,
        })
    }

    /// Rollout rows grouped by query id; rows without a key and repeated rollout ids are
    /// left out (and counted).
    pub fn queries(&self) -> Groups {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut g = Groups {
            queries: Vec::new(),
            missing_keys: 0,
            duplicates: 0,
        };
        for i in 0..self.rollout_id.len() {
            let (Some(r), Some(q)) = (cell(&self.rollout_id, i), cell(&self.id, i)) else {
                g.missing_keys += 1;
                continue;
            };
            if !seen.insert(r) {
                g.duplicates += 1;
                continue;
            }
            let j = *index.entry(q).or_insert_with(|| {
                g.queries.push((q.to_string(), Vec::new()));
                g.queries.len() - 1
            });
            g.queries[j].1.push(i);
        }
        g
    }

    /// A rollout with its steps, lengths and values, or why it is skipped.
    fn rollout(&self, row: usize, cfg: &GaeConfig) -> Result<Rollout, Counter> {
        let key = cell(&self.rollout_id, row).unwrap_or("");
        let steps = self
            .steps
            .get(key)
            .filter(|s| !s.is_empty())
            .ok_or(Counter::RolloutsWithoutSteps)?;
        if steps
            .iter()
            .enumerate()
            .any(|(i, s)| s.step != Some(i as i64 + 1))
        {
            return Err(Counter::BadStepNumbers);
        }
        let texts: Vec<String> = steps.iter().map(|s| s.text.clone()).collect();
        if let Some(resp) = cell(&self.response, row) {
            if texts.concat() != resp {
                return Err(Counter::StepsNotMatchingResponse);
            }
        }
        let tokens: Vec<i64> = steps
            .iter()
            .map(|s| s.tokens.filter(|t| *t >= 0))
            .collect::<Option<_>>()
            .ok_or(Counter::StepsWithoutTokens)?;
        let rows = self
            .values
            .get(key)
            .filter(|v| !v.is_empty())
            .ok_or(Counter::RolloutsWithoutValues)?;
        let k_total = steps.len();
        let mut values = Vec::with_capacity(k_total + 1);
        let mut early_correct = Vec::with_capacity(k_total + 1);
        let mut early_answer = Vec::with_capacity(k_total + 1);
        for k in 0..=k_total as i64 {
            // Rows are sorted by step; the first row of a boundary wins.
            let r = rows
                .iter()
                .find(|r| r.step == k)
                .ok_or(Counter::MissingValues)?;
            let v = r.value.ok_or(Counter::MissingValues)?;
            if !v.is_finite() {
                return Err(Counter::NanValues);
            }
            values.push(v);
            early_correct.push(r.early_correct);
            early_answer.push(r.early_answer.clone());
        }
        if self.correct.is_null(row) {
            return Err(Counter::RolloutsWithoutOutcome);
        }
        let correct = self.correct.value(row);
        let tok_f: Vec<f64> = tokens.iter().map(|&t| t as f64).collect();
        let adv = gae::rollout_advantages(cfg, &tok_f, &values, if correct { 1.0 } else { 0.0 })
            .ok_or(Counter::MissingValues)?;
        Ok(Rollout {
            row,
            rollout_id: key.to_string(),
            correct,
            steps: texts,
            tokens,
            values,
            early_correct,
            early_answer,
            adv,
            rel: Vec::new(),
        })
    }
}

/// A rollout ready for pairing.
#[derive(Debug, Clone)]
struct Rollout {
    row: usize,
    rollout_id: String,
    correct: bool,
    steps: Vec<String>,
    tokens: Vec<i64>,
    /// `V_0..V_K` as probed.
    values: Vec<f64>,
    early_correct: Vec<Option<bool>>,
    early_answer: Vec<Option<String>>,
    adv: StepAdvantages,
    /// `Â_1..Â_K`.
    rel: Vec<f64>,
}

impl Rollout {
    fn total_tokens(&self) -> i64 {
        self.tokens.iter().sum()
    }
}

/// One side of a pair.
#[derive(Debug, Clone, PartialEq)]
struct Side {
    rollout_id: String,
    steps: Vec<String>,
    adv: Vec<f64>,
    tokens: Vec<i64>,
}

impl Side {
    fn full(r: &Rollout) -> Self {
        Side {
            rollout_id: r.rollout_id.clone(),
            steps: r.steps.clone(),
            adv: r.rel.clone(),
            tokens: r.tokens.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct PairRow {
    pair_id: String,
    id: String,
    kind: PairKind,
    /// Row of the rollouts table the prompt and context come from.
    row: usize,
    chosen: Side,
    rejected: Side,
    cut_step: Option<i32>,
    saved_tokens: Option<i64>,
}

/// The compression pair of a rollout, or why it has none.
fn compression_pair(
    p: &PairParams,
    query: &str,
    r: &Rollout,
    seed_of: &dyn Fn(&str) -> u64,
) -> Result<PairRow, Counter> {
    let k_total = r.steps.len();
    let last = &r.steps[k_total - 1];
    let (cut, concluding) = match p.cut {
        CutMode::Vvp => {
            let cut = select::vvp_cut(&r.values, &r.early_correct, p.tau, p.settle)
                .ok_or(Counter::NoCutBoundary)?;
            let early = r.early_answer[cut]
                .as_deref()
                .ok_or(Counter::NoEarlyAnswer)?;
            let text =
                select::concluding_step(&p.answer_format, last, early).map_err(|e| match e {
                    ConcludeError::NoFinalAnswer => Counter::NoFinalAnswer,
                    ConcludeError::AnswerNotInStep => Counter::AnswerNotInLastStep,
                    ConcludeError::EmptyEarlyAnswer => Counter::NoEarlyAnswer,
                })?;
            (cut, text)
        }
        CutMode::Random => {
            if !r.correct {
                return Err(Counter::RandomCutIncorrect);
            }
            let cut = select::random_cut(k_total, seed_of(&r.rollout_id))
                .ok_or(Counter::NoCutBoundary)?;
            (cut, last.clone())
        }
    };
    let concluding_tokens = select::estimate_tokens(last, r.tokens[k_total - 1], &concluding);
    let mut chosen = Side {
        rollout_id: r.rollout_id.clone(),
        steps: r.steps[..cut].to_vec(),
        adv: r.rel[..cut].to_vec(),
        tokens: r.tokens[..cut].to_vec(),
    };
    chosen.steps.push(concluding);
    chosen.adv.push(0.0);
    chosen.tokens.push(concluding_tokens);
    let saved = r.total_tokens() - chosen.tokens.iter().sum::<i64>();
    if saved < p.min_saving {
        return Err(Counter::SavingBelowMin);
    }
    Ok(PairRow {
        pair_id: format!("{}/c", r.rollout_id),
        id: query.to_string(),
        kind: PairKind::Compression,
        row: r.row,
        chosen,
        rejected: Side::full(r),
        cut_step: Some(cut as i32),
        saved_tokens: Some(saved),
    })
}

/// The outcome pairs of a query.
fn outcome_pairs(p: &PairParams, query: &str, rolls: &[Rollout]) -> Vec<PairRow> {
    let cands: Vec<Candidate> = rolls
        .iter()
        .map(|r| Candidate {
            rollout_id: &r.rollout_id,
            correct: r.correct,
            mean_adv: select::mean(&r.rel),
            tokens: r.total_tokens(),
        })
        .collect();
    select::outcome_pairs(&cands, p.outcome_pairs)
        .into_iter()
        .enumerate()
        .map(|(i, (g, b))| PairRow {
            pair_id: format!("{query}/o/{i}"),
            id: query.to_string(),
            kind: PairKind::Outcome,
            row: rolls[g].row,
            chosen: Side::full(&rolls[g]),
            rejected: Side::full(&rolls[b]),
            cut_step: None,
            saved_tokens: None,
        })
        .collect()
}

/// What one chunk of queries gives.
struct ChunkResult {
    pairs: RecordBatch,
    advantages: RecordBatch,
    counts: BTreeMap<Counter, u64>,
    compression: u64,
    outcome: u64,
    saved: i64,
}

/// Advantages and pairs of the queries of one chunk.
fn build_chunk(
    p: &PairParams,
    inputs: &Inputs,
    queries: &[(String, Vec<usize>)],
    seed_of: &dyn Fn(&str) -> u64,
) -> Result<ChunkResult, OpError> {
    let cfg = p.gae();
    let mut counts: BTreeMap<Counter, u64> = BTreeMap::new();
    let mut pairs = Vec::new();
    let mut adv = AdvantageBuilder::default();
    for (query, rows) in queries {
        let mut rolls = Vec::with_capacity(rows.len());
        for &row in rows {
            match inputs.rollout(row, &cfg) {
                Ok(r) => rolls.push(r),
                Err(c) => *counts.entry(c).or_default() += 1,
            }
        }
        let all: Vec<f64> = rolls
            .iter()
            .flat_map(|r| r.adv.advantage.iter().copied())
            .collect();
        let mut rel = gae::normalize(&all, p.eps).into_iter();
        for r in &mut rolls {
            r.rel = rel.by_ref().take(r.steps.len()).collect();
            adv.push(query, r);
        }
        if p.wants(PairKind::Compression) {
            for r in &rolls {
                match compression_pair(p, query, r, seed_of) {
                    Ok(pair) => pairs.push(pair),
                    Err(c) => *counts.entry(c).or_default() += 1,
                }
            }
        }
        if p.wants(PairKind::Outcome) && p.outcome_pairs > 0 {
            pairs.extend(outcome_pairs(p, query, &rolls));
        }
    }
    let compression = pairs
        .iter()
        .filter(|r| r.kind == PairKind::Compression)
        .count() as u64;
    let saved = pairs.iter().filter_map(|r| r.saved_tokens).sum();
    Ok(ChunkResult {
        pairs: pair_batch(inputs, &pairs, p.cut)?,
        advantages: adv.finish()?,
        compression,
        outcome: pairs.len() as u64 - compression,
        saved,
        counts,
    })
}

#[derive(Default)]
struct AdvantageBuilder {
    rollout_id: StringBuilder,
    id: StringBuilder,
    step: Int32Builder,
    value: Float64Builder,
    reward: Float64Builder,
    delta: Float64Builder,
    advantage: Float64Builder,
    rel: Float64Builder,
}

impl AdvantageBuilder {
    fn push(&mut self, query: &str, r: &Rollout) {
        for k in 0..r.steps.len() {
            self.rollout_id.append_value(&r.rollout_id);
            self.id.append_value(query);
            self.step.append_value(k as i32 + 1);
            self.value.append_value(r.values[k + 1]);
            self.reward.append_value(r.adv.reward[k]);
            self.delta.append_value(r.adv.delta[k]);
            self.advantage.append_value(r.adv.advantage[k]);
            self.rel.append_value(r.rel[k]);
        }
    }

    fn finish(mut self) -> Result<RecordBatch, OpError> {
        let f = |n: &str, t: DataType| Field::new(n, t, false);
        let fields = vec![
            f("rollout_id", DataType::Utf8),
            f("id", DataType::Utf8),
            f("step", DataType::Int32),
            f("value", DataType::Float64),
            f("reward", DataType::Float64),
            f("delta", DataType::Float64),
            f("advantage", DataType::Float64),
            f("rel_advantage", DataType::Float64),
        ];
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.rollout_id.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.step.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.reward.finish()),
            Arc::new(self.delta.finish()),
            Arc::new(self.advantage.finish()),
            Arc::new(self.rel.finish()),
        ];
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }
}

fn list_field(name: &str, item: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", item, true))),
        false,
    )
}

fn to_i32(n: i64, what: &str) -> Result<i32, OpError> {
    i32::try_from(n).map_err(|_| OpError::msg(format!("{what} {n} does not fit in 32 bits")))
}

/// The pairs table of a chunk.
fn pair_batch(inputs: &Inputs, pairs: &[PairRow], cut: CutMode) -> Result<RecordBatch, OpError> {
    let mut pair_id = StringBuilder::new();
    let mut id = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut prompt = StringBuilder::new();
    let mut context = StringBuilder::new();
    let mut chosen = StringBuilder::new();
    let mut rejected = StringBuilder::new();
    let mut steps = [
        ListBuilder::new(StringBuilder::new()),
        ListBuilder::new(StringBuilder::new()),
    ];
    let mut advs = [
        ListBuilder::new(Float32Builder::new()),
        ListBuilder::new(Float32Builder::new()),
    ];
    let mut toks = [
        ListBuilder::new(Int32Builder::new()),
        ListBuilder::new(Int32Builder::new()),
    ];
    let mut prefix_steps = Int32Builder::new();
    let mut prefix_tokens = Int32Builder::new();
    let mut chosen_rollout = StringBuilder::new();
    let mut rejected_rollout = StringBuilder::new();
    let mut cut_step = Int32Builder::new();
    let mut saved_tokens = Int64Builder::new();
    let mut cut_col = StringBuilder::new();
    for r in pairs {
        pair_id.append_value(&r.pair_id);
        id.append_value(&r.id);
        kind.append_value(r.kind.name());
        prompt.append_option(cell(&inputs.prompt, r.row));
        context.append_option(inputs.context.as_ref().and_then(|c| cell(c, r.row)));
        chosen.append_value(r.chosen.steps.concat());
        rejected.append_value(r.rejected.steps.concat());
        for (j, side) in [&r.chosen, &r.rejected].into_iter().enumerate() {
            for s in &side.steps {
                steps[j].values().append_value(s);
            }
            steps[j].append(true);
            for a in &side.adv {
                advs[j].values().append_value(*a as f32);
            }
            advs[j].append(true);
            for t in &side.tokens {
                toks[j]
                    .values()
                    .append_value(to_i32(*t, "a step token count")?);
            }
            toks[j].append(true);
        }
        let shared = select::shared_prefix(&r.chosen.steps, &r.rejected.steps);
        prefix_steps.append_value(shared as i32);
        prefix_tokens.append_value(to_i32(
            r.chosen.tokens[..shared].iter().sum(),
            "a prefix token count",
        )?);
        chosen_rollout.append_value(&r.chosen.rollout_id);
        rejected_rollout.append_value(&r.rejected.rollout_id);
        cut_step.append_option(r.cut_step);
        saved_tokens.append_option(r.saved_tokens);
        match r.kind {
            PairKind::Compression => cut_col.append_value(cut.name()),
            PairKind::Outcome => cut_col.append_null(),
        }
    }
    let s = |n: &str, nullable: bool| Field::new(n, DataType::Utf8, nullable);
    let fields = vec![
        s("pair_id", false),
        s("id", false),
        s("kind", false),
        s("prompt", true),
        s("context", true),
        s("chosen", false),
        s("rejected", false),
        list_field("chosen_steps", DataType::Utf8),
        list_field("rejected_steps", DataType::Utf8),
        list_field("chosen_adv", DataType::Float32),
        list_field("rejected_adv", DataType::Float32),
        list_field("chosen_tokens", DataType::Int32),
        list_field("rejected_tokens", DataType::Int32),
        Field::new("prefix_steps", DataType::Int32, false),
        Field::new("prefix_tokens", DataType::Int32, false),
        s("chosen_rollout", false),
        s("rejected_rollout", false),
        Field::new("cut_step", DataType::Int32, true),
        Field::new("saved_tokens", DataType::Int64, true),
        s("cut", true),
    ];
    let [mut cs, mut rs] = steps;
    let [mut ca, mut ra] = advs;
    let [mut ct, mut rt] = toks;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(pair_id.finish()),
        Arc::new(id.finish()),
        Arc::new(kind.finish()),
        Arc::new(prompt.finish()),
        Arc::new(context.finish()),
        Arc::new(chosen.finish()),
        Arc::new(rejected.finish()),
        Arc::new(cs.finish()),
        Arc::new(rs.finish()),
        Arc::new(ca.finish()),
        Arc::new(ra.finish()),
        Arc::new(ct.finish()),
        Arc::new(rt.finish()),
        Arc::new(prefix_steps.finish()),
        Arc::new(prefix_tokens.finish()),
        Arc::new(chosen_rollout.finish()),
        Arc::new(rejected_rollout.finish()),
        Arc::new(cut_step.finish()),
        Arc::new(saved_tokens.finish()),
        Arc::new(cut_col.finish()),
    ];
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;
