//! The checks of [`Plan::build`](super::Plan::build), one function per pass, run in the
//! order they are listed here. Each pass adds what it finds to the diagnostics and goes
//! on as far as it can, so `validate` reports every problem at once.

use std::collections::BTreeMap;

use crate::binding::{binding_key, ModelSource};
use crate::diag::{Diagnostic, Diagnostics};
use crate::operator::{Columns, ConfigureContext, ModelUse, Operator, Port, PortKind, Registry};
use crate::spec::{InputSpec, NodeSpec, Pipeline};

use super::{topo_order, Binding, Configured};

/// Pass 1: each node's operator, looked up by its `op:` name, configures the node's
/// params into a kernel. `None` for a node whose operator is unknown or whose params
/// are invalid (the diagnostics say which).
pub(super) fn configure_nodes(
    pipeline: &Pipeline,
    registry: &Registry,
    diags: &mut Diagnostics,
) -> Vec<Option<Configured>> {
    let mut configured = Vec::with_capacity(pipeline.nodes.len());
    for spec in &pipeline.nodes {
        let Some(op) = registry.get(&spec.op) else {
            diags.push(
                Diagnostic::at(
                    Some(spec.op_loc.clone()),
                    format!("unknown operator `{}`", spec.op),
                )
                .help_for(&spec.op, registry.names()),
            );
            configured.push(None);
            continue;
        };
        let ctx = ConfigureContext {
            node_id: spec.id.clone(),
            base_dir: pipeline.base_dir.clone(),
            seed: pipeline.seed,
        };
        match op.configure(&spec.params, &ctx) {
            Ok(kernel) => configured.push(Some((op.clone(), kernel))),
            Err(d) => {
                diags.extend(d);
                configured.push(None);
            }
        }
    }
    configured
}

/// Pass 2: no two tables of the run get the same SQL name. A node's primary table is
/// named after the node and its extra tables `<node>_<table>`
/// ([`NodeKernel::extra_tables`](crate::NodeKernel::extra_tables)), so a node called
/// `eval_summary` would hide the `summary` table of a node `eval`. The error points at
/// the node to rename: the one whose own name clashes, or the later one in the file when
/// two extra tables clash; its help suggests a free name.
pub(super) fn check_table_names(
    pipeline: &Pipeline,
    configured: &[Option<Configured>],
    diags: &mut Diagnostics,
) {
    /// One table: its SQL name, its node, its name in the node ("" = primary).
    struct Table<'a> {
        sql: String,
        node: usize,
        table: &'a str,
    }
    let describe = |t: &Table| {
        let id = &pipeline.nodes[t.node].id;
        if t.table.is_empty() {
            format!("the table of node `{id}`")
        } else {
            format!("table `{}` of node `{id}`", t.table)
        }
    };
    // Primary tables first, then extra tables in file order: a clash of an extra table
    // with an earlier entry is then either with a node's own name or with an earlier
    // node's extra table.
    let mut tables: Vec<Table> = (0..pipeline.nodes.len())
        .map(|i| Table {
            sql: pipeline.nodes[i].id.clone(),
            node: i,
            table: "",
        })
        .collect();
    for (i, c) in configured.iter().enumerate() {
        for table in c.iter().flat_map(|(_, kernel)| kernel.extra_tables()) {
            tables.push(Table {
                sql: format!("{}_{table}", pipeline.nodes[i].id),
                node: i,
                table,
            });
        }
    }
    let taken: Vec<&str> = tables.iter().map(|t| t.sql.as_str()).collect();
    for (k, extra) in tables
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.table.is_empty())
    {
        let Some(earlier) = tables[..k]
            .iter()
            .find(|t| t.sql == extra.sql && t.node != extra.node)
        else {
            continue;
        };
        let (renamed, kept) = if earlier.table.is_empty() {
            (earlier, extra)
        } else {
            (extra, earlier)
        };
        let node = &pipeline.nodes[renamed.node];
        diags.push(
            Diagnostic::at(
                Some(node.loc.clone()),
                format!(
                    "{} and {} would both be the SQL table `{}`",
                    describe(renamed),
                    describe(kept),
                    extra.sql
                ),
            )
            .with_help(format!(
                "rename node `{}`, e.g. to `{}`",
                node.id,
                free_name(&node.id, &taken)
            )),
        );
    }
}

/// `<id>_2`, `<id>_3`, ...: the first that neither names a table nor starts the name of
/// one.
fn free_name(id: &str, taken: &[&str]) -> String {
    (2u32..)
        .map(|k| format!("{id}_{k}"))
        .find(|name| {
            let prefix = format!("{name}_");
            !taken.iter().any(|t| t == name || t.starts_with(&prefix))
        })
        .unwrap_or_else(|| id.to_string())
}

/// Each node's bindings by binding key, and whether any of its inputs failed to bind.
pub(super) struct Bound {
    pub bindings: Vec<BTreeMap<String, Binding>>,
    pub failed: Vec<bool>,
}

/// Pass 3: every input is bound to a node or a `models:` entry, through a port the
/// operator has, with a list only on a list port and the kind (table or model) the port
/// takes; every required port is connected.
pub(super) fn bind_ports(
    pipeline: &Pipeline,
    registry: &Registry,
    configured: &[Option<Configured>],
    diags: &mut Diagnostics,
) -> Bound {
    let n = pipeline.nodes.len();
    let mut bound = Bound {
        bindings: Vec::with_capacity(n),
        failed: vec![false; n],
    };
    for (i, spec) in pipeline.nodes.iter().enumerate() {
        let op = registry.get(&spec.op);
        let mut b = BTreeMap::new();
        for input in &spec.inputs {
            match bind_input(pipeline, configured, i, op, input, diags) {
                Some(binding) => {
                    b.insert(binding_key(&input.port, input.index), binding);
                }
                None => bound.failed[i] = true,
            }
        }
        if let Some(op) = op {
            bound.failed[i] |= !check_required_ports(spec, op.as_ref(), diags);
        }
        bound.bindings.push(b);
    }
    bound
}

/// One input of node `i`: its port, its target and the kinds of both; `None` (with a
/// diagnostic) when any of them is wrong.
fn bind_input(
    pipeline: &Pipeline,
    configured: &[Option<Configured>],
    i: usize,
    op: Option<&std::sync::Arc<dyn Operator>>,
    input: &InputSpec,
    diags: &mut Diagnostics,
) -> Option<Binding> {
    let spec = &pipeline.nodes[i];
    let port: Option<Port> =
        op.and_then(|op| op.ports().iter().find(|p| p.name == input.port).copied());
    if let (Some(op), None) = (op, port) {
        let names: Vec<&str> = op.ports().iter().map(|p| p.name).collect();
        diags.push(
            Diagnostic::at(
                Some(input.port_loc.clone()),
                format!(
                    "operator `{}` has no input port `{}`",
                    op.name(),
                    input.port
                ),
            )
            .help_for(&input.port, names),
        );
        return None;
    }
    let binding = bind_target(pipeline, i, input, diags)?;
    let Some(port) = port else {
        return Some(binding);
    };
    if input.index.is_some() && !port.many {
        diags.push(Diagnostic::at(
            Some(input.target_loc.clone()),
            format!(
                "port `{}` of `{}` takes one input, not a list",
                port.name, spec.op
            ),
        ));
        return None;
    }
    let kind_problem = match (&binding, port.kind) {
        (Binding::Model(m), PortKind::Table) => Some(format!(
            "port `{}` of `{}` takes a table, but `{m}` is a model",
            port.name, spec.op
        )),
        (Binding::Node(j), PortKind::Model) => match &configured[*j] {
            Some((_, k)) if !k.produces_model() => Some(format!(
                "port `{}` of `{}` takes a model, but node `{}` (op `{}`) produces a table",
                port.name, spec.op, pipeline.nodes[*j].id, pipeline.nodes[*j].op
            )),
            _ => None,
        },
        _ => None,
    };
    if let Some(msg) = kind_problem {
        diags.push(Diagnostic::at(Some(input.target_loc.clone()), msg));
        return None;
    }
    Some(binding)
}

/// What an input of node `i` names: another node or a `models:` entry.
fn bind_target(
    pipeline: &Pipeline,
    i: usize,
    input: &InputSpec,
    diags: &mut Diagnostics,
) -> Option<Binding> {
    let spec = &pipeline.nodes[i];
    if let Some(j) = pipeline.nodes.iter().position(|n| n.id == input.target) {
        if j == i {
            diags.push(Diagnostic::at(
                Some(input.target_loc.clone()),
                format!("node `{}` takes its own output as input", spec.id),
            ));
            return None;
        }
        return Some(Binding::Node(j));
    }
    if pipeline.models.contains_key(&input.target) {
        return Some(Binding::Model(input.target.clone()));
    }
    if pipeline.unreadable.contains(&input.target) {
        // The entry's own error is reported; naming it again would only repeat it.
        return None;
    }
    let names = pipeline
        .nodes
        .iter()
        .map(|n| n.id.as_str())
        .chain(pipeline.models.keys().map(String::as_str));
    diags.push(
        Diagnostic::at(
            Some(input.target_loc.clone()),
            format!(
                "input `{}` of node `{}` names `{}`, which is neither a node nor a model",
                input.port, spec.id, input.target
            ),
        )
        .suggest(&input.target, names),
    );
    None
}

/// Every required port of the node's operator has an input; `false` when one has not.
fn check_required_ports(spec: &NodeSpec, op: &dyn Operator, diags: &mut Diagnostics) -> bool {
    let mut ok = true;
    for port in op.ports().iter().filter(|p| p.required) {
        if spec.inputs.iter().any(|inp| inp.port == port.name) {
            continue;
        }
        ok = false;
        diags.push(
            Diagnostic::at(
                Some(spec.loc.clone()),
                format!(
                    "node `{}` (op `{}`) needs input `{}` ({})",
                    spec.id, spec.op, port.name, port.kind
                ),
            )
            .with_help(format!(
                "add `inputs: {{{}: <{}>}}`",
                port.name,
                match port.kind {
                    PortKind::Table => "node",
                    PortKind::Model => "model or train node",
                }
            )),
        );
    }
    ok
}

/// Pass 4: what every `models:` entry points to, checked by the registry's
/// [`ModelChecker`](crate::ModelChecker) (none registered: nothing is checked), with the
/// nodes that use the entry and their params. A model produced by a node does not exist
/// before the run and is not checked.
pub(super) fn check_models(
    pipeline: &Pipeline,
    registry: &Registry,
    configured: &[Option<Configured>],
    bindings: &[BTreeMap<String, Binding>],
    diags: &mut Diagnostics,
) {
    check_local_weights(pipeline, configured, diags);
    let Some(checker) = registry.model_checker() else {
        return;
    };
    for (name, entry) in &pipeline.models {
        let mut uses = Vec::new();
        for (i, node_bindings) in bindings.iter().enumerate() {
            let Some((op, kernel)) = &configured[i] else {
                continue;
            };
            let spec = &pipeline.nodes[i];
            for (port, b) in node_bindings {
                if matches!(b, Binding::Model(m) if m == name) {
                    let declared = spec
                        .inputs
                        .iter()
                        .find(|inp| binding_key(&inp.port, inp.index) == *port)
                        .and_then(|inp| op.ports().iter().find(|p| p.name == inp.port));
                    uses.push(ModelUse {
                        node: spec.id.clone(),
                        op: op.name().to_string(),
                        port: port.clone(),
                        tokenizer_only: declared.is_some_and(|p| p.tokenizer_only),
                        params: kernel.params_json(),
                    });
                }
            }
        }
        diags.extend(checker.check(entry, &uses));
    }
}

/// A server model bound to a port that needs local weights (`train`'s), located at the
/// input that names it.
fn check_local_weights(
    pipeline: &Pipeline,
    configured: &[Option<Configured>],
    diags: &mut Diagnostics,
) {
    for (spec, configured) in pipeline.nodes.iter().zip(configured) {
        let Some((op, _)) = configured else {
            continue;
        };
        for input in &spec.inputs {
            let needs_weights = op
                .ports()
                .iter()
                .any(|p| p.name == input.port && p.local_weights);
            let served = pipeline
                .models
                .get(&input.target)
                .is_some_and(|m| matches!(m.source, ModelSource::Server(_)));
            if needs_weights && served {
                diags.push(
                    Diagnostic::at(
                        Some(input.target_loc.clone()),
                        format!(
                            "node `{}` (op `{}`) needs local weights on `{}`, but model `{}` is an inference server",
                            spec.id, spec.op, input.port, input.target
                        ),
                    )
                    .with_help("give it a `models:` entry with `path:` (the same weights as a HF directory or GGUF file)"),
                );
            }
        }
    }
}

/// Pass 5: an order in which every node comes after the nodes it reads (file order among
/// independent nodes), or `None` with the cycle named as a chain.
pub(super) fn order_nodes(
    pipeline: &Pipeline,
    bindings: &[BTreeMap<String, Binding>],
    diags: &mut Diagnostics,
) -> Option<Vec<usize>> {
    match topo_order(bindings) {
        Ok(order) => Some(order),
        Err(cycle) => {
            let chain: Vec<&str> = cycle
                .iter()
                .map(|&i| pipeline.nodes[i].id.as_str())
                .collect();
            let first = &pipeline.nodes[cycle[0]];
            diags.push(Diagnostic::at(
                Some(first.loc.clone()),
                format!("cycle: {} -> {}", chain.join(" -> "), chain[0]),
            ));
            None
        }
    }
}

/// Pass 6: in dependency order, the columns each node requires on its table ports
/// against the columns its upstream nodes declare. Returns every node's output columns
/// (open and empty for a node that did not configure).
///
/// Like a compiler, it reports root causes only: the output of a node that failed (its
/// operator, params or inputs are wrong), or that reads such a node, is unknown, so no
/// column is found missing on it; its other inputs are still checked.
pub(super) fn check_columns(
    pipeline: &Pipeline,
    configured: &[Option<Configured>],
    bound: &Bound,
    order: &[usize],
    diags: &mut Diagnostics,
) -> Vec<Columns> {
    let bindings = &bound.bindings;
    let mut columns: Vec<Columns> = vec![Columns::open(Vec::<String>::new()); pipeline.nodes.len()];
    let mut unknown: Vec<bool> = (0..pipeline.nodes.len())
        .map(|i| configured[i].is_none() || bound.failed[i])
        .collect();
    for &i in order {
        let upstream_unknown = bindings[i]
            .values()
            .any(|b| matches!(b, Binding::Node(j) if unknown[*j]));
        unknown[i] |= upstream_unknown;
        let Some((_, kernel)) = &configured[i] else {
            continue;
        };
        let spec = &pipeline.nodes[i];
        let mut inputs = BTreeMap::new();
        for (port, binding) in &bindings[i] {
            if let Binding::Node(j) = binding {
                inputs.insert(port.clone(), columns[*j].clone());
            }
        }
        for (port, required) in kernel.required_columns() {
            let (Some(Binding::Node(j)), Some(upstream)) =
                (bindings[i].get(port), inputs.get(port))
            else {
                continue;
            };
            if unknown[*j] {
                continue;
            }
            let upstream_spec = &pipeline.nodes[*j];
            for col in required.iter().filter(|c| upstream.lacks(c)) {
                let loc = spec
                    .inputs
                    .iter()
                    .find(|inp| inp.port == port)
                    .map(|inp| inp.target_loc.clone());
                diags.push(
                    Diagnostic::at(
                        loc,
                        format!(
                            "node `{}` needs column `{col}` on port `{port}`, but `{}` (op `{}`) does not produce it",
                            spec.id, upstream_spec.id, upstream_spec.op
                        ),
                    )
                    .help_for(col, upstream.names.iter().map(String::as_str)),
                );
            }
        }
        columns[i] = if unknown[i] {
            Columns::open(Vec::<String>::new())
        } else {
            kernel.output_columns(&inputs)
        };
    }
    columns
}
