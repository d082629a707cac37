//! What a `train` checkpoint holds. The engine ([`sspo_engine::checkpoint`]) names,
//! writes, chooses and prunes the checkpoint directories and keeps the interval's
//! metrics rows in their `state.json`; `train` adds the weights (`model.safetensors`),
//! the AdamW moments (`optimizer.safetensors`) and its own fields of `state.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sspo_engine::OpError;
use sspo_model::train::{load_training_state, save_training_state, AdamW};
use sspo_model::Model;

/// `train`'s fields of a checkpoint's `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Usable rows (examples) of the data table.
    pub examples: u64,
    /// Epoch and position in it of the next step (informational: both follow from the
    /// step).
    pub epoch: u64,
    pub batch_in_epoch: u64,
}

impl TrainState {
    /// The state after `done` steps.
    pub fn after(done: u64, examples: usize, steps_per_epoch: u64) -> Self {
        Self {
            examples: examples as u64,
            epoch: done / steps_per_epoch,
            batch_in_epoch: done % steps_per_epoch,
        }
    }
}

/// Writes the weights and the optimizer moments into `dir`.
pub fn save(dir: &Path, model: &Model, optim: &AdamW) -> Result<(), OpError> {
    save_training_state(dir, &model.decoder, optim)
        .map_err(|e| OpError::context("writing a checkpoint", e))
}

/// Restores the weights and the optimizer moments of the checkpoint in `dir` (`step`
/// optimizer steps done).
pub fn load(dir: &Path, model: &Model, optim: &mut AdamW, step: u64) -> Result<(), OpError> {
    load_training_state(dir, &model.decoder, optim, step)
        .map_err(|e| OpError::context(format!("loading checkpoint {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::super::metrics::MetricRow;
    use super::*;
    use sspo_engine::checkpoint::CheckpointState;

    /// `state.json` as runs before the engine wrote it: a checkpoint of an interrupted
    /// run of an earlier build resumes, and a new one is byte-identical.
    const EARLIER_STATE_JSON: &str = "{\n  \"fingerprint\": \"abc123\",\n  \"step\": 4,\n  \"total_steps\": 6,\n  \"examples\": 5,\n  \"epoch\": 1,\n  \"batch_in_epoch\": 1,\n  \"pending\": [\n    {\n      \"step\": 3,\n      \"epoch\": 1,\n      \"loss\": 4601065449604513792,\n      \"lr\": 4517329193108106637,\n      \"grad_norm\": 4604180019048437077,\n      \"margin\": 13821547256400052224,\n      \"pref_acc\": null,\n      \"tokens_per_s\": 4653144203864309760\n    },\n    {\n      \"step\": 4,\n      \"epoch\": 1,\n      \"loss\": 4601065449604513792,\n      \"lr\": 4517329193108106637,\n      \"grad_norm\": 4604180019048437077,\n      \"margin\": 13821547256400052224,\n      \"pref_acc\": 4607182418800017408,\n      \"tokens_per_s\": 4653144203864309760\n    }\n  ]\n}";

    #[test]
    fn state_json_is_that_of_earlier_runs() {
        let row = MetricRow {
            step: 3,
            epoch: 1,
            loss: 0.410_439_997_911_453_25,
            lr: 1e-6,
            grad_norm: 2.0 / 3.0,
            margin: Some(-0.25),
            pref_acc: None,
            tokens_per_s: 1_234.5,
        };
        let state = CheckpointState {
            fingerprint: "abc123".into(),
            step: 4,
            total_steps: 6,
            node: TrainState::after(4, 5, 3),
            pending: vec![
                row.clone(),
                MetricRow {
                    step: 4,
                    pref_acc: Some(1.0),
                    ..row
                },
            ],
        };
        assert_eq!(
            serde_json::to_string_pretty(&state).unwrap(),
            EARLIER_STATE_JSON
        );
        let back: CheckpointState<TrainState, MetricRow> =
            serde_json::from_str(EARLIER_STATE_JSON).unwrap();
        assert_eq!(back, state);
    }
}
