//! `pair`'s output tables: the pairs (the main table) and the per-step advantages (the
//! extra `advantages` table).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float32Builder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use sspo_engine::OpError;

use super::build::PairRow;
use super::input::{Inputs, Rollout};
use super::{select, CutMode, PairKind};
use crate::columns::{cell, to_i32};

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

/// Builds the `advantages` table, rollout by rollout.
#[derive(Default)]
pub(super) struct AdvantageBuilder {
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
    pub fn push(&mut self, query: &str, r: &Rollout) {
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

    pub fn finish(mut self) -> Result<RecordBatch, OpError> {
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

/// The pairs table of a chunk.
pub(super) fn pair_batch(
    inputs: &Inputs,
    pairs: &[PairRow],
    cut: CutMode,
) -> Result<RecordBatch, OpError> {
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
            r.chosen.tokens[..shared].iter().sum::<i64>(),
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
