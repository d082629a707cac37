//! `probe`: step-wise value probing. For every rollout with steps `s_1..s_K` and every
//! boundary `k = 0..K`, the model reads `context ⊕ s_1..s_k ⊕ suffix` and gives a value
//! `V_k ∈ [0, 1]`:
//!
//! * `kind: verbal` — the suffix asks whether the final answer is already determined;
//!   `V_k = p(yes) / (p(yes) + p(no))`, summing the single-token surface forms of yes / no.
//! * `kind: answer` — the suffix is an answer trigger ("The answer is");
//!   `V_k = exp(mean log π(a* tokens | ...))`, teacher-forced and length-normalised, plus the
//!   greedy early-exit answer and whether it is correct.
//! * `kind: [verbal, answer]` — both in one pass, a block per kind at every boundary: both
//!   values (`verbal_value`, `answer_value`; `value` is the first kind's) and the early
//!   answer, so verbal values can cut compression pairs.
//!
//! The traces of a chunk are probed in batches. One forward pass computes each trace's
//! keys and values once and, beside them, one block per boundary and kind that attends to
//! the trace before its boundary and causally to itself, with positions continuing from
//! the boundary. The greedy early answers then grow from the cache, one token per open block
//! per pass. [`Packing::Naive`] (one forward per boundary and token) gives the same
//! numbers and exists for tests and benchmarks.
//!
//! Layout: `params` and `kinds` (the keys), `setup` (the probe's tokens), `passes` (the
//! interface of the forward passes), `cached` and `naive` (its two implementations),
//! `trace` (the blocks and the early answers of a batch of traces), `early` (the
//! early-exit answer), `inputs` and `output` (the tables); this file is the operator.

mod cached;
mod early;
mod inputs;
mod kinds;
mod naive;
mod output;
mod params;
mod passes;
mod served;
mod setup;
mod trace;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::Backend;
use crate::columns::{cell, key_column};
use crate::model_port::{render_text_context, LazyModel};
use crate::rollout::reference_answer;
pub use crate::step_tokens::{trace_tokens, TraceTokens};
use arrow::array::RecordBatch;
use serde_json::json;
use sspo_engine::{
    Columns, ConfigureContext, Diagnostics, ModelRef, NodeKernel, OpError, Operator, Params, Port,
    RunContext,
};

pub use early::{cut_early_answer, early_is_correct};
use inputs::{RolloutColumns, StepIndex};
use output::ProbeBuilder;
pub use output::{probe_columns, KIND_VALUE_COLUMNS, PROBE_COLUMNS};
pub use params::{ProbeKind, ProbeKinds, ProbeParams, DEFAULT_QUESTION, DEFAULT_TRIGGER};
pub use passes::Packing;
pub use served::{probe_traces_served, ProbeFailure};
pub use setup::{answer_continuation, ProbeSetup};
pub use trace::{probe_trace, probe_traces, BoundaryProbe, TraceInput};

/// The `probe` operator.
pub struct Probe;

impl Operator for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "step-wise value probing: the model's value of every step boundary of every rollout"
    }
    fn ports(&self) -> &'static [Port] {
        const PORTS: &[Port] = &[
            Port::table(
                "steps",
                "steps from `segment`: `rollout_id` (or `id`), `step`, `text`",
            ),
            Port::table(
                "rollouts",
                "rollouts from `generate`: the same key, `context` or `prompt`, and `answer`",
            ),
            Port::model(
                "model",
                "the model that probes (normally the one that generated)",
            ),
        ];
        PORTS
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: ProbeParams = params.parse()?;
        p.check(params).into_result()?;
        // `max_batch_tokens` and `max_in_flight` change how the work is split, not the
        // values.
        let fingerprint = params.fingerprint_json(&p, &["max_batch_tokens", "max_in_flight"])?;
        Ok(Arc::new(ProbeKernel {
            params: p,
            fingerprint,
        }))
    }
}

/// A configured `probe` node.
pub struct ProbeKernel {
    pub params: ProbeParams,
    /// [`NodeKernel::params_json`], computed when configured.
    fingerprint: serde_json::Value,
}

impl NodeKernel for ProbeKernel {
    fn params_json(&self) -> serde_json::Value {
        self.fingerprint.clone()
    }

    /// Every chunk is its rollouts' probes.
    fn shardable(&self) -> bool {
        true
    }

    fn required_columns(&self) -> Vec<(&'static str, Vec<String>)> {
        vec![
            ("steps", vec!["step".into(), "text".into()]),
            ("rollouts", vec!["prompt".into()]),
        ]
    }

    fn output_columns(&self, inputs: &BTreeMap<String, Columns>) -> Columns {
        let has = inputs
            .get("steps")
            .is_none_or(|c| c.contains("rollout_id") || c.open);
        let mut names = vec![key_column(has)];
        names.extend(probe_columns(&self.params.kind));
        Columns::exact(names)
    }

    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        let steps = ctx.input_table("steps")?;
        let rollouts = ctx.input_table("rollouts")?;
        let key = key_column(steps.column_by_name("rollout_id").is_some());
        let steps_by_key = StepIndex::new(&steps, key)?;
        let input = RolloutColumns::new(&rollouts, key)?;
        let orphans = steps_by_key.orphans(&input);
        let model_ref = ctx.input_model("model")?.clone();
        let mut loaded = LazyModel::new(ctx.device(), |model: &ModelRef, device: &str| {
            let m = Backend::load(model, device)?;
            if let Backend::Server(server) = &m {
                server
                    .can_probe()
                    .map_err(|e| OpError::context(format!("model `{}`", model.name), e))?;
            }
            let setup = ProbeSetup::for_text(&m.text(), &self.params)
                .map_err(|e| OpError::context(format!("model `{}`", model.name), e))?;
            Ok((m, setup))
        });
        let mut stats = Rate::new();
        ctx.run_chunks(rollouts.num_rows(), self.params.chunk_rows, |ctx, range| {
            let (model, setup) = loaded.get(ctx, &model_ref)?;
            if range.start == 0 {
                ctx.count(
                    "steps_without_rollout",
                    orphans,
                    "step row{|s} {has|have} a key that is not in the rollouts table (ignored)",
                );
            }
            let out = self.probe_chunk(model, setup, &input, &steps_by_key, key, range)?;
            ctx.count(
                "traces_too_long",
                out.too_long,
                "rollout{|s} did not fit the model's context with {its|their} probes and {was|were} skipped",
            );
            ctx.count(
                "missing_keys",
                out.missing_keys,
                "rollout row{|s} had no key and {was|were} skipped",
            );
            ctx.count(
                "empty_contexts",
                out.empty_contexts,
                "rollout{|s} had an empty context and {was|were} skipped",
            );
            stats.traces += out.traces;
            stats.probes += out.batch.num_rows() as u64;
            let mut extra = stats.extra();
            if let Backend::Server(server) = model {
                extra = format!("{extra}, {}", server.rates());
            }
            ctx.progress().set_extra(&extra);
            Ok(out.batch.into())
        })?;
        if stats.traces > 0 {
            ctx.set_metric("traces_this_run", json!(stats.traces));
            ctx.set_metric("probes_per_s", json!(stats.probes_per_s()));
        }
        Ok(())
    }
}

/// Traces and probes done in this run, for progress and metrics.
struct Rate {
    start: Instant,
    traces: u64,
    probes: u64,
}

impl Rate {
    fn new() -> Self {
        Rate {
            start: Instant::now(),
            traces: 0,
            probes: 0,
        }
    }

    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64().max(1e-9)
    }

    fn probes_per_s(&self) -> f64 {
        self.probes as f64 / self.secs()
    }

    /// The progress bar's extra text.
    fn extra(&self) -> String {
        let secs = self.secs();
        format!(
            "{:.1} traces/s, {:.1} probes/s",
            self.traces as f64 / secs,
            self.probes as f64 / secs
        )
    }
}

/// A rollout ready to probe.
struct Prepared<'a> {
    key: &'a str,
    tt: TraceTokens,
    answer_ids: Option<Vec<i64>>,
    reference: Option<String>,
}

struct ProbeChunk {
    batch: RecordBatch,
    traces: u64,
    too_long: u64,
    missing_keys: u64,
    empty_contexts: u64,
}

impl ProbeKernel {
    fn probe_chunk(
        &self,
        model: &Backend,
        setup: &ProbeSetup,
        input: &RolloutColumns,
        steps: &StepIndex,
        key: &str,
        range: Range<usize>,
    ) -> Result<ProbeChunk, OpError> {
        let p = &self.params;
        let text = model.text();
        let max_pos = text.context_length.unwrap_or(usize::MAX);
        let mut b = ProbeBuilder::new(&p.kind);
        let (mut too_long, mut missing_keys, mut empty_contexts) = (0, 0, 0);
        let mut prepared: Vec<Prepared<'_>> = Vec::new();
        for i in range {
            let Some(k) = cell(&input.key, i) else {
                missing_keys += 1;
                continue;
            };
            let context = match input.context.as_ref().and_then(|c| cell(c, i)) {
                Some(c) => c.to_string(),
                None => {
                    let prompt = cell(&input.prompt, i).unwrap_or("");
                    render_text_context(&text, prompt, &p.prompt_template, p.chat_template)
                        .map_err(|e| OpError::context(format!("rollout `{k}`"), e))?
                }
            };
            let step_rows = steps.get(k);
            let texts: Vec<&str> = step_rows.iter().map(|s| s.1.as_str()).collect();
            let tt = trace_tokens(text.tokenizer, &context, &texts)
                .map_err(|e| OpError::context(format!("rollout `{k}`"), e))?;
            if tt.context_len == 0 {
                empty_contexts += 1;
                continue;
            }
            let reference = reference_answer(
                &p.answer_format,
                input.answer.as_ref().and_then(|a| cell(a, i)),
            );
            let answer_ids = match &reference {
                Some(a) if setup.has(ProbeKind::Answer) => Some(
                    text.tokenizer
                        .encode(&answer_continuation(&p.trigger, a), false)
                        .map_err(|e| OpError::context(format!("rollout `{k}`"), e))?,
                ),
                _ => None,
            };
            let need = tt.ids.len() + setup.block_budget(answer_ids.as_ref().map_or(0, Vec::len));
            if need > max_pos {
                too_long += 1;
                continue;
            }
            prepared.push(Prepared {
                key: k,
                tt,
                answer_ids,
                reference,
            });
        }
        let inputs: Vec<TraceInput<'_>> = prepared
            .iter()
            .map(|t| TraceInput {
                ids: &t.tt.ids,
                boundaries: &t.tt.boundaries,
                answer: t.answer_ids.as_deref(),
            })
            .collect();
        let packing = Packing::Cached {
            max_batch_tokens: p.max_batch_tokens,
        };
        let failed = || {
            let (first, last) = match (prepared.first(), prepared.last()) {
                (Some(a), Some(b)) => (a.key, b.key),
                _ => ("", ""),
            };
            format!("probing rollouts `{first}` to `{last}` failed")
        };
        let probed = match model {
            Backend::Local(m) => {
                probe_traces(m, setup, &inputs, packing).map_err(|e| OpError::context(failed(), e))
            }
            Backend::Server(server) => {
                probe_traces_served(server, text.tokenizer, setup, &inputs, p.max_in_flight)
                    .map_err(|e| OpError::context(failed(), e))
            }
        }?;
        let traces = prepared.len() as u64;
        for (t, probes) in prepared.iter().zip(&probed) {
            let k = t.key;
            for (step, probe) in probes.iter().enumerate() {
                let early = (setup.early_tokens > 0)
                    .then(|| -> Result<String, OpError> {
                        let text = text.tokenizer.decode(&probe.early_ids, true).map_err(|e| {
                            OpError::context(format!("rollout `{k}`: decoding the early answer"), e)
                        })?;
                        Ok(cut_early_answer(&text).0)
                    })
                    .transpose()?;
                let early_correct = match (&early, &t.reference) {
                    (Some(e), Some(r)) => Some(early_is_correct(&p.answer_format, e, r)),
                    _ => None,
                };
                b.push(k, step as i32, probe, early.as_deref(), early_correct);
            }
        }
        Ok(ProbeChunk {
            batch: b.finish(key)?,
            traces,
            too_long,
            missing_keys,
            empty_contexts,
        })
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
        let fingerprint = |v: serde_json::Value| match Probe.configure(&Params::from_json(&v), &ctx)
        {
            Ok(k) => serde_json::to_string(&k.params_json()).unwrap(),
            Err(d) => panic!("{d}"),
        };
        let default = fingerprint(json!({}));
        let set = fingerprint(
            json!({"kind": "verbal", "yes": ["Y"], "no": ["N"], "question": "?",
            "early_answer_tokens": 3, "chat_template": true, "max_packed_tokens": 100, "chunk_rows": 4}),
        );
        assert_eq!(
            default,
            r#"{"answer_format":"auto","chat_template":false,"chunk_rows":16,"early_answer_tokens":8,"kind":"answer","no":[" No","No"," no"],"prompt_template":"{prompt}","question":"\n\nBased on the reasoning so far, is the final answer already determined? Answer Yes or No:","trigger":"\n\nThe answer is","yes":[" Yes","Yes"," yes"]}"#
        );
        assert_eq!(
            set,
            r#"{"answer_format":"auto","chat_template":true,"chunk_rows":4,"early_answer_tokens":3,"kind":"verbal","no":["N"],"prompt_template":"{prompt}","question":"?","trigger":"\n\nThe answer is","yes":["Y"]}"#
        );
        // A one-kind list is that kind; several kinds are a list, in the order written
        // (the first gives `value`).
        assert_eq!(fingerprint(json!({"kind": ["answer"]})), default);
        let both = |kinds| {
            let f: serde_json::Value =
                serde_json::from_str(&fingerprint(json!({ "kind": kinds }))).unwrap();
            f["kind"].clone()
        };
        assert_eq!(
            both(json!(["verbal", "answer"])),
            json!(["verbal", "answer"])
        );
        assert_eq!(
            both(json!(["answer", "verbal"])),
            json!(["answer", "verbal"])
        );
    }

    #[test]
    fn combined_kinds_declare_their_value_columns() {
        let ctx = ConfigureContext {
            node_id: "n".into(),
            base_dir: ".".into(),
            seed: 1,
        };
        let columns = |v: serde_json::Value| match Probe.configure(&Params::from_json(&v), &ctx) {
            Ok(k) => k.output_columns(&BTreeMap::new()).names,
            Err(d) => panic!("{d}"),
        };
        let single = columns(json!({"kind": "verbal"}));
        assert!(!single.iter().any(|c| c == "verbal_value"), "{single:?}");
        let both = columns(json!({"kind": ["verbal", "answer"]}));
        for c in ["value", "early_correct", "verbal_value", "answer_value"] {
            assert!(both.iter().any(|n| n == c), "{c}: {both:?}");
        }
        let err = match Probe.configure(&Params::from_json(&json!({"kind": []})), &ctx) {
            Ok(_) => panic!("an empty kind list configured"),
            Err(d) => d.to_string(),
        };
        assert!(err.contains("`kind`"), "{err}");
    }
}
