//! Device and dtype selection, with a probe that rejects combinations libtorch cannot run.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};

/// Floating-point precision of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DType {
    #[default]
    F32,
    BF16,
    F16,
}

impl DType {
    /// The libtorch kind for this dtype.
    pub fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::BF16 => Kind::BFloat16,
            DType::F16 => Kind::Half,
        }
    }

    /// Name as written in `config.json` (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "fp32",
            DType::BF16 => "bf16",
            DType::F16 => "fp16",
        })
    }
}

impl FromStr for DType {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" | "float" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "fp16" | "f16" | "float16" | "half" => Ok(DType::F16),
            _ => Err(ModelError::Config(format!(
                "unknown dtype {s:?} (expected fp32, bf16 or fp16)"
            ))),
        }
    }
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`. `auto` picks CUDA device 0 when available.
pub fn parse_device(s: &str) -> Result<Device> {
    let bad = |why: &str| ModelError::Device(s.to_string(), why.to_string());
    let wanted = s.trim().to_ascii_lowercase();
    if wanted != "cpu" {
        load_cuda_backend();
    }
    match wanted.as_str() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(bad("CUDA is not available"))
            }
        }
        other => {
            let idx = other
                .strip_prefix("cuda:")
                .ok_or_else(|| bad("expected auto, cpu, cuda or cuda:N"))?;
            let idx: usize = idx.parse().map_err(|_| bad("bad CUDA device index"))?;
            let count = tch::Cuda::device_count();
            if (idx as i64) < count {
                Ok(Device::Cuda(idx))
            } else {
                Err(bad(&format!("only {count} CUDA device(s) visible")))
            }
        }
    }
}

/// Human-readable device name (`cpu`, `cuda:0`).
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Runs the ops the decoder relies on (matmul, SDPA, softmax) once in `dtype` on `device`,
/// so unsupported combinations fail at load time with a clear error instead of mid-run.
pub fn check_dtype_supported(dtype: DType, device: Device) -> Result<()> {
    let probe = || -> std::result::Result<(), tch::TchError> {
        let opts = (dtype.kind(), device);
        let a = Tensor::f_ones([1, 2, 4, 8], opts)?;
        let w = Tensor::f_ones([8, 8], opts)?;
        let h = a.f_linear::<Tensor>(&w, None)?;
        let mask = Tensor::f_ones([1, 1, 4, 4], (Kind::Bool, device))?;
        let o = Tensor::f_scaled_dot_product_attention(
            &h,
            &h,
            &h,
            Some(&mask),
            0.0,
            false,
            None,
            false,
        )?;
        let _ = o.f_silu()?.f_log_softmax(-1, Kind::Float)?;
        Ok(())
    };
    probe().map_err(|e| ModelError::UnsupportedDtype {
        dtype: dtype.to_string(),
        device: device_name(device),
        reason: e.to_string().lines().next().unwrap_or("").to_string(),
    })
}

/// Loads libtorch's CUDA backend once, if the libtorch in use has one: the directory named
/// by the `SSPO_LIBTORCH_LIB` environment variable (for binaries run against another
/// libtorch of the same version, through `LD_LIBRARY_PATH`), else the one built against.
///
/// The binaries do not link `libtorch_cuda.so` (that would load every CUDA library at
/// start-up, GPU or not); its static initialisers register the CUDA device with libtorch
/// when it is loaded, so loading it before the first CUDA query is enough.
pub fn load_cuda_backend() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let runtime = std::env::var_os("SSPO_LIBTORCH_LIB").map(std::path::PathBuf::from);
        let Some(dir) = runtime.or_else(|| option_env!("SSPO_LIBTORCH_LIB").map(Into::into)) else {
            return;
        };
        let path = dir.join("libtorch_cuda.so");
        if !path.exists() {
            return;
        }
        let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
            return;
        };
        // SAFETY: dlopen with a valid NUL-terminated path; the handle is intentionally
        // never closed (the backend stays registered for the life of the process).
        // A null handle means no usable CUDA runtime here (e.g. no driver): stay on CPU.
        let _handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    });
}
