//! The output table of `probe`.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use sspo_engine::OpError;

use super::params::ProbeKinds;
use super::trace::BoundaryProbe;

/// Output columns after the key column, for every probe.
pub const PROBE_COLUMNS: [&str; 6] = [
    "step",
    "value",
    "p_yes",
    "answer_logprob",
    "early_answer",
    "early_correct",
];

/// The value columns a probe of several kinds adds after [`PROBE_COLUMNS`], one per kind
/// (`value` is the first kind's).
pub const KIND_VALUE_COLUMNS: [&str; 2] = ["verbal_value", "answer_value"];

/// Output columns after the key column for `kinds`.
pub fn probe_columns(kinds: &ProbeKinds) -> Vec<&'static str> {
    let mut cols = PROBE_COLUMNS.to_vec();
    if kinds.is_combined() {
        cols.extend(KIND_VALUE_COLUMNS);
    }
    cols
}

/// The rows of the output table, one per boundary.
pub(super) struct ProbeBuilder {
    kinds: ProbeKinds,
    key: StringBuilder,
    step: Int32Builder,
    value: Float64Builder,
    p_yes: Float64Builder,
    answer_logprob: Float64Builder,
    early_answer: StringBuilder,
    early_correct: BooleanBuilder,
    verbal_value: Float64Builder,
    answer_value: Float64Builder,
}

impl ProbeBuilder {
    pub(super) fn new(kinds: &ProbeKinds) -> Self {
        ProbeBuilder {
            kinds: kinds.clone(),
            key: StringBuilder::new(),
            step: Int32Builder::new(),
            value: Float64Builder::new(),
            p_yes: Float64Builder::new(),
            answer_logprob: Float64Builder::new(),
            early_answer: StringBuilder::new(),
            early_correct: BooleanBuilder::new(),
            verbal_value: Float64Builder::new(),
            answer_value: Float64Builder::new(),
        }
    }

    pub(super) fn push(
        &mut self,
        key: &str,
        step: i32,
        probe: &BoundaryProbe,
        early: Option<&str>,
        early_correct: Option<bool>,
    ) {
        self.key.append_value(key);
        self.step.append_value(step);
        self.value
            .append_option(probe.value_of(self.kinds.primary()));
        self.p_yes.append_option(probe.p_yes);
        self.answer_logprob.append_option(probe.answer_logprob);
        self.early_answer.append_option(early);
        self.early_correct.append_option(early_correct);
        self.verbal_value.append_option(probe.verbal_value());
        self.answer_value.append_option(probe.answer_value());
    }

    pub(super) fn finish(mut self, key: &str) -> Result<RecordBatch, OpError> {
        let mut fields = vec![
            Field::new(key, DataType::Utf8, false),
            Field::new("step", DataType::Int32, false),
            Field::new("value", DataType::Float64, true),
            Field::new("p_yes", DataType::Float64, true),
            Field::new("answer_logprob", DataType::Float64, true),
            Field::new("early_answer", DataType::Utf8, true),
            Field::new("early_correct", DataType::Boolean, true),
        ];
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.key.finish()),
            Arc::new(self.step.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.p_yes.finish()),
            Arc::new(self.answer_logprob.finish()),
            Arc::new(self.early_answer.finish()),
            Arc::new(self.early_correct.finish()),
        ];
        if self.kinds.is_combined() {
            for (name, b) in KIND_VALUE_COLUMNS
                .into_iter()
                .zip([&mut self.verbal_value, &mut self.answer_value])
            {
                fields.push(Field::new(name, DataType::Float64, true));
                cols.push(Arc::new(b.finish()));
            }
        }
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::params::ProbeKind;
    use super::*;

    fn probe() -> BoundaryProbe {
        BoundaryProbe {
            p_yes: Some(0.3),
            p_no: Some(0.1),
            answer_logprob: Some(0.5f64.ln()),
            early_ids: Vec::new(),
        }
    }

    fn floats(b: &RecordBatch, col: &str) -> f64 {
        use arrow::array::AsArray;
        b.column_by_name(col)
            .unwrap()
            .as_primitive::<arrow::datatypes::Float64Type>()
            .value(0)
    }

    #[test]
    fn combined_kinds_add_a_value_column_per_kind() {
        use ProbeKind::*;
        for (kinds, value) in [
            (ProbeKinds::new(vec![Verbal, Answer]), 0.75),
            (ProbeKinds::new(vec![Answer, Verbal]), 0.5),
        ] {
            let mut b = ProbeBuilder::new(&kinds);
            b.push("r", 0, &probe(), Some("5"), Some(true));
            let out = b.finish("rollout_id").unwrap();
            let names: Vec<String> = out
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let mut want = vec!["rollout_id"];
            want.extend(probe_columns(&kinds));
            assert_eq!(names, want);
            assert!((floats(&out, "value") - value).abs() < 1e-12);
            assert!((floats(&out, "verbal_value") - 0.75).abs() < 1e-12);
            assert!((floats(&out, "answer_value") - 0.5).abs() < 1e-12);
        }
        // A single kind: the columns of before, nothing added.
        let mut b = ProbeBuilder::new(&Answer.into());
        b.push("r", 0, &probe(), None, None);
        let out = b.finish("id").unwrap();
        assert_eq!(out.num_columns(), 1 + PROBE_COLUMNS.len());
    }
}
