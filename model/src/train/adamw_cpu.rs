//! AdamW's update fused into two passes over fp32 CPU memory.
//!
//! Written as tensor operations, the update reads and writes the parameter, the gradient
//! and both moments about a dozen times and allocates five temporaries the size of the
//! parameter (113 MB each for SmolLM2's embedding): on a CPU the step is bound by memory
//! traffic, and a SmolLM2 DPO step spent a fifth of its time there. Here the update takes
//! two passes and libtorch's square root, with the same fp32 operations in the same order
//! as the tensor version ([`super::optim`]), so the results are bit-identical (tested
//! against it).

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::error::Result;

/// The scalars of one step, rounded to fp32 as libtorch rounds a scalar operand of an
/// fp32 tensor operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Coefficients {
    /// `1 − lr·λ`, or `None` when the parameter is not decayed.
    pub decay: Option<f32>,
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
    pub step_size: f32,
}

/// Elements per parallel task: large enough that scheduling is noise, small enough that
/// two cores share a 100k-element bias and a 28M-element embedding alike.
const CHUNK: usize = 1 << 16;

/// Whether [`update`] serves these tensors: contiguous fp32 on the CPU, of one size.
pub(crate) fn serves(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    let n = p.numel();
    [p, g, m, v].iter().all(|t| {
        t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() && t.numel() == n
    })
}

/// One AdamW step of `p` from gradient `g`, updating the moments `m` and `v` in place.
/// Callers check [`serves`] first; `p`, `m` and `v` must not share memory with each other
/// or with `g` (they are distinct optimizer-owned tensors).
///
/// Two passes around libtorch's own `sqrt`: libtorch takes it from MKL's vector library,
/// whose results are not always the correctly rounded ones Rust's `f32::sqrt` gives, and
/// the update must stay bit-identical to the tensor version.
pub(crate) fn update(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    c: &Coefficients,
) -> Result<()> {
    let n = p.numel();
    if n == 0 {
        return Ok(());
    }
    {
        // SAFETY: `serves` established that all four are contiguous fp32 CPU tensors of
        // `n` elements; the optimizer owns `m` and `v` exclusively during the step, and `g`
        // is only read.
        let (g, m, v) = unsafe { (floats(g, n), floats_mut(m, n), floats_mut(v, n)) };
        g.par_chunks(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|((g, m), v)| moments(g, m, v, c));
    }
    let root = v.f_sqrt()?;
    // SAFETY: as above; `root` is a fresh contiguous fp32 tensor of `n` elements.
    let (p, m, root) = unsafe { (floats_mut(p, n), floats(m, n), floats(&root, n)) };
    p.par_chunks_mut(CHUNK)
        .zip(m.par_chunks(CHUNK))
        .zip(root.par_chunks(CHUNK))
        .for_each(|((p, m), root)| apply(p, m, root, c));
    Ok(())
}

/// # Safety
/// `t` is a contiguous fp32 CPU tensor of `n` elements that nothing writes meanwhile.
unsafe fn floats(t: &Tensor, n: usize) -> &[f32] {
    std::slice::from_raw_parts(t.data_ptr() as *const f32, n)
}

/// # Safety
/// `t` is a contiguous fp32 CPU tensor of `n` elements that nothing else reads or writes
/// meanwhile.
#[allow(clippy::mut_from_ref)]
unsafe fn floats_mut(t: &Tensor, n: usize) -> &mut [f32] {
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n)
}

// Every line below is one rounding step of the tensor version, in its order.

/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`.
fn moments(g: &[f32], m: &mut [f32], v: &mut [f32], c: &Coefficients) {
    for ((&g, m), v) in g.iter().zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = *m * c.beta1 + g * c.one_minus_beta1;
        *v = *v * c.beta2 + (g * g) * c.one_minus_beta2;
    }
}

/// `p ← p·(1 − lr·λ) − step · m / (√v / √(1−β₂ᵗ) + ε)`, with `root` = √v.
fn apply(p: &mut [f32], m: &[f32], root: &[f32], c: &Coefficients) {
    for ((p, &m), &root) in p.iter_mut().zip(m).zip(root) {
        if let Some(d) = c.decay {
            *p *= d;
        }
        let denom = root / c.bias_correction2_sqrt + c.eps;
        *p -= (m / denom) * c.step_size;
    }
}
