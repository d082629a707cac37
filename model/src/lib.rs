//! Decoder-only transformers (Qwen2 / Llama family) on libtorch.
//!
//! * [`Model::load_dir`] / [`Model::save_dir`]: HF directories in and out;
//!   [`Model::load_gguf`]: llama.cpp's GGUF files in ([`gguf`]).
//! * [`Decoder::forward`]: logits for causal, padded or custom-masked (packed) batches;
//!   [`Decoder::forward_cached`] for incremental decoding with a [`KvCache`].
//! * [`generate::Generator`]: batched KV-cache generation with continuous batching.
//! * [`score`]: per-token log-probs of continuations.
//! * [`train`]: log-probs with gradient, AdamW, schedule, losses, exact checkpoints.
//! * [`check`]: what loading a directory or GGUF file would refuse, found without reading
//!   weights ([`layout`]: the parameters a config implies).

pub mod bf16_rows;
pub mod builtin;
pub mod cache;
pub mod chat;
pub mod check;
pub mod config;
pub mod cpu;
pub mod decoder;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hub_dir;
pub mod layout;
pub mod logits;
mod omp_pool;
pub mod packed;
pub mod profile;
mod rope;
pub mod runtime;
pub mod sampling;
pub mod score;
pub mod text;
pub mod tokenizer;
pub mod train;
mod weights;

pub use cache::KvCache;
pub use chat::ChatTemplate;
pub use config::{Family, ModelConfig, RopeScaling};
pub use cpu::{configure_cpu, CpuIsa, CpuSettings};
pub use decoder::{Attention, Decoder};
pub use error::{ModelError, Result};
pub use generate::{
    FinishReason, GenerationOutput, GenerationRequest, Generator, GeneratorConfig, SamplingParams,
};
pub use gguf::{gguf_identity, GgufError, GgufFile};
pub use hub_dir::{GenerationDefaults, LoadOptions, Model};
pub use runtime::{check_dtype_supported, parse_device, DType};
pub use score::{
    continuation_logprobs, forward_logits, probe_logprobs, PackedProbes, ScoreRequest,
};
pub use text::ModelText;
pub use tokenizer::{IncrementalDecoder, TextTokenizer};
