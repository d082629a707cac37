//! bf16 matrix products for a few rows (decoding), on CPUs with AVX-512 BF16.
//!
//! For one to a few input rows libtorch's bf16 `linear` (oneDNN) read the weights at only
//! 8–15 GB/s, against the 24 GB/s of the fp32 path (MKL), so bf16 decoding was no faster
//! than fp32 although it reads half the bytes. oneDNN reorders the weights into its blocked
//! layout on every call (with weights reordered once, through PyTorch's
//! `mkldnn._linear_pointwise`, it ran 1.3–1.7x faster, but libtorch's C API does not offer
//! that). This kernel streams the weights once and multiplies bf16 pairs with AVX-512 BF16's
//! dot-product instruction, products exact and sums in fp32 as in oneDNN; only the order
//! of the sums differs, so a result can differ from libtorch's in its last bf16 bit. Each
//! output is summed by one thread in a fixed order: the bits do not depend on the thread
//! count. From 8 rows on, oneDNN's blocked products catch up and the kernel is not used.

use std::ops::RangeInclusive;

use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};
use crate::omp_pool::for_each_task;

/// Input rows for which the kernel is used; beyond them libtorch's blocked products win
/// (measured with 2 threads for SmolLM2-135M's matrices: 1.6–2.4x faster than `linear`
/// with one row, 1.2–1.8x with 4, 0.9–1.2x with 8, slower beyond; docs/benchmarks.md,
/// "Generation on SmolLM2").
pub const BF16_ROWS: RangeInclusive<i64> = 1..=4;

/// Weight rows one task computes: large enough that a task is worth handing to a thread,
/// small enough that the 49k-row LM head splits evenly.
const TASK_COLS: usize = 64;

/// Whether this CPU runs the kernel, and libtorch is not pinned to another instruction set
/// (`cpu.isa`): with a pin, every product stays with libtorch so the bits follow the pin.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            let pinned = std::env::var("ATEN_CPU_CAPABILITY").is_ok_and(|v| v != "avx512");
            !pinned && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A `[out, in]` bf16 weight matrix held for `x · Wᵀ` with few rows. It shares the weight's
/// storage (no copy), so unlike [`crate::packed::PackedWeight`] it follows in-place changes.
#[derive(Debug)]
pub(crate) struct Bf16Weight {
    weight: Tensor,
    out_features: i64,
    in_features: i64,
}

impl Bf16Weight {
    /// `Ok(None)` unless `weight` is a contiguous bf16 CPU matrix whose width the kernel
    /// takes (a multiple of 32) and the CPU runs the kernel.
    pub(crate) fn new(weight: &Tensor) -> Result<Option<Self>> {
        let size = weight.size();
        if !available()
            || weight.device() != Device::Cpu
            || weight.kind() != Kind::BFloat16
            || size.len() != 2
            || size[1] % x86::LANES as i64 != 0
            || !weight.is_contiguous()
        {
            return Ok(None);
        }
        Ok(Some(Bf16Weight {
            weight: tch::no_grad(|| weight.f_detach())?,
            out_features: size[0],
            in_features: size[1],
        }))
    }

    /// Whether `x` `[..., in]` takes the kernel (see [`BF16_ROWS`]).
    pub(crate) fn accepts(&self, x: &Tensor) -> bool {
        crate::packed::fits_rows(x, Kind::BFloat16, self.in_features, &BF16_ROWS)
    }

    /// `x · Wᵀ + bias` for an `x` that [`accepts`](Self::accepts), rounded to bf16.
    pub(crate) fn linear(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        if !self.accepts(x) {
            return Err(crate::packed::misfit(
                "bf16",
                x,
                self.out_features,
                self.in_features,
            ));
        }
        let size = x.size();
        let lead = &size[..size.len() - 1];
        let m = lead.iter().product::<i64>() as usize;
        let (n, k) = (self.out_features as usize, self.in_features as usize);
        let x = x.f_contiguous()?;
        let bias = match bias {
            Some(b) => Some(Vec::<f32>::try_from(
                b.f_to_kind(Kind::Float)?.f_contiguous()?.f_view([-1])?,
            )?),
            None => None,
        };
        if bias.as_ref().is_some_and(|b| b.len() != n) {
            return Err(ModelError::Input(format!("bf16 linear: bias is not [{n}]")));
        }
        // SAFETY: `x` is a contiguous bf16 [m, k] tensor, alive for this scope.
        let xs = unsafe { std::slice::from_raw_parts(x.data_ptr() as *const u16, m * k) };
        let out = Tensor::f_empty([m as i64, n as i64], (Kind::BFloat16, Device::Cpu))?;
        let out_ptr = SharedOut(out.data_ptr() as *mut u16);
        let w_ptr = self.weight.data_ptr() as usize;
        for_each_task(n.div_ceil(TASK_COLS), &|t| {
            let cols = t * TASK_COLS..((t + 1) * TASK_COLS).min(n);
            // SAFETY: the weight is a contiguous bf16 [n, k] matrix (checked at creation,
            // kept alive by `self`), `k` is a multiple of the kernel's lanes, and each task writes only
            // its own columns `cols` of the [m, n] output.
            unsafe {
                let w = std::slice::from_raw_parts(w_ptr as *const u16, n * k);
                let out = out_ptr;
                x86::products(xs, m, w, k, cols, |r, j, sum| {
                    let v = sum + bias.as_ref().map_or(0.0, |b| b[j]);
                    *out.0.add(r * n + j) = f32_to_bf16(v);
                });
            }
        });
        let mut out_size = lead.to_vec();
        out_size.push(n as i64);
        Ok(out.f_view(out_size.as_slice())?)
    }
}

/// The output pointer handed to the tasks, which write disjoint columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut u16);
// SAFETY: the tasks write disjoint elements, and the buffer outlives them (the parallel
// loop returns before `linear` does).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Round to nearest, ties to even, as libtorch converts (NaN stays a quiet NaN).
fn f32_to_bf16(v: f32) -> u16 {
    if v.is_nan() {
        return 0x7fc0;
    }
    let bits = v.to_bits();
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Weight rows per tile: four independent accumulator chains per input row hide the
    /// latency of the dot-product instructions.
    const TILE_W: usize = 4;
    /// Input rows per tile: 4 × 4 accumulators plus the operands fit the 32 registers.
    const TILE_X: usize = 4;
    /// Weight rows ahead to prefetch: with it a thread streamed 18–24 GB/s instead of 7–18
    /// (the hardware prefetcher alone does not keep enough reads in flight).
    const PREFETCH: usize = 4;
    /// bf16 values per instruction.
    pub(super) const LANES: usize = 32;

    /// Calls `emit(r, j, x[r] · w[j])` for every input row `r < m` and weight row `j` in
    /// `cols`; `x` is `[m, k]` and `w` `[.., k]`, both bf16 bits.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BF16, `k` must be a multiple of [`LANES`], `x` must
    /// hold `m * k` values and `w` at least `cols.end * k`.
    pub(super) unsafe fn products(
        x: &[u16],
        m: usize,
        w: &[u16],
        k: usize,
        cols: Range<usize>,
        mut emit: impl FnMut(usize, usize, f32),
    ) {
        let mut j = cols.start;
        while j < cols.end {
            let tw = TILE_W.min(cols.end - j);
            let mut r = 0;
            while r < m {
                let tx = TILE_X.min(m - r);
                let mut sums = [[0f32; TILE_W]; TILE_X];
                // Full tiles take the unrolled kernel; the last weight rows the one-row one.
                if tw == TILE_W {
                    match tx {
                        4 => tile::<4>(x, r, w, j, k, &mut sums),
                        3 => tile::<3>(x, r, w, j, k, &mut sums),
                        2 => tile::<2>(x, r, w, j, k, &mut sums),
                        _ => tile::<1>(x, r, w, j, k, &mut sums),
                    }
                } else {
                    for (a, row) in sums.iter_mut().enumerate().take(tx) {
                        for (b, s) in row.iter_mut().enumerate().take(tw) {
                            *s = dot(&x[(r + a) * k..], &w[(j + b) * k..], k);
                        }
                    }
                }
                for (a, row) in sums.iter().enumerate().take(tx) {
                    for (b, s) in row.iter().enumerate().take(tw) {
                        emit(r + a, j + b, *s);
                    }
                }
                r += tx;
            }
            j += tw;
        }
    }

    /// [`LANES`] bf16 values from `p`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn load(p: *const u16) -> __m512bh {
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const __m512i))
    }

    /// `TX` input rows from `r` against [`TILE_W`] weight rows from `j`. Lane `i` of an
    /// accumulator sums the products of columns `2i` and `2i + 1` of every 32-column block
    /// (each product exact in fp32, each addition rounded once), then the lanes are added.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const TX: usize>(
        x: &[u16],
        r: usize,
        w: &[u16],
        j: usize,
        k: usize,
        sums: &mut [[f32; TILE_W]; TILE_X],
    ) {
        let mut acc = [[_mm512_setzero_ps(); TILE_W]; TX];
        let xp = x.as_ptr().add(r * k);
        let wp = w.as_ptr().add(j * k);
        let mut c = 0;
        while c < k {
            let mut wv = [load(wp.add(c)); TILE_W];
            for (b, v) in wv.iter_mut().enumerate().skip(1) {
                *v = load(wp.add(b * k + c));
            }
            for b in 0..TILE_W {
                // One 64-byte line per weight row and step; past the matrix's end it is
                // only a hint, never a read.
                _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add((PREFETCH + b) * k + c) as *const i8);
            }
            for (a, row) in acc.iter_mut().enumerate() {
                let xv = load(xp.add(a * k + c));
                for (b, s) in row.iter_mut().enumerate() {
                    *s = _mm512_dpbf16_ps(*s, xv, wv[b]);
                }
            }
            c += LANES;
        }
        for (a, row) in acc.iter().enumerate() {
            for (b, s) in row.iter().enumerate() {
                sums[a][b] = _mm512_reduce_add_ps(*s);
            }
        }
    }

    /// One input row against one weight row, for the last rows of a task; the same sums
    /// in the same order as [`tile`].
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dot(x: &[u16], w: &[u16], k: usize) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let mut c = 0;
        while c < k {
            acc = _mm512_dpbf16_ps(acc, load(x.as_ptr().add(c)), load(w.as_ptr().add(c)));
            c += LANES;
        }
        _mm512_reduce_add_ps(acc)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub(super) const LANES: usize = 32;

    pub(super) unsafe fn products(
        _: &[u16],
        _: usize,
        _: &[u16],
        _: usize,
        _: std::ops::Range<usize>,
        _: impl FnMut(usize, usize, f32),
    ) {
        unreachable!("available() is false off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_to_f32(b: u16) -> f32 {
        f32::from_bits((b as u32) << 16)
    }

    fn randn(dims: &[i64], seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn(dims, (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16)
    }

    #[test]
    fn matches_linear_for_every_accepted_row_count() {
        if !available() {
            eprintln!("skipped: no AVX-512 here");
            return;
        }
        // 70 rows: full tiles, a partial tile and more than one task.
        let w = randn(&[70, 64], 1);
        let b = randn(&[70], 2);
        let p = Bf16Weight::new(&w)
            .unwrap()
            .expect("bf16 CPU weights are taken");
        for rows in BF16_ROWS {
            let x = randn(&[rows, 1, 64], rows);
            assert!(p.accepts(&x));
            for bias in [None, Some(&b)] {
                let got = p.linear(&x, bias).unwrap().to_kind(Kind::Float);
                // The exact sums, rounded once: ours may differ from them only by the
                // rounding of fp32 sums in another order, far below one bf16 step.
                let want = x.to_kind(Kind::Float).linear(
                    &w.to_kind(Kind::Float),
                    bias.map(|b| b.to_kind(Kind::Float)).as_ref(),
                );
                assert_eq!(got.size(), want.size());
                let step = want.abs().clamp_min(1e-3) / 128.0;
                let over = ((&got - &want).abs() - step).max().double_value(&[]);
                assert!(over <= 0.0, "rows {rows}, bias {}: {over}", bias.is_some());
            }
        }
    }

    #[test]
    fn rounds_like_libtorch() {
        for v in [
            1.0f32,
            -2.5,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            3.0e38,
            1e-40,
            0.0,
        ] {
            let want = Tensor::from_slice(&[v]).to_kind(Kind::BFloat16);
            let got = f32_to_bf16(v);
            let want = Vec::<f32>::try_from(want.to_kind(Kind::Float)).unwrap()[0];
            assert_eq!(bf16_to_f32(got), want, "{v}");
        }
    }

    #[test]
    fn refuses_what_it_does_not_serve() {
        let w = randn(&[16, 32], 3);
        assert!(Bf16Weight::new(&w.to_kind(Kind::Float)).unwrap().is_none());
        assert!(Bf16Weight::new(&randn(&[16, 24], 3)).unwrap().is_none());
        let Some(p) = Bf16Weight::new(&w).unwrap() else {
            return;
        };
        assert!(!p.accepts(&randn(&[64, 32], 4)), "many rows: libtorch");
        assert!(!p.accepts(&randn(&[2, 16], 4)), "wrong width");
        assert!(!p.accepts(&randn(&[2, 32], 4).set_requires_grad(true)));
        assert!(p.linear(&randn(&[64, 32], 4), None).is_err());
    }
}
