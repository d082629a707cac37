//! Token selection from a row of logits: greedy, temperature, top-k, top-p, driven by a small
//! per-request PRNG so a request's output does not depend on what it was batched with.

/// The per-request generator: SplitMix64, seeded per request (one definition for the
/// whole project, in `sspo_common::rng`).
pub use sspo_common::rng::SplitMix64 as Rng;

/// Index of the first maximum (like `torch.argmax`).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate().skip(1) {
        if v > logits[best] {
            best = i;
        }
    }
    best
}

/// Draws a token. `temperature <= 0` is greedy. Otherwise, as in transformers: divide by the
/// temperature, keep the `top_k` highest logits (0 = all; ties with the k-th kept), softmax,
/// keep the smallest set of most likely tokens whose mass reaches `top_p`, renormalise, sample.
pub fn sample(logits: &[f32], temperature: f64, top_k: usize, top_p: f64, rng: &mut Rng) -> usize {
    if temperature <= 0.0 || top_k == 1 || logits.len() <= 1 {
        return argmax(logits);
    }
    let inv_t = 1.0 / temperature;
    let mut cand: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, &v)| (i, f64::from(v) * inv_t))
        .collect();
    if cand.is_empty() {
        return argmax(logits);
    }
    let desc = |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if top_k > 0 && top_k < cand.len() {
        cand.select_nth_unstable_by(top_k - 1, desc);
        let kth = cand[top_k - 1].1;
        cand.retain(|c| c.1 >= kth);
    }
    cand.sort_unstable_by(desc);
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|c| (c.1 - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    let mut keep = probs.len();
    if top_p < 1.0 {
        let mut cum = 0.0;
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= top_p {
                keep = i + 1;
                break;
            }
        }
    }
    let mass: f64 = probs[..keep].iter().sum();
    let u = rng.unit() * mass;
    let mut cum = 0.0;
    for (c, p) in cand.iter().zip(&probs[..keep]) {
        cum += p;
        if u < cum {
            return c.0;
        }
    }
    cand[keep - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_unchanged() {
        // Recorded from the first implementation (its own SplitMix64, FNV-1a and
        // Box-Muller): initial weights and sampled tokens of shipped runs depend on them.
        let mut r = Rng::for_stream(7, "model.layers.0.self_attn.q_proj.weight");
        let ints: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        let units: Vec<u64> = (0..3).map(|_| r.unit().to_bits()).collect();
        let normals: Vec<u64> = (0..3).map(|_| r.normal().to_bits()).collect();
        assert_eq!(
            ints,
            [0x715d19c8cb666900, 0xe5e6689c2a056b04, 0x1c5e36f988312fbf]
        );
        assert_eq!(
            units,
            [0x3fd21c322c1521a8, 0x3fa2ee3f20e8c4f0, 0x3fe481cbaceec182]
        );
        assert_eq!(
            normals,
            [0x3fe6cd776956c6c5, 0xbff614c5f35445aa, 0x3ff2d61ec7ba04a1]
        );
        let mut r = Rng::new(42);
        let units: Vec<u64> = (0..3).map(|_| r.unit().to_bits()).collect();
        assert_eq!(
            units,
            [0x3fe7bae644c5fd6d, 0x3fc477f199d93378, 0x3fd1d499d5c4c3e6]
        );
    }

    #[test]
    fn unit_matches_the_first_formula() {
        // The first implementation multiplied by 2^-53 where the shared one divides by
        // 2^53: both are exact for a 53-bit integer, so every value agrees.
        let mut g = Rng::new(1);
        for x in
            (0..100_000)
                .map(|_| g.next_u64())
                .chain([0, 1, 2047, 2048, u64::MAX - 2047, u64::MAX])
        {
            let first = (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            assert_eq!(first.to_bits(), sspo_common::rng::unit_f64(x).to_bits());
        }
    }

    #[test]
    fn greedy_picks_first_max() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 0.0]), 1);
        let mut rng = Rng::new(1);
        assert_eq!(sample(&[1.0, 3.0, 2.0], 0.0, 0, 1.0, &mut rng), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_support() {
        let logits = [0.0f32, 5.0, 4.9, -1.0, 4.8];
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let t = sample(&logits, 1.0, 2, 1.0, &mut rng);
            assert!(t == 1 || t == 2, "top_k=2 sampled {t}");
            let t = sample(&logits, 1.0, 0, 0.3, &mut rng);
            assert_eq!(t, 1, "top_p=0.3 keeps only the most likely token");
        }
    }

    #[test]
    fn sampling_follows_distribution_and_seed() {
        let logits = [0.0f32, (3.0f32).ln()];
        let mut rng = Rng::new(42);
        let ones = (0..4000)
            .filter(|_| sample(&logits, 1.0, 0, 1.0, &mut rng) == 1)
            .count();
        assert!((2800..3200).contains(&ones), "expected ~3000, got {ones}");
        let a: Vec<usize> = {
            let mut r = Rng::new(5);
            (0..20)
                .map(|_| sample(&logits, 0.7, 0, 0.95, &mut r))
                .collect()
        };
        let b: Vec<usize> = {
            let mut r = Rng::new(5);
            (0..20)
                .map(|_| sample(&logits, 0.7, 0, 0.95, &mut r))
                .collect()
        };
        assert_eq!(a, b);
    }
}
