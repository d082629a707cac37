//! Task knowledge shared by several operators: answer extraction and verification
//! (used by `source` for reference answers, by `generate` and `evaluate` for the
//! model's answers).

pub mod answer;
pub mod synth;

pub use answer::{verify, AnswerFormat};
