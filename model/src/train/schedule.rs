//! Learning rate per optimizer step: linear warm-up, then cosine decay to zero.

/// `lr(s)` for the optimizer step `s = 0..total`:
/// `peak · (s + 1) / warmup` while `s < warmup`, then
/// `peak · ½ (1 + cos(π · (s − warmup) / max(1, total − warmup)))`.
/// The first step already has a non-zero rate (unlike a warm-up that starts at 0), and
/// the last one a small positive rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule {
            peak: 1.0,
            warmup: 4,
            total: 14,
        };
        let want = [0.25, 0.5, 0.75, 1.0];
        for (i, w) in want.iter().enumerate() {
            assert!((s.lr(i as u64) - w).abs() < 1e-12);
        }
        assert!((s.lr(4) - 1.0).abs() < 1e-12);
        // Half way through the decay: 0.5; the formula by hand at step 7.
        assert!((s.lr(9) - 0.5).abs() < 1e-12);
        let p = 3.0 / 10.0;
        let want7 = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
        assert!((s.lr(7) - want7).abs() < 1e-12);
        assert!(s.lr(13) > 0.0 && s.lr(13) < 0.03);
        let flat = Schedule {
            peak: 2e-5,
            warmup: 0,
            total: 1,
        };
        assert_eq!(flat.lr(0), 2e-5);
    }
}
