//! Error type shared by every module of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file the model directory must contain is absent.
    #[error("missing file: {}", .0.display())]
    MissingFile(PathBuf),

    /// Reading or writing a file failed.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file could not be parsed.
    #[error("invalid JSON in {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// `config.json` names a model family this crate does not implement.
    #[error("unsupported model_type {0:?} (supported: qwen2, llama, mistral)")]
    UnknownModelType(String),

    /// `config.json` is well-formed JSON but describes something unsupported or inconsistent.
    #[error("invalid model config: {0}")]
    Config(String),

    /// A `cpu:` setting this process cannot apply.
    #[error("cpu settings: {0}")]
    Cpu(String),

    /// A checkpoint lacks a tensor the architecture needs.
    #[error("missing tensor {name:?} in checkpoint {}", dir.display())]
    MissingTensor { name: String, dir: PathBuf },

    /// A checkpoint tensor has a shape different from what the config implies.
    #[error("tensor {name:?} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },

    /// A safetensors file is corrupt or holds an unsupported dtype.
    #[error("safetensors error in {}: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },

    /// The requested dtype cannot run on the requested device.
    #[error("dtype {dtype} is not supported on device {device}: {reason}")]
    UnsupportedDtype {
        dtype: String,
        device: String,
        reason: String,
    },

    /// A device string could not be parsed or the device is unavailable.
    #[error("invalid device {0:?}: {1}")]
    Device(String, String),

    /// The tokenizer could not be loaded or failed to encode/decode.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// The chat template could not be compiled or rendered.
    #[error("chat template error: {0}")]
    ChatTemplate(String),

    /// A caller passed tensors or requests that do not fit together.
    #[error("invalid input: {0}")]
    Input(String),

    /// An unknown built-in model name was requested.
    #[error("unknown built-in model {0:?} (available: {1})")]
    UnknownBuiltin(String, String),

    /// A GGUF file is malformed, truncated or describes something this crate does not run.
    #[error("GGUF file {}: {source}", path.display())]
    Gguf {
        path: PathBuf,
        #[source]
        source: crate::gguf::GgufError,
    },

    /// An error about one file's contents, with that file (for errors that do not name
    /// it themselves).
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<ModelError>,
    },

    /// A node renders prompts with the chat template, but the model has none.
    #[error("{} has no chat template ({looked_in})", path.display())]
    NoChatTemplate {
        path: PathBuf,
        /// Where one was looked for.
        looked_in: &'static str,
    },

    /// libtorch raised an error.
    #[error("torch error: {0}")]
    Torch(#[from] tch::TchError),
}

/// Crate-wide result alias.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    if !path.exists() {
        return Err(ModelError::MissingFile(path.to_path_buf()));
    }
    std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let bytes = read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn write_json(path: &std::path::Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text + "\n").map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}
