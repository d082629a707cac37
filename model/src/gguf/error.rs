//! What can be wrong with a GGUF file. Every variant travels inside
//! [`ModelError::Gguf`](crate::ModelError::Gguf), which adds the file's path.

use crate::error::ModelError;

/// A problem with the contents of one GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file ends before something it declares.
    #[error("the file ends inside {what} (bytes {offset}..{end} needed, the file has {len})")]
    Truncated {
        what: String,
        offset: u64,
        end: u64,
        len: u64,
    },

    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: it starts with {found:?}, not \"GGUF\"")]
    BadMagic { found: String },

    /// A header version this reader does not know.
    #[error("unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion { version: u32 },

    /// The version reads as 2 or 3 only with its bytes swapped.
    #[error("big-endian GGUF files are not supported (version field {version:#010x})")]
    BigEndian { version: u32 },

    /// A metadata value type id outside the GGUF specification.
    #[error("{what} has unknown value type id {type_id}")]
    UnknownValueType { what: String, type_id: u32 },

    /// A string that is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: String },

    /// A count or size so large the file could not hold it.
    #[error("{what} declares {count} entries, which cannot fit in the {left} bytes left in the file (truncated or corrupt)")]
    ImplausibleCount { what: String, count: u64, left: u64 },

    /// The same metadata key twice.
    #[error("metadata key {key:?} appears twice")]
    DuplicateKey { key: String },

    /// The same tensor name twice.
    #[error("tensor {tensor:?} appears twice")]
    DuplicateTensor { tensor: String },

    /// `general.alignment` is zero or not a power of two.
    #[error("general.alignment must be a non-zero power of two, got {alignment}")]
    BadAlignment { alignment: u64 },

    /// A tensor with more dimensions than ggml allows, or a size that overflows.
    #[error("tensor {tensor:?} has an invalid shape {dims:?} (ggml order): {why}")]
    BadShape {
        tensor: String,
        dims: Vec<u64>,
        why: String,
    },

    /// A tensor type id this reader does not know at all.
    #[error("tensor {tensor:?} has unknown ggml type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },

    /// A tensor whose data starts off the file's alignment.
    #[error("tensor {tensor:?} starts at offset {offset}, which is not a multiple of the alignment {alignment}")]
    Misaligned {
        tensor: String,
        offset: u64,
        alignment: u64,
    },

    /// A tensor whose data runs past the end of the file.
    #[error("the data of tensor {tensor:?} (bytes {offset}..{end}) runs past the end of the file ({len} bytes)")]
    TensorOutOfBounds {
        tensor: String,
        offset: u64,
        end: u64,
        len: u64,
    },

    /// A known ggml type this crate cannot dequantise.
    #[error("tensor {tensor:?} is stored as {ggml_type}, which cannot be dequantised (supported: {supported})")]
    UnsupportedTensorType {
        tensor: String,
        ggml_type: &'static str,
        supported: String,
    },

    /// A tensor name that no loader knows.
    #[error("no tensor named {tensor:?}")]
    NoSuchTensor { tensor: String },

    /// A metadata key the loader needs is absent.
    #[error("missing metadata key {key:?}")]
    MissingKey { key: String },

    /// A metadata key holds a value of the wrong type.
    #[error("metadata key {key:?} must be {expected}, found {found}")]
    WrongKeyType {
        key: String,
        expected: &'static str,
        found: String,
    },

    /// A metadata value the loader cannot use.
    #[error("metadata key {key:?}: {why}")]
    BadValue { key: String, why: String },

    /// `general.architecture` names a model family this crate does not implement.
    #[error("architecture {arch:?} is not supported (supported: {supported})")]
    UnsupportedArchitecture { arch: String, supported: String },

    /// `tokenizer.ggml.model` names a tokenizer this crate cannot build.
    #[error("tokenizer model {model:?} is not supported (supported: {supported})")]
    UnsupportedTokenizer { model: String, supported: String },

    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not know.
    #[error("pre-tokenizer {pre:?} is not supported (supported: {supported})")]
    UnsupportedPreTokenizer { pre: String, supported: String },

    /// A feature of the model the decoder does not implement.
    #[error("{0}")]
    Unsupported(String),

    /// A tensor the architecture needs is absent.
    #[error("missing tensor {tensor:?}")]
    MissingTensor { tensor: String },

    /// A tensor the architecture does not use: loading without it would silently change
    /// the model.
    #[error("tensor {tensor:?} is not part of a {arch} model{hint}")]
    UnexpectedTensor {
        tensor: String,
        arch: String,
        hint: String,
    },

    /// A tensor whose shape does not match the configuration.
    #[error("tensor {tensor:?} has shape {found:?}, the configuration implies {expected:?}")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },

    /// Building the model from valid GGUF contents failed (config, tokenizer, torch).
    #[error("{0}")]
    Model(#[source] Box<ModelError>),
}

impl GgufError {
    /// Attaches the file: the error callers see.
    pub(crate) fn at(self, path: &std::path::Path) -> ModelError {
        ModelError::Gguf {
            path: path.to_path_buf(),
            source: self,
        }
    }
}

impl From<ModelError> for GgufError {
    fn from(e: ModelError) -> Self {
        GgufError::Model(Box::new(e))
    }
}

impl From<tch::TchError> for GgufError {
    fn from(e: tch::TchError) -> Self {
        GgufError::Model(Box::new(ModelError::Torch(e)))
    }
}

/// Result of the GGUF internals, before the path is attached.
pub(crate) type GgufResult<T> = std::result::Result<T, GgufError>;
