//! CPU kernel settings that make runs bit-reproducible from one x86-64 machine to another.
//!
//! libtorch picks its vectorised kernels (ATen), MKL's GEMM code path and oneDNN's by the
//! CPU it runs on, and splits its parallel reductions by its thread count. Both change the
//! last bits of sums, and over a long training run the last bits become different weights:
//! the same pipeline trained on an AVX-512 machine does not end with an AVX2 machine's
//! model. Pinning the instruction set and the thread count removes both sources.
//!
//! The instruction set is read by libtorch on its first kernel call (ATen) and its first
//! GEMM (MKL), so [`configure_cpu`] must run before any tensor work in the process: the
//! `sspo-run` CLI calls it right after reading the spec.

use std::fmt;
use std::str::FromStr;

use crate::error::{ModelError, Result};

/// The instruction set the CPU kernels are pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuIsa {
    /// Whatever the machine supports best (libtorch's default): fastest, but the last bits
    /// depend on the CPU.
    #[default]
    Native,
    /// No vector extensions beyond the x86-64 baseline: runs anywhere, slowest.
    Baseline,
    /// AVX2 + FMA kernels: the same bits on every AVX2 or AVX-512 machine.
    Avx2,
    /// AVX-512 kernels: the same bits on every AVX-512 machine.
    Avx512,
}

impl CpuIsa {
    /// Every accepted name, in the order the docs list them (the spec checks `cpu.isa`
    /// against the same list).
    pub const NAMES: [&'static str; 4] = sspo_common::cpu_isa::NAMES;

    /// The variants in the order of [`Self::NAMES`] (and of their declaration, which
    /// [`Self::name`] relies on).
    const ALL: [CpuIsa; 4] = [
        CpuIsa::Native,
        CpuIsa::Baseline,
        CpuIsa::Avx2,
        CpuIsa::Avx512,
    ];

    /// The name this instruction set is written with in a spec.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// `(variable, value)` pairs that pin ATen, MKL and oneDNN to this instruction set;
    /// empty for [`CpuIsa::Native`]. MKL's `STRICT` conditional-numerical-reproducibility
    /// mode also makes its GEMM results independent of the thread count.
    pub fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            CpuIsa::Native => &[],
            CpuIsa::Baseline => &[
                ("ATEN_CPU_CAPABILITY", "default"),
                ("MKL_CBWR", "COMPATIBLE"),
                ("ONEDNN_MAX_CPU_ISA", "SSE41"),
            ],
            CpuIsa::Avx2 => &[
                ("ATEN_CPU_CAPABILITY", "avx2"),
                ("MKL_CBWR", "AVX2,STRICT"),
                ("ONEDNN_MAX_CPU_ISA", "AVX2"),
            ],
            CpuIsa::Avx512 => &[
                ("ATEN_CPU_CAPABILITY", "avx512"),
                ("MKL_CBWR", "AVX512,STRICT"),
                ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE"),
            ],
        }
    }

    /// Whether this CPU can run the pinned kernels (a pin the CPU lacks would make libtorch
    /// silently fall back to another code path, and so to other bits).
    pub fn supported_here(self) -> bool {
        match self {
            CpuIsa::Native | CpuIsa::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            CpuIsa::Avx2 | CpuIsa::Avx512 => false,
        }
    }
}

impl fmt::Display for CpuIsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CpuIsa {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        let name = s.trim().to_ascii_lowercase();
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| {
                ModelError::Cpu(format!(
                    "unknown instruction set {s:?} (expected one of {})",
                    Self::NAMES.join(", ")
                ))
            })
    }
}

/// How the CPU kernels run: thread count and instruction set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuSettings {
    /// libtorch's intra-op threads; `None` keeps its default (one per core).
    pub threads: Option<usize>,
    pub isa: CpuIsa,
}

/// Applies `settings` to this process. Call it before any tensor work (see the module
/// docs); it refuses an instruction set this CPU lacks and a thread count of zero.
///
/// The instruction set is passed to libtorch through its environment variables, which it
/// reads once, on first use; this function sets them (overriding values already set), so
/// it must also run before other threads that read the environment are started.
pub fn configure_cpu(settings: &CpuSettings) -> Result<()> {
    if settings.threads == Some(0) {
        return Err(ModelError::Cpu("threads must be at least 1".to_string()));
    }
    if !settings.isa.supported_here() {
        return Err(ModelError::Cpu(format!(
            "isa `{}`: this CPU does not support it (choose `native`, `baseline` or an instruction set it has)",
            settings.isa
        )));
    }
    for (key, value) in settings.isa.env() {
        std::env::set_var(key, value);
    }
    tune_allocator();
    if let Some(n) = settings.threads {
        // MKL may otherwise use fewer threads than asked for on some calls, which changes
        // how its products are split.
        std::env::set_var("MKL_DYNAMIC", "FALSE");
        tch::set_num_threads(n as i32);
    }
    Ok(())
}

/// Largest allocation glibc serves from its heap instead of fresh pages from `mmap`.
const MMAP_THRESHOLD: i32 = 256 << 20;
/// Free memory at the top of the heap that glibc keeps instead of returning it to the OS.
const TRIM_THRESHOLD: i32 = 1 << 30;

/// Lets glibc's `malloc` reuse the memory of large, short-lived tensors.
///
/// libtorch allocates every tensor with `malloc`. By default glibc serves an allocation
/// above a threshold that adapts up to 32 MiB from fresh `mmap` pages and unmaps it on
/// `free`, so every training step faults in (and the kernel zeroes) the activations, the
/// 113 MB gradient of a 49k-token embedding and the optimizer's temporaries again: a
/// SmolLM2 DPO step spent a quarter of its time in the kernel. Serving up to 256 MiB from
/// the heap and keeping up to 1 GiB of it free makes the step ~12% faster
/// (docs/benchmarks.md, "Training: allocator"). The cost is that up to 1 GiB freed at the
/// top of the heap stays mapped. Settings the user gave glibc (`MALLOC_MMAP_THRESHOLD_`,
/// `MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES`) are left alone. Idempotent; does nothing
/// outside glibc.
pub fn tune_allocator() {
    let user_set = [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "GLIBC_TUNABLES",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some());
    if user_set {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes two numeric parameters of glibc's allocator, which it
    // reads under its own lock; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in CpuIsa::NAMES {
            let isa: CpuIsa = name.parse().unwrap();
            assert_eq!(isa.to_string(), name);
        }
        for isa in CpuIsa::ALL {
            assert_eq!(isa.name().parse::<CpuIsa>().unwrap(), isa);
        }
        assert_eq!("AVX2".parse::<CpuIsa>().unwrap(), CpuIsa::Avx2);
        let err = "sse9".parse::<CpuIsa>().unwrap_err().to_string();
        assert!(
            err.contains("expected one of native, baseline, avx2, avx512"),
            "{err}"
        );
    }

    #[test]
    fn pinned_sets_pin_all_three_libraries_and_native_pins_nothing() {
        assert!(CpuIsa::Native.env().is_empty());
        for isa in [CpuIsa::Baseline, CpuIsa::Avx2, CpuIsa::Avx512] {
            let keys: Vec<&str> = isa.env().iter().map(|(k, _)| *k).collect();
            assert_eq!(
                keys,
                ["ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA"],
                "{isa}"
            );
        }
    }

    #[test]
    fn native_and_baseline_run_everywhere() {
        assert!(CpuIsa::Native.supported_here());
        assert!(CpuIsa::Baseline.supported_here());
    }

    #[test]
    fn zero_threads_is_refused() {
        let err = configure_cpu(&CpuSettings {
            threads: Some(0),
            isa: CpuIsa::Native,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("at least 1"), "{err}");
    }
}
