//! Transposed 2-D convolution, the adjoint of [`crate::layers::conv2d`]'s convolution with the
//! same kernel, stride and padding (see that module for the shared geometry, the shapes and the
//! summation order of the exact kernel).
//!
//! Shapes (one sample): `inp` C_in×H×W, `w` C_in×C_out×k×k, `b` C_out, `out` C_out×OH×OW with
//! `OH = (H − 1)·stride − 2·pad + k` ([`conv_transpose_out_len`](crate::layers::conv2d::conv_transpose_out_len)).

use core::mem::MaybeUninit;

use crate::error::{CoreError, SpecError, check_len, check_min_len};
use crate::kernels::{self, Exec, Serial, par};
use crate::layers::Channels;
use crate::layers::Rules;
use crate::layers::columns::{grid_to_image, group_col, group_size, image_to_grid};
use crate::layers::conv2d::{
    self, BackwardFn, Conv, ConvDims, Direction, ExactFn, ForwardFn, Geom, Int8Fn, add_bias_grad,
    batch, fill_bias, span,
};
use crate::spec::{LayerInfo, Shape};

/// The transposed-convolution layer.
pub type ConvTranspose2d = Conv<Transposed>;

/// The adjoint of the convolution: the grid is the input, the image the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transposed;

/// Shape rule: `out_c × OH × OW` ([`conv_transpose_out_len`](crate::layers::conv2d::conv_transpose_out_len)); `W` of `C × out_c·k·k`, `b` of
/// `out_c`, and forward's column buffer (`out_c·k·k × H·W`) as auxiliary storage.
pub(crate) const fn rules(
    out_c: u32, k: u32, stride: u32, pad: u32, inp: Shape, index: usize,
) -> Result<Rules, SpecError> {
    conv2d::rules(out_c, k, stride, pad, inp, index, true)
}

impl Direction for Transposed {
    const NAME: &'static str = "conv_transpose2d";
    const BACKWARD_READS_INPUT: bool = true;
    /// Each output of a stride-`s` transposed convolution sums about `k²/s²` taps per input
    /// channel.
    fn fans(c_in: usize, c_out: usize, kk: usize, s2: usize) -> (usize, usize) {
        ((c_in * kk / s2).max(1), c_out * kk)
    }
    fn positions(l: &LayerInfo) -> usize {
        (l.in_shape.h as usize).saturating_mul(l.in_shape.w as usize)
    }
    const FORWARD: ForwardFn = conv_transpose2d_forward;
    const BACKWARD: BackwardFn = conv_transpose2d_backward;
    const EXACT: ExactFn = conv_transpose2d_forward_exact_with;
    const INT8: Int8Fn = conv_transpose2d_forward_i8;
    const Q8_SUMS: fn(&mut [f32], &[i8], &[u8], &Geom) = q8_sums;
    const Q8_INDEX: fn(&Geom, usize) -> usize = q8_index;
    const Q8_LEN: fn(&Geom) -> usize = q8_len;
    fn geom(d: &ConvDims) -> Result<Geom, CoreError> {
        Geom::transpose(d)
    }
    /// `w` is C_in × C_out × k × k: output channel `c`'s taps are the `c`-th block of `k²` in
    /// every input channel's row.
    fn channels(_: usize, c_out: usize, kk: usize) -> Channels {
        Channels { n: c_out, inner: kk }
    }
}

/// Training forward of a transposed convolution (see the module docs for shapes).
///
/// `out` N×C_out×OH×OW; `inp` N×C_in×H×W; `w` C_in×C_out×k×k; `b` C_out; `scratch` at least
/// one group's training buffer ([`ConvDims::transpose_train_len`] times the group's samples,
/// at most N; more makes room for more threads).
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_forward(
    out: &mut [f32], scratch: &mut [f32], inp: &[f32], w: &[f32], b: &[f32], n: usize,
    d: &ConvDims, exec: &dyn Exec,
) -> Result<(), CoreError> {
    let g = Geom::transpose(d)?;
    g.check_forward(n, out, inp, w, b)?;
    let group = group_size(n, g.cols);
    check_min_len("scratch", scratch.len(), batch(group, g.aux)?)?;
    // Groups are independent: spread them over the threads, one group's buffer per task (as
    // many tasks as `scratch` holds buffers); each product then runs on one thread.
    let plane = g.ih * g.iw;
    grid_to_image(out, scratch, inp, w, &|o| fill_bias(o, b, plane), n, &g, exec);
    Ok(())
}

/// Backward of [`conv_transpose2d_forward`], from `dout` (N×C_out×OH×OW) and the forward input.
///
/// - `dw` (C_in×C_out×k×k) `+= Σₙ inpₙ · im2col(doutₙ)ᵀ`, `db` (C_out) `+= Σ dout`: skipped when
///   `None`;
/// - `dinp` (N×C_in×H×W) `= W · im2col(doutₙ)`, overwritten; skipped when `None`.
///
/// `scratch` has at least `n ·` [`ConvDims::transpose_train_len`] elements (every sample's
/// training buffer) when `dinp` or `dw` is given.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_backward(
    dinp: Option<&mut [f32]>, dw: Option<&mut [f32]>, db: Option<&mut [f32]>, scratch: &mut [f32],
    dout: &[f32], inp: &[f32], w: &[f32], n: usize, d: &ConvDims, exec: &dyn Exec,
) -> Result<(), CoreError> {
    let g = Geom::transpose(d)?;
    g.check_backward(n, dout, w, dinp.as_deref(), dw.as_deref(), db.as_deref())?;
    check_len("inp", inp.len(), batch(n, g.grid)?)?;
    if dinp.is_some() || dw.is_some() {
        check_min_len("scratch", scratch.len(), batch(n, g.aux)?)?;
    }
    if let Some(db) = db {
        add_bias_grad(db, dout, g.ih * g.iw, exec);
    }
    if dinp.is_none() && dw.is_none() {
        return Ok(());
    }
    // Every sample's column matrix of `dout` (kept for the weight gradient) and, when asked
    // for, `dx (C_in × H·W) = W (C_in × C_out·k·k) · dcol`, group by group, in parallel.
    let bufs = &mut scratch[..n * g.aux];
    image_to_grid(dinp, bufs, dout, w, None, n, &g, exec);
    if let Some(dw) = dw {
        // dW (C_in × C_out·k·k) += Σₙ xₙ (C_in × H·W) · dcolₙᵀ (H·W × C_out·k·k), sample by sample
        let group = group_size(n, g.cols);
        let at = |s: usize| group_col(s, n, group, &g);
        kernels::matmul_nt_sum_in(dw, inp, g.grid, bufs, &at, n, g.cg, g.cols, g.rows, exec);
    }
    Ok(())
}

/// The all-integer sums: the 4×4, stride-2 kernel where it applies, else the plain scatter
/// ([`kernels::q8`]).
fn q8_sums(acc: &mut [f32], xq: &[i8], u: &[u8], g: &Geom) {
    if kernels::q8::is_convt4(g) {
        kernels::q8::conv_transpose_4x4(acc, xq, u, g);
    } else {
        kernels::q8::reference::conv_transpose(acc, xq, u, g);
    }
}

/// Bytes of the all-integer layout.
fn q8_len(g: &Geom) -> usize {
    if kernels::q8::is_convt4(g) { kernels::q8::convt4_len(g.cg, g.ci) } else { g.w }
}

/// The all-integer layout: per output parity for the 4×4, stride-2 kernel, else the layer's own.
fn q8_index(g: &Geom, i: usize) -> usize {
    if kernels::q8::is_convt4(g) { kernels::q8::convt4_index(i, g.cg, g.ci) } else { i }
}

/// Exact inference forward of a transposed convolution: same shapes as
/// [`conv_transpose2d_forward`], no scratch, fixed summation order (module docs).
pub fn conv_transpose2d_forward_exact(
    out: &mut [f32], inp: &[f32], w: &[f32], b: &[f32], n: usize, d: &ConvDims,
) -> Result<(), CoreError> {
    conv_transpose2d_forward_exact_with(out, inp, w, b, n, d, &Serial)
}

/// [`conv_transpose2d_forward_exact`] with the output planes spread over the threads of `exec`
/// (the same bits for every `exec`).
pub fn conv_transpose2d_forward_exact_with(
    out: &mut [f32], inp: &[f32], w: &[f32], b: &[f32], n: usize, d: &ConvDims, exec: &dyn Exec,
) -> Result<(), CoreError> {
    let g = Geom::transpose(d)?;
    g.check_forward(n, out, inp, w, b)?;
    let macs = g.w * g.cols;
    // On the host, output channels in blocks (the same sums in the same order, see
    // `exact_block`); the device keeps the loops below, which need no stack for a block.
    let fits = g.ih * g.s * ((g.iw - 1 + g.p) / g.s + 1) <= BLOCK_SLOTS;
    if cfg!(not(target_arch = "arm"))
        && fits
        && let Some(per) = block_width(g.ci)
    {
        let blocks = g.ci / per;
        // A one-channel layer (a grey-scale output) splits its rows over the threads too, into
        // as many equal parts as there are threads when they divide the height.
        let parts = match (g.ci, exec.threads()) {
            (1, t) if n < t => {
                (1..=t.min(g.ih)).rev().find(|c| g.ih.is_multiple_of(*c)).unwrap_or(1)
            }
            _ => 1,
        };
        let (items, rows) = (n * blocks * parts, g.ih / parts);
        let part = per * rows * g.iw;
        // (The rows are split to use the threads: at least one task per part.)
        let tasks = par::sample_tasks(exec, items, 2 * macs * per / g.ci.max(1) / parts).max(parts);
        let bufs = [(&mut out[..items * part], part)];
        par::for_each_sample(exec, items, tasks, bufs, (&mut [], 0), &|_, range, [o]| {
            for (item, planes) in range.zip(o.chunks_exact_mut(part)) {
                let (sample, rest) = (item / (blocks * parts), item % (blocks * parts));
                let x = &inp[sample * g.grid..(sample + 1) * g.grid];
                let oy0 = rest % parts * rows;
                let blk = Block { co0: rest / parts * per, per, oy0, oy1: oy0 + rows };
                exact_block(planes, x, w, b, &blk, &g);
            }
        });
        return Ok(());
    }
    exact_by_plane(out, inp, w, b, n, &g, exec);
    Ok(())
}

/// The exact kernel one output plane at a time (the definition [`exact_block`] follows).
fn exact_by_plane(
    out: &mut [f32], inp: &[f32], w: &[f32], b: &[f32], n: usize, g: &Geom, exec: &dyn Exec,
) {
    let plane = g.ih * g.iw;
    let macs = g.w * g.cols;
    conv2d::for_each_plane(out, n, g.ci, plane, macs, exec, &|sample, co, oplane| {
        let x = &inp[sample * g.grid..(sample + 1) * g.grid];
        let bias = b[co];
        for (oy, orow) in oplane.chunks_exact_mut(g.iw).enumerate() {
            orow.fill(0.0);
            for (cin, xplane) in x.chunks_exact(g.cols).enumerate() {
                let wbase = (cin * g.ci + co) * g.k * g.k;
                for ky in 0..g.k {
                    // The input row gy with gy·s + ky − p = oy, if any.
                    let t = oy + g.p;
                    if t < ky || !(t - ky).is_multiple_of(g.s) || (t - ky) / g.s >= g.gh {
                        continue;
                    }
                    let gy = (t - ky) / g.s;
                    let xrow = &xplane[gy * g.gw..(gy + 1) * g.gw];
                    for kx in 0..g.k {
                        let (lo, hi) = span(g.gw, g.iw, g.s, kx, g.p);
                        if lo == hi {
                            continue;
                        }
                        let wv = w[wbase + ky * g.k + kx];
                        let accs = orow[lo * g.s + kx - g.p..].iter_mut().step_by(g.s);
                        for (acc, &xv) in accs.zip(&xrow[lo..hi]) {
                            *acc += wv * xv;
                        }
                    }
                }
            }
            for acc in orow.iter_mut() {
                *acc += bias;
            }
        }
    });
}

/// Output channels computed together by [`exact_block`].
const BLOCK: usize = 8;
/// Output channels of a block on CPUs with AVX-512F.
#[cfg(target_arch = "x86_64")]
const WIDE: usize = 16;

/// Channels per [`exact_block`] for `c_out` output channels: sixteen with AVX-512F when they
/// divide it, else eight when they do, else all of them when there are at most eight; `None`
/// for the plane-by-plane loops.
fn block_width(c_out: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if c_out.is_multiple_of(WIDE) && kernels::exact_isa() == kernels::ExactIsa::Avx512 {
        return Some(WIDE);
    }
    if c_out.is_multiple_of(BLOCK) { Some(BLOCK) } else { (c_out <= BLOCK).then_some(c_out) }
}
/// Elements of [`exact_block`]'s zero-padded input plane (4×4 kernels with stride 2).
const MAX_PADDED: usize = 1024;
/// Accumulator slots of one output plane in [`exact_block`] (`OH · stride ·
/// ⌈(OW + pad)/stride⌉`, about `OH · (OW + pad + stride)`): 32 KiB of stack for blocks of
/// eight channels, 64 KiB for sixteen.
const BLOCK_SLOTS: usize = 1024;

/// Output channels `co0 .. co0 + per` (`per <= BLOCK`, or sixteen with AVX-512F), rows
/// `oy0 .. oy1` of one sample, into their `per` planes: the exact kernel's sums, each output
/// still the fixed-order sum over (input channel, ky, kx) of separately rounded products and
/// additions, then the bias, so the bits are the plane-by-plane loops' exactly. What changes
/// is the loop nest: one weight per channel of the block is loaded once per (input channel,
/// ky, kx) and applied to every input it meets for all the block's channels at once (the
/// block is the vector), and the output is kept deinterleaved by column parity (`ox + p =
/// q·s + r` at slot `(oy·s + r)·Q + q`) so a tap's contributions to a row are contiguous; for
/// 4×4 kernels with stride 2 each slot takes its four taps of an input channel in one pass.
fn exact_block(planes: &mut [f32], x: &[f32], w: &[f32], b: &[f32], blk: &Block, g: &Geom) {
    #[cfg(target_arch = "x86_64")]
    if blk.per == WIDE {
        // SAFETY: blocks are this wide only on CPUs with AVX-512F (`block_width`).
        return unsafe { exact_block_avx512(planes, x, w, b, blk, g) };
    }
    #[cfg(target_arch = "x86_64")]
    if kernels::exact_isa() != kernels::ExactIsa::Portable {
        // SAFETY: the exact kernels run above the portable level only on CPUs with AVX.
        return unsafe { exact_block_avx(planes, x, w, b, blk, g) };
    }
    if blk.per == 1 {
        let (strip, quad) = (strip_portable::<1>, quad_portable::<1>);
        exact_block_body(planes, x, w, b, blk, g, strip, quad, taps_portable::<1>);
    } else {
        let (strip, quad) = (strip_portable::<BLOCK>, quad_portable::<BLOCK>);
        exact_block_body(planes, x, w, b, blk, g, strip, quad, taps_portable::<BLOCK>);
    }
}

/// What one call of [`exact_block`] computes: output channels `co0 .. co0 + per`, rows
/// `oy0 .. oy1`.
#[derive(Clone, Copy)]
struct Block {
    co0: usize,
    per: usize,
    oy0: usize,
    oy1: usize,
}

/// The inputs one tap meets in a block: `rows` rows of `len` slots from slot `a0` of the
/// accumulators and element `x0` of the input plane, rows `a_step` slots and `x_step`
/// elements apart.
#[derive(Clone, Copy)]
struct Strip {
    a0: usize,
    a_step: usize,
    x0: usize,
    x_step: usize,
    rows: usize,
    len: usize,
}

impl Strip {
    /// Panics unless every slot and input of the strip lies in `acc` resp. `x`.
    fn check<T>(&self, acc: &[T], x: &[f32]) {
        if self.rows > 0 && self.len > 0 {
            let last = |at: usize, step: usize| at + (self.rows - 1) * step + self.len;
            assert!(
                last(self.a0, self.a_step) <= acc.len() && last(self.x0, self.x_step) <= x.len()
            );
        }
    }

    /// [`Strip::check`] for a quad strip (4×4 kernels with stride 2, over the zero-padded
    /// input plane `xp`, rows `x_step` apart): each slot `q` of a row also reads the input one
    /// further (`x0 + q + 1`) and both one row up, so those must lie in `xp` too.
    fn check_quad<T>(&self, acc: &[T], xp: &[f32]) {
        if self.rows > 0 && self.len > 0 {
            self.check(acc, &xp[..xp.len().saturating_sub(1)]);
            assert!(self.x0 >= self.x_step);
        }
    }
}

/// `acc[slot][c] += wv[c] · x[i]` over a strip (each product rounded, then the sum): the
/// inner loop of [`exact_block_body`].
#[inline(always)]
fn strip_portable<const B: usize>(acc: &mut [[f32; B]], x: &[f32], st: &Strip, wv: &[f32; B]) {
    st.check(acc, x);
    for r in 0..st.rows {
        let (a, xs) = (st.a0 + r * st.a_step, st.x0 + r * st.x_step);
        for (a, &xv) in acc[a..a + st.len].iter_mut().zip(&x[xs..xs + st.len]) {
            for (a, &wc) in a.iter_mut().zip(wv) {
                *a += wc * xv;
            }
        }
    }
}

/// [`strip_portable`] and [`quad_portable`] in one vector instruction set (`$strip`, `$quad`
/// over `$lanes` channels): one multiply and one add per product (no FMA: the same bits),
/// without per-row bounds checks.
#[cfg(target_arch = "x86_64")]
macro_rules! vector_strips {
    ($strip:ident, $quad:ident, $feature:literal, $lanes:expr, $vt:ty,
     $load:ident, $store:ident, $add:ident, $mul:ident, $set1:ident) => {
        #[target_feature(enable = $feature)]
        #[inline]
        fn $strip(acc: &mut [[f32; $lanes]], x: &[f32], st: &Strip, wv: &[f32; $lanes]) {
            use core::arch::x86_64::*;
            st.check(acc, x);
            // SAFETY: every slot and input read lies in `acc` resp. `x` (checked); each slot
            // is `lanes` floats (unaligned access).
            unsafe {
                let wv = $load(wv.as_ptr());
                for r in 0..st.rows {
                    let a = acc.as_mut_ptr().add(st.a0 + r * st.a_step).cast::<f32>();
                    let xs = x.as_ptr().add(st.x0 + r * st.x_step);
                    for i in 0..st.len {
                        let p = a.add(i * $lanes);
                        $store(p, $add($load(p), $mul(wv, $set1(*xs.add(i)))));
                    }
                }
            }
        }

        #[target_feature(enable = $feature)]
        #[inline]
        fn $quad(
            acc: &mut [[f32; $lanes]], xp: &[f32], q: &Strip, w: &[[f32; $lanes]], plane: usize,
        ) {
            use core::arch::x86_64::*;
            // One input channel (four weights) or two (eight, the second plane `plane` later).
            let two = w.len() == 8;
            assert!(w.len() == 4 || two);
            q.check_quad(acc, xp);
            if two {
                q.check_quad(acc, &xp[plane..]);
            }
            // SAFETY: as above, with the quad strip's reads (checked for both planes).
            unsafe {
                let ld = |t: usize| $load(w[t.min(w.len() - 1)].as_ptr());
                let w0 = [ld(0), ld(1), ld(2), ld(3)];
                let w1 = [ld(4), ld(5), ld(6), ld(7)];
                // The inputs at a slot's column (`a1`, `b1`) are the next slot's inputs before
                // its column (`a0`, `b0`): each is broadcast once and carried over.
                let taps = |v, [a1, a0, b1, b0]: [$vt; 4], w: &[$vt; 4]| {
                    let v = $add(v, $mul(w[0], a1));
                    let v = $add(v, $mul(w[1], a0));
                    let v = $add(v, $mul(w[2], b1));
                    $add(v, $mul(w[3], b0))
                };
                for r in 0..q.rows {
                    let a = acc.as_mut_ptr().add(q.a0 + r * q.a_step).cast::<f32>();
                    let xa = xp.as_ptr().add(q.x0 + r * q.x_step);
                    let xb = xa.sub(q.x_step);
                    let (mut a0, mut b0) = ($set1(*xa), $set1(*xb));
                    if two {
                        let (xa2, xb2) = (xa.add(plane), xb.add(plane));
                        let (mut a02, mut b02) = ($set1(*xa2), $set1(*xb2));
                        for i in 0..q.len {
                            let p = a.add(i * $lanes);
                            let (a1, b1) = ($set1(*xa.add(i + 1)), $set1(*xb.add(i + 1)));
                            let (a12, b12) = ($set1(*xa2.add(i + 1)), $set1(*xb2.add(i + 1)));
                            let v = taps($load(p), [a1, a0, b1, b0], &w0);
                            $store(p, taps(v, [a12, a02, b12, b02], &w1));
                            (a0, b0, a02, b02) = (a1, b1, a12, b12);
                        }
                    } else {
                        for i in 0..q.len {
                            let p = a.add(i * $lanes);
                            let (a1, b1) = ($set1(*xa.add(i + 1)), $set1(*xb.add(i + 1)));
                            $store(p, taps($load(p), [a1, a0, b1, b0], &w0));
                            (a0, b0) = (a1, b1);
                        }
                    }
                }
            }
        }
    };
}

/// [`quad_portable`] for one-channel blocks in one vector instruction set (`$row`, over
/// `$lanes` slots).
#[cfg(target_arch = "x86_64")]
macro_rules! vector_row {
    ($row:ident, $feature:literal, $lanes:expr,
     $load:ident, $store:ident, $add:ident, $mul:ident, $set1:ident) => {
        /// [`quad_portable`] for a one-channel block, vectorised along the row instead: `$lanes`
        /// slots at a time, the last (possibly overlapping) vector of a row computed from the
        /// slots as they were before the row's stores, so an overlapped slot gets the same
        /// value twice.
        #[target_feature(enable = $feature)]
        #[inline]
        fn $row(acc: &mut [[f32; 1]], xp: &[f32], q: &Strip, w: &[[f32; 1]], plane: usize) {
            use core::arch::x86_64::*;
            let two = w.len() == 8;
            assert!(w.len() == 4 || two);
            if q.len < $lanes {
                return quad_portable::<1>(acc, xp, q, w, plane);
            }
            q.check_quad(acc, xp);
            if two {
                q.check_quad(acc, &xp[plane..]);
            }
            // SAFETY: slots `i .. i + lanes` with `i + lanes ≤ len` and the inputs they read
            // (up to `x0 + (rows − 1)·x_step + len`, and `x_step` before) lie in `acc` resp.
            // `xp` (checked, for both planes); unaligned loads and stores.
            unsafe {
                let wv: [_; 8] = core::array::from_fn(|t| $set1(w[t.min(w.len() - 1)][0]));
                let taps = |v, xa: *const f32, xb: *const f32, w: &[_], i: usize| {
                    let v = $add(v, $mul(w[0], $load(xa.add(i + 1))));
                    let v = $add(v, $mul(w[1], $load(xa.add(i))));
                    let v = $add(v, $mul(w[2], $load(xb.add(i + 1))));
                    $add(v, $mul(w[3], $load(xb.add(i))))
                };
                let slots = |v, xa: *const f32, xb: *const f32, i: usize| {
                    let v = taps(v, xa, xb, &wv[..4], i);
                    if two { taps(v, xa.add(plane), xb.add(plane), &wv[4..], i) } else { v }
                };
                let last = q.len - $lanes;
                for r in 0..q.rows {
                    let a = acc.as_mut_ptr().add(q.a0 + r * q.a_step).cast::<f32>();
                    let xa = xp.as_ptr().add(q.x0 + r * q.x_step);
                    let xb = xa.sub(q.x_step);
                    let tail = slots($load(a.add(last)), xa, xb, last);
                    let mut i = 0;
                    while i < last {
                        $store(a.add(i), slots($load(a.add(i)), xa, xb, i));
                        i += $lanes;
                    }
                    $store(a.add(last), tail);
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
vector_strips! { strip_avx, quad_avx, "avx", BLOCK, core::arch::x86_64::__m256,
_mm256_loadu_ps, _mm256_storeu_ps, _mm256_add_ps, _mm256_mul_ps, _mm256_set1_ps }
#[cfg(target_arch = "x86_64")]
vector_row! { row_avx, "avx", BLOCK,
_mm256_loadu_ps, _mm256_storeu_ps, _mm256_add_ps, _mm256_mul_ps, _mm256_set1_ps }
#[cfg(target_arch = "x86_64")]
vector_strips! { strip_avx512, quad_avx512, "avx512f", WIDE, core::arch::x86_64::__m512,
_mm512_loadu_ps, _mm512_storeu_ps, _mm512_add_ps, _mm512_mul_ps, _mm512_set1_ps }

/// A quad strip's sums in plain Rust (see [`Strip::check_quad`]), for one input channel per
/// four weights in `w` (their padded planes `plane` apart): per channel `acc[slot] += w[0]·a1 +
/// w[1]·a0 + w[2]·b1 + w[3]·b0` (`a1`, `a0` the inputs at and before the slot's column in its
/// row, `b1`, `b0` one row up), each product rounded and added in that order.
#[inline(always)]
fn quad_portable<const B: usize>(
    acc: &mut [[f32; B]], xp: &[f32], q: &Strip, w: &[[f32; B]], plane: usize,
) {
    for c in 0..w.len() / 4 {
        q.check_quad(acc, &xp[c * plane..]);
    }
    for r in 0..q.rows {
        let (a, xa) = (q.a0 + r * q.a_step, q.x0 + r * q.x_step);
        for (i, slot) in acc[a..a + q.len].iter_mut().enumerate() {
            // Channel by channel, each one's four taps in (ky, kx) order.
            for (c, w) in w.chunks_exact(4).enumerate() {
                let (xa, xb) = (xa + c * plane, xa + c * plane - q.x_step);
                let x = [xp[xa + i + 1], xp[xa + i], xp[xb + i + 1], xp[xb + i]];
                for (t, &xv) in x.iter().enumerate() {
                    for (a, &wc) in slot.iter_mut().zip(&w[t]) {
                        *a += wc * xv;
                    }
                }
            }
        }
    }
}

/// The sixteen taps of a 4×4 kernel for the block's channels from one input channel's
/// weights `src` (channel `c`'s taps at `16·c ..`): `wq[t][c] = src[16·c + t]`. Returns
/// whether they are all finite.
#[inline(always)]
fn taps_portable<const B: usize>(src: &[f32], wq: &mut [[f32; B]]) -> bool {
    let mut finite = true;
    for (t, v) in wq[..16].iter_mut().enumerate() {
        for (v, &x) in v.iter_mut().zip(src.iter().skip(t).step_by(16)) {
            *v = x;
            finite &= x.is_finite();
        }
    }
    finite
}

/// [`taps_portable`] for a whole block of eight channels: two 8×8 transposes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
fn taps_avx(src: &[f32], wq: &mut [[f32; BLOCK]]) -> bool {
    use core::arch::x86_64::*;
    if src.len() != 16 * BLOCK {
        return taps_portable(src, wq);
    }
    assert!(wq.len() >= 16);
    // SAFETY: 128 floats read from `src` (checked), sixteen rows of eight written to `wq`.
    unsafe {
        let mut finite = 0xFF;
        for half in 0..2 {
            let r: [__m256; 8] =
                core::array::from_fn(|c| _mm256_loadu_ps(src.as_ptr().add(16 * c + 8 * half)));
            for v in r {
                // x − x is 0 exactly when x is finite.
                let d = _mm256_sub_ps(v, v);
                finite &= _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(d, _mm256_setzero_ps()));
            }
            for (t, row) in kernels::transpose8(r).into_iter().enumerate() {
                _mm256_storeu_ps(wq[8 * half + t].as_mut_ptr(), row);
            }
        }
        finite == 0xFF
    }
}

/// [`taps_portable`] for a whole block of sixteen channels: one 16×16 transpose.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn taps_avx512(src: &[f32], wq: &mut [[f32; WIDE]]) -> bool {
    use core::arch::x86_64::*;
    assert!(src.len() == 16 * WIDE && wq.len() >= 16);
    // SAFETY: 256 floats read from `src` (checked), sixteen rows of sixteen written to `wq`.
    unsafe {
        let r: [__m512; 16] = core::array::from_fn(|c| _mm512_loadu_ps(src.as_ptr().add(16 * c)));
        let mut finite = 0xFFFF;
        for v in r {
            // x − x is 0 exactly when x is finite.
            let d = _mm512_sub_ps(v, v);
            finite &= _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(d, _mm512_setzero_ps());
        }
        for (t, row) in kernels::transpose16(r).into_iter().enumerate() {
            _mm512_storeu_ps(wq[t].as_mut_ptr(), row);
        }
        finite == 0xFFFF
    }
}

/// [`exact_block_body`] over one instruction set's strip, quad and taps functions (closures,
/// so they are compiled with the calling function's target features).
#[cfg(target_arch = "x86_64")]
macro_rules! vector_block {
    ($planes:expr, $x:expr, $w:expr, $b:expr, $blk:expr, $g:expr, $strip:ident, $quad:ident,
     $taps:ident) => {
        exact_block_body(
            $planes,
            $x,
            $w,
            $b,
            $blk,
            $g,
            |a, x, st, wv| $strip(a, x, st, wv),
            |a, x, q, w, n| $quad(a, x, q, w, n),
            |src, wq| $taps(src, wq),
        )
    };
}

/// [`exact_block`] compiled with AVX (the block one 8-wide multiply and one add per input;
/// a one-channel block eight slots of a row at a time instead).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn exact_block_avx(
    planes: &mut [f32], x: &[f32], w: &[f32], b: &[f32], blk: &Block, g: &Geom,
) {
    if blk.per == 1 {
        let row =
            |a: &mut [[f32; 1]], x: &[f32], q: &Strip, w: &[[f32; 1]], n| row_avx(a, x, q, w, n);
        exact_block_body(planes, x, w, b, blk, g, strip_portable::<1>, row, taps_portable::<1>);
    } else {
        vector_block!(planes, x, w, b, blk, g, strip_avx, quad_avx, taps_avx);
    }
}

/// [`exact_block`] for blocks of sixteen channels, compiled with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exact_block_avx512(
    planes: &mut [f32], x: &[f32], w: &[f32], b: &[f32], blk: &Block, g: &Geom,
) {
    vector_block!(planes, x, w, b, blk, g, strip_avx512, quad_avx512, taps_avx512);
}

/// `slots`, each set to `zero`, as initialised values.
fn zeroed<T: Copy>(slots: &mut [MaybeUninit<T>], zero: T) -> &mut [T] {
    for s in slots.iter_mut() {
        s.write(zero);
    }
    // SAFETY: every element was just initialised; `MaybeUninit<T>` has `T`'s layout.
    unsafe { &mut *(slots as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// The body of [`exact_block`], for every instruction set (`strip_op`, `quad_op`: its inner
/// loops, see [`strip_portable`] and [`quad_portable`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn exact_block_body<const B: usize>(
    planes: &mut [f32], x: &[f32], w: &[f32], b: &[f32], blk: &Block, g: &Geom,
    strip_op: impl Fn(&mut [[f32; B]], &[f32], &Strip, &[f32; B]),
    quad_op: impl Fn(&mut [[f32; B]], &[f32], &Strip, &[[f32; B]], usize),
    taps_op: impl Fn(&[f32], &mut [[f32; B]]) -> bool,
) {
    let (k, s, p) = (g.k, g.s, g.p);
    let (ow, Block { co0, per, oy0, oy1 }) = (g.iw, *blk);
    let part = (oy1 - oy0) * ow;
    let q_len = (ow - 1 + p) / s + 1;
    let row_slots = s * q_len;
    // Only the slots used are zeroed (the whole array is 64 KiB for sixteen lanes).
    let mut acc_store = [const { MaybeUninit::<[f32; B]>::uninit() }; BLOCK_SLOTS];
    let acc = zeroed(&mut acc_store[..(oy1 - oy0) * row_slots], [0.0; B]);
    // 4×4 kernels with stride 2: every output parity meets two kernel rows and two columns,
    // so with the input zero-padded each slot takes its four taps of an input channel at
    // once. Adding the padding's products changes no bit while the weights are finite (a
    // finite weight times zero is ±0, and a sum that starts at +0 never becomes −0, so adding
    // ±0 leaves it as it is); an input channel with a non-finite weight goes tap by tap.
    let (qy_len, px) = ((g.ih - 1 + p) / s + 1, q_len + 1);
    let quads = k == 4 && s == 2 && (qy_len + 1) * px <= MAX_PADDED;
    let mut xp_store = [const { MaybeUninit::<f32>::uninit() }; MAX_PADDED];
    let mut wq = [[0f32; B]; 32];
    let plane_len = (qy_len + 1) * px;
    // Input channels whose weights are all finite, two at a time where possible.
    let finite_weights = |cin: usize, wq: &mut [[f32; B]]| {
        let at = (cin * g.ci + co0) * 16;
        taps_op(&w[at..at + per * 16], wq)
    };
    let mut cin = 0;
    while cin < g.cg {
        let xplane = &x[cin * g.cols..(cin + 1) * g.cols];
        if quads && finite_weights(cin, &mut wq[..16]) {
            let two = cin + 1 < g.cg
                && 2 * plane_len <= MAX_PADDED
                && finite_weights(cin + 1, &mut wq[16..]);
            let n = if two { 2 } else { 1 };
            // Row gy + 1, column gx + 1 of a padded plane hold the input at (gy, gx).
            let xp = zeroed(&mut xp_store[..n * plane_len], 0.0);
            for c in 0..n {
                let src = &x[(cin + c) * g.cols..(cin + c + 1) * g.cols];
                for gy in 0..g.gh.min(qy_len) {
                    let (m, at) = (g.gw.min(q_len), c * plane_len + (gy + 1) * px + 1);
                    xp[at..at + m].copy_from_slice(&src[gy * g.gw..gy * g.gw + m]);
                }
            }
            for (ry, rx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let taps = [(ry, rx), (ry, rx + 2), (ry + 2, rx), (ry + 2, rx + 2)];
                let mut w8 = [[0f32; B]; 8];
                for (c, chunk) in w8.chunks_exact_mut(4).enumerate().take(n) {
                    for (slot, (ky, kx)) in chunk.iter_mut().zip(taps) {
                        *slot = wq[c * 16 + ky * 4 + kx];
                    }
                }
                // Output rows of this parity in oy0..oy1: oy + p = 2·qy + ry.
                let first = oy0 + (ry + 2 - (oy0 + p) % 2) % 2;
                if first >= oy1 {
                    continue;
                }
                let qy = (first + p) / 2;
                let q = Strip {
                    a0: (first - oy0) * row_slots + rx * q_len,
                    a_step: 2 * row_slots,
                    x0: (qy + 1) * px,
                    x_step: px,
                    rows: (oy1 - first).div_ceil(2),
                    len: q_len,
                };
                quad_op(acc, xp, &q, &w8[..4 * n], plane_len);
            }
            cin += n;
            continue;
        }
        for ky in 0..k {
            // Input rows gy with oy = gy·s + ky − p in oy0..oy1 (`span`'s upper end counts
            // the rows below a height).
            let ylo = span(g.gh, oy1, s, ky, p).0.max(span(g.gh, oy0, s, ky, p).1);
            let yhi = span(g.gh, oy1, s, ky, p).1;
            for kx in 0..k {
                let (lo, hi) = span(g.gw, ow, s, kx, p);
                if lo == hi || ylo >= yhi {
                    continue;
                }
                let mut wv = [0f32; B];
                for (c, v) in wv[..per].iter_mut().enumerate() {
                    *v = w[((cin * g.ci + co0 + c) * k + ky) * k + kx];
                }
                // ox + p = gx·s + kx = (gx + kx / s)·s + kx % s.
                let (r, m) = (kx % s, kx / s);
                // Input rows ylo..yhi land on output rows s apart.
                let st = Strip {
                    a0: (ylo * s + ky - p - oy0) * row_slots + r * q_len + m + lo,
                    a_step: s * row_slots,
                    x0: ylo * g.gw + lo,
                    x_step: g.gw,
                    rows: yhi - ylo,
                    len: hi - lo,
                };
                strip_op(acc, xplane, &st, &wv);
            }
        }
        cin += 1;
    }
    for oy in 0..oy1 - oy0 {
        for ox in 0..ow {
            let slot = &acc[oy * row_slots + (ox + p) % s * q_len + (ox + p) / s];
            for (c, &v) in slot[..per].iter().enumerate() {
                planes[c * part + oy * ow + ox] = v + b[co0 + c];
            }
        }
    }
}

/// Int8 inference of a transposed convolution: same shapes as
/// [`conv_transpose2d_forward_exact`], weights `q` as i8 with one scale per output channel;
/// `xq` (at least `C_in·H·W`) holds each sample's input, quantised with one scale for the
/// sample. Each output is the integer sum over the input positions and taps that reach it,
/// scaled as in [`conv2d::conv2d_forward_i8`].
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_forward_i8(
    out: &mut [f32], xq: &mut [i8], inp: &[f32], q: &[i8], scales: &[f32], bias: &[f32], n: usize,
    d: &ConvDims,
) -> Result<(), CoreError> {
    let kernel = kernels::int8::conv_transpose2d_i8;
    conv2d::forward_i8(out, xq, inp, q, scales, bias, n, d, true, kernel)
}

#[cfg(test)]
#[path = "conv_transpose2d_tests.rs"]
mod tests;
