//! The data order: a seeded shuffle per epoch, so the examples of any optimizer step
//! follow from the step number alone (what makes resuming exact).

use sspo_common::rng::{blake3_u64, SplitMix64};

/// Which examples each optimizer step takes.
#[derive(Debug, Clone)]
pub struct DataOrder {
    /// The run's seed for the data order.
    pub seed: u64,
    pub examples: usize,
    pub per_step: usize,
    pub steps_per_epoch: u64,
}

impl DataOrder {
    /// Example indices of optimizer step `step` (0-based): the next `per_step` of its
    /// epoch's order (the last step of an epoch may take fewer).
    pub fn step_examples(&self, step: u64) -> Vec<usize> {
        let epoch = step / self.steps_per_epoch;
        let pos = (step % self.steps_per_epoch) as usize;
        let order = epoch_order(self.examples, self.epoch_seed(epoch));
        let lo = (pos * self.per_step).min(order.len());
        let hi = ((pos + 1) * self.per_step).min(order.len());
        order[lo..hi].to_vec()
    }

    fn epoch_seed(&self, epoch: u64) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(&self.seed.to_le_bytes());
        h.update(&epoch.to_le_bytes());
        blake3_u64(&h.finalize())
    }
}

/// The example order of one epoch: a Fisher-Yates shuffle seeded by `seed`.
pub fn epoch_order(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..n).rev() {
        // `next % (i + 1)`, not the multiply-shift of `SplitMix64::shuffle`: the orders
        // (and so the weights) of existing runs depend on this formula.
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_are_permutations_and_depend_on_the_seed() {
        let a = epoch_order(50, 1);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(50, 1));
        assert_ne!(a, epoch_order(50, 2));
        assert!(epoch_order(0, 3).is_empty());
    }

    const ORDER_10_42: [usize; 10] = [0, 9, 5, 8, 6, 4, 7, 2, 1, 3];
    const ORDER_7_MAX: [usize; 7] = [5, 4, 6, 2, 1, 3, 0];
    const EPOCH_SEED_7_2: u64 = 1_029_912_432_700_859_263;

    #[test]
    fn orders_and_epoch_seeds_are_those_of_earlier_runs() {
        // Recorded from the implementation that trained the shipped results.
        assert_eq!(epoch_order(10, 42), ORDER_10_42);
        assert_eq!(epoch_order(7, u64::MAX), ORDER_7_MAX);
        let order = DataOrder {
            seed: 7,
            examples: 10,
            per_step: 3,
            steps_per_epoch: 4,
        };
        assert_eq!(order.epoch_seed(2), EPOCH_SEED_7_2);
    }

    #[test]
    fn steps_take_consecutive_slices_of_their_epoch() {
        let order = DataOrder {
            seed: 7,
            examples: 10,
            per_step: 3,
            steps_per_epoch: 4,
        };
        let epoch1 = epoch_order(10, order.epoch_seed(1));
        let steps: Vec<Vec<usize>> = (4..8).map(|s| order.step_examples(s)).collect();
        assert_eq!(steps.concat(), epoch1);
        assert_eq!(steps[3].len(), 1);
    }
}
