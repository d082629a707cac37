//! What `evaluate` reads besides the generations: the prompt rows it keeps, their oracle
//! traces, and which of the models is the base.

use arrow::array::{Array, RecordBatch, StringArray};
use sspo_engine::OpError;
use sspo_model::TextTokenizer;

use crate::columns::{cell, utf8_column};

/// The default oracle column (written by `source` with `synth:`).
pub const DEFAULT_ORACLE_COLUMN: &str = "oracle_trace";

/// Rows of `table` whose `split` is `split` (all rows when `None` or when the table has
/// no `split` column), then the first `limit` of them.
pub fn select_rows(
    table: &RecordBatch,
    split: Option<&str>,
    limit: Option<usize>,
) -> Result<RecordBatch, OpError> {
    let mut out = table.clone();
    if let Some(want) = split {
        if let Some(col) = utf8_column(table, "split")? {
            let keep: arrow::array::BooleanArray = (0..col.len())
                .map(|i| Some(cell(&col, i) == Some(want)))
                .collect();
            out = arrow::compute::filter_record_batch(table, &keep)?;
            if out.num_rows() == 0 && table.num_rows() > 0 {
                let mut seen: Vec<&str> = (0..col.len()).filter_map(|i| cell(&col, i)).collect();
                seen.sort_unstable();
                seen.dedup();
                seen.truncate(8);
                return Err(OpError::msg(format!(
                    "no prompt row has `split` = `{want}` (the table's splits: {}); give the source a `split:` or set `split: all`",
                    if seen.is_empty() {
                        "none".to_string()
                    } else {
                        seen.join(", ")
                    }
                )));
            }
        }
    }
    if let Some(n) = limit {
        out = out.slice(0, n.min(out.num_rows()));
    }
    Ok(out)
}

/// The oracle text column: the one named, which must exist, or `oracle_trace` when the
/// table has it.
pub(super) fn oracle_column(
    table: &RecordBatch,
    name: Option<&str>,
) -> Result<Option<StringArray>, OpError> {
    match name {
        Some(n) => utf8_column(table, n)?.map(Some).ok_or_else(|| {
            OpError::msg(format!(
                "the `prompts` table has no column `{n}` (`oracle`)"
            ))
        }),
        None => utf8_column(table, DEFAULT_ORACLE_COLUMN),
    }
}

/// Tokens of a row's oracle text under `model`'s tokenizer, plus one for the token that
/// ends a response (as `n_tokens` counts the eos token); `None` when the row has none.
pub(super) fn oracle_length(
    tokenizer: &TextTokenizer,
    oracle: Option<&StringArray>,
    row: usize,
) -> Option<i32> {
    let text = cell(oracle?, row)?;
    if text.trim().is_empty() {
        return None;
    }
    let n = tokenizer.encode(text, false).ok()?.len() + 1;
    Some(i32::try_from(n).unwrap_or(i32::MAX))
}

/// The index of the base model among `names`.
pub fn base_index(names: &[String], base: Option<&str>) -> Result<usize, OpError> {
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(OpError::msg(format!(
                "model `{n}` is listed twice on port `models`"
            )));
        }
    }
    match base {
        None => Ok(0),
        Some(b) => names.iter().position(|n| n == b).ok_or_else(|| {
            OpError::msg(format!(
                "`base: {b}` is not one of the models on port `models` ({})",
                names.join(", ")
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::ArrayRef;
    use std::sync::Arc;

    #[test]
    fn split_filter_and_limit() {
        let t = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])) as ArrayRef,
            ),
            (
                "split",
                Arc::new(StringArray::from(vec![
                    Some("test"),
                    Some("train"),
                    None,
                    Some("test"),
                ])) as ArrayRef,
            ),
        ])
        .unwrap();
        let ids = |b: &RecordBatch| -> Vec<String> {
            let c = utf8_column(b, "id").unwrap().unwrap();
            (0..c.len()).map(|i| c.value(i).to_string()).collect()
        };
        assert_eq!(
            ids(&select_rows(&t, Some("test"), None).unwrap()),
            ["a", "d"]
        );
        assert_eq!(ids(&select_rows(&t, Some("test"), Some(1)).unwrap()), ["a"]);
        assert_eq!(
            ids(&select_rows(&t, None, Some(3)).unwrap()),
            ["a", "b", "c"]
        );
        let err = select_rows(&t, Some("dev"), None).unwrap_err().to_string();
        assert!(
            err.contains("test, train") && err.contains("split: all"),
            "{err}"
        );
        let no_split = t.project(&[0]).unwrap();
        assert_eq!(
            select_rows(&no_split, Some("test"), None)
                .unwrap()
                .num_rows(),
            4
        );
    }

    #[test]
    fn base_must_be_listed_once() {
        let names: Vec<String> = vec!["a".into(), "b".into()];
        assert_eq!(base_index(&names, None).unwrap(), 0);
        assert_eq!(base_index(&names, Some("b")).unwrap(), 1);
        let err = base_index(&names, Some("c")).unwrap_err().to_string();
        assert!(err.contains("`base: c`") && err.contains("a, b"), "{err}");
        let twice: Vec<String> = vec!["a".into(), "a".into()];
        assert!(base_index(&twice, None).is_err());
    }
}
