//! Matrix kernels behind the dense layer.
//!
//! Two families, with different promises:
//! - **Training kernels** ([`matmul`], [`matmul_tn`], [`matmul_nt`]) are as fast as the target
//!   allows. They may use FMA and reassociate sums, so their last bits can differ between CPUs;
//!   they are deterministic for the same binary, CPU and [`Exec`] (work is split across threads
//!   by output columns, never along the summation axis, so the thread count never changes bits).
//! - The **exact kernel** ([`matmul_exact`]) fixes the arithmetic completely: every output is
//!   `((0 + a0·b0) + a1·b1) + …` in index order, each product and sum rounded to f32 (no FMA),
//!   then the bias is added. It is the inference path on the host (`gan-train sample`) and on the
//!   firmware, so both produce the same bits. Blocking over outputs is allowed (it does not change
//!   any single output's order); splitting the summation is not.
//!
//! [`reference`] holds plain triple loops that define what each kernel computes; tests compare
//! the fast kernels against them.
//!
//! All matrices are row-major and contiguous. Shapes are given as `m × k` times `k × n`.

/// Runs independent tasks, possibly in parallel. The trainer supplies a thread pool; the firmware
/// and tests use [`Serial`].
pub trait Exec: Sync {
    /// How many tasks are worth creating (usually the number of worker threads).
    fn threads(&self) -> usize;
    /// Calls `f(t)` once for every `t` in `0..tasks`, in any order and on any thread, and returns
    /// when all calls have returned.
    fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync));
}

/// Runs every task on the calling thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct Serial;

impl Exec for Serial {
    fn threads(&self) -> usize {
        1
    }
    fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        for t in 0..tasks {
            f(t);
        }
    }
}

/// `C (m×n) = A (m×k) · B (k×n)`, or `C += A·B` when `accumulate`.
///
/// Panics if a slice is shorter than its shape needs (callers check lengths once at the top).
pub fn matmul(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    _exec: &dyn Exec,
) {
    reference::matmul(c, a, b, m, k, n, accumulate);
}

/// `C (m×n) = Aᵀ · B` with `A` stored `k×m` and `B` stored `k×n` (`+=` when `accumulate`).
pub fn matmul_tn(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    _exec: &dyn Exec,
) {
    reference::matmul_tn(c, a, b, m, k, n, accumulate);
}

/// `C (m×n) = A · Bᵀ` with `A` stored `m×k` and `B` stored `n×k` (`+=` when `accumulate`).
pub fn matmul_nt(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    _exec: &dyn Exec,
) {
    reference::matmul_nt(c, a, b, m, k, n, accumulate);
}

/// Exact kernel: `C[i][j] = (Σ_p A[i][p]·B[p][j] in order p = 0, 1, …) + bias[j]`.
///
/// No FMA, no reassociation: the same bits on every target. `bias` has length `n`.
pub fn matmul_exact(c: &mut [f32], a: &[f32], b: &[f32], bias: &[f32], m: usize, k: usize, n: usize) {
    reference::matmul_exact(c, a, b, bias, m, k, n);
}

/// Plain loops that define each kernel. Slow; used by tests and as the semantic reference.
pub mod reference {
    /// `C = A·B` (`+=` when `accumulate`), A `m×k`, B `k×n`.
    pub fn matmul(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, accumulate: bool) {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f32;
                for p in 0..k {
                    s += a[i * k + p] * b[p * n + j];
                }
                let dst = &mut c[i * n + j];
                *dst = if accumulate { *dst + s } else { s };
            }
        }
    }

    /// `C = Aᵀ·B` (`+=` when `accumulate`), A stored `k×m`, B `k×n`.
    pub fn matmul_tn(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, accumulate: bool) {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f32;
                for p in 0..k {
                    s += a[p * m + i] * b[p * n + j];
                }
                let dst = &mut c[i * n + j];
                *dst = if accumulate { *dst + s } else { s };
            }
        }
    }

    /// `C = A·Bᵀ` (`+=` when `accumulate`), A `m×k`, B stored `n×k`.
    pub fn matmul_nt(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, accumulate: bool) {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f32;
                for p in 0..k {
                    s += a[i * k + p] * b[j * k + p];
                }
                let dst = &mut c[i * n + j];
                *dst = if accumulate { *dst + s } else { s };
            }
        }
    }

    /// The exact kernel's definition: sequential sum from 0.0, then `+ bias[j]`.
    pub fn matmul_exact(c: &mut [f32], a: &[f32], b: &[f32], bias: &[f32], m: usize, k: usize, n: usize) {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f32;
                for p in 0..k {
                    s += a[i * k + p] * b[p * n + j];
                }
                c[i * n + j] = s + bias[j];
            }
        }
    }
}
