//! The pipeline engine of `sspo`: YAML specs with located errors, typed operator params,
//! a fingerprinted Parquet store with chunked resume, a topological executor, progress,
//! and SQL over every node's table. It knows nothing of models or torch: operators are
//! plugged in through [`operator::Registry`].
//!
//! The modules are layered, each importing only from the ones before it:
//!
//! - foundations: [`diag`] (located diagnostics), [`yaml`], [`params`], [`failpoint`]
//!   (test-only faults in the store's writes), [`store`] (the on-disk format), [`remote`]
//!   (run directories on object storage, mirrored by a local working copy), [`markers`]
//!   (chunks committed by the shards of a sharded run), [`shard`] (which chunks a shard
//!   owns), [`error`]
//!   ([`OpError`]), [`binding`] (what a port is bound to), [`fingerprint`], [`progress`];
//! - [`spec`]: the file's shape, parsed;
//! - [`run`]: what a running node sees ([`RunContext`], the chunk loop), and
//!   [`operator`]: the extension point, whose kernels run in a [`RunContext`];
//! - [`plan`]: a spec checked against the operators;
//! - [`integrity`]: committed parts against their records, and `verify`;
//! - [`executor`]: a plan run against a run directory; [`sql`]: queries over one.

pub mod binding;
pub mod checkpoint;
pub mod diag;
pub mod error;
pub mod executor;
pub mod failpoint;
pub mod fingerprint;
pub mod integrity;
pub mod markers;
pub mod operator;
pub mod params;
pub mod plan;
pub mod progress;
pub mod remote;
pub mod run;
pub mod server_spec;
pub mod shard;
pub mod spec;
pub mod sql;
pub mod store;
pub mod yaml;

pub use binding::{Input, ModelRef, ModelSource, ServerApi, ServerSpec};
pub use checkpoint::{CheckpointState, Checkpointed, Checkpoints, StepPlan};
pub use diag::{Diagnostic, Diagnostics, Loc};
pub use error::OpError;
pub use executor::{
    commit, run, run_shard, status, NodeOutcome, NodeReport, NodeStatus, RunError, RunOptions,
    ShardReport,
};
pub use operator::{
    Columns, ConfigureContext, ModelChecker, ModelUse, NodeKernel, Operator, Port, PortKind,
    Registry,
};
pub use params::Params;
pub use plan::Plan;
pub use progress::ProgressMode;
pub use run::{ChunkOutput, RunContext};
pub use shard::Shard;
pub use spec::{CpuSpec, ModelEntry, Pipeline};
