//! The names of the CPU instruction sets a pipeline's `cpu.isa` may pin. The spec checks
//! a name against this list (with "did you mean"); `sspo_model::CpuIsa` parses exactly
//! these names and maps each to libtorch's settings.

/// Every accepted `cpu.isa` value, in the order the docs list them.
pub const NAMES: [&str; 4] = ["native", "baseline", "avx2", "avx512"];
