//! Checking a model on disk without loading it: what [`Model::load_dir`] and
//! [`Model::load_gguf`] would refuse, found by reading configs, tokenizers and the headers
//! of weight files (never tensor data), so a pipeline can be refused before it runs.
//!
//! The checks reuse the loaders' own readers (config, safetensors headers, GGUF header and
//! tensor infos), so they refuse what the loaders refuse.

use std::path::Path;

use crate::chat::ChatTemplate;
use crate::error::{ModelError, Result};
use crate::hub_dir::{read_config, read_generation, GENERATION_FILE};
use crate::layout::parameter_shapes;
use crate::tokenizer::TextTokenizer;
use crate::{gguf, weights};

/// What the nodes that use a model will read of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The whole model (config, weights, chat template, generation config); without it
    /// only the tokenizer is read (as for `segment`).
    pub model: bool,
    /// A node renders prompts with the chat template, which must then exist.
    pub chat_template: bool,
}

/// Every problem of the HF directory `dir` that loading what `needs` asks for would hit,
/// each naming its file: `tokenizer.json` (it builds) and, for the whole model,
/// `config.json` (a supported architecture), the weights (every parameter present with the
/// shape the config implies, headers only), the chat template (it compiles; required when
/// `needs.chat_template`) and `generation_config.json`. Independent problems are all
/// reported; without a config that parses, the weights' headers are read but not checked
/// against shapes.
pub fn check_dir(dir: &Path, needs: Needs) -> Vec<ModelError> {
    let tokenizer = TextTokenizer::from_dir(dir);
    if !needs.model {
        return tokenizer.err().into_iter().collect();
    }
    let mut problems = Vec::new();
    let config = dir.join("config.json");
    // Without a config the weights' headers are still read, against no expected shapes.
    let expected = match read_config(dir) {
        Ok(cfg) => parameter_shapes(&cfg),
        Err(e) => {
            problems.push(in_file(&config, e));
            Default::default()
        }
    };
    if let Err(e) = weights::check(dir, &expected) {
        problems.push(e);
    }
    match tokenizer {
        Ok(tokenizer) => match ChatTemplate::from_dir(dir, &tokenizer) {
            Ok(Some(_)) => {}
            Ok(None) if needs.chat_template => problems.push(ModelError::NoChatTemplate {
                path: dir.to_path_buf(),
                looked_in:
                    "neither chat_template.jinja nor a \"chat_template\" in tokenizer_config.json",
            }),
            Ok(None) => {}
            Err(e) => problems.push(in_file(dir, e)),
        },
        Err(e) => problems.push(e),
    }
    if let Err(e) = read_generation(dir) {
        problems.push(in_file(&dir.join(GENERATION_FILE), e));
    }
    problems
}

/// The problem of the GGUF file `path` that loading what `needs` asks for would hit
/// first, if any: the whole model ([`gguf::check_file`]) or only its tokenizer
/// ([`TextTokenizer::from_gguf`], no tensor is read).
pub fn check_gguf(path: &Path, needs: Needs) -> Result<()> {
    if needs.model {
        gguf::check_file(path, needs.chat_template)
    } else {
        TextTokenizer::from_gguf(path).map(|_| ())
    }
}

/// `e`, naming `path` unless it names a file already.
fn in_file(path: &Path, e: ModelError) -> ModelError {
    match e {
        ModelError::MissingFile(_)
        | ModelError::Io { .. }
        | ModelError::Json { .. }
        | ModelError::Safetensors { .. }
        | ModelError::MissingTensor { .. }
        | ModelError::Gguf { .. }
        | ModelError::InFile { .. }
        | ModelError::NoChatTemplate { .. } => e,
        other => ModelError::InFile {
            path: path.to_path_buf(),
            source: Box::new(other),
        },
    }
}
