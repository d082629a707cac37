//! `train`: fine-tunes the model on the `model` port with `sft`, `dpo`, `sspo` (default)
//! or `step_pg` on the rows of the `data` table, and writes the result as a Hugging Face
//! model directory (the node's artifact, usable on any downstream `model` port).
//!
//! * Tokenisation ([`examples`]): the context (`context` column, or for `sft` the
//!   `prompt` column rendered like `generate` does) followed by the steps, with
//!   [`crate::step_tokens::trace_tokens`], then the model's EOS token (the model must
//!   learn to stop). Leading steps that chosen and rejected share are masked out of both
//!   sides.
//! * Reference log-probs ([`reference`]): computed once with the input model before the
//!   first step and cached in the scratch directory as Parquet (`ref_logprobs-*.parquet`);
//!   a resumed run reads them back.
//! * Data order ([`order`]): a seeded shuffle per epoch (run seed, epoch), so the examples
//!   of any optimizer step are known from the step number alone.
//! * Checkpoints ([`checkpoint`]) every `checkpoint_every` optimizer steps: the engine's
//!   checkpointed resume ([`sspo_engine::checkpoint`]) writes them (weights, AdamW
//!   moments, step, and the metrics rows of the interval) and commits the interval's
//!   metrics rows as one chunk, so a killed run resumes to the final weights of an
//!   uninterrupted one.
//! * The loop ([`trainer`]) and the metrics table ([`metrics`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use sspo_engine::{
    Columns, ConfigureContext, Diagnostics, NodeKernel, OpError, Operator, Params, Port, RunContext,
};

mod checkpoint;
mod examples;
mod metrics;
mod order;
mod params;
mod reference;
mod trainer;

pub use metrics::TRAIN_COLUMNS;
pub use params::{LossKind, NllSpan, TrainParams};

/// The `train` operator.
pub struct Train;

impl Operator for Train {
    fn name(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "fine-tunes a model (sft, dpo, sspo, step_pg) and writes it as a HF model directory"
    }
    fn ports(&self) -> &'static [Port] {
        const PORTS: &[Port] = &[
            Port::model("model", "the model to fine-tune (and the reference policy)")
                .local_weights(),
            Port::table(
                "data",
                "`sft`: prompt and completion columns; preference losses: `pair` rows (`context`, `chosen_steps`, `rejected_steps`, `chosen_adv`, `rejected_adv`)",
            ),
        ];
        PORTS
    }
    fn configure(
        &self,
        params: &Params,
        _ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let p: TrainParams = params.parse()?;
        p.check(params).into_result()?;
        let fingerprint = params.fingerprint_json(&p, &params::NOT_FINGERPRINTED)?;
        Ok(Arc::new(TrainKernel {
            params: p,
            fingerprint,
        }))
    }
}

/// A configured `train` node.
pub struct TrainKernel {
    pub params: TrainParams,
    /// The params as fingerprinted (without the logging and pruning settings).
    fingerprint: serde_json::Value,
}

impl NodeKernel for TrainKernel {
    fn params_json(&self) -> serde_json::Value {
        self.fingerprint.clone()
    }

    fn required_columns(&self) -> Vec<(&'static str, Vec<String>)> {
        let p = &self.params;
        let cols = if p.loss.is_preference() {
            let mut c = vec![
                p.context.clone(),
                p.chosen_steps.clone(),
                p.rejected_steps.clone(),
            ];
            if p.loss.needs_adv() {
                c.push(p.chosen_adv.clone());
                c.push(p.rejected_adv.clone());
            }
            c
        } else {
            vec![p.prompt.clone(), p.completion.clone()]
        };
        vec![("data", cols)]
    }

    fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
        Columns::exact(TRAIN_COLUMNS)
    }

    fn produces_model(&self) -> bool {
        true
    }

    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError> {
        trainer::run(&self.params, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `params_json()` of the default params as earlier builds computed it: fingerprints
    /// (and so the caching of existing runs) depend on these bytes.
    const DEFAULT_PARAMS_JSON: &str = r#"{"adam_beta1":0.9,"adam_beta2":0.999,"adam_eps":1e-8,"alpha":1.0,"batch_size":4,"beta":0.1,"chat_template":false,"checkpoint_every":50,"chosen_adv":"chosen_adv","chosen_steps":"chosen_steps","clip_eps":0.2,"completion":"response","context":"context","dtype":null,"epochs":1,"eta":0.1,"grad_accum":1,"loss":"sspo","lr":1e-6,"max_grad_norm":1.0,"max_length":null,"max_steps":null,"nll_span":"completion","prompt":"prompt","prompt_template":"{prompt}","rejected_adv":"rejected_adv","rejected_steps":"rejected_steps","w_max":2.0,"w_min":0.0,"warmup":0.1,"weight_decay":0.0}"#;

    fn kernel(params: serde_json::Value) -> Result<Arc<dyn NodeKernel>, Diagnostics> {
        let ctx = ConfigureContext {
            node_id: "train".into(),
            base_dir: ".".into(),
            seed: 0,
        };
        Train.configure(&Params::from_json(&params), &ctx)
    }

    #[test]
    fn default_params_fingerprint_as_before() {
        let k = kernel(serde_json::json!({})).unwrap();
        assert_eq!(
            serde_json::to_string(&k.params_json()).unwrap(),
            DEFAULT_PARAMS_JSON
        );
        // Logging cadence and how many checkpoints are kept do not change the result.
        let other = kernel(serde_json::json!({"log_every": 3, "keep_checkpoints": 5})).unwrap();
        assert_eq!(other.params_json(), k.params_json());
        let lr = kernel(serde_json::json!({"lr": 2e-6})).unwrap();
        assert_ne!(lr.params_json(), k.params_json());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_located_errors() {
        let err = kernel(serde_json::json!({"lrr": 1e-6}))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown key `lrr`"), "{err}");
        let err = kernel(serde_json::json!({"epochs": 0, "batch_size": 0}))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("`epochs` must be at least 1"), "{err}");
        assert!(err.contains("`batch_size` must be at least 1"), "{err}");
    }
}
