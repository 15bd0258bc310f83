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

pub mod int8;
pub mod par;
pub mod vtanh;

use core::mem::MaybeUninit;
#[cfg(target_has_atomic = "8")]
use core::sync::atomic::{AtomicBool, Ordering};

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
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    exec: &dyn Exec,
) {
    // A(i, p) = a[i·k + p], B(p, j) = b[p·n + j].
    let g = Gemm::new(a, (k, 1), b, (n, 1), (m, k, n), accumulate);
    gemm(train_isa(), &g, c, exec);
}

/// `C (m×n) = Aᵀ · B` with `A` stored `k×m` and `B` stored `k×n` (`+=` when `accumulate`).
#[allow(clippy::too_many_arguments)]
pub fn matmul_tn(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    exec: &dyn Exec,
) {
    // A(i, p) = a[p·m + i], B(p, j) = b[p·n + j].
    let g = Gemm::new(a, (1, m), b, (n, 1), (m, k, n), accumulate);
    gemm(train_isa(), &g, c, exec);
}

/// `C (m×n) = A · Bᵀ` with `A` stored `m×k` and `B` stored `n×k` (`+=` when `accumulate`).
#[allow(clippy::too_many_arguments)]
pub fn matmul_nt(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    exec: &dyn Exec,
) {
    // A(i, p) = a[i·k + p], B(p, j) = b[j·k + p].
    let g = Gemm::new(a, (k, 1), b, (1, k), (m, k, n), accumulate);
    gemm(train_isa(), &g, c, exec);
}

/// Exact kernel: `C[i][j] = (Σ_p A[i][p]·B[p][j] in order p = 0, 1, …) + bias[j]`.
///
/// No FMA, no reassociation: the same bits on every target. `bias` has length `n`.
pub fn matmul_exact(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    bias: &[f32],
    m: usize,
    k: usize,
    n: usize,
) {
    exact(exact_isa(), c, a, b, bias, m, k, n, &Serial);
}

/// [`matmul_exact`] with the output columns spread over the tasks of `exec` (for products of
/// at least 65,536 multiply-adds). Each output is still summed by one task in index order, so
/// the bits are those of [`matmul_exact`] whatever `exec` is.
#[allow(clippy::too_many_arguments)]
pub fn matmul_exact_with(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    bias: &[f32],
    m: usize,
    k: usize,
    n: usize,
    exec: &dyn Exec,
) {
    exact(exact_isa(), c, a, b, bias, m, k, n, exec);
}

/// Plain loops that define each kernel. Slow; used by tests and as the semantic reference.
pub mod reference {
    /// `C = A·B` (`+=` when `accumulate`), A `m×k`, B `k×n`.
    pub fn matmul(
        c: &mut [f32],
        a: &[f32],
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) {
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
    pub fn matmul_tn(
        c: &mut [f32],
        a: &[f32],
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) {
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
    pub fn matmul_nt(
        c: &mut [f32],
        a: &[f32],
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) {
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
    pub fn matmul_exact(
        c: &mut [f32],
        a: &[f32],
        b: &[f32],
        bias: &[f32],
        m: usize,
        k: usize,
        n: usize,
    ) {
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

// ---------------------------------------------------------------------------------------------
// Instruction-set selection
// ---------------------------------------------------------------------------------------------

/// Which training micro-kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
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
enum ExactIsa {
    /// [`exact_portable`].
    Portable,
    /// [`x86::exact_avx`]: 8-wide AVX multiply then add (no FMA).
    #[cfg(target_arch = "x86_64")]
    Avx,
    /// [`x86::exact_avx512`]: 16-wide AVX-512F multiply then add (no FMA).
    #[cfg(target_arch = "x86_64")]
    Avx512,
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

fn train_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx512() {
        return Isa::Avx512;
    }
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2_fma() {
        return Isa::Avx2Fma;
    }
    Isa::Portable
}

fn exact_isa() -> ExactIsa {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx512() {
        return ExactIsa::Avx512;
    }
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx() {
        return ExactIsa::Avx;
    }
    ExactIsa::Portable
}

/// `x · y`, panicking on overflow (a wrapped length would defeat the bounds checks below).
fn len_of(x: usize, y: usize) -> usize {
    x.checked_mul(y).expect("matrix size overflows usize")
}

// ---------------------------------------------------------------------------------------------
// Training kernels: one blocked driver over strided operands
// ---------------------------------------------------------------------------------------------

/// One training product `C (m×n) (+)= A·B` with the operands seen through strides:
/// `A(i, p) = a[i·ars + p·acs]` and `B(p, j) = b[p·brs + j·bcs]`.
///
/// Invariant (checked in [`Gemm::new`]): every `A(i, p)` with `i < m, p < k` and every
/// `B(p, j)` with `p < k, j < n` lies inside its slice.
#[derive(Clone, Copy)]
struct Gemm<'s> {
    a: &'s [f32],
    ars: usize,
    acs: usize,
    b: &'s [f32],
    brs: usize,
    bcs: usize,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
}

impl<'s> Gemm<'s> {
    /// `a_strides`/`b_strides` are (row, column) strides; every layout used here is one of the
    /// two contiguous orders of an `m×k` (resp. `k×n`) matrix, so the length checks below cover
    /// every index the strides can form.
    fn new(
        a: &'s [f32],
        (ars, acs): (usize, usize),
        b: &'s [f32],
        (brs, bcs): (usize, usize),
        (m, k, n): (usize, usize, usize),
        accumulate: bool,
    ) -> Self {
        assert!((ars == k && acs == 1) || (ars == 1 && acs == m));
        assert!((brs == n && bcs == 1) || (brs == 1 && bcs == k));
        assert!(a.len() >= len_of(m, k), "A is shorter than m×k");
        assert!(b.len() >= len_of(k, n), "B is shorter than k×n");
        Gemm {
            a,
            ars,
            acs,
            b,
            brs,
            bcs,
            m,
            k,
            n,
            accumulate,
        }
    }
}

/// One `MR × NR` tile of work for a micro-kernel.
///
/// The micro-kernel computes `C(r, c) (+)= Σ_{p < kc} Ap(p, r)·Bp(p, c)` for `r < rows`,
/// `c < cols`, where `Ap(p, r) = a[p·MR + r]` is a packed micro-panel of `A`,
/// `Bp(p, c) = b[p·NR + c]` a packed panel of `B` (zero-padded to `NR` columns) and
/// `C(r, c) = c[r·ldc + c]`. With `add` the sum is added to the existing `C`, otherwise it
/// overwrites it.
struct Tile {
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    add: bool,
}

/// A register-blocked micro-kernel and its blocking parameters.
trait Micro {
    /// Rows of a tile (`1 ≤ Tile::rows ≤ MR`).
    const MR: usize;
    /// Columns of a packed panel (`1 ≤ Tile::cols ≤ NR`).
    const NR: usize;
    /// Length of a summation block.
    const KC: usize;
    /// Stack buffer for one packed `KC × NR` panel of `B`.
    type PanelB: AsMut<[MaybeUninit<f32>]>;
    /// Stack buffer for a packed block of rows of `A` (at least `MR × KC` floats; more rows
    /// fit when the summation block is shorter).
    type PanelA: AsMut<[MaybeUninit<f32>]>;
    fn panels() -> (Self::PanelA, Self::PanelB);
    /// Computes one tile.
    ///
    /// # Safety
    /// Every `Ap`, `Bp` and `C` element described in [`Tile`] must be in bounds of its
    /// allocation, `C` elements must not be accessed by anyone else meanwhile, `Ap` and `Bp`
    /// must be 64-byte aligned (as [`Aligned`] makes them) and hold the elements packing wrote,
    /// and the CPU must support the kernel's instructions.
    unsafe fn tile(t: &Tile);
    /// Packs a block of rows of `A`, as [`pack_a`] does.
    fn pack_a(
        panel: &mut [MaybeUninit<f32>],
        g: &Gemm<'_>,
        ic: usize,
        mc: usize,
        pc: usize,
        kc: usize,
    );
    /// Packs a panel of `B`, as [`pack_b`] does.
    ///
    /// # Safety
    /// The CPU must support the kernel's instructions.
    unsafe fn pack_b(
        panel: &mut [MaybeUninit<f32>],
        g: &Gemm<'_>,
        pc: usize,
        kc: usize,
        jc: usize,
        cols: usize,
    );
}

/// A 64-byte-aligned stack buffer, left uninitialised (zeroing up to 112 KiB per call would
/// cost more than small products do). The packing functions only write to it; micro-kernels
/// read only elements that packing has written (see [`pack_a`] and [`pack_b`]).
#[repr(C, align(64))]
struct Aligned<const N: usize>([MaybeUninit<f32>; N]);

impl<const N: usize> Aligned<N> {
    fn uninit() -> Self {
        Aligned([const { MaybeUninit::uninit() }; N])
    }
}

impl<const N: usize> AsMut<[MaybeUninit<f32>]> for Aligned<N> {
    fn as_mut(&mut self) -> &mut [MaybeUninit<f32>] {
        &mut self.0
    }
}

/// The output matrix shared by all tasks of one product.
///
/// SAFETY argument: [`gemm_tasks`] creates it from a `&mut [f32]` it holds for the whole
/// product, so nothing outside the product touches `C`. Task `t` reads and writes only the
/// columns `[t·chunk, (t+1)·chunk)` of every row, the tasks' column ranges are disjoint, and a
/// claim flag per task makes sure each range is processed by at most one call even if an `Exec`
/// calls `f(t)` twice. So no element is accessed by two threads, and sharing the pointer between
/// threads (`Send + Sync`) cannot create a data race.
struct OutPtr {
    ptr: *mut f32,
}

// SAFETY: see the type's documentation: tasks only touch disjoint column ranges.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Upper bound on tasks per product (also the size of the claim-flag array).
const MAX_TASKS: usize = 64;

/// Products smaller than this many flops run as one task: spreading them costs more than it saves.
const PAR_MIN_FLOPS: usize = 1 << 21;

/// Columns per packed panel of `B` (tasks split the columns in whole panels).
fn panel_width(isa: Isa) -> usize {
    match isa {
        Isa::Portable => PortableKernel::NR,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => x86::Avx2Kernel::NR,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::Avx512Kernel::NR,
    }
}

/// Picks the number of tasks: one per thread of `exec` (at most one per panel) for products of
/// at least [`PAR_MIN_FLOPS`], otherwise one.
fn gemm(isa: Isa, g: &Gemm<'_>, c: &mut [f32], exec: &dyn Exec) {
    let nr = panel_width(isa);
    let threads = exec.threads().clamp(1, MAX_TASKS);
    let flops =
        g.m.saturating_mul(g.k)
            .saturating_mul(g.n)
            .saturating_mul(2);
    let tasks = if threads == 1 || flops < PAR_MIN_FLOPS {
        1
    } else {
        threads.min(g.n.div_ceil(nr))
    };
    gemm_tasks(isa, g, c, exec, tasks);
}

/// Runs the product as (at most) `tasks` tasks over disjoint blocks of output columns.
fn gemm_tasks(isa: Isa, g: &Gemm<'_>, c: &mut [f32], exec: &dyn Exec, tasks: usize) {
    let (m, k, n) = (g.m, g.k, g.n);
    assert!(c.len() >= len_of(m, n), "C is shorter than m×n");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum is +0.0; `x + 0.0` also maps -0.0 to +0.0, as the reference does.
        for x in &mut c[..m * n] {
            *x = if g.accumulate { *x + 0.0 } else { 0.0 };
        }
        return;
    }
    let nr = panel_width(isa);
    let out = OutPtr {
        ptr: c.as_mut_ptr(),
    };
    let panels = n.div_ceil(nr);
    let tasks = tasks.clamp(1, MAX_TASKS).min(panels);
    // Claiming tasks needs atomic read-modify-write; targets without it (ARMv6-M) have no
    // threads to spread the work over anyway.
    #[cfg(target_has_atomic = "8")]
    if tasks > 1 {
        run_tasks(isa, g, &out, exec, panels.div_ceil(tasks) * nr);
        return;
    }
    let _ = (exec, tasks);
    // SAFETY: `out` covers `m·n` elements of `c`, borrowed mutably for this call; the one task
    // touches all of it and nothing else does.
    unsafe { run_cols(isa, g, &out, 0, n) };
}

/// Runs the product as tasks over blocks of `chunk` output columns (a multiple of the panel
/// width, so only the last panel of the matrix can be narrow).
#[cfg(target_has_atomic = "8")]
fn run_tasks(isa: Isa, g: &Gemm<'_>, out: &OutPtr, exec: &dyn Exec, chunk: usize) {
    // SAFETY: `split_columns` hands each column range to one call only, see `OutPtr`; the
    // caller keeps `C` mutably borrowed until it has returned.
    split_columns(exec, g.n, chunk, &|j0, j1| unsafe {
        run_cols(isa, g, out, j0, j1)
    });
}

/// Calls `f(j0, j1)` for the consecutive column blocks `[t·chunk, min((t+1)·chunk, n))` as
/// tasks of `exec`. Each block is claimed with an atomic flag first, so `f` sees every block
/// at most once even if the executor runs a task twice; a skipped task panics.
#[cfg(target_has_atomic = "8")]
fn split_columns(exec: &dyn Exec, n: usize, chunk: usize, f: &(dyn Fn(usize, usize) + Sync)) {
    let tasks = n.div_ceil(chunk);
    assert!(tasks <= MAX_TASKS);
    let claimed: [AtomicBool; MAX_TASKS] = [const { AtomicBool::new(false) }; MAX_TASKS];
    let task = |t: usize| {
        if t >= tasks || claimed[t].swap(true, Ordering::AcqRel) {
            return;
        }
        let j0 = t * chunk;
        f(j0, (j0 + chunk).min(n));
    };
    exec.for_each(tasks, &task);
    assert!(
        claimed[..tasks].iter().all(|f| f.load(Ordering::Acquire)),
        "Exec::for_each skipped a task"
    );
}

/// Computes the output columns `[j0, j1)` of every row with the micro-kernel of `isa`.
///
/// # Safety
/// `out.ptr` points to an `m×n` row-major matrix whose columns `[j0, j1)` nobody else accesses
/// during the call; `j0 < j1 ≤ n`; `g` satisfies its invariant.
unsafe fn run_cols(isa: Isa, g: &Gemm<'_>, out: &OutPtr, j0: usize, j1: usize) {
    match isa {
        // SAFETY: forwarded from the caller; the portable kernel needs no CPU feature.
        Isa::Portable => unsafe { drive::<PortableKernel>(g, out, j0, j1) },
        // SAFETY: forwarded from the caller; `Avx2Fma` is only chosen after `has_avx2_fma`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { drive::<x86::Avx2Kernel>(g, out, j0, j1) },
        // SAFETY: forwarded from the caller; `Avx512` is only chosen after `has_avx512`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { drive::<x86::Avx512Kernel>(g, out, j0, j1) },
    }
}

/// The blocked loop nest: summation blocks, then blocks of rows of `A` (packed), then column
/// panels of `B` (packed), then tiles.
///
/// # Safety
/// As [`run_cols`], plus: the CPU supports `K`'s instructions.
unsafe fn drive<K: Micro>(g: &Gemm<'_>, out: &OutPtr, j0: usize, j1: usize) {
    let (mut pa, mut pb) = K::panels();
    let (pa, pb) = (pa.as_mut(), pb.as_mut());
    assert!(pa.len() >= K::MR * K::KC && pb.len() >= K::KC * K::NR);
    let mut pc = 0;
    while pc < g.k {
        let kc = K::KC.min(g.k - pc);
        // The first block overwrites C unless the caller accumulates; later blocks add to it.
        let add = g.accumulate || pc > 0;
        // As many whole micro-panels of A as the buffer holds at this block length.
        let mc_max = pa.len() / kc / K::MR * K::MR;
        let mut ic = 0;
        while ic < g.m {
            let mc = mc_max.min(g.m - ic);
            K::pack_a(pa, g, ic, mc, pc, kc);
            let mut jc = j0;
            while jc < j1 {
                let cols = K::NR.min(j1 - jc);
                // SAFETY: the caller vouches for the CPU features.
                unsafe { K::pack_b(pb, g, pc, kc, jc, cols) };
                let mut ir = 0;
                while ir < mc {
                    let rows = K::MR.min(mc - ir);
                    // SAFETY (offsets): micro-panel `ir / MR` starts at `ir·kc` in `pa` (it
                    // holds `mc·kc` floats); (ic + ir, jc) is inside the m×n matrix at `out`.
                    let t = unsafe {
                        Tile {
                            kc,
                            a: pa.as_ptr().cast::<f32>().add(ir * kc),
                            b: pb.as_ptr().cast::<f32>(),
                            c: out.ptr.add((ic + ir) * g.n + jc),
                            ldc: g.n,
                            rows,
                            cols,
                            add,
                        }
                    };
                    // SAFETY: the packed panels hold kc rows (kc ≤ KC) of MR resp. NR floats
                    // and are aligned by `Aligned`; rows/cols stay inside this call's columns
                    // of C; the caller vouches for the CPU features and for exclusive access.
                    unsafe { K::tile(&t) };
                    ir += rows;
                }
                jc += cols;
            }
            ic += mc;
        }
        pc += kc;
    }
}

/// Packs `A(ic..ic+mc, pc..pc+kc)` into `panel` as micro-panels of `MR` rows: row `ic + ir + r`
/// (`ir` a multiple of `MR`) and column `pc + p` go to `panel[ir·kc + p·MR + r]`. Rows past `mc`
/// in the last micro-panel stay unwritten: a tile with `rows < MR` never reads them.
fn pack_a<const MR: usize>(
    panel: &mut [MaybeUninit<f32>],
    g: &Gemm<'_>,
    ic: usize,
    mc: usize,
    pc: usize,
    kc: usize,
) {
    let mr = MR;
    assert!(panel.len() >= mc.div_ceil(mr) * mr * kc && kc >= 1);
    assert!(ic + mc <= g.m && pc + kc <= g.k);
    let dst = panel.as_mut_ptr().cast::<f32>();
    let src = g.a.as_ptr();
    let mut ir = 0;
    while ir < mc {
        let rows = mr.min(mc - ir);
        // SAFETY: A(i, p) for i < ic + mc ≤ m and p < pc + kc ≤ k is in `a` (Gemm invariant);
        // destinations ir·kc + p·mr + r < mc.div_ceil(mr)·mr·kc ≤ panel.len().
        unsafe {
            let d = dst.add(ir * kc);
            if g.ars == 1 {
                // Aᵀ stored row-major: the `rows` values of one column are contiguous.
                for p in 0..kc {
                    let s = src.add((pc + p) * g.acs + ic + ir);
                    if rows == MR {
                        // Fixed size: a few vector moves instead of a `memcpy` call.
                        *(d.add(p * mr) as *mut [f32; MR]) = *(s as *const [f32; MR]);
                    } else {
                        core::ptr::copy_nonoverlapping(s, d.add(p * mr), rows);
                    }
                }
            } else {
                // Row-major A: read each row contiguously, scatter it.
                for r in 0..rows {
                    let s = src.add((ic + ir + r) * g.ars + pc * g.acs);
                    for p in 0..kc {
                        *d.add(p * mr + r) = *s.add(p * g.acs);
                    }
                }
            }
        }
        ir += rows;
    }
}

/// Packs `B(pc..pc+kc, jc..jc+cols)` into `panel` as `kc` rows of `NR` floats, zero-padding
/// columns `cols..NR`.
fn pack_b<const NR: usize>(
    panel: &mut [MaybeUninit<f32>],
    g: &Gemm<'_>,
    pc: usize,
    kc: usize,
    jc: usize,
    cols: usize,
) {
    let nr = NR;
    assert!(panel.len() >= kc * nr && cols <= nr && kc >= 1 && cols >= 1);
    assert!(pc + kc <= g.k && jc + cols <= g.n);
    let dst = panel.as_mut_ptr().cast::<f32>();
    let src = g.b.as_ptr();
    if g.bcs == 1 {
        // Row-major B: each panel row is a contiguous run of `cols` floats.
        for pp in 0..kc {
            // SAFETY: B(pc+pp, jc..jc+cols) is in `b` (Gemm invariant, asserted ranges) and the
            // destination row pp·nr..pp·nr+nr is in `panel` (kc·nr ≤ len).
            unsafe {
                let s = src.add((pc + pp) * g.brs + jc);
                let d = dst.add(pp * nr);
                if cols == NR {
                    // Fixed size: a few vector moves instead of a `memcpy` call.
                    *(d as *mut [f32; NR]) = *(s as *const [f32; NR]);
                } else {
                    core::ptr::copy_nonoverlapping(s, d, cols);
                    core::ptr::write_bytes(d.add(cols), 0, nr - cols);
                }
            }
        }
    } else {
        // Column-major B (B(p, j) = b[j·bcs + p]): read each column contiguously, scatter it.
        for jj in 0..cols {
            // SAFETY: as above; B(p, jc+jj) for p in pc..pc+kc is in `b`.
            unsafe {
                let s = src.add((jc + jj) * g.bcs + pc * g.brs);
                for pp in 0..kc {
                    *dst.add(pp * nr + jj) = *s.add(pp * g.brs);
                }
            }
        }
        if cols < nr {
            for pp in 0..kc {
                // SAFETY: row pp of the panel is in bounds (kc·nr ≤ len).
                unsafe { core::ptr::write_bytes(dst.add(pp * nr + cols), 0, nr - cols) };
            }
        }
    }
}

/// Stores an `NR`-wide row of results into `C`, honouring `cols` and `add`.
///
/// # Safety
/// `c..c+cols` is writable and exclusively ours.
#[inline(always)]
unsafe fn store_row<const NR: usize>(c: *mut f32, row: &[f32; NR], cols: usize, add: bool) {
    for (j, &v) in row.iter().enumerate().take(cols) {
        // SAFETY: j < cols, see the function's contract.
        unsafe {
            let d = c.add(j);
            *d = if add { *d + v } else { v };
        }
    }
}

/// Portable 4×8 micro-kernel: fixed-size accumulator arrays that LLVM keeps in vector
/// registers where the target has them.
struct PortableKernel;

/// Summation block of the portable kernel: smaller on 32-bit (embedded) targets, whose stacks
/// are small.
#[cfg(target_pointer_width = "64")]
const PORTABLE_KC: usize = 128;
#[cfg(not(target_pointer_width = "64"))]
const PORTABLE_KC: usize = 32;
/// Rows of `A` packed at once (at `PORTABLE_KC`).
#[cfg(target_pointer_width = "64")]
const PORTABLE_MC: usize = 32;
#[cfg(not(target_pointer_width = "64"))]
const PORTABLE_MC: usize = 8;

impl Micro for PortableKernel {
    const MR: usize = 4;
    const NR: usize = 8;
    const KC: usize = PORTABLE_KC;
    type PanelA = Aligned<{ PORTABLE_MC * PORTABLE_KC }>;
    type PanelB = Aligned<{ PORTABLE_KC * 8 }>;
    fn panels() -> (Self::PanelA, Self::PanelB) {
        (Aligned::uninit(), Aligned::uninit())
    }
    fn pack_a(
        panel: &mut [MaybeUninit<f32>],
        g: &Gemm<'_>,
        ic: usize,
        mc: usize,
        pc: usize,
        kc: usize,
    ) {
        pack_a::<4>(panel, g, ic, mc, pc, kc);
    }
    unsafe fn pack_b(
        panel: &mut [MaybeUninit<f32>],
        g: &Gemm<'_>,
        pc: usize,
        kc: usize,
        jc: usize,
        cols: usize,
    ) {
        pack_b::<8>(panel, g, pc, kc, jc, cols);
    }
    unsafe fn tile(t: &Tile) {
        // SAFETY: forwarded; every instantiation handles exactly `rows` rows.
        unsafe {
            match t.rows {
                1 => portable_tile::<1>(t),
                2 => portable_tile::<2>(t),
                3 => portable_tile::<3>(t),
                _ => portable_tile::<4>(t),
            }
        }
    }
}

/// # Safety
/// See [`Micro::tile`]; `t.rows == R`.
#[inline(always)]
unsafe fn portable_tile<const R: usize>(t: &Tile) {
    const MR: usize = 4;
    const NR: usize = 8;
    let mut acc = [[0.0f32; NR]; R];
    let mut a = t.a;
    let mut b = t.b;
    for _ in 0..t.kc {
        // SAFETY: `a` and `b` walk the packed panels, kc rows of MR resp. NR floats, aligned.
        let (av, bv) = unsafe { (*(a as *const [f32; MR]), *(b as *const [f32; NR])) };
        for (acc_r, &x) in acc.iter_mut().zip(&av) {
            for (s, &y) in acc_r.iter_mut().zip(&bv) {
                *s += x * y;
            }
        }
        // Wrapping: after the last step these may point past the end of the buffers (unused).
        a = a.wrapping_add(MR);
        b = b.wrapping_add(NR);
    }
    for (r, acc_r) in acc.iter().enumerate() {
        // SAFETY: row r < rows of this tile's C, columns < cols.
        unsafe { store_row(t.c.add(r * t.ldc), acc_r, t.cols, t.add) };
    }
}

// ---------------------------------------------------------------------------------------------
// Exact kernel
// ---------------------------------------------------------------------------------------------

/// Bounds checks, then the product as one task, or split by output columns over `exec` when it
/// is large enough (see [`matmul_exact_with`]).
#[allow(clippy::too_many_arguments)]
fn exact(
    isa: ExactIsa,
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    bias: &[f32],
    m: usize,
    k: usize,
    n: usize,
    exec: &dyn Exec,
) {
    assert!(c.len() >= len_of(m, n), "C is shorter than m×n");
    assert!(a.len() >= len_of(m, k), "A is shorter than m×k");
    assert!(b.len() >= len_of(k, n), "B is shorter than k×n");
    assert!(bias.len() >= n, "bias is shorter than n");
    if m == 0 || n == 0 {
        return;
    }
    let out = OutPtr {
        ptr: c.as_mut_ptr(),
    };
    let threads = exec.threads().clamp(1, MAX_TASKS);
    let macs = m.saturating_mul(k).saturating_mul(n);
    let tasks = if threads == 1 || macs < PAR_MIN_EXACT_MACS {
        1
    } else {
        (threads * EXACT_TASKS_PER_THREAD).min(n.div_ceil(EXACT_CHUNK))
    };
    // Claiming tasks needs atomic read-modify-write; targets without it (ARMv6-M) have no
    // threads to spread the work over anyway.
    #[cfg(target_has_atomic = "8")]
    if tasks > 1 {
        let chunk = n.div_ceil(EXACT_CHUNK).div_ceil(tasks) * EXACT_CHUNK;
        // SAFETY: lengths checked above; each call gets a disjoint column range of `C` (see
        // `split_columns`), which stays mutably borrowed until it returns.
        split_columns(exec, n, chunk, &|j0, j1| unsafe {
            exact_part(isa, &out, a, b, bias, m, k, n, j0, j1)
        });
        return;
    }
    let _ = tasks;
    // SAFETY: lengths checked above; this call is the only user of `C`.
    unsafe { exact_part(isa, &out, a, b, bias, m, k, n, 0, n) };
}

/// Products with fewer multiply-adds than this run the exact kernel as one task.
const PAR_MIN_EXACT_MACS: usize = 1 << 16;

/// Tasks per thread for a split exact product: more, smaller blocks than threads, so that a
/// thread that starts late (descheduled, or still waking up) holds up little of the product; the
/// others claim the blocks it has not reached.
const EXACT_TASKS_PER_THREAD: usize = 4;

/// Columns per task block of the exact kernel (a multiple of every exact kernel's strip width).
const EXACT_CHUNK: usize = 32;

/// Output columns `[j0, j1)` of the exact product `C (m×n) = A (m×k) · B (k×n) + bias`.
///
/// # Safety
/// `out` points to `m·n` floats whose columns `[j0, j1)` nobody else accesses during the call;
/// `a` holds `m·k`, `b` `k·n` and `bias` `n` floats; `j0 < j1 ≤ n`.
#[allow(clippy::too_many_arguments)]
unsafe fn exact_part(
    isa: ExactIsa,
    out: &OutPtr,
    a: &[f32],
    b: &[f32],
    bias: &[f32],
    m: usize,
    k: usize,
    n: usize,
    j0: usize,
    j1: usize,
) {
    let w = j1 - j0;
    // SAFETY: column j0 of row 0 of C and B and bias[j0] are in bounds (j0 < n).
    let (cp, bp, biasp) = unsafe { (out.ptr.add(j0), b.as_ptr().add(j0), bias.as_ptr().add(j0)) };
    let a = a.as_ptr();
    match isa {
        // SAFETY: the `w` columns from `cp`/`bp` with row stride `n` stay inside C and B.
        ExactIsa::Portable => unsafe { exact_portable(cp, a, bp, biasp, m, k, w, n) },
        // SAFETY: as above; `Avx` is only chosen after `has_avx`.
        #[cfg(target_arch = "x86_64")]
        ExactIsa::Avx => unsafe { x86::exact_avx(cp, a, bp, biasp, m, k, w, n) },
        // SAFETY: as above; `Avx512` is only chosen after `has_avx512`.
        #[cfg(target_arch = "x86_64")]
        ExactIsa::Avx512 => unsafe { x86::exact_avx512(cp, a, bp, biasp, m, k, w, n) },
    }
}

/// Portable exact kernel: one row at a time, 8 (then 4, then 1) columns per tile.
///
/// Computes `n` columns of `C` whose rows (like those of `B`) are `ld ≥ n` floats apart.
///
/// # Safety
/// `c` reaches `C(i, j)` at `i·ld + j` and `b` reaches `B(p, j)` at `p·ld + j` for `i < m`,
/// `p < k`, `j < n`; `a` holds `m·k` and `bias` `n` floats; `c` aliases none of the others.
#[allow(clippy::too_many_arguments)]
unsafe fn exact_portable(
    c: *mut f32,
    a: *const f32,
    b: *const f32,
    bias: *const f32,
    m: usize,
    k: usize,
    n: usize,
    ld: usize,
) {
    for i in 0..m {
        // SAFETY (offsets): row i of A and of C.
        let (arow, crow) = unsafe { (a.add(i * k), c.add(i * ld)) };
        let mut j = 0;
        while j + 8 <= n {
            // SAFETY: columns j..j+8 < n of row i; B columns j..j+8 exist in every row.
            unsafe { exact_cols::<8>(crow.add(j), arow, b.add(j), bias.add(j), k, ld) };
            j += 8;
        }
        while j + 4 <= n {
            // SAFETY: as above with 4 columns.
            unsafe { exact_cols::<4>(crow.add(j), arow, b.add(j), bias.add(j), k, ld) };
            j += 4;
        }
        while j < n {
            // SAFETY: as above with 1 column.
            unsafe { exact_cols::<1>(crow.add(j), arow, b.add(j), bias.add(j), k, ld) };
            j += 1;
        }
    }
}

/// `W` consecutive outputs of one row, each `((0 + a0·b0) + a1·b1 …) + bias`.
///
/// `b` points at `B(0, j)`, `arow` at `A(i, 0)`, `c` at `C(i, j)`, `bias` at `bias[j]`.
/// The summation is unrolled by 4 only to share loads and loop overhead: outputs stay
/// independent and `p` runs strictly in order.
///
/// # Safety
/// `arow[..k]`, `bias[..W]`, `c[..W]` and `b[p·ld .. p·ld + W]` for `p < k` are valid.
#[inline(always)]
unsafe fn exact_cols<const W: usize>(
    c: *mut f32,
    arow: *const f32,
    b: *const f32,
    bias: *const f32,
    k: usize,
    ld: usize,
) {
    let mut acc = [0.0f32; W];
    let mut bp = b;
    let mut p = 0;
    #[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
    if W == 8 && k >= 4 && ld >= 4 {
        let quads = k / 4;
        // SAFETY: W == 8, so `acc` is a `[f32; 8]`; rows p < 4·quads ≤ k of B and A are
        // readable (contract); ld ≥ 4 makes the stride at least 16 bytes.
        unsafe {
            let acc8 = &mut *(acc.as_mut_ptr() as *mut [f32; 8]);
            arm::mac8(acc8, arow, bp, ld * 4, quads);
        }
        p = 4 * quads;
        bp = bp.wrapping_add(p * ld);
    }
    while p + 4 <= k {
        // SAFETY: p + 4 ≤ k.
        let a4: [f32; 4] = unsafe { *(arow.add(p) as *const [f32; 4]) };
        for av in a4 {
            // SAFETY: B row p' < k, columns j..j+W.
            let bv: [f32; W] = unsafe { *(bp as *const [f32; W]) };
            for (s, &y) in acc.iter_mut().zip(&bv) {
                *s += av * y;
            }
            bp = bp.wrapping_add(ld);
        }
        p += 4;
    }
    while p < k {
        // SAFETY: p < k.
        let av = unsafe { *arow.add(p) };
        // SAFETY: as above.
        let bv: [f32; W] = unsafe { *(bp as *const [f32; W]) };
        for (s, &y) in acc.iter_mut().zip(&bv) {
            *s += av * y;
        }
        bp = bp.wrapping_add(ld);
        p += 1;
    }
    for (l, s) in acc.iter().enumerate() {
        // SAFETY: l < W.
        unsafe { *c.add(l) = *s + *bias.add(l) };
    }
}

#[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
mod arm {
    use core::arch::asm;

    /// For `p` in `0..4·quads` in order, and each `l < 8`: `acc[l] = acc[l] + a[p]·b[p·n + l]`,
    /// with `n = stride / 4`.
    ///
    /// `VMLA.F32` rounds the product and then the sum (it is not fused), so this is exactly the
    /// scalar `s += a·b`. Written in assembly only to get `VLDM`: one instruction loads four
    /// floats, which LLVM does not emit for these loads by itself. The loop costs 47
    /// instructions per 32 multiply-accumulates.
    ///
    /// The FP registers used (s16–s31) are saved and restored inside the block, because Rust
    /// cannot name them as operands on targets whose FPU lacks double precision.
    ///
    /// # Safety
    /// `quads ≥ 1`; `a[..4·quads]` and `b[p·n .. p·n + 8]` for `p < 4·quads` are readable;
    /// `stride ≥ 16` and a multiple of 4.
    #[inline]
    pub(super) unsafe fn mac8(
        acc: &mut [f32; 8],
        a: *const f32,
        b: *const f32,
        stride: usize,
        quads: usize,
    ) {
        // SAFETY: reads only what the contract allows, writes only `acc`; saves and restores
        // every FP register it touches; flags are declared clobbered by omitting
        // `preserves_flags`, the stack is used (no `nostack`) and left balanced.
        unsafe {
            asm!(
                "vpush {{s16-s31}}",
                "vldmia {acc}, {{s16-s23}}",
                "2:",
                "vldmia {a}!, {{s28-s31}}",
                "vldmia {b}!, {{s24-s27}}",
                "vmla.f32 s16, s28, s24",
                "vmla.f32 s17, s28, s25",
                "vmla.f32 s18, s28, s26",
                "vmla.f32 s19, s28, s27",
                "vldmia {b}, {{s24-s27}}",
                "add {b}, {step}",
                "vmla.f32 s20, s28, s24",
                "vmla.f32 s21, s28, s25",
                "vmla.f32 s22, s28, s26",
                "vmla.f32 s23, s28, s27",
                "vldmia {b}!, {{s24-s27}}",
                "vmla.f32 s16, s29, s24",
                "vmla.f32 s17, s29, s25",
                "vmla.f32 s18, s29, s26",
                "vmla.f32 s19, s29, s27",
                "vldmia {b}, {{s24-s27}}",
                "add {b}, {step}",
                "vmla.f32 s20, s29, s24",
                "vmla.f32 s21, s29, s25",
                "vmla.f32 s22, s29, s26",
                "vmla.f32 s23, s29, s27",
                "vldmia {b}!, {{s24-s27}}",
                "vmla.f32 s16, s30, s24",
                "vmla.f32 s17, s30, s25",
                "vmla.f32 s18, s30, s26",
                "vmla.f32 s19, s30, s27",
                "vldmia {b}, {{s24-s27}}",
                "add {b}, {step}",
                "vmla.f32 s20, s30, s24",
                "vmla.f32 s21, s30, s25",
                "vmla.f32 s22, s30, s26",
                "vmla.f32 s23, s30, s27",
                "vldmia {b}!, {{s24-s27}}",
                "vmla.f32 s16, s31, s24",
                "vmla.f32 s17, s31, s25",
                "vmla.f32 s18, s31, s26",
                "vmla.f32 s19, s31, s27",
                "vldmia {b}, {{s24-s27}}",
                "add {b}, {step}",
                "vmla.f32 s20, s31, s24",
                "vmla.f32 s21, s31, s25",
                "vmla.f32 s22, s31, s26",
                "vmla.f32 s23, s31, s27",
                "subs {q}, #1",
                "bne 2b",
                "vstmia {acc}, {{s16-s23}}",
                "vpop {{s16-s31}}",
                acc = in(reg) acc.as_mut_ptr(),
                a = inout(reg) a => _,
                b = inout(reg) b => _,
                step = in(reg) stride - 16,
                q = inout(reg) quads => _,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// x86-64: run-time feature detection without std, AVX2+FMA and AVX-512F training tiles, AVX
// and AVX-512F exact kernels
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Aligned, Gemm, Micro, Tile, store_row};
    use core::arch::x86_64::*;
    use core::mem::MaybeUninit;
    use core::sync::atomic::{AtomicU8, Ordering};

    const DETECTED: u8 = 1;
    const AVX: u8 = 2;
    const AVX2_FMA: u8 = 4;
    const AVX512: u8 = 8;

    /// 0 until the first query, then `DETECTED` plus the feature bits.
    static FEATURES: AtomicU8 = AtomicU8::new(0);

    fn features() -> u8 {
        let f = FEATURES.load(Ordering::Relaxed);
        if f != 0 {
            return f;
        }
        // Racing first calls compute the same value, so a relaxed store is enough.
        let f = detect();
        FEATURES.store(f, Ordering::Relaxed);
        f
    }

    pub(super) fn has_avx() -> bool {
        cfg!(target_feature = "avx") || features() & AVX != 0
    }

    pub(super) fn has_avx2_fma() -> bool {
        cfg!(all(target_feature = "avx2", target_feature = "fma")) || features() & AVX2_FMA != 0
    }

    /// AVX-512F with the OS saving opmask and `zmm` state (reported only together with
    /// AVX2+FMA).
    pub(super) fn has_avx512() -> bool {
        cfg!(target_feature = "avx512f") || features() & AVX512 != 0
    }

    fn detect() -> u8 {
        let mut f = DETECTED;
        // SAFETY: CPUID exists on every x86-64 CPU. (The CPUID intrinsics are `unsafe fn`s on
        // older toolchains and safe on newer ones, hence the `allow`.)
        #[allow(unused_unsafe)]
        let (max_leaf, leaf1) = unsafe { (__cpuid(0).eax, __cpuid(1)) };
        let fma = leaf1.ecx & (1 << 12) != 0;
        let osxsave = leaf1.ecx & (1 << 27) != 0;
        let avx = leaf1.ecx & (1 << 28) != 0;
        if !(osxsave && avx) {
            return f;
        }
        // SAFETY: OSXSAVE is set, so the OS has enabled XGETBV.
        let xcr0 = unsafe { xcr0() };
        // The OS must save both XMM (bit 1) and YMM (bit 2) state across context switches.
        if xcr0 & 0b110 != 0b110 {
            return f;
        }
        f |= AVX;
        if max_leaf >= 7 {
            // SAFETY: as above; leaf 7 exists (max_leaf ≥ 7).
            #[allow(unused_unsafe)]
            let leaf7 = unsafe { __cpuid_count(7, 0) };
            let avx2 = leaf7.ebx & (1 << 5) != 0;
            let avx512f = leaf7.ebx & (1 << 16) != 0;
            if avx2 && fma {
                f |= AVX2_FMA;
                // ZMM state needs opmask (bit 5), the upper halves of zmm0–15 (bit 6) and
                // zmm16–31 (bit 7) saved by the OS too.
                if avx512f && xcr0 & 0b1110_0000 == 0b1110_0000 {
                    f |= AVX512;
                }
            }
        }
        f
    }

    /// # Safety
    /// The CPU must report OSXSAVE.
    #[target_feature(enable = "xsave")]
    unsafe fn xcr0() -> u64 {
        // SAFETY: forwarded from the caller.
        unsafe { _xgetbv(0) }
    }

    /// 6×16 AVX2+FMA micro-kernel: 12 ymm accumulators, two panel loads and six broadcasts per
    /// step of `p`.
    pub(super) struct Avx2Kernel;

    /// Summation block: a 256×16 panel of `B` (16 KiB) stays in L1 while the tiles stream the
    /// packed rows of `A` from L2.
    const KC: usize = 256;
    /// `A` buffer: 96 rows at `KC` (96 KiB on the stack), more rows for shorter blocks.
    const A_LEN: usize = 96 * KC;

    impl Micro for Avx2Kernel {
        const MR: usize = 6;
        const NR: usize = 16;
        const KC: usize = KC;
        type PanelA = Aligned<A_LEN>;
        type PanelB = Aligned<{ KC * 16 }>;
        fn panels() -> (Self::PanelA, Self::PanelB) {
            (Aligned::uninit(), Aligned::uninit())
        }
        fn pack_a(
            panel: &mut [MaybeUninit<f32>],
            g: &Gemm<'_>,
            ic: usize,
            mc: usize,
            pc: usize,
            kc: usize,
        ) {
            super::pack_a::<6>(panel, g, ic, mc, pc, kc);
        }
        unsafe fn tile(t: &Tile) {
            // SAFETY: forwarded (the caller checked AVX2 and FMA); each instantiation handles
            // exactly `rows` rows, and the one-vector variants `cols ≤ 8` columns.
            unsafe {
                match (t.rows, t.cols > 8) {
                    (1, true) => tile_avx2::<1, 2>(t),
                    (2, true) => tile_avx2::<2, 2>(t),
                    (3, true) => tile_avx2::<3, 2>(t),
                    (4, true) => tile_avx2::<4, 2>(t),
                    (5, true) => tile_avx2::<5, 2>(t),
                    (_, true) => tile_avx2::<6, 2>(t),
                    (1, false) => tile_avx2::<1, 1>(t),
                    (2, false) => tile_avx2::<2, 1>(t),
                    (3, false) => tile_avx2::<3, 1>(t),
                    (4, false) => tile_avx2::<4, 1>(t),
                    (5, false) => tile_avx2::<5, 1>(t),
                    (_, false) => tile_avx2::<6, 1>(t),
                }
            }
        }
        unsafe fn pack_b(
            panel: &mut [MaybeUninit<f32>],
            g: &Gemm<'_>,
            pc: usize,
            kc: usize,
            jc: usize,
            cols: usize,
        ) {
            if g.bcs == 1 {
                super::pack_b::<16>(panel, g, pc, kc, jc, cols);
            } else {
                // SAFETY: forwarded (the caller checked AVX2, which includes AVX).
                unsafe { pack_b_transposed::<16>(panel, g, pc, kc, jc, cols) };
            }
        }
    }

    /// `R × 8V` tile (`V` = 1 or 2 vectors per row). The arithmetic per output is the same for
    /// every `R` and `V`: `acc = 0`, then one FMA per `p` in order.
    ///
    /// # Safety
    /// See [`Micro::tile`]; `t.rows == R`; `t.cols ≤ 8V`; the CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_avx2<const R: usize, const V: usize>(t: &Tile) {
        const MR: usize = 6;
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        let mut a = t.a;
        let mut b = t.b;
        for _ in 0..t.kc {
            let mut bv = [_mm256_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: `b` walks the 64-byte-aligned packed panel, 16 floats per step.
                *x = unsafe { _mm256_load_ps(b.add(8 * v)) };
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                // SAFETY: `a` walks the packed micro-panel, MR floats per step (r < R ≤ MR).
                let av = unsafe { _mm256_broadcast_ss(&*a.add(r)) };
                for (s, &y) in acc_r.iter_mut().zip(&bv) {
                    *s = _mm256_fmadd_ps(av, y, *s);
                }
            }
            a = a.wrapping_add(MR);
            b = b.wrapping_add(16);
        }
        if t.cols == 8 * V {
            for (r, acc_r) in acc.iter().enumerate() {
                for (v, &s) in acc_r.iter().enumerate() {
                    // SAFETY: row r < rows, columns 8v..8v+8 ≤ cols of this tile's C.
                    unsafe {
                        let cp = t.c.add(r * t.ldc + 8 * v);
                        let x = if t.add {
                            _mm256_add_ps(_mm256_loadu_ps(cp), s)
                        } else {
                            s
                        };
                        _mm256_storeu_ps(cp, x);
                    }
                }
            }
        } else {
            for (r, acc_r) in acc.iter().enumerate() {
                let mut row = [0.0f32; 16];
                for (v, &s) in acc_r.iter().enumerate() {
                    // SAFETY: `row` has room for two vectors.
                    unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(8 * v), s) };
                }
                // SAFETY: row r < rows and columns < cols of C.
                unsafe { store_row(t.c.add(r * t.ldc), &row, t.cols, t.add) };
            }
        }
    }

    /// 8×32 AVX-512F micro-kernel: 16 zmm accumulators, two panel loads and eight broadcasts
    /// per step of `p`.
    pub(super) struct Avx512Kernel;

    /// Summation block of the AVX-512 kernel: a 256×32 panel of `B` (32 KiB) stays in L1.
    const KC512: usize = 256;
    /// `A` buffer of the AVX-512 kernel: 64 rows at `KC512` (64 KiB on the stack), more rows
    /// for shorter blocks.
    const A512_LEN: usize = 64 * KC512;

    impl Micro for Avx512Kernel {
        const MR: usize = 8;
        const NR: usize = 32;
        const KC: usize = KC512;
        type PanelA = Aligned<A512_LEN>;
        type PanelB = Aligned<{ KC512 * 32 }>;
        fn panels() -> (Self::PanelA, Self::PanelB) {
            (Aligned::uninit(), Aligned::uninit())
        }
        fn pack_a(
            panel: &mut [MaybeUninit<f32>],
            g: &Gemm<'_>,
            ic: usize,
            mc: usize,
            pc: usize,
            kc: usize,
        ) {
            super::pack_a::<8>(panel, g, ic, mc, pc, kc);
        }
        unsafe fn tile(t: &Tile) {
            // SAFETY: forwarded (the caller checked AVX-512F); each instantiation handles
            // exactly `rows` rows, and the one-vector variants `cols ≤ 16` columns.
            unsafe {
                match (t.rows, t.cols > 16) {
                    (1, true) => tile_avx512::<1, 2>(t),
                    (2, true) => tile_avx512::<2, 2>(t),
                    (3, true) => tile_avx512::<3, 2>(t),
                    (4, true) => tile_avx512::<4, 2>(t),
                    (5, true) => tile_avx512::<5, 2>(t),
                    (6, true) => tile_avx512::<6, 2>(t),
                    (7, true) => tile_avx512::<7, 2>(t),
                    (_, true) => tile_avx512::<8, 2>(t),
                    (1, false) => tile_avx512::<1, 1>(t),
                    (2, false) => tile_avx512::<2, 1>(t),
                    (3, false) => tile_avx512::<3, 1>(t),
                    (4, false) => tile_avx512::<4, 1>(t),
                    (5, false) => tile_avx512::<5, 1>(t),
                    (6, false) => tile_avx512::<6, 1>(t),
                    (7, false) => tile_avx512::<7, 1>(t),
                    (_, false) => tile_avx512::<8, 1>(t),
                }
            }
        }
        unsafe fn pack_b(
            panel: &mut [MaybeUninit<f32>],
            g: &Gemm<'_>,
            pc: usize,
            kc: usize,
            jc: usize,
            cols: usize,
        ) {
            if g.bcs == 1 {
                super::pack_b::<32>(panel, g, pc, kc, jc, cols);
            } else {
                // SAFETY: forwarded (AVX-512 is only reported together with AVX2, which
                // includes AVX).
                unsafe { pack_b_transposed::<32>(panel, g, pc, kc, jc, cols) };
            }
        }
    }

    /// Mask of the first `w` of 16 lanes (all lanes when `w ≥ 16`).
    #[inline(always)]
    fn lanes(w: usize) -> __mmask16 {
        if w >= 16 { 0xFFFF } else { (1u16 << w) - 1 }
    }

    /// `R × 16V` tile (`V` = 1 or 2 vectors per row). The arithmetic per output is the same for
    /// every `R` and `V`: `acc = 0`, then one FMA per `p` in order. Columns past `cols` are
    /// masked off when storing.
    ///
    /// # Safety
    /// See [`Micro::tile`]; `t.rows == R`; `16(V - 1) < t.cols ≤ 16V`; the CPU supports
    /// AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_avx512<const R: usize, const V: usize>(t: &Tile) {
        const MR: usize = 8;
        const NR: usize = 32;
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let mut a = t.a;
        let mut b = t.b;
        for _ in 0..t.kc {
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: `b` walks the 64-byte-aligned packed panel, NR floats per step.
                *x = unsafe { _mm512_load_ps(b.add(16 * v)) };
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                // SAFETY: `a` walks the packed micro-panel, MR floats per step (r < R ≤ MR).
                let av = unsafe { _mm512_set1_ps(*a.add(r)) };
                for (s, &y) in acc_r.iter_mut().zip(&bv) {
                    *s = _mm512_fmadd_ps(av, y, *s);
                }
            }
            a = a.wrapping_add(MR);
            b = b.wrapping_add(NR);
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, &s) in acc_r.iter().enumerate() {
                let mask = lanes(t.cols.saturating_sub(16 * v));
                // SAFETY: row r < rows; the mask keeps columns < cols of this tile's C (masked
                // lanes are neither read nor written).
                unsafe {
                    let cp = t.c.add(r * t.ldc + 16 * v);
                    let x = if t.add {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, cp), s)
                    } else {
                        s
                    };
                    _mm512_mask_storeu_ps(cp, mask, x);
                }
            }
        }
    }

    /// [`super::pack_b`] for column-major `B` (`B(p, j) = b[j·bcs + p]`) into `NR`-wide panel
    /// rows, transposing 8×8 blocks in registers; edges fall back to the scalar loops.
    ///
    /// # Safety
    /// The CPU supports AVX.
    #[target_feature(enable = "avx")]
    unsafe fn pack_b_transposed<const NR: usize>(
        panel: &mut [MaybeUninit<f32>],
        g: &Gemm<'_>,
        pc: usize,
        kc: usize,
        jc: usize,
        cols: usize,
    ) {
        const { assert!(NR.is_multiple_of(8)) };
        assert!(g.brs == 1 && panel.len() >= kc * NR && (1..=NR).contains(&cols) && kc >= 1);
        assert!(pc + kc <= g.k && jc + cols <= g.n);
        let dst = panel.as_mut_ptr().cast::<f32>();
        let src = g.b.as_ptr();
        let full = cols / 8 * 8;
        let kc8 = kc / 8 * 8;
        for jj in (0..full).step_by(8) {
            // SAFETY (whole loop): columns jc+jj..jc+jj+8 ≤ n and rows pc..pc+kc ≤ k of B are
            // in `b` (Gemm invariant, asserted ranges); panel rows < kc hold NR floats.
            unsafe {
                let col = |q: usize| src.add((jc + jj + q) * g.bcs + pc);
                for pp in (0..kc8).step_by(8) {
                    let r: [__m256; 8] = core::array::from_fn(|q| _mm256_loadu_ps(col(q).add(pp)));
                    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                    // u[x]: element x (low lane) and x + 4 (high lane) of columns 0–3 / 4–7.
                    let lo = [
                        _mm256_shuffle_ps::<0x44>(t0, t2),
                        _mm256_shuffle_ps::<0xEE>(t0, t2),
                        _mm256_shuffle_ps::<0x44>(t1, t3),
                        _mm256_shuffle_ps::<0xEE>(t1, t3),
                    ];
                    let hi = [
                        _mm256_shuffle_ps::<0x44>(t4, t6),
                        _mm256_shuffle_ps::<0xEE>(t4, t6),
                        _mm256_shuffle_ps::<0x44>(t5, t7),
                        _mm256_shuffle_ps::<0xEE>(t5, t7),
                    ];
                    for x in 0..4 {
                        let row_x = _mm256_permute2f128_ps::<0x20>(lo[x], hi[x]);
                        let row_x4 = _mm256_permute2f128_ps::<0x31>(lo[x], hi[x]);
                        _mm256_store_ps(dst.add((pp + x) * NR + jj), row_x);
                        _mm256_store_ps(dst.add((pp + x + 4) * NR + jj), row_x4);
                    }
                }
                for pp in kc8..kc {
                    for q in 0..8 {
                        *dst.add(pp * NR + jj + q) = *col(q).add(pp);
                    }
                }
            }
        }
        for jj in full..cols {
            // SAFETY: as above for one column.
            unsafe {
                let s = src.add((jc + jj) * g.bcs + pc);
                for pp in 0..kc {
                    *dst.add(pp * NR + jj) = *s.add(pp);
                }
            }
        }
        if cols < NR {
            for pp in 0..kc {
                // SAFETY: row pp of the panel is in bounds.
                unsafe { core::ptr::write_bytes(dst.add(pp * NR + cols), 0, NR - cols) };
            }
        }
    }

    /// Exact kernel with AVX: `_mm256_mul_ps` then `_mm256_add_ps` rounds exactly like the
    /// scalar `s += a·b` (each lane is one output), and no FMA is enabled here.
    ///
    /// - From 4 rows up: strips of 16 columns; within a strip, blocks of [`EXACT_KB`] rows of
    ///   `B` are packed into a stack buffer (so the block stays in L1 whatever the row stride)
    ///   and used by 4×16 tiles of every row. Between blocks a tile parks its running sums in
    ///   `C`: storing an f32 and loading it back is exact.
    /// - Fewer rows (batch-1 inference, where every weight is used once): each row of `C` is its
    ///   own accumulator and `B` is read front to back, four rows at a time, which keeps the
    ///   hardware prefetchers streaming.
    ///
    /// Either way every output sees `((0 + a0·b0) + a1·b1) + …` in order, then `+ bias`.
    ///
    /// # Safety
    /// As [`super::exact_portable`]; the CPU supports AVX.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn exact_avx(
        c: *mut f32,
        a: *const f32,
        b: *const f32,
        bias: *const f32,
        m: usize,
        k: usize,
        n: usize,
        ld: usize,
    ) {
        let e = Exact {
            c,
            a,
            b,
            bias,
            m,
            k,
            n,
            ld,
        };
        // SAFETY (whole body): strips cover columns j..j+8V ≤ n, rows i < m; `column` and
        // `row_stream` stay inside the matrices by their contracts.
        unsafe {
            if m < 4 {
                for i in 0..m {
                    e.row_stream(i);
                }
                return;
            }
            let mut j = 0;
            while j + 16 <= n {
                e.strip::<2>(j);
                j += 16;
            }
            while j + 8 <= n {
                e.strip::<1>(j);
                j += 8;
            }
            while j < n {
                for i in 0..m {
                    e.column(i, j);
                }
                j += 1;
            }
        }
    }

    /// Rows of `B` per packed block in [`Exact::strip`].
    const EXACT_KB: usize = 256;

    /// Operands of one exact product over `n` columns of `C` and `B` whose rows are `ld ≥ n`
    /// floats apart: `c` reaches `C(i, j)` at `i·ld + j` for `i < m`, `j < n`, `b` reaches
    /// `B(p, j)` at `p·ld + j` for `p < k`, `a` holds `m·k` and `bias` `n` floats; `c` aliases
    /// none of the others.
    struct Exact {
        c: *mut f32,
        a: *const f32,
        b: *const f32,
        bias: *const f32,
        m: usize,
        k: usize,
        n: usize,
        ld: usize,
    }

    impl Exact {
        /// One output `C(i, j)`, scalar.
        ///
        /// # Safety
        /// `i < m`, `j < n`.
        unsafe fn column(&self, i: usize, j: usize) {
            let (k, ld) = (self.k, self.ld);
            // SAFETY: A(i, p), B(p, j) for p < k, C(i, j) and bias[j] are in bounds.
            unsafe {
                let arow = self.a.add(i * k);
                let mut s = 0.0f32;
                for p in 0..k {
                    s += *arow.add(p) * *self.b.add(p * ld + j);
                }
                *self.c.add(i * ld + j) = s + *self.bias.add(j);
            }
        }

        /// All rows, columns `j..j+8V` (`V` ≤ 2), `B` packed in blocks of [`EXACT_KB`] rows.
        ///
        /// # Safety
        /// `j + 8V ≤ n`; the CPU supports AVX.
        #[target_feature(enable = "avx")]
        unsafe fn strip<const V: usize>(&self, j: usize) {
            const { assert!(V <= 2) };
            let mut panel = Aligned::<{ EXACT_KB * 16 }>::uninit();
            let dst = panel.as_mut().as_mut_ptr().cast::<f32>();
            let mut p0 = 0;
            loop {
                let p1 = (p0 + EXACT_KB).min(self.k);
                // SAFETY: B(p, j..j+8V) for p < p1 ≤ k is in `b`; the packed rows
                // (p - p0)·8V.. fit the buffer because p1 - p0 ≤ EXACT_KB and 8V ≤ 16. The
                // tiles read only these rows; rows i..i+R ≤ m, columns j..j+8V ≤ n.
                unsafe {
                    for p in p0..p1 {
                        let src = self.b.add(p * self.ld + j) as *const [f32; 8];
                        let row = dst.add((p - p0) * 8 * V) as *mut [f32; 8];
                        for v in 0..V {
                            *row.add(v) = *src.add(v);
                        }
                    }
                    let mut i = 0;
                    while i + 4 <= self.m {
                        self.tile::<4, V>(dst, i, j, p0, p1);
                        i += 4;
                    }
                    while i < self.m {
                        self.tile::<1, V>(dst, i, j, p0, p1);
                        i += 1;
                    }
                }
                if p1 == self.k {
                    break;
                }
                p0 = p1;
            }
        }

        /// Outputs `C(i..i+R, j..j+8V)` over `p` in `p0..p1`, reading `B(p, j + l)` from
        /// `panel[(p - p0)·8V + l]`: starts from 0 when `p0 == 0`, otherwise from the running
        /// sums parked in `C`; adds the bias when `p1 == k`.
        ///
        /// # Safety
        /// `i + R ≤ m`, `j + 8V ≤ n`, `p0 ≤ p1 ≤ k`, `panel` holds the packed rows; the CPU
        /// supports AVX.
        #[target_feature(enable = "avx")]
        unsafe fn tile<const R: usize, const V: usize>(
            &self,
            panel: *const f32,
            i: usize,
            j: usize,
            p0: usize,
            p1: usize,
        ) {
            let (k, ld) = (self.k, self.ld);
            // SAFETY (whole body): A(i+r, p), the packed rows, C(i+r, j..j+8V) and
            // bias[j..j+8V] are in bounds for r < R, p0 ≤ p < p1 ≤ k (contract).
            unsafe {
                let mut acc = [[_mm256_setzero_ps(); V]; R];
                if p0 > 0 {
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        for (v, s) in acc_r.iter_mut().enumerate() {
                            *s = _mm256_loadu_ps(self.c.add((i + r) * ld + j + 8 * v));
                        }
                    }
                }
                let arow = self.a.add(i * k);
                let mut bp = panel;
                for p in p0..p1 {
                    let mut bv = [_mm256_setzero_ps(); V];
                    for (v, x) in bv.iter_mut().enumerate() {
                        *x = _mm256_load_ps(bp.add(8 * v));
                    }
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let av = _mm256_broadcast_ss(&*arow.add(r * k + p));
                        for (s, &y) in acc_r.iter_mut().zip(&bv) {
                            *s = _mm256_add_ps(*s, _mm256_mul_ps(av, y));
                        }
                    }
                    bp = bp.wrapping_add(8 * V);
                }
                let last = p1 == k;
                for (r, acc_r) in acc.iter().enumerate() {
                    for (v, &s) in acc_r.iter().enumerate() {
                        let out = if last {
                            _mm256_add_ps(s, _mm256_loadu_ps(self.bias.add(j + 8 * v)))
                        } else {
                            s
                        };
                        _mm256_storeu_ps(self.c.add((i + r) * ld + j + 8 * v), out);
                    }
                }
            }
        }

        /// Row `i` with `C(i, ·)` as the accumulators: for each `p` in order (four rows of `B`
        /// per pass), `C(i, j) += A(i, p)·B(p, j)` across all columns; then the bias.
        ///
        /// # Safety
        /// `i < m`; the CPU supports AVX.
        #[target_feature(enable = "avx")]
        unsafe fn row_stream(&self, i: usize) {
            let (k, n, ld) = (self.k, self.n, self.ld);
            let n8 = n / 8 * 8;
            // SAFETY (whole body): A(i, p) for p < k, B(p, j) for p < k and j < n8 + 8 ≤ n
            // (vector columns) or j < n (scalar columns), C(i, ·) and bias[..n] are in bounds.
            unsafe {
                let arow = self.a.add(i * k);
                let crow = self.c.add(i * ld);
                for j in (0..n8).step_by(8) {
                    _mm256_storeu_ps(crow.add(j), _mm256_setzero_ps());
                }
                let mut p = 0;
                while p + 4 <= k {
                    let av: [__m256; 4] =
                        core::array::from_fn(|q| _mm256_broadcast_ss(&*arow.add(p + q)));
                    let rows: [*const f32; 4] = core::array::from_fn(|q| self.b.add((p + q) * ld));
                    for j in (0..n8).step_by(8) {
                        let mut s = _mm256_loadu_ps(crow.add(j));
                        for q in 0..4 {
                            let y = _mm256_loadu_ps(rows[q].add(j));
                            s = _mm256_add_ps(s, _mm256_mul_ps(av[q], y));
                        }
                        _mm256_storeu_ps(crow.add(j), s);
                    }
                    p += 4;
                }
                while p < k {
                    let av = _mm256_broadcast_ss(&*arow.add(p));
                    let row = self.b.add(p * ld);
                    for j in (0..n8).step_by(8) {
                        let y = _mm256_loadu_ps(row.add(j));
                        let s = _mm256_add_ps(_mm256_loadu_ps(crow.add(j)), _mm256_mul_ps(av, y));
                        _mm256_storeu_ps(crow.add(j), s);
                    }
                    p += 1;
                }
                for j in (0..n8).step_by(8) {
                    let s = _mm256_add_ps(
                        _mm256_loadu_ps(crow.add(j)),
                        _mm256_loadu_ps(self.bias.add(j)),
                    );
                    _mm256_storeu_ps(crow.add(j), s);
                }
                for j in n8..n {
                    self.column(i, j);
                }
            }
        }
    }

    /// Exact kernel with AVX-512F: the scheme of [`exact_avx`] on 16-wide vectors
    /// (`_mm512_mul_ps` then `_mm512_add_ps`, each lane one output, no FMA). Strips are 32
    /// columns wide (tiles of up to 8 rows) and the last strip of a row is narrowed with masks,
    /// so no column falls back to scalar code.
    ///
    /// # Safety
    /// As [`super::exact_portable`]; the CPU supports AVX-512F.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exact_avx512(
        c: *mut f32,
        a: *const f32,
        b: *const f32,
        bias: *const f32,
        m: usize,
        k: usize,
        n: usize,
        ld: usize,
    ) {
        let e = Exact {
            c,
            a,
            b,
            bias,
            m,
            k,
            n,
            ld,
        };
        // SAFETY (whole body): strips cover columns j..j+w ≤ n; `row_stream512` stays inside
        // the matrices by its contract.
        unsafe {
            if m < 4 {
                for i in 0..m {
                    e.row_stream512(i);
                }
                return;
            }
            let mut j = 0;
            while j < n {
                let w = (n - j).min(32);
                if w > 16 {
                    e.strip512::<2>(j, w);
                } else {
                    e.strip512::<1>(j, w);
                }
                j += w;
            }
        }
    }

    /// Rows of `B` per packed block in [`Exact::strip512`] (a 16 KiB buffer).
    const EXACT512_KB: usize = 128;

    impl Exact {
        /// All rows, columns `j..j+w` with `16(V - 1) < w ≤ 16V` (`V` ≤ 2), `B` packed in
        /// blocks of [`EXACT512_KB`] rows of `16V` floats (zero past `w`).
        ///
        /// # Safety
        /// `j + w ≤ n`; the CPU supports AVX-512F.
        #[target_feature(enable = "avx512f")]
        unsafe fn strip512<const V: usize>(&self, j: usize, w: usize) {
            const { assert!(V == 1 || V == 2) };
            let mut panel = Aligned::<{ EXACT512_KB * 32 }>::uninit();
            let dst = panel.as_mut().as_mut_ptr().cast::<f32>();
            let masks: [__mmask16; V] = core::array::from_fn(|v| lanes(w.saturating_sub(16 * v)));
            let mut p0 = 0;
            loop {
                let p1 = (p0 + EXACT512_KB).min(self.k);
                // SAFETY: B(p, j..j+w) for p < p1 ≤ k is in `b` (masked lanes are not read);
                // the packed rows (p - p0)·16V.. fit the buffer because p1 - p0 ≤ EXACT512_KB
                // and 16V ≤ 32. The tiles read only these rows; rows i..i+R ≤ m, columns
                // j..j+w ≤ n.
                unsafe {
                    for p in p0..p1 {
                        let src = self.b.add(p * self.ld + j);
                        let row = dst.add((p - p0) * 16 * V);
                        for (v, &mask) in masks.iter().enumerate() {
                            let x = _mm512_maskz_loadu_ps(mask, src.add(16 * v));
                            _mm512_store_ps(row.add(16 * v), x);
                        }
                    }
                    let mut i = 0;
                    while i + 8 <= self.m {
                        self.tile512::<8, V>(dst, i, j, &masks, p0, p1);
                        i += 8;
                    }
                    while i + 4 <= self.m {
                        self.tile512::<4, V>(dst, i, j, &masks, p0, p1);
                        i += 4;
                    }
                    while i < self.m {
                        self.tile512::<1, V>(dst, i, j, &masks, p0, p1);
                        i += 1;
                    }
                }
                if p1 == self.k {
                    break;
                }
                p0 = p1;
            }
        }

        /// Outputs `C(i..i+R, j..)` of the lanes in `masks` over `p` in `p0..p1`, reading
        /// `B(p, j + l)` from `panel[(p - p0)·16V + l]`: starts from 0 when `p0 == 0`, otherwise
        /// from the running sums parked in `C`; adds the bias when `p1 == k`.
        ///
        /// # Safety
        /// `i + R ≤ m`, the masked columns of `C` and `bias` from `j` are inside `n`,
        /// `p0 ≤ p1 ≤ k`, `panel` holds the packed rows; the CPU supports AVX-512F.
        #[target_feature(enable = "avx512f")]
        unsafe fn tile512<const R: usize, const V: usize>(
            &self,
            panel: *const f32,
            i: usize,
            j: usize,
            masks: &[__mmask16; V],
            p0: usize,
            p1: usize,
        ) {
            let (k, ld) = (self.k, self.ld);
            // SAFETY (whole body): A(i+r, p), the packed rows and the masked lanes of
            // C(i+r, j..) and bias[j..] are in bounds for r < R, p0 ≤ p < p1 ≤ k (contract).
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); V]; R];
                if p0 > 0 {
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        for (v, s) in acc_r.iter_mut().enumerate() {
                            let cp = self.c.add((i + r) * ld + j + 16 * v);
                            *s = _mm512_maskz_loadu_ps(masks[v], cp);
                        }
                    }
                }
                let arow = self.a.add(i * k);
                let mut bp = panel;
                for p in p0..p1 {
                    let mut bv = [_mm512_setzero_ps(); V];
                    for (v, x) in bv.iter_mut().enumerate() {
                        *x = _mm512_load_ps(bp.add(16 * v));
                    }
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let av = _mm512_set1_ps(*arow.add(r * k + p));
                        for (s, &y) in acc_r.iter_mut().zip(&bv) {
                            *s = _mm512_add_ps(*s, _mm512_mul_ps(av, y));
                        }
                    }
                    bp = bp.wrapping_add(16 * V);
                }
                let last = p1 == k;
                for (r, acc_r) in acc.iter().enumerate() {
                    for (v, &s) in acc_r.iter().enumerate() {
                        let out = if last {
                            _mm512_add_ps(
                                s,
                                _mm512_maskz_loadu_ps(masks[v], self.bias.add(j + 16 * v)),
                            )
                        } else {
                            s
                        };
                        _mm512_mask_storeu_ps(self.c.add((i + r) * ld + j + 16 * v), masks[v], out);
                    }
                }
            }
        }

        /// [`Exact::row_stream`] on 16-wide vectors, the last vector of the row masked.
        ///
        /// # Safety
        /// `i < m`; the CPU supports AVX-512F.
        #[target_feature(enable = "avx512f")]
        unsafe fn row_stream512(&self, i: usize) {
            const ROWS: usize = 8;
            let (k, n, ld) = (self.k, self.n, self.ld);
            // SAFETY (whole body): A(i, p) for p < k, and the masked lanes of B(p, j..),
            // C(i, j..) and bias[j..] for p < k and j < n are in bounds.
            unsafe {
                let arow = self.a.add(i * k);
                let crow = self.c.add(i * ld);
                let zero = _mm512_setzero_ps();
                for j in (0..n).step_by(16) {
                    _mm512_mask_storeu_ps(crow.add(j), lanes(n - j), zero);
                }
                let mut p = 0;
                while p + ROWS <= k {
                    let av: [__m512; ROWS] =
                        core::array::from_fn(|q| _mm512_set1_ps(*arow.add(p + q)));
                    let rows: [*const f32; ROWS] =
                        core::array::from_fn(|q| self.b.add((p + q) * ld));
                    for j in (0..n).step_by(16) {
                        let mask = lanes(n - j);
                        let mut s = _mm512_maskz_loadu_ps(mask, crow.add(j));
                        for q in 0..ROWS {
                            let y = _mm512_maskz_loadu_ps(mask, rows[q].add(j));
                            s = _mm512_add_ps(s, _mm512_mul_ps(av[q], y));
                        }
                        _mm512_mask_storeu_ps(crow.add(j), mask, s);
                    }
                    p += ROWS;
                }
                while p + 4 <= k {
                    let av: [__m512; 4] =
                        core::array::from_fn(|q| _mm512_set1_ps(*arow.add(p + q)));
                    let rows: [*const f32; 4] = core::array::from_fn(|q| self.b.add((p + q) * ld));
                    for j in (0..n).step_by(16) {
                        let mask = lanes(n - j);
                        let mut s = _mm512_maskz_loadu_ps(mask, crow.add(j));
                        for q in 0..4 {
                            let y = _mm512_maskz_loadu_ps(mask, rows[q].add(j));
                            s = _mm512_add_ps(s, _mm512_mul_ps(av[q], y));
                        }
                        _mm512_mask_storeu_ps(crow.add(j), mask, s);
                    }
                    p += 4;
                }
                while p < k {
                    let av = _mm512_set1_ps(*arow.add(p));
                    let row = self.b.add(p * ld);
                    for j in (0..n).step_by(16) {
                        let mask = lanes(n - j);
                        let y = _mm512_maskz_loadu_ps(mask, row.add(j));
                        let s = _mm512_add_ps(
                            _mm512_maskz_loadu_ps(mask, crow.add(j)),
                            _mm512_mul_ps(av, y),
                        );
                        _mm512_mask_storeu_ps(crow.add(j), mask, s);
                    }
                    p += 1;
                }
                for j in (0..n).step_by(16) {
                    let mask = lanes(n - j);
                    let s = _mm512_add_ps(
                        _mm512_maskz_loadu_ps(mask, crow.add(j)),
                        _mm512_maskz_loadu_ps(mask, self.bias.add(j)),
                    );
                    _mm512_mask_storeu_ps(crow.add(j), mask, s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Lcg;
    use std::sync::atomic::AtomicUsize;
    use std::vec;
    use std::vec::Vec;

    /// Runs tasks on `self.0` scoped threads that pull task indices from a shared counter.
    struct Threads(usize);

    impl Exec for Threads {
        fn threads(&self) -> usize {
            self.0
        }
        fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
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

    /// Every instruction set this machine can run.
    fn train_isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        if x86::has_avx2_fma() {
            v.push(Isa::Avx2Fma);
        }
        #[cfg(target_arch = "x86_64")]
        if x86::has_avx512() {
            v.push(Isa::Avx512);
        }
        v
    }

    fn exact_isas() -> Vec<ExactIsa> {
        let mut v = vec![ExactIsa::Portable];
        #[cfg(target_arch = "x86_64")]
        if x86::has_avx() {
            v.push(ExactIsa::Avx);
        }
        #[cfg(target_arch = "x86_64")]
        if x86::has_avx512() {
            v.push(ExactIsa::Avx512);
        }
        v
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
        kind: Kind,
        c: &mut [f32],
        a: &[f32],
        b: &[f32],
        s: (usize, usize, usize),
        acc: bool,
    ) {
        let (m, k, n) = s;
        match kind {
            Kind::Nn => reference::matmul(c, a, b, m, k, n, acc),
            Kind::Tn => reference::matmul_tn(c, a, b, m, k, n, acc),
            Kind::Nt => reference::matmul_nt(c, a, b, m, k, n, acc),
        }
    }

    fn gemm_of<'s>(
        kind: Kind,
        a: &'s [f32],
        b: &'s [f32],
        s: (usize, usize, usize),
        acc: bool,
    ) -> Gemm<'s> {
        let (m, k, n) = s;
        match kind {
            Kind::Nn => Gemm::new(a, (k, 1), b, (n, 1), s, acc),
            Kind::Tn => Gemm::new(a, (1, m), b, (n, 1), s, acc),
            Kind::Nt => Gemm::new(a, (k, 1), b, (1, k), s, acc),
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
            for kind in [Kind::Nn, Kind::Tn, Kind::Nt] {
                for &s in SHAPES {
                    let (m, k, n) = s;
                    let a = random(m * k, 20);
                    let b = random(k * n, 21);
                    let c0 = random(m * n, 22);
                    let g = gemm_of(kind, &a, &b, s, true);
                    let mut one = c0.clone();
                    gemm_tasks(isa, &g, &mut one, &Serial, 1);
                    for tasks in [2, 3, 5, 64] {
                        let mut many = c0.clone();
                        gemm_tasks(isa, &g, &mut many, &pool, tasks);
                        let same = one
                            .iter()
                            .zip(&many)
                            .all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{isa:?} {kind:?} {s:?} with {tasks} tasks");
                    }
                }
            }
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
        struct Twice;
        impl Exec for Twice {
            fn threads(&self) -> usize {
                3
            }
            fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
                for t in (0..tasks).rev().chain(0..tasks) {
                    f(t);
                }
            }
        }
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
            let same = got
                .iter()
                .zip(&want)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{isa:?}");
        }
        let mut got = vec![0.0; m * n];
        matmul_exact(&mut got, &a, &b, &bias, m, k, n);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
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
