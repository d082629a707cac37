//! Weights pre-packed for MKL's fp32 matrix product, for CPU inference.
//!
//! Decoding a batch of a few sequences multiplies a handful of rows by every weight matrix.
//! For such shapes MKL's plain `sgemm` (what `linear` calls on CPU) repacks the whole weight
//! matrix into its internal layout on every call, which costs as much as the product itself.
//! `cblas_sgemm_pack` does that once; `cblas_sgemm_compute` then reuses the packed copy.
//!
//! The packed path is taken only where it measured faster (see [`PACKED_ROWS`]); everything
//! else, and any input that needs a gradient, goes through plain `linear`. The MKL entry
//! points are looked up at run time, so a libtorch built without MKL simply never packs.

use std::ffi::{c_void, CStr};
use std::ops::RangeInclusive;
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};

/// Row counts (the product of the input's leading dimensions) for which the packed product
/// is used. Measured on AVX-512 with 1 and 2 threads for the matrices of SmolLM2-135M and a
/// 0.5B shape (docs/benchmarks.md, "Packed weights"): with weights packed for
/// [`PACKED_FOR_ROWS`] rows, 1.3–3x faster than `linear` with 4–64 rows (decoding, probe
/// blocks), 1.0–1.3x with 128–256, about equal with 1–2 and at 1,024, where MKL's own
/// blocking catches up.
pub const PACKED_ROWS: RangeInclusive<i64> = 4..=256;

/// The error for an input a kernel's `linear` does not take (`what`: the kernel).
pub(crate) fn misfit(what: &str, x: &Tensor, out_features: i64, in_features: i64) -> ModelError {
    ModelError::Input(format!(
        "{what} linear: input {:?} ({:?}) does not fit a [{out_features}, {in_features}] weight",
        x.size(),
        x.kind(),
    ))
}

/// Whether `x` `[..., in_features]` is an inference input (CPU, no gradient) of `kind`
/// with a row count in `rows`: what a weight kept in a kernel's own layout can take.
pub(crate) fn fits_rows(
    x: &Tensor,
    kind: Kind,
    in_features: i64,
    rows: &RangeInclusive<i64>,
) -> bool {
    let size = x.size();
    let n: i64 = size[..size.len().saturating_sub(1)].iter().product();
    x.device() == Device::Cpu
        && x.kind() == kind
        && size.last() == Some(&in_features)
        && rows.contains(&n)
        && !x.requires_grad()
}

/// The row count the weights are packed for. MKL's packed layout serves any row count, but
/// its blocking follows this hint: packed for 12 rows, products of 64 or more rows ran up
/// to 2x slower than plain `linear`; packed for 64, none of 4–256 rows did.
const PACKED_FOR_ROWS: i32 = 64;

// CBLAS enum values (mkl_cblas.h).
const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;
const PACKED: i32 = 151;
const B_MATRIX: i32 = 162;

type PackGetSize = unsafe extern "C" fn(i32, i32, i32, i32) -> usize;
type Pack = unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const f32, i32, *mut f32);
#[allow(clippy::type_complexity)]
type Compute = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);

/// MKL's packed-GEMM entry points, as exported by libtorch's CPU library.
struct Mkl {
    get_size: PackGetSize,
    pack: Pack,
    compute: Compute,
}

fn mkl() -> Option<&'static Mkl> {
    static MKL: OnceLock<Option<Mkl>> = OnceLock::new();
    MKL.get_or_init(|| {
        // SAFETY: dlsym on the default scope only reads the loaded libraries' symbol tables;
        // the signatures are MKL's LP64 CBLAS ones (the `_64` variants are separate symbols).
        unsafe {
            let find = |name: &CStr| {
                let p = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
                (!p.is_null()).then_some(p)
            };
            let get_size = find(c"cblas_sgemm_pack_get_size")?;
            let pack = find(c"cblas_sgemm_pack")?;
            let compute = find(c"cblas_sgemm_compute")?;
            Some(Mkl {
                get_size: std::mem::transmute::<*mut c_void, PackGetSize>(get_size),
                pack: std::mem::transmute::<*mut c_void, Pack>(pack),
                compute: std::mem::transmute::<*mut c_void, Compute>(compute),
            })
        }
    })
    .as_ref()
}

/// Whether this libtorch exports MKL's packed GEMM (x86 CPU builds do).
pub fn available() -> bool {
    mkl().is_some()
}

/// A `[out, in]` weight matrix packed for `x · Wᵀ`. It is a snapshot: the packed copy does
/// not follow later changes to the weight, so only inference code packs.
#[derive(Debug)]
pub(crate) struct PackedWeight {
    /// MKL's opaque packed layout, in a byte tensor (64-byte aligned by libtorch).
    buf: Tensor,
    out_features: i64,
    in_features: i64,
}

impl PackedWeight {
    /// Packs `weight` when it is a contiguous-able fp32 CPU matrix and MKL is there;
    /// `Ok(None)` otherwise.
    pub(crate) fn new(weight: &Tensor) -> Result<Option<Self>> {
        let Some(mkl) = mkl() else { return Ok(None) };
        let size = weight.size();
        if weight.device() != Device::Cpu || weight.kind() != Kind::Float || size.len() != 2 {
            return Ok(None);
        }
        let (n, k) = (size[0], size[1]);
        let (Ok(n32), Ok(k32)) = (i32::try_from(n), i32::try_from(k)) else {
            return Ok(None);
        };
        let m = PACKED_FOR_ROWS;
        let w = tch::no_grad(|| weight.f_detach()?.f_contiguous())?;
        // SAFETY: the sizes are in range, `w` is a contiguous [n, k] fp32 matrix, and `buf`
        // has the byte size MKL asks for.
        let buf = unsafe {
            let bytes = (mkl.get_size)(B_MATRIX, m, n32, k32);
            let buf = Tensor::f_empty([bytes as i64], (Kind::Uint8, Device::Cpu))?;
            (mkl.pack)(
                ROW_MAJOR,
                B_MATRIX,
                TRANS,
                m,
                n32,
                k32,
                1.0,
                w.data_ptr() as *const f32,
                k32,
                buf.data_ptr() as *mut f32,
            );
            buf
        };
        Ok(Some(PackedWeight {
            buf,
            out_features: n,
            in_features: k,
        }))
    }

    /// Whether `x` `[..., in]` takes the packed path (see [`PACKED_ROWS`]).
    pub(crate) fn accepts(&self, x: &Tensor) -> bool {
        fits_rows(x, Kind::Float, self.in_features, &PACKED_ROWS)
    }

    /// `x · Wᵀ + bias` for an `x` that [`accepts`](Self::accepts).
    pub(crate) fn linear(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let mkl = mkl().ok_or_else(|| ModelError::Input("MKL is not available".into()))?;
        if !self.accepts(x) {
            return Err(misfit("packed", x, self.out_features, self.in_features));
        }
        let size = x.size();
        let lead = &size[..size.len() - 1];
        let rows: i64 = lead.iter().product();
        let (n, k) = (self.out_features, self.in_features);
        let x = x.f_contiguous()?;
        let mut out_size = lead.to_vec();
        out_size.push(n);
        let mut out = Tensor::f_empty([rows, n], (Kind::Float, Device::Cpu))?;
        // MKL adds `beta · C`: start from the bias (broadcast over the rows) or ignore C.
        let beta = match bias {
            Some(b) => {
                out.f_copy_(b)?;
                1.0
            }
            None => 0.0,
        };
        // SAFETY: `x` is a contiguous fp32 [rows, k] matrix, `out` a contiguous fp32
        // [rows, n] one that nothing else references, and `buf` was packed for [n, k].
        unsafe {
            (mkl.compute)(
                ROW_MAJOR,
                NO_TRANS,
                PACKED,
                rows as i32,
                n as i32,
                k as i32,
                x.data_ptr() as *const f32,
                k as i32,
                self.buf.data_ptr() as *const f32,
                k as i32,
                beta,
                out.data_ptr() as *mut f32,
                n as i32,
            );
        }
        Ok(out.f_view(out_size.as_slice())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn randn(dims: &[i64], seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn(dims, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn packed_linear_matches_linear_for_every_accepted_row_count() {
        if !available() {
            eprintln!("skipped: this libtorch has no MKL packed GEMM");
            return;
        }
        let w = randn(&[40, 24], 1);
        let b = randn(&[40], 2);
        let b_before = b.copy();
        let p = PackedWeight::new(&w)
            .unwrap()
            .expect("fp32 CPU weights pack");
        for rows in PACKED_ROWS.clone().step_by(3) {
            // A 3-d input with `rows` = 2 × (rows / 2) where possible, as attention outputs are.
            let x = if rows % 2 == 0 {
                randn(&[2, rows / 2, 24], rows)
            } else {
                randn(&[rows, 24], rows)
            };
            assert!(p.accepts(&x));
            for bias in [None, Some(&b)] {
                let got = p.linear(&x, bias).unwrap();
                let want = x.linear(&w, bias);
                assert_eq!(got.size(), want.size());
                let diff = (&got - &want).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "rows {rows}, bias {}: {diff}", bias.is_some());
            }
        }
        // The bias is read, never written.
        assert_eq!(b, b_before);
    }

    #[test]
    fn packed_weights_refuse_what_they_do_not_serve() {
        let w = randn(&[16, 8], 3);
        assert!(PackedWeight::new(&w.to_kind(Kind::BFloat16))
            .unwrap()
            .is_none());
        let Some(p) = PackedWeight::new(&w).unwrap() else {
            return; // no MKL: nothing is ever packed
        };
        assert!(!p.accepts(&randn(&[1, 8], 4)), "one row: plain linear");
        assert!(
            !p.accepts(&randn(&[1024, 8], 4)),
            "prefill-sized: plain linear"
        );
        assert!(!p.accepts(&randn(&[6, 9], 4)), "wrong width");
        assert!(!p.accepts(&randn(&[6, 8], 4).set_requires_grad(true)));
        assert!(p.linear(&randn(&[1024, 8], 4), None).is_err());
    }
}
