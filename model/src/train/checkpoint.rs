//! Exact training checkpoints: the weights as `model.safetensors` (the same writer as
//! [`crate::Model::save_dir`]) and the AdamW moments as `optimizer.safetensors`, both
//! bit-for-bit, so a resumed run continues exactly where the saved one stood.

use std::path::Path;

use safetensors::tensor::Dtype;
use tch::{Kind, Tensor};

use crate::decoder::Decoder;
use crate::error::{ModelError, Result};
use crate::train::optim::AdamW;
use crate::weights;

/// File of the optimizer moments in a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Writes `dir/model.safetensors` and `dir/optimizer.safetensors` (`dir` must exist).
pub fn save_training_state(dir: &Path, decoder: &Decoder, optim: &AdamW) -> Result<()> {
    weights::save_file(&dir.join(weights::SINGLE_FILE), &decoder.named_parameters())?;
    weights::save_file(&dir.join(OPTIMIZER_FILE), &optim.state_tensors())
}

/// Restores the weights and the optimizer moments saved by [`save_training_state`];
/// `step` is the optimizer step count to restore.
pub fn load_training_state(
    dir: &Path,
    decoder: &Decoder,
    optim: &mut AdamW,
    step: u64,
) -> Result<()> {
    weights::load_into(dir, &decoder.var_store().variables())?;
    let path = dir.join(OPTIMIZER_FILE);
    let bytes = crate::error::read_file(&path)?;
    let bad = |message: String| ModelError::Safetensors {
        path: path.clone(),
        message,
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    optim.load_state(step, |name| {
        let view = st
            .tensor(name)
            .map_err(|e| bad(format!("tensor {name:?}: {e}")))?;
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
            other => return Err(bad(format!("tensor {name:?}: unsupported dtype {other:?}"))),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?)
    })
}
