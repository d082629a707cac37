//! The pipeline spec: a YAML file read into located structures, with `--set`
//! overrides applied, every structural problem reported at once.
//!
//! Semantic checks that need the operators (params, ports, columns, cycles) live in
//! [`crate::plan`]; this module only knows the shape of the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sspo_common::cpu_isa;

use crate::binding::ModelSource;
use crate::diag::{Diagnostic, Diagnostics, Loc};
use crate::params::Params;
use crate::server_spec;
use crate::yaml::{self, Node, Value};

pub const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "seed",
    "device",
    "cpu",
    "models",
    "nodes",
];
pub const NODE_KEYS: &[&str] = &["op", "description", "inputs", "params"];
pub const MODEL_KEYS: &[&str] = &["builtin", "path", "server", "dtype", "description"];

/// One `models:` entry.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub name: String,
    pub loc: Loc,
    pub source: ModelSource,
    /// Where `path:` / `builtin:` / `server:` is written.
    pub source_loc: Loc,
    /// Where its value is written: problems of the model itself point here.
    pub value_loc: Loc,
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// One input binding: `port: target`.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub port: String,
    pub port_loc: Loc,
    /// Position in a list input (`models: [a, b]`); `None` for a single name.
    pub index: Option<usize>,
    pub target: String,
    pub target_loc: Loc,
}

/// One `nodes:` entry.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: String,
    pub loc: Loc,
    pub op: String,
    pub op_loc: Loc,
    pub inputs: Vec<InputSpec>,
    pub params: Params,
}

/// How the CPU kernels run (the `cpu:` key). It does not enter fingerprints: like the
/// device, it changes at most the last bits of results, not what a node computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSpec {
    /// libtorch intra-op threads; `None`: libtorch's default (one per core).
    pub threads: Option<usize>,
    /// One of [`sspo_common::cpu_isa::NAMES`].
    pub isa: String,
}

impl Default for CpuSpec {
    fn default() -> Self {
        CpuSpec {
            threads: None,
            isa: "native".into(),
        }
    }
}

const CPU_KEYS: &[&str] = &["threads", "isa"];

fn parse_cpu(n: &Node, diags: &mut Diagnostics) -> CpuSpec {
    let mut cpu = CpuSpec::default();
    let Some(fields) = n.as_map() else {
        diags.push(
            Diagnostic::at(
                Some(n.loc.clone()),
                format!("`cpu` must be a mapping, found {}", n.type_name()),
            )
            .with_help("e.g. cpu: {threads: 2, isa: avx2}"),
        );
        return cpu;
    };
    check_keys(fields, CPU_KEYS, "`cpu`", diags);
    if let Some(t) = n.get("threads") {
        match t.value {
            Value::Int(i) if i >= 1 => cpu.threads = Some(i as usize),
            _ => diags.push(Diagnostic::at(
                Some(t.loc.clone()),
                format!(
                    "`cpu.threads` must be a positive integer, found {}",
                    describe(t)
                ),
            )),
        }
    }
    if let Some(i) = n.get("isa") {
        if let Some(s) = expect_str(i, "`cpu.isa`", diags) {
            let s = s.to_ascii_lowercase();
            if cpu_isa::NAMES.contains(&s.as_str()) {
                cpu.isa = s;
            } else {
                diags.push(
                    Diagnostic::at(
                        Some(i.loc.clone()),
                        format!("unknown CPU instruction set `{s}`"),
                    )
                    .help_for(&s, cpu_isa::NAMES),
                );
            }
        }
    }
    cpu
}

/// A parsed pipeline file.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub seed: u64,
    pub device: String,
    pub cpu: CpuSpec,
    pub models: BTreeMap<String, ModelEntry>,
    /// In file order.
    pub nodes: Vec<NodeSpec>,
    /// The spec file's directory: relative paths resolve against it.
    pub base_dir: PathBuf,
    pub path: PathBuf,
    /// Problems found in the file's shape that did not stop it from being read; the
    /// plan reports them together with its own, so `validate` shows every error at once.
    pub problems: Diagnostics,
    /// Names of the nodes and models whose entries are too broken to be read (their
    /// errors are in `problems`): an input naming one is not reported a second time.
    pub unreadable: Vec<String>,
}

impl Pipeline {
    /// Reads `path`, applies `--set` overrides, checks the file's shape.
    pub fn load(path: &Path, sets: &[String]) -> Result<Pipeline, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics::from(Diagnostic::at(
                None,
                format!("cannot read pipeline file {}: {e}", path.display()),
            ))
        })?;
        Self::from_text(&text, path, sets)
    }

    /// Like [`Pipeline::load`] with the text given (the path names it and anchors
    /// relative paths).
    pub fn from_text(text: &str, path: &Path, sets: &[String]) -> Result<Pipeline, Diagnostics> {
        let source = path.display().to_string();
        let mut root = yaml::parse(text, &source).map_err(Diagnostics::from)?;
        if matches!(root.value, Value::Null) {
            root.value = Value::Map(Vec::new());
        }
        let mut diags = Diagnostics::new();
        for set in sets {
            if let Err(d) = apply_set(&mut root, set) {
                diags.push(d);
            }
        }
        diags.into_result()?;
        let base_dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        from_tree(&root, path, base_dir)
    }
}

/// `a.b.c=value`: sets the value at that path of the document.
pub fn apply_set(root: &mut Node, set: &str) -> Result<(), Diagnostic> {
    let Some((key, value)) = set.split_once('=') else {
        return Err(Diagnostic::at(
            None,
            format!("--set {set}: expected KEY=VALUE (e.g. nodes.rollouts.params.temperature=0.7)"),
        ));
    };
    let path: Vec<&str> = key.split('.').map(str::trim).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(Diagnostic::at(
            None,
            format!("--set {set}: empty key segment in `{key}`"),
        ));
    }
    let node = yaml::parse_set_value(value, set, key.len() as u64 + 2)?;
    root.set_path(&path, node);
    Ok(())
}

fn from_tree(root: &Node, path: &Path, base_dir: PathBuf) -> Result<Pipeline, Diagnostics> {
    let mut diags = Diagnostics::new();
    let Some(top) = root.as_map() else {
        return Err(Diagnostic::at(
            Some(root.loc.clone()),
            format!(
                "a pipeline is a mapping with keys {}, found {}",
                TOP_KEYS.join(", "),
                root.type_name()
            ),
        )
        .into());
    };
    check_keys(top, TOP_KEYS, "pipeline", &mut diags);

    let name = match root.get("name") {
        Some(n) => expect_str(n, "`name`", &mut diags).unwrap_or_default(),
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".into()),
    };
    if !name.is_empty() && !valid_ident(&name) {
        if let Some(n) = root.get("name") {
            diags.push(Diagnostic::at(
                Some(n.loc.clone()),
                format!("pipeline name `{name}` may contain only letters, digits, `_` and `-`"),
            ));
        }
    }
    let seed = match root.get("seed") {
        Some(n) => match n.value {
            Value::Int(i) if i >= 0 => i as u64,
            _ => {
                diags.push(Diagnostic::at(
                    Some(n.loc.clone()),
                    format!(
                        "`seed` must be a non-negative integer, found {}",
                        describe(n)
                    ),
                ));
                0
            }
        },
        None => 0,
    };
    let device = match root.get("device") {
        Some(n) => {
            let d = expect_str(n, "`device`", &mut diags).unwrap_or_else(|| "auto".into());
            if !valid_device(&d) {
                diags.push(
                    Diagnostic::at(Some(n.loc.clone()), format!("unknown device `{d}`"))
                        .with_help("expected auto, cpu, cuda or cuda:N"),
                );
            }
            d
        }
        None => "auto".into(),
    };

    let cpu = match root.get("cpu") {
        Some(n) => parse_cpu(n, &mut diags),
        None => CpuSpec::default(),
    };

    let mut unreadable = Vec::new();
    let models = match root.get("models") {
        Some(m) => parse_models(m, &base_dir, &mut diags, &mut unreadable),
        None => BTreeMap::new(),
    };

    let mut nodes = Vec::new();
    match root.entry("nodes") {
        Some((_, n)) => match n.as_map() {
            Some(entries) => {
                for (k, v) in entries {
                    let Some(node) = parse_node(k, v, &mut diags) else {
                        unreadable.extend(k.as_str().map(str::to_string));
                        continue;
                    };
                    if models.contains_key(&node.id) {
                        diags.push(Diagnostic::at(
                            Some(node.loc.clone()),
                            format!(
                                "`{}` names both a model and a node; names must be unique",
                                node.id
                            ),
                        ));
                    }
                    nodes.push(node);
                }
            }
            None if matches!(n.value, Value::Null) => {}
            None => diags.push(Diagnostic::at(
                Some(n.loc.clone()),
                format!(
                    "`nodes` must be a mapping of node id to node, found {}",
                    n.type_name()
                ),
            )),
        },
        None => diags.push(Diagnostic::at(
            Some(root.loc.clone()),
            "the pipeline has no `nodes`",
        )),
    }
    Ok(Pipeline {
        name,
        seed,
        device,
        cpu,
        models,
        nodes,
        base_dir,
        path: path.to_path_buf(),
        problems: diags,
        unreadable,
    })
}

fn parse_models(
    m: &Node,
    base_dir: &Path,
    diags: &mut Diagnostics,
    unreadable: &mut Vec<String>,
) -> BTreeMap<String, ModelEntry> {
    let mut out = BTreeMap::new();
    let Some(entries) = m.as_map() else {
        if !matches!(m.value, Value::Null) {
            diags.push(Diagnostic::at(
                Some(m.loc.clone()),
                format!(
                    "`models` must be a mapping of name to model, found {}",
                    m.type_name()
                ),
            ));
        }
        return out;
    };
    for (k, v) in entries {
        let Some(name) = expect_str(k, "a model name", diags) else {
            continue;
        };
        if !valid_ident(&name) {
            diags.push(Diagnostic::at(
                Some(k.loc.clone()),
                format!("model name `{name}` may contain only letters, digits, `_` and `-`"),
            ));
        }
        let Some(fields) = v.as_map() else {
            diags.push(
                Diagnostic::at(
                    Some(v.loc.clone()),
                    format!("model `{name}` must be a mapping, found {}", v.type_name()),
                )
                .with_help("e.g. {builtin: tiny-synth} or {path: /models/Qwen2.5-0.5B-Instruct}"),
            );
            unreadable.push(name);
            continue;
        };
        check_keys(fields, MODEL_KEYS, &format!("model `{name}`"), diags);
        let given: Vec<&(Node, Node)> = fields
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), Some("builtin" | "path" | "server")))
            .collect();
        let source = match given.as_slice() {
            [(sk, sv)] => match sk.as_str() {
                Some("builtin") => expect_str(sv, "`builtin`", diags)
                    .map(|s| (ModelSource::Builtin(s), sk.loc.clone(), sv.loc.clone())),
                Some("path") => expect_str(sv, "`path`", diags).map(|s| {
                    let path = resolve(base_dir, &s);
                    if let Some(problem) = model_path_problem(&path) {
                        diags.push(Diagnostic::at(Some(sv.loc.clone()), problem));
                    }
                    let source = if ModelSource::is_gguf_path(&path) {
                        ModelSource::Gguf(path)
                    } else {
                        ModelSource::Dir(path)
                    };
                    (source, sk.loc.clone(), sv.loc.clone())
                }),
                _ => server_spec::parse_server(&name, sk, sv, base_dir, diags)
                    .map(|s| (ModelSource::Server(s), sk.loc.clone(), sv.loc.clone())),
            },
            [] => {
                diags.push(
                    Diagnostic::at(
                        Some(k.loc.clone()),
                        format!("model `{name}` needs `builtin`, `path` or `server`"),
                    )
                    .with_help(
                        "e.g. {builtin: tiny-synth} or {path: /models/Qwen2.5-0.5B-Instruct}",
                    ),
                );
                None
            }
            [_, (second, _), ..] => {
                let names: Vec<&str> = given.iter().filter_map(|(k, _)| k.as_str()).collect();
                diags.push(Diagnostic::at(
                    Some(second.loc.clone()),
                    format!(
                        "model `{name}` has {}; give one",
                        names
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                ));
                None
            }
        };
        let Some((source, source_loc, value_loc)) = source else {
            unreadable.push(name);
            continue;
        };
        let options = fields
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    Some("builtin" | "path" | "server" | "description")
                )
            })
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.to_json())))
            .collect();
        out.insert(
            name.clone(),
            ModelEntry {
                name,
                loc: k.loc.clone(),
                source,
                source_loc,
                value_loc,
                options,
            },
        );
    }
    out
}

fn parse_node(k: &Node, v: &Node, diags: &mut Diagnostics) -> Option<NodeSpec> {
    let id = expect_str(k, "a node id", diags)?;
    if !valid_ident(&id) {
        diags.push(Diagnostic::at(
            Some(k.loc.clone()),
            format!("node id `{id}` may contain only letters, digits, `_` and `-` (it names a SQL table)"),
        ));
    }
    let Some(fields) = v.as_map() else {
        diags.push(Diagnostic::at(
            Some(v.loc.clone()),
            format!(
                "node `{id}` must be a mapping with `op`, found {}",
                v.type_name()
            ),
        ));
        return None;
    };
    check_keys(fields, NODE_KEYS, &format!("node `{id}`"), diags);
    let (op, op_loc) = match v.get("op") {
        Some(op) => (expect_str(op, "`op`", diags)?, op.loc.clone()),
        None => {
            diags.push(Diagnostic::at(
                Some(k.loc.clone()),
                format!("node `{id}` has no `op`"),
            ));
            return None;
        }
    };
    let mut inputs = Vec::new();
    if let Some(inp) = v.get("inputs") {
        match &inp.value {
            Value::Map(entries) => {
                for (pk, pv) in entries {
                    let Some(port) = expect_str(pk, "a port name", diags) else {
                        continue;
                    };
                    // A list names several inputs for one port, in order.
                    let targets: Vec<(Option<usize>, &Node)> = match &pv.value {
                        Value::Seq(items) if items.is_empty() => {
                            diags.push(Diagnostic::at(
                                Some(pv.loc.clone()),
                                format!("input `{port}` of node `{id}` lists nothing"),
                            ));
                            continue;
                        }
                        Value::Seq(items) => items
                            .iter()
                            .enumerate()
                            .map(|(k, n)| (Some(k), n))
                            .collect(),
                        _ => vec![(None, pv)],
                    };
                    for (index, node) in targets {
                        let Some(target) = expect_str(node, "a node or model name", diags) else {
                            continue;
                        };
                        inputs.push(InputSpec {
                            port: port.clone(),
                            port_loc: pk.loc.clone(),
                            index,
                            target,
                            target_loc: node.loc.clone(),
                        });
                    }
                }
            }
            Value::Null => {}
            _ => diags.push(Diagnostic::at(
                Some(inp.loc.clone()),
                format!(
                    "`inputs` must map port names to node or model names, found {}",
                    inp.type_name()
                ),
            )),
        }
    }
    let params = Params::new(v.get("params").cloned(), Some(k.loc.clone()));
    Some(NodeSpec {
        id,
        loc: k.loc.clone(),
        op,
        op_loc,
        inputs,
        params,
    })
}

pub(crate) fn check_keys(
    entries: &[(Node, Node)],
    allowed: &[&str],
    what: &str,
    diags: &mut Diagnostics,
) {
    let mut seen: Vec<&str> = Vec::new();
    for (k, _) in entries {
        let Some(key) = k.as_str() else {
            diags.push(Diagnostic::at(
                Some(k.loc.clone()),
                format!("keys of {what} must be strings, found {}", k.type_name()),
            ));
            continue;
        };
        if seen.contains(&key) {
            diags.push(Diagnostic::at(
                Some(k.loc.clone()),
                format!("duplicate key `{key}` in {what}"),
            ));
        }
        seen.push(key);
        if !allowed.contains(&key) {
            diags.push(
                Diagnostic::at(
                    Some(k.loc.clone()),
                    format!("unknown key `{key}` in {what}"),
                )
                .help_for(key, allowed.iter().copied()),
            );
        }
    }
}

pub(crate) fn expect_str(n: &Node, what: &str, diags: &mut Diagnostics) -> Option<String> {
    match &n.value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => {
            diags.push(Diagnostic::at(
                Some(n.loc.clone()),
                format!("{what} must be a string, found {}", n.type_name()),
            ));
            None
        }
    }
}

/// The value itself for scalars, its type otherwise.
fn describe(n: &Node) -> String {
    match &n.value {
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) => format!("`{s}`"),
        _ => n.type_name().to_string(),
    }
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn valid_device(d: &str) -> bool {
    matches!(d, "auto" | "cpu" | "cuda")
        || d.strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

/// What is wrong with a `models:` path, if anything: a `.gguf` path must be a file, any
/// other path a model directory with a `config.json`.
fn model_path_problem(path: &Path) -> Option<String> {
    if ModelSource::is_gguf_path(path) {
        return (!path.is_file()).then(|| match path.is_dir() {
            true => format!("`{}` is a directory, not a GGUF file", path.display()),
            false => format!("GGUF file `{}` does not exist", path.display()),
        });
    }
    if !path.is_dir() {
        return Some(if path.is_file() {
            format!(
                "`{}` is a file, not a model directory (a GGUF file must end in `.gguf`)",
                path.display()
            )
        } else {
            format!("model directory `{}` does not exist", path.display())
        });
    }
    (!path.join("config.json").is_file()).then(|| {
        format!(
            "`{}` is not a model directory: it has no config.json",
            path.display()
        )
    })
}

pub(crate) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, sets: &[&str]) -> Result<Pipeline, Diagnostics> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Pipeline::from_text(text, Path::new("p.yaml"), &sets)
    }

    #[test]
    fn reads_a_pipeline() {
        let p = load(
            "name: demo\nseed: 3\nmodels:\n  base: {builtin: tiny-synth, dtype: bf16}\nnodes:\n  a: {op: source, params: {path: x.jsonl}}\n  b:\n    op: segment\n    inputs: {traces: a}\n",
            &[],
        )
        .unwrap();
        assert_eq!(p.name, "demo");
        assert_eq!(p.seed, 3);
        assert_eq!(p.nodes.len(), 2);
        assert_eq!(p.nodes[1].inputs[0].target, "a");
        assert_eq!(
            p.models["base"].source,
            ModelSource::Builtin("tiny-synth".into())
        );
        assert_eq!(p.models["base"].options["dtype"], "bf16");
    }

    #[test]
    fn model_paths_are_gguf_files_or_model_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("m.gguf"), b"GGUF").unwrap();
        std::fs::write(root.join("weights.bin"), b"").unwrap();
        std::fs::create_dir(root.join("hf")).unwrap();
        std::fs::write(root.join("hf/config.json"), b"{}").unwrap();
        std::fs::create_dir(root.join("empty")).unwrap();
        let spec = |path: &str| {
            format!("models:\n  base: {{path: {path}}}\nnodes:\n  a: {{op: source, params: {{n: 1}}}}\n")
        };
        let read = |path: &str| Pipeline::from_text(&spec(path), &root.join("p.yaml"), &[]);
        let p = read("m.gguf").unwrap();
        assert_eq!(
            p.models["base"].source,
            ModelSource::Gguf(root.join("m.gguf"))
        );
        let p = read("hf").unwrap();
        assert_eq!(p.models["base"].source, ModelSource::Dir(root.join("hf")));
        let problem = |path: &str| read(path).unwrap().problems.to_string();
        let err = problem("missing.GGUF");
        assert!(err.contains(":2:16: error: GGUF file `"), "{err}");
        assert!(err.contains("missing.GGUF` does not exist"), "{err}");
        let err = problem("weights.bin");
        assert!(
            err.contains("is a file, not a model directory (a GGUF file must end in `.gguf`)"),
            "{err}"
        );
        assert!(problem("empty").contains("it has no config.json"));
        assert!(problem("nowhere").contains("model directory `"));
    }

    #[test]
    fn reports_every_structural_error_at_once() {
        let err = load(
            "nmae: demo\nseed: -1\ndevice: gpu\nnodes:\n  a: {opp: source}\n  b: {op: segment, inptus: {}}\n",
            &[],
        )
        .unwrap()
        .problems
        .sorted();
        let text = err.to_string();
        assert!(
            text.contains(
                "p.yaml:1:1: error: unknown key `nmae` in pipeline\n  help: did you mean `name`?"
            ),
            "{text}"
        );
        assert!(
            text.contains("p.yaml:2:7: error: `seed` must be a non-negative integer, found -1"),
            "{text}"
        );
        assert!(
            text.contains("p.yaml:3:9: error: unknown device `gpu`"),
            "{text}"
        );
        assert!(
            text.contains("p.yaml:5:7: error: unknown key `opp` in node `a`"),
            "{text}"
        );
        assert!(text.contains("p.yaml:6:20: error: unknown key `inptus` in node `b`\n  help: did you mean `inputs`?"), "{text}");
    }

    #[test]
    fn set_overrides_are_typed_and_located() {
        let p = load(
            "nodes:\n  a: {op: source, params: {n: 1}}\n",
            &["nodes.a.params.n=5", "seed=9"],
        )
        .unwrap();
        assert_eq!(p.seed, 9);
        assert_eq!(p.nodes[0].params.get(&["n"]).unwrap().to_json(), 5);
        let err = load("nodes: {}\n", &["sede=1"]).unwrap().problems;
        let d = &err.0[0];
        assert_eq!(
            d.loc.as_ref().map(|l| l.source.to_string()),
            Some("--set sede=1".into())
        );
        assert_eq!(d.help.as_deref(), Some("did you mean `seed`?"));
    }

    #[test]
    fn reads_cpu_settings_and_locates_their_errors() {
        let p = load(
            "cpu: {threads: 2, isa: AVX2}\nnodes:\n  a: {op: source, params: {n: 1}}\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            p.cpu,
            CpuSpec {
                threads: Some(2),
                isa: "avx2".into()
            }
        );
        let p = load("nodes:\n  a: {op: source}\n", &[]).unwrap();
        assert_eq!(p.cpu, CpuSpec::default());
        assert_eq!(p.cpu.isa, "native");

        let text = load("cpu: {threads: 0, isa: avx3, thread: 1}\nnodes: {}\n", &[])
            .unwrap()
            .problems
            .sorted()
            .to_string();
        assert!(
            text.contains("p.yaml:1:16: error: `cpu.threads` must be a positive integer, found 0"),
            "{text}"
        );
        assert!(
            text.contains("p.yaml:1:24: error: unknown CPU instruction set `avx3`\n  help: did you mean `avx2`?"),
            "{text}"
        );
        assert!(
            text.contains("error: unknown key `thread` in `cpu`\n  help: did you mean `threads`?"),
            "{text}"
        );
        let text = load("cpu: avx2\nnodes: {}\n", &[])
            .unwrap()
            .problems
            .to_string();
        assert!(
            text.contains("p.yaml:1:6: error: `cpu` must be a mapping, found"),
            "{text}"
        );
        let p = load("nodes: {}\n", &["cpu.isa=baseline", "cpu.threads=1"]).unwrap();
        assert_eq!((p.cpu.threads, p.cpu.isa.as_str()), (Some(1), "baseline"));
    }
}
