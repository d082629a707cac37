//! GGUF metadata: typed key/value pairs, with getters that name the key in their errors.

use std::collections::HashMap;

use super::error::{GgufError, GgufResult};

/// The value types of the GGUF specification, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub(crate) fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Bytes of one value; `None` for strings and arrays (variable length).
    pub(crate) fn fixed_size(self) -> Option<u64> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The spec's name (`uint32`, `string`, ...).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "uint8",
            I8 => "int8",
            U16 => "uint16",
            I16 => "int16",
            U32 => "uint32",
            I32 => "int32",
            F32 => "float32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "uint64",
            I64 => "int64",
            F64 => "float64",
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    /// Element type and elements (arrays may nest).
    Array(ValueType, Vec<MetaValue>),
}

impl MetaValue {
    /// The value as a signed integer, if it is an integer of any width that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            MetaValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a float (either float type; integers are not floats).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// Description of the type for error messages (`array of string`).
    pub fn type_name(&self) -> String {
        match self {
            MetaValue::Array(t, _) => format!("array of {}", t.name()),
            other => other.value_type().name().to_string(),
        }
    }

    fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::F64(_) => ValueType::F64,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(..) => ValueType::Array,
        }
    }
}

/// The key/value section of a GGUF file, in file order.
#[derive(Debug, Default, Clone)]
pub struct Metadata {
    entries: Vec<(String, MetaValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// Adds a pair; a key may appear only once.
    pub(crate) fn insert(&mut self, key: String, value: MetaValue) -> GgufResult<()> {
        if self.index.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// All pairs in file order.
    pub fn entries(&self) -> &[(String, MetaValue)] {
        &self.entries
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> GgufResult<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => convert(v).map(Some).ok_or_else(|| GgufError::WrongKeyType {
                key: key.to_string(),
                expected,
                found: v.type_name(),
            }),
        }
    }

    /// An integer of any width, if present.
    pub fn int(&self, key: &str) -> GgufResult<Option<i64>> {
        self.typed(key, "an integer", MetaValue::as_i64)
    }

    /// A non-negative integer, if present.
    pub fn count(&self, key: &str) -> GgufResult<Option<u64>> {
        match self.int(key)? {
            Some(v) if v < 0 => Err(GgufError::BadValue {
                key: key.to_string(),
                why: format!("must not be negative, got {v}"),
            }),
            v => Ok(v.map(|v| v as u64)),
        }
    }

    /// A float (float32 or float64), if present.
    pub fn float(&self, key: &str) -> GgufResult<Option<f64>> {
        self.typed(key, "a float", MetaValue::as_f64)
    }

    pub fn string(&self, key: &str) -> GgufResult<Option<&str>> {
        self.typed(key, "a string", MetaValue::as_str)
    }

    pub fn boolean(&self, key: &str) -> GgufResult<Option<bool>> {
        self.typed(key, "a bool", MetaValue::as_bool)
    }

    /// An array of strings, if present.
    pub fn strings(&self, key: &str) -> GgufResult<Option<Vec<&str>>> {
        self.typed(key, "an array of strings", |v| match v {
            MetaValue::Array(_, items) => items.iter().map(MetaValue::as_str).collect(),
            _ => None,
        })
    }

    /// An array of integers (any width), if present.
    pub fn ints(&self, key: &str) -> GgufResult<Option<Vec<i64>>> {
        self.typed(key, "an array of integers", |v| match v {
            MetaValue::Array(_, items) => items.iter().map(MetaValue::as_i64).collect(),
            _ => None,
        })
    }
}

/// The error for a metadata key that must be present.
pub(crate) fn missing(key: &str) -> GgufError {
    GgufError::MissingKey {
        key: key.to_string(),
    }
}
