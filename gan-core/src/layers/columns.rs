//! The column matrices of both convolutions (see [`crate::layers::conv2d`]): `im2col` and its
//! adjoint `col2im`, one image at a time or a group of images side by side, and the group
//! layout of the training passes (group sizes, gathering and scattering the staging grid).

use core::ops::Range;

use crate::kernels::{Exec, Serial, par};
use crate::layers::conv2d::{Geom, span};

/// Columns a training product should have. Timed alone on DCGAN's 1024-deep products
/// (AVX-512, one core), the product runs at ≈ 150 GFLOP/s on one sample's 49 columns, ≈ 200
/// from 196 to 784 columns and ≈ 140 at 3,136 (its column matrices no longer in the cache);
/// whole training steps with groups of 100 to 768 columns were alike within the noise.
const GROUP_COLS: usize = 400;

/// Samples per group of the training passes (module docs) for `n` samples of `cols` grid
/// positions: about [`GROUP_COLS`] columns, at least one sample, at most `n`.
pub(crate) fn group_size(n: usize, cols: usize) -> usize {
    GROUP_COLS.div_ceil(cols.max(1)).clamp(1, n.max(1))
}

/// The body of [`for_each_group`]: `(first, count, col, stage)`.
pub(crate) type GroupFn<'f> = dyn FnMut(usize, usize, &mut [f32], &mut [f32]) + 'f;

/// Calls `f(first, count, col, stage)` for the groups of `group` samples (the last one may be
/// shorter) of `count_all` samples whose training buffers fill `buf` one group after another:
/// `first` is the group's first sample (from 0), `col` its column matrices side by side
/// (`g.rows × count·g.cols`) and `stage` its staging grid (`g.cg × count·g.cols`).
pub(crate) fn for_each_group(
    buf: &mut [f32], count_all: usize, group: usize, g: &Geom, f: &mut GroupFn<'_>,
) {
    let mut rest = buf;
    for first in (0..count_all).step_by(group.max(1)) {
        let count = group.min(count_all - first);
        let (this, tail) = rest.split_at_mut(count * g.aux);
        let (col, stage) = this.split_at_mut(count * g.col);
        f(first, count, col, stage);
        rest = tail;
    }
}

/// Where sample `s` of `n` (in groups of `group`) has its column matrix in a training buffer:
/// `(offset, ld)`, its first element and the distance between its rows.
pub(crate) fn group_col(s: usize, n: usize, group: usize, g: &Geom) -> (usize, usize) {
    let first = s / group * group;
    let count = group.min(n - first);
    (first * g.aux + (s - first) * g.cols, count * g.cols)
}

/// Copies each sample's grid (`count` samples of `g.cg × g.cols`, one after another) into the
/// columns of `stage` (`g.cg × count·g.cols`) that belong to it.
pub(crate) fn gather(stage: &mut [f32], grids: &[f32], count: usize, g: &Geom) {
    let ld = count * g.cols;
    for (j, grid) in grids.chunks_exact(g.grid).take(count).enumerate() {
        for (dst, src) in stage.chunks_exact_mut(ld).zip(grid.chunks_exact(g.cols)) {
            copy_row(&mut dst[j * g.cols..][..g.cols], src);
        }
    }
}

/// The inverse of [`gather`]: each sample's grid out of `stage`.
pub(crate) fn scatter(grids: &mut [f32], stage: &[f32], count: usize, g: &Geom) {
    let ld = count * g.cols;
    for (j, grid) in grids.chunks_exact_mut(g.grid).take(count).enumerate() {
        for (dst, src) in grid.chunks_exact_mut(g.cols).zip(stage.chunks_exact(ld)) {
            copy_row(dst, &src[j * g.cols..][..g.cols]);
        }
    }
}

/// How many tasks the groups of a training pass are worth (at most `slots` when each needs
/// one), and the executor each group's product then runs on.
pub(crate) fn group_tasks<'e>(
    exec: &'e dyn Exec, n: usize, group: usize, g: &Geom, slots: usize,
) -> (usize, &'e dyn Exec) {
    let tasks = par::sample_tasks(exec, n.div_ceil(group), 2 * g.w * g.cols * group).min(slots);
    (tasks, if tasks > 1 { &Serial } else { exec })
}

/// Writes the column matrix of one image (see the module docs), its rows `ld ≥ g.cols` apart
/// in `col` (`g.cols` for a matrix of its own, wider when it is one sample of a group; the
/// columns between are left alone). `col` holds `(g.rows − 1)·ld + g.cols` elements or more,
/// `img` has `g.img`.
#[cfg(test)]
pub(crate) fn im2col(col: &mut [f32], img: &[f32], g: &Geom, ld: usize) {
    im2col_channels(col, img, g, ld, 0..g.ci);
}

/// [`im2col`] for the image channels `chans` only (their rows of `col`).
fn im2col_channels(col: &mut [f32], img: &[f32], g: &Geom, ld: usize, chans: Range<usize>) {
    match padded_row(g) {
        Some(len) => im2col_buffered(col, img, g, ld, chans, len),
        None => im2col_rows(col, img, g, ld, chans),
    }
}

/// The column matrices of `count` images (`imgs`, one after another) side by side in `col`
/// (`g.rows × count·g.cols`), written channel by channel: each channel's rows for every image
/// before the next channel's, so the writes move through `col` in order and each image
/// channel is read while it is in the cache.
pub(crate) fn im2col_group(col: &mut [f32], imgs: &[f32], count: usize, g: &Geom) {
    #[cfg(target_arch = "x86_64")]
    match vector_path(g) {
        // SAFETY: `vector_path` checked the instruction set and the row and grid widths.
        Some(Path::Zmm) => return unsafe { x86::im2col_group(col, imgs, count, g) },
        // SAFETY: as above.
        Some(Path::Ymm) => return unsafe { x86::im2col_group_avx2(col, imgs, count, g) },
        None => {}
    }
    let ld = count * g.cols;
    for c in 0..g.ci {
        for (j, img) in imgs.chunks_exact(g.img).take(count).enumerate() {
            im2col_channels(&mut col[j * g.cols..], img, g, ld, c..c + 1);
        }
    }
}

/// The adjoint of [`im2col_group`]: adds each image's columns of `col` onto it, channel by
/// channel (each pixel still gets its terms in the order of [`col2im_add`]).
pub(crate) fn col2im_add_group(imgs: &mut [f32], col: &[f32], count: usize, g: &Geom) {
    #[cfg(target_arch = "x86_64")]
    match vector_path(g) {
        // SAFETY: as in `im2col_group`.
        Some(Path::Zmm) => return unsafe { x86::col2im_add_group(imgs, col, count, g) },
        // SAFETY: as in `im2col_group`.
        Some(Path::Ymm) => return unsafe { x86::col2im_add_group_avx2(imgs, col, count, g) },
        None => {}
    }
    let ld = count * g.cols;
    for c in 0..g.ci {
        for (j, img) in imgs.chunks_exact_mut(g.img).take(count).enumerate() {
            col2im_add_channels(img, &col[j * g.cols..], g, ld, c..c + 1);
        }
    }
}

/// Longest padded image row the row-buffer passes take (a stack buffer); wider rows go
/// through the plain row loops.
const ROW_BUF: usize = 256;

/// `dst.copy_from_slice(src)` for the short rows of small images, in blocks of eight without a
/// library call (a `memcpy` call per row of 7 to 28 values cost more than the copy).
#[inline]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    let (d8, dr) = dst.as_chunks_mut::<8>();
    let (s8, sr) = src.as_chunks::<8>();
    for (d, s) in d8.iter_mut().zip(s8) {
        *d = *s;
    }
    for (d, &s) in dr.iter_mut().zip(sr) {
        *d = s;
    }
}

/// Length of the padded row buffer: every tap of every grid column, and the whole image row
/// after its left padding. `None` when it would not fit in [`ROW_BUF`].
fn padded_row(g: &Geom) -> Option<usize> {
    let len = ((g.gw - 1) * g.s + g.k).max(g.p + g.iw);
    (len <= ROW_BUF).then_some(len)
}

/// [`im2col`] through one padded copy of each image row: every kernel column then reads its
/// grid row as one strided run with no bounds to test (zeros come from the padding).
fn im2col_buffered(
    col: &mut [f32], img: &[f32], g: &Geom, ld: usize, chans: Range<usize>, len: usize,
) {
    let mut buf = [0.0f32; ROW_BUF];
    // The padding stays zero: only the image part is ever written.
    let pad = &mut buf[..len];
    let plane = g.ih * g.iw;
    for c in chans {
        let src = &img[c * plane..][..plane];
        for ky in 0..g.k {
            let r0 = (c * g.k + ky) * g.k;
            for gy in 0..g.gh {
                let at = |kx: usize| (r0 + kx) * ld + gy * g.gw;
                let iy = (gy * g.s + ky).checked_sub(g.p).filter(|&iy| iy < g.ih);
                let Some(iy) = iy else {
                    for kx in 0..g.k {
                        col[at(kx)..][..g.gw].fill(0.0);
                    }
                    continue;
                };
                copy_row(&mut pad[g.p..g.p + g.iw], &src[iy * g.iw..][..g.iw]);
                for kx in 0..g.k {
                    let dst = &mut col[at(kx)..][..g.gw];
                    for (d, &v) in dst.iter_mut().zip(pad[kx..].iter().step_by(g.s)) {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// [`im2col`] for any stride, row by row.
fn im2col_rows(col: &mut [f32], img: &[f32], g: &Geom, ld: usize, chans: Range<usize>) {
    let plane = g.ih * g.iw;
    for (c, src) in img.chunks_exact(plane).enumerate().take(chans.end).skip(chans.start) {
        for ky in 0..g.k {
            let (ylo, yhi) = span(g.gh, g.ih, g.s, ky, g.p);
            for kx in 0..g.k {
                let (xlo, xhi) = span(g.gw, g.iw, g.s, kx, g.p);
                let r = (c * g.k + ky) * g.k + kx;
                let row = &mut col[r * ld..][..g.cols];
                for (gy, dst) in row.chunks_exact_mut(g.gw).enumerate() {
                    if gy < ylo || gy >= yhi || xlo == xhi {
                        dst.fill(0.0);
                        continue;
                    }
                    let iy = gy * g.s + ky - g.p;
                    let x0 = xlo * g.s + kx - g.p;
                    let srow = &src[iy * g.iw + x0..(iy + 1) * g.iw];
                    dst[..xlo].fill(0.0);
                    dst[xhi..].fill(0.0);
                    if g.s == 1 {
                        dst[xlo..xhi].copy_from_slice(&srow[..xhi - xlo]);
                    } else {
                        for (d, &v) in dst[xlo..xhi].iter_mut().zip(srow.iter().step_by(g.s)) {
                            *d = v;
                        }
                    }
                }
            }
        }
    }
}

/// Adds every entry of a column matrix (rows `ld` apart, as [`im2col`] writes them) onto its
/// image pixel (the adjoint of [`im2col`]): each pixel in the order of its (ky, kx).
#[cfg(test)]
pub(crate) fn col2im_add(img: &mut [f32], col: &[f32], g: &Geom, ld: usize) {
    col2im_add_channels(img, col, g, ld, 0..g.ci);
}

/// [`col2im_add`] for the image channels `chans` only.
fn col2im_add_channels(img: &mut [f32], col: &[f32], g: &Geom, ld: usize, chans: Range<usize>) {
    match padded_row(g) {
        Some(len) => col2im_add_buffered(img, col, g, ld, chans, len),
        None => col2im_add_rows(img, col, g, ld, chans),
    }
}

/// [`col2im_add`] through one padded copy of each image row: the kernel columns of one
/// kernel row add their grid row onto it in order of `kx` (each pixel gets its terms in the
/// same (ky, kx) order as the row loops), then the image part is copied back. What lands in
/// the padding is never read back.
fn col2im_add_buffered(
    img: &mut [f32], col: &[f32], g: &Geom, ld: usize, chans: Range<usize>, len: usize,
) {
    let mut buf = [0.0f32; ROW_BUF];
    let pad = &mut buf[..len];
    let plane = g.ih * g.iw;
    for c in chans {
        let dst = &mut img[c * plane..][..plane];
        for ky in 0..g.k {
            let r0 = (c * g.k + ky) * g.k;
            for gy in 0..g.gh {
                let Some(iy) = (gy * g.s + ky).checked_sub(g.p).filter(|&iy| iy < g.ih) else {
                    continue;
                };
                let drow = &mut dst[iy * g.iw..][..g.iw];
                copy_row(&mut pad[g.p..g.p + g.iw], drow);
                for kx in 0..g.k {
                    let src = &col[(r0 + kx) * ld + gy * g.gw..][..g.gw];
                    for (d, &v) in pad[kx..].iter_mut().step_by(g.s).zip(src) {
                        *d += v;
                    }
                }
                copy_row(drow, &pad[g.p..g.p + g.iw]);
            }
        }
    }
}

/// [`col2im_add`] for any stride, row by row.
fn col2im_add_rows(img: &mut [f32], col: &[f32], g: &Geom, ld: usize, chans: Range<usize>) {
    let plane = g.ih * g.iw;
    for (c, dst) in img.chunks_exact_mut(plane).enumerate().take(chans.end).skip(chans.start) {
        for ky in 0..g.k {
            let (ylo, yhi) = span(g.gh, g.ih, g.s, ky, g.p);
            for kx in 0..g.k {
                let (xlo, xhi) = span(g.gw, g.iw, g.s, kx, g.p);
                if xlo == xhi {
                    continue;
                }
                let r = (c * g.k + ky) * g.k + kx;
                let row = &col[r * ld..][..g.cols];
                for gy in ylo..yhi {
                    let iy = gy * g.s + ky - g.p;
                    let x0 = xlo * g.s + kx - g.p;
                    let drow = &mut dst[iy * g.iw + x0..(iy + 1) * g.iw];
                    let src = &row[gy * g.gw + xlo..gy * g.gw + xhi];
                    if g.s == 1 {
                        for (d, &v) in drow.iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (d, &v) in drow.iter_mut().step_by(g.s).zip(src) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// Which vector form of the group passes applies.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    /// AVX-512: an image row of up to 32 values is two `zmm` registers, a grid row of up to 16
    /// one.
    Zmm,
    /// AVX2: an image row of up to 16 values is two `ymm` registers, a grid row of up to 8
    /// one.
    Ymm,
}

/// The vector form for the training kernels' instruction set, if the image and grid rows fit
/// it (and the kernel fits the tap tables: a padded row of at most 32).
#[cfg(target_arch = "x86_64")]
fn vector_path(g: &Geom) -> Option<Path> {
    use crate::kernels::{Isa, train_isa};
    let fits = |row: usize, grid: usize| g.iw <= row && g.gw <= grid;
    if padded_row(g).is_none_or(|len| len > 32) {
        return None;
    }
    match train_isa() {
        Isa::Avx512 if fits(32, 16) => Some(Path::Zmm),
        Isa::Avx2Fma if fits(16, 8) => Some(Path::Ymm),
        _ => None,
    }
}

/// The group passes with AVX-512: an image row is two `zmm` registers (masked loads, so
/// nothing past it is read); each kernel column's grid row is one two-register permute of it
/// with the padding's lanes zeroed (`im2col`), or is permuted back onto the pixels it feeds and
/// added there under a mask (`col2im`). Each value is moved, or added, exactly as the
/// row-buffer passes do it, in the same order.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    use super::{Geom, padded_row};

    /// Checks what the passes index: `count` images and their `count·cols`-wide column
    /// matrix, and the widths `vector_path` promises (`iw ≤ row`, `gw ≤ grid`, `k ≤ 32`).
    fn check(col: usize, imgs: usize, count: usize, g: &Geom, (row, grid): (usize, usize)) {
        let ld = count * g.cols;
        assert!(count >= 1 && g.iw <= row && g.gw <= grid);
        assert!(padded_row(g).is_some_and(|l| l <= 32));
        assert!(col >= (g.rows - 1) * ld + g.cols && imgs >= count * g.img);
    }

    /// Per kernel column `kx`: the grid lanes `i` that read a pixel (`x = i·s + kx − p` inside
    /// the row, the rest being padding) as a mask, and that pixel's index.
    fn taps(g: &Geom) -> [(u16, [i32; 16]); 32] {
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

    /// The inverse of [`taps`]: per kernel column, for each `L`-lane half of the row, the
    /// pixels that take a grid value (a mask) and which grid lane.
    fn takes<const L: usize>(g: &Geom) -> [[(u16, [i32; 16]); 2]; 32] {
        let mut takes = [[(0u16, [0i32; 16]); 2]; 32];
        for (kx, t) in takes.iter_mut().enumerate().take(g.k) {
            for i in 0..g.gw {
                if let Some(x) = (i * g.s + kx).checked_sub(g.p).filter(|&x| x < g.iw) {
                    t[x / L].0 |= 1 << (x % L);
                    t[x / L].1[x % L] = i as i32;
                }
            }
        }
        takes
    }

    /// Lanes `lo..hi` (clipped to 16) of a 16-lane mask.
    fn lanes(lo: usize, hi: usize) -> __mmask16 {
        let (lo, hi) = (lo.min(16), hi.min(16));
        if lo >= hi { 0 } else { (((1u32 << (hi - lo)) - 1) << lo) as u16 }
    }

    /// Loads image row `iy` (`iw ≤ 32` values) as two registers, zero past its end.
    ///
    /// # Safety
    /// AVX-512F; `src` holds row `iy` (checked by the slice).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_row(src: &[f32], iy: usize, g: &Geom) -> (__m512, __m512) {
        let row = &src[iy * g.iw..][..g.iw];
        // SAFETY: the masks cover lanes inside `row` only (masked lanes are not accessed);
        // a row of at most 16 skips the second load (an all-masked load is not free).
        unsafe {
            let lo = _mm512_maskz_loadu_ps(lanes(0, g.iw), row.as_ptr());
            if g.iw <= 16 {
                return (lo, _mm512_setzero_ps());
            }
            (lo, _mm512_maskz_loadu_ps(lanes(0, g.iw - 16), row.as_ptr().add(16)))
        }
    }

    /// Prefetches channel `c` of every image (while the passes work on the channel before):
    /// the planes of one channel are a whole image apart, too short a run each for the
    /// hardware prefetchers to pick up.
    #[inline]
    fn prefetch_channel(imgs: &[f32], count: usize, g: &Geom, c: usize) {
        if c >= g.ci {
            return;
        }
        let plane = g.ih * g.iw;
        for img in imgs.chunks_exact(g.img).take(count) {
            let p = &img[c * plane..][..plane];
            for line in (0..plane).step_by(16) {
                // SAFETY: a prefetch only hints; the address is inside `imgs`.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p.as_ptr().add(line).cast()) };
            }
        }
    }

    /// [`super::im2col_group`].
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn im2col_group(col: &mut [f32], imgs: &[f32], count: usize, g: &Geom) {
        check(col.len(), imgs.len(), count, g, (32, 16));
        let ld = count * g.cols;
        let plane = g.ih * g.iw;
        let store: __mmask16 = lanes(0, g.gw);
        let taps = taps(g);
        let out = col.as_mut_ptr();
        for c in 0..g.ci {
            prefetch_channel(imgs, count, g, c + 1);
            // Kernel row by kernel row, so each of its `k` rows of `col` is written in order.
            for ky in 0..g.k {
                let r0 = (c * g.k + ky) * g.k;
                for (j, img) in imgs.chunks_exact(g.img).take(count).enumerate() {
                    let src = &img[c * plane..][..plane];
                    for gy in 0..g.gh {
                        let at = |kx: usize| (r0 + kx) * ld + j * g.cols + gy * g.gw;
                        // Values of the row after this grid row's (they come later).
                        let spare = ld - (j * g.cols + (gy + 1) * g.gw) >= 16 - g.gw;
                        let iy = (gy * g.s + ky).checked_sub(g.p).filter(|&iy| iy < g.ih);
                        let (lo, hi, rows) = match iy {
                            Some(iy) => {
                                // SAFETY: AVX-512F (this function's own feature).
                                let (lo, hi) = unsafe { load_row(src, iy, g) };
                                (lo, hi, true)
                            }
                            None => (_mm512_setzero_ps(), _mm512_setzero_ps(), false),
                        };
                        for (kx, (m, idx)) in taps.iter().enumerate().take(g.k) {
                            let v = if rows {
                                // SAFETY: `idx` holds 16 lanes.
                                let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
                                _mm512_maskz_permutex2var_ps(*m, lo, idx, hi)
                            } else {
                                _mm512_setzero_ps()
                            };
                            // SAFETY: row r0 + kx < rows, and its `gw` values at grid row `gy`
                            // of image `j` end inside `col` (`check`); a full store only
                            // where 16 lanes stay inside the row, spilling into values of it
                            // that are written later (a masked store costs more).
                            unsafe {
                                if spare {
                                    _mm512_storeu_ps(out.add(at(kx)), v);
                                } else {
                                    _mm512_mask_storeu_ps(out.add(at(kx)), store, v);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`super::col2im_add_group`].
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn col2im_add_group(imgs: &mut [f32], col: &[f32], count: usize, g: &Geom) {
        check(col.len(), imgs.len(), count, g, (32, 16));
        let ld = count * g.cols;
        let plane = g.ih * g.iw;
        let load: __mmask16 = lanes(0, g.gw);
        let takes = takes::<16>(g);
        let src = col.as_ptr();
        for c in 0..g.ci {
            prefetch_channel(imgs, count, g, c + 1);
            for ky in 0..g.k {
                let r0 = (c * g.k + ky) * g.k;
                for (j, img) in imgs.chunks_exact_mut(g.img).take(count).enumerate() {
                    let dst = &mut img[c * plane..][..plane];
                    for gy in 0..g.gh {
                        let iy = (gy * g.s + ky).checked_sub(g.p).filter(|&iy| iy < g.ih);
                        let Some(iy) = iy else { continue };
                        // SAFETY: AVX-512F (this function's own feature).
                        let (mut lo, mut hi) = unsafe { load_row(dst, iy, g) };
                        for (kx, [(mlo, ilo), (mhi, ihi)]) in takes.iter().enumerate().take(g.k) {
                            let at = (r0 + kx) * ld + j * g.cols + gy * g.gw;
                            // SAFETY: the `gw` values of row r0 + kx at grid row `gy` of image
                            // `j` end inside `col` (`check`); the index arrays hold 16 lanes.
                            let (v, ilo, ihi) = unsafe {
                                (
                                    _mm512_maskz_loadu_ps(load, src.add(at)),
                                    _mm512_loadu_si512(ilo.as_ptr().cast()),
                                    _mm512_loadu_si512(ihi.as_ptr().cast()),
                                )
                            };
                            lo = _mm512_mask_add_ps(lo, *mlo, lo, _mm512_permutexvar_ps(ilo, v));
                            hi = _mm512_mask_add_ps(hi, *mhi, hi, _mm512_permutexvar_ps(ihi, v));
                        }
                        let row = &mut dst[iy * g.iw..][..g.iw];
                        // SAFETY: the masks cover lanes inside `row` only.
                        unsafe {
                            _mm512_mask_storeu_ps(row.as_mut_ptr(), lanes(0, g.iw), lo);
                            if g.iw > 16 {
                                let rest = lanes(0, g.iw - 16);
                                _mm512_mask_storeu_ps(row.as_mut_ptr().add(16), rest, hi);
                            }
                        }
                    }
                }
            }
        }
    }

    /// An AVX2 lane mask: all ones in the lanes of `bits`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lane_mask(bits: u16) -> __m256i {
        let b = _mm256_set1_epi32(bits as i32);
        let lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        _mm256_cmpeq_epi32(_mm256_and_si256(b, lane), lane)
    }

    /// Loads the 16 values from `at` as two `ymm` registers: plainly when they lie inside
    /// `v`, else only the first `n` (the rest zero).
    ///
    /// # Safety
    /// AVX2; `at + n ≤ v.len()`, `n ≤ 16`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load16(v: &[f32], at: usize, n: usize) -> (__m256, __m256) {
        debug_assert!(at + n <= v.len() && n <= 16);
        let p = v.as_ptr().wrapping_add(at);
        // SAFETY: a plain load only when all 16 values are inside `v`; the masked loads touch
        // only lanes below `n` (masked lanes are not accessed).
        unsafe {
            if at + 16 <= v.len() {
                (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
            } else {
                let m = |lo: usize| lane_mask(((1u32 << n.saturating_sub(lo).min(8)) - 1) as u16);
                (_mm256_maskload_ps(p, m(0)), _mm256_maskload_ps(p.wrapping_add(8), m(8)))
            }
        }
    }

    /// [`super::im2col_group`] with AVX2 (rows of up to 16 values, grid rows of up to 8).
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn im2col_group_avx2(col: &mut [f32], imgs: &[f32], count: usize, g: &Geom) {
        check(col.len(), imgs.len(), count, g, (16, 8));
        let ld = count * g.cols;
        let plane = g.ih * g.iw;
        let store = lane_mask(((1u32 << g.gw) - 1) as u16);
        let taps = taps(g);
        let out = col.as_mut_ptr();
        for c in 0..g.ci {
            for ky in 0..g.k {
                let r0 = (c * g.k + ky) * g.k;
                for (j, img) in imgs.chunks_exact(g.img).take(count).enumerate() {
                    let src = &img[c * plane..][..plane];
                    for gy in 0..g.gh {
                        let at = |kx: usize| (r0 + kx) * ld + j * g.cols + gy * g.gw;
                        let spare = ld - (j * g.cols + (gy + 1) * g.gw) >= 8 - g.gw;
                        let iy = (gy * g.s + ky).checked_sub(g.p).filter(|&iy| iy < g.ih);
                        let (lo, hi) = match iy {
                            // SAFETY: AVX2; row `iy` is inside `src`.
                            Some(iy) => unsafe { load16(src, iy * g.iw, g.iw) },
                            None => (_mm256_setzero_ps(), _mm256_setzero_ps()),
                        };
                        for (kx, (m, idx)) in taps.iter().enumerate().take(g.k) {
                            // SAFETY: `idx` holds 16 lanes (the first 8 are used).
                            let idx = unsafe { _mm256_loadu_si256(idx.as_ptr().cast()) };
                            let upper =
                                _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7)));
                            let v = _mm256_blendv_ps(
                                _mm256_permutevar8x32_ps(lo, idx),
                                _mm256_permutevar8x32_ps(hi, idx),
                                upper,
                            );
                            let valid = if iy.is_some() { *m } else { 0 };
                            let v = _mm256_and_ps(v, _mm256_castsi256_ps(lane_mask(valid)));
                            // SAFETY: as in the AVX-512 pass (8 lanes).
                            unsafe {
                                if spare {
                                    _mm256_storeu_ps(out.add(at(kx)), v);
                                } else {
                                    _mm256_maskstore_ps(out.add(at(kx)), store, v);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`super::col2im_add_group`] with AVX2.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn col2im_add_group_avx2(
        imgs: &mut [f32], col: &[f32], count: usize, g: &Geom,
    ) {
        check(col.len(), imgs.len(), count, g, (16, 8));
        let ld = count * g.cols;
        let plane = g.ih * g.iw;
        let takes = takes::<8>(g);
        for c in 0..g.ci {
            for ky in 0..g.k {
                let r0 = (c * g.k + ky) * g.k;
                for (j, img) in imgs.chunks_exact_mut(g.img).take(count).enumerate() {
                    let dst = &mut img[c * plane..][..plane];
                    for gy in 0..g.gh {
                        let iy = (gy * g.s + ky).checked_sub(g.p).filter(|&iy| iy < g.ih);
                        let Some(iy) = iy else { continue };
                        // SAFETY: AVX2; row `iy` is inside `dst`. Values past the row (the next
                        // rows of this plane, loaded plainly) get no terms and go back as read.
                        let (mut lo, mut hi) = unsafe { load16(dst, iy * g.iw, g.iw) };
                        for (kx, [(mlo, ilo), (mhi, ihi)]) in takes.iter().enumerate().take(g.k) {
                            let at = (r0 + kx) * ld + j * g.cols + gy * g.gw;
                            // SAFETY: the `gw` values at `at` are inside `col` (`check`); the
                            // index arrays hold 16 lanes (the first 8 are used).
                            let (v, ilo, ihi) = unsafe {
                                (
                                    load16(col, at, g.gw).0,
                                    _mm256_loadu_si256(ilo.as_ptr().cast()),
                                    _mm256_loadu_si256(ihi.as_ptr().cast()),
                                )
                            };
                            // Blend, not a masked-out zero: `-0.0 + 0.0` would be `+0.0`.
                            let (tlo, thi) = (
                                _mm256_permutevar8x32_ps(v, ilo),
                                _mm256_permutevar8x32_ps(v, ihi),
                            );
                            let (klo, khi) = (lane_mask(*mlo), lane_mask(*mhi));
                            lo = _mm256_blendv_ps(
                                lo,
                                _mm256_add_ps(lo, tlo),
                                _mm256_castsi256_ps(klo),
                            );
                            hi = _mm256_blendv_ps(
                                hi,
                                _mm256_add_ps(hi, thi),
                                _mm256_castsi256_ps(khi),
                            );
                        }
                        let p = dst.as_mut_ptr().wrapping_add(iy * g.iw);
                        // SAFETY: plain stores only where `load16` loaded plainly (all 16
                        // values inside this plane, which only this task touches), masked
                        // stores of the row's own values otherwise.
                        unsafe {
                            if iy * g.iw + 16 <= plane {
                                _mm256_storeu_ps(p, lo);
                                _mm256_storeu_ps(p.add(8), hi);
                            } else {
                                let m = |lo: usize| {
                                    lane_mask(((1u32 << g.iw.saturating_sub(lo).min(8)) - 1) as u16)
                                };
                                _mm256_maskstore_ps(p, m(0), lo);
                                _mm256_maskstore_ps(p.wrapping_add(8), m(8), hi);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::conv2d::tests::dims;
    use crate::testutil::Lcg;
    use std::vec;
    use std::vec::Vec;

    /// The row-buffer column passes write and add exactly what the row-by-row loops do (the same
    /// bits, −0.0 included), for both convolutions' geometries, strides 1 to 3, even and odd
    /// kernels, every padding that is allowed and odd sizes.
    #[test]
    fn buffered_column_passes_are_the_row_loops() {
        let mut r = Lcg::new(23);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut cases = 0;
        let shapes = [
            (2, 7, 9, 4),
            (1, 28, 28, 4),
            (3, 14, 14, 4),
            (2, 5, 4, 2),
            (1, 9, 8, 6),
            (2, 8, 7, 3),
        ];
        for ((c, h, w, k), s) in shapes.into_iter().flat_map(|x| [1, 2, 3].map(|s| (x, s))) {
            for p in 0..k {
                let d = dims(c, h, w, 3, k, s, p);
                for g in [Geom::conv(&d), Geom::transpose(&d)].into_iter().flatten() {
                    // Inputs with signed zeros in both operands of the additions.
                    let mut val = |i: usize| if i.is_multiple_of(5) { -0.0 } else { r.next_f32() };
                    let img: Vec<f32> = (0..g.img).map(&mut val).collect();
                    let mut compact = vec![f32::NAN; g.col];
                    im2col_rows(&mut compact, &img, &g, g.cols, 0..g.ci);
                    // A matrix of its own, and one sample of a group (rows wider than it).
                    for ld in [g.cols, 2 * g.cols + 3] {
                        let len = (g.rows - 1) * ld + g.cols;
                        let mut fast = vec![f32::NAN; len];
                        let mut rows = vec![f32::NAN; len];
                        im2col(&mut fast, &img, &g, ld);
                        im2col_rows(&mut rows, &img, &g, ld, 0..g.ci);
                        assert_eq!(bits(&fast), bits(&rows), "im2col {g:?} {ld}");
                        // The columns between the rows are the other samples': left alone.
                        let gaps = fast.iter().enumerate().filter(|&(i, _)| i % ld >= g.cols);
                        assert!(gaps.clone().all(|(_, v)| v.is_nan()), "im2col {g:?} {ld}");
                        let placed = (0..g.rows).all(|r| {
                            bits(&fast[r * ld..][..g.cols])
                                == bits(&compact[r * g.cols..][..g.cols])
                        });
                        assert!(
                            placed,
                            "im2col {g:?} {ld}: rows not where the compact matrix has them"
                        );
                        let col: Vec<f32> = (0..len).map(&mut val).collect();
                        let start: Vec<f32> = (0..g.img)
                            .map(|i| if i.is_multiple_of(3) { -0.0 } else { 0.5 })
                            .collect();
                        let (mut fast, mut rows) = (start.clone(), start);
                        col2im_add(&mut fast, &col, &g, ld);
                        col2im_add_rows(&mut rows, &col, &g, ld, 0..g.ci);
                        assert_eq!(bits(&fast), bits(&rows), "col2im {g:?} {ld}");
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 100, "{cases}");
    }

    /// The group passes (with AVX-512 where the CPU has it, and the row-buffer ones) write
    /// and add what the row-by-row loops do image by image: same bits, −0.0 included, for
    /// groups of one and three images, strides 1 to 3, every allowed padding, rows that fit
    /// the registers and rows that do not.
    #[test]
    fn group_passes_are_the_row_loops() {
        let mut r = Lcg::new(31);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut simd = 0;
        for (c, h, w, k) in
            [(2, 14, 14, 4), (1, 28, 28, 4), (3, 7, 9, 3), (2, 30, 5, 2), (1, 9, 40, 5)]
        {
            for (s, p, count) in
                [1, 2, 3].into_iter().flat_map(|s| (0..k).map(move |p| (s, p, 1 + 2 * (p % 2))))
            {
                let d = dims(c, h, w, 3, k, s, p);
                for g in [Geom::conv(&d), Geom::transpose(&d)].into_iter().flatten() {
                    let ld = count * g.cols;
                    let mut val = |i: usize| if i.is_multiple_of(5) { -0.0 } else { r.next_f32() };
                    let imgs: Vec<f32> = (0..count * g.img).map(&mut val).collect();
                    let mut want = vec![f32::NAN; g.rows * ld];
                    for (j, img) in imgs.chunks_exact(g.img).enumerate() {
                        im2col_rows(&mut want[j * g.cols..], img, &g, ld, 0..g.ci);
                    }
                    let col: Vec<f32> = (0..g.rows * ld).map(&mut val).collect();
                    let start: Vec<f32> =
                        (0..count * g.img).map(|i| if i % 3 == 0 { -0.0 } else { 0.5 }).collect();
                    let mut want_img = start.clone();
                    for (j, img) in want_img.chunks_exact_mut(g.img).enumerate() {
                        col2im_add_rows(img, &col[j * g.cols..], &g, ld, 0..g.ci);
                    }
                    let mut got = vec![f32::NAN; g.rows * ld];
                    im2col_group(&mut got, &imgs, count, &g);
                    assert_eq!(bits(&got), bits(&want), "im2col {g:?} × {count}");
                    let mut got_img = start.clone();
                    col2im_add_group(&mut got_img, &col, count, &g);
                    assert_eq!(bits(&got_img), bits(&want_img), "col2im {g:?} × {count}");
                    #[cfg(target_arch = "x86_64")]
                    // Each vector form the CPU has, called directly, where the rows fit it.
                    let fits = |row: usize, grid: usize| {
                        g.iw <= row && g.gw <= grid && padded_row(&g).is_some_and(|l| l <= 32)
                    };
                    type Im = unsafe fn(&mut [f32], &[f32], usize, &Geom);
                    type Col = unsafe fn(&mut [f32], &[f32], usize, &Geom);
                    let forms: [(bool, Im, Col, &str); 2] = [
                        (
                            crate::kernels::cpu_has_avx512() && fits(32, 16),
                            x86::im2col_group,
                            x86::col2im_add_group,
                            "avx512",
                        ),
                        (
                            crate::kernels::cpu_has_avx2_fma() && fits(16, 8),
                            x86::im2col_group_avx2,
                            x86::col2im_add_group_avx2,
                            "avx2",
                        ),
                    ];
                    for (_, im, c2, name) in forms.into_iter().filter(|f| f.0) {
                        let mut got = vec![f32::NAN; g.rows * ld];
                        // SAFETY: the CPU has the instruction set; the widths were checked.
                        unsafe { im(&mut got, &imgs, count, &g) };
                        assert_eq!(bits(&got), bits(&want), "{name} im2col {g:?} × {count}");
                        let mut got_img = start.clone();
                        // SAFETY: as above.
                        unsafe { c2(&mut got_img, &col, count, &g) };
                        let same = bits(&got_img) == bits(&want_img);
                        assert!(same, "{name} col2im {g:?} × {count}");
                        simd += 1;
                    }
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::cpu_has_avx512() {
            assert!(simd > 70, "{simd}");
        }
    }
}
