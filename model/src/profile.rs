//! An opt-in wall-clock profile of where inference time goes: `SSPO_PROFILE=1` in the
//! environment turns it on; [`scope`] times a named stage until the guard drops, and
//! [`report`] gives the totals. Off (the default), a scope costs one relaxed load.
//!
//! Stages nest: `prefill`/`decode` (the generator's passes) contain `attention`, `mlp`
//! and `lm_head` (the decoder's), so a stage's time includes the stages inside it.
//! On CUDA the guard synchronises the device before reading the clock, which serialises
//! the GPU and makes the profile slower than an unprofiled run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tch::Device;

fn enabled_flag() -> &'static AtomicBool {
    static ON: OnceLock<AtomicBool> = OnceLock::new();
    ON.get_or_init(|| AtomicBool::new(std::env::var("SSPO_PROFILE").is_ok_and(|v| v == "1")))
}

fn totals() -> &'static Mutex<BTreeMap<&'static str, (Duration, u64)>> {
    static TOTALS: OnceLock<Mutex<BTreeMap<&'static str, (Duration, u64)>>> = OnceLock::new();
    TOTALS.get_or_init(Default::default)
}

/// Whether stages are being timed.
pub fn enabled() -> bool {
    enabled_flag().load(Ordering::Relaxed)
}

/// Turns the profile on or off (overrides `SSPO_PROFILE`).
pub fn set_enabled(on: bool) {
    enabled_flag().store(on, Ordering::Relaxed);
}

/// Times `stage` on `device` until the returned guard drops.
pub fn scope(stage: &'static str, device: Device) -> Scope {
    if !enabled() {
        return Scope(None);
    }
    sync(device);
    Scope(Some((stage, device, Instant::now())))
}

/// The guard of [`scope`].
#[must_use = "the stage is timed until the guard drops"]
pub struct Scope(Option<(&'static str, Device, Instant)>);

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some((stage, device, start)) = self.0.take() {
            sync(device);
            let took = start.elapsed();
            if let Ok(mut t) = totals().lock() {
                let e = t.entry(stage).or_default();
                e.0 += took;
                e.1 += 1;
            }
        }
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The totals so far: stage → (seconds, calls), and clears them.
pub fn take_report() -> BTreeMap<&'static str, (f64, u64)> {
    let Ok(mut t) = totals().lock() else {
        return BTreeMap::new();
    };
    std::mem::take(&mut *t)
        .into_iter()
        .map(|(k, (d, n))| (k, (d.as_secs_f64(), n)))
        .collect()
}

/// [`take_report`] as a JSON object `{stage: {"s": seconds, "calls": n}}`.
pub fn take_report_json() -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = take_report()
        .into_iter()
        .map(|(k, (s, n))| (k.to_string(), serde_json::json!({"s": s, "calls": n})))
        .collect();
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_add_up_only_when_enabled() {
        set_enabled(false);
        drop(scope("test_off", Device::Cpu));
        set_enabled(true);
        for _ in 0..3 {
            let _s = scope("test_on", Device::Cpu);
            std::thread::sleep(Duration::from_millis(2));
        }
        set_enabled(false);
        let r = take_report();
        assert!(!r.contains_key("test_off"));
        let (secs, calls) = r["test_on"];
        assert_eq!(calls, 3);
        assert!(secs >= 0.006, "{secs}");
        assert!(
            !take_report().contains_key("test_on"),
            "taking the report clears it"
        );
    }
}
