//! Raw little-endian float32 data, as the python reference scripts write it.

use std::path::Path;

/// Little-endian float32 values of `bytes` (a trailing partial value is ignored).
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The float32 values of a raw file; panics naming the file when it cannot be read.
pub fn read_f32(path: &Path) -> Vec<f32> {
    f32s(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}
