//! From a parsed [`Pipeline`] to a checked, ordered [`Plan`]: operators resolved,
//! params configured, ports and their kinds checked, cycles named, required columns
//! checked against what upstream tables will have, fingerprints computed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use crate::binding::{split_binding_key, Input, ModelRef, ModelSource};
use crate::diag::Diagnostics;
use crate::fingerprint::{canonical_json, hash_bytes, ContentHasher};
use crate::operator::{Columns, NodeKernel, Operator, PortKind, Registry};
use crate::spec::{NodeSpec, Pipeline};
use crate::store::NodeDir;

mod passes;

/// An operator with its configured kernel.
type Configured = (Arc<dyn Operator>, Arc<dyn NodeKernel>);

/// What a port is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Another node (its table, or its model artifact on a model port).
    Node(usize),
    /// An entry of `models:`.
    Model(String),
}

/// One checked node.
pub struct PlannedNode {
    pub spec: NodeSpec,
    pub op: Arc<dyn Operator>,
    pub kernel: Arc<dyn NodeKernel>,
    pub bindings: BTreeMap<String, Binding>,
    pub columns: Columns,
}

impl PlannedNode {
    pub fn id(&self) -> &str {
        &self.spec.id
    }
}

/// A pipeline ready to run.
pub struct Plan {
    pub pipeline: Pipeline,
    pub nodes: Vec<PlannedNode>,
    /// Node indices in a topological order (file order among independent nodes).
    pub order: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read {path} to fingerprint node `{node}`: {source}")]
    Identity {
        node: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl Plan {
    /// Checks everything that can be checked without running, in named passes
    /// (`plan/passes.rs`: operators and params, SQL table names, ports, models (with the
    /// registry's model checker), order, columns), and reports every problem, sorted by
    /// position.
    pub fn build(pipeline: Pipeline, registry: &Registry) -> Result<Plan, Diagnostics> {
        let mut diags = pipeline.problems.clone();
        let configured = passes::configure_nodes(&pipeline, registry, &mut diags);
        passes::check_table_names(&pipeline, &configured, &mut diags);
        let bound = passes::bind_ports(&pipeline, registry, &configured, &mut diags);
        passes::check_models(
            &pipeline,
            registry,
            &configured,
            &bound.bindings,
            &mut diags,
        );
        let Some(order) = passes::order_nodes(&pipeline, &bound.bindings, &mut diags) else {
            return Err(diags.sorted());
        };
        let columns = passes::check_columns(&pipeline, &configured, &bound, &order, &mut diags);
        diags.into_result().map_err(Diagnostics::sorted)?;
        let bindings = bound.bindings;
        let nodes = pipeline
            .nodes
            .iter()
            .cloned()
            .zip(configured)
            .zip(bindings)
            .zip(columns)
            .filter_map(|(((spec, c), bindings), columns)| {
                let (op, kernel) = c?;
                Some(PlannedNode {
                    spec,
                    op,
                    kernel,
                    bindings,
                    columns,
                })
            })
            .collect();
        Ok(Plan {
            pipeline,
            nodes,
            order,
        })
    }

    pub fn index(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id() == id)
    }

    /// The node and everything downstream of it.
    pub fn downstream_of(&self, i: usize) -> Vec<usize> {
        let mut out = vec![i];
        for &j in &self.order {
            if out.contains(&j) {
                continue;
            }
            let depends = self.nodes[j]
                .bindings
                .values()
                .any(|b| matches!(b, Binding::Node(k) if out.contains(k)));
            if depends {
                out.push(j);
            }
        }
        out
    }

    /// The node and everything it depends on.
    pub fn upstream_of(&self, i: usize) -> Vec<usize> {
        let mut out = vec![i];
        let mut k = 0;
        while k < out.len() {
            let node = &self.nodes[out[k]];
            for b in node.bindings.values() {
                if let Binding::Node(j) = b {
                    if !out.contains(j) {
                        out.push(*j);
                    }
                }
            }
            k += 1;
        }
        out
    }

    /// Identity of a `models:` entry.
    pub fn model_identity(&self, name: &str, hasher: &ContentHasher) -> Result<String, PlanError> {
        let Some(entry) = self.pipeline.models.get(name) else {
            return Ok(String::new());
        };
        let source = match &entry.source {
            ModelSource::Builtin(b) => json!({"builtin": b}),
            ModelSource::Dir(dir) => {
                let id = hasher
                    .model_dir(dir)
                    .map_err(|source| PlanError::Identity {
                        node: name.to_string(),
                        path: dir.clone(),
                        source,
                    })?;
                json!({"dir": id})
            }
            ModelSource::Gguf(file) => {
                let id = hasher.file(file).map_err(|source| PlanError::Identity {
                    node: name.to_string(),
                    path: file.clone(),
                    source,
                })?;
                json!({"gguf": id})
            }
            // The served model's name (checked against the server's before its first
            // request) and the tokenizer's content: never the url or the api, so a run
            // moves between replicas.
            ModelSource::Server(server) => {
                let tokenizer =
                    tokenizer_identity(hasher, &server.tokenizer).map_err(|source| {
                        PlanError::Identity {
                            node: name.to_string(),
                            path: server.tokenizer.clone(),
                            source,
                        }
                    })?;
                json!({"server": {"model": server.model, "tokenizer": tokenizer}})
            }
        };
        Ok(hash_bytes(
            canonical_json(&json!({"source": source, "options": entry.options})).as_bytes(),
        ))
    }

    /// Fingerprints of all nodes (by node index).
    pub fn fingerprints(&self, hasher: &ContentHasher) -> Result<Vec<String>, PlanError> {
        let mut fps = vec![String::new(); self.nodes.len()];
        for &i in &self.order {
            let node = &self.nodes[i];
            let mut inputs = serde_json::Map::new();
            for (port, b) in &node.bindings {
                let id = match b {
                    Binding::Node(j) => fps[*j].clone(),
                    Binding::Model(m) => self.model_identity(m, hasher)?,
                };
                inputs.insert(port.clone(), json!(id));
            }
            let mut files = Vec::new();
            for f in node.kernel.external_files() {
                let h = hasher.file(&f).map_err(|source| PlanError::Identity {
                    node: node.id().to_string(),
                    path: f.clone(),
                    source,
                })?;
                files.push(h);
            }
            let doc = json!({
                "op": node.op.name(),
                "version": node.op.version(),
                "params": node.kernel.params_json(),
                "seed": self.pipeline.seed,
                "inputs": inputs,
                "files": files,
            });
            fps[i] = hash_bytes(canonical_json(&doc).as_bytes());
        }
        hasher.save();
        Ok(fps)
    }

    /// The bound inputs of node `i` as its run context sees them.
    pub fn inputs_of(
        &self,
        i: usize,
        run_dir: &Path,
        fps: &[String],
        hasher: &ContentHasher,
    ) -> Result<BTreeMap<String, Input>, PlanError> {
        let node = &self.nodes[i];
        let op_ports = node.op.ports();
        let mut out = BTreeMap::new();
        for (port, b) in &node.bindings {
            let (base, _) = split_binding_key(port);
            let kind = op_ports.iter().find(|p| p.name == base).map(|p| p.kind);
            let input = match (b, kind) {
                (Binding::Node(j), Some(PortKind::Model)) => {
                    let id = self.nodes[*j].id().to_string();
                    Input::Model(ModelRef {
                        name: id.clone(),
                        source: ModelSource::Dir(NodeDir::new(run_dir, &id).path.join("model")),
                        options: Default::default(),
                        identity: fps[*j].clone(),
                    })
                }
                (Binding::Node(j), _) => {
                    let id = self.nodes[*j].id().to_string();
                    Input::Table {
                        dir: NodeDir::new(run_dir, &id),
                        node: id,
                    }
                }
                (Binding::Model(m), _) => {
                    let entry = &self.pipeline.models[m];
                    Input::Model(ModelRef {
                        name: m.clone(),
                        source: entry.source.clone(),
                        options: entry.options.clone(),
                        identity: self.model_identity(m, hasher)?,
                    })
                }
            };
            out.insert(port.clone(), input);
        }
        Ok(out)
    }
}

/// Kahn's order, file order among ready nodes; on a cycle, the nodes of one cycle in
/// dependency order.
fn topo_order(bindings: &[BTreeMap<String, Binding>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = bindings.len();
    let deps: Vec<Vec<usize>> = bindings
        .iter()
        .map(|b| {
            b.values()
                .filter_map(|b| match b {
                    Binding::Node(j) => Some(*j),
                    Binding::Model(_) => None,
                })
                .collect()
        })
        .collect();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = (0..n).find(|&i| !done[i] && deps[i].iter().all(|&d| done[d]));
        match next {
            Some(i) => {
                done[i] = true;
                order.push(i);
            }
            None => return Err(find_cycle(&deps, &done)),
        }
    }
    Ok(order)
}

/// Walks dependencies from an unfinished node until a node repeats.
fn find_cycle(deps: &[Vec<usize>], done: &[bool]) -> Vec<usize> {
    let start = (0..deps.len()).find(|&i| !done[i]).unwrap_or(0);
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let Some(&next) = deps[cur].iter().find(|&&d| !done[d]) else {
            return path;
        };
        if let Some(pos) = path.iter().position(|&p| p == next) {
            // `path[pos..]` is a chain of "depends on"; report it in data-flow order.
            let mut cycle: Vec<usize> = path[pos..].to_vec();
            cycle.reverse();
            // Start at the node written first, so the message is stable.
            if let Some(first) = (0..cycle.len()).min_by_key(|&i| cycle[i]) {
                cycle.rotate_left(first);
            }
            return cycle;
        }
        path.push(next);
        cur = next;
    }
}

/// Content identity of a server model's tokenizer: a GGUF file's hash, or the tokenizer
/// files of a directory (its weights, if any, are not what the server runs from here).
fn tokenizer_identity(hasher: &ContentHasher, path: &Path) -> std::io::Result<String> {
    if ModelSource::is_gguf_path(path) {
        return hasher.file(path);
    }
    let mut h = blake3::Hasher::new();
    for name in TOKENIZER_FILES {
        let file = path.join(name);
        if file.is_file() {
            h.update(name.as_bytes());
            h.update(b"\0");
            h.update(hasher.file(&file)?.as_bytes());
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The files of a HF directory that define how text becomes token ids and back.
const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::ConfigureContext;

    fn b(edges: &[(usize, usize)], n: usize) -> Vec<BTreeMap<String, Binding>> {
        let mut out = vec![BTreeMap::new(); n];
        for (k, &(from, to)) in edges.iter().enumerate() {
            out[to].insert(format!("p{k}"), Binding::Node(from));
        }
        out
    }

    #[test]
    fn orders_dependencies_first() {
        let order = topo_order(&b(&[(2, 0), (0, 1)], 3)).unwrap();
        assert_eq!(order, vec![2, 0, 1]);
    }

    #[test]
    fn names_the_cycle() {
        // 0 -> 1 -> 2 -> 0, and 3 independent.
        let cycle = topo_order(&b(&[(0, 1), (1, 2), (2, 0)], 4)).unwrap_err();
        assert_eq!(cycle.len(), 3);
        let mut sorted = cycle.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2]);
    }

    /// An operator with a list port, to check list inputs bind in order.
    struct Compare;
    struct CompareKernel;
    impl Operator for Compare {
        fn name(&self) -> &'static str {
            "compare"
        }
        fn version(&self) -> u32 {
            1
        }
        fn summary(&self) -> &'static str {
            "test operator"
        }
        fn ports(&self) -> &'static [crate::Port] {
            const PORTS: &[crate::Port] = &[
                crate::Port::model("models", "models to compare").many(),
                crate::Port::model("judge", "one model"),
            ];
            PORTS
        }
        fn configure(
            &self,
            _params: &crate::Params,
            _ctx: &ConfigureContext,
        ) -> Result<std::sync::Arc<dyn NodeKernel>, Diagnostics> {
            Ok(std::sync::Arc::new(CompareKernel))
        }
    }
    impl NodeKernel for CompareKernel {
        fn params_json(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
        fn output_columns(&self, _inputs: &BTreeMap<String, Columns>) -> Columns {
            Columns::exact(["x"])
        }
        fn run(&self, _ctx: &mut crate::RunContext) -> Result<(), crate::OpError> {
            Ok(())
        }
    }

    fn plan_of(yaml: &str) -> Result<Plan, Diagnostics> {
        let mut r = Registry::new();
        r.register(std::sync::Arc::new(Compare));
        let p = Pipeline::from_text(yaml, Path::new("p.yaml"), &[])?;
        Plan::build(p, &r)
    }

    #[test]
    fn a_list_port_binds_its_inputs_in_order() {
        let plan = plan_of(
            "models:\n  a: {builtin: tiny-test}\n  b: {builtin: tiny-synth}\nnodes:\n  c: {op: compare, inputs: {models: [b, a], judge: a}}\n",
        )
        .unwrap();
        let keys: Vec<(&String, &Binding)> = plan.nodes[0].bindings.iter().collect();
        assert_eq!(
            keys,
            vec![
                (&"judge".to_string(), &Binding::Model("a".into())),
                (&"models.0".to_string(), &Binding::Model("b".into())),
                (&"models.1".to_string(), &Binding::Model("a".into())),
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let hasher = ContentHasher::new(None);
        let fps = plan.fingerprints(&hasher).unwrap();
        let inputs = plan.inputs_of(0, dir.path(), &fps, &hasher).unwrap();
        assert!(matches!(inputs["models.1"], Input::Model(ref m) if m.name == "a"));
    }

    /// Records what it is asked and reports one problem per model.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<(String, Vec<String>)>>);

    impl crate::ModelChecker for Recorder {
        fn check(&self, model: &crate::ModelEntry, uses: &[crate::ModelUse]) -> Diagnostics {
            let uses = uses
                .iter()
                .map(|u| format!("{}.{} ({})", u.node, u.port, u.op))
                .collect();
            self.0.lock().unwrap().push((model.name.clone(), uses));
            crate::Diagnostic::at(
                Some(model.value_loc.clone()),
                format!("checked `{}`", model.name),
            )
            .into()
        }
    }

    #[test]
    fn the_model_checker_sees_every_model_with_the_nodes_that_use_it() {
        let recorder = std::sync::Arc::new(Recorder::default());
        let mut r = Registry::new();
        r.register(std::sync::Arc::new(Compare));
        r.set_model_checker(recorder.clone());
        let yaml = "models:\n  a: {builtin: tiny-test}\n  b: {builtin: tiny-synth}\n  unused: {builtin: tiny-test}\nnodes:\n  c: {op: compare, inputs: {models: [b, a], judge: a}}\n";
        let p = Pipeline::from_text(yaml, Path::new("p.yaml"), &[]).unwrap();
        let err = Plan::build(p, &r)
            .err()
            .expect("the checker's problems fail the plan");
        assert_eq!(
            err.to_string(),
            "p.yaml:2:16: error: checked `a`\np.yaml:3:16: error: checked `b`\np.yaml:4:21: error: checked `unused`"
        );
        let seen = recorder.0.lock().unwrap().clone();
        let uses = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            seen,
            vec![
                (
                    "a".into(),
                    uses(&["c.judge (compare)", "c.models.1 (compare)"])
                ),
                ("b".into(), uses(&["c.models.0 (compare)"])),
                ("unused".into(), uses(&[])),
            ]
        );
    }

    #[test]
    fn a_list_on_a_single_port_is_an_error() {
        let err = plan_of(
            "models:\n  a: {builtin: tiny-test}\nnodes:\n  c: {op: compare, inputs: {models: [a], judge: [a]}}\n",
        )
        .err()
        .expect("the plan is rejected")
        .to_string();
        assert!(
            err.contains(
                "p.yaml:4:50: error: port `judge` of `compare` takes one input, not a list"
            ),
            "{err}"
        );
        let err = plan_of(
            "models:\n  a: {builtin: tiny-test}\nnodes:\n  c: {op: compare, inputs: {models: [], judge: a}}\n",
        )
        .err()
        .expect("the plan is rejected")
        .to_string();
        assert!(
            err.contains("input `models` of node `c` lists nothing"),
            "{err}"
        );
    }
}
