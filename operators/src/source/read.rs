//! Reading data files (JSONL, JSON, Parquet, CSV) into one Arrow record batch.
//!
//! JSON values keep their type when a column is consistent across rows (all strings,
//! all integers, all numbers, all booleans); a column that mixes types or holds nested
//! values becomes text (strings as they are, everything else as JSON). Column order is
//! the order in which keys first appear.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Serialize;
use serde_json::Value;
use sspo_engine::OpError;

/// The format of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// One JSON object per line (`.jsonl`, `.ndjson`).
    Jsonl,
    /// An array of objects, or an object holding one (`{"data": [...]}`) (`.json`).
    Json,
    /// Apache Parquet (`.parquet`, `.pq`).
    Parquet,
    /// Comma-separated values with a header row (`.csv`).
    Csv,
}

impl FileFormat {
    /// The format a file's extension names.
    pub fn from_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "jsonl" | "ndjson" => FileFormat::Jsonl,
            "json" => FileFormat::Json,
            "parquet" | "pq" => FileFormat::Parquet,
            "csv" => FileFormat::Csv,
            _ => return None,
        })
    }
}

/// What `source` does with a line of a JSONL file that is not a JSON object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRows {
    /// The run fails at the first such line, naming its file and line.
    #[default]
    Fail,
    /// Such lines are skipped and counted (large scraped files have a few).
    Skip,
}

/// A file as read: its rows, and the 1-based numbers of the lines skipped as malformed.
pub struct ReadFile {
    pub batch: RecordBatch,
    pub skipped_lines: Vec<usize>,
}

/// Reads one file. For CSV, `text_columns` names (given the header) the columns to read
/// as text whatever they look like (ids such as `007` must keep their zeros).
/// `bad_rows` applies to JSONL lines; the other formats fail as a whole.
pub fn read_file(
    path: &Path,
    format: FileFormat,
    text_columns: &dyn Fn(&[String]) -> Vec<String>,
    bad_rows: BadRows,
) -> Result<ReadFile, OpError> {
    let shown = path.display().to_string();
    let whole = |batch: RecordBatch| ReadFile {
        batch,
        skipped_lines: Vec::new(),
    };
    match format {
        FileFormat::Jsonl => {
            let text = read_text(path)?;
            let mut rows = Vec::new();
            let mut skipped_lines = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Ordered<Value>>(line) {
                    Ok(row) => rows.push(row.0),
                    Err(_) if bad_rows == BadRows::Skip => skipped_lines.push(i + 1),
                    Err(e) => {
                        return Err(OpError::context(
                            format!("{shown}:{}: invalid JSON", i + 1),
                            e,
                        ))
                    }
                }
            }
            Ok(ReadFile {
                batch: rows_to_batch(rows)?,
                skipped_lines,
            })
        }
        FileFormat::Json => {
            let text = read_text(path)?;
            let doc: JsonDoc = serde_json::from_str(&text).map_err(|e| {
                if e.is_data() {
                    OpError::msg(format!(
                        "{shown}: expected an array of objects, or an object holding one (e.g. {{\"data\": [...]}})"
                    ))
                } else {
                    OpError::context(format!("{shown}: invalid JSON"), e)
                }
            })?;
            let rows = match doc {
                JsonDoc::Rows(rows) => rows,
                JsonDoc::Wrapped(fields) => pick_rows(&shown, fields.0)?,
            };
            rows_to_batch(rows.into_iter().map(|r| r.0).collect()).map(whole)
        }
        FileFormat::Parquet => {
            let file = File::open(path).map_err(|e| OpError::context(shown.clone(), e))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.build())
                .map_err(|e| {
                    OpError::context(format!("{shown}: not a readable Parquet file"), e)
                })?;
            let schema = arrow::array::RecordBatchReader::schema(&reader);
            let batches = reader
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| OpError::context(shown.clone(), e))?;
            Ok(whole(arrow::compute::concat_batches(&schema, &batches)?))
        }
        FileFormat::Csv => {
            let format = arrow::csv::reader::Format::default().with_header(true);
            let file = File::open(path).map_err(|e| OpError::context(shown.clone(), e))?;
            let (schema, _) = format.infer_schema(file, None).map_err(|e| {
                OpError::context(format!("{shown}: cannot read the CSV header and rows"), e)
            })?;
            let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            let text = text_columns(&names);
            let fields: Vec<Field> = schema
                .fields()
                .iter()
                .map(|f| {
                    let ty = if text.contains(f.name()) {
                        DataType::Utf8
                    } else {
                        f.data_type().clone()
                    };
                    Field::new(f.name(), ty, true)
                })
                .collect();
            let schema = Arc::new(Schema::new(fields));
            let file = File::open(path).map_err(|e| OpError::context(shown.clone(), e))?;
            let reader = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_format(format)
                .with_batch_size(8192)
                .build(file)
                .map_err(|e| OpError::context(shown.clone(), e))?;
            let batches = reader
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| OpError::context(format!("{shown}: invalid CSV"), e))?;
            Ok(whole(arrow::compute::concat_batches(&schema, &batches)?))
        }
    }
}

fn read_text(path: &Path) -> Result<String, OpError> {
    std::fs::read_to_string(path).map_err(|e| OpError::context(path.display().to_string(), e))
}

/// The rows of `{"key": [...], ...}`: the `data` field, else the only array of objects.
fn pick_rows(shown: &str, fields: Vec<(String, DocField)>) -> Result<Vec<Ordered<Value>>, OpError> {
    let mut lists: Vec<(String, Vec<Ordered<Value>>)> = fields
        .into_iter()
        .filter_map(|(k, v)| match v {
            DocField::Rows(rows) => Some((k, rows)),
            DocField::Other(_) => None,
        })
        .collect();
    if let Some(i) = lists.iter().position(|(k, _)| k == "data") {
        return Ok(lists.swap_remove(i).1);
    }
    match lists.len() {
        1 => Ok(lists.pop().map(|(_, r)| r).unwrap_or_default()),
        0 => Err(OpError::msg(format!(
            "{shown}: the top-level object holds no array of objects; expected e.g. {{\"data\": [...]}}"
        ))),
        _ => Err(OpError::msg(format!(
            "{shown}: the top-level object holds several arrays of objects ({}); keep one, or name it `data`",
            lists.iter().map(|(k, _)| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// A JSON object with its keys in file order.
pub struct Ordered<T>(pub Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<String, T>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum JsonDoc {
    Rows(Vec<Ordered<Value>>),
    Wrapped(Ordered<DocField>),
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum DocField {
    Rows(Vec<Ordered<Value>>),
    Other(#[allow(dead_code)] IgnoredAny),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Empty,
    Bool,
    Int,
    Float,
    Str,
    Mixed,
}

impl Kind {
    fn merge(self, v: &Value) -> Kind {
        let k = match v {
            Value::Null => return self,
            Value::Bool(_) => Kind::Bool,
            Value::Number(n) if n.is_i64() => Kind::Int,
            Value::Number(_) => Kind::Float,
            Value::String(_) => Kind::Str,
            Value::Array(_) | Value::Object(_) => Kind::Mixed,
        };
        match (self, k) {
            (Kind::Empty, k) => k,
            (a, b) if a == b => a,
            (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
            _ => Kind::Mixed,
        }
    }
}

/// JSON objects to a batch: one column per key (first-seen order), typed when consistent.
pub fn rows_to_batch(rows: Vec<Vec<(String, Value)>>) -> Result<RecordBatch, OpError> {
    let mut names: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut cells: Vec<Vec<Option<Value>>> = Vec::with_capacity(rows.len());
    for row in rows {
        let mut r: Vec<Option<Value>> = vec![None; names.len()];
        for (k, v) in row {
            let j = match index.get(&k) {
                Some(j) => *j,
                None => {
                    index.insert(k.clone(), names.len());
                    names.push(k);
                    names.len() - 1
                }
            };
            if r.len() <= j {
                r.resize(j + 1, None);
            }
            r[j] = Some(v);
        }
        cells.push(r);
    }
    let n = cells.len();
    let mut fields = Vec::with_capacity(names.len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(names.len());
    for (j, name) in names.iter().enumerate() {
        fn at(r: &[Option<Value>], j: usize) -> Option<&Value> {
            r.get(j).and_then(|v| v.as_ref()).filter(|v| !v.is_null())
        }
        let kind = cells
            .iter()
            .filter_map(|r| at(r, j))
            .fold(Kind::Empty, |k, v| k.merge(v));
        let array: ArrayRef = match kind {
            Kind::Bool => {
                let mut b = BooleanBuilder::with_capacity(n);
                cells
                    .iter()
                    .for_each(|r| b.append_option(at(r, j).and_then(Value::as_bool)));
                Arc::new(b.finish())
            }
            Kind::Int => {
                let mut b = Int64Builder::with_capacity(n);
                cells
                    .iter()
                    .for_each(|r| b.append_option(at(r, j).and_then(Value::as_i64)));
                Arc::new(b.finish())
            }
            Kind::Float => {
                let mut b = Float64Builder::with_capacity(n);
                cells
                    .iter()
                    .for_each(|r| b.append_option(at(r, j).and_then(Value::as_f64)));
                Arc::new(b.finish())
            }
            Kind::Empty | Kind::Str | Kind::Mixed => {
                let mut b = StringBuilder::with_capacity(n, 0);
                for r in &cells {
                    match at(r, j) {
                        None => b.append_null(),
                        Some(Value::String(s)) => b.append_value(s),
                        Some(v) => b.append_value(v.to_string()),
                    }
                }
                Arc::new(b.finish())
            }
        };
        fields.push(Field::new(name, array.data_type().clone(), true));
        columns.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    Ok(RecordBatch::try_new_with_options(
        schema,
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
    )?)
}

/// Concatenates batches whose schemas may differ: columns in first-seen order, missing
/// ones null, conflicting types cast to text.
pub fn unite(batches: Vec<RecordBatch>) -> Result<RecordBatch, OpError> {
    let mut fields: Vec<(String, DataType)> = Vec::new();
    for b in &batches {
        for f in b.schema().fields() {
            match fields.iter_mut().find(|(n, _)| n == f.name()) {
                None => fields.push((f.name().clone(), f.data_type().clone())),
                Some((_, ty)) if ty != f.data_type() => *ty = DataType::Utf8,
                Some(_) => {}
            }
        }
    }
    let schema = Arc::new(Schema::new(
        fields
            .iter()
            .map(|(n, t)| Field::new(n, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let mut out = Vec::with_capacity(batches.len());
    for b in &batches {
        let mut cols = Vec::with_capacity(fields.len());
        for (name, ty) in &fields {
            let col = match b.column_by_name(name) {
                Some(c) if c.data_type() == ty => c.clone(),
                Some(c) => arrow::compute::cast(c, ty).map_err(|e| {
                    OpError::context(
                        format!("column `{name}` has different types in different files"),
                        e,
                    )
                })?,
                None => arrow::array::new_null_array(ty, b.num_rows()),
            };
            cols.push(col);
        }
        out.push(RecordBatch::try_new_with_options(
            schema.clone(),
            cols,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
        )?);
    }
    Ok(arrow::compute::concat_batches(&schema, &out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;

    fn rows(text: &str) -> RecordBatch {
        let rows: Vec<Vec<(String, Value)>> = text
            .lines()
            .map(|l| serde_json::from_str::<Ordered<Value>>(l).unwrap().0)
            .collect();
        rows_to_batch(rows).unwrap()
    }

    #[test]
    fn json_columns_keep_types_when_consistent() {
        let b = rows(
            r#"{"q": "a", "n": 1, "x": 1.5, "ok": true, "m": 1, "nest": {"k": [1]}}
{"q": "b", "n": 2, "x": 2, "ok": false, "m": "two"}
{"n": null, "extra": "late"}"#,
        );
        let schema = b.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["q", "n", "x", "ok", "m", "nest", "extra"]);
        assert_eq!(b.column(1).data_type(), &DataType::Int64);
        assert_eq!(b.column(2).data_type(), &DataType::Float64);
        assert_eq!(b.column(3).data_type(), &DataType::Boolean);
        assert_eq!(b.column(4).data_type(), &DataType::Utf8);
        let m = b.column(4).as_string::<i32>();
        assert_eq!((m.value(0), m.value(1)), ("1", "two"));
        assert_eq!(b.column(5).as_string::<i32>().value(0), r#"{"k":[1]}"#);
        assert!(b.column(5).is_null(1));
        assert_eq!(b.column(1).as_primitive::<Int64Type>().value(1), 2);
        assert!(b.column(1).is_null(2));
        assert_eq!(b.column(6).as_string::<i32>().value(2), "late");
        assert!(b.column(0).is_null(2));
    }
}
