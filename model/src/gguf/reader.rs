//! Parsing a GGUF file (versions 2 and 3, little-endian): header, metadata, tensor infos
//! and the aligned data section. Every read is bounds-checked and every tensor's data is
//! checked to lie inside the file before anything is dequantised.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::dequant;
use super::error::{GgufError, GgufResult};
use super::ggml_type::GgmlType;
use super::metadata::{MetaValue, Metadata, ValueType};
use super::mmap::FileBytes;
use crate::error::{ModelError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Arrays nest (an array of arrays is legal); refuse absurd depths instead of recursing.
const MAX_ARRAY_DEPTH: usize = 8;

/// One tensor of a GGUF file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous (innermost) one.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// The shape in row-major (torch) order: ggml's dimensions reversed.
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    /// Number of values.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file whose bytes stay mapped while it lives.
pub struct GgufFile {
    path: PathBuf,
    bytes: FileBytes,
    version: u32,
    alignment: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and checks `path`: errors name the file and what is wrong with it.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        if !path.exists() {
            return Err(ModelError::MissingFile(path.to_path_buf()));
        }
        let file = std::fs::File::open(path).map_err(io)?;
        let bytes = FileBytes::new(&file).map_err(io)?;
        let parsed = parse(bytes.as_slice()).map_err(|e| e.at(path))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            bytes,
            version: parsed.version,
            alignment: parsed.alignment,
            metadata: parsed.metadata,
            by_name: parsed
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: parsed.tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor (bounds were checked when the file was opened).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes.as_slice()[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }

    /// The tensor `name` as f32 values in row-major order (see [`TensorInfo::shape`]).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name).ok_or_else(|| {
            GgufError::NoSuchTensor {
                tensor: name.to_string(),
            }
            .at(&self.path)
        })?;
        self.dequantize_info(t).map_err(|e| e.at(&self.path))
    }

    pub(crate) fn dequantize_info(&self, t: &TensorInfo) -> GgufResult<Vec<f32>> {
        dequant::check_supported(t)?;
        let mut out = vec![0f32; t.n_elements() as usize];
        dequant::dequantize(t, self.tensor_bytes(t), &mut out)?;
        Ok(out)
    }
}

struct Parsed {
    version: u32,
    alignment: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
}

/// Parses the file in the order it is laid out: header, metadata, tensor infos, and the
/// placement of each tensor's data.
fn parse(data: &[u8]) -> GgufResult<Parsed> {
    let mut c = Cursor { data, pos: 0 };
    let (version, n_tensors, n_kv) = header(&mut c)?;
    let metadata = read_metadata(&mut c, n_kv)?;
    let alignment = alignment(&metadata)?;
    let infos = read_tensor_infos(&mut c, n_tensors)?;
    let data_start = align_up(c.pos as u64, alignment);
    let tensors = place_tensors(infos, data_start, alignment, data.len() as u64)?;
    Ok(Parsed {
        version,
        alignment,
        metadata,
        tensors,
    })
}

/// Magic, version, tensor count and metadata count.
fn header(c: &mut Cursor<'_>) -> GgufResult<(u32, u64, u64)> {
    let magic = c.take(4, || "the magic number".into())?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic {
            found: String::from_utf8_lossy(magic).into_owned(),
        });
    }
    let version = c.u32(|| "the version".into())?;
    match version {
        2 | 3 => {}
        v if matches!(v.swap_bytes(), 2 | 3) => return Err(GgufError::BigEndian { version: v }),
        v => return Err(GgufError::UnsupportedVersion { version: v }),
    }
    let n_tensors = c.u64(|| "the tensor count".into())?;
    let n_kv = c.u64(|| "the metadata count".into())?;
    Ok((version, n_tensors, n_kv))
}

fn read_metadata(c: &mut Cursor<'_>, n_kv: u64) -> GgufResult<Metadata> {
    // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
    c.check_count(n_kv, 13, "the metadata count")?;
    let mut metadata = Metadata::default();
    for i in 0..n_kv {
        let key = c.string(|| format!("the key of metadata entry {i}"))?;
        let what = || format!("the value of metadata key {key:?}");
        let type_id = c.u32(what)?;
        let value = c.value(type_id, 0, &what)?;
        metadata.insert(key, value)?;
    }
    Ok(metadata)
}

/// `general.alignment`: a power-of-two uint32, 32 when absent.
fn alignment(metadata: &Metadata) -> GgufResult<u64> {
    match metadata.get("general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(MetaValue::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(MetaValue::U32(a)) => Err(GgufError::BadAlignment {
            alignment: u64::from(*a),
        }),
        Some(other) => Err(GgufError::WrongKeyType {
            key: "general.alignment".into(),
            expected: "a uint32",
            found: other.type_name(),
        }),
    }
}

/// A tensor info as stored: its offset is relative to the data section.
struct StoredInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
}

fn read_tensor_infos(c: &mut Cursor<'_>, n_tensors: u64) -> GgufResult<Vec<StoredInfo>> {
    // A tensor info takes at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset) bytes.
    c.check_count(n_tensors, 24, "the tensor count")?;
    let mut infos = Vec::with_capacity(n_tensors as usize);
    let mut seen = HashSet::new();
    for i in 0..n_tensors {
        let info = c.tensor_info(i)?;
        if !seen.insert(info.name.clone()) {
            return Err(GgufError::DuplicateTensor { tensor: info.name });
        }
        infos.push(info);
    }
    Ok(infos)
}

/// Checks that each tensor is aligned and lies inside the file, and sizes it.
fn place_tensors(
    infos: Vec<StoredInfo>,
    data_start: u64,
    alignment: u64,
    len: u64,
) -> GgufResult<Vec<TensorInfo>> {
    infos
        .into_iter()
        .map(|info| {
            if info.offset % alignment != 0 {
                return Err(GgufError::Misaligned {
                    tensor: info.name,
                    offset: info.offset,
                    alignment,
                });
            }
            let n_bytes = byte_size(&info.name, &info.dims, info.ggml_type)?;
            let offset = data_start.saturating_add(info.offset);
            let end = offset.saturating_add(n_bytes);
            // Saturation only happens past any real file length, so the check stays exact.
            if end > len {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: info.name,
                    offset,
                    end,
                    len,
                });
            }
            Ok(TensorInfo {
                name: info.name,
                dims: info.dims,
                ggml_type: info.ggml_type,
                offset,
                n_bytes,
            })
        })
        .collect()
}

fn align_up(pos: u64, alignment: u64) -> u64 {
    pos.div_ceil(alignment) * alignment
}

/// Bytes of a tensor's data.
fn byte_size(name: &str, dims: &[u64], ty: GgmlType) -> GgufResult<u64> {
    let bad = |why: String| GgufError::BadShape {
        tensor: name.to_string(),
        dims: dims.to_vec(),
        why,
    };
    let inner = dims.first().copied().unwrap_or(1);
    if inner % ty.block_size() != 0 {
        return Err(bad(format!(
            "the row length {inner} is not a multiple of the {} block size {}",
            ty.name(),
            ty.block_size()
        )));
    }
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64 && dims.iter().all(|&d| d <= i64::MAX as u64))
        .ok_or_else(|| bad("the number of values overflows".into()))?;
    // Whole blocks along the innermost dimension, so the division is exact.
    (n_elements / ty.block_size())
        .checked_mul(ty.type_size())
        .ok_or_else(|| bad("the size in bytes overflows".into()))
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: impl Fn() -> String) -> GgufResult<&'a [u8]> {
        let end = (self.pos as u64).checked_add(n);
        match end {
            Some(end) if end <= self.data.len() as u64 => {
                let s = &self.data[self.pos..end as usize];
                self.pos = end as usize;
                Ok(s)
            }
            _ => Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                end: (self.pos as u64).saturating_add(n),
                len: self.data.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: impl Fn() -> String) -> GgufResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: impl Fn() -> String) -> GgufResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl Fn() -> String) -> GgufResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Refuses counts the remaining bytes cannot hold, before allocating for them.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> GgufResult<()> {
        let left = (self.data.len() - self.pos) as u64;
        if count.saturating_mul(min_size) > left {
            return Err(GgufError::ImplausibleCount {
                what: what.to_string(),
                count,
                left,
            });
        }
        Ok(())
    }

    fn string(&mut self, what: impl Fn() -> String) -> GgufResult<String> {
        let len = self.u64(&what)?;
        let bytes = self.take(len, &what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 { what: what() })
    }

    fn value(
        &mut self,
        type_id: u32,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> GgufResult<MetaValue> {
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            what: what(),
            type_id,
        })?;
        Ok(match ty {
            ValueType::U8 => MetaValue::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => MetaValue::U32(self.u32(what)?),
            ValueType::I32 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::Bool => MetaValue::Bool(self.array::<1>(what)?[0] != 0),
            ValueType::String => MetaValue::String(self.string(what)?),
            ValueType::U64 => MetaValue::U64(self.u64(what)?),
            ValueType::I64 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Unsupported(format!(
                        "{} nests arrays deeper than {MAX_ARRAY_DEPTH} levels",
                        what()
                    )));
                }
                let elem_id = self.u32(what)?;
                let elem =
                    ValueType::from_id(elem_id).ok_or_else(|| GgufError::UnknownValueType {
                        what: what(),
                        type_id: elem_id,
                    })?;
                let n = self.u64(what)?;
                // Strings and arrays take at least their 8-byte length each.
                self.check_count(n, elem.fixed_size().unwrap_or(8), &what())?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_id, depth + 1, what)?);
                }
                MetaValue::Array(elem, items)
            }
        })
    }

    /// Tensor info `i`.
    fn tensor_info(&mut self, i: u64) -> GgufResult<StoredInfo> {
        let name = self.string(|| format!("the name of tensor {i}"))?;
        let what = || format!("the info of tensor {name:?}");
        let n_dims = self.u32(what)?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::BadShape {
                tensor: name.clone(),
                dims: Vec::new(),
                why: format!("{n_dims} dimensions, ggml allows at most {MAX_DIMS}"),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(what)?);
        }
        let type_id = self.u32(what)?;
        let offset = self.u64(what)?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
            tensor: name.clone(),
            type_id,
        })?;
        Ok(StoredInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }
}
