//! The pipeline engine of `sspo`: YAML specs with located errors, typed operator params,
//! a fingerprinted Parquet store with chunked resume, a topological executor, progress,
//! and SQL over every node's table. It knows nothing of models or torch: operators are
//! plugged in through [`operator::Registry`].

pub mod checkpoint;
pub mod diag;
pub mod executor;
pub mod fingerprint;
pub mod operator;
pub mod params;
pub mod plan;
pub mod progress;
pub mod run;
pub mod spec;
pub mod sql;
pub mod store;
pub mod yaml;

pub use checkpoint::{CheckpointState, Checkpointed, Checkpoints, StepPlan};
pub use diag::{Diagnostic, Diagnostics, Loc};
pub use executor::{run, status, NodeOutcome, NodeStatus, RunError, RunOptions};
pub use operator::{Columns, ConfigureContext, NodeKernel, Operator, Port, PortKind, Registry};
pub use params::Params;
pub use plan::Plan;
pub use progress::ProgressMode;
pub use run::{ChunkOutput, Input, ModelRef, ModelSource, OpError, RunContext};
pub use spec::{CpuSpec, Pipeline};
