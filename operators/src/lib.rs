//! The operators of `sspo`, one per file, each implementing
//! [`sspo_engine::Operator`]. [`registry`] lists them for the CLI.

use std::sync::Arc;

use sspo_engine::Registry;

pub mod backend;
pub mod columns;
pub mod evaluate;
pub mod generate;
pub mod model_check;
pub mod model_port;
pub mod pair;
pub mod probe;
pub mod rollout;
pub mod segment;
pub mod server;
pub mod source;
pub mod step_tokens;
pub mod tasks;
pub mod train;

/// Every built-in operator, and the check of `models:` entries on disk.
pub fn registry() -> Registry {
    let mut r = operators();
    r.set_model_checker(Arc::new(model_check::DiskModels));
    r
}

/// Every built-in operator, without the model check: for commands that only read what a
/// run wrote (`status`, `sql`, `show`, `verify`), which a model directory that has
/// changed since must not block.
pub fn operators() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(source::Source));
    r.register(Arc::new(segment::Segment));
    r.register(Arc::new(generate::Generate));
    r.register(Arc::new(probe::Probe));
    r.register(Arc::new(pair::Pair));
    r.register(Arc::new(evaluate::Evaluate));
    r.register(Arc::new(train::Train));
    r
}
