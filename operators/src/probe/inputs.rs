//! The input tables of `probe`: step texts by rollout key, and the rollouts' columns.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use sspo_engine::OpError;

use crate::columns::{cell, utf8_column};

/// Step texts by key, in step order.
pub(super) struct StepIndex {
    map: HashMap<String, Vec<(i32, String)>>,
}

impl StepIndex {
    pub(super) fn new(steps: &RecordBatch, key: &str) -> Result<Self, OpError> {
        let keys = utf8_column(steps, key)?
            .ok_or_else(|| OpError::msg(format!("the `steps` table has no `{key}` column")))?;
        let text = utf8_column(steps, "text")?
            .ok_or_else(|| OpError::msg("the `steps` table has no `text` column"))?;
        let step_col = steps
            .column_by_name("step")
            .ok_or_else(|| OpError::msg("the `steps` table has no `step` column"))?;
        let step_col = arrow::compute::cast(step_col, &DataType::Int32)?;
        let step = step_col
            .as_any()
            .downcast_ref::<arrow::array::Int32Array>()
            .ok_or_else(|| OpError::msg("`step` is not an integer column"))?;
        let mut map: HashMap<String, Vec<(i32, String)>> = HashMap::new();
        for i in 0..steps.num_rows() {
            let (Some(k), Some(t)) = (cell(&keys, i), cell(&text, i)) else {
                continue;
            };
            if step.is_null(i) {
                continue;
            }
            map.entry(k.to_string())
                .or_default()
                .push((step.value(i), t.to_string()));
        }
        for v in map.values_mut() {
            v.sort_by_key(|s| s.0);
        }
        Ok(StepIndex { map })
    }

    pub(super) fn get(&self, key: &str) -> &[(i32, String)] {
        self.map.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Step rows whose key is not a rollout.
    pub(super) fn orphans(&self, rollouts: &RolloutColumns) -> u64 {
        let keys: HashSet<&str> = (0..rollouts.key.len())
            .filter_map(|i| cell(&rollouts.key, i))
            .collect();
        self.map
            .iter()
            .filter(|(k, _)| !keys.contains(k.as_str()))
            .map(|(_, v)| v.len() as u64)
            .sum()
    }
}

/// The columns of the `rollouts` table that probing reads, as text.
pub(super) struct RolloutColumns {
    pub(super) key: StringArray,
    pub(super) context: Option<StringArray>,
    pub(super) prompt: StringArray,
    pub(super) answer: Option<StringArray>,
}

impl RolloutColumns {
    pub(super) fn new(table: &RecordBatch, key: &str) -> Result<Self, OpError> {
        Ok(RolloutColumns {
            key: utf8_column(table, key)?.ok_or_else(|| {
                OpError::msg(format!(
                    "the `rollouts` table has no `{key}` column (the key of the `steps` table)"
                ))
            })?,
            context: utf8_column(table, "context")?,
            prompt: utf8_column(table, "prompt")?
                .ok_or_else(|| OpError::msg("the `rollouts` table has no `prompt` column"))?,
            answer: utf8_column(table, "answer")?,
        })
    }
}
