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
//! [`mod@reference`] holds plain triple loops that define what each kernel computes; tests compare
//! the fast kernels against them.
//!
//! Where things are: this file holds the [`Exec`] trait, the public entry points and the choice
//! of instruction set; `split` the one way any work is divided over an [`Exec`] (also used by
//! [`par`] and the optimizers); `gemm` the blocked training driver and the portable
//! micro-kernel; `exact` the exact driver and its portable tiles; `x86` feature detection and
//! the AVX2/AVX-512 kernels, each written once over the vector width; `arm` the Cortex-M4F
//! inner loop; [`int8`] the int8 product; [`vtanh`] the vectorised `tanhf`.
//!
//! All matrices are row-major and contiguous. Shapes are given as `m × k` times `k × n`.
//!
//! # How the training kernels are built
//! All three products go through one blocked driver that sees `A` and `B` through strides, so a
//! transposed operand only changes how the packing loops read it:
//! - the summation axis is cut into blocks of `KC`. For every block, a block of rows of `A` is
//!   packed into a stack buffer as `MR`-row micro-panels; then, for every panel of `NR` output
//!   columns, the `KC × NR` slice of `B` is packed (zero-padded at the right edge) and a
//!   register-blocked micro-kernel computes the `MR × NR` tiles of `C` for those rows;
//! - each output's sum is `acc = 0; acc += A(i,p)·B(p,j)` over one `KC` block, added into `C`
//!   block after block. That order depends only on `k` and the micro-kernel in use, never on the
//!   tile an output falls into or on the thread that computes it;
//! - on x86-64 the micro-kernel is chosen at run time (CPUID and XGETBV, no `std`): with
//!   AVX-512F (and the OS saving `zmm` and mask registers) an 8×32 FMA kernel (16 accumulators in
//!   `zmm` registers, masked stores at the right edge; 96 KiB of stack buffers), otherwise with
//!   AVX2+FMA a 6×16 kernel (12 accumulators in `ymm` registers; 112 KiB). Elsewhere a 4×8
//!   micro-kernel written with fixed-size arrays that LLVM vectorises; its buffers take 20 KiB
//!   on 64-bit targets and 2 KiB on 32-bit ones (microcontroller stacks are small).
//!
//! Threads: a product of at least 2 Mflop is split into one task per [`Exec::threads`] over
//! blocks of whole column panels. Each task claims its block with an atomic flag before writing,
//! so an `Exec` that runs a task twice cannot make two threads write the same columns, and one
//! that skips a task is caught by a panic. Targets without atomic read-modify-write (ARMv6-M)
//! always run one task.
//!
//! # How the exact kernel is built
//! Tiles of outputs, each with its own accumulator, sum over `p` in order:
//! - x86-64 with AVX: 8-wide vectors with separate multiply and add instructions (bit-identical
//!   to the scalar operations): 4×16 tiles over packed blocks of `B` (16 KiB on the stack),
//!   or, below 4 rows (batch-1 inference), one row at a time with the output row as the
//!   accumulators while `B` streams past. With AVX-512F the same two schemes run on 16-wide
//!   vectors (8×32 tiles; eight rows of `B` per pass when streaming), masked loads and stores
//!   covering the columns at the right edge;
//! - ARM with a hardware FPU (Cortex-M4F and up): 8 columns of one row at a time, the inner loop
//!   in a few lines of assembly so that rows of `B` load with `VLDM` and accumulate with the
//!   unfused `VMLA.F32`: 47 instructions per 32 multiply-accumulates;
//! - elsewhere (Cortex-M0+, which has no FPU, and other targets): the same tiling in plain Rust.
//!
//! Threads ([`matmul_exact_with`]): a product of at least 65,536 multiply-adds is cut into blocks
//! of 32 output columns, four tasks per thread. A column block only changes which thread
//! computes an output, never the order of its sum, so the result is bit-identical to the
//! one-thread kernel. At batch 1 every weight is read once per sample and the kernel is bound by
//! how fast the caches deliver `B`; two cores each streaming half of `B` get close to twice
//! the bandwidth of one.

#[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
mod arm;
pub(crate) mod channels;
mod exact;
mod gemm;
pub mod int8;
pub mod par;
pub mod q8;
pub mod reference;
pub(crate) mod split;
pub mod vtanh;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{
    col2im_add_avx2, col2im_add_avx512, im2col_avx2, im2col_avx512, transpose8, transpose16,
};

use exact::exact;
use gemm::{Gemm, gemm};
pub use split::MAX_TASKS;

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

/// One training product as [`set_trace`] reports it: which entry point, the shape, whether it
/// accumulated, and how many products it summed ([`matmul_nt_sum`]; 1 otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traced {
    /// 0: [`matmul`], 1: [`matmul_tn`], 2: [`matmul_nt`] (and [`matmul_nt_sum`]).
    pub kind: u8,
    /// Rows of `C`.
    pub m: usize,
    /// The summation length.
    pub k: usize,
    /// Columns of `C`.
    pub n: usize,
    /// `C +=` rather than `C =`.
    pub accumulate: bool,
    /// Products summed into `C`.
    pub count: usize,
    /// Run on one thread (`exec.threads() == 1`): a product of one sample inside a layer's own
    /// split over the samples.
    pub serial: bool,
}

#[cfg(target_has_atomic = "ptr")]
static TRACE: core::sync::atomic::AtomicPtr<()> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// Calls `f` with every training product from now on (from any thread), or stops with `None`:
/// how `gan-train bench` finds the products a training step runs, to time them alone.
#[cfg(target_has_atomic = "ptr")]
pub fn set_trace(f: Option<fn(Traced)>) {
    let p = f.map_or(core::ptr::null_mut(), |f| f as *mut ());
    TRACE.store(p, core::sync::atomic::Ordering::SeqCst);
}

/// Reports a product to the trace, if one is set.
#[inline]
fn trace(t: Traced) {
    #[cfg(target_has_atomic = "ptr")]
    {
        let p = TRACE.load(core::sync::atomic::Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: only `set_trace` stores a non-null pointer, and it stores a `fn(Traced)`.
            let f: fn(Traced) = unsafe { core::mem::transmute::<*mut (), fn(Traced)>(p) };
            f(t);
        }
    }
    #[cfg(not(target_has_atomic = "ptr"))]
    let _ = t;
}

/// The three training products, one blocked driver ([`gemm`]) seeing the operands through
/// (row, column) strides: `A(i, p) = a[i·ars + p·acs]`, `B(p, j) = b[p·brs + j·bcs]`.
macro_rules! training_products {
    ($($(#[$doc:meta])* $name:ident = $kind:literal: a $a:expr, b $b:expr;)*) => {$(
        $(#[$doc])*
        ///
        /// Panics if a slice is shorter than its shape needs (callers check lengths once at the
        /// top).
        #[allow(clippy::too_many_arguments)]
        pub fn $name(
            c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, accumulate: bool,
            exec: &dyn Exec,
        ) {
            let strides: [fn(usize, usize, usize) -> (usize, usize); 2] = [$a, $b];
            let (sa, sb) = (strides[0](m, k, n), strides[1](m, k, n));
            let g = Gemm::new(a, sa, b, sb, (m, k, n), accumulate);
            trace(Traced { kind: $kind, m, k, n, accumulate, count: 1, serial: exec.threads() <= 1 });
            gemm(train_isa(), &g, c, exec);
        }
    )*};
}

training_products! {
    /// `C (m×n) = A (m×k) · B (k×n)`, or `C += A·B` when `accumulate`.
    matmul = 0: a |_, k, _| (k, 1), b |_, _, n| (n, 1);
    /// `C (m×n) = Aᵀ · B` with `A` stored `k×m` and `B` stored `k×n` (`+=` when `accumulate`).
    matmul_tn = 1: a |m, _, _| (1, m), b |_, _, n| (n, 1);
    /// `C (m×n) = A · Bᵀ` with `A` stored `m×k` and `B` stored `n×k` (`+=` when `accumulate`).
    matmul_nt = 2: a |_, k, _| (k, 1), b |_, k, _| (1, k);
}

/// `C (m×n) += Σ_s A_s · B_sᵀ` for `s < count`, with `A_s` (`m×k`) at `a[s·a_step..]` and
/// `B_s` (`n×k`) at `b[s·b_step..]`, added in order `s = 0, 1, …`: the bits of `count` calls of
/// [`matmul_nt`] with `accumulate`, but as one job for `exec` (the weight gradient of a
/// convolution, one small product per sample).
///
/// Panics if a slice is shorter than its shapes need.
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt_sum(
    c: &mut [f32], a: &[f32], a_step: usize, b: &[f32], b_step: usize, count: usize, m: usize,
    k: usize, n: usize, exec: &dyn Exec,
) {
    if count == 0 {
        return;
    }
    assert!(
        b.len() >= len_of(count - 1, b_step) + len_of(n, k),
        "B is shorter than count products"
    );
    matmul_nt_sum_in(c, a, a_step, b, &|s| (s * b_step, k), count, m, k, n, exec);
}

/// [`matmul_nt_sum`] with each `B_s` inside a wider matrix: `b_at(s) = (offset, ld)` puts
/// `B_s(j, p)` at `b[offset + j·ld + p]` (`ld ≥ k`): the column matrices of a group of samples
/// side by side (see [`crate::layers::conv2d`]).
///
/// Panics if a slice is shorter than its shapes need.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_nt_sum_in(
    c: &mut [f32], a: &[f32], a_step: usize, b: &[f32],
    b_at: &(dyn Fn(usize) -> (usize, usize) + Sync), count: usize, m: usize, k: usize, n: usize,
    exec: &dyn Exec,
) {
    if count == 0 {
        return;
    }
    let la = len_of(m, k);
    assert!(a.len() >= len_of(count - 1, a_step) + la, "A is shorter than count products");
    let gs = |s: usize| {
        let (at, ld) = b_at(s);
        Gemm::new(&a[s * a_step..][..la], (k, 1), &b[at..], (1, ld), (m, k, n), true)
    };
    trace(Traced { kind: 2, m, k, n, accumulate: true, count, serial: exec.threads() <= 1 });
    gemm::gemm_sum(train_isa(), count, &gs, c, exec);
}

/// Exact kernel: `C[i][j] = (Σ_p A[i][p]·B[p][j] in order p = 0, 1, …) + bias[j]`.
///
/// No FMA, no reassociation: the same bits on every target. `bias` has length `n`.
pub fn matmul_exact(
    c: &mut [f32], a: &[f32], b: &[f32], bias: &[f32], m: usize, k: usize, n: usize,
) {
    exact(exact_isa(), c, a, b, bias, m, k, n, &Serial);
}

/// [`matmul_exact`] with the output columns spread over the tasks of `exec` (for products of
/// at least 65,536 multiply-adds). Each output is still summed by one task in index order, so
/// the bits are those of [`matmul_exact`] whatever `exec` is.
#[allow(clippy::too_many_arguments)]
pub fn matmul_exact_with(
    c: &mut [f32], a: &[f32], b: &[f32], bias: &[f32], m: usize, k: usize, n: usize,
    exec: &dyn Exec,
) {
    exact(exact_isa(), c, a, b, bias, m, k, n, exec);
}

/// Which training micro-kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// [`PortableKernel`]: plain Rust, vectorised by the compiler for the build target.
    Portable,
    /// [`x86::Avx2Kernel`]: AVX2 + FMA intrinsics.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// [`x86::Avx512Kernel`]: AVX-512F intrinsics (FMA on `zmm` registers).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// Which exact kernel runs. Every variant produces the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExactIsa {
    /// [`exact_portable`].
    Portable,
    /// [`x86::exact_avx`]: 8-wide AVX multiply then add (no FMA).
    #[cfg(target_arch = "x86_64")]
    Avx,
    /// [`x86::exact_avx512`]: 16-wide AVX-512F multiply then add (no FMA).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// An instruction-set level of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum VectorIsa {
    /// Plain Rust, vectorised by the compiler for the build target.
    Portable,
    /// x86-64 AVX2 + FMA (256-bit vectors).
    Avx2,
    /// x86-64 AVX-512F (512-bit vectors).
    Avx512,
}

/// The level the kernels run at on this CPU: the widest it supports, within the limit set by
/// [`limit_vector_isa`].
pub fn vector_isa() -> VectorIsa {
    match train_isa() {
        Isa::Portable => VectorIsa::Portable,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => VectorIsa::Avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => VectorIsa::Avx512,
    }
}

/// Keeps every kernel at or below `max` from now on, even on CPUs that support more: to measure
/// the AVX2 kernels on an AVX-512 machine, say. Exact kernels give the same bits at every level;
/// training kernels may differ in the last bits between the portable level and the others.
/// Does nothing on targets other than x86-64, and cannot lift what the build target enables at
/// compile time.
pub fn limit_vector_isa(max: VectorIsa) {
    #[cfg(target_arch = "x86_64")]
    x86::allow(match max {
        VectorIsa::Portable => 0,
        VectorIsa::Avx2 => 1,
        VectorIsa::Avx512 => 2,
    });
    #[cfg(not(target_arch = "x86_64"))]
    let _ = max;
}

/// Whether this x86-64 CPU (and OS) supports AVX-512F (cached CPUID check).
#[cfg(target_arch = "x86_64")]
pub(crate) fn cpu_has_avx512() -> bool {
    x86::has_avx512()
}

/// Whether this x86-64 CPU supports AVX2 and FMA (cached CPUID check).
#[cfg(target_arch = "x86_64")]
pub(crate) fn cpu_has_avx2_fma() -> bool {
    x86::has_avx2_fma()
}

/// The kernels for this CPU: the widest training kernel it has (AVX-512F, AVX2+FMA, portable)
/// and the widest exact kernel (AVX-512F, AVX, which needs no FMA, portable).
fn isas() -> (Isa, ExactIsa) {
    #[cfg(target_arch = "x86_64")]
    match (x86::has_avx512(), x86::has_avx2_fma(), x86::has_avx()) {
        (true, _, _) => return (Isa::Avx512, ExactIsa::Avx512),
        (false, true, _) => return (Isa::Avx2Fma, ExactIsa::Avx),
        (false, false, true) => return (Isa::Portable, ExactIsa::Avx),
        (false, false, false) => {}
    }
    (Isa::Portable, ExactIsa::Portable)
}

/// The training kernel for this CPU.
pub(crate) fn train_isa() -> Isa {
    isas().0
}

/// The exact kernel for this CPU.
pub(crate) fn exact_isa() -> ExactIsa {
    isas().1
}

/// `x · y`, panicking on overflow (a wrapped length would defeat the bounds checks below).
pub(crate) fn len_of(x: usize, y: usize) -> usize {
    x.checked_mul(y).expect("matrix size overflows usize")
}

#[cfg(test)]
mod tests {
    use super::exact::PAR_MIN_EXACT_MACS;
    use super::gemm::gemm_tasks;
    use super::*;
    use crate::testutil::{Lcg, Threads, Twice};
    use std::vec;
    use std::vec::Vec;

    /// Every instruction set this machine can run.
    fn train_isas() -> Vec<Isa> {
        #[cfg(target_arch = "x86_64")]
        let more = [(Isa::Avx2Fma, x86::has_avx2_fma()), (Isa::Avx512, x86::has_avx512())];
        #[cfg(not(target_arch = "x86_64"))]
        let more = [];
        [Isa::Portable]
            .into_iter()
            .chain(more.into_iter().filter_map(|(i, ok)| ok.then_some(i)))
            .collect()
    }

    /// Every exact kernel this machine can run.
    fn exact_isas() -> Vec<ExactIsa> {
        #[cfg(target_arch = "x86_64")]
        let more = [(ExactIsa::Avx, x86::has_avx()), (ExactIsa::Avx512, x86::has_avx512())];
        #[cfg(not(target_arch = "x86_64"))]
        let more = [];
        let more = more.into_iter().filter_map(|(i, ok)| ok.then_some(i));
        [ExactIsa::Portable].into_iter().chain(more).collect()
    }

    /// (m, k, n): degenerate, odd, tile-edge and the MNIST GAN shapes (cut to keep tests fast).
    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 7, 1),
        (2, 1, 3),
        (3, 5, 7),
        (4, 8, 8),
        (5, 3, 17),
        (6, 16, 16),
        (7, 9, 33),
        (12, 31, 32),
        (13, 300, 15),
        (17, 33, 65),
        (1, 100, 256),
        (64, 100, 256),
        (64, 257, 40),
        (64, 257, 1),
        (300, 64, 1),
        (100, 64, 24),
        (7, 513, 19),
        (130, 300, 20),
        (0, 3, 4),
        (3, 0, 4),
        (3, 4, 0),
    ];

    #[derive(Clone, Copy, Debug)]
    enum Kind {
        Nn,
        Tn,
        Nt,
    }

    fn reference(
        kind: Kind, c: &mut [f32], a: &[f32], b: &[f32], s: (usize, usize, usize), acc: bool,
    ) {
        let (m, k, n) = s;
        match kind {
            Kind::Nn => reference::matmul(c, a, b, m, k, n, acc),
            Kind::Tn => reference::matmul_tn(c, a, b, m, k, n, acc),
            Kind::Nt => reference::matmul_nt(c, a, b, m, k, n, acc),
        }
    }

    fn gemm_of<'s>(
        kind: Kind, a: &'s [f32], b: &'s [f32], s: (usize, usize, usize), acc: bool,
    ) -> Gemm<'s> {
        let (m, k, n) = s;
        match kind {
            Kind::Nn => Gemm::new(a, (k, 1), b, (n, 1), s, acc),
            Kind::Tn => Gemm::new(a, (1, m), b, (n, 1), s, acc),
            Kind::Nt => Gemm::new(a, (k, 1), b, (1, k), s, acc),
        }
    }

    /// Calls `f(kind, shape, product, c0)` for every kind of product and every shape of
    /// [`SHAPES`], with random operands and a random starting `C` (accumulating products).
    fn each_product(seed: u64, mut f: impl FnMut(Kind, (usize, usize, usize), &Gemm<'_>, &[f32])) {
        for kind in [Kind::Nn, Kind::Tn, Kind::Nt] {
            for &s in SHAPES {
                let (m, k, n) = s;
                let a = random(m * k, seed);
                let b = random(k * n, seed + 1);
                let c0 = random(m * n, seed + 2);
                f(kind, s, &gemm_of(kind, &a, &b, s, true), &c0);
            }
        }
    }

    /// `Σ_p |A(i,p)·B(p,j)|` for every output, in f64: the scale of the rounding error.
    fn abs_sums(kind: Kind, a: &[f32], b: &[f32], s: (usize, usize, usize)) -> Vec<f64> {
        let (m, _, n) = s;
        let aa: Vec<f32> = a.iter().map(|x| x.abs()).collect();
        let bb: Vec<f32> = b.iter().map(|x| x.abs()).collect();
        let mut out = vec![0.0f32; m * n];
        // Absolute values make every partial sum grow, so the f32 reference is accurate enough
        // for a scale.
        reference(kind, &mut out, &aa, &bb, s, false);
        out.iter().map(|&x| x as f64).collect()
    }

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut v = vec![0.0; len];
        Lcg::new(seed).fill(&mut v);
        v
    }

    /// Tolerance: both the kernel and the reference sum `k` products, each side with error at
    /// most `k·u·Σ|a·b|` (u = 2⁻²⁴), plus one rounding for the accumulate step; we allow
    /// `2.5e-7·(k + 2)·(Σ|a·b| + |c₀|)`.
    #[test]
    fn training_kernels_match_reference() {
        for isa in train_isas() {
            for kind in [Kind::Nn, Kind::Tn, Kind::Nt] {
                for &s in SHAPES {
                    let (m, k, n) = s;
                    for acc in [false, true] {
                        let a = random(m * k, 1 + m as u64);
                        let b = random(k * n, 2 + n as u64);
                        let c0 = random(m * n, 3 + k as u64);
                        let mut want = c0.clone();
                        reference(kind, &mut want, &a, &b, s, acc);
                        let mut got = c0.clone();
                        let g = gemm_of(kind, &a, &b, s, acc);
                        gemm(isa, &g, &mut got, &Serial);
                        let scale = abs_sums(kind, &a, &b, s);
                        for idx in 0..m * n {
                            let base = if acc { c0[idx].abs() as f64 } else { 0.0 };
                            let tol = 2.5e-7 * (k as f64 + 2.0) * (scale[idx] + base);
                            let err = (got[idx] as f64 - want[idx] as f64).abs();
                            assert!(
                                err <= tol,
                                "{isa:?} {kind:?} {s:?} acc={acc} at {idx}: {} vs {} (tol {tol})",
                                got[idx],
                                want[idx]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn public_entry_points_match_reference() {
        let s = (9, 21, 35);
        let (m, k, n) = s;
        let a = random(m * k, 10);
        let b = random(k * n, 11);
        let mut got = vec![0.0; m * n];
        let mut want = vec![0.0; m * n];
        matmul(&mut got, &a, &b, m, k, n, false, &Serial);
        reference::matmul(&mut want, &a, &b, m, k, n, false);
        let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| (p - q).abs() <= 1e-4);
        assert!(close(&got, &want));
        matmul_tn(&mut got, &a, &b, m, k, n, true, &Serial);
        reference::matmul_tn(&mut want, &a, &b, m, k, n, true);
        assert!(close(&got, &want));
        matmul_nt(&mut got, &a, &b, m, k, n, true, &Serial);
        reference::matmul_nt(&mut want, &a, &b, m, k, n, true);
        assert!(close(&got, &want));
    }

    #[test]
    fn threads_do_not_change_bits() {
        let pool = Threads(3);
        for isa in train_isas() {
            each_product(20, |kind, s, g, c0| {
                let mut one = c0.to_vec();
                gemm_tasks(isa, g, &mut one, &Serial, 1);
                for tasks in [2, 3, 5, 64] {
                    let mut many = c0.to_vec();
                    gemm_tasks(isa, g, &mut many, &pool, tasks);
                    let same = one.iter().zip(&many).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{isa:?} {kind:?} {s:?} with {tasks} tasks");
                }
            });
        }
        // The public entry points split large products by themselves.
        let (m, k, n) = (64, 256, 200);
        let a = random(m * k, 30);
        let b = random(k * n, 31);
        let bt = random(n * k, 32);
        let mut serial = vec![0.0; m * n];
        let mut pooled = vec![0.0; m * n];
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        matmul(&mut serial, &a, &b, m, k, n, false, &Serial);
        matmul(&mut pooled, &a, &b, m, k, n, false, &pool);
        assert_eq!(bits(&serial), bits(&pooled));
        matmul_nt(&mut serial, &a, &bt, m, k, n, true, &Serial);
        matmul_nt(&mut pooled, &a, &bt, m, k, n, true, &pool);
        assert_eq!(bits(&serial), bits(&pooled));
        let mut serial = vec![0.0; k * n];
        let mut pooled = vec![0.0; k * n];
        matmul_tn(&mut serial, &a, &b[..m * n], k, m, n, false, &Serial);
        matmul_tn(&mut pooled, &a, &b[..m * n], k, m, n, false, &pool);
        assert_eq!(bits(&serial), bits(&pooled));
    }

    /// The sum of per-sample products is, bit for bit, the per-sample calls in order, on every
    /// instruction set and executor (including one that runs tasks twice).
    #[test]
    fn summed_products_are_the_sequential_calls() {
        let execs: [&dyn Exec; 4] = [&Serial, &Threads(2), &Threads(3), &Twice];
        for isa in train_isas() {
            for &(m, k, n, count) in
                &[(3, 5, 7, 1), (32, 49, 256, 6), (16, 196, 16, 5), (8, 300, 70, 3), (2, 0, 5, 2)]
            {
                let (a_step, b_step) = (m * k + 3, n * k + 1);
                let a = random(a_step * count, 50);
                let b = random(b_step * count, 51);
                let c0 = random(m * n, 52);
                let gs = |s: usize| {
                    let (a, b) = (&a[s * a_step..], &b[s * b_step..]);
                    Gemm::new(a, (k, 1), b, (1, k), (m, k, n), true)
                };
                let mut want = c0.clone();
                for s in 0..count {
                    gemm_tasks(isa, &gs(s), &mut want, &Serial, 1);
                }
                for exec in execs {
                    let mut got = c0.clone();
                    gemm::gemm_sum(isa, count, &gs, &mut got, exec);
                    let same = got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{isa:?} {:?}", (m, k, n, count));
                }
            }
        }
        // And the entry point against the reference.
        let (m, k, n, count) = (4, 9, 20, 3);
        let a = random(m * k * count, 60);
        let b = random(n * k * count, 61);
        let mut got = vec![0.5; m * n];
        let mut want = got.clone();
        matmul_nt_sum(&mut got, &a, m * k, &b, n * k, count, m, k, n, &Threads(2));
        for s in 0..count {
            let (a, b) = (&a[s * m * k..][..m * k], &b[s * n * k..][..n * k]);
            reference::matmul_nt(&mut want, a, b, m, k, n, true);
        }
        assert!(got.iter().zip(&want).all(|(x, y)| (x - y).abs() <= 1e-4));
    }

    /// An `Exec` that calls every task twice (a contract violation) must not corrupt results.
    #[test]
    fn repeated_tasks_are_harmless() {
        struct Twice;
        impl Exec for Twice {
            fn threads(&self) -> usize {
                4
            }
            fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
                for t in (0..tasks).chain(0..tasks) {
                    f(t);
                }
            }
        }
        let (m, k, n) = (10, 12, 70);
        let a = random(m * k, 40);
        let b = random(k * n, 41);
        let mut want = vec![1.0; m * n];
        let mut got = vec![1.0; m * n];
        let g = Gemm::new(&a, (k, 1), &b, (n, 1), (m, k, n), true);
        gemm_tasks(train_isa(), &g, &mut want, &Serial, 1);
        gemm_tasks(train_isa(), &g, &mut got, &Twice, 4);
        assert_eq!(want, got);
    }

    #[test]
    #[should_panic(expected = "skipped a task")]
    fn skipped_tasks_are_detected() {
        struct Lazy;
        impl Exec for Lazy {
            fn threads(&self) -> usize {
                4
            }
            fn for_each(&self, _tasks: usize, f: &(dyn Fn(usize) + Sync)) {
                f(0);
            }
        }
        let (m, k, n) = (4, 4, 64);
        let a = random(m * k, 50);
        let b = random(k * n, 51);
        let mut c = vec![0.0; m * n];
        let g = Gemm::new(&a, (k, 1), &b, (n, 1), (m, k, n), false);
        gemm_tasks(Isa::Portable, &g, &mut c, &Lazy, 4);
    }

    /// A product with one column runs as its transpose (see `gemm`): the bits of the direct
    /// tiling, for every kind of operand layout, kernel and summation-block count.
    #[test]
    fn one_column_products_are_the_direct_tiling() {
        for isa in train_isas() {
            for kind in [Kind::Nn, Kind::Tn, Kind::Nt] {
                for (m, k) in [(2, 1), (7, 5), (64, 256), (300, 64), (33, 700)] {
                    let s = (m, k, 1);
                    let (a, b) = (random(m * k, 8 + m as u64), random(k, 9 + k as u64));
                    for acc in [false, true] {
                        let c0 = random(m, 10);
                        let (mut x, mut y) = (c0.clone(), c0.clone());
                        let g = gemm_of(kind, &a, &b, s, acc);
                        gemm(isa, &g, &mut x, &Serial);
                        gemm::gemm_tasks(isa, &g, &mut y, &Serial, 1);
                        let same = x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits());
                        assert!(same, "{isa:?} {kind:?} {s:?} acc={acc}");
                    }
                }
            }
        }
    }

    /// An `A` stored transposed is read in place, or packed when its stride is a multiple of
    /// 1 KiB and the product is wide (see `drive`); either way each output is the same sum as
    /// for the row-major `A`, bit for bit, on every kernel.
    #[test]
    fn transposed_a_packed_or_in_place_is_the_row_major_product() {
        // (m, k, n): packed (256 and 512 rows, ≥ 4 panels, a short last micro-panel), and in
        // place (narrow, or a stride that is no multiple of 256).
        let shapes = [(256, 40, 160), (512, 300, 140), (256, 33, 40), (250, 40, 160)];
        for isa in train_isas() {
            for &(m, k, n) in &shapes {
                let at = random(k * m, 5 + m as u64);
                let b = random(k * n, 6 + n as u64);
                let mut a = vec![0.0; m * k];
                for p in 0..k {
                    for i in 0..m {
                        a[i * k + p] = at[p * m + i];
                    }
                }
                for acc in [false, true] {
                    let c0 = random(m * n, 7 + k as u64);
                    let (mut x, mut y) = (c0.clone(), c0.clone());
                    gemm(isa, &gemm_of(Kind::Tn, &at, &b, (m, k, n), acc), &mut x, &Serial);
                    gemm(isa, &gemm_of(Kind::Nn, &a, &b, (m, k, n), acc), &mut y, &Serial);
                    let same = x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(same, "{isa:?} {:?} acc={acc}", (m, k, n));
                }
            }
        }
    }

    /// A product whose `A` takes several blocks of rows packs blocks of `B` once for all of
    /// them (`gemm::drive_blocked`); each output is still the sum it is in a product of that
    /// row alone (one block of rows, panels of `B` packed as they are used), bit for bit.
    #[test]
    fn blocks_of_b_packed_once_give_the_bits_of_one_row_at_a_time() {
        // (m, k, n): two blocks of rows and one of columns; three of rows, two of columns and
        // three summation blocks; the shape of a DCGAN layer's input gradient.
        let shapes = [(130, 300, 20), (200, 600, 300), (1024, 128, 392)];
        for isa in train_isas() {
            for &(m, k, n) in &shapes {
                for kind in [Kind::Nn, Kind::Tn, Kind::Nt] {
                    let a = random(m * k, 40 + m as u64);
                    let b = random(k * n, 41 + n as u64);
                    let c0 = random(m * n, 42 + k as u64);
                    let mut whole = c0.clone();
                    gemm(isa, &gemm_of(kind, &a, &b, (m, k, n), true), &mut whole, &Serial);
                    for i in 0..m {
                        // Row i of A alone, in the same layout as a one-row matrix.
                        let row: Vec<f32> = match kind {
                            Kind::Tn => (0..k).map(|p| a[p * m + i]).collect(),
                            _ => a[i * k..(i + 1) * k].to_vec(),
                        };
                        let mut c = c0[i * n..(i + 1) * n].to_vec();
                        gemm(isa, &gemm_of(kind, &row, &b, (1, k, n), true), &mut c, &Serial);
                        let same =
                            c.iter().zip(&whole[i * n..]).all(|(p, q)| p.to_bits() == q.to_bits());
                        assert!(same, "{isa:?} {kind:?} {:?} row {i}", (m, k, n));
                    }
                }
            }
        }
    }

    /// Both x86 training kernels sum each output the same way (one FMA per step over the same
    /// summation blocks), so they agree bit for bit; only the tiling differs.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_avx512_training_kernels_agree() {
        if !x86::has_avx512() {
            std::eprintln!("no AVX-512 here: nothing to compare the AVX2 kernel with");
            return;
        }
        each_product(90, |kind, s, g, c0| {
            let (mut x, mut y) = (c0.to_vec(), c0.to_vec());
            gemm(Isa::Avx2Fma, g, &mut x, &Serial);
            gemm(Isa::Avx512, g, &mut y, &Serial);
            let same = x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{kind:?} {s:?}");
        });
    }

    #[test]
    #[should_panic(expected = "shorter")]
    fn short_slices_panic() {
        let mut c = [0.0; 4];
        matmul(&mut c, &[0.0; 3], &[0.0; 4], 2, 2, 2, false, &Serial);
    }

    #[test]
    fn exact_kernel_is_bit_identical() {
        let mut shapes = SHAPES.to_vec();
        shapes.extend_from_slice(&[
            (1, 1024, 784),
            (5, 256, 100),
            (4, 3, 24),
            (8, 5, 23),
            (3, 9, 71),
            (5, 0, 17),
            (64, 520, 1024),
        ]);
        for isa in exact_isas() {
            for &(m, k, n) in &shapes {
                let a = random(m * k, 60 + k as u64);
                let b = random(k * n, 61 + n as u64);
                let bias = random(n, 62);
                let mut want = vec![0.0; m * n];
                reference::matmul_exact(&mut want, &a, &b, &bias, m, k, n);
                let mut got = vec![f32::NAN; m * n];
                exact(isa, &mut got, &a, &b, &bias, m, k, n, &Serial);
                for (idx, (x, y)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        x.to_bits(),
                        y.to_bits(),
                        "{isa:?} ({m}, {k}, {n}) at {idx}: {x} vs {y}"
                    );
                }
            }
        }
    }

    /// Split over threads, the exact kernel still gives the reference's bits: every ISA, one to
    /// five threads, an executor that repeats tasks, batch 1 and batches that take the tile path,
    /// column counts that leave a narrow last block.
    #[test]
    fn threaded_exact_kernel_is_bit_identical() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let execs: [&dyn Exec; 5] = [&Threads(1), &Threads(2), &Threads(3), &Threads(5), &Twice];
        for &(m, k, n) in &[(1, 1024, 784), (1, 512, 130), (3, 300, 97), (9, 100, 200)] {
            assert!(m * k * n >= PAR_MIN_EXACT_MACS);
            let a = random(m * k, 80 + k as u64);
            let b = random(k * n, 81 + n as u64);
            let bias = random(n, 82);
            let mut want = vec![0.0; m * n];
            reference::matmul_exact(&mut want, &a, &b, &bias, m, k, n);
            for isa in exact_isas() {
                for exec in execs {
                    let mut got = vec![f32::NAN; m * n];
                    exact(isa, &mut got, &a, &b, &bias, m, k, n, exec);
                    assert_eq!(bits(&got), bits(&want), "{isa:?} ({m}, {k}, {n})");
                }
            }
        }
    }

    /// Values spread over many magnitudes make rounding differences visible: any reordering or
    /// fused multiply-add would show up here.
    #[test]
    fn exact_kernel_is_bit_identical_on_wide_ranges() {
        let (m, k, n) = (6, 301, 45);
        let mut r = Lcg::new(70);
        let mut wide = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    let e = (r.next_f32() * 20.0) as i32;
                    r.next_f32() * libm::powf(2.0, e as f32)
                })
                .collect()
        };
        let a = wide(m * k);
        let b = wide(k * n);
        let bias = wide(n);
        let mut want = vec![0.0; m * n];
        reference::matmul_exact(&mut want, &a, &b, &bias, m, k, n);
        for isa in exact_isas() {
            let mut got = vec![0.0; m * n];
            exact(isa, &mut got, &a, &b, &bias, m, k, n, &Serial);
            let same = got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{isa:?}");
        }
        let mut got = vec![0.0; m * n];
        matmul_exact(&mut got, &a, &b, &bias, m, k, n);
        assert!(got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn detection_is_cached_and_consistent() {
        let first = x86::has_avx2_fma();
        assert_eq!(first, x86::has_avx2_fma());
        // AVX2+FMA implies AVX, and AVX-512 is only reported with AVX2+FMA.
        assert!(!first || x86::has_avx());
        assert!(!x86::has_avx512() || first);
        assert_eq!(x86::has_avx512(), x86::has_avx512());
    }
}
