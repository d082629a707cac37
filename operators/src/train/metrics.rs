//! The metrics table: one row per optimizer step.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, Int32Builder, Int64Builder, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use sspo_engine::OpError;

/// Columns of the metrics table, one row per optimizer step.
pub const TRAIN_COLUMNS: [&str; 8] = [
    "step",
    "epoch",
    "loss",
    "lr",
    "grad_norm",
    "margin",
    "pref_acc",
    "tokens_per_s",
];

/// One metrics row. In a checkpoint's `state.json` the floats are stored as their IEEE
/// bits (`u64`): JSON text does not always read back to the same `f64`, and rows
/// committed from a checkpoint must equal those of an uninterrupted run bit for bit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricRow {
    /// 1-based optimizer step.
    pub step: u64,
    pub epoch: u64,
    #[serde(with = "f64_bits")]
    pub loss: f64,
    #[serde(with = "f64_bits")]
    pub lr: f64,
    #[serde(with = "f64_bits")]
    pub grad_norm: f64,
    #[serde(with = "opt_f64_bits")]
    pub margin: Option<f64>,
    #[serde(with = "opt_f64_bits")]
    pub pref_acc: Option<f64>,
    #[serde(with = "f64_bits")]
    pub tokens_per_s: f64,
}

impl MetricRow {
    /// The log line of this row, of `total` steps.
    pub fn log_line(&self, total: u64) -> String {
        let pref = match (self.margin, self.pref_acc) {
            (Some(m), Some(a)) => format!(", margin {m:.4}, pref_acc {a:.2}"),
            _ => String::new(),
        };
        format!(
            "step {}/{total}: loss {:.5}, lr {:.3e}, grad_norm {:.4}{pref}, {:.0} tok/s",
            self.step, self.loss, self.lr, self.grad_norm, self.tokens_per_s
        )
    }
}

mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(x.to_bits())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(f64::from_bits(u64::deserialize(d)?))
    }
}

mod opt_f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match x {
            Some(v) => s.serialize_some(&v.to_bits()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(f64::from_bits))
    }
}

/// The rows as a table with [`TRAIN_COLUMNS`].
pub fn metrics_batch(rows: &[MetricRow]) -> Result<RecordBatch, OpError> {
    let mut step = Int64Builder::new();
    let mut epoch = Int32Builder::new();
    let mut f: Vec<Float64Builder> = (0..6).map(|_| Float64Builder::new()).collect();
    for r in rows {
        step.append_value(r.step as i64);
        epoch.append_value(r.epoch as i32);
        f[0].append_value(r.loss);
        f[1].append_value(r.lr);
        f[2].append_value(r.grad_norm);
        f[3].append_option(r.margin);
        f[4].append_option(r.pref_acc);
        f[5].append_value(r.tokens_per_s);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("step", DataType::Int64, false),
        Field::new("epoch", DataType::Int32, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("lr", DataType::Float64, false),
        Field::new("grad_norm", DataType::Float64, false),
        Field::new("margin", DataType::Float64, true),
        Field::new("pref_acc", DataType::Float64, true),
        Field::new("tokens_per_s", DataType::Float64, false),
    ]));
    let mut cols: Vec<ArrayRef> = vec![Arc::new(step.finish()), Arc::new(epoch.finish())];
    for mut b in f {
        cols.push(Arc::new(b.finish()));
    }
    Ok(RecordBatch::try_new(schema, cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_state_round_trips_floats_exactly() {
        let row = MetricRow {
            step: 2,
            epoch: 0,
            loss: 0.410_439_997_911_453_25,
            lr: 0.000_600_000_000_000_000_1,
            grad_norm: 12.463_276_472_074_993,
            margin: Some(1.0 / 3.0),
            pref_acc: None,
            tokens_per_s: 1_234.567_890_123_4,
        };
        // Values whose shortest decimal form does not always parse back exactly.
        for x in [
            0.410_439_997_911_453_25,
            12.463_276_472_074_993,
            2.0 / 3.0,
            1e-300,
        ] {
            let row = MetricRow {
                loss: x,
                grad_norm: x * 7.0,
                ..row.clone()
            };
            let text = serde_json::to_string(&row).unwrap();
            let back: MetricRow = serde_json::from_str(&text).unwrap();
            assert_eq!(back.loss.to_bits(), row.loss.to_bits());
            assert_eq!(back.grad_norm.to_bits(), row.grad_norm.to_bits());
            assert_eq!(back, row);
        }
    }

    #[test]
    fn the_table_has_the_declared_columns() {
        let b = metrics_batch(&[]).unwrap();
        let schema = b.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, TRAIN_COLUMNS);
    }
}
