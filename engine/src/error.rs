//! [`OpError`], what a running node fails with.
//!
//! # One convention for causes
//!
//! Every error type of the `sspo` crates writes its cause into its own `Display` text:
//! a variant that wraps another error ends with that error's text (`{context}: {source}`)
//! or is `#[error(transparent)]`. `source()` still returns the cause for code that wants
//! the typed value, but nothing needs to walk the chain to show a complete message:
//! printing an error's `Display` once shows all of it. The CLI relies on this and prints
//! each library error exactly once, prefixed only by the contexts it adds itself.

use crate::store::StoreError;

/// Errors of a running node.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Message(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("interrupted; committed work is kept and the next run resumes from it")]
    Cancelled,
    /// Not a failure: a shard of a sharded run has committed its chunks, and the node's
    /// work after its chunk loop (a summary over all rows) waits for `sspo-run commit`.
    /// [`crate::RunContext::run_chunks`] returns it in a shard so that operators stop
    /// there with their usual `?`.
    #[error("this shard's chunks are committed; the rest of the node runs at `sspo-run commit`")]
    ShardDone,
    /// A broken invariant: a bug in `sspo`, not a problem with the user's input.
    #[error("internal error (a bug in sspo, please report it): {0}")]
    Internal(String),
    /// A library error shown as it is (its text already says what failed).
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync>),
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl OpError {
    pub fn msg(m: impl Into<String>) -> Self {
        OpError::Message(m.into())
    }

    /// A broken invariant (a bug), as opposed to bad input.
    pub fn internal(m: impl Into<String>) -> Self {
        OpError::Internal(m.into())
    }

    /// Passes a library error on unchanged, keeping its type (for `downcast_ref`).
    pub fn source(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        OpError::Source(source.into())
    }

    /// Wraps any error with a sentence saying what was being done.
    pub fn context(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        OpError::Context {
            context: context.into(),
            source: source.into(),
        }
    }
}
