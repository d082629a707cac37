//! The decoder's linear layers and the forms inference gives them on the CPU: fp32 matrices
//! packed for MKL ([`crate::packed`]), bf16 matrices for the few-row kernel
//! ([`crate::bf16_rows`]), and projections of one input (q, k, v; gate, up) applied as one
//! product ([`Fused`]): one larger product streams the weights better and costs one call,
//! not three.

use tch::{Kind, Tensor};

use crate::bf16_rows::Bf16Weight;
use crate::error::{ModelError, Result};
use crate::packed::PackedWeight;

/// `x · Wᵀ + b`, with the weight as a parameter of the var store.
#[derive(Debug)]
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    /// Set by [`Linear::prepare`].
    prepared: Option<Prepared>,
}

impl Linear {
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            prepared: None,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let bias = self.bias.as_ref();
        match &self.prepared {
            Some(p) if p.accepts(x) => p.linear(x, bias),
            _ => Ok(x.f_linear(&self.weight, bias)?),
        }
    }

    /// Makes the inference form of the weight; returns whether there is one here.
    pub(crate) fn prepare(&mut self) -> Result<bool> {
        self.prepared = Prepared::new(&[&self.weight])?;
        Ok(self.prepared.is_some())
    }

    pub(crate) fn unprepare(&mut self) {
        self.prepared = None;
    }
}

/// Weight matrices (stacked along the outputs) made ready for inference products.
#[derive(Debug)]
enum Prepared {
    /// fp32: packed for MKL (a packed copy of the stacked matrices).
    Mkl(PackedWeight),
    /// bf16: the few-row kernel (reads the matrices in place).
    Bf16(Bf16Weight),
}

impl Prepared {
    fn new(parts: &[&Tensor]) -> Result<Option<Self>> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        if first.kind() == Kind::Float {
            // MKL packs one matrix: stack the parts first (the stacked copy is dropped once
            // packed). Nothing is copied where MKL is missing.
            if !crate::packed::available() {
                return Ok(None);
            }
            let stacked = match parts {
                [one] => one.shallow_clone(),
                _ => tch::no_grad(|| Tensor::f_cat(parts, 0))?,
            };
            return Ok(PackedWeight::new(&stacked)?.map(Prepared::Mkl));
        }
        Ok(Bf16Weight::new(parts)?.map(Prepared::Bf16))
    }

    fn accepts(&self, x: &Tensor) -> bool {
        match self {
            Prepared::Mkl(p) => p.accepts(x),
            Prepared::Bf16(p) => p.accepts(x),
        }
    }

    fn linear(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Prepared::Mkl(p) => p.linear(x, bias),
            Prepared::Bf16(p) => p.linear(x, bias),
        }
    }
}

/// Linear layers of one input applied as one product over their stacked weights.
#[derive(Debug)]
pub(crate) struct Fused {
    prepared: Prepared,
    /// The parts' biases, stacked (all parts have one, or none has).
    bias: Option<Tensor>,
    /// Output features of each part.
    sizes: Vec<i64>,
}

impl Fused {
    /// `Ok(None)` where the weights have no inference form here, or only some parts have
    /// a bias.
    pub(crate) fn new(parts: &[&Linear]) -> Result<Option<Self>> {
        let biases: Vec<&Tensor> = parts.iter().filter_map(|p| p.bias.as_ref()).collect();
        let bias = match biases.len() {
            0 => None,
            n if n == parts.len() => Some(tch::no_grad(|| Tensor::f_cat(&biases, 0))?),
            _ => return Ok(None),
        };
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let sizes = weights.iter().map(|w| w.size()[0]).collect();
        Ok(Prepared::new(&weights)?.map(|prepared| Fused {
            prepared,
            bias,
            sizes,
        }))
    }

    /// The parts' outputs for `x`, or `None` when the fused product does not take `x`
    /// (then the parts are applied one by one).
    fn forward(&self, x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        if !self.prepared.accepts(x) {
            return Ok(None);
        }
        let out = self.prepared.linear(x, self.bias.as_ref())?;
        Ok(Some(out.f_split_with_sizes(&self.sizes, -1)?))
    }
}

/// `parts` applied to `x`: as one product through `fused` where it takes `x`, else one by one.
pub(crate) fn project<const N: usize>(
    fused: Option<&Fused>,
    parts: [&Linear; N],
    x: &Tensor,
) -> Result<[Tensor; N]> {
    let outs = match fused.map(|f| f.forward(x)).transpose()?.flatten() {
        Some(outs) => outs,
        None => parts
            .iter()
            .map(|p| p.forward(x))
            .collect::<Result<Vec<_>>>()?,
    };
    <[Tensor; N]>::try_from(outs)
        .map_err(|o| ModelError::Input(format!("internal: {} outputs for {N} parts", o.len())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn randn(dims: &[i64], seed: i64, kind: Kind) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn(dims, (Kind::Float, Device::Cpu)).to_kind(kind)
    }

    #[test]
    fn fused_parts_equal_the_parts_alone() {
        for kind in [Kind::Float, Kind::BFloat16] {
            let lin = |out: i64, seed: i64| {
                Linear::new(
                    randn(&[out, 64], seed, kind),
                    Some(randn(&[out], seed + 10, kind)),
                )
            };
            let parts = [lin(64, 1), lin(32, 2), lin(32, 3)];
            let refs = [&parts[0], &parts[1], &parts[2]];
            let Some(fused) = Fused::new(&refs).unwrap() else {
                eprintln!("skipped {kind:?}: no inference form on this machine");
                continue;
            };
            // 1 row (bf16 kernel, plain fp32), 8 (MKL packed) and 1,024 (plain for both).
            for rows in [1, 8, 1024] {
                let x = randn(&[rows, 64], rows, kind);
                let got = project(Some(&fused), refs, &x).unwrap();
                for (g, p) in got.iter().zip(refs) {
                    let want = x.linear(&p.weight, p.bias.as_ref());
                    assert_eq!(g.size(), want.size());
                    let diff = (g.to_kind(Kind::Float) - want.to_kind(Kind::Float))
                        .abs()
                        .max()
                        .double_value(&[]);
                    // fp32: summation order only; bf16: a rounding step (8 bits) at the
                    // largest output.
                    let scale = want.abs().max().double_value(&[]);
                    let tol = if kind == Kind::Float {
                        1e-4
                    } else {
                        scale / 128.0
                    };
                    assert!(diff <= tol, "{kind:?}, {rows} rows: {diff}");
                }
            }
        }
    }

    #[test]
    fn parts_with_and_without_bias_are_not_fused() {
        let a = Linear::new(randn(&[8, 32], 1, Kind::Float), None);
        let b = Linear::new(
            randn(&[8, 32], 2, Kind::Float),
            Some(randn(&[8], 3, Kind::Float)),
        );
        assert!(Fused::new(&[&a, &b]).unwrap().is_none());
    }
}
