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

/// Every problem of the HF directory `dir` that loading it would hit, each naming its
/// file: `config.json` (a supported architecture), the weights (every parameter present
/// with the shape the config implies, headers only), `tokenizer.json` (it builds), the chat
/// template (it compiles; required when `needs_chat_template`) and
/// `generation_config.json`. Independent problems are all reported; without a config that
/// parses, the weights' headers are read but not checked against shapes.
pub fn check_dir(dir: &Path, needs_chat_template: bool) -> Vec<ModelError> {
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
    match TextTokenizer::from_dir(dir) {
        Ok(tokenizer) => match ChatTemplate::from_dir(dir, &tokenizer) {
            Ok(Some(_)) => {}
            Ok(None) if needs_chat_template => problems.push(ModelError::NoChatTemplate {
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

/// The problem of the GGUF file `path` that loading it would hit first, if any (see
/// [`gguf::check_file`]).
pub fn check_gguf(path: &Path, needs_chat_template: bool) -> Result<()> {
    gguf::check_file(path, needs_chat_template)
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
