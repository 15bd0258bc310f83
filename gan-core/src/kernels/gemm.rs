//! The training kernels: one blocked driver over strided operands, and the portable
//! micro-kernel. The x86-64 micro-kernels are in [`super::x86`].

use core::mem::MaybeUninit;

#[cfg(target_has_atomic = "8")]
use super::split::split_ranges;
use super::split::{MAX_TASKS, OutPtr};
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{Exec, Isa, len_of};

/// One training product `C (m×n) (+)= A·B` with the operands seen through strides:
/// `A(i, p) = a[i·ars + p·acs]` and `B(p, j) = b[p·brs + j·bcs]`.
///
/// Invariant (checked in [`Gemm::new`]): every `A(i, p)` with `i < m, p < k` and every
/// `B(p, j)` with `p < k, j < n` lies inside its slice.
#[derive(Clone, Copy)]
pub(crate) struct Gemm<'s> {
    pub(crate) a: &'s [f32],
    pub(crate) ars: usize,
    pub(crate) acs: usize,
    pub(crate) b: &'s [f32],
    pub(crate) brs: usize,
    pub(crate) bcs: usize,
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) accumulate: bool,
}

impl<'s> Gemm<'s> {
    /// `a_strides`/`b_strides` are (row, column) strides; every layout used here is one of the
    /// two orders of an `m×k` (resp. `k×n`) matrix, each line contiguous and the lines at
    /// least a line apart (a leading dimension, as a matrix inside a wider one has), so the
    /// length checks below cover every index the strides can form.
    pub(crate) fn new(
        a: &'s [f32], (ars, acs): (usize, usize), b: &'s [f32], (brs, bcs): (usize, usize),
        (m, k, n): (usize, usize, usize), accumulate: bool,
    ) -> Self {
        assert!(a.len() >= strided_len(m, k, ars, acs), "A is shorter than m×k");
        assert!(b.len() >= strided_len(k, n, brs, bcs), "B is shorter than k×n");
        Gemm { a, ars, acs, b, brs, bcs, m, k, n, accumulate }
    }
}

/// Elements a `rows × cols` matrix with (row, column) strides `(rs, cs)` spans: one past its
/// last element. Panics unless one stride is 1 and the other at least the length of the
/// lines it separates (rows of `cols`, or columns of `rows`), or on overflow.
fn strided_len(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    assert!((cs == 1 && rs >= cols) || (rs == 1 && cs >= rows), "unsupported matrix strides");
    if rows == 0 || cols == 0 {
        return 0;
    }
    let last = len_of(rows - 1, rs).checked_add(len_of(cols - 1, cs));
    last.and_then(|l| l.checked_add(1)).expect("matrix size overflows usize")
}

/// One `MR × NR` tile of work for a micro-kernel.
///
/// The micro-kernel computes `C(r, c) (+)= Σ_{p < kc} Ap(p, r)·Bp(p, c)` for `r < rows`,
/// `c < cols`, where `Ap(p, r) = a[p·lda + r]` is a micro-panel of `A` (packed, `lda = MR`,
/// or read in place from an `A` stored transposed),
/// `Bp(p, c) = b[p·NR + c]` a packed panel of `B` (zero-padded to `NR` columns) and
/// `C(r, c) = c[r·ldc + c]`. With `add` the sum is added to the existing `C`, otherwise it
/// overwrites it.
pub(crate) struct Tile {
    pub(crate) kc: usize,
    pub(crate) a: *const f32,
    pub(crate) lda: usize,
    pub(crate) b: *const f32,
    pub(crate) c: *mut f32,
    pub(crate) ldc: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) add: bool,
}

/// A register-blocked micro-kernel and its blocking parameters.
pub(crate) trait Micro {
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
    /// allocation, `C` elements must not be accessed by anyone else meanwhile, `Bp` (and `Ap`
    /// when packed) must be 64-byte aligned (as [`Aligned`] makes them) and hold the elements
    /// packing wrote, and the CPU must support the kernel's instructions.
    unsafe fn tile(t: &Tile);
    /// Packs a block of rows of `A`, as [`pack_a`] does.
    fn pack_a(
        panel: &mut [MaybeUninit<f32>], g: &Gemm<'_>, ic: usize, mc: usize, pc: usize, kc: usize,
    );
    /// Packs a panel of `B`, as [`pack_b`] does.
    ///
    /// # Safety
    /// The CPU must support the kernel's instructions.
    unsafe fn pack_b(
        panel: &mut [MaybeUninit<f32>], g: &Gemm<'_>, pc: usize, kc: usize, jc: usize, cols: usize,
    );
}

/// A 64-byte-aligned stack buffer, left uninitialised (zeroing up to 112 KiB per call would
/// cost more than small products do). The packing functions only write to it; micro-kernels
/// read only elements that packing has written (see [`pack_a`] and [`pack_b`]).
#[repr(C, align(64))]
pub(crate) struct Aligned<const N: usize>([MaybeUninit<f32>; N]);

impl<const N: usize> Aligned<N> {
    pub(crate) fn uninit() -> Self {
        Aligned([const { MaybeUninit::uninit() }; N])
    }
}

impl<const N: usize> AsMut<[MaybeUninit<f32>]> for Aligned<N> {
    fn as_mut(&mut self) -> &mut [MaybeUninit<f32>] {
        &mut self.0
    }
}

/// Products smaller than this many flops run as one task: spreading them costs more than it saves.
pub(crate) const PAR_MIN_FLOPS: usize = 1 << 21;

/// Columns per packed panel of `B` (tasks split the columns in half panels).
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
pub(crate) fn gemm(isa: Isa, g: &Gemm<'_>, c: &mut [f32], exec: &dyn Exec) {
    if g.n == 1 && g.m > 1 {
        // A matrix times a vector (a one-logit layer) as its transpose: `C (m×1)` is the row
        // `Cᵀ = Bᵀ·Aᵀ (1×m)` in the same memory. Each output is the same sum of the same
        // products over the same summation blocks (only the two factors of each product trade
        // places), so the bits are the same, but `A` is packed as a panel of `B` (no scatter)
        // and the tiles run along `m` instead of 16-wide panels with one useful column.
        // `B`'s one column is `b[p·brs]` (contiguous unless it sits in a wider matrix).
        let bt = if g.brs == 1 { (g.k, 1) } else { (1, g.brs) };
        let t = Gemm::new(g.b, bt, g.a, (g.acs, g.ars), (1, g.k, g.m), g.accumulate);
        return gemm(isa, &t, c, exec);
    }
    let nr = panel_width(isa);
    let threads = exec.threads().clamp(1, MAX_TASKS);
    let flops = g.m.saturating_mul(g.k).saturating_mul(g.n).saturating_mul(2);
    let tasks =
        if threads == 1 || flops < PAR_MIN_FLOPS { 1 } else { threads.min(g.n.div_ceil(nr)) };
    gemm_tasks(isa, g, c, exec, tasks);
}

/// Runs the product as (at most) `tasks` tasks over disjoint blocks of output columns.
pub(crate) fn gemm_tasks(isa: Isa, g: &Gemm<'_>, c: &mut [f32], exec: &dyn Exec, tasks: usize) {
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
    let out = OutPtr::new(c);
    let panels = n.div_ceil(nr);
    let tasks = tasks.clamp(1, MAX_TASKS).min(panels);
    // Claiming tasks needs atomic read-modify-write; targets without it (ARMv6-M) have no
    // threads to spread the work over anyway.
    #[cfg(target_has_atomic = "8")]
    if tasks > 1 {
        run_tasks(isa, g, &out, exec, share(n, tasks, nr));
        return;
    }
    let _ = (exec, tasks);
    // SAFETY: `out` covers `m·n` elements of `c`, borrowed mutably for this call; the one task
    // touches all of it and nothing else does.
    unsafe { run_cols(isa, g, &out, 0, n) };
}

/// Columns per task when `tasks` share `n` columns of `nr`-wide panels: equal shares in half
/// panels (the narrowest tile that still fills its vectors). In whole panels, 392 columns of
/// 32-wide panels went as 224 + 168: the first task ran 14 % longer than an even share while
/// the other thread waited. Where a column falls does not change its sums, so neither does the
/// split.
#[cfg_attr(not(target_has_atomic = "8"), allow(dead_code))]
fn share(n: usize, tasks: usize, nr: usize) -> usize {
    let half = (nr / 2).max(1);
    n.div_ceil(tasks.max(1) * half) * half
}

/// `C (m×n) += Σ_s G_s` over the products `gs[s]` (all `m×n`, all accumulating), added in order
/// `s = 0, 1, …`. Tasks split the output columns (see [`share`]); each one runs every product on
/// its columns in turn, so every output sees the same operations as it would from one call of
/// [`gemm`] per product: the bits do not depend on how the products are grouped or on `exec`.
pub(crate) fn gemm_sum<'s>(
    isa: Isa, count: usize, gs: &(dyn Fn(usize) -> Gemm<'s> + Sync), c: &mut [f32], exec: &dyn Exec,
) {
    if count == 0 {
        return;
    }
    let g0 = gs(0);
    let (m, k, n) = (g0.m, g0.k, g0.n);
    assert!(c.len() >= len_of(m, n), "C is shorter than m×n");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // Every product adds +0.0 (see `gemm_tasks`); once is the same as `count` times.
        return gemm_tasks(isa, &g0, c, &super::Serial, 1);
    }
    let nr = panel_width(isa);
    let panels = n.div_ceil(nr);
    let threads = exec.threads().clamp(1, MAX_TASKS);
    let flops = m.saturating_mul(k).saturating_mul(n).saturating_mul(2).saturating_mul(count);
    let tasks = if threads == 1 || flops < PAR_MIN_FLOPS { 1 } else { threads.min(panels) };
    let out = OutPtr::new(c);
    let run = |j0: usize, j1: usize| {
        for s in 0..count {
            let g = gs(s);
            assert!(g.accumulate && (g.m, g.k, g.n) == (m, k, n), "products differ in shape");
            // SAFETY: `out` covers `m·n` elements of `c`, borrowed mutably for this call; the
            // columns `[j0, j1)` belong to this task alone (see `run_tasks`).
            unsafe { run_cols(isa, &g, &out, j0, j1) };
        }
    };
    #[cfg(target_has_atomic = "8")]
    if tasks > 1 {
        // SAFETY of the writes inside `run`: `split_ranges` hands each column range out once.
        split_ranges(exec, n, share(n, tasks, nr), &run);
        return;
    }
    let _ = (exec, tasks);
    run(0, n);
}

/// Runs the product as tasks over blocks of `chunk` output columns (from [`share`]: a multiple
/// of half the panel width, so a task's last panel can be narrow).
#[cfg(target_has_atomic = "8")]
fn run_tasks(isa: Isa, g: &Gemm<'_>, out: &OutPtr, exec: &dyn Exec, chunk: usize) {
    // SAFETY: `split_ranges` hands each column range to one call only, see `OutPtr`; the
    // caller keeps `C` mutably borrowed until it has returned.
    split_ranges(exec, g.n, chunk, &|j0, j1| unsafe {
        run_cols(isa, g, out, j0, j1);
    });
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
    // An A stored transposed (`ars == 1`) already has each micro-panel's values of one `p`
    // side by side: the tiles read it in place, `acs` apart, and nothing is packed — unless
    // `acs` is a multiple of 1 KiB and many panels reread it: then the `kc` steps of a tile
    // fall into a few L1 sets and evict each other (a weight gradient of a 1024-wide layer ran
    // at 75 % of the packed speed), and packing it once is cheaper.
    let in_place = g.ars == 1 && !(g.acs.is_multiple_of(256) && j1 - j0 >= 4 * K::NR);
    if !in_place && blocked_pays::<K>(g, pa.len(), j1 - j0) {
        // SAFETY: forwarded.
        return unsafe { drive_blocked::<K>(g, pa, out, j0, j1) };
    }
    let mut pc = 0;
    while pc < g.k {
        let kc = K::KC.min(g.k - pc);
        // The first block overwrites C unless the caller accumulates; later blocks add to it.
        let add = g.accumulate || pc > 0;
        let mc_max = if in_place { g.m } else { rows_per_block::<K>(pa.len(), kc) };
        let mut ic = 0;
        while ic < g.m {
            let mc = mc_max.min(g.m - ic);
            if !in_place {
                K::pack_a(pa, g, ic, mc, pc, kc);
            }
            let mut jc = j0;
            while jc < j1 {
                let cols = K::NR.min(j1 - jc);
                // SAFETY: the caller vouches for the CPU features.
                unsafe { K::pack_b(pb, g, pc, kc, jc, cols) };
                // SAFETY: the panel holds kc rows of NR floats, packed just above, aligned by
                // `Aligned`; the rest is forwarded.
                unsafe {
                    tiles::<K>(g, pa, in_place, pb, out, (pc, kc), (ic, mc), (jc, cols), add);
                };
                jc += cols;
            }
            ic += mc;
        }
        pc += kc;
    }
}

/// Rows of `A` packed at once: as many whole micro-panels as a buffer of `pa_len` floats holds
/// at the summation block length `kc`.
fn rows_per_block<K: Micro>(pa_len: usize, kc: usize) -> usize {
    pa_len / kc / K::MR * K::MR
}

/// Floats of packed `B` that [`drive_blocked`] keeps at once (256 KiB: a summation block of a
/// few hundred columns, which stays in L2 while every block of rows of `A` runs over it; 8 KiB
/// on 32-bit targets, whose stacks are small).
#[cfg(target_pointer_width = "64")]
const BLOCK_B: usize = 1 << 16;
#[cfg(not(target_pointer_width = "64"))]
const BLOCK_B: usize = 1 << 11;

/// Whether packing blocks of `B` once, for all blocks of rows of `A`, moves fewer floats than
/// packing each panel of `B` again for every block of rows of `A` (`pa_len`: floats of the
/// `A` buffer, `cols`: this call's columns). Blocks of `B` of this call's width may in turn
/// need `A` packed again for each of them; both counts are per summation block.
fn blocked_pays<K: Micro>(g: &Gemm<'_>, pa_len: usize, cols: usize) -> bool {
    let kc = K::KC.min(g.k);
    let row_blocks = g.m.div_ceil(rows_per_block::<K>(pa_len, kc));
    if row_blocks < 2 || BLOCK_B < K::KC * K::NR {
        return false;
    }
    let col_blocks = cols.div_ceil(BLOCK_B / (kc * K::NR) * K::NR);
    (row_blocks - 1) * cols > (col_blocks - 1) * g.m
}

/// [`drive`] for products whose `A` takes several blocks of rows: summation blocks, then
/// blocks of columns whose panels of `B` are packed once into a [`BLOCK_B`] buffer, then blocks
/// of rows of `A` (packed), then the panels of the block and their tiles. Every output sees
/// the same tiles over the same summation blocks in the same order as in [`drive`]: the bits
/// are the same.
///
/// # Safety
/// As [`drive`]; `pa` is `K`'s buffer for `A`.
#[inline(never)]
unsafe fn drive_blocked<K: Micro>(
    g: &Gemm<'_>, pa: &mut [MaybeUninit<f32>], out: &OutPtr, j0: usize, j1: usize,
) {
    let mut block = Aligned::<BLOCK_B>::uninit();
    let block = block.as_mut();
    let mut pc = 0;
    while pc < g.k {
        let kc = K::KC.min(g.k - pc);
        let add = g.accumulate || pc > 0;
        let panel = kc * K::NR;
        let block_cols = block.len() / panel * K::NR;
        let mc_max = rows_per_block::<K>(pa.len(), kc);
        let mut jb = j0;
        while jb < j1 {
            let jb_end = j1.min(jb + block_cols);
            let mut jc = jb;
            while jc < jb_end {
                let cols = K::NR.min(jb_end - jc);
                let at = (jc - jb) / K::NR * panel;
                // SAFETY: the caller vouches for the CPU features; panel `(jc − jb) / NR` of
                // the block fits it (`block_cols` columns in whole panels).
                unsafe { K::pack_b(&mut block[at..at + panel], g, pc, kc, jc, cols) };
                jc += cols;
            }
            let mut ic = 0;
            while ic < g.m {
                let mc = mc_max.min(g.m - ic);
                K::pack_a(pa, g, ic, mc, pc, kc);
                let mut jc = jb;
                while jc < jb_end {
                    let cols = K::NR.min(jb_end - jc);
                    let pb = &block[(jc - jb) / K::NR * panel..];
                    // SAFETY: the block's panel at `(jc − jb) / NR` holds kc rows of NR
                    // floats packed above, 64-byte aligned (`Aligned`, and `panel` is a
                    // multiple of 16 floats); the rest is forwarded.
                    unsafe {
                        tiles::<K>(g, pa, false, pb, out, (pc, kc), (ic, mc), (jc, cols), add);
                    };
                    jc += cols;
                }
                ic += mc;
            }
            jb = jb_end;
        }
        pc += kc;
    }
}

/// The tiles of one block of rows `(ic, mc)` of `A` (packed in `pa`, or in place) against one
/// packed panel `pb` of `B` (columns `(jc, cols)`), over the summation block `(pc, kc)`.
///
/// # Safety
/// As [`drive`]; `pb` holds the panel of `B(pc..pc+kc, jc..jc+cols)` as [`Micro::pack_b`]
/// writes it, 64-byte aligned; `pa` holds rows `ic..ic+mc` as [`Micro::pack_a`] writes them
/// unless `in_place`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles<K: Micro>(
    g: &Gemm<'_>, pa: &[MaybeUninit<f32>], in_place: bool, pb: &[MaybeUninit<f32>], out: &OutPtr,
    (pc, kc): (usize, usize), (ic, mc): (usize, usize), (jc, cols): (usize, usize), add: bool,
) {
    let mut ir = 0;
    while ir < mc {
        let rows = K::MR.min(mc - ir);
        // SAFETY: (offsets)  micro-panel `ir / MR` starts at `ir·kc` in `pa` (it holds `mc·kc`
        // floats), or in place at A(ic + ir, pc), inside `a` (Gemm invariant); (ic + ir, jc)
        // is inside the m×n matrix at `out`.
        let (a, lda) = unsafe {
            if in_place {
                (g.a.as_ptr().add(pc * g.acs + ic + ir), g.acs)
            } else {
                (pa.as_ptr().cast::<f32>().add(ir * kc), K::MR)
            }
        };
        // SAFETY: as above.
        let t = unsafe {
            Tile {
                kc,
                a,
                lda,
                b: pb.as_ptr().cast::<f32>(),
                c: out.ptr.add((ic + ir) * g.n + jc),
                ldc: g.n,
                rows,
                cols,
                add,
            }
        };
        // SAFETY: the packed panels hold kc rows (kc ≤ KC) of MR resp. NR floats and are
        // aligned (an in-place A has its `rows` values of each of the kc steps in `a`);
        // rows/cols stay inside this call's columns of C; the caller vouches for the CPU
        // features and for exclusive access.
        unsafe { K::tile(&t) };
        ir += rows;
    }
}

/// Packs `A(ic..ic+mc, pc..pc+kc)` into `panel` as micro-panels of `MR` rows: row `ic + ir + r`
/// (`ir` a multiple of `MR`) and column `pc + p` go to `panel[ir·kc + p·MR + r]`. Rows past `mc`
/// in the last micro-panel stay unwritten: a tile with `rows < MR` never reads them. An `A`
/// stored transposed is usually read in place instead (see [`drive`]).
pub(crate) fn pack_a<const MR: usize>(
    panel: &mut [MaybeUninit<f32>], g: &Gemm<'_>, ic: usize, mc: usize, pc: usize, kc: usize,
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
                // A stored transposed: the micro-panel's values of one step are side by side
                // (A(i, p) = a[p·acs + i]).
                for p in 0..kc {
                    let s = src.add((pc + p) * g.acs + ic + ir);
                    if rows == MR {
                        *(d.add(p * mr) as *mut [f32; MR]) = *(s as *const [f32; MR]);
                    } else {
                        core::ptr::copy_nonoverlapping(s, d.add(p * mr), rows);
                    }
                }
            } else {
                // Read each row contiguously, scatter it.
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
pub(crate) fn pack_b<const NR: usize>(
    panel: &mut [MaybeUninit<f32>], g: &Gemm<'_>, pc: usize, kc: usize, jc: usize, cols: usize,
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
                // The next panel's part of this row, towards L2 while the tiles of this panel
                // run: a weight matrix is read once per product, mostly from L3.
                #[cfg(target_arch = "x86_64")]
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>(
                    s.wrapping_add(NR).cast::<i8>(),
                );
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
pub(crate) unsafe fn store_row<const NR: usize>(
    c: *mut f32, row: &[f32; NR], cols: usize, add: bool,
) {
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
        panel: &mut [MaybeUninit<f32>], g: &Gemm<'_>, ic: usize, mc: usize, pc: usize, kc: usize,
    ) {
        pack_a::<4>(panel, g, ic, mc, pc, kc);
    }
    unsafe fn pack_b(
        panel: &mut [MaybeUninit<f32>], g: &Gemm<'_>, pc: usize, kc: usize, jc: usize, cols: usize,
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
    const NR: usize = 8;
    let mut acc = [[0.0f32; NR]; R];
    let mut a = t.a;
    let mut b = t.b;
    for _ in 0..t.kc {
        // SAFETY: `a` walks the micro-panel (R ≤ MR floats per step, `lda` apart), `b` the
        // packed panel (kc rows of NR floats, aligned).
        let (av, bv) = unsafe { (*(a as *const [f32; R]), *(b as *const [f32; NR])) };
        for (acc_r, &x) in acc.iter_mut().zip(&av) {
            for (s, &y) in acc_r.iter_mut().zip(&bv) {
                *s += x * y;
            }
        }
        // Wrapping: after the last step these may point past the end of the buffers (unused).
        a = a.wrapping_add(t.lda);
        b = b.wrapping_add(NR);
    }
    for (r, acc_r) in acc.iter().enumerate() {
        // SAFETY: row r < rows of this tile's C, columns < cols.
        unsafe { store_row(t.c.add(r * t.ldc), acc_r, t.cols, t.add) };
    }
}
