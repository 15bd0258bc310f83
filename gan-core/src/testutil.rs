//! Test helpers: a tiny deterministic generator and a central finite-difference checker.

/// Linear congruential generator for test data (no dependency on the noise module).
use std::vec;
use std::vec::Vec;

pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407))
    }
    /// Uniform in `[-1, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec<const N: usize>(&mut self) -> [f32; N] {
        core::array::from_fn(|_| self.next_f32())
    }
    /// `len` values from [`Lcg::fill`].
    pub fn filled(&mut self, len: usize) -> Vec<f32> {
        let mut v = vec![0.0; len];
        self.fill(&mut v);
        v
    }
    pub fn fill(&mut self, v: &mut [f32]) {
        for x in v {
            *x = self.next_f32();
        }
    }
}

/// Checks `analytic` against central differences of `f` around `x`.
///
/// Each coordinate is perturbed by `h·max(1, |x_i|)`; the check passes when
/// `|analytic - numeric| <= atol + rtol·|numeric|` with `rtol = atol·10`. `f` evaluates the loss
/// in f64 from an f32 forward pass, so `h` around 1e-2 balances truncation and rounding error.
pub fn grad_check(
    x: &[f32], analytic: &[f32], mut f: impl FnMut(&[f32]) -> f64, h: f32, atol: f64,
) {
    assert_eq!(x.len(), analytic.len());
    let mut xp = std::vec::Vec::from(x);
    for i in 0..x.len() {
        let step = h * x[i].abs().max(1.0);
        xp[i] = x[i] + step;
        let up = f(&xp);
        xp[i] = x[i] - step;
        let down = f(&xp);
        xp[i] = x[i];
        let actual_step = ((x[i] + step) as f64) - ((x[i] - step) as f64);
        let numeric = (up - down) / actual_step;
        let a = analytic[i] as f64;
        let tol = atol + 10.0 * atol * numeric.abs();
        assert!(
            (a - numeric).abs() <= tol,
            "gradient {i}: analytic {a} vs numeric {numeric} (tol {tol})"
        );
    }
}

/// `|a − b| ≤ tol`, comparing an f32 result with an f64 reference.
pub fn close(a: f32, b: f64, tol: f64) -> bool {
    (a as f64 - b).abs() <= tol
}

/// Runs tasks on `self.0` scoped threads that pull task indices from a shared counter.
pub struct Threads(pub usize);

impl crate::kernels::Exec for Threads {
    fn threads(&self) -> usize {
        self.0
    }
    fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        use core::sync::atomic::{AtomicUsize, Ordering};
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..self.0 {
                s.spawn(|| {
                    loop {
                        let t = next.fetch_add(1, Ordering::Relaxed);
                        if t >= tasks {
                            break;
                        }
                        f(t);
                    }
                });
            }
        });
    }
}

/// An executor that breaks the contract: every task runs twice (in reverse order first), on
/// the calling thread, while it claims three threads.
pub struct Twice;

impl crate::kernels::Exec for Twice {
    fn threads(&self) -> usize {
        3
    }
    fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        for t in (0..tasks).rev().chain(0..tasks) {
            f(t);
        }
    }
}
