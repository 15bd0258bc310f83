//! Transposed 2-D convolution, the adjoint of [`crate::layers::conv2d`]'s convolution with the
//! same kernel, stride and padding (see that module for the shared geometry, the shapes and the
//! summation order of the exact kernel).
//!
//! Shapes (one sample): `inp` C_in×H×W, `w` C_in×C_out×k×k, `b` C_out, `out` C_out×OH×OW with
//! `OH = (H − 1)·stride − 2·pad + k` ([`conv_transpose_out_len`](crate::layers::conv2d::conv_transpose_out_len)).

use crate::error::{CoreError, SpecError, check_len, check_min_len};
use crate::kernels::{self, Exec, Serial, par};
use crate::layers::Channels;
use crate::layers::Rules;
use crate::layers::conv2d::{
    self, BackwardFn, Conv, ConvDims, Direction, ExactFn, ForwardFn, Geom, Int8Fn, add_bias_grad,
    batch, col2im_add, fill_bias, im2col, span,
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
/// [`ConvDims::transpose_col_len`] elements (one sample's column matrix).
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_forward(
    out: &mut [f32], scratch: &mut [f32], inp: &[f32], w: &[f32], b: &[f32], n: usize,
    d: &ConvDims, exec: &dyn Exec,
) -> Result<(), CoreError> {
    let g = Geom::transpose(d)?;
    g.check_forward(n, out, inp, w, b)?;
    check_min_len("scratch", scratch.len(), g.col)?;
    // Samples are independent: spread them over the threads, one column matrix per task (as
    // many tasks as `scratch` holds matrices); each product then runs on one thread.
    let tasks = par::sample_tasks(exec, n, 2 * g.w * g.cols).min(scratch.len() / g.col);
    let inner = if tasks > 1 { &Serial as &dyn Exec } else { exec };
    par::for_each_sample(
        exec,
        n,
        tasks,
        [(out, g.img)],
        (scratch, g.col),
        &|col, samples, [out]| {
            let x = &inp[samples.start * g.grid..samples.end * g.grid];
            for (o, x) in out.chunks_exact_mut(g.img).zip(x.chunks_exact(g.grid)) {
                // col (C_out·k·k × H·W) = Wᵀ · x (C_in × H·W)
                kernels::matmul_tn(col, w, x, g.rows, g.cg, g.cols, false, inner);
                fill_bias(o, b, g.ih * g.iw);
                col2im_add(o, col, &g);
            }
        },
    );
    Ok(())
}

/// Backward of [`conv_transpose2d_forward`], from `dout` (N×C_out×OH×OW) and the forward input.
///
/// - `dw` (C_in×C_out×k×k) `+= Σₙ inpₙ · im2col(doutₙ)ᵀ`, `db` (C_out) `+= Σ dout`: skipped when
///   `None`;
/// - `dinp` (N×C_in×H×W) `= W · im2col(doutₙ)`, overwritten; skipped when `None`.
///
/// `scratch` has at least `n ·` [`ConvDims::transpose_col_len`] elements (every sample's column
/// matrix) when `dinp` or `dw` is given.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_backward(
    dinp: Option<&mut [f32]>, dw: Option<&mut [f32]>, db: Option<&mut [f32]>, scratch: &mut [f32],
    dout: &[f32], inp: &[f32], w: &[f32], n: usize, d: &ConvDims, exec: &dyn Exec,
) -> Result<(), CoreError> {
    let g = Geom::transpose(d)?;
    g.check_backward(n, dout, w, dinp.as_deref(), dw.as_deref(), db.as_deref())?;
    check_len("inp", inp.len(), batch(n, g.grid)?)?;
    if dinp.is_some() || dw.is_some() {
        check_min_len("scratch", scratch.len(), batch(n, g.col)?)?;
    }
    if let Some(db) = db {
        add_bias_grad(db, dout, g.ih * g.iw);
    }
    if dinp.is_none() && dw.is_none() {
        return Ok(());
    }
    // Every sample's column matrix of `dout`, in parallel (samples are independent).
    let dcols = &mut scratch[..n * g.col];
    let tasks = par::sample_tasks(exec, n, 2 * g.w * g.cols);
    par::for_each_sample(
        exec,
        n,
        tasks,
        [(&mut *dcols, g.col)],
        (&mut [], 0),
        &|_, samples, [c]| {
            let o = &dout[samples.start * g.img..samples.end * g.img];
            for (c, o) in c.chunks_exact_mut(g.col).zip(o.chunks_exact(g.img)) {
                im2col(c, o, &g);
            }
        },
    );
    let dcols = &*dcols;
    if let Some(dw) = dw {
        // dW (C_in × C_out·k·k) += Σₙ xₙ (C_in × H·W) · dcolₙᵀ (H·W × C_out·k·k)
        kernels::matmul_nt_sum(dw, inp, g.grid, dcols, g.col, n, g.cg, g.cols, g.rows, exec);
    }
    if let Some(dinp) = dinp {
        let inner = if tasks > 1 { &Serial as &dyn Exec } else { exec };
        par::for_each_sample(
            exec,
            n,
            tasks,
            [(dinp, g.grid)],
            (&mut [], 0),
            &|_, samples, [dx]| {
                let c = &dcols[samples.start * g.col..samples.end * g.col];
                for (dx, c) in dx.chunks_exact_mut(g.grid).zip(c.chunks_exact(g.col)) {
                    // dx (C_in × H·W) = W (C_in × C_out·k·k) · dcol
                    kernels::matmul(dx, w, c, g.cg, g.rows, g.cols, false, inner);
                }
            },
        );
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
    let plane = g.ih * g.iw;
    let macs = g.w * g.cols;
    conv2d::for_each_plane(out, n, g.ci, plane, macs, exec, &|sample, co, oplane| {
        let x = &inp[sample * g.grid..(sample + 1) * g.grid];
        let bias = b[co];
        {
            for (oy, orow) in oplane.chunks_exact_mut(g.iw).enumerate() {
                orow.fill(0.0);
                for (cin, xplane) in x.chunks_exact(g.cols).enumerate() {
                    let wbase = (cin * g.ci + co) * g.k * g.k;
                    for ky in 0..g.k {
                        // The input row gy with gy·s + ky − p = oy, if any.
                        let t = oy + g.p;
                        if t < ky || (t - ky) % g.s != 0 || (t - ky) / g.s >= g.gh {
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
        }
    });
    Ok(())
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
mod tests {
    use super::*;
    use crate::kernels::Serial;
    use crate::layers::conv2d::conv2d_forward;
    use crate::layers::conv2d::tests::{CASES, assert_close, check_int8_kernel, dims, rand};
    use crate::testutil::Lcg;
    use std::vec;
    use std::vec::Vec;

    /// The definition of the transposed convolution as a scatter, in f64:
    /// out[o][y·s+ky−p][x·s+kx−p] += in[c][y][x]·w[c][o][ky][kx], plus b[o].
    fn naive_conv_t(x: &[f32], w: &[f32], b: &[f32], n: usize, d: &ConvDims) -> Vec<f64> {
        let (oh, ow) = d.transpose_out_hw().unwrap();
        let (k, s, p) = (d.k as isize, d.stride as isize, d.pad as isize);
        let mut out = vec![0.0f64; n * d.out_c * oh * ow];
        for i in 0..n {
            for o in 0..d.out_c {
                for v in &mut out[(i * d.out_c + o) * oh * ow..(i * d.out_c + o + 1) * oh * ow] {
                    *v = b[o] as f64;
                }
            }
            for c in 0..d.in_c {
                for y in 0..d.in_h {
                    for xi in 0..d.in_w {
                        let xv = x[((i * d.in_c + c) * d.in_h + y) * d.in_w + xi] as f64;
                        for o in 0..d.out_c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let oy = y as isize * s + ky - p;
                                    let ox = xi as isize * s + kx - p;
                                    if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                                        continue;
                                    }
                                    let wv = w[((c * d.out_c + o) * d.k + ky as usize) * d.k
                                        + kx as usize];
                                    out[((i * d.out_c + o) * oh + oy as usize) * ow
                                        + ox as usize] += xv * wv as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn conv_transpose_forward_matches_definition() {
        let mut r = Lcg::new(22);
        let n = 2;
        for &(ci, h, wd, co, k, s, p) in &CASES {
            let d = dims(ci, h, wd, co, k, s, p);
            let (oh, ow) = d.transpose_out_hw().unwrap();
            let x = rand(&mut r, n * ci * h * wd);
            let w = rand(&mut r, ci * co * k * k);
            let b = rand(&mut r, co);
            let want = naive_conv_t(&x, &w, &b, n, &d);
            let mut out = vec![0.0; n * co * oh * ow];
            let mut scratch = vec![0.0; d.transpose_col_len().unwrap()];
            conv_transpose2d_forward(&mut out, &mut scratch, &x, &w, &b, n, &d, &Serial).unwrap();
            assert_close(&out, &want, 1e-5);
            let mut exact = vec![f32::NAN; out.len()];
            conv_transpose2d_forward_exact(&mut exact, &x, &w, &b, n, &d).unwrap();
            assert_close(&exact, &want, 1e-5);
        }
    }

    /// ⟨conv(x), y⟩ = ⟨x, convT(y)⟩ with one shared weight buffer and no bias.
    #[test]
    fn conv_transpose_int8_is_the_integer_definition_scaled() {
        check_int8_kernel(
            conv_transpose2d_forward_i8,
            naive_conv_t,
            ConvDims::transpose_out_hw,
            Transposed::channels,
            29,
        );
    }

    #[test]
    fn transpose_is_the_adjoint() {
        let mut r = Lcg::new(23);
        let n = 2;
        // (H + 2p − k) divisible by s, so convT maps the conv output shape back to H × W.
        for &(ci, h, wd, co, k, s, p) in
            &[(3, 8, 10, 2, 4, 2, 1), (2, 7, 7, 3, 3, 1, 1), (2, 9, 9, 2, 3, 3, 0)]
        {
            let d = dims(ci, h, wd, co, k, s, p);
            let (oh, ow) = d.out_hw().unwrap();
            let dt = dims(co, oh, ow, ci, k, s, p);
            assert_eq!(dt.transpose_out_hw(), Some((h, wd)));
            let x = rand(&mut r, n * ci * h * wd);
            let y = rand(&mut r, n * co * oh * ow);
            let w = rand(&mut r, co * ci * k * k);
            let mut cx = vec![0.0; y.len()];
            let mut col = vec![0.0; n * d.col_len().unwrap()];
            conv2d_forward(&mut cx, &mut col, &x, &w, &vec![0.0; co], n, &d, &Serial).unwrap();
            let mut ty = vec![0.0; x.len()];
            let mut scratch = vec![0.0; dt.transpose_col_len().unwrap()];
            conv_transpose2d_forward(
                &mut ty,
                &mut scratch,
                &y,
                &w,
                &vec![0.0; ci],
                n,
                &dt,
                &Serial,
            )
            .unwrap();
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter().zip(b).map(|(&a, &b)| a as f64 * b as f64).sum()
            };
            let (lhs, rhs) = (dot(&cx, &y), dot(&x, &ty));
            assert!((lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()), "{lhs} vs {rhs}");
            // And the exact kernels agree with the fast ones on the same data.
            let mut ex = vec![0.0; ty.len()];
            conv_transpose2d_forward_exact(&mut ex, &y, &w, &vec![0.0; ci], n, &dt).unwrap();
            for (a, b) in ex.iter().zip(&ty) {
                assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()));
            }
        }
    }
}
