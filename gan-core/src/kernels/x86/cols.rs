//! The convolutions' column passes for small images (see [`crate::layers::columns`]), written
//! once over the vector width: an image row of up to two vectors is held in two registers, each
//! kernel column's grid row (up to one vector) is one two-register permute of it with the
//! padding's lanes zeroed (`im2col`), and `col2im` permutes a grid row back onto the pixels it
//! feeds and adds it there under a mask. Each value is moved, or added, exactly as the plain
//! loops do it, in the same order: the same bits.

use core::arch::x86_64::*;

use super::simd::{Avx, Avx512, Simd};
use crate::layers::conv2d::Geom;

/// Lane selection on top of [`Simd`].
trait Pick: Simd {
    /// Lane `i` of the result: where bit `i` of `mask` is set, lane `idx[i]` of the
    /// `2·LANES`-lane concatenation `lo ‖ hi`; zero elsewhere.
    unsafe fn pick2(lo: Self::V, hi: Self::V, idx: &[i32; 16], mask: u16) -> Self::V;
    /// Lane `i` of the result: where bit `i` of `mask` is set, `acc[i] + v[idx[i]]` (one f32
    /// addition); `acc[i]` untouched elsewhere (not `acc[i] + 0`, which would turn −0 into +0).
    unsafe fn add_picked(acc: Self::V, v: Self::V, idx: &[i32; 16], mask: u16) -> Self::V;
}

impl Pick for Avx512 {
    #[inline(always)]
    unsafe fn pick2(lo: __m512, hi: __m512, idx: &[i32; 16], mask: u16) -> __m512 {
        // SAFETY: AVX-512F (the caller runs with it); `idx` holds 16 lanes.
        unsafe {
            _mm512_maskz_permutex2var_ps(mask, lo, _mm512_loadu_si512(idx.as_ptr().cast()), hi)
        }
    }
    #[inline(always)]
    unsafe fn add_picked(acc: __m512, v: __m512, idx: &[i32; 16], mask: u16) -> __m512 {
        // SAFETY: as above.
        unsafe {
            let t = _mm512_permutexvar_ps(_mm512_loadu_si512(idx.as_ptr().cast()), v);
            _mm512_mask_add_ps(acc, mask, acc, t)
        }
    }
}

/// An AVX2 lane mask: all ones in the lanes of the first eight bits of `bits`.
#[inline(always)]
unsafe fn lane_mask(bits: u16) -> __m256 {
    // SAFETY: AVX2 (the caller runs with it); register operations only.
    unsafe {
        let lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        let b = _mm256_and_si256(_mm256_set1_epi32(i32::from(bits)), lane);
        _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, lane))
    }
}

impl Pick for Avx {
    #[inline(always)]
    unsafe fn pick2(lo: __m256, hi: __m256, idx: &[i32; 16], mask: u16) -> __m256 {
        // SAFETY: AVX2 (the caller runs with it); `idx` holds 16 lanes (8 used).
        unsafe {
            let i = _mm256_loadu_si256(idx.as_ptr().cast());
            let upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(7)));
            let (a, b) = (_mm256_permutevar8x32_ps(lo, i), _mm256_permutevar8x32_ps(hi, i));
            _mm256_and_ps(_mm256_blendv_ps(a, b, upper), lane_mask(mask))
        }
    }
    #[inline(always)]
    unsafe fn add_picked(acc: __m256, v: __m256, idx: &[i32; 16], mask: u16) -> __m256 {
        // SAFETY: as above.
        unsafe {
            let t = _mm256_permutevar8x32_ps(v, _mm256_loadu_si256(idx.as_ptr().cast()));
            _mm256_blendv_ps(acc, _mm256_add_ps(acc, t), lane_mask(mask))
        }
    }
}

/// A lane table: per kernel column, a lane mask and an index per lane.
type Table = [(u16, [i32; 16]); 32];

/// Per kernel column `kx`: the grid lanes `i` that read a pixel (`x = i·s + kx − p` inside
/// the row; the others fall in the padding) and that pixel's index in the row.
fn taps(g: &Geom) -> Table {
    let mut taps = [(0u16, [0i32; 16]); 32];
    for (kx, (m, idx)) in taps.iter_mut().enumerate().take(g.k) {
        for (i, ix) in idx.iter_mut().enumerate().take(g.gw) {
            if let Some(x) = (i * g.s + kx).checked_sub(g.p).filter(|&x| x < g.iw) {
                *m |= 1 << i;
                *ix = x as i32;
            }
        }
    }
    taps
}

/// The inverse of [`taps`]: per kernel column, for each vector of `lanes` pixels of the row
/// (`[0]` the first, `[1]` the second), the pixels that take a grid value and which grid lane.
fn takes(g: &Geom, lanes: usize) -> [[(u16, [i32; 16]); 2]; 32] {
    let mut takes = [[(0u16, [0i32; 16]); 2]; 32];
    for (kx, t) in takes.iter_mut().enumerate().take(g.k) {
        for i in 0..g.gw {
            if let Some(x) = (i * g.s + kx).checked_sub(g.p).filter(|&x| x < g.iw) {
                let t = &mut t[x / lanes];
                t.0 |= 1 << (x % lanes);
                t.1[x % lanes] = i as i32;
            }
        }
    }
    takes
}

/// Checks what the passes index: `count` images and their `count·cols`-wide column matrix, a
/// row of at most two vectors, a grid row of at most one, and a kernel the tables hold.
fn check<S: Simd>(col: usize, imgs: usize, count: usize, g: &Geom) {
    let ld = count * g.cols;
    assert!(count >= 1 && g.iw <= 2 * S::LANES && g.gw <= S::LANES && g.k <= 32);
    assert!(col >= (g.rows - 1) * ld + g.cols && imgs >= count * g.img);
}

/// Image row `iy` of `plane` as two vectors: plain loads when two vectors' worth lies inside
/// the plane (the values past the row are not used), else only the row's own values.
///
/// # Safety
/// The caller runs with `S`'s instruction set.
#[inline(always)]
unsafe fn load_row<S: Simd>(plane: &[f32], iy: usize, g: &Geom) -> (S::V, S::V) {
    let (at, l) = (iy * g.iw, S::LANES);
    assert!(at + g.iw <= plane.len());
    let p = plane.as_ptr().wrapping_add(at);
    // SAFETY: every lane read is inside `plane` (the partial loads read only their `w`).
    unsafe {
        if at + 2 * l <= plane.len() {
            (S::loadu(p), S::loadu(p.add(l)))
        } else if g.iw > l {
            (S::loadu(p), S::load_n(p.add(l), g.iw - l))
        } else {
            (S::load_n(p, g.iw), S::zero())
        }
    }
}

/// Prefetches channel `c` of every image (while the pass works on the channel before): the
/// planes of one channel are a whole image apart, too short a run each for the hardware
/// prefetchers to pick up.
#[inline(always)]
fn prefetch_channel(imgs: &[f32], count: usize, g: &Geom, c: usize) {
    if c >= g.ci {
        return;
    }
    let plane = g.ih * g.iw;
    for img in imgs.chunks_exact(g.img).take(count) {
        let p = &img[c * plane..][..plane];
        for line in (0..plane).step_by(16) {
            // SAFETY: a prefetch only hints (SSE, part of x86-64); the address is in `imgs`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.as_ptr().add(line).cast()) };
        }
    }
}

/// `im2col_group` over `S` (see [`crate::layers::columns`]): kernel row by kernel row, so each
/// of a channel's rows of `col` is written in order.
///
/// # Safety
/// The caller runs with `S`'s instruction set.
#[inline(always)]
unsafe fn im2col<S: Pick>(col: &mut [f32], imgs: &[f32], count: usize, g: &Geom) {
    check::<S>(col.len(), imgs.len(), count, g);
    let (ld, plane, l) = (count * g.cols, g.ih * g.iw, S::LANES);
    let taps = taps(g);
    let out = col.as_mut_ptr();
    for c in 0..g.ci {
        prefetch_channel(imgs, count, g, c + 1);
        for ky in 0..g.k {
            let r0 = (c * g.k + ky) * g.k;
            for (j, img) in imgs.chunks_exact(g.img).take(count).enumerate() {
                let src = &img[c * plane..][..plane];
                for gy in 0..g.gh {
                    let iy = (gy * g.s + ky).checked_sub(g.p).filter(|&iy| iy < g.ih);
                    // SAFETY: the caller's instruction set (both arms).
                    let (lo, hi) = unsafe {
                        match iy {
                            Some(iy) => load_row::<S>(src, iy, g),
                            None => (S::zero(), S::zero()),
                        }
                    };
                    // A full store where a vector's worth of this row of `col` follows (its
                    // later values overwrite the spill), a partial one at the row's end.
                    let spare = ld - (j * g.cols + (gy + 1) * g.gw) >= l - g.gw;
                    for (kx, (m, idx)) in taps.iter().enumerate().take(g.k) {
                        let at = (r0 + kx) * ld + j * g.cols + gy * g.gw;
                        let m = if iy.is_some() { *m } else { 0 };
                        // SAFETY: row r0 + kx < rows and its `gw` values at grid row `gy` of
                        // image `j` end inside `col` (`check`); a full store only with a
                        // vector's worth of the row left.
                        unsafe {
                            let v = S::pick2(lo, hi, idx, m);
                            if spare {
                                S::storeu(out.add(at), v);
                            } else {
                                S::store_n(out.add(at), v, g.gw);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `col2im_add_group` over `S`: kernel row by kernel row; each image row is read, gets every
/// kernel column's terms in order of `kx`, and is written back.
///
/// # Safety
/// The caller runs with `S`'s instruction set.
#[inline(always)]
unsafe fn col2im_add<S: Pick>(imgs: &mut [f32], col: &[f32], count: usize, g: &Geom) {
    check::<S>(col.len(), imgs.len(), count, g);
    let (ld, plane, l) = (count * g.cols, g.ih * g.iw, S::LANES);
    let takes = takes(g, l);
    for c in 0..g.ci {
        prefetch_channel(imgs, count, g, c + 1);
        for ky in 0..g.k {
            let r0 = (c * g.k + ky) * g.k;
            for (j, img) in imgs.chunks_exact_mut(g.img).take(count).enumerate() {
                let dst = &mut img[c * plane..][..plane];
                for gy in 0..g.gh {
                    let iy = (gy * g.s + ky).checked_sub(g.p).filter(|&iy| iy < g.ih);
                    let Some(iy) = iy else { continue };
                    // SAFETY: the caller's instruction set. Values past the row (the next rows
                    // of this plane, when loaded) get no terms and go back as they were read.
                    let (mut lo, mut hi) = unsafe { load_row::<S>(dst, iy, g) };
                    for (kx, [(mlo, ilo), (mhi, ihi)]) in takes.iter().enumerate().take(g.k) {
                        let at = (r0 + kx) * ld + j * g.cols + gy * g.gw;
                        // SAFETY: the `gw` values at `at` are inside `col` (`check`).
                        unsafe {
                            let p = col.as_ptr().add(at);
                            let v =
                                if at + l <= col.len() { S::loadu(p) } else { S::load_n(p, g.gw) };
                            lo = S::add_picked(lo, v, ilo, *mlo);
                            hi = S::add_picked(hi, v, ihi, *mhi);
                        }
                    }
                    let at = iy * g.iw;
                    let p = dst.as_mut_ptr().wrapping_add(at);
                    // SAFETY: full stores only where `load_row` loaded fully (inside this plane,
                    // which only this task touches), else only the row's own values.
                    unsafe {
                        if at + 2 * l <= plane {
                            S::storeu(p, lo);
                            S::storeu(p.add(l), hi);
                        } else if g.iw > l {
                            S::storeu(p, lo);
                            S::store_n(p.add(l), hi, g.iw - l);
                        } else {
                            S::store_n(p, lo, g.iw);
                        }
                    }
                }
            }
        }
    }
}

macro_rules! entry_points {
    ($($(#[$doc:meta])* $feature:literal: $im:ident, $c2:ident = $s:ty;)*) => {$(
        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU supports the instruction set. Panics unless the rows fit it (image rows
        /// of at most two vectors, grid rows of at most one, `k ≤ 32`).
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn $im(col: &mut [f32], imgs: &[f32], count: usize, g: &Geom) {
            // SAFETY: this function's own instruction set.
            unsafe { im2col::<$s>(col, imgs, count, g) }
        }

        /// The matching `col2im_add_group`.
        ///
        /// # Safety
        /// As for the `im2col` entry point.
        #[target_feature(enable = $feature)]
        pub(crate) unsafe fn $c2(imgs: &mut [f32], col: &[f32], count: usize, g: &Geom) {
            // SAFETY: this function's own instruction set.
            unsafe { col2im_add::<$s>(imgs, col, count, g) }
        }
    )*};
}

entry_points! {
    /// `im2col_group` with AVX-512F: image rows of up to 32 values, grid rows of up to 16.
    "avx512f": im2col_avx512, col2im_add_avx512 = Avx512;
    /// `im2col_group` with AVX2: image rows of up to 16 values, grid rows of up to 8.
    "avx2": im2col_avx2, col2im_add_avx2 = Avx;
}
