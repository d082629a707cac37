//! The training losses, on flat per-token log-probs (see [`super::token_logprobs`]).
//!
//! With `ρ_t = log π_θ(x_t | x_<t) − log π_ref(x_t | x_<t)` over the scored tokens of
//! each side (the caller decides which tokens are scored, and weighs the ones that must
//! not enter `R` with 0: the NLL term still counts them):
//! * `sft`: `Σ −log π_θ / denom` (denom = completion tokens of the optimizer step).
//! * `dpo`: `−log σ(β (Σ_c ρ − Σ_r ρ))` per pair (all token weights 1, `η = 0`).
//! * `sspo`: `R(y) = Σ_k w_k Σ_{t∈s_k} ρ_t` with step weights from the relative
//!   advantages ([`step_weight`]); per pair `−log σ(β (R(c) − R(r))) + η · NLL(c)/|c|`.
//! * `step_pg`: offline clipped policy gradient, every token of step `k` taking `Â_k`,
//!   the reference as the behaviour policy: per token
//!   `−min(r_t Â, clip(r_t, 1−ε, 1+ε) Â) + β · KL_t`, `r_t = exp(ρ_t)`,
//!   `KL_t = exp(−ρ_t) + ρ_t − 1` (the non-negative "k3" estimator).
//!
//! Pair losses are summed and divided by `denom` (the pairs of the optimizer step), so
//! gradient accumulation over micro-batches gives the mean over the step.

use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

/// `clip(1 + α·Â, w_min, w_max)` on a chosen step, `clip(1 − α·Â, w_min, w_max)` on a
/// rejected one.
pub fn step_weight(adv: f64, alpha: f64, w_min: f64, w_max: f64, chosen: bool) -> f64 {
    let raw = if chosen {
        1.0 + alpha * adv
    } else {
        1.0 - alpha * adv
    };
    raw.clamp(w_min, w_max)
}

/// Layout of the scored tokens of a micro-batch of pairs.
#[derive(Debug, Clone, Default)]
pub struct PairTokens {
    /// Sequence index of every scored token.
    pub seq: Vec<i64>,
    /// Weight of every scored token (its step's weight; 1 for plain DPO).
    pub weight: Vec<f32>,
    /// Advantage of every scored token (its step's `Â`; used by `step_pg`).
    pub adv: Vec<f32>,
    /// `(chosen sequence, rejected sequence)` of every pair.
    pub pairs: Vec<(usize, usize)>,
    /// Number of sequences.
    pub n_seqs: usize,
}

/// `β` and the NLL weight `η` of the preference losses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefLossConfig {
    pub beta: f64,
    pub eta: f64,
}

/// A loss to back-propagate and the per-pair margins `β (R(c) − R(r))` for metrics.
#[derive(Debug)]
pub struct LossParts {
    /// Scalar, already divided by the step's denominator.
    pub loss: Tensor,
    pub margins: Vec<f64>,
}

fn check(logp: &Tensor, ref_logp: &Tensor, toks: &PairTokens) -> Result<()> {
    let n = toks.seq.len() as i64;
    if logp.size() != [n] || ref_logp.size() != [n] {
        return Err(ModelError::Input(format!(
            "log-probs {:?} / reference {:?} do not match {n} scored tokens",
            logp.size(),
            ref_logp.size()
        )));
    }
    if toks.weight.len() != toks.seq.len() || toks.adv.len() != toks.seq.len() {
        return Err(ModelError::Input(
            "weight/adv length differs from seq".into(),
        ));
    }
    if let Some(&(c, r)) = toks
        .pairs
        .iter()
        .find(|&&(c, r)| c >= toks.n_seqs || r >= toks.n_seqs)
    {
        return Err(ModelError::Input(format!(
            "pair ({c}, {r}) outside {} sequences",
            toks.n_seqs
        )));
    }
    Ok(())
}

/// Per-sequence sums of `values` `[n]` (float32).
fn per_seq(values: &Tensor, toks: &PairTokens) -> Result<Tensor> {
    let device = values.device();
    let idx = Tensor::from_slice(&toks.seq).f_to_device(device)?;
    Ok(
        Tensor::f_zeros([toks.n_seqs as i64], (Kind::Float, device))?
            .f_index_add(0, &idx, values)?,
    )
}

fn pair_index(toks: &PairTokens, device: tch::Device) -> Result<(Tensor, Tensor)> {
    let c: Vec<i64> = toks.pairs.iter().map(|p| p.0 as i64).collect();
    let r: Vec<i64> = toks.pairs.iter().map(|p| p.1 as i64).collect();
    Ok((
        Tensor::from_slice(&c).f_to_device(device)?,
        Tensor::from_slice(&r).f_to_device(device)?,
    ))
}

fn to_vec(t: &Tensor) -> Result<Vec<f64>> {
    let t = t
        .f_detach()?
        .f_to_kind(Kind::Double)?
        .f_to_device(tch::Device::Cpu)?;
    Ok(Vec::<f64>::try_from(&t)?)
}

/// `sft`: `−Σ logp / denom`.
pub fn sft_loss(logp: &Tensor, denom: f64) -> Result<Tensor> {
    Ok(logp.f_sum(Kind::Float)?.f_neg()?.f_div_scalar(denom)?)
}

/// `dpo` (weights 1, `η = 0`) and `sspo`: `Σ_pairs [−log σ(β (R(c) − R(r))) + η·NLL(c)/|c|] / denom`.
pub fn preference_loss(
    logp: &Tensor,
    ref_logp: &Tensor,
    toks: &PairTokens,
    cfg: PrefLossConfig,
    denom: f64,
) -> Result<LossParts> {
    check(logp, ref_logp, toks)?;
    let device = logp.device();
    let w = Tensor::from_slice(&toks.weight).f_to_device(device)?;
    let rho = logp.f_sub(&ref_logp.f_to_device(device)?)?;
    let reward = per_seq(&rho.f_mul(&w)?, toks)?;
    let (c, r) = pair_index(toks, device)?;
    let margin = reward
        .f_index_select(0, &c)?
        .f_sub(&reward.f_index_select(0, &r)?)?
        .f_mul_scalar(cfg.beta)?;
    let mut loss = margin.f_log_sigmoid()?.f_neg()?.f_sum(Kind::Float)?;
    if cfg.eta != 0.0 {
        let nll = per_seq(&logp.f_neg()?, toks)?;
        let ones = Tensor::f_ones([toks.seq.len() as i64], (Kind::Float, device))?;
        let count = per_seq(&ones, toks)?.f_clamp_min(1.0)?;
        let mean_nll = nll.f_div(&count)?.f_index_select(0, &c)?;
        loss = loss.f_add(&mean_nll.f_sum(Kind::Float)?.f_mul_scalar(cfg.eta)?)?;
    }
    Ok(LossParts {
        loss: loss.f_div_scalar(denom)?,
        margins: to_vec(&margin)?,
    })
}

/// `step_pg`: `Σ_tokens [−min(r Â, clip(r, 1−ε, 1+ε) Â) + β KL] / denom` (denom = scored
/// tokens of the step); margins as for DPO (unweighted), for metrics only.
pub fn step_pg_loss(
    logp: &Tensor,
    ref_logp: &Tensor,
    toks: &PairTokens,
    beta: f64,
    clip_eps: f64,
    denom: f64,
) -> Result<LossParts> {
    check(logp, ref_logp, toks)?;
    let device = logp.device();
    let adv = Tensor::from_slice(&toks.adv).f_to_device(device)?;
    let rho = logp.f_sub(&ref_logp.f_to_device(device)?)?;
    let ratio = rho.f_exp()?;
    let unclipped = ratio.f_mul(&adv)?;
    let clipped = ratio.f_clamp(1.0 - clip_eps, 1.0 + clip_eps)?.f_mul(&adv)?;
    let surrogate = unclipped.f_minimum(&clipped)?;
    let kl = rho.f_neg()?.f_exp()?.f_add(&rho)?.f_sub_scalar(1.0)?;
    let loss = surrogate
        .f_neg()?
        .f_add(&kl.f_mul_scalar(beta)?)?
        .f_sum(Kind::Float)?
        .f_div_scalar(denom)?;
    let reward = per_seq(&rho.f_detach()?, toks)?;
    let (c, r) = pair_index(toks, device)?;
    let margin = reward
        .f_index_select(0, &c)?
        .f_sub(&reward.f_index_select(0, &r)?)?
        .f_mul_scalar(beta)?;
    Ok(LossParts {
        loss,
        margins: to_vec(&margin)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }
    fn logsig(x: f64) -> f64 {
        sig(x).ln()
    }

    /// Two pairs: sequences 0 (chosen) / 1 (rejected) and 2 / 3. Chosen 0 has two steps
    /// (tokens 0-1 and 2), rejected 1 one step (tokens 3-4), chosen 2 one step (5),
    /// rejected 3 two steps (6, 7-8).
    struct Fixture {
        logp: Vec<f64>,
        ref_lp: Vec<f64>,
        seq: Vec<i64>,
        step_adv: Vec<f64>,
        chosen_side: Vec<bool>,
    }

    fn fixture() -> Fixture {
        Fixture {
            logp: vec![-0.5, -1.2, -0.3, -2.0, -0.7, -0.9, -1.5, -0.2, -3.0],
            ref_lp: vec![-0.6, -1.0, -0.4, -1.8, -0.9, -1.1, -1.2, -0.25, -2.5],
            seq: vec![0, 0, 0, 1, 1, 2, 3, 3, 3],
            // Advantage of the step each token belongs to.
            step_adv: vec![0.8, 0.8, -0.3, 0.5, 0.5, 1.7, -0.4, 0.9, 0.9],
            chosen_side: vec![true, true, true, false, false, true, false, false, false],
        }
    }

    fn toks(f: &Fixture, weights: Vec<f32>) -> PairTokens {
        PairTokens {
            seq: f.seq.clone(),
            weight: weights,
            adv: f.step_adv.iter().map(|&a| a as f32).collect(),
            pairs: vec![(0, 1), (2, 3)],
            n_seqs: 4,
        }
    }

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<_>>())
    }

    fn value(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn dpo_matches_the_trl_sigmoid_loss() {
        let f = fixture();
        let beta = 0.1;
        let logp = t(&f.logp).set_requires_grad(true);
        let tk = toks(&f, vec![1.0; 9]);
        let out = preference_loss(
            &logp,
            &t(&f.ref_lp),
            &tk,
            PrefLossConfig { beta, eta: 0.0 },
            2.0,
        )
        .unwrap();
        // TRL: -logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), mean over pairs.
        let sum = |s: i64, v: &[f64]| -> f64 {
            f.seq
                .iter()
                .zip(v)
                .filter(|(q, _)| **q == s)
                .map(|(_, x)| x)
                .sum()
        };
        let mut want = 0.0;
        let mut margins = Vec::new();
        for (c, r) in [(0, 1), (2, 3)] {
            let logits =
                (sum(c, &f.logp) - sum(c, &f.ref_lp)) - (sum(r, &f.logp) - sum(r, &f.ref_lp));
            want += -logsig(beta * logits) / 2.0;
            margins.push(beta * logits);
        }
        assert!(
            (value(&out.loss) - want).abs() < 1e-6,
            "{} vs {want}",
            value(&out.loss)
        );
        for (g, w) in out.margins.iter().zip(&margins) {
            assert!((g - w).abs() < 1e-6);
        }
        // d loss / d logp of a chosen token of pair 0 = -beta σ(-m) / 2.
        out.loss.backward();
        let g = logp.grad().double_value(&[0]);
        assert!((g - (-beta * sig(-margins[0]) / 2.0)).abs() < 1e-6);
        let g = logp.grad().double_value(&[3]);
        assert!((g - (beta * sig(-margins[0]) / 2.0)).abs() < 1e-6);
    }

    #[test]
    fn sspo_weights_steps_and_adds_the_chosen_nll() {
        let f = fixture();
        let (beta, alpha, w_min, w_max, eta) = (0.5, 1.0, 0.0, 2.0, 0.1);
        let w: Vec<f64> = f
            .step_adv
            .iter()
            .zip(&f.chosen_side)
            .map(|(&a, &c)| step_weight(a, alpha, w_min, w_max, c))
            .collect();
        // By hand: chosen steps 1 + Â clipped to [0, 2], rejected 1 − Â.
        assert_eq!(
            w.iter()
                .map(|x| (x * 100.0).round() / 100.0)
                .collect::<Vec<_>>(),
            vec![1.8, 1.8, 0.7, 0.5, 0.5, 2.0, 1.4, 0.1, 0.1]
        );
        let logp = t(&f.logp);
        let tk = toks(&f, w.iter().map(|&x| x as f32).collect());
        let out =
            preference_loss(&logp, &t(&f.ref_lp), &tk, PrefLossConfig { beta, eta }, 2.0).unwrap();
        let r = |s: i64| -> f64 {
            (0..9)
                .filter(|&i| f.seq[i] == s)
                .map(|i| w[i] * (f.logp[i] - f.ref_lp[i]))
                .sum()
        };
        let nll = |s: i64| -> f64 {
            let v: Vec<f64> = (0..9)
                .filter(|&i| f.seq[i] == s)
                .map(|i| -f.logp[i])
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let want = ((-logsig(beta * (r(0) - r(1))) + eta * nll(0))
            + (-logsig(beta * (r(2) - r(3))) + eta * nll(2)))
            / 2.0;
        assert!(
            (value(&out.loss) - want).abs() < 1e-6,
            "{} vs {want}",
            value(&out.loss)
        );
        assert!((out.margins[1] - beta * (r(2) - r(3))).abs() < 1e-6);
        // α = 0 is DPO.
        let ones = toks(
            &f,
            (0..9)
                .map(|i| step_weight(f.step_adv[i], 0.0, 0.0, 2.0, true) as f32)
                .collect(),
        );
        let a0 = preference_loss(
            &logp,
            &t(&f.ref_lp),
            &ones,
            PrefLossConfig { beta, eta: 0.0 },
            2.0,
        )
        .unwrap();
        let dpo = preference_loss(
            &logp,
            &t(&f.ref_lp),
            &toks(&f, vec![1.0; 9]),
            PrefLossConfig { beta, eta: 0.0 },
            2.0,
        )
        .unwrap();
        assert!((value(&a0.loss) - value(&dpo.loss)).abs() < 1e-9);
    }

    #[test]
    fn step_pg_is_the_clipped_surrogate_plus_kl() {
        let f = fixture();
        let (beta, eps) = (0.05, 0.2);
        let out = step_pg_loss(
            &t(&f.logp),
            &t(&f.ref_lp),
            &toks(&f, vec![1.0; 9]),
            beta,
            eps,
            9.0,
        )
        .unwrap();
        let mut want = 0.0;
        for i in 0..9 {
            let rho = f.logp[i] - f.ref_lp[i];
            let ratio = rho.exp();
            let a = f.step_adv[i];
            let surr = (ratio * a).min(ratio.clamp(1.0 - eps, 1.0 + eps) * a);
            let kl = (-rho).exp() + rho - 1.0;
            want += (-surr + beta * kl) / 9.0;
        }
        assert!(
            (value(&out.loss) - want).abs() < 1e-6,
            "{} vs {want}",
            value(&out.loss)
        );
    }

    #[test]
    fn sft_is_the_mean_nll() {
        let f = fixture();
        let l = sft_loss(&t(&f.logp), 9.0).unwrap();
        let want = -f.logp.iter().sum::<f64>() / 9.0;
        assert!((value(&l) - want).abs() < 1e-6);
    }

    #[test]
    fn mismatched_layouts_are_refused() {
        let f = fixture();
        let mut tk = toks(&f, vec![1.0; 9]);
        tk.pairs.push((4, 0));
        let e = preference_loss(
            &t(&f.logp),
            &t(&f.ref_lp),
            &tk,
            PrefLossConfig {
                beta: 0.1,
                eta: 0.0,
            },
            1.0,
        );
        assert!(e.is_err());
    }
}
