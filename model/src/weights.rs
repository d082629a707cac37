//! Reading and writing parameters as safetensors (single file or sharded with an index).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use std::io::{Read, Seek, SeekFrom};

use safetensors::tensor::{Dtype, View};
use tch::{Kind, Tensor};

use crate::error::{read_json, ModelError, Result};

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

fn kind_of(dtype: &str, path: &Path, name: &str) -> Result<Kind> {
    Ok(match dtype {
        "F32" => Kind::Float,
        "BF16" => Kind::BFloat16,
        "F16" => Kind::Half,
        "F64" => Kind::Double,
        other => {
            return Err(ModelError::Safetensors {
                path: path.to_path_buf(),
                message: format!("tensor {name:?} has unsupported dtype {other}"),
            })
        }
    })
}

/// One entry of a safetensors header.
struct Entry {
    name: String,
    dtype: String,
    shape: Vec<i64>,
    start: u64,
    end: u64,
}

/// Reads the JSON header of a safetensors file; returns the entries and where data begins.
fn read_header(file: &mut std::fs::File, path: &Path) -> Result<(Vec<Entry>, u64)> {
    let bad = |message: String| ModelError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_len = file.metadata().map_err(io)?.len();
    if file_len < 8 {
        return Err(bad(format!(
            "the file has {file_len} bytes, fewer than the 8 of the header length (truncated?)"
        )));
    }
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io)?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(bad(format!("implausible header length {n}")));
    }
    if n + 8 > file_len {
        return Err(bad(format!(
            "the file ends inside its header ({n} header bytes declared, the file has {file_len}; truncated?)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io)?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("bad header: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not an object".into()))?;
    let mut entries = Vec::new();
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| {
            info.get(k)
                .ok_or_else(|| bad(format!("{name}: missing {k}")))
        };
        let dtype = field("dtype")?.as_str().unwrap_or_default().to_string();
        let ints = |k: &str| -> Result<Vec<u64>> {
            field(k)?
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
                .ok_or_else(|| bad(format!("{name}: bad {k}")))
        };
        let shape = ints("shape")?.into_iter().map(|d| d as i64).collect();
        let offsets = ints("data_offsets")?;
        let [start, end] = offsets[..] else {
            return Err(bad(format!("{name}: bad data_offsets")));
        };
        if start > end || 8 + n + end > file_len {
            return Err(bad(format!("{name}: data_offsets outside the file")));
        }
        entries.push(Entry {
            name: name.clone(),
            dtype,
            shape,
            start,
            end,
        });
    }
    Ok((entries, 8 + n))
}

/// A tensor of a checkpoint that fills a parameter, checked against it: where its bytes
/// are and how to read them.
struct Planned {
    param: String,
    kind: Kind,
    shape: Vec<i64>,
    /// Absolute offset of the data in its file.
    offset: u64,
    n_bytes: usize,
}

/// Reads the headers of the checkpoint in `dir` (never its data) and matches its tensors
/// with the parameters `expected` (name to shape): every parameter gets a tensor of its
/// shape, in a dtype we read, whose bytes fit the shape and lie inside the file.
/// Checkpoint tensors without a matching parameter are ignored (e.g. `lm_head.weight` of
/// a tied model). Returns each file with its tensors in data order.
fn plan(dir: &Path, expected: &HashMap<String, Vec<i64>>) -> Result<Vec<(PathBuf, Vec<Planned>)>> {
    let mut filled: BTreeSet<&str> = BTreeSet::new();
    let mut files = Vec::new();
    for path in checkpoint_files(dir)? {
        let mut file = std::fs::File::open(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let (mut entries, data_start) = read_header(&mut file, &path)?;
        entries.sort_by_key(|e| e.start);
        let mut planned = Vec::new();
        for e in entries {
            let Some((key, shape)) = expected.get_key_value(e.name.as_str()) else {
                continue;
            };
            if &e.shape != shape {
                return Err(ModelError::InFile {
                    path: path.clone(),
                    source: Box::new(ModelError::ShapeMismatch {
                        name: e.name,
                        expected: shape.clone(),
                        found: e.shape,
                    }),
                });
            }
            let kind = kind_of(&e.dtype, &path, &e.name)?;
            let numel: i64 = e.shape.iter().product();
            let n_bytes = (e.end - e.start) as usize;
            if n_bytes != numel as usize * kind.elt_size_in_bytes() {
                return Err(ModelError::Safetensors {
                    path: path.clone(),
                    message: format!(
                        "tensor {:?}: {n_bytes} bytes for shape {:?}",
                        e.name, e.shape
                    ),
                });
            }
            filled.insert(key.as_str());
            planned.push(Planned {
                param: key.clone(),
                kind,
                shape: e.shape,
                offset: data_start + e.start,
                n_bytes,
            });
        }
        files.push((path, planned));
    }
    let mut missing: Vec<&String> = expected
        .keys()
        .filter(|k| !filled.contains(k.as_str()))
        .collect();
    missing.sort();
    match missing.first() {
        Some(name) => Err(ModelError::MissingTensor {
            name: name.to_string(),
            dir: dir.to_path_buf(),
        }),
        None => Ok(files),
    }
}

/// Checks the checkpoint in `dir` against the parameters `expected` (name to shape) as
/// [`load_into`] would, reading only the files' headers.
pub(crate) fn check(dir: &Path, expected: &HashMap<String, Vec<i64>>) -> Result<()> {
    plan(dir, expected).map(|_| ())
}

/// Copies every tensor of the checkpoint in `dir` into the matching entry of `params`
/// (converting dtype and device), once [`plan`] has checked them all. Tensors are read one
/// at a time, so peak memory is the model plus its largest tensor.
pub(crate) fn load_into(dir: &Path, params: &HashMap<String, Tensor>) -> Result<()> {
    let shapes: HashMap<String, Vec<i64>> =
        params.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    let mut buf = Vec::new();
    for (path, planned) in plan(dir, &shapes)? {
        let io = |source| ModelError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::open(&path).map_err(io)?;
        for p in planned {
            buf.resize(p.n_bytes, 0);
            file.seek(SeekFrom::Start(p.offset)).map_err(io)?;
            file.read_exact(&mut buf).map_err(io)?;
            let src = Tensor::f_from_data_size(&buf, &p.shape, p.kind)?;
            tch::no_grad(|| params[&p.param].shallow_clone().f_copy_(&src))?;
        }
    }
    Ok(())
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
