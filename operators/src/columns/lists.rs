//! List columns (`List<Utf8>`, `List<Float64>`, or the same lists written as JSON text),
//! as the pair table carries its steps and advantages, and integer columns.

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use sspo_engine::OpError;

/// A column of text lists: `list<utf8>` (or large list), or text holding a JSON array.
/// A null cell, an unreadable JSON text or a list with a null item reads as `None`.
pub fn text_lists(table: &RecordBatch, name: &str) -> Result<Vec<Option<Vec<String>>>, OpError> {
    list_rows(required(table, name)?, name)?
        .into_iter()
        .map(|r| match r {
            None => Ok(None),
            Some(ListCell::Json(v)) => Ok(v.as_array().and_then(|a| {
                a.iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })),
            Some(ListCell::Arrow(a)) => {
                let s = arrow::compute::cast(&a, &DataType::Utf8)
                    .map_err(|e| OpError::context(format!("column `{name}`"), e))?;
                let s = s.as_string::<i32>();
                Ok((0..s.len())
                    .map(|i| s.is_valid(i).then(|| s.value(i).to_string()))
                    .collect::<Option<Vec<_>>>())
            }
        })
        .collect()
}

/// A column of number lists (like [`text_lists`]).
pub fn float_lists(table: &RecordBatch, name: &str) -> Result<Vec<Option<Vec<f64>>>, OpError> {
    list_rows(required(table, name)?, name)?
        .into_iter()
        .map(|r| match r {
            None => Ok(None),
            Some(ListCell::Json(v)) => Ok(v
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_f64()).collect::<Option<Vec<_>>>())),
            Some(ListCell::Arrow(a)) => {
                let f = arrow::compute::cast(&a, &DataType::Float64)
                    .map_err(|e| OpError::context(format!("column `{name}` is not numeric"), e))?;
                let f = f.as_primitive::<Float64Type>();
                Ok((0..f.len())
                    .map(|i| f.is_valid(i).then(|| f.value(i)))
                    .collect::<Option<Vec<_>>>())
            }
        })
        .collect()
}

/// One cell of a list column: an Arrow list, or the JSON value its text holds.
pub enum ListCell {
    Arrow(ArrayRef),
    Json(serde_json::Value),
}

/// The cells of a list column (`None` for a null cell or unreadable JSON text).
pub fn list_rows(col: &ArrayRef, name: &str) -> Result<Vec<Option<ListCell>>, OpError> {
    let n = col.len();
    match col.data_type() {
        DataType::List(_) => {
            let l = col.as_list::<i32>();
            Ok((0..n)
                .map(|i| l.is_valid(i).then(|| ListCell::Arrow(l.value(i))))
                .collect())
        }
        DataType::LargeList(_) => {
            let l = col.as_list::<i64>();
            Ok((0..n)
                .map(|i| l.is_valid(i).then(|| ListCell::Arrow(l.value(i))))
                .collect())
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s = arrow::compute::cast(col, &DataType::Utf8)?;
            let s = s.as_string::<i32>();
            Ok((0..n)
                .map(|i| {
                    if s.is_null(i) {
                        return None;
                    }
                    // Unparsable text reads as a null cell: the row is counted and skipped.
                    serde_json::from_str(s.value(i)).ok().map(ListCell::Json)
                })
                .collect())
        }
        other => Err(OpError::msg(format!(
            "column `{name}` must be a list (or JSON text of a list), found {other}"
        ))),
    }
}

/// A column of `table` cast to Int64, if it exists.
pub fn int_column(table: &RecordBatch, name: &str) -> Result<Option<Int64Array>, OpError> {
    let Some(col) = table.column_by_name(name) else {
        return Ok(None);
    };
    let cast = arrow::compute::cast(col, &DataType::Int64)
        .map_err(|e| OpError::context(format!("column `{name}` is not an integer"), e))?;
    Ok(cast.as_any().downcast_ref::<Int64Array>().cloned())
}

fn required<'t>(table: &'t RecordBatch, name: &str) -> Result<&'t ArrayRef, OpError> {
    table
        .column_by_name(name)
        .ok_or_else(|| OpError::msg(format!("input has no column `{name}`")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, ListBuilder, StringArray, StringBuilder};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn list_columns_read_from_arrow_lists_and_json_text() {
        let mut lb = ListBuilder::new(StringBuilder::new());
        lb.values().append_value("a");
        lb.values().append_value("b");
        lb.append(true);
        lb.append(false);
        let json = StringArray::from(vec![Some("[\"x\", \"y \"]"), Some("not json")]);
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "l",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
            Field::new("j", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(lb.finish()), Arc::new(json)]).unwrap();
        assert_eq!(
            text_lists(&b, "l").unwrap(),
            vec![Some(vec!["a".to_string(), "b".to_string()]), None]
        );
        assert_eq!(
            text_lists(&b, "j").unwrap(),
            vec![Some(vec!["x".to_string(), "y ".to_string()]), None]
        );
        let nums = StringArray::from(vec![Some("[0.5, -1]"), None]);
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Utf8, true)]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(nums)]).unwrap();
        assert_eq!(
            float_lists(&b, "a").unwrap(),
            vec![Some(vec![0.5, -1.0]), None]
        );
    }

    #[test]
    fn missing_and_non_list_columns_are_named() {
        let ints = Int32Array::from(vec![Some(3), None]);
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int32, true)]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(ints)]).unwrap();
        let err = text_lists(&b, "steps").unwrap_err().to_string();
        assert_eq!(err, "input has no column `steps`");
        let err = float_lists(&b, "n").unwrap_err().to_string();
        assert!(err.contains("column `n` must be a list"), "{err}");
        let n = int_column(&b, "n").unwrap().unwrap();
        assert_eq!((n.value(0), n.is_null(1)), (3, true));
        assert!(int_column(&b, "absent").unwrap().is_none());
    }
}
