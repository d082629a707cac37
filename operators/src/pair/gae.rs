//! The pure math of `pair`'s first half: step rewards, TD errors, step-level GAE and the
//! group-relative normalisation. No tables, no engine: plain slices of `f64`.
//!
//! This is the project's formulation of the step-wise relative advantage (see
//! `docs/operators/pair.md`), not the paper's equations.

/// The constants of the advantage estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaeConfig {
    /// Discount `γ`.
    pub gamma: f64,
    /// GAE `λ`.
    pub lambda: f64,
    /// Length cost `c` per token.
    pub length_cost: f64,
}

/// Below this the group's standard deviation counts as 0 (all advantages equal).
pub const STD_ZERO: f64 = 1e-12;

/// The per-step quantities of one rollout (index `k - 1` holds step `k`).
#[derive(Debug, Clone, PartialEq)]
pub struct StepAdvantages {
    pub reward: Vec<f64>,
    pub delta: Vec<f64>,
    pub advantage: Vec<f64>,
}

/// `r_k = −c · tokens(s_k)` for every step, plus the outcome `R` on the last one.
pub fn step_rewards(tokens: &[f64], outcome: f64, length_cost: f64) -> Vec<f64> {
    let mut r: Vec<f64> = tokens.iter().map(|t| -length_cost * t).collect();
    if let Some(last) = r.last_mut() {
        *last += outcome;
    }
    r
}

/// `δ_k = r_k + γ·V_k − V_{k−1}` for `k = 1..K`, with `V_K := 0`. `values` holds
/// `V_0..V_K` (`K + 1` entries; `V_K` as probed is not used) and `rewards` `r_1..r_K`.
/// `None` when the lengths do not match.
pub fn td_errors(values: &[f64], rewards: &[f64], gamma: f64) -> Option<Vec<f64>> {
    let k_total = rewards.len();
    if values.len() != k_total + 1 {
        return None;
    }
    Some(
        (1..=k_total)
            .map(|k| {
                let v_k = if k == k_total { 0.0 } else { values[k] };
                rewards[k - 1] + gamma * v_k - values[k - 1]
            })
            .collect(),
    )
}

/// GAE backwards: `A_K = δ_K`, `A_k = δ_k + γλ·A_{k+1}`.
pub fn gae(deltas: &[f64], gamma: f64, lambda: f64) -> Vec<f64> {
    let mut a = vec![0.0; deltas.len()];
    let mut next = 0.0;
    for k in (0..deltas.len()).rev() {
        next = deltas[k] + gamma * lambda * next;
        a[k] = next;
    }
    a
}

/// Rewards, TD errors and advantages of one rollout with step token counts `tokens`
/// (`K` entries), values `V_0..V_K` and outcome `R ∈ {0, 1}`.
pub fn rollout_advantages(
    cfg: &GaeConfig,
    tokens: &[f64],
    values: &[f64],
    outcome: f64,
) -> Option<StepAdvantages> {
    let reward = step_rewards(tokens, outcome, cfg.length_cost);
    let delta = td_errors(values, &reward, cfg.gamma)?;
    let advantage = gae(&delta, cfg.gamma, cfg.lambda);
    Some(StepAdvantages {
        reward,
        delta,
        advantage,
    })
}

/// Mean and population standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// `Â = (A − mean) / (std + ε)` over the whole group (all steps of all rollouts of one
/// query; population std). A group whose std is below [`STD_ZERO`] gets `Â = 0`.
pub fn normalize(group: &[f64], eps: f64) -> Vec<f64> {
    let (mean, std) = mean_std(group);
    if std < STD_ZERO {
        return vec![0.0; group.len()];
    }
    group.iter().map(|a| (a - mean) / (std + eps)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < tol, "{a:?} vs {b:?}");
        }
    }

    /// K = 3, tokens 10, 20, 30, c = 0.01, R = 1, V = 0.2, 0.5, 0.9, (0.7 not used):
    ///   r = −0.1, −0.2, −0.3 + 1 = 0.7
    /// γ = 1, λ = 0.5 (γλ = 0.5):
    ///   δ1 = −0.1 + 0.5 − 0.2 = 0.2
    ///   δ2 = −0.2 + 0.9 − 0.5 = 0.2
    ///   δ3 =  0.7 + 0   − 0.9 = −0.2      (V_3 := 0)
    ///   A3 = −0.2;  A2 = 0.2 + 0.5·(−0.2) = 0.1;  A1 = 0.2 + 0.5·0.1 = 0.25
    #[test]
    fn gae_by_hand_gamma_one() {
        let cfg = GaeConfig {
            gamma: 1.0,
            lambda: 0.5,
            length_cost: 0.01,
        };
        let s = rollout_advantages(&cfg, &[10.0, 20.0, 30.0], &[0.2, 0.5, 0.9, 0.7], 1.0).unwrap();
        close(&s.reward, &[-0.1, -0.2, 0.7], 1e-12);
        close(&s.delta, &[0.2, 0.2, -0.2], 1e-12);
        close(&s.advantage, &[0.25, 0.1, -0.2], 1e-12);
    }

    /// Same rollout, γ = 0.9, λ = 0.95 (γλ = 0.855):
    ///   δ1 = −0.1 + 0.9·0.5 − 0.2 = 0.15
    ///   δ2 = −0.2 + 0.9·0.9 − 0.5 = 0.11
    ///   δ3 =  0.7 + 0       − 0.9 = −0.2
    ///   A3 = −0.2
    ///   A2 = 0.11 + 0.855·(−0.2)   = −0.061
    ///   A1 = 0.15 + 0.855·(−0.061) = 0.15 − 0.052155 = 0.097845
    #[test]
    fn gae_by_hand_discounted() {
        let cfg = GaeConfig {
            gamma: 0.9,
            lambda: 0.95,
            length_cost: 0.01,
        };
        let s = rollout_advantages(&cfg, &[10.0, 20.0, 30.0], &[0.2, 0.5, 0.9, 0.7], 1.0).unwrap();
        close(&s.delta, &[0.15, 0.11, -0.2], 1e-12);
        close(&s.advantage, &[0.097845, -0.061, -0.2], 1e-12);
    }

    /// An incorrect rollout (R = 0) with no length cost, one step: δ1 = 0 + 0 − V_0.
    #[test]
    fn single_step_and_lengths() {
        let cfg = GaeConfig {
            gamma: 1.0,
            lambda: 0.95,
            length_cost: 0.0,
        };
        let s = rollout_advantages(&cfg, &[7.0], &[0.4, 0.9], 0.0).unwrap();
        close(&s.advantage, &[-0.4], 1e-12);
        // V must have K + 1 entries.
        assert!(rollout_advantages(&cfg, &[7.0, 3.0], &[0.4, 0.9], 0.0).is_none());
        assert!(rollout_advantages(&cfg, &[], &[0.4], 1.0)
            .unwrap()
            .advantage
            .is_empty());
    }

    /// A = 2, 4, 4, 4, 5, 5, 7, 9: mean = 40 / 8 = 5; squared deviations
    /// 9, 1, 1, 1, 0, 0, 4, 16 sum to 32, variance 32 / 8 = 4, std = 2;
    /// Â = (A − 5) / 2 = −1.5, −0.5, −0.5, −0.5, 0, 0, 1, 2 (ε = 0).
    #[test]
    fn normalisation_by_hand() {
        let a = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(mean_std(&a), (5.0, 2.0));
        close(
            &normalize(&a, 0.0),
            &[-1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 1.0, 2.0],
            1e-12,
        );
        // ε = 1e-6 divides by 2.000001.
        let n = normalize(&a, 1e-6);
        assert!((n[7] - 4.0 / 2.000001).abs() < 1e-12);
    }

    #[test]
    fn zero_std_gives_zero() {
        assert_eq!(normalize(&[0.3, 0.3, 0.3], 1e-6), vec![0.0; 3]);
        assert_eq!(normalize(&[0.1 + 0.2], 1e-6), vec![0.0]);
        assert!(normalize(&[], 1e-6).is_empty());
    }
}
