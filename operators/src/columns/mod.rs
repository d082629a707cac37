//! Arrow column readers every operator shares: a table's columns as text, integers,
//! floats or lists, with errors that name the column. One home, so every operator reads
//! (and complains about) its inputs the same way.

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use sspo_engine::OpError;

pub mod lists;

/// A column of `table` cast to Utf8, if it exists.
pub fn utf8_column(table: &RecordBatch, name: &str) -> Result<Option<StringArray>, OpError> {
    let Some(col) = table.column_by_name(name) else {
        return Ok(None);
    };
    let cast: ArrayRef = match col.data_type() {
        DataType::Utf8 => col.clone(),
        _ => arrow::compute::cast(col, &DataType::Utf8)
            .map_err(|e| OpError::msg(format!("column `{name}` is not text: {e}")))?,
    };
    Ok(cast.as_any().downcast_ref::<StringArray>().cloned())
}

/// The text of row `i`, `None` when null.
pub fn cell(a: &StringArray, i: usize) -> Option<&str> {
    a.is_valid(i).then(|| a.value(i))
}

/// The key column a per-trace output keeps: `rollout_id` when the input has it (rows of
/// `generate`), else `id` (a user's own traces).
pub fn key_column(has_rollout_id: bool) -> &'static str {
    if has_rollout_id {
        "rollout_id"
    } else {
        "id"
    }
}
