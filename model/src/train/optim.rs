//! AdamW on plain tensors, so its state (`m`, `v`, step) can be saved and restored exactly,
//! and global-norm gradient clipping.
//!
//! The update is PyTorch's `torch.optim.AdamW` (`amsgrad=False`): with `t` the step count
//! after increment, `p ← p·(1 − lr·λ)`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
//! `p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)`. Weight decay is applied only to
//! parameters with two or more dimensions (matrices and embeddings), not to norm weights
//! or biases.
//!
//! Parameters in bf16 or fp16 get an fp32 master copy: the update and the moments are
//! fp32, and the parameter receives the rounded master after each step. Without it a
//! bf16 weight near 1 (spacing 2⁻⁷) would drop every update smaller than 0.004, i.e. all
//! of them at fine-tuning learning rates.

use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

use super::adamw_cpu;

/// Hyper-parameters of [`AdamW`] (the learning rate is given per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One optimised parameter and its moments.
#[derive(Debug)]
struct Slot {
    name: String,
    param: Tensor,
    /// The fp32 master of a bf16/fp16 parameter (the one the update applies to).
    master: Option<Tensor>,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

impl Slot {
    fn new(name: String, param: Tensor) -> Result<Self> {
        let master = match param.kind() {
            Kind::BFloat16 | Kind::Half => Some(param.f_detach()?.f_to_kind(Kind::Float)?),
            _ => None,
        };
        let like = master.as_ref().unwrap_or(&param);
        Ok(Slot {
            m: like.f_zeros_like()?.f_detach()?,
            v: like.f_zeros_like()?.f_detach()?,
            decay: param.dim() >= 2,
            name,
            param,
            master,
        })
    }

    /// The state to save: `(prefix, tensor)` of the moments and of the master, if any.
    fn state(&self) -> impl Iterator<Item = (&'static str, &Tensor)> {
        [("m", &self.m), ("v", &self.v)]
            .into_iter()
            .chain(self.master.as_ref().map(|t| ("master", t)))
    }
}

/// AdamW over named parameters (their order is sorted by name).
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    /// Optimises `params` (shallow clones of the model's tensors, e.g.
    /// `decoder.var_store().variables()`); moments start at zero.
    pub fn new(
        params: impl IntoIterator<Item = (String, Tensor)>,
        cfg: AdamWConfig,
    ) -> Result<Self> {
        let mut params: Vec<(String, Tensor)> = params.into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = params
            .into_iter()
            .map(|(name, param)| Slot::new(name, param))
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            cfg,
            slots,
            step: 0,
        })
    }

    /// Optimizer steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// The optimised parameters, by name.
    pub fn params(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.param))
    }

    /// One update with learning rate `lr` from the parameters' accumulated gradients
    /// (parameters without a gradient are left alone, as in PyTorch).
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step_with(lr, true)
    }

    /// [`AdamW::step`]; `fused` lets fp32 CPU state take the fused update of
    /// [`adamw_cpu`] (bit-identical to the tensor operations, which serve everything else).
    fn step_with(&mut self, lr: f64, fused: bool) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let step_size = lr / bc1;
        let decay = 1.0 - lr * self.cfg.weight_decay;
        let coefficients = |decayed: bool| adamw_cpu::Coefficients {
            decay: decayed.then_some(decay as f32),
            beta1: b1 as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            bias_correction2_sqrt: bc2_sqrt as f32,
            eps: self.cfg.eps as f32,
            step_size: step_size as f32,
        };
        tch::no_grad(|| -> Result<()> {
            for s in &mut self.slots {
                let g = s.param.grad();
                if !g.defined() {
                    continue;
                }
                let (mut p, g) = match &s.master {
                    Some(master) => (master.shallow_clone(), g.f_to_kind(Kind::Float)?),
                    None => (s.param.shallow_clone(), g),
                };
                let decayed = s.decay && self.cfg.weight_decay != 0.0;
                if fused && adamw_cpu::serves(&p, &g, &s.m, &s.v) {
                    adamw_cpu::update(&p, &g, &s.m, &s.v, &coefficients(decayed))?;
                } else {
                    if decayed {
                        let _ = p.f_mul_scalar_(decay)?;
                    }
                    let _ = s.m.f_mul_scalar_(b1)?;
                    let _ = s.m.f_add_(&g.f_mul_scalar(1.0 - b1)?)?;
                    let _ = s.v.f_mul_scalar_(b2)?;
                    let _ = s.v.f_add_(&g.f_mul(&g)?.f_mul_scalar(1.0 - b2)?)?;
                    let denom =
                        s.v.f_sqrt()?
                            .f_div_scalar(bc2_sqrt)?
                            .f_add_scalar(self.cfg.eps)?;
                    let update = s.m.f_div(&denom)?.f_mul_scalar(step_size)?;
                    let _ = p.f_sub_(&update)?;
                }
                if s.master.is_some() {
                    s.param.f_copy_(&p)?;
                }
            }
            Ok(())
        })
    }

    /// Clears the parameters' gradients.
    pub fn zero_grad(&mut self) -> Result<()> {
        for s in &mut self.slots {
            let mut g = s.param.grad();
            if g.defined() {
                let _ = g.f_detach_()?;
                let _ = g.f_zero_()?;
            }
        }
        Ok(())
    }

    /// `(name, tensor)` of the state to save: `m.<param>`, `v.<param>`, and
    /// `master.<param>` for the parameters with an fp32 master.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                s.state()
                    .map(|(prefix, t)| (format!("{prefix}.{}", s.name), t.shallow_clone()))
            })
            .collect()
    }

    /// The fp32 master of a parameter kept in bf16/fp16 (`None` for fp32 parameters).
    pub fn master(&self, name: &str) -> Option<&Tensor> {
        self.slots
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.master.as_ref())
    }

    /// Restores the step count, moments and masters (`get` returns the saved tensor of a
    /// name).
    pub fn load_state(
        &mut self,
        step: u64,
        mut get: impl FnMut(&str) -> Result<Tensor>,
    ) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for s in &mut self.slots {
                let slot = s.name.clone();
                let mut dsts = vec![("m", &mut s.m), ("v", &mut s.v)];
                dsts.extend(s.master.as_mut().map(|t| ("master", t)));
                for (prefix, dst) in dsts {
                    let name = format!("{prefix}.{slot}");
                    let src = get(&name)?;
                    if src.size() != dst.size() {
                        return Err(ModelError::ShapeMismatch {
                            name,
                            expected: dst.size(),
                            found: src.size(),
                        });
                    }
                    dst.f_copy_(&src)?;
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// Global L2 norm of the gradients of `params` (computed in float64); when `max_norm > 0`
/// and the norm exceeds it, scales every gradient by `max_norm / (norm + 1e-6)` like
/// `torch.nn.utils.clip_grad_norm_`. Returns the norm before clipping (NaN/inf when a
/// gradient is not finite; nothing is scaled then).
pub fn clip_grad_norm<'a>(
    params: impl IntoIterator<Item = &'a Tensor>,
    max_norm: f64,
) -> Result<f64> {
    let grads: Vec<Tensor> = params
        .into_iter()
        .map(|p| p.grad())
        .filter(|g| g.defined())
        .collect();
    let mut sq = 0.0f64;
    for g in &grads {
        let n = g.f_to_kind(Kind::Double)?.f_norm()?.f_double_value(&[])?;
        sq += n * n;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm.is_finite() {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            tch::no_grad(|| -> Result<()> {
                for g in &grads {
                    let _ = g.shallow_clone().f_mul_scalar_(coef)?;
                }
                Ok(())
            })?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn vals(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(&t.to_kind(Kind::Double).view([-1])).unwrap()
    }

    /// PyTorch's AdamW written out in f64 for one scalar parameter.
    #[allow(clippy::too_many_arguments)]
    fn torch_adamw(p: f64, grads: &[f64], lrs: &[f64], b1: f64, b2: f64, eps: f64, wd: f64) -> f64 {
        let (mut p, mut m, mut v) = (p, 0.0, 0.0);
        for (t, (&g, &lr)) in grads.iter().zip(lrs).enumerate() {
            let t = (t + 1) as i32;
            p *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let bc1 = 1.0 - b1.powi(t);
            let bc2 = 1.0 - b2.powi(t);
            p -= lr / bc1 * m / (v.sqrt() / bc2.sqrt() + eps);
        }
        p
    }

    #[test]
    fn two_adamw_steps_match_the_pytorch_formula() {
        let w0 = [0.5f64, -1.5, 2.0, 0.25];
        let b0 = [0.1f64, -0.2];
        let w = Tensor::from_slice(&w0)
            .to_kind(Kind::Double)
            .view([2, 2])
            .set_requires_grad(true);
        let b = Tensor::from_slice(&b0)
            .to_kind(Kind::Double)
            .set_requires_grad(true);
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(
            [
                ("w".to_string(), w.shallow_clone()),
                ("b".to_string(), b.shallow_clone()),
            ],
            cfg,
        )
        .unwrap();
        // loss = Σ c_i w_i^2 + Σ b_j^3 → g = 2 c w, 3 b².
        let c = [1.0, 2.0, 3.0, 4.0];
        let ct = Tensor::from_slice(&c).to_kind(Kind::Double).view([2, 2]);
        let lrs = [0.01, 0.02];
        let mut gw = vec![Vec::new(); 4];
        let mut gb = vec![Vec::new(); 2];
        for &lr in &lrs {
            opt.zero_grad().unwrap();
            let loss = (&w * &w * &ct).sum(Kind::Double) + b.pow_tensor_scalar(3).sum(Kind::Double);
            loss.backward();
            for (i, x) in vals(&w.grad()).into_iter().enumerate() {
                gw[i].push(x);
            }
            for (i, x) in vals(&b.grad()).into_iter().enumerate() {
                gb[i].push(x);
            }
            opt.step(lr).unwrap();
        }
        // The gradients seen were those of the formula at the current weights.
        assert!((gw[1][0] - 2.0 * 2.0 * w0[1]).abs() < 1e-12);
        for i in 0..4 {
            let want = torch_adamw(w0[i], &gw[i], &lrs, 0.9, 0.99, 1e-8, 0.1);
            assert!((vals(&w)[i] - want).abs() < 1e-12, "w[{i}]");
        }
        // Biases (1-D) are not decayed.
        for i in 0..2 {
            let want = torch_adamw(b0[i], &gb[i], &lrs, 0.9, 0.99, 1e-8, 0.0);
            assert!((vals(&b)[i] - want).abs() < 1e-12, "b[{i}]");
        }
        assert_eq!(opt.step_count(), 2);
    }

    #[test]
    fn state_round_trips_exactly() {
        let p = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
        let mut a = AdamW::new(
            [("p".to_string(), p.shallow_clone())],
            AdamWConfig::default(),
        )
        .unwrap();
        (&p * &p).sum(Kind::Float).backward();
        a.step(0.1).unwrap();
        let saved: Vec<(String, Tensor)> = a
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let q = Tensor::from_slice(&[0.0f32, 0.0, 0.0]).set_requires_grad(true);
        let mut b = AdamW::new([("p".to_string(), q)], AdamWConfig::default()).unwrap();
        b.load_state(1, |n| {
            Ok(saved
                .iter()
                .find(|(k, _)| k == n)
                .unwrap()
                .1
                .shallow_clone())
        })
        .unwrap();
        assert_eq!(b.step_count(), 1);
        for ((_, x), (_, y)) in a.state_tensors().iter().zip(b.state_tensors().iter()) {
            assert!(x.equal(y));
        }
    }

    /// Three steps of two optimizers over equal parameters and gradients, one taking the
    /// fused CPU update and one the tensor operations.
    fn fused_and_tensor_ops_runs(kind: Kind, weight_decay: f64) -> [Vec<Tensor>; 2] {
        let cfg = AdamWConfig {
            weight_decay,
            ..AdamWConfig::default()
        };
        let make = || {
            tch::manual_seed(5);
            // A decayed matrix (large enough to span several parallel chunks) and a vector.
            let w = (Tensor::randn([300, 700], (Kind::Float, Device::Cpu)) * 0.02)
                .to_kind(kind)
                .set_requires_grad(true);
            let b = Tensor::randn([700], (Kind::Float, Device::Cpu))
                .to_kind(kind)
                .set_requires_grad(true);
            (w, b)
        };
        let mut out = [Vec::new(), Vec::new()];
        for (fused, out) in [true, false].into_iter().zip(out.iter_mut()) {
            let (w, b) = make();
            let mut opt = AdamW::new(
                [
                    ("w".to_string(), w.shallow_clone()),
                    ("b".to_string(), b.shallow_clone()),
                ],
                cfg,
            )
            .unwrap();
            tch::manual_seed(6);
            for step in 0..3 {
                opt.zero_grad().unwrap();
                // Gradients over many magnitudes, tiny ones included.
                let scale = 10f64.powi(-3 * step);
                let gw = Tensor::randn([300, 700], (Kind::Float, Device::Cpu)) * scale;
                let gb = Tensor::randn([700], (Kind::Float, Device::Cpu));
                ((&w * gw.to_kind(kind)).sum(Kind::Float)
                    + (&b * gb.to_kind(kind)).sum(Kind::Float))
                .backward();
                opt.step_with(1e-3, fused).unwrap();
            }
            out.extend([w.detach().copy(), b.detach().copy()]);
            out.extend(opt.state_tensors().into_iter().map(|(_, t)| t.copy()));
        }
        out
    }

    #[test]
    fn the_fused_cpu_update_is_bit_identical_to_the_tensor_operations() {
        for (kind, wd) in [
            (Kind::Float, 0.0),
            (Kind::Float, 0.1),
            (Kind::BFloat16, 0.1),
        ] {
            let [fused, ops] = fused_and_tensor_ops_runs(kind, wd);
            assert_eq!(fused.len(), ops.len());
            for (i, (a, b)) in fused.iter().zip(&ops).enumerate() {
                assert!(
                    a.equal(b),
                    "{kind:?}, weight decay {wd}: tensor {i} differs"
                );
            }
        }
    }

    #[test]
    fn clipping_returns_the_pre_clip_norm() {
        let p = Tensor::from_slice(&[3.0f64, 4.0]).set_requires_grad(true);
        (&p * 1.0).sum(Kind::Double).backward(); // g = [1, 1]
        let q = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        (&q * 7.0).sum(Kind::Double).backward(); // g = [7]
        let norm = clip_grad_norm([&p, &q], 1.0).unwrap();
        assert!((norm - (51.0f64).sqrt()).abs() < 1e-12);
        let coef = 1.0 / (51.0f64.sqrt() + 1e-6);
        assert!((vals(&p.grad())[0] - coef).abs() < 1e-12);
        assert!((vals(&q.grad())[0] - 7.0 * coef).abs() < 1e-12);
        // Under the limit: untouched.
        let norm2 = clip_grad_norm([&p, &q], 10.0).unwrap();
        assert!((norm2 - 1.0).abs() < 1e-5);
    }

    /// One SFT step of a tiny decoder in `dtype` from the weights of `init`; returns the
    /// decoder and its optimizer.
    fn one_step(init: &crate::Decoder, dtype: crate::DType, lr: f64) -> (crate::Decoder, AdamW) {
        use crate::train::{sft_loss, token_logprobs, ScoredSeq};
        let dec = crate::Decoder::random(init.config(), dtype, tch::Device::Cpu, 1).unwrap();
        let src = init.var_store().variables();
        tch::no_grad(|| {
            for (name, mut t) in dec.var_store().variables() {
                t.copy_(&src[&name]);
            }
        });
        let mut opt = AdamW::new(dec.var_store().variables(), AdamWConfig::default()).unwrap();
        let ids: Vec<i64> = vec![1, 5, 7, 9, 2, 3, 11, 4, 8, 6, 30, 12];
        let scored = token_logprobs(&dec, &[ScoredSeq { ids: &ids, from: 1 }]).unwrap();
        sft_loss(scored.logprobs(), 11.0).unwrap().backward();
        scored.backward().unwrap();
        opt.step(lr).unwrap();
        (dec, opt)
    }

    #[test]
    fn a_bf16_step_updates_fp32_masters_like_the_fp32_step() {
        let cfg = crate::builtin::builtin_config("tiny-test", 40).unwrap();
        let init = crate::Decoder::random(&cfg, crate::DType::F32, tch::Device::Cpu, 3).unwrap();
        // Far below bf16's spacing at these weights (~1e-4 near 0.02, 0.008 near 1).
        let lr = 1e-5;
        let (d32, _) = one_step(&init, crate::DType::F32, lr);
        let (d16, opt16) = one_step(&init, crate::DType::BF16, lr);
        let before = init.var_store().variables();
        let after32 = d32.var_store().variables();
        let (mut n, mut off, mut dropped_by_bf16) = (0i64, 0.0f64, 0i64);
        for (name, p16) in d16.var_store().variables() {
            let master = opt16.master(&name).expect("bf16 parameters have a master");
            assert_eq!(master.kind(), Kind::Float);
            // The parameter is its master rounded to bf16.
            assert!(p16.equal(&master.to_kind(Kind::BFloat16)), "{name}");
            let start = before[&name].to_kind(Kind::BFloat16).to_kind(Kind::Float);
            let step16 = master - &start;
            let step32 = &after32[&name] - &before[&name];
            n += step32.numel() as i64;
            off += f64::try_from((&step16 - &step32).abs().sum(Kind::Double)).unwrap();
            // Updates the bf16 weight alone could not hold (it did not move), the master did.
            let held = p16
                .to_kind(Kind::Float)
                .eq_tensor(&start)
                .logical_and(&step16.ne(0.0));
            dropped_by_bf16 += i64::try_from(held.sum(Kind::Int64)).unwrap();
        }
        // Adam's first step moves each weight by ~lr·sign(g): the bf16 gradients round the
        // same way for almost every weight. Tolerance: a mean deviation of 2% of lr (0.5% seen).
        let mean_off = off / n as f64 / lr;
        eprintln!("mean |Δbf16 − Δfp32| = {mean_off:.4} lr; {dropped_by_bf16} of {n} updates held by the masters only");
        assert!(mean_off < 0.02, "mean |Δbf16 − Δfp32| = {mean_off} lr");
        assert!(dropped_by_bf16 > n / 2, "{dropped_by_bf16} of {n}");
        assert_eq!(opt16.state_tensors().len(), 3 * before.len());
        let fp32 = AdamW::new(d32.var_store().variables(), AdamWConfig::default()).unwrap();
        assert!(before.keys().all(|name| fp32.master(name).is_none()));
        assert_eq!(fp32.state_tensors().len(), 2 * before.len());
    }
}
