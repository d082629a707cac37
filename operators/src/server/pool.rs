//! A bounded number of requests in flight: `max_in_flight` threads take jobs in order
//! until every job is done or one fails (then no new job starts).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

/// Runs `job(i)` for every `i < n` on at most `max_in_flight` threads, calling
/// `on_done(i, &result)` on the caller's thread as results arrive (for progress). Returns
/// the results in job order, or the first error.
pub fn run_bounded<T, E, F, D>(
    n: usize,
    max_in_flight: usize,
    job: F,
    mut on_done: D,
) -> Result<Vec<T>, E>
where
    T: Send,
    E: Send,
    F: Fn(usize) -> Result<T, E> + Sync,
    D: FnMut(usize, &T),
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut first_error = None;
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..max_in_flight.clamp(1, n.max(1)) {
            let tx = tx.clone();
            let (next, failed, job) = (&next, &failed, &job);
            scope.spawn(move || loop {
                if failed.load(Ordering::SeqCst) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let result = job(i);
                if result.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                if tx.send((i, result)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (i, result) in rx {
            match result {
                Ok(t) => {
                    on_done(i, &t);
                    results[i] = Some(t);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(results.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn results_keep_job_order_and_the_bound_holds() {
        let live = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let mut seen = 0;
        let out: Vec<usize> = run_bounded(
            20,
            3,
            |i| -> Result<usize, ()> {
                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2 + (i % 3) as u64));
                live.fetch_sub(1, Ordering::SeqCst);
                Ok(i * 10)
            },
            |_, _| seen += 1,
        )
        .unwrap();
        assert_eq!(out, (0..20).map(|i| i * 10).collect::<Vec<_>>());
        assert_eq!(seen, 20);
        assert!(peak.load(Ordering::SeqCst) <= 3);
    }

    #[test]
    fn a_failure_stops_new_jobs() {
        let started = AtomicUsize::new(0);
        let err = run_bounded(
            100,
            1,
            |i| {
                started.fetch_add(1, Ordering::SeqCst);
                if i == 2 {
                    Err(format!("job {i}"))
                } else {
                    Ok(i)
                }
            },
            |_, _| {},
        )
        .unwrap_err();
        assert_eq!(err, "job 2");
        assert_eq!(started.load(Ordering::SeqCst), 3);
    }
}
