//! Content identities and node fingerprints (blake3). Never paths, never mtimes: a
//! file's identity is its bytes; an mtime-keyed cache only avoids re-reading them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Hex blake3 of `bytes`.
pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// JSON with object keys sorted, so equal values always hash equal.
pub fn canonical_json(v: &serde_json::Value) -> String {
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let sorted: BTreeMap<&String, serde_json::Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::to_value(sorted).unwrap_or(serde_json::Value::Null)
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct CacheEntry {
    len: u64,
    mtime_ns: u128,
    hash: String,
}

/// Hashes file contents, remembering (path, size, mtime) → hash in a small JSON file so
/// that multi-gigabyte weights are read once, not at every run.
pub struct ContentHasher {
    cache_path: Option<PathBuf>,
    cache: Mutex<BTreeMap<String, CacheEntry>>,
    dirty: Mutex<bool>,
}

impl ContentHasher {
    pub fn new(cache_path: Option<PathBuf>) -> Self {
        let cache = cache_path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            cache_path,
            cache: Mutex::new(cache),
            dirty: Mutex::new(false),
        }
    }

    /// Identity of one file's contents.
    pub fn file(&self, path: &Path) -> std::io::Result<String> {
        let meta = std::fs::metadata(path)?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string();
        if let Ok(cache) = self.cache.lock() {
            if let Some(e) = cache.get(&key) {
                if e.len == meta.len() && e.mtime_ns == mtime_ns {
                    return Ok(e.hash.clone());
                }
            }
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap_rayon(path)?;
        let hash = hasher.finalize().to_hex().to_string();
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                key,
                CacheEntry {
                    len: meta.len(),
                    mtime_ns,
                    hash: hash.clone(),
                },
            );
            if let Ok(mut d) = self.dirty.lock() {
                *d = true;
            }
        }
        Ok(hash)
    }

    /// Identity of a model directory: the files that define the model's behaviour
    /// (config, weights, tokenizer, generation config), by name relative to the
    /// directory and content.
    pub fn model_dir(&self, dir: &Path) -> std::io::Result<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .flatten()
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| defines_model(n))
            .collect();
        names.sort();
        let mut h = blake3::Hasher::new();
        for n in names {
            h.update(n.as_bytes());
            h.update(b"\0");
            h.update(self.file(&dir.join(&n))?.as_bytes());
        }
        Ok(h.finalize().to_hex().to_string())
    }

    /// Writes the cache back if anything was added.
    pub fn save(&self) {
        let dirty = self.dirty.lock().map(|d| *d).unwrap_or(false);
        if !dirty {
            return;
        }
        if let (Some(path), Ok(cache)) = (&self.cache_path, self.cache.lock()) {
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            if let Ok(bytes) = serde_json::to_vec(&*cache) {
                let _ = crate::store::write_atomic(path, &bytes);
            }
        }
    }
}

fn defines_model(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name.ends_with(".json")
        || name.starts_with("tokenizer")
        || name.ends_with(".model")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":[3,{"q":1,"p":2}]}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":[3,{"p":2,"q":1}],"y":2},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
    }

    #[test]
    fn file_identity_is_content_not_path() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
        std::fs::write(&a, b"same").unwrap();
        std::fs::write(&b, b"same").unwrap();
        let h = ContentHasher::new(Some(dir.path().join("cache.json")));
        assert_eq!(h.file(&a).unwrap(), h.file(&b).unwrap());
        std::fs::write(&b, b"other").unwrap();
        let h2 = ContentHasher::new(None);
        assert_ne!(h2.file(&a).unwrap(), h2.file(&b).unwrap());
    }
}
