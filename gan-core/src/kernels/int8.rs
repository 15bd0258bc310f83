//! The int8 products: behind [`crate::layers::dense::dense_forward_i8`] one quantised input row
//! times an i8 weight matrix, behind the convolutions' `*_forward_i8` one quantised input
//! image through a kernel; summed in i32, scaled back to f32.
//!
//! Integer sums are exact in any order, so the tiling below is free to change per target; the
//! float steps after the sum (one multiply by `sx · s[j]`, one add of the bias) are fixed.

use crate::layers::conv2d::Geom;

/// `out[j] = (Σ_p xq[p]·q[p·n + j]) as f32 · (sx · scales[j]) + bias[j]` for `j < n`, with
/// `n = out.len()` and `q` a `xq.len() × n` row-major matrix.
///
/// Panics if `q`, `scales` or `bias` is shorter than that (callers check lengths first).
pub fn matvec_i8(out: &mut [f32], xq: &[i8], q: &[i8], scales: &[f32], bias: &[f32], sx: f32) {
    let n = out.len();
    assert!(q.len() >= xq.len() * n && scales.len() >= n && bias.len() >= n);
    let mut j = 0;
    while j + TILE <= n {
        // SAFETY: columns j..j+TILE ≤ n of every row p < xq.len() of `q` (asserted above).
        let acc = unsafe { column_sums::<TILE>(xq, q.as_ptr().add(j), n) };
        finish(&mut out[j..j + TILE], &acc, &scales[j..], &bias[j..], sx);
        j += TILE;
    }
    while j < n {
        // SAFETY: as above with one column.
        let acc = unsafe { column_sums::<1>(xq, q.as_ptr().add(j), n) };
        finish(&mut out[j..j + 1], &acc, &scales[j..], &bias[j..], sx);
        j += 1;
    }
}

/// The integer sums alone, as i32 bits: `acc[j] = Σ_p xq[p]·q[p·n + j]` for
/// `j < n = acc.len()` (the all-integer encoding's products, [`crate::encoding::q8`]).
///
/// Panics if `q` is shorter than `xq.len() × n`.
pub fn matvec_i8_sums(acc: &mut [f32], xq: &[i8], q: &[i8]) {
    let n = acc.len();
    assert!(q.len() >= xq.len() * n);
    let bits = |out: &mut [f32], sums: &[i32]| {
        for (o, &s) in out.iter_mut().zip(sums) {
            *o = f32::from_bits(s as u32);
        }
    };
    let mut j = 0;
    while j + TILE <= n {
        // SAFETY: columns j..j+TILE ≤ n of every row p < xq.len() of `q` (asserted above).
        bits(&mut acc[j..j + TILE], &unsafe { column_sums::<TILE>(xq, q.as_ptr().add(j), n) });
        j += TILE;
    }
    while j < n {
        // SAFETY: as above with one column.
        bits(&mut acc[j..j + 1], &unsafe { column_sums::<1>(xq, q.as_ptr().add(j), n) });
        j += 1;
    }
}

/// Columns summed together, so the accumulators stay in registers: few on ARMv6-M (eight low
/// registers; no compare-and-swap atomics is how its targets are told apart), more on
/// ARMv7E-M, a vector's worth elsewhere.
/// (Measured on the default generator in QEMU: 2, 3 and 4 columns give 6.26 M, 5.97 M and
/// 5.93 M instructions per digit on ARMv6-M; 4, 8 and 12 give 0.83 M, 0.75 M and 0.74 M on the
/// Cortex-M4F.)
#[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
const TILE: usize = 4;
#[cfg(all(target_arch = "arm", target_has_atomic = "32"))]
const TILE: usize = 8;
#[cfg(not(target_arch = "arm"))]
const TILE: usize = 16;

/// Whether 4×4 transposed convolutions take [`conv_transpose2d_i8_4x4`] (per pixel and input
/// channel, four inputs against every output channel) rather than the general walk with
/// [`TILE`] channels in registers. Measured on the `pico` generator in QEMU: 12.6 M vs 14.2 M
/// instructions per digit on ARMv6-M, 5.3 M vs 4.5 M on the Cortex-M4F.
const FOUR_BY_FOUR: bool = cfg!(all(target_arch = "arm", not(target_has_atomic = "32")));

/// `Σ_p xq[p]·q[p·ld + l]` for `l < W`, in i32.
///
/// # Safety
/// `q[p·ld .. p·ld + W]` is readable for every `p < xq.len()`.
#[inline(always)]
unsafe fn column_sums<const W: usize>(xq: &[i8], q: *const i8, ld: usize) -> [i32; W] {
    let mut acc = [0i32; W];
    let mut row = q;
    for &x in xq {
        let x = x as i32;
        for (l, a) in acc.iter_mut().enumerate() {
            // SAFETY: row p, column l < W (contract).
            *a += x * unsafe { *row.add(l) } as i32;
        }
        row = row.wrapping_add(ld);
    }
    acc
}

/// `out[l] = acc[l] as f32 · (sx · scales[l]) + bias[l]`.
#[inline(always)]
fn finish(out: &mut [f32], acc: &[i32], scales: &[f32], bias: &[f32], sx: f32) {
    for (((o, &a), &s), &b) in out.iter_mut().zip(acc).zip(scales).zip(bias) {
        *o = a as f32 * (sx * s) + b;
    }
}

/// The taps one output pixel of a convolution sums, for [`TILE`] output channels at once: for
/// every input channel `c < n_in`, tap row `a < ny` and column `b < nx`, the input value at
/// `c·x_in + a·x_y + b·x_x` times, for output channel `t` of the tile, the weight at
/// `c·w_in + a·w_y + b·w_x + t·w_t` (offsets from two base positions; strides may be negative).
#[derive(Clone, Copy, Debug)]
struct Walk {
    n_in: usize,
    ny: usize,
    nx: usize,
    x_in: isize,
    x_y: isize,
    x_x: isize,
    w_in: isize,
    w_y: isize,
    w_x: isize,
    w_t: isize,
}

impl Walk {
    /// The smallest and largest offset of an affine walk over `counts` with `strides`.
    fn extent(terms: [(usize, isize); 4]) -> (isize, isize) {
        let (mut lo, mut hi) = (0isize, 0isize);
        for (n, stride) in terms {
            let last = (n as isize - 1) * stride;
            if last < 0 {
                lo += last;
            } else {
                hi += last;
            }
        }
        (lo, hi)
    }

    /// True if every offset the walk reads from `x0` in `xq` and from `w0` in `q` (for `tile`
    /// channels) is in bounds.
    fn fits(&self, xq: &[i8], x0: usize, q: &[i8], w0: usize, tile: usize) -> bool {
        if self.n_in == 0 || self.ny == 0 || self.nx == 0 {
            return true;
        }
        let (xl, xh) = Self::extent([
            (self.n_in, self.x_in),
            (self.ny, self.x_y),
            (self.nx, self.x_x),
            (1, 0),
        ]);
        let (wl, wh) = Self::extent([
            (self.n_in, self.w_in),
            (self.ny, self.w_y),
            (self.nx, self.w_x),
            (tile, self.w_t),
        ]);
        let ok = |base: usize, lo: isize, hi: isize, len: usize| {
            base as isize + lo >= 0 && ((base as isize + hi) as usize) < len
        };
        ok(x0, xl, xh, xq.len()) && ok(w0, wl, wh, q.len())
    }

    /// The sums of `T` output channels.
    ///
    /// # Safety
    /// [`Walk::fits`] holds for `x` (from its base) and `w` (from its base) with `T` channels.
    #[inline(always)]
    unsafe fn sums<const T: usize>(&self, x: *const i8, w: *const i8) -> [i32; T] {
        let mut acc = [0i32; T];
        let (mut xc, mut wc) = (x, w);
        for _ in 0..self.n_in {
            let (mut xa, mut wa) = (xc, wc);
            for _ in 0..self.ny {
                let (mut xb, mut wb) = (xa, wa);
                for _ in 0..self.nx {
                    // SAFETY: every offset of the walk is in bounds (contract).
                    let xv = i32::from(unsafe { *xb });
                    let mut wt = wb;
                    for a in acc.iter_mut() {
                        // SAFETY: as above.
                        *a += xv * i32::from(unsafe { *wt });
                        wt = wt.wrapping_offset(self.w_t);
                    }
                    xb = xb.wrapping_offset(self.x_x);
                    wb = wb.wrapping_offset(self.w_x);
                }
                xa = xa.wrapping_offset(self.x_y);
                wa = wa.wrapping_offset(self.w_y);
            }
            xc = xc.wrapping_offset(self.x_in);
            wc = wc.wrapping_offset(self.w_in);
        }
        acc
    }

    /// Writes the integer sums (as bits, see [`finish_planes`]) of output pixel `pixel` of
    /// every output channel (`n_out` planes of `plane`) from the walk starting at `x0` in `xq`
    /// and at `w0 + c·w_t` in `q` for channel `c`.
    #[allow(clippy::too_many_arguments)]
    fn pixel(
        &self, out: &mut [f32], pixel: usize, plane: usize, n_out: usize, xq: &[i8], x0: usize,
        q: &[i8], w0: usize,
    ) {
        let mut co = 0;
        while co < n_out {
            let tile = (n_out - co).min(TILE);
            let w = w0 + co * self.w_t as usize;
            assert!(self.fits(xq, x0, q, w, tile), "int8 convolution walk out of bounds");
            let (xp, wp) = (xq.as_ptr().wrapping_add(x0), q.as_ptr().wrapping_add(w));
            let mut acc = [0i32; TILE];
            if tile == TILE {
                // SAFETY: `fits` checked every offset for `TILE` channels.
                acc = unsafe { self.sums::<TILE>(xp, wp) };
            } else {
                for (t, a) in acc[..tile].iter_mut().enumerate() {
                    let wt = wp.wrapping_offset(t as isize * self.w_t);
                    // SAFETY: `fits` checked channels `0..tile`, `t` among them.
                    *a = unsafe { self.sums::<1>(xp, wt) }[0];
                }
            }
            for (t, &a) in acc[..tile].iter().enumerate() {
                out[(co + t) * plane + pixel] = f32::from_bits(a as u32);
            }
            co += tile;
        }
    }
}

/// The int8 convolution of one sample (see [`crate::layers::conv2d::conv2d_forward_i8`]):
/// `out` (`C_out × OH × OW`) from the quantised input `xq` (`C_in × H × W`, scale `sx`).
///
/// Each output pixel sums over the taps that fall inside the image, whose ranges are worked
/// out once per pixel (no division); [`TILE`] output channels are summed together so each
/// input value is loaded once for all of them.
pub(crate) fn conv2d_i8(
    out: &mut [f32], xq: &[i8], q: &[i8], scales: &[f32], bias: &[f32], sx: f32, g: &Geom,
) {
    conv2d_i8_sums(out, xq, q, g);
    finish_planes(out, g.gh * g.gw, scales, bias, sx);
}

/// The integer sums of [`conv2d_i8`], left in `out` as bits (see [`finish_planes`]).
pub(crate) fn conv2d_i8_sums(out: &mut [f32], xq: &[i8], q: &[i8], g: &Geom) {
    let plane = g.gh * g.gw;
    let range = |pos: usize, len: usize| {
        // Taps t with 0 <= pos·s − p + t < len.
        let start = pos * g.s;
        let lo = g.p.saturating_sub(start);
        (lo, g.k.min((len + g.p).saturating_sub(start)).max(lo))
    };
    let (iw, k) = (g.iw as isize, g.k as isize);
    for gy in 0..g.gh {
        let (ky0, ky1) = range(gy, g.ih);
        for gx in 0..g.gw {
            let (kx0, kx1) = range(gx, g.iw);
            let walk = Walk {
                n_in: g.ci,
                ny: ky1 - ky0,
                nx: kx1 - kx0,
                x_in: (g.ih * g.iw) as isize,
                x_y: iw,
                x_x: 1,
                w_in: k * k,
                w_y: k,
                w_x: 1,
                w_t: g.rows as isize,
            };
            let empty = walk.ny == 0 || walk.nx == 0;
            // The first tap's input position (any in-bounds value when there is none).
            let x0 = if empty { 0 } else { (gy * g.s + ky0 - g.p) * g.iw + (gx * g.s + kx0 - g.p) };
            let w0 = ky0 * g.k + kx0;
            let walk = if empty { Walk { n_in: 0, ..walk } } else { walk };
            walk.pixel(out, gy * g.gw + gx, plane, g.cg, xq, x0, q, w0);
        }
    }
}

/// Turns the integer sums a kernel left in `out` (the bits of each `f32` hold an `i32`), one
/// plane of `plane` values per output channel, into `sum as f32 · (sx · scales[c]) + bias[c]`.
fn finish_planes(out: &mut [f32], plane: usize, scales: &[f32], bias: &[f32], sx: f32) {
    for ((o, &sc), &b) in out.chunks_exact_mut(plane).zip(scales).zip(bias) {
        let m = sx * sc;
        for v in o {
            *v = v.to_bits() as i32 as f32 * m + b;
        }
    }
}

/// The int8 transposed convolution of one sample (see
/// [`crate::layers::conv_transpose2d::conv_transpose2d_forward_i8`]): `out` (`C_out × OH ×
/// OW`, the geometry's image) from the quantised input `xq` (`C_in × H × W`, its grid).
///
/// Output pixel `(y, x)` gathers the taps `ky ≡ (y + p) mod s` (and likewise `kx`), each next
/// tap `s` further in the kernel and one input row back; the taps are worked out once per
/// pixel. [`TILE`] output channels are summed together.
pub(crate) fn conv_transpose2d_i8(
    out: &mut [f32], xq: &[i8], q: &[i8], scales: &[f32], bias: &[f32], sx: f32, g: &Geom,
) {
    conv_transpose2d_i8_sums(out, xq, q, g);
    finish_planes(out, g.ih * g.iw, scales, bias, sx);
}

/// The integer sums of [`conv_transpose2d_i8`], left in `out` as bits (see [`finish_planes`]).
pub(crate) fn conv_transpose2d_i8_sums(out: &mut [f32], xq: &[i8], q: &[i8], g: &Geom) {
    if FOUR_BY_FOUR && g.k == 4 && g.s == 2 {
        conv_transpose2d_i8_4x4(out, xq, q, g);
    } else {
        conv_transpose2d_i8_walk(out, xq, q, g);
    }
}

/// [`conv_transpose2d_i8`] through the general [`Walk`] ([`TILE`] channels in registers).
fn conv_transpose2d_i8_walk(out: &mut [f32], xq: &[i8], q: &[i8], g: &Geom) {
    let (s, p, k) = (g.s, g.p, g.k);
    let plane = g.ih * g.iw;
    let kk = k * k;
    // For output coordinate `o` of an axis with `n` input positions: the first tap, its input
    // position, and how many taps there are.
    let taps = |o: usize, n: usize| {
        let to = o + p;
        let mut t = to % s;
        // Skip the taps whose input position (to − t)/s is past the end.
        while t < k && t <= to && (to - t) / s >= n {
            t += s;
        }
        let mut count = 0;
        while t + count * s < k && t + count * s <= to {
            count += 1;
        }
        (t, if count > 0 { (to - t) / s } else { 0 }, count)
    };
    let (gw, k_i, s_i) = (g.gw as isize, k as isize, s as isize);
    for oy in 0..g.ih {
        let (ky0, gy0, ny) = taps(oy, g.gh);
        for ox in 0..g.iw {
            let (kx0, gx0, nx) = taps(ox, g.gw);
            let walk = Walk {
                n_in: g.cg,
                ny,
                nx,
                x_in: (g.gh * g.gw) as isize,
                x_y: -gw,
                x_x: -1,
                w_in: (g.ci * kk) as isize,
                w_y: s_i * k_i,
                w_x: s_i,
                w_t: kk as isize,
            };
            let x0 = gy0 * g.gw + gx0;
            let w0 = ky0.min(k - 1) * k + kx0.min(k - 1);
            walk.pixel(out, oy * g.iw + ox, plane, g.ci, xq, x0, q, w0);
        }
    }
}

/// [`conv_transpose2d_i8`] for 4×4 kernels with stride 2 (the generators' upsampling layers):
/// every output pixel has at most 2 × 2 taps, and they sit at fixed places in each 4×4 kernel
/// (`a`, `a + 2`, `a + 8`, `a + 10` from the pixel's first tap `a`). Per pixel and input channel
/// the four input values are loaded once (0 for a tap that falls outside the input) and every
/// output channel adds its four products to an accumulator kept in the output buffer (as
/// integer bits, see [`finish_planes`]). An input channel whose four values are all zero
/// (common after ReLU) is skipped.
fn conv_transpose2d_i8_4x4(out: &mut [f32], xq: &[i8], q: &[i8], g: &Geom) {
    const KK: usize = 16;
    let (plane, grid, n_out) = (g.ih * g.iw, g.gh * g.gw, g.ci);
    let block = n_out * KK;
    // Along one axis, output coordinate `o` takes tap `(o + p) mod 2` from input position
    // `(o + p) div 2`, and tap + 2 from the position before, where those exist.
    let axis = |o: usize, n: usize| {
        let t = o + g.p;
        let pos = t >> 1;
        (t & 1, [(pos < n).then_some(pos), pos.checked_sub(1).filter(|&q| q < n)])
    };
    for oy in 0..g.ih {
        let (ry, ys) = axis(oy, g.gh);
        for ox in 0..g.iw {
            let (rx, xs) = axis(ox, g.gw);
            // Input offsets of the four taps within a channel (None: outside the input).
            let mut xo = [None; 4];
            for (i, y) in ys.iter().enumerate() {
                for (j, x) in xs.iter().enumerate() {
                    if let (Some(y), Some(x)) = (y, x) {
                        xo[2 * i + j] = Some(y * g.gw + x);
                    }
                }
            }
            let a = ry * 4 + rx;
            let pixel = oy * g.iw + ox;
            let accs = &mut out[pixel..];
            for c in 0..n_out {
                accs[c * plane] = f32::from_bits(0);
            }
            let (mut xc, mut wc) = (0, 0);
            for _ in 0..g.cg {
                let x = &xq[xc..xc + grid];
                let v = |t: usize| xo[t].map_or(0, |o| i32::from(x[o]));
                let (x0, x1, x2, x3) = (v(0), v(1), v(2), v(3));
                let w = &q[wc..wc + block];
                xc += grid;
                wc += block;
                if x0 | x1 | x2 | x3 == 0 {
                    continue;
                }
                let mut at = 0;
                for taps in w.chunks_exact(KK) {
                    // `a <= 5`, so `a + 10` is inside the kernel.
                    let t = &taps[a..a + 11];
                    let sum = x0 * i32::from(t[0])
                        + x1 * i32::from(t[2])
                        + x2 * i32::from(t[8])
                        + x3 * i32::from(t[10]);
                    let acc = &mut accs[at];
                    *acc = f32::from_bits((acc.to_bits() as i32).wrapping_add(sum) as u32);
                    at += plane;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::conv2d::ConvDims;
    use crate::testutil::Lcg;
    use std::vec;
    use std::vec::Vec;

    /// The two transposed-convolution kernels agree bit for bit wherever the 4×4 one applies
    /// (whichever the target uses; the layer tests check the dispatch against the definition).
    #[test]
    fn four_by_four_kernel_matches_the_walk() {
        let mut r = Lcg::new(5);
        for (ci, h, w, co, s, p) in [
            (3, 7, 7, 5, 2, 1),
            (2, 4, 6, 3, 2, 0),
            (4, 3, 5, 9, 2, 2),
            (1, 1, 1, 2, 2, 3),
            (2, 5, 3, 4, 2, 3),
        ] {
            let d = ConvDims { in_c: ci, in_h: h, in_w: w, out_c: co, k: 4, stride: s, pad: p };
            let Ok(g) = Geom::transpose(&d) else { continue };
            let xq: Vec<i8> = (0..g.grid).map(|_| (r.next_f32() * 254.0 - 127.0) as i8).collect();
            // Some inputs zero, as after ReLU.
            let xq: Vec<i8> =
                xq.iter().enumerate().map(|(i, &v)| if i % 3 == 0 { 0 } else { v }).collect();
            let q: Vec<i8> = (0..g.w).map(|_| (r.next_f32() * 254.0 - 127.0) as i8).collect();
            let mut a = vec![f32::NAN; g.img];
            let mut b = vec![f32::NAN; g.img];
            conv_transpose2d_i8_4x4(&mut a, &xq, &q, &g);
            conv_transpose2d_i8_walk(&mut b, &xq, &q, &g);
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{d:?}"
            );
        }
    }
}
