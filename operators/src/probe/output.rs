//! The output table of `probe`.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, RecordBatch, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use sspo_engine::OpError;

use super::trace::BoundaryProbe;

/// The rows of the output table, one per boundary.
#[derive(Default)]
pub(super) struct ProbeBuilder {
    key: StringBuilder,
    step: Int32Builder,
    value: Float64Builder,
    p_yes: Float64Builder,
    answer_logprob: Float64Builder,
    early_answer: StringBuilder,
    early_correct: BooleanBuilder,
}

impl ProbeBuilder {
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
        self.value.append_option(probe.value());
        self.p_yes.append_option(probe.p_yes);
        self.answer_logprob.append_option(probe.answer_logprob);
        self.early_answer.append_option(early);
        self.early_correct.append_option(early_correct);
    }

    pub(super) fn finish(mut self, key: &str) -> Result<RecordBatch, OpError> {
        let fields = vec![
            Field::new(key, DataType::Utf8, false),
            Field::new("step", DataType::Int32, false),
            Field::new("value", DataType::Float64, true),
            Field::new("p_yes", DataType::Float64, true),
            Field::new("answer_logprob", DataType::Float64, true),
            Field::new("early_answer", DataType::Utf8, true),
            Field::new("early_correct", DataType::Boolean, true),
        ];
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.key.finish()),
            Arc::new(self.step.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.p_yes.finish()),
            Arc::new(self.answer_logprob.finish()),
            Arc::new(self.early_answer.finish()),
            Arc::new(self.early_correct.finish()),
        ];
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }
}
