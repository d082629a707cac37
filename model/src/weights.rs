//! Reading and writing parameters as safetensors (single file or sharded with an index).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use tch::{Kind, Tensor};

use crate::error::{read_file, read_json, ModelError, Result};

pub(crate) const SINGLE_FILE: &str = "model.safetensors";
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

/// The safetensors files of a checkpoint directory: the index's shards when an index exists,
/// else the single `model.safetensors`.
pub(crate) fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Safetensors {
                path: index.clone(),
                message: "no \"weight_map\" object".into(),
            })?;
        let shards: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        let files: Vec<PathBuf> = shards.into_iter().map(|f| dir.join(f)).collect();
        for f in &files {
            if !f.exists() {
                return Err(ModelError::MissingFile(f.clone()));
            }
        }
        return Ok(files);
    }
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        Ok(vec![single])
    } else {
        Err(ModelError::MissingFile(single))
    }
}

fn kind_of(dtype: Dtype, path: &Path, name: &str) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F64 => Kind::Double,
        other => {
            return Err(ModelError::Safetensors {
                path: path.to_path_buf(),
                message: format!("tensor {name:?} has unsupported dtype {other:?}"),
            })
        }
    })
}

/// Copies every tensor of the checkpoint in `dir` into the matching entry of `params`
/// (converting dtype and device). Checkpoint tensors without a matching parameter are ignored
/// (e.g. `lm_head.weight` of a tied model); a parameter with no tensor is an error.
pub(crate) fn load_into(dir: &Path, params: &HashMap<String, Tensor>) -> Result<()> {
    let mut filled: BTreeSet<&str> = BTreeSet::new();
    for file in checkpoint_files(dir)? {
        let bytes = read_file(&file)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Safetensors {
            path: file.clone(),
            message: e.to_string(),
        })?;
        for (name, view) in st.tensors() {
            let Some((key, param)) = params.get_key_value(name.as_str()) else {
                continue;
            };
            let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if found != param.size() {
                return Err(ModelError::ShapeMismatch {
                    name,
                    expected: param.size(),
                    found,
                });
            }
            let kind = kind_of(view.dtype(), &file, &name)?;
            let src = Tensor::f_from_data_size(view.data(), &found, kind)?;
            tch::no_grad(|| param.shallow_clone().f_copy_(&src))?;
            filled.insert(key.as_str());
        }
    }
    let mut missing: Vec<&String> = params
        .keys()
        .filter(|k| !filled.contains(k.as_str()))
        .collect();
    missing.sort();
    match missing.first() {
        Some(name) => Err(ModelError::MissingTensor {
            name: name.to_string(),
            dir: dir.to_path_buf(),
        }),
        None => Ok(()),
    }
}

struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `tensors` to `path` as one safetensors file with `{"format": "pt"}` metadata, as
/// transformers expects.
pub(crate) fn save_file(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t
            .f_detach()?
            .f_to_device(tch::Device::Cpu)?
            .f_contiguous()?;
        let dtype = match t.kind() {
            Kind::Float => Dtype::F32,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Half => Dtype::F16,
            other => {
                return Err(ModelError::Input(format!(
                    "cannot save tensor {name:?} of kind {other:?}"
                )))
            }
        };
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), Bytes { dtype, shape, data }));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let views = owned.iter().map(|(n, b)| (n.as_str(), b));
    safetensors::tensor::serialize_to_file(views, Some(metadata), path).map_err(|e| {
        ModelError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}
