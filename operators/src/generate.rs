//! `generate`: samples `samples` responses per prompt from the model on the `model` port,
//! extracts and verifies each response's final answer.
//!
//! Every (prompt, sample) pair has its own seed, `row_seed(id, sample)`, and the model
//! crate samples each request with a private generator, so the rows do not depend on
//! `batch_size` or on which prompts share a chunk. The model is loaded once per run, when
//! the first chunk that still has to be computed starts (a fully cached or fully resumed
//! node never loads it).
//!
//! The rollout code path (prompt rendering, batching, seeds, answer verification) is
//! [`crate::rollout`], which `evaluate` generates through too; this file is the operator
//! and its output table.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Int32Builder, RecordBatch, StringBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sspo_engine::{
    Columns, ConfigureContext, Diagnostics, ModelRef, NodeKernel, OpError, Operator, Params, Port,
    RunContext,
};
use sspo_model::GenerationOutput;

use crate::model_port::LazyModel;
use crate::rollout::{
    finish_reason_name, generate_rows, judge, load_checked, PromptColumns, PromptRow, RolloutSpec,
    Throughput,
};
use crate::tasks::AnswerFormat;

/// The `generate` operator.
pub struct Generate;

/// Output columns, in order. `rollout_id` .. `seed` are the table contract; `answer` (the
/// reference answer the row was verified against) and `context` (the exact model input
/// text) extend it for `probe`, `pair` and `train`.
pub const GENERATE_COLUMNS: [&str; 12] = [
    "rollout_id",
    "id",
    "sample",
    "prompt",
    "response",
    "n_tokens",
    "finish_reason",
    "pred_answer",
    "correct",
    "seed",
    "answer",
    "context",
];

/// Params of `generate`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateParams {
    /// Responses per prompt (G).
    pub samples: usize,
    /// Sampling temperature; 0 = greedy.
    pub temperature: f64,
    /// Nucleus sampling mass; 1 = off.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Most tokens generated per response.
    pub max_new_tokens: usize,
    /// Generation stops once the response contains one of these; the response is cut
    /// before it.
    pub stop: Vec<String>,
    /// Wrap the prompt in the model's chat template (one user message, generation prompt).
    pub chat_template: bool,
    /// Text around the prompt, with a `{prompt}` placeholder (applied before the chat
    /// template).
    pub prompt_template: String,
    /// Requests decoded together (continuous batching slots).
    pub batch_size: usize,
    /// Requests in flight at once to an inference server (ignored for local weights).
    pub max_in_flight: usize,
    /// How the final answer is written in responses.
    pub answer_format: AnswerFormat,
    /// Prompt rows per committed chunk.
    pub chunk_rows: usize,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            samples: 4,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            stop: Vec::new(),
            chat_template: false,
            prompt_template: "{prompt}".into(),
            batch_size: 16,
            max_in_flight: 16,
            answer_format: AnswerFormat::Auto,
            chunk_rows: 8,
        }
    }
}

impl GenerateParams {
    /// The generation settings (every key but `chunk_rows`).
    pub fn generation(&self) -> RolloutSpec {
        RolloutSpec {
            samples: self.samples,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_new_tokens: self.max_new_tokens,
            stop: self.stop.clone(),
            chat_template: self.chat_template,
            prompt_template: self.prompt_template.clone(),
            batch_size: self.batch_size,
            max_in_flight: self.max_in_flight,
            answer_format: self.answer_format,
        }
    }

    /// Semantic checks, located at the offending key.
    pub fn check(&self, params: &Params) -> Diagnostics {
        let mut d = self.generation().check(params);
        if self.chunk_rows == 0 {
            d.push(params.error(&["chunk_rows"], "`chunk_rows` must be at least 1"));
        }
        d
    }
}

impl Operator for Generate {
    fn name(&self) -> &'static str {
        "generate"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "samples responses per prompt from a model and verifies their final answers"
    }
    fn ports(&self) -> &'static [Port] {
        const PORTS: &[Port] = &[
            Port::table(
                "prompts",
                "rows with `id` and `prompt` (and optionally the reference `answer`)",
            ),
            Port::model("model", "the model that generates"),
        ];
        PORTS
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: GenerateParams = params.parse()?;
        p.check(params).into_result()?;
        // `batch_size` only changes speed (per-request seeds), so it stays out of the
        // fingerprint.
        let fingerprint = params.fingerprint_json(&p, &["batch_size", "max_in_flight"])?;
        Ok(Arc::new(GenerateKernel {
            params: p,
            fingerprint,
        }))
    }
}

/// A configured `generate` node.
pub struct GenerateKernel {
    pub params: GenerateParams,
    /// [`NodeKernel::params_json`], computed when configured.
    fingerprint: serde_json::Value,
}

impl NodeKernel for GenerateKernel {
    fn params_json(&self) -> serde_json::Value {
        self.fingerprint.clone()
    }

    /// Every chunk is its prompts' rollouts, seeded per row.
    fn shardable(&self) -> bool {
        true
    }

    fn required_columns(&self) -> Vec<(&'static str, Vec<String>)> {
        vec![("prompts", vec!["id".into(), "prompt".into()])]
    }

    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::exact(GENERATE_COLUMNS)
    }

    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let table = ctx.input_table("prompts")?;
        let input = PromptColumns::new(&table)?;
        let model_ref = ctx.input_model("model")?.clone();
        let spec = self.params.generation();
        let mut model = LazyModel::new(ctx.device(), |model: &ModelRef, device: &str| {
            load_checked(model, device, spec.max_new_tokens)
        });
        let mut stats = Throughput::new();
        ctx.run_chunks(table.num_rows(), self.params.chunk_rows, |ctx, range| {
            let m = model.get(ctx, &model_ref)?;
            let gen = generate_rows(ctx, m, &spec, &input, range, false, &mut stats)?;
            gen.skipped.record(ctx);
            let mut b = OutputBuilder::with_capacity(gen.outputs.len());
            for (r, sample, seed, out) in &gen.outputs {
                b.push(
                    &gen.rows[*r],
                    *sample,
                    *seed,
                    out,
                    &self.params.answer_format,
                );
            }
            ctx.count(
                "empty_responses",
                gen.empty_responses(),
                "response{|s} {was|were} empty (kept)",
            );
            Ok(b.finish()?.into())
        })?;
        if stats.rollouts > 0 {
            ctx.set_metric("rollouts_this_run", json!(stats.rollouts));
            ctx.set_metric("tokens_this_run", json!(stats.tokens));
            ctx.set_metric("tokens_per_s", json!(stats.tokens_per_s()));
        }
        Ok(())
    }
}

struct OutputBuilder {
    rollout_id: StringBuilder,
    id: StringBuilder,
    sample: Int32Builder,
    prompt: StringBuilder,
    response: StringBuilder,
    n_tokens: Int32Builder,
    finish_reason: StringBuilder,
    pred_answer: StringBuilder,
    correct: BooleanBuilder,
    seed: UInt64Builder,
    answer: StringBuilder,
    context: StringBuilder,
}

impl OutputBuilder {
    fn with_capacity(n: usize) -> Self {
        OutputBuilder {
            rollout_id: StringBuilder::with_capacity(n, n * 8),
            id: StringBuilder::with_capacity(n, n * 8),
            sample: Int32Builder::with_capacity(n),
            prompt: StringBuilder::with_capacity(n, n * 64),
            response: StringBuilder::with_capacity(n, n * 256),
            n_tokens: Int32Builder::with_capacity(n),
            finish_reason: StringBuilder::with_capacity(n, n * 6),
            pred_answer: StringBuilder::with_capacity(n, n * 4),
            correct: BooleanBuilder::with_capacity(n),
            seed: UInt64Builder::with_capacity(n),
            answer: StringBuilder::with_capacity(n, n * 4),
            context: StringBuilder::with_capacity(n, n * 64),
        }
    }

    fn push(
        &mut self,
        row: &PromptRow,
        sample: i32,
        seed: u64,
        out: &GenerationOutput,
        fmt: &AnswerFormat,
    ) {
        self.rollout_id.append_value(format!("{}#{sample}", row.id));
        self.id.append_value(row.id);
        self.sample.append_value(sample);
        self.prompt.append_value(row.prompt);
        self.response.append_value(&out.text);
        self.n_tokens
            .append_value(i32::try_from(out.n_tokens).unwrap_or(i32::MAX));
        self.finish_reason
            .append_value(finish_reason_name(out.finish_reason));
        let (pred, correct) = judge(fmt, &out.text, row.answer.as_deref());
        self.pred_answer.append_option(pred.as_deref());
        self.correct.append_option(correct);
        self.seed.append_value(seed);
        self.answer.append_option(row.answer.as_deref());
        self.context.append_value(&row.context);
    }

    fn finish(mut self) -> Result<RecordBatch, OpError> {
        let fields = vec![
            Field::new("rollout_id", DataType::Utf8, false),
            Field::new("id", DataType::Utf8, false),
            Field::new("sample", DataType::Int32, false),
            Field::new("prompt", DataType::Utf8, false),
            Field::new("response", DataType::Utf8, false),
            Field::new("n_tokens", DataType::Int32, false),
            Field::new("finish_reason", DataType::Utf8, false),
            Field::new("pred_answer", DataType::Utf8, true),
            Field::new("correct", DataType::Boolean, true),
            Field::new("seed", DataType::UInt64, false),
            Field::new("answer", DataType::Utf8, true),
            Field::new("context", DataType::Utf8, false),
        ];
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.rollout_id.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.sample.finish()),
            Arc::new(self.prompt.finish()),
            Arc::new(self.response.finish()),
            Arc::new(self.n_tokens.finish()),
            Arc::new(self.finish_reason.finish()),
            Arc::new(self.pred_answer.finish()),
            Arc::new(self.correct.finish()),
            Arc::new(self.seed.finish()),
            Arc::new(self.answer.finish()),
            Arc::new(self.context.finish()),
        ];
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columns::utf8_column;
    use arrow::array::Array;
    use sspo_model::FinishReason;

    #[test]
    fn rows_without_reference_have_null_correct() {
        let row = PromptRow {
            index: 0,
            id: "a",
            prompt: "p",
            answer: None,
            context: "p".into(),
        };
        let with_ref = PromptRow {
            answer: Some("5".into()),
            ..PromptRow {
                index: 1,
                id: "b",
                prompt: "p",
                answer: None,
                context: "p".into(),
            }
        };
        let out = GenerationOutput {
            token_ids: vec![1, 2],
            text: "so the answer is 5.".into(),
            finish_reason: FinishReason::Eos,
            n_tokens: 2,
        };
        let mut b = OutputBuilder::with_capacity(2);
        b.push(&row, 0, 1, &out, &AnswerFormat::Auto);
        b.push(&with_ref, 1, 2, &out, &AnswerFormat::Auto);
        let batch = b.finish().unwrap();
        let correct = batch.column_by_name("correct").unwrap();
        let correct = correct
            .as_any()
            .downcast_ref::<arrow::array::BooleanArray>()
            .unwrap();
        assert!(correct.is_null(0));
        assert!(correct.value(1));
        let fr = utf8_column(&batch, "finish_reason").unwrap().unwrap();
        assert_eq!(fr.value(0), "stop");
        let pred = utf8_column(&batch, "pred_answer").unwrap().unwrap();
        assert_eq!(pred.value(0), "5");
    }
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
            |v: serde_json::Value| match Generate.configure(&Params::from_json(&v), &ctx) {
                Ok(k) => serde_json::to_string(&k.params_json()).unwrap(),
                Err(d) => panic!("{d}"),
            };
        let default = fingerprint(json!({}));
        let set = fingerprint(
            json!({"samples": 2, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "max_new_tokens": 64,
            "stop": ["\n\n"], "chat_template": true, "prompt_template": "Q: {prompt}",
            "batch_size": 3, "answer_format": "gsm8k", "chunk_rows": 2}),
        );
        assert_eq!(
            default,
            r#"{"answer_format":"auto","chat_template":false,"chunk_rows":8,"max_new_tokens":256,"prompt_template":"{prompt}","samples":4,"stop":[],"temperature":1.0,"top_k":0,"top_p":1.0}"#
        );
        assert_eq!(
            set,
            r#"{"answer_format":"gsm8k","chat_template":true,"chunk_rows":2,"max_new_tokens":64,"prompt_template":"Q: {prompt}","samples":2,"stop":["\n\n"],"temperature":0.7,"top_k":5,"top_p":0.9}"#
        );
    }
}
