//! Arrow column readers every operator shares: a table's columns as text, integers,
//! floats or booleans, with errors that name the column. One home, so every operator reads
//! (and complains about) its inputs the same way.

use std::fmt::Display;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, LargeStringArray, PrimitiveArray, RecordBatch,
    StringArray, StringViewArray,
};
use arrow::datatypes::{ArrowPrimitiveType, DataType};
use arrow::error::ArrowError;
use sspo_engine::OpError;

pub mod lists;

/// A column of `table` cast to Utf8, if it exists.
pub fn utf8_column(table: &RecordBatch, name: &str) -> Result<Option<StringArray>, OpError> {
    let Some(col) = table.column_by_name(name) else {
        return Ok(None);
    };
    as_utf8(col)
        .map(Some)
        .map_err(|e| OpError::context(format!("column `{name}` is not text"), e))
}

/// A column as UTF-8 text: other string types cast, numbers and booleans formatted.
pub fn as_utf8(col: &ArrayRef) -> Result<StringArray, ArrowError> {
    let cast = match col.data_type() {
        DataType::Utf8 => col.clone(),
        _ => arrow::compute::cast(col, &DataType::Utf8)?,
    };
    Ok(cast.as_string::<i32>().clone())
}

/// The text of row `i`, `None` when null.
pub fn cell(a: &StringArray, i: usize) -> Option<&str> {
    a.is_valid(i).then(|| a.value(i))
}

/// The value of row `i` of a number column, `None` when null.
pub fn value<T: ArrowPrimitiveType>(a: &PrimitiveArray<T>, i: usize) -> Option<T::Native> {
    a.is_valid(i).then(|| a.value(i))
}

/// The value of row `i` of a boolean column, `None` when null.
pub fn flag(a: &BooleanArray, i: usize) -> Option<bool> {
    a.is_valid(i).then(|| a.value(i))
}

/// One input table and the port it came in on, so that its readers name both the
/// table and the column when a column is missing or has the wrong type.
#[derive(Clone, Copy)]
pub struct PortTable<'a> {
    pub port: &'a str,
    pub table: &'a RecordBatch,
}

impl<'a> PortTable<'a> {
    pub fn new(port: &'a str, table: &'a RecordBatch) -> Self {
        Self { port, table }
    }

    /// The column `name` as read by `read` (one of the readers below), or an error saying
    /// the table lacks it.
    pub fn need<T>(
        &self,
        name: &str,
        read: fn(&Self, &str) -> Result<Option<T>, OpError>,
    ) -> Result<T, OpError> {
        read(self, name)?.ok_or_else(|| {
            OpError::msg(format!("the `{}` table has no column `{name}`", self.port))
        })
    }

    /// A column as text, if it exists.
    pub fn utf8(&self, name: &str) -> Result<Option<StringArray>, OpError> {
        utf8_column(self.table, name)
    }

    /// A column cast to the number type `T` (e.g. `Int64Type`), if it exists.
    pub fn numbers<T: ArrowPrimitiveType>(
        &self,
        name: &str,
    ) -> Result<Option<PrimitiveArray<T>>, OpError> {
        Ok(self
            .cast(name, &T::DATA_TYPE)?
            .map(|a| a.as_primitive::<T>().clone()))
    }

    /// A column cast to booleans, if it exists.
    pub fn flags(&self, name: &str) -> Result<Option<BooleanArray>, OpError> {
        Ok(self
            .cast(name, &DataType::Boolean)?
            .map(|a| a.as_boolean().clone()))
    }

    fn cast(&self, name: &str, to: &DataType) -> Result<Option<ArrayRef>, OpError> {
        let Some(col) = self.table.column_by_name(name) else {
            return Ok(None);
        };
        arrow::compute::cast(col, to).map(Some).map_err(|e| {
            OpError::context(
                format!(
                    "column `{name}` of the `{}` table is {}, not {to}",
                    self.port,
                    col.data_type()
                ),
                e,
            )
        })
    }
}

/// A string column of any string type (`Utf8`, `LargeUtf8`, `Utf8View`), read without a
/// copy.
pub enum TextColumn<'a> {
    Utf8(&'a StringArray),
    Large(&'a LargeStringArray),
    View(&'a StringViewArray),
}

impl<'a> TextColumn<'a> {
    /// `None` when `col` is not a string column.
    pub fn new(col: &'a ArrayRef) -> Option<Self> {
        Some(match col.data_type() {
            DataType::Utf8 => TextColumn::Utf8(col.as_string::<i32>()),
            DataType::LargeUtf8 => TextColumn::Large(col.as_string::<i64>()),
            DataType::Utf8View => TextColumn::View(col.as_string_view()),
            _ => return None,
        })
    }

    /// The text of row `i`, `None` when null.
    pub fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            TextColumn::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            TextColumn::Large(a) => a.is_valid(i).then(|| a.value(i)),
            TextColumn::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

/// `n` for an `Int32` output column; `what` names the number in the error.
pub fn to_i32<N: Copy + Display + TryInto<i32>>(n: N, what: &str) -> Result<i32, OpError> {
    n.try_into()
        .map_err(|_| OpError::msg(format!("{what} {n} does not fit in a 32-bit column")))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ListArray, StringArray};
    use arrow::datatypes::{Field, Int32Type, Int64Type, Schema};

    use super::*;

    fn table() -> RecordBatch {
        let text: ArrayRef = Arc::new(StringArray::from(vec![Some("1"), None]));
        let spans: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1)]),
            None,
        ]));
        let schema = Schema::new(vec![
            Field::new("step", DataType::Utf8, true),
            Field::new("spans", spans.data_type().clone(), true),
        ]);
        RecordBatch::try_new(Arc::new(schema), vec![text, spans]).unwrap()
    }

    #[test]
    fn port_table_errors_name_table_and_column() {
        let batch = table();
        let t = PortTable::new("steps", &batch);
        let err = t.need("text", PortTable::utf8).err().unwrap().to_string();
        assert_eq!(err, "the `steps` table has no column `text`");
        let err = t.numbers::<Int64Type>("spans").err().unwrap().to_string();
        assert!(
            err.starts_with("column `spans` of the `steps` table is List("),
            "{err}"
        );
        assert!(err.contains(", not Int64: "), "{err}");
        assert!(t.numbers::<Int64Type>("missing").unwrap().is_none());
        let steps = t.need("step", PortTable::numbers::<Int64Type>).unwrap();
        assert_eq!((value(&steps, 0), value(&steps, 1)), (Some(1), None));
    }

    #[test]
    fn getters_and_to_i32() {
        let batch = table();
        let text = PortTable::new("steps", &batch)
            .need("step", PortTable::utf8)
            .unwrap();
        assert_eq!((cell(&text, 0), cell(&text, 1)), (Some("1"), None));
        assert_eq!(to_i32(7usize, "offset").unwrap(), 7);
        let err = to_i32(1i64 << 40, "a token count")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "a token count 1099511627776 does not fit in a 32-bit column"
        );
    }
}
