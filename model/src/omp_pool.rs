//! Runs Rust tasks on libtorch's own OpenMP threads.
//!
//! Our CPU kernels ([`crate::bf16_rows`]) run between libtorch operations. On a separate
//! pool (rayon) each call had to wake its sleeping threads while libtorch's OpenMP threads,
//! still spinning after the previous operation, held the cores: bf16 decoding at batch 1
//! got slower, not faster. Going through `GOMP_parallel`, the entry point `#pragma omp
//! parallel` compiles to, puts the tasks on the threads libtorch just used, already awake.
//! The symbols are looked up at run time; without libgomp the tasks run on the calling
//! thread.

use std::ffi::{c_void, CStr};
use std::sync::OnceLock;

type Parallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, u32, u32);
type ThreadQuery = unsafe extern "C" fn() -> i32;

/// libgomp's entry points, as loaded by libtorch.
struct Gomp {
    parallel: Parallel,
    thread_num: ThreadQuery,
    num_threads: ThreadQuery,
}

fn gomp() -> Option<&'static Gomp> {
    static GOMP: OnceLock<Option<Gomp>> = OnceLock::new();
    GOMP.get_or_init(|| {
        // SAFETY: dlsym on the default scope only reads the loaded libraries' symbol tables;
        // the signatures are libgomp's (GOMP_4.0 ABI, OpenMP 1.0 API).
        unsafe {
            let find = |name: &CStr| {
                let p = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
                (!p.is_null()).then_some(p)
            };
            let parallel = find(c"GOMP_parallel")?;
            let thread_num = find(c"omp_get_thread_num")?;
            let num_threads = find(c"omp_get_num_threads")?;
            Some(Gomp {
                parallel: std::mem::transmute::<*mut c_void, Parallel>(parallel),
                thread_num: std::mem::transmute::<*mut c_void, ThreadQuery>(thread_num),
                num_threads: std::mem::transmute::<*mut c_void, ThreadQuery>(num_threads),
            })
        }
    })
    .as_ref()
}

/// What each thread of the parallel region reads.
struct Job<'a> {
    gomp: &'static Gomp,
    tasks: usize,
    run: &'a (dyn Fn(usize) + Sync),
}

extern "C" fn worker(data: *mut c_void) {
    // SAFETY: `data` is the `Job` that `for_each_task` keeps alive until `GOMP_parallel`
    // returns, which is after every thread of the region has left this function.
    let job = unsafe { &*(data as *const Job<'_>) };
    // SAFETY: libgomp's thread queries, called inside its parallel region.
    let (me, team) = unsafe { ((job.gomp.thread_num)(), (job.gomp.num_threads)()) };
    let (me, team) = (me.max(0) as usize, team.max(1) as usize);
    // Task i goes to thread i mod team: a fixed split, equal for equal tasks.
    for t in (me..job.tasks).step_by(team) {
        (job.run)(t);
    }
}

/// Calls `run(t)` for every `t < tasks`, spread over libtorch's intra-op threads
/// (`tch::get_num_threads`). Returns when all have run. `run` must not panic (it would
/// abort the process, unwinding cannot cross libgomp).
pub(crate) fn for_each_task(tasks: usize, run: &(dyn Fn(usize) + Sync)) {
    let threads = tch::get_num_threads().max(1) as usize;
    let gomp = match gomp() {
        Some(g) if threads > 1 && tasks > 1 => g,
        _ => return (0..tasks).for_each(run),
    };
    let job = Job { gomp, tasks, run };
    let team = threads.min(tasks) as u32;
    // SAFETY: `worker` only reads `job`, which outlives the region (GOMP_parallel returns
    // after the whole team has finished).
    unsafe { (gomp.parallel)(worker, &job as *const Job<'_> as *mut c_void, team, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_task_runs_once() {
        for tasks in [0, 1, 2, 7, 100] {
            let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for_each_task(tasks, &|t| {
                counts[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "{tasks}"
            );
        }
    }
}
