//! Decoder-only transformers on libtorch.
