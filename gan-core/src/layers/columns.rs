//! The column matrices of both convolutions (see [`crate::layers::conv2d`]): `im2col` and its
//! adjoint `col2im`, one image at a time or a group of images side by side, and the group
//! layout of the training passes (group sizes, gathering and scattering the staging grid).

use core::ops::Range;

use crate::kernels::{self, Exec, Serial, par};
use crate::layers::conv2d::{Geom, fill_bias, span};

/// Columns a training product should have. Timed alone on DCGAN's 1024-deep products
/// (AVX-512, one core), the product runs at ≈ 150 GFLOP/s on one sample's 49 columns, ≈ 200
/// from 196 to 784 columns and ≈ 140 at 3,136 (its column matrices no longer in the cache);
/// whole training steps with groups of 100 to 768 columns were alike within the noise.
const GROUP_COLS: usize = 400;

/// Samples per group of the training passes (module docs) for `n` samples of `cols` grid
/// positions: about [`GROUP_COLS`] columns, at least one sample, at most `n`, and the samples
/// shared out evenly (64 samples of 49 positions: 8 groups of 8, not 7 of 9 and one of 1,
/// which left a thread idle for a ninth of each pass).
pub(crate) fn group_size(n: usize, cols: usize) -> usize {
    let n = n.max(1);
    let groups = n.div_ceil(GROUP_COLS.div_ceil(cols.max(1)).clamp(1, n));
    n.div_ceil(groups)
}

/// The body of [`for_each_group`]: `(first, count, col, stage)`.
type GroupFn<'f> = dyn FnMut(usize, usize, &mut [f32], &mut [f32]) + 'f;

/// Calls `f(first, count, col, stage)` for the groups of `group` samples (the last one may be
/// shorter) of `count_all` samples whose training buffers fill `buf` one group after another:
/// `first` is the group's first sample (from 0), `col` its column matrices side by side
/// (`g.rows × count·g.cols`) and `stage` its staging grid (`g.cg × count·g.cols`).
fn for_each_group(buf: &mut [f32], count_all: usize, group: usize, g: &Geom, f: &mut GroupFn<'_>) {
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
fn gather(stage: &mut [f32], grids: &[f32], count: usize, g: &Geom) {
    let ld = count * g.cols;
    for (j, grid) in grids.chunks_exact(g.grid).take(count).enumerate() {
        for (dst, src) in stage.chunks_exact_mut(ld).zip(grid.chunks_exact(g.cols)) {
            copy_row(&mut dst[j * g.cols..][..g.cols], src);
        }
    }
}

/// The inverse of [`gather`]: each sample's grid out of `stage`.
fn scatter(grids: &mut [f32], stage: &[f32], count: usize, g: &Geom) {
    let ld = count * g.cols;
    for (j, grid) in grids.chunks_exact_mut(g.grid).take(count).enumerate() {
        for (dst, src) in grid.chunks_exact_mut(g.cols).zip(stage.chunks_exact(ld)) {
            copy_row(dst, &src[j * g.cols..][..g.cols]);
        }
    }
}

/// How many tasks the groups of a training pass are worth (at most `slots` when each needs
/// one), and the executor each group's product then runs on.
fn group_tasks<'e>(
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
        Some(Path::Zmm) => return unsafe { kernels::im2col_avx512(col, imgs, count, g) },
        // SAFETY: as above.
        Some(Path::Ymm) => return unsafe { kernels::im2col_avx2(col, imgs, count, g) },
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
        Some(Path::Zmm) => return unsafe { kernels::col2im_add_avx512(imgs, col, count, g) },
        // SAFETY: as in `im2col_group`.
        Some(Path::Ymm) => return unsafe { kernels::col2im_add_avx2(imgs, col, count, g) },
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

/// `grids = W · im2col(images)` for `n` samples, group by group, over the threads of
/// `exec`. Every sample's column matrix is written into `buf` (its training buffer, `n·g.aux`,
/// kept for the weight gradient); when `grids` is given, the group's product with `w`
/// (`g.cg × g.rows`) goes through the staging grid into it: added onto each channel's `bias`
/// when there is one, else overwriting. (The convolution's forward pass, the transposed one's
/// input gradient.)
#[allow(clippy::too_many_arguments)]
pub(crate) fn image_to_grid(
    grids: Option<&mut [f32]>, buf: &mut [f32], images: &[f32], w: &[f32], bias: Option<&[f32]>,
    n: usize, g: &Geom, exec: &dyn Exec,
) {
    let group = group_size(n, g.cols);
    let (tasks, inner) = group_tasks(exec, n, group, g, usize::MAX);
    let product = grids.is_some();
    let per = if product { g.grid } else { 0 };
    let bufs = [(grids.unwrap_or(&mut []), per), (buf, g.aux)];
    let body = |_: &mut [f32], samples: Range<usize>, [out, buf]: [&mut [f32]; 2]| {
        let x = &images[samples.start * g.img..samples.end * g.img];
        for_each_group(buf, samples.len(), group, g, &mut |first, count, col, stage| {
            im2col_group(col, &x[first * g.img..], count, g);
            if product {
                let ld = count * g.cols;
                if let Some(b) = bias {
                    fill_bias(stage, b, ld);
                }
                // stage (c_grid × count·P) (+)= W (c_grid × c_img·k·k) · col
                kernels::matmul(stage, w, col, g.cg, g.rows, ld, bias.is_some(), inner);
                scatter(&mut out[first * g.grid..], stage, count, g);
            }
        });
    };
    par::for_each_sample_aligned(exec, n, tasks, group, bufs, (&mut [], 0), &body);
}

/// `images = col2im(Wᵀ · grids)` added onto what `init` writes into each image (zeros, or its
/// bias) for `n` samples, group by group: each task works in one group's training buffer of
/// `scratch` (which holds at least one; more make room for more threads). (The transposed
/// convolution's forward pass, the convolution's input gradient.)
#[allow(clippy::too_many_arguments)]
pub(crate) fn grid_to_image(
    images: &mut [f32], scratch: &mut [f32], grids: &[f32], w: &[f32],
    init: &(dyn Fn(&mut [f32]) + Sync), n: usize, g: &Geom, exec: &dyn Exec,
) {
    let group = group_size(n, g.cols);
    let slot = group * g.aux;
    let (tasks, inner) = group_tasks(exec, n, group, g, scratch.len() / slot);
    let body = |buf: &mut [f32], samples: Range<usize>, [out]: [&mut [f32]; 1]| {
        let x = &grids[samples.start * g.grid..samples.end * g.grid];
        for first in (0..samples.len()).step_by(group) {
            let count = group.min(samples.len() - first);
            let (col, stage) = buf[..count * g.aux].split_at_mut(count * g.col);
            gather(stage, &x[first * g.grid..], count, g);
            // col (c_img·k·k × count·P) = Wᵀ · stage (c_grid × count·P)
            kernels::matmul_tn(col, w, stage, g.rows, g.cg, count * g.cols, false, inner);
            let out = &mut out[first * g.img..(first + count) * g.img];
            out.chunks_exact_mut(g.img).for_each(init);
            col2im_add_group(out, col, count, g);
        }
    };
    par::for_each_sample_aligned(exec, n, tasks, group, [(images, g.img)], (scratch, slot), &body);
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
                            crate::kernels::im2col_avx512,
                            crate::kernels::col2im_add_avx512,
                            "avx512",
                        ),
                        (
                            crate::kernels::cpu_has_avx2_fma() && fits(16, 8),
                            crate::kernels::im2col_avx2,
                            crate::kernels::col2im_add_avx2,
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
