//! The exact kernel on x86-64, written once over the vector width and compiled for AVX
//! (8 lanes) and AVX-512F (16 lanes).
//!
//! Each lane is one output, and every step is a separate multiply and add (no FMA is enabled in
//! these functions), which rounds exactly like the scalar `s += a·b`:
//! - from 4 rows up: strips of two vectors' width; within a strip, blocks of `B`'s rows are
//!   packed into a 16 KiB stack buffer (so the block stays in L1 whatever the row stride) and
//!   used by tiles of every row (4 and 1 rows with AVX; 8, 4 and 1 with AVX-512's 32
//!   registers). Between blocks a tile parks its running sums in `C`: storing an f32 and
//!   loading it back is exact;
//! - fewer rows (batch-1 inference, where every weight is used once): each row of `C` is its
//!   own accumulator and `B` is read front to back, several rows per pass (4 with AVX; 8, then
//!   4, with AVX-512), which keeps the hardware prefetchers streaming.
//!
//! Either way every output sees `((0 + a0·b0) + a1·b1) + …` in order, then `+ bias`. The last
//! vector of a row may be partial; it is read and written lane by lane ([`Simd::load_n`],
//! [`Simd::store_n`]).

use super::simd::{Avx, Avx512, Simd};
use crate::kernels::exact::Exact;
use crate::kernels::gemm::Aligned;

/// Blocking of the exact kernel for one instruction set.
trait Blocking: Simd {
    /// Rows of the largest tile.
    const TILE_ROWS: usize;
    /// Rows of `B` per pass of the streaming (batch-1) kernel.
    const STREAM_ROWS: usize;
    /// Rows of `B` per packed block of a strip (the block fills [`PANEL`] floats).
    const KB: usize;
}

impl Blocking for Avx {
    const TILE_ROWS: usize = 4;
    const STREAM_ROWS: usize = 4;
    const KB: usize = PANEL / 16;
}

impl Blocking for Avx512 {
    const TILE_ROWS: usize = 8;
    const STREAM_ROWS: usize = 8;
    const KB: usize = PANEL / 32;
}

/// Floats in a strip's packed block of `B` (16 KiB).
const PANEL: usize = 4096;

/// Exact kernel with AVX.
///
/// # Safety
/// `e` satisfies [`Exact`]'s contract; the CPU supports AVX.
#[target_feature(enable = "avx")]
pub(crate) unsafe fn exact_avx(e: &Exact) {
    // SAFETY: forwarded; AVX is enabled here.
    unsafe { run::<Avx>(e) }
}

/// Exact kernel with AVX-512F.
///
/// # Safety
/// `e` satisfies [`Exact`]'s contract; the CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exact_avx512(e: &Exact) {
    // SAFETY: forwarded; AVX-512F is enabled here.
    unsafe { run::<Avx512>(e) }
}

/// The whole product: streaming rows below 4 rows, strips of tiles from 4 rows up.
///
/// # Safety
/// `e` satisfies its contract; the caller runs with `S`'s instruction set.
#[inline(always)]
unsafe fn run<S: Blocking>(e: &Exact) {
    let wide = 2 * S::LANES;
    // SAFETY: (whole body)  strips cover columns j..j+w ≤ n, rows i < m.
    unsafe {
        if e.m < 4 {
            for i in 0..e.m {
                row_stream::<S>(e, i);
            }
            return;
        }
        let mut j = 0;
        while j < e.n {
            let w = (e.n - j).min(wide);
            if w > S::LANES {
                strip::<S, 2>(e, j, w);
            } else {
                strip::<S, 1>(e, j, w);
            }
            j += w;
        }
    }
}

/// All rows, columns `j..j+w` with `LANES·(V − 1) < w ≤ LANES·V` (`V` ≤ 2), `B` packed in
/// blocks of `KB` rows of `V` vectors (zero past `w`).
///
/// # Safety
/// `j + w ≤ n`; the caller runs with `S`'s instruction set.
#[inline(always)]
unsafe fn strip<S: Blocking, const V: usize>(e: &Exact, j: usize, w: usize) {
    const { assert!(V == 1 || V == 2) };
    let l = S::LANES;
    let mut panel = Aligned::<PANEL>::uninit();
    let dst = panel.as_mut().as_mut_ptr().cast::<f32>();
    let widths: [usize; V] = core::array::from_fn(|v| w - l * v);
    let mut p0 = 0;
    loop {
        let p1 = (p0 + S::KB).min(e.k);
        // SAFETY: B(p, j..j+w) for p < p1 ≤ k is in `b` (partial lanes are not read); the
        // packed rows (p − p0)·LANES·V.. fit the buffer because p1 − p0 ≤ KB and
        // KB·LANES·V ≤ PANEL, and they are vector-aligned because the buffer is 64-byte
        // aligned and a row is V whole vectors. The tiles read only these rows; rows
        // i..i+R ≤ m, columns j..j+w ≤ n.
        unsafe {
            for p in p0..p1 {
                let src = e.b.add(p * e.ld + j);
                let row = dst.add((p - p0) * l * V);
                for (v, &wv) in widths.iter().enumerate() {
                    S::store(row.add(l * v), S::load_n(src.add(l * v), wv));
                }
            }
            let mut i = 0;
            if S::TILE_ROWS == 8 {
                while i + 8 <= e.m {
                    tile::<S, 8, V>(e, dst, i, j, &widths, p0, p1);
                    i += 8;
                }
            }
            while i + 4 <= e.m {
                tile::<S, 4, V>(e, dst, i, j, &widths, p0, p1);
                i += 4;
            }
            while i < e.m {
                tile::<S, 1, V>(e, dst, i, j, &widths, p0, p1);
                i += 1;
            }
        }
        if p1 == e.k {
            break;
        }
        p0 = p1;
    }
}

/// Outputs `C(i..i+R, j..)` of the `widths[v]` lanes of each vector over `p` in `p0..p1`,
/// reading `B(p, j + l)` from `panel[(p − p0)·LANES·V + l]`: starts from 0 when `p0 == 0`,
/// otherwise from the running sums parked in `C`; adds the bias when `p1 == k`.
///
/// # Safety
/// `i + R ≤ m`, the lanes of `C` and `bias` from `j` are inside `n`, `p0 ≤ p1 ≤ k`, `panel`
/// holds the packed rows; the caller runs with `S`'s instruction set.
#[inline(always)]
unsafe fn tile<S: Simd, const R: usize, const V: usize>(
    e: &Exact, panel: *const f32, i: usize, j: usize, widths: &[usize; V], p0: usize, p1: usize,
) {
    let (k, ld, l) = (e.k, e.ld, S::LANES);
    // SAFETY: (whole body)  A(i+r, p), the packed rows and the lanes of C(i+r, j..) and
    // bias[j..] are in bounds for r < R, p0 ≤ p < p1 ≤ k (contract).
    unsafe {
        let mut acc = [[S::zero(); V]; R];
        if p0 > 0 {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                for (v, s) in acc_r.iter_mut().enumerate() {
                    *s = S::load_n(e.c.add((i + r) * ld + j + l * v), widths[v]);
                }
            }
        }
        let arow = e.a.add(i * k);
        let mut bp = panel;
        for p in p0..p1 {
            let mut bv = [S::zero(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = S::load(bp.add(l * v));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = S::splat(arow.add(r * k + p));
                for (s, &y) in acc_r.iter_mut().zip(&bv) {
                    *s = S::add(*s, S::mul(av, y));
                }
            }
            bp = bp.wrapping_add(l * V);
        }
        let last = p1 == k;
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, &s) in acc_r.iter().enumerate() {
                let out =
                    if last { S::add(s, S::load_n(e.bias.add(j + l * v), widths[v])) } else { s };
                S::store_n(e.c.add((i + r) * ld + j + l * v), out, widths[v]);
            }
        }
    }
}

/// Row `i` with `C(i, ·)` as the accumulators: for each `p` in order (several rows of `B` per
/// pass), `C(i, j) += A(i, p)·B(p, j)` across all columns; then the bias.
///
/// # Safety
/// `i < m`; the caller runs with `S`'s instruction set.
#[inline(always)]
unsafe fn row_stream<S: Blocking>(e: &Exact, i: usize) {
    let (k, n, ld, l) = (e.k, e.n, e.ld, S::LANES);
    let full = n / l * l;
    // SAFETY: (whole body)  A(i, p) for p < k, B(p, j) and C(i, j) for p < k and j < n (whole
    // vectors below `full`, the lanes of the partial one above), and bias[..n] are in bounds.
    unsafe {
        let arow = e.a.add(i * k);
        let crow = e.c.add(i * ld);
        for j in (0..full).step_by(l) {
            S::storeu(crow.add(j), S::zero());
        }
        if full < n {
            S::store_n(crow.add(full), S::zero(), n - full);
        }
        let mut p = 0;
        if S::STREAM_ROWS == 8 {
            while p + 8 <= k {
                stream_pass::<S, 8>(e, arow, crow, p);
                p += 8;
            }
        }
        while p + 4 <= k {
            stream_pass::<S, 4>(e, arow, crow, p);
            p += 4;
        }
        while p < k {
            stream_pass::<S, 1>(e, arow, crow, p);
            p += 1;
        }
        for j in (0..full).step_by(l) {
            let s = S::add(S::loadu(crow.add(j)), S::loadu(e.bias.add(j)));
            S::storeu(crow.add(j), s);
        }
        if full < n {
            let w = n - full;
            let s = S::add(S::load_n(crow.add(full), w), S::load_n(e.bias.add(full), w));
            S::store_n(crow.add(full), s, w);
        }
    }
}

/// Adds rows `p..p+Q` of `B`, in order, times `A(i, p..p+Q)` into the row of `C` at `crow`.
///
/// # Safety
/// As [`row_stream`], with `p + Q ≤ k`; `arow` and `crow` are row `i` of `A` and `C`.
#[inline(always)]
unsafe fn stream_pass<S: Simd, const Q: usize>(
    e: &Exact, arow: *const f32, crow: *mut f32, p: usize,
) {
    let (n, ld, l) = (e.n, e.ld, S::LANES);
    let full = n / l * l;
    // SAFETY: as the caller's; A(i, p..p+Q) and rows p..p+Q of B are in bounds.
    unsafe {
        let av: [S::V; Q] = core::array::from_fn(|q| S::splat(arow.add(p + q)));
        let rows: [*const f32; Q] = core::array::from_fn(|q| e.b.add((p + q) * ld));
        for j in (0..full).step_by(l) {
            let mut s = S::loadu(crow.add(j));
            for (q, &a) in av.iter().enumerate() {
                s = S::add(s, S::mul(a, S::loadu(rows[q].add(j))));
            }
            S::storeu(crow.add(j), s);
        }
        if full < n {
            let w = n - full;
            let mut s = S::load_n(crow.add(full), w);
            for (q, &a) in av.iter().enumerate() {
                s = S::add(s, S::mul(a, S::load_n(rows[q].add(full), w)));
            }
            S::store_n(crow.add(full), s, w);
        }
    }
}
