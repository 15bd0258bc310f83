//! A team of helper threads that wait for work by spinning: the executor of every command that
//! runs gan-core's kernels (training, scoring, sampling, the benchmarks).
//!
//! Generating one digit runs four small matrix products back to back, each worth a few tens of
//! microseconds, and a training step of a small network hundreds of such jobs. Handing such a product to a pool whose workers have gone to sleep costs about as
//! much as the product itself (waking a thread takes tens of microseconds), so rayon's pool makes
//! batch-1 inference slower, not faster. The helpers here keep polling for a new job for
//! [`SPIN`] after their last one (what OpenMP runtimes do by default) and only then park; the
//! calling thread takes part in every job, so a job never waits for a wake-up when the team is
//! warm.
//!
//! One job runs at a time. A call made while another thread's job is running, or from inside a
//! task, runs its tasks on the calling thread instead, so the team cannot deadlock.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use gan_core::kernels::Exec;

/// How long a helper keeps polling for the next job before it parks.
pub const SPIN: Duration = Duration::from_millis(2);

/// Most threads a team uses (the size of a job's cursor array).
pub const MAX_THREADS: usize = 64;

/// One published job. Lives on the stack of [`Team::for_each`]'s caller, which does not return
/// before every helper has stopped looking at it.
///
/// The tasks are cut into one contiguous segment per thread: thread `t` first runs the tasks of
/// segment `t` in order, then claims what is left of the others'. Kernels split their output
/// columns into tasks in order, so each thread streams its own contiguous block of the weights
/// (interleaving blocks between cores made the hardware prefetchers fetch each other's lines and
/// cost a third of the speed-up), while a thread that starts late still gets its work taken over.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    /// Threads taking part (segments).
    threads: usize,
    /// Next unclaimed task of each segment.
    cursors: [AtomicUsize; MAX_THREADS],
    /// Tasks finished (including ones that panicked).
    done: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    /// First task of segment `s`.
    fn seg_start(&self, s: usize) -> usize {
        s * self.tasks / self.threads
    }

    /// Thread `me` runs its own segment, then whatever is left of the others.
    fn work(&self, me: usize) {
        for s in (me..self.threads).chain(0..me) {
            let end = self.seg_start(s + 1);
            loop {
                let t = self.cursors[s].fetch_add(1, Ordering::Relaxed);
                if t >= end {
                    break;
                }
                if panic::catch_unwind(AssertUnwindSafe(|| (self.f)(t))).is_err() {
                    self.panicked.store(true, Ordering::Relaxed);
                }
                self.done.fetch_add(1, Ordering::Release);
            }
        }
    }
}

/// State shared by the caller and the helpers.
///
/// Protocol (all accesses to `job`, `active`, `epoch` and `sleepers` are `SeqCst`, so the two
/// "store then load" handshakes below cannot both miss each other):
/// - publishing: the caller stores the job pointer, bumps `epoch`, and unparks the helpers if
///   `sleepers` is non-zero; a helper about to park increments `sleepers` and re-reads `epoch`
///   before parking, so either it sees the new epoch or the caller sees it asleep;
/// - retiring: a helper increments `active` before it reads `job` and decrements it when it is
///   done with the job; the caller clears `job` and then waits for `active` to reach zero, so
///   no helper can hold the pointer once the caller returns.
struct Shared {
    job: AtomicPtr<Job<'static>>,
    epoch: AtomicU64,
    active: AtomicUsize,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
}

/// Spinning helper threads plus the calling thread; implements [`Exec`].
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// Held while a job is running; a second concurrent caller runs serially.
    busy: Mutex<()>,
}

impl Team {
    /// A team of `threads` threads in all: the caller and `threads - 1` helpers (none for 0 or
    /// 1; at most [`MAX_THREADS`] in all).
    pub fn new(threads: usize) -> std::io::Result<Team> {
        let shared = Arc::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        let mut helpers = Vec::new();
        for i in 1..threads.clamp(1, MAX_THREADS) {
            let s = Arc::clone(&shared);
            let handle =
                thread::Builder::new().name(format!("gan-team-{i}")).spawn(move || helper(&s, i));
            match handle {
                Ok(h) => helpers.push(h),
                Err(e) => {
                    // Stop the helpers already started before reporting the error.
                    drop(Team { shared, helpers, busy: Mutex::new(()) });
                    return Err(e);
                }
            }
        }
        Ok(Team { shared, helpers, busy: Mutex::new(()) })
    }

    /// A team with one thread per task of rayon's pool (which follows `--threads`).
    pub fn with_rayon_threads() -> std::io::Result<Team> {
        Team::new(rayon::current_num_threads())
    }
}

/// Helper thread `me` (1 and up; the caller is 0).
fn helper(s: &Shared, me: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for an epoch we have not worked on.
        let mut since = Instant::now();
        let mut polls = 0u32;
        loop {
            if s.shutdown.load(Ordering::SeqCst) {
                return;
            }
            let e = s.epoch.load(Ordering::SeqCst);
            if e != seen {
                seen = e;
                break;
            }
            polls = polls.wrapping_add(1);
            if !polls.is_multiple_of(64) || since.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            if s.epoch.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst) {
                thread::park();
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            since = Instant::now();
        }
        s.active.fetch_add(1, Ordering::SeqCst);
        let p = s.job.load(Ordering::SeqCst);
        if !p.is_null() {
            // SAFETY: `active` was raised before the pointer was read, and the publisher does not
            // return (so the job stays alive) until it has cleared `job` and seen `active` at
            // zero; see `Shared`.
            unsafe { (*p).work(me) };
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Exec for Team {
    fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let guard = match self.busy.try_lock() {
            Ok(g) if tasks > 1 && !self.helpers.is_empty() => g,
            // No helpers, one task, a nested call or another thread's job: run here.
            _ => return (0..tasks).for_each(f),
        };
        let threads = self.threads();
        let job = Job {
            f,
            tasks,
            threads,
            cursors: std::array::from_fn(|s| AtomicUsize::new(s * tasks / threads)),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        let s = &*self.shared;
        // The helpers only see the job between this store and the wait for `active` below.
        let ptr = (&job as *const Job<'_>).cast::<Job<'static>>().cast_mut();
        s.job.store(ptr, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            for h in &self.helpers {
                h.thread().unpark();
            }
        }
        job.work(0);
        wait_until(|| job.done.load(Ordering::Acquire) >= tasks);
        s.job.store(std::ptr::null_mut(), Ordering::SeqCst);
        wait_until(|| s.active.load(Ordering::SeqCst) == 0);
        drop(guard);
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a task run by the thread team panicked");
        }
    }
}

/// Spins until `cond` holds, yielding the CPU after a while (a helper may be descheduled).
fn wait_until(cond: impl Fn() -> bool) {
    let mut polls = 0u32;
    while !cond() {
        polls = polls.saturating_add(1);
        if polls < 1 << 12 {
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for h in &self.helpers {
            h.thread().unpark();
        }
        for h in self.helpers.drain(..) {
            // A helper never panics (tasks are caught), so the join result carries nothing.
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_exactly_once() {
        for threads in [0, 1, 2, 3, 8] {
            let team = Team::new(threads).unwrap();
            assert_eq!(team.threads(), threads.max(1));
            for tasks in [0, 1, 2, 5, 64] {
                let hits: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
                team.for_each(tasks, &|t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn many_jobs_back_to_back_and_after_parking() {
        let team = Team::new(3).unwrap();
        let total = AtomicUsize::new(0);
        for round in 0..2 {
            for _ in 0..20_000 {
                team.for_each(3, &|t| {
                    total.fetch_add(t + 1, Ordering::Relaxed);
                });
            }
            if round == 0 {
                // Let the helpers park, then make sure they wake up.
                thread::sleep(SPIN * 3);
            }
        }
        assert_eq!(total.load(Ordering::Relaxed), 2 * 20_000 * 6);
    }

    #[test]
    fn nested_and_concurrent_calls_run_serially_without_deadlock() {
        let team = Team::new(2).unwrap();
        let count = AtomicUsize::new(0);
        thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..2_000 {
                        team.for_each(2, &|_| {
                            team.for_each(2, &|_| {
                                count.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(count.load(Ordering::Relaxed), 3 * 2_000 * 4);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_team_survives() {
        let team = Team::new(2).unwrap();
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            team.for_each(4, &|t| {
                if t == 3 {
                    panic!("task 3 fails");
                }
            });
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        team.for_each(4, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn inference_on_the_team_gives_the_serial_bits() {
        use gan_core::kernels::{self, Serial};
        let (m, k, n) = (1, 700, 300);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 89.0).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 / 7.0).collect();
        let mut want = vec![0.0; m * n];
        kernels::matmul_exact_with(&mut want, &a, &b, &bias, m, k, n, &Serial);
        let team = Team::new(3).unwrap();
        for _ in 0..100 {
            let mut got = vec![f32::NAN; m * n];
            kernels::matmul_exact_with(&mut got, &a, &b, &bias, m, k, n, &team);
            assert!(got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
}
