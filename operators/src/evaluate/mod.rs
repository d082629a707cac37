//! `evaluate`: generates responses to held-out prompts with every model on the `models`
//! port, verifies their final answers, and summarises per model: accuracy (pass@1), mean,
//! median and p90 response tokens, mean steps, the share clipped at `max_new_tokens`,
//! length reduction and accuracy delta against the base model, and, where the prompts
//! carry an oracle (minimal) trace, the share of removable redundancy each model removed.
//!
//! Generation is `generate`'s ([`crate::rollout::generate_rows`]): same prompt rendering,
//! continuous batching, per-request seeds `row_seed(id, sample)` (so every model answers a
//! prompt's sample `s` with the same seed) and answer verification.
//!
//! Chunks never mix models: the work is laid out model-major, every model's prompt rows
//! padded to a whole number of chunks, so chunk `c` belongs to model
//! `c / ceil(n_prompts / chunk_rows)`. A model is loaded when the first chunk of it that
//! still has to be computed starts, and dropped when the next model's chunks start.
//!
//! The summary needs every row, so it is computed from the committed rows after the
//! last chunk and committed as the extra table `summary` (SQL: `<node>_summary`) with
//! [`RunContext::commit_final`]; `report.md` and its SVG plots ([`report`]) are written
//! into the node directory at the same time.
//!
//! Layout: `params` (the keys), `inputs` (the rows kept, oracle traces, the base
//! model), `layout` (chunks never mixing models), `summary` and [`report`]; this file
//! is the operator and its per-sample table.

mod inputs;
mod layout;
mod params;
pub mod report;
mod summary;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Int32Builder, RecordBatch, StringBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::json;
use sspo_engine::{
    Columns, ConfigureContext, Diagnostics, ModelRef, NodeKernel, OpError, Operator, Params, Port,
    RunContext,
};

use crate::model_port::LazyModel;
use crate::rollout::{
    finish_reason_name, generate_rows, judge, load_checked, PromptColumns, Throughput,
};
use crate::segment::{Boundary, Splitter};

pub use inputs::{base_index, select_rows, DEFAULT_ORACLE_COLUMN};
use inputs::{oracle_column, oracle_length};
pub use layout::Layout;
pub use params::EvaluateParams;
pub use summary::{
    nearest_rank, summarize, summary_batch, summary_text, ModelRows, ModelSummary, PerModel,
    SUMMARY_COLUMNS,
};

/// The `evaluate` operator.
pub struct Evaluate;

/// Columns of the per-sample table, in order.
pub const EVALUATE_COLUMNS: [&str; 12] = [
    "model",
    "id",
    "sample",
    "prompt",
    "response",
    "n_tokens",
    "n_steps",
    "finish_reason",
    "pred_answer",
    "correct",
    "oracle_tokens",
    "seed",
];

impl Operator for Evaluate {
    fn name(&self) -> &'static str {
        "evaluate"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "evaluates models on held-out prompts: accuracy, response length and reduction vs a base model"
    }
    fn ports(&self) -> &'static [Port] {
        const PORTS: &[Port] = &[
            Port::table(
                "prompts",
                "rows with `id`, `prompt` and the reference `answer` (optionally `split` and an oracle trace)",
            ),
            Port::model(
                "models",
                "the models to compare, e.g. [base, sspo]; the first is the baseline unless `base` says otherwise",
            )
            .many(),
        ];
        PORTS
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: EvaluateParams = params.parse()?;
        p.check(params).into_result()?;
        Ok(Arc::new(EvaluateKernel::new(params, p)?))
    }
}

/// A configured `evaluate` node.
pub struct EvaluateKernel {
    pub params: EvaluateParams,
    /// [`NodeKernel::params_json`], computed when configured.
    fingerprint: serde_json::Value,
}

impl EvaluateKernel {
    /// The node for checked `typed` params (parsed from `params`).
    pub fn new(params: &Params, typed: EvaluateParams) -> Result<Self, Diagnostics> {
        // `batch_size` only changes speed (per-request seeds), so it stays out of the
        // fingerprint.
        let fingerprint = params.fingerprint_json(&typed, &["batch_size", "max_in_flight"])?;
        Ok(EvaluateKernel {
            params: typed,
            fingerprint,
        })
    }
}

impl NodeKernel for EvaluateKernel {
    fn params_json(&self) -> serde_json::Value {
        self.fingerprint.clone()
    }

    /// Every chunk is its prompts' responses; the summary over all of them
    /// runs once, after the loop (at the commit of a sharded run).
    fn shardable(&self) -> bool {
        true
    }

    fn required_columns(&self) -> Vec<(&'static str, Vec<String>)> {
        let mut cols = vec!["id".to_string(), "prompt".into(), "answer".into()];
        if let Some(o) = &self.params.oracle {
            cols.push(o.clone());
        }
        vec![("prompts", cols)]
    }

    fn extra_tables(&self) -> Vec<&'static str> {
        vec!["summary"]
    }

    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::exact(EVALUATE_COLUMNS)
    }

    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let p = &self.params;
        let table = ctx.input_table("prompts")?;
        let table = select_rows(&table, p.split_filter(), p.limit)?;
        let input = PromptColumns::new(&table)?;
        let oracle_col = oracle_column(&table, p.oracle.as_deref())?;
        let models: Vec<ModelRef> = ctx.input_models("models")?.into_iter().cloned().collect();
        let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
        let base = base_index(&names, p.base.as_deref())?;
        let layout = Layout::new(table.num_rows(), p.chunk_rows, models.len());
        let spec = p.generation();
        let splitter = Splitter::new(Boundary::Delimiter(p.delimiter.clone()), 0, None);
        let mut loaded = LazyModel::new(ctx.device(), |model: &ModelRef, device: &str| {
            load_checked(model, device, spec.max_new_tokens)
        });
        let mut stats = Throughput::new();
        ctx.run_chunks(layout.input_rows(), p.chunk_rows, |ctx, range| {
            let (mi, rows) = layout.locate(range);
            let model_ref = models.get(mi).ok_or_else(|| {
                OpError::internal(format!("chunk of model #{mi}, which is not listed"))
            })?;
            if rows.is_empty() {
                return Ok(EvalBuilder::with_capacity(0).finish()?.into());
            }
            // Chunks are model-major: asking for the next model frees the previous one.
            let model = loaded.get(ctx, model_ref)?;
            let gen = generate_rows(ctx, model, &spec, &input, rows, true, &mut stats)?;
            let mut skipped = gen.skipped;
            if mi != 0 {
                // Rows without an id, prompt or reference are skipped for every model;
                // count them once (with the first model).
                skipped.missing_ids = 0;
                skipped.empty_prompts = 0;
                skipped.missing_answers = 0;
            }
            skipped.record(ctx);
            let mut oracle_tokens: HashMap<usize, Option<i32>> = HashMap::new();
            let mut b = EvalBuilder::with_capacity(gen.outputs.len());
            for (r, sample, seed, out) in &gen.outputs {
                let row = &gen.rows[*r];
                let oracle = *oracle_tokens.entry(row.index).or_insert_with(|| {
                    oracle_length(model.text().tokenizer, oracle_col.as_ref(), row.index)
                });
                let (pred, correct) = judge(&p.answer_format, &out.text, row.answer.as_deref());
                b.model.append_value(&model_ref.name);
                b.id.append_value(row.id);
                b.sample.append_value(*sample);
                b.prompt.append_value(row.prompt);
                b.response.append_value(&out.text);
                b.n_tokens
                    .append_value(i32::try_from(out.n_tokens).unwrap_or(i32::MAX));
                b.n_steps.append_value(
                    i32::try_from(splitter.split(&out.text).len()).unwrap_or(i32::MAX),
                );
                b.finish_reason
                    .append_value(finish_reason_name(out.finish_reason));
                b.pred_answer.append_option(pred.as_deref());
                b.correct.append_value(correct.unwrap_or(false));
                b.oracle_tokens.append_option(oracle);
                b.seed.append_value(*seed);
            }
            ctx.count(
                "empty_responses",
                gen.empty_responses(),
                "response{|s} {was|were} empty (kept)",
            );
            Ok(b.finish()?.into())
        })?;
        drop(loaded);
        if stats.rollouts > 0 {
            ctx.set_metric("responses_this_run", json!(stats.rollouts));
            ctx.set_metric("tokens_this_run", json!(stats.tokens));
            ctx.set_metric("tokens_per_s", json!(stats.tokens_per_s()));
        }

        let all = ctx.committed_table("")?;
        let per_model = PerModel::from_table(&all, &names)?;
        let summary = summarize(&per_model, base);
        ctx.set_metric(
            "summary_table",
            serde_json::to_value(&summary).unwrap_or_else(|_| json!([])),
        );
        ctx.set_summary(summary_text(&summary, base));
        ctx.commit_final(vec![("summary".into(), summary_batch(&summary)?)])?;
        report::write_report(
            ctx.node_dir(),
            &report::ReportInput {
                node: ctx.node_id(),
                summary: &summary,
                per_model: &per_model,
                base,
                max_new_tokens: p.max_new_tokens,
                samples: p.samples,
            },
        )?;
        Ok(())
    }
}

/// The per-sample table.
struct EvalBuilder {
    model: StringBuilder,
    id: StringBuilder,
    sample: Int32Builder,
    prompt: StringBuilder,
    response: StringBuilder,
    n_tokens: Int32Builder,
    n_steps: Int32Builder,
    finish_reason: StringBuilder,
    pred_answer: StringBuilder,
    correct: BooleanBuilder,
    oracle_tokens: Int32Builder,
    seed: UInt64Builder,
}

impl EvalBuilder {
    fn with_capacity(n: usize) -> Self {
        EvalBuilder {
            model: StringBuilder::with_capacity(n, n * 8),
            id: StringBuilder::with_capacity(n, n * 8),
            sample: Int32Builder::with_capacity(n),
            prompt: StringBuilder::with_capacity(n, n * 64),
            response: StringBuilder::with_capacity(n, n * 256),
            n_tokens: Int32Builder::with_capacity(n),
            n_steps: Int32Builder::with_capacity(n),
            finish_reason: StringBuilder::with_capacity(n, n * 6),
            pred_answer: StringBuilder::with_capacity(n, n * 4),
            correct: BooleanBuilder::with_capacity(n),
            oracle_tokens: Int32Builder::with_capacity(n),
            seed: UInt64Builder::with_capacity(n),
        }
    }

    fn finish(mut self) -> Result<RecordBatch, OpError> {
        let fields = vec![
            Field::new("model", DataType::Utf8, false),
            Field::new("id", DataType::Utf8, false),
            Field::new("sample", DataType::Int32, false),
            Field::new("prompt", DataType::Utf8, false),
            Field::new("response", DataType::Utf8, false),
            Field::new("n_tokens", DataType::Int32, false),
            Field::new("n_steps", DataType::Int32, false),
            Field::new("finish_reason", DataType::Utf8, false),
            Field::new("pred_answer", DataType::Utf8, true),
            Field::new("correct", DataType::Boolean, false),
            Field::new("oracle_tokens", DataType::Int32, true),
            Field::new("seed", DataType::UInt64, false),
        ];
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.model.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.sample.finish()),
            Arc::new(self.prompt.finish()),
            Arc::new(self.response.finish()),
            Arc::new(self.n_tokens.finish()),
            Arc::new(self.n_steps.finish()),
            Arc::new(self.finish_reason.finish()),
            Arc::new(self.pred_answer.finish()),
            Arc::new(self.correct.finish()),
            Arc::new(self.oracle_tokens.finish()),
            Arc::new(self.seed.finish()),
        ];
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_json_is_unchanged() {
        // Recorded from the code before the params took container defaults: a node's
        // fingerprint (and so its cache) depends on these exact bytes.
        let ctx = ConfigureContext {
            node_id: "n".into(),
            base_dir: ".".into(),
            seed: 1,
        };
        let fingerprint =
            |v: serde_json::Value| match Evaluate.configure(&Params::from_json(&v), &ctx) {
                Ok(k) => serde_json::to_string(&k.params_json()).unwrap(),
                Err(d) => panic!("{d}"),
            };
        let default = fingerprint(json!({}));
        let set = fingerprint(
            json!({"split": null, "limit": 5, "samples": 2, "temperature": 0.5, "base": "b",
            "oracle": "o", "delimiter": "\n", "batch_size": 4, "answer_format": "boxed"}),
        );
        assert_eq!(
            default,
            r#"{"answer_format":"auto","base":null,"chat_template":false,"chunk_rows":8,"delimiter":"\n\n","limit":null,"max_new_tokens":256,"oracle":null,"prompt_template":"{prompt}","samples":1,"split":"test","stop":[],"temperature":0.0,"top_k":0,"top_p":1.0}"#
        );
        assert_eq!(
            set,
            r#"{"answer_format":"boxed","base":"b","chat_template":false,"chunk_rows":8,"delimiter":"\n","limit":5,"max_new_tokens":256,"oracle":"o","prompt_template":"{prompt}","samples":2,"split":null,"stop":[],"temperature":0.5,"top_k":0,"top_p":1.0}"#
        );
    }
}
