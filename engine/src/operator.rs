//! The extension point: an [`Operator`] turns its params into a configured
//! [`NodeKernel`], which declares its ports' columns and runs inside a [`RunContext`].
//!
//! Engine code never sees an operator's types: operators are looked up by name in a
//! [`Registry`], so the binary decides which ones exist (and the engine never links
//! torch).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::diag::Diagnostics;
use crate::error::OpError;
use crate::params::Params;
use crate::run::RunContext;
use crate::spec::ModelEntry;

/// What flows through a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// Another node's primary table.
    Table,
    /// A model: an entry of `models:` or a node that produces one (`train`).
    Model,
}

impl std::fmt::Display for PortKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortKind::Table => "a table",
            PortKind::Model => "a model",
        })
    }
}

/// A named input of an operator.
#[derive(Debug, Clone, Copy)]
pub struct Port {
    pub name: &'static str,
    pub kind: PortKind,
    pub required: bool,
    /// Takes a YAML list of inputs (`models: [base, sspo]`), read back in order with
    /// [`crate::RunContext::input_models`].
    pub many: bool,
    /// A model port whose node reads only the model's tokenizer (so only the tokenizer
    /// is checked before the run).
    pub tokenizer_only: bool,
    /// A model port whose node needs the model's weights here (training): an inference
    /// server cannot be bound to it.
    pub local_weights: bool,
    pub doc: &'static str,
}

impl Port {
    pub const fn table(name: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            kind: PortKind::Table,
            required: true,
            many: false,
            tokenizer_only: false,
            local_weights: false,
            doc,
        }
    }
    pub const fn model(name: &'static str, doc: &'static str) -> Self {
        Self {
            name,
            kind: PortKind::Model,
            required: true,
            many: false,
            tokenizer_only: false,
            local_weights: false,
            doc,
        }
    }
    pub const fn optional(mut self) -> Self {
        self.required = false;
        self
    }
    /// Accepts a list of inputs as well as a single one.
    pub const fn many(mut self) -> Self {
        self.many = true;
        self
    }
    /// A model port of a node that needs the model's weights in this process.
    pub const fn local_weights(mut self) -> Self {
        self.local_weights = true;
        self
    }
    /// A model port of a node that reads only the model's tokenizer.
    pub const fn tokenizer_only(mut self) -> Self {
        self.tokenizer_only = true;
        self
    }
}

/// Column names a table will have, as far as they are known before running.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns {
    pub names: Vec<String>,
    /// More columns may appear (e.g. extra columns of a user's data file).
    pub open: bool,
}

impl Columns {
    pub fn exact<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self {
            names: names.into_iter().map(Into::into).collect(),
            open: false,
        }
    }
    pub fn open<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self {
            names: names.into_iter().map(Into::into).collect(),
            open: true,
        }
    }
    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
    /// Whether `name` is certainly absent.
    pub fn lacks(&self, name: &str) -> bool {
        !self.open && !self.contains(name)
    }
}

/// What an operator sees while it is configured.
#[derive(Debug, Clone)]
pub struct ConfigureContext {
    pub node_id: String,
    /// Directory of the spec file: relative paths in params resolve against it.
    pub base_dir: PathBuf,
    pub seed: u64,
}

impl ConfigureContext {
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = PathBuf::from(path);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}

/// An operator type, registered by name.
pub trait Operator: Send + Sync {
    /// The `op:` name in specs.
    fn name(&self) -> &'static str;
    /// Bumped whenever the operator's output for the same params changes; part of every
    /// fingerprint.
    fn version(&self) -> u32;
    /// One line for `--help` style listings and docs.
    fn summary(&self) -> &'static str;
    fn ports(&self) -> &'static [Port];
    /// Parses and checks params (typed, unknown keys rejected, errors located).
    fn configure(
        &self,
        params: &Params,
        ctx: &ConfigureContext,
    ) -> Result<Arc<dyn NodeKernel>, Diagnostics>;
}

/// A configured node: everything needed to fingerprint, check and run it.
pub trait NodeKernel: Send + Sync {
    /// Canonical params with defaults filled in: enters the fingerprint.
    fn params_json(&self) -> serde_json::Value;

    /// Files whose content (not path, not mtime) enters the fingerprint.
    fn external_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Columns this node needs on each table port.
    fn required_columns(&self) -> Vec<(&'static str, Vec<String>)> {
        Vec::new()
    }

    /// Columns of the primary output table, given the input tables' columns.
    fn output_columns(&self, inputs: &BTreeMap<String, Columns>) -> Columns;

    /// Whether this node produces a model artifact (usable on model ports).
    fn produces_model(&self) -> bool {
        false
    }

    /// The extra tables this node writes besides its primary one (chunk outputs'
    /// `extra`, [`RunContext::commit_final`]), by their names in the node. SQL sees each
    /// as `<node>_<table>`; the plan refuses a pipeline where such a name is also another
    /// node's table.
    fn extra_tables(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// Whether a sharded run (`sspo-run PIPELINE --shard I/N`) may split this node's
    /// chunk loop across processes. Only a node whose every chunk is computed from its
    /// input rows alone, through [`RunContext::run_chunks`], can say yes; what it does
    /// after the loop (a summary over all rows) then runs once, at `sspo-run commit`.
    fn shardable(&self) -> bool {
        false
    }

    /// Does the work; commits output through the context.
    fn run(&self, ctx: &mut RunContext) -> Result<(), OpError>;
}

/// How one node uses a `models:` entry, as a [`ModelChecker`] sees it.
#[derive(Debug, Clone)]
pub struct ModelUse {
    pub node: String,
    pub op: String,
    /// The binding key of the port (`model`, `models.1`).
    pub port: String,
    /// The port reads only the model's tokenizer ([`Port::tokenizer_only`]).
    pub tokenizer_only: bool,
    /// The node's canonical params ([`NodeKernel::params_json`]): what it will ask of the
    /// model (a chat template, say) is written there.
    pub params: serde_json::Value,
}

/// Checks what a `models:` entry points to before anything runs, for the plan's model
/// pass: the engine knows no model format, so the binary registers one that does. It must
/// not load weights (it runs on every `validate`), and it reports each problem located in
/// the spec, typically at [`ModelEntry::value_loc`].
pub trait ModelChecker: Send + Sync {
    /// Problems of `model`, given the nodes that use it (a failed node is left out).
    fn check(&self, model: &ModelEntry, uses: &[ModelUse]) -> Diagnostics;
}

/// Operators by name, and the model checker if one is registered.
#[derive(Default, Clone)]
pub struct Registry {
    ops: BTreeMap<&'static str, Arc<dyn Operator>>,
    model_checker: Option<Arc<dyn ModelChecker>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register(&mut self, op: Arc<dyn Operator>) -> &mut Self {
        self.ops.insert(op.name(), op);
        self
    }
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Operator>> {
        self.ops.get(name)
    }
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.ops.keys().copied()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Operator>> {
        self.ops.values()
    }
    /// Makes the plan check every `models:` entry with `checker`.
    pub fn set_model_checker(&mut self, checker: Arc<dyn ModelChecker>) -> &mut Self {
        self.model_checker = Some(checker);
        self
    }
    pub fn model_checker(&self) -> Option<&Arc<dyn ModelChecker>> {
        self.model_checker.as_ref()
    }
}
