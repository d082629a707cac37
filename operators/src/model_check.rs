//! The plan's model check ([`sspo_engine::ModelChecker`]): every `models:` entry is
//! checked on disk as the loaders of [`crate::model_port`] would read it, without reading
//! weights ([`sspo_model::check`]), so a broken model fails `validate` and a run before
//! any node runs, rather than when the node that needs it loads it.
//!
//! Nodes ask for the chat template with their `chat_template` param (generate, probe,
//! train and evaluate share it through [`crate::rollout`]): a model used by such a node
//! must have one. A model used only through ports that read its tokenizer alone
//! ([`sspo_engine::Port::tokenizer_only`], as `segment`'s) has only its tokenizer checked.

use std::path::Path;
use std::str::FromStr;

use serde_json::Value;
use sspo_common::plural::agree;
use sspo_engine::{
    Diagnostic, Diagnostics, ModelChecker, ModelEntry, ModelSource, ModelUse, ServerSpec,
};
use sspo_model::builtin::BUILTIN_NAMES;
use sspo_model::check::Needs;
use sspo_model::{DType, GgufError, ModelError, ModelText};

/// Checks HF directories, GGUF files and built-in names.
pub struct DiskModels;

impl ModelChecker for DiskModels {
    fn check(&self, model: &ModelEntry, uses: &[ModelUse]) -> Diagnostics {
        let mut diags = Diagnostics::new();
        let chat_users: Vec<&str> = uses
            .iter()
            .filter(|u| u.params.get("chat_template") == Some(&Value::Bool(true)))
            .map(|u| u.node.as_str())
            .collect();
        let needs = Needs {
            // An unused model is checked whole: it is there to be used.
            model: uses.is_empty() || uses.iter().any(|u| !u.tokenizer_only),
            chat_template: !chat_users.is_empty(),
        };
        let problems = match &model.source {
            ModelSource::Builtin(name) => {
                if !BUILTIN_NAMES.contains(&name.as_str()) {
                    diags.push(
                        Diagnostic::at(
                            Some(model.value_loc.clone()),
                            format!("model `{}`: unknown built-in model `{name}`", model.name),
                        )
                        .help_for(name, BUILTIN_NAMES.iter().copied()),
                    );
                }
                Vec::new()
            }
            // A path that is not there, or a directory without config.json, is the spec's
            // own error already.
            ModelSource::Dir(dir) if dir.join("config.json").is_file() => {
                sspo_model::check::check_dir(dir, needs)
            }
            ModelSource::Gguf(file) if file.is_file() => sspo_model::check::check_gguf(file, needs)
                .err()
                .into_iter()
                .collect(),
            ModelSource::Dir(_) | ModelSource::Gguf(_) => Vec::new(),
            ModelSource::Server(spec) => server_tokenizer_problems(spec, needs.chat_template),
        };
        for problem in problems {
            diags.push(diagnostic(model, &problem, &chat_users));
        }
        if let Some(d) = dtype_problem(model) {
            diags.push(d);
        }
        diags
    }
}

/// What reading a server model's tokenizer (and, when asked for, its chat template)
/// would refuse. The spec already checked that the path is there.
fn server_tokenizer_problems(spec: &ServerSpec, chat_template: bool) -> Vec<ModelError> {
    let path = &spec.tokenizer;
    let gguf = ModelSource::is_gguf_path(path);
    if !(path.is_file() || path.join("tokenizer.json").is_file()) {
        return Vec::new();
    }
    let text = if gguf {
        ModelText::from_gguf(path)
    } else {
        ModelText::from_dir(path)
    };
    match text {
        Err(e) => vec![e],
        Ok(t) if chat_template && t.chat_template.is_none() => vec![ModelError::NoChatTemplate {
            path: path.clone(),
            looked_in: if gguf {
                "no tokenizer.chat_template metadata"
            } else {
                "neither chat_template.jinja nor a \"chat_template\" in tokenizer_config.json"
            },
        }],
        Ok(_) => Vec::new(),
    }
}

/// A problem of the model's files, at its `path:` value.
fn diagnostic(model: &ModelEntry, problem: &ModelError, chat_users: &[&str]) -> Diagnostic {
    let at = Some(model.value_loc.clone());
    let name = &model.name;
    if let ModelError::NoChatTemplate { .. } = problem {
        let n = chat_users.len() as u64;
        let names: Vec<String> = chat_users.iter().map(|u| format!("`{u}`")).collect();
        let nodes = format!("{} {}", agree(n, "node{|s}"), names.join(", "));
        return Diagnostic::at(
            at,
            format!(
                "model `{name}`: {problem}, but {nodes} {} one with `chat_template: true`",
                agree(n, "{asks|ask} for"),
            ),
        )
        .with_help(format!(
            "set `chat_template: false` on {nodes}, or add the model's chat template to it"
        ));
    }
    let d = Diagnostic::at(at, format!("model `{name}`: {problem}"));
    match help(problem) {
        Some(h) => d.with_help(h),
        None => d,
    }
}

/// The help for weights that do not match their config.
const MISFIT: &str = "the weights do not fit config.json: were they saved from another model?";

fn help(problem: &ModelError) -> Option<String> {
    let file_name = |p: &Path| p.file_name().map(|f| f.to_string_lossy().into_owned());
    match problem {
        ModelError::MissingFile(p) => match file_name(p).as_deref() {
            Some("tokenizer.json") => Some(
                "copy tokenizer.json (and tokenizer_config.json) from where the model came from"
                    .into(),
            ),
            Some("model.safetensors") => Some(
                "the weights are model.safetensors, or shards listed in model.safetensors.index.json"
                    .into(),
            ),
            _ => None,
        },
        ModelError::InFile { source, .. } => match source.as_ref() {
            ModelError::ShapeMismatch { .. } => Some(MISFIT.into()),
            _ => None,
        },
        ModelError::Gguf {
            source:
                GgufError::Truncated { .. }
                | GgufError::TensorOutOfBounds { .. }
                | GgufError::ImplausibleCount { .. },
            ..
        } => Some("the file looks truncated: was its download or copy interrupted?".into()),
        ModelError::MissingTensor { .. } => Some(MISFIT.into()),
        _ => None,
    }
}

/// A `dtype:` the model runtime would refuse when it loads the model.
fn dtype_problem(model: &ModelEntry) -> Option<Diagnostic> {
    const NAMES: [&str; 3] = ["fp32", "bf16", "fp16"];
    let v = model.options.get("dtype")?;
    let at = Some(model.loc.clone());
    let name = &model.name;
    Some(match v.as_str() {
        Some(s) if DType::from_str(s).is_ok() => return None,
        Some(s) => {
            Diagnostic::at(at, format!("model `{name}`: unknown dtype `{s}`")).help_for(s, NAMES)
        }
        None => Diagnostic::at(
            at,
            format!("model `{name}`: `dtype` must be a string, found {v}"),
        )
        .help_for("", NAMES),
    })
}
