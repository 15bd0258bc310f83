//! Tests of the convolution layer and of the geometry both convolutions share (the
//! transposed convolution's tests use its reference definitions and cases).

use super::*;
use crate::kernels::Serial;
use crate::layers::columns::{col2im_add, group_size, im2col};
use crate::layers::conv_transpose2d::conv_transpose2d_forward;
use crate::testutil::{Lcg, grad_check};
use std::vec;
use std::vec::Vec;

pub(crate) fn dims(
    in_c: usize, in_h: usize, in_w: usize, out_c: usize, k: usize, s: usize, p: usize,
) -> ConvDims {
    ConvDims { in_c, in_h, in_w, out_c, k, stride: s, pad: p }
}

/// The definition, in f64: out[o][y][x] = b[o] + Σ w[o][c][ky][kx]·in[c][y·s+ky−p][x·s+kx−p].
pub(crate) fn naive_conv(x: &[f32], w: &[f32], b: &[f32], n: usize, d: &ConvDims) -> Vec<f64> {
    let (oh, ow) = d.out_hw().unwrap();
    let (k, s, p) = (d.k as isize, d.stride as isize, d.pad as isize);
    let mut out = vec![0.0f64; n * d.out_c * oh * ow];
    for i in 0..n {
        for o in 0..d.out_c {
            for y in 0..oh {
                for xo in 0..ow {
                    let mut acc = b[o] as f64;
                    for c in 0..d.in_c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = y as isize * s + ky - p;
                                let ix = xo as isize * s + kx - p;
                                if iy < 0
                                    || ix < 0
                                    || iy >= d.in_h as isize
                                    || ix >= d.in_w as isize
                                {
                                    continue;
                                }
                                let xv = x[((i * d.in_c + c) * d.in_h + iy as usize) * d.in_w
                                    + ix as usize];
                                let wv =
                                    w[((o * d.in_c + c) * d.k + ky as usize) * d.k + kx as usize];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((i * d.out_c + o) * oh + y) * ow + xo] = acc;
                }
            }
        }
    }
    out
}

pub(crate) fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{i}: {g} vs {w}");
    }
}

/// Geometries covering stride 1 and 2, no/one/two padding, non-square inputs, k = 1.
pub(crate) const CASES: [(usize, usize, usize, usize, usize, usize, usize); 6] = [
    (2, 5, 6, 3, 3, 1, 1),
    (3, 8, 8, 2, 4, 2, 1),
    (1, 7, 5, 4, 3, 2, 0),
    (2, 6, 7, 2, 5, 1, 2),
    (3, 4, 4, 2, 1, 1, 0),
    (2, 9, 6, 3, 4, 3, 2),
];

/// Both forward passes of direction `D` (training and exact) against `naive` (its definition
/// in f64) over [`CASES`].
pub(crate) fn check_forwards<D: Direction>(seed: u64, naive: Definition) {
    let mut r = Lcg::new(seed);
    let n = 2;
    for &(ci, h, wd, co, k, s, p) in &CASES {
        let d = dims(ci, h, wd, co, k, s, p);
        let g = D::geom(&d).unwrap();
        let (inp, out, c_out) = g.io_lens();
        let (x, w, b) = (r.filled(n * inp), r.filled(g.w), r.filled(c_out));
        let want = naive(&x, &w, &b, n, &d);
        let mut got = vec![0.0; n * out];
        let mut buf = vec![0.0; n * g.aux];
        (D::FORWARD)(&mut got, &mut buf, &x, &w, &b, n, &d, &Serial).unwrap();
        assert_close(&got, &want, 1e-5);
        let mut exact = vec![f32::NAN; got.len()];
        (D::EXACT)(&mut exact, &x, &w, &b, n, &d, &Serial).unwrap();
        assert_close(&exact, &want, 1e-5);
    }
}

#[test]
fn conv_forward_matches_definition() {
    check_forwards::<Direct>(21, naive_conv);
}

/// Per-channel int8 weights of a `w` whose channels are `ch`, as the int8 encoding writes
/// them (`q`, `scales`).
pub(crate) fn quantize_channels(w: &[f32], ch: Channels) -> (Vec<i8>, Vec<f32>) {
    let mut m = vec![0f32; ch.n];
    for (i, v) in w.iter().enumerate() {
        m[ch.of(i)] = m[ch.of(i)].max(v.abs());
    }
    let s: Vec<f32> = m.iter().map(|m| m / 127.0).collect();
    let q = w.iter().enumerate().map(|(i, v)| (v / s[ch.of(i)]).round() as i8).collect();
    (q, s)
}

/// A reference definition in f64: `(x, w, b, n, dims)` to the outputs.
pub(crate) type Definition = fn(&[f32], &[f32], &[f32], usize, &ConvDims) -> Vec<f64>;

/// Checks an int8 kernel on every geometry of [`CASES`] that it accepts: it is the
/// definition `naive` applied to the integers (quantised input, per-channel weights), then
/// scaled, bit for bit; it stays within quantisation error of the f32 definition; short
/// buffers are refused. `w_len` and `out_hw` give the weight count and the output side of a
/// geometry (`None`: skip it), `ch` its channel layout.
pub(crate) fn check_int8_kernel(
    kernel: Int8Fn, naive: Definition, out_hw: fn(&ConvDims) -> Option<(usize, usize)>,
    ch: fn(usize, usize, usize) -> Channels, seed: u64,
) {
    let mut r = Lcg::new(seed);
    let n = 2;
    for &(ci, h, wd, co, k, s, p) in &CASES {
        let d = dims(ci, h, wd, co, k, s, p);
        let Some((oh, ow)) = out_hw(&d) else { continue };
        let x = r.filled(n * ci * h * wd);
        let w = r.filled(co * ci * k * k);
        let b = r.filled(co);
        let (q, sc) = quantize_channels(&w, ch(ci, co, k * k));
        let plane = co * oh * ow;
        let mut out = vec![f32::NAN; n * plane];
        let mut xq = vec![0i8; ci * h * wd + 3];
        kernel(&mut out, &mut xq, &x, &q, &sc, &b, n, &d).unwrap();
        let wf: Vec<f32> = q.iter().map(|&v| f32::from(v)).collect();
        for (i, xi) in x.chunks_exact(ci * h * wd).enumerate() {
            let mut qx = vec![0i8; xi.len()];
            let sx = quantize_row(&mut qx, xi);
            let xf: Vec<f32> = qx.iter().map(|&v| f32::from(v)).collect();
            let sums = naive(&xf, &wf, &vec![0.0; co], 1, &d);
            for (j, &sum) in sums.iter().enumerate() {
                let c = j / (oh * ow);
                let want = sum as i32 as f32 * (sx * sc[c]) + b[c];
                assert_eq!(out[i * plane + j].to_bits(), want.to_bits(), "{d:?} {j}");
            }
        }
        assert_close(&out, &naive(&x, &w, &b, n, &d), 0.05 * (ci * k * k) as f64);
        let e = kernel(&mut out, &mut xq[..1], &x, &q, &sc, &b, n, &d);
        assert!(matches!(e, Err(CoreError::BufferLen { what: "xq", .. })));
        assert!(kernel(&mut out, &mut xq, &x, &q, &sc[1..], &b, n, &d).is_err());
    }
}

#[test]
fn conv_int8_is_the_integer_definition_scaled() {
    check_int8_kernel(conv2d_forward_i8, naive_conv, ConvDims::out_hw, Direct::channels, 23);
}

/// Both convolutions' backward passes against finite differences of `⟨forward(x, w, b), g⟩`;
/// the input gradient alone (no parameter buffers) gives the same values.
#[test]
fn backward_matches_finite_differences() {
    use crate::layers::conv_transpose2d::conv_transpose2d_backward;
    let mut r = Lcg::new(24);
    let n = 2;
    let cases = [
        (false, (2, 6, 5, 3, 4, 2, 1)),
        (false, (2, 5, 5, 2, 3, 1, 1)),
        (true, (3, 3, 4, 2, 4, 2, 1)),
        (true, (2, 4, 3, 2, 3, 1, 1)),
    ];
    for (transposed, (ci, h, wd, co, k, s, p)) in cases {
        let d = dims(ci, h, wd, co, k, s, p);
        let (oh, ow) = if transposed { d.transpose_out_hw() } else { d.out_hw() }.unwrap();
        let cl = if transposed { d.transpose_train_len() } else { d.train_len() }.unwrap();
        let x = r.filled(n * ci * h * wd);
        let w = r.filled(co * ci * k * k);
        let b = r.filled(co);
        let g = r.filled(n * co * oh * ow);
        // The output and the column buffer (every sample's matrix).
        let forward = |x: &[f32], w: &[f32], b: &[f32]| {
            let (mut out, mut col) = (vec![0.0; g.len()], vec![0.0; n * cl]);
            let f = if transposed { conv_transpose2d_forward } else { conv2d_forward };
            f(&mut out, &mut col, x, w, b, n, &d, &Serial).unwrap();
            (out, col)
        };
        let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
            forward(x, w, b).0.iter().zip(&g).map(|(&o, &g)| o as f64 * g as f64).sum()
        };
        let col = forward(&x, &w, &b).1;
        let back = |dx: &mut [f32], dw: Option<&mut [f32]>, db: Option<&mut [f32]>| {
            let mut scratch = vec![0.0; n * cl];
            if transposed {
                conv_transpose2d_backward(
                    Some(dx),
                    dw,
                    db,
                    &mut scratch,
                    &g,
                    &x,
                    &w,
                    n,
                    &d,
                    &Serial,
                )
            } else {
                conv2d_backward(Some(dx), dw, db, &mut scratch, &g, &col, &w, n, &d, &Serial)
            }
            .unwrap();
        };
        let mut dx = vec![f32::NAN; x.len()];
        let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; b.len()]);
        back(&mut dx, Some(&mut dw), Some(&mut db));
        grad_check(&x, &dx, |xp| loss(xp, &w, &b), 1e-2, 1e-3);
        grad_check(&w, &dw, |wp| loss(&x, wp, &b), 1e-2, 1e-3);
        grad_check(&b, &db, |bp| loss(&x, &w, bp), 1e-2, 1e-3);
        let mut dx2 = vec![0.0; x.len()];
        back(&mut dx2, None, None);
        assert_eq!(dx, dx2, "transposed {transposed}");
    }
}

#[test]
fn output_lengths() {
    // DCGAN shapes.
    assert_eq!(conv_out_len(28, 4, 2, 1), Some(14));
    assert_eq!(conv_out_len(14, 4, 2, 1), Some(7));
    assert_eq!(conv_transpose_out_len(7, 4, 2, 1), Some(14));
    assert_eq!(conv_transpose_out_len(14, 4, 2, 1), Some(28));
    assert_eq!(conv_out_len(5, 3, 1, 0), Some(3));
    assert_eq!(conv_out_len(2, 5, 1, 1), None); // kernel larger than the padded input
    assert_eq!(conv_out_len(2, 3, 1, 3), None); // pad >= k
    assert_eq!(conv_out_len(8, 3, 0, 1), None);
    assert_eq!(conv_out_len(usize::MAX, 3, 1, 2), None);
    assert_eq!(conv_transpose_out_len(1, 3, 1, 2), None); // 3 − 4 < 1
    assert_eq!(conv_transpose_out_len(usize::MAX, 4, 2, 1), None);
    assert_eq!(conv_transpose_out_len(0, 4, 2, 1), None);
}

#[test]
fn rejects_bad_buffers_and_geometry() {
    let d = dims(1, 4, 4, 2, 3, 1, 1);
    let x = [0.0f32; 16];
    let w = [0.0f32; 18];
    let b = [0.0f32; 2];
    let mut out = [0.0f32; 32];
    // The column matrix (9 × 16) and the staging grid (2 × 16).
    let mut col = [0.0f32; 9 * 16 + 2 * 16];
    assert!(conv2d_forward(&mut out, &mut col, &x, &w, &b, 1, &d, &Serial).is_ok());
    assert!(matches!(
        conv2d_forward(&mut out[1..], &mut col, &x, &w, &b, 1, &d, &Serial),
        Err(CoreError::BufferLen { what: "out", .. })
    ));
    assert!(matches!(
        conv2d_forward(&mut out, &mut col[1..], &x, &w, &b, 1, &d, &Serial),
        Err(CoreError::BufferLen { what: "col", .. })
    ));
    assert_eq!(conv2d_forward_exact(&mut out, &x, &w, &b, 0, &d), Err(CoreError::ZeroSize));
    let bad = dims(1, 4, 4, 2, 3, 1, 3);
    assert!(matches!(conv2d_forward_exact(&mut out, &x, &w, &b, 1, &bad), Err(CoreError::Spec(_))));
    let mut small = [0.0f32; 10];
    assert!(matches!(
        conv2d_backward(
            Some(&mut [0.0; 16]),
            None,
            None,
            &mut small,
            &out,
            &col,
            &w,
            1,
            &d,
            &Serial
        ),
        Err(CoreError::BufferLen { what: "scratch", .. })
    ));
    // Without dinp no scratch is needed.
    assert!(
        conv2d_backward(None, None, Some(&mut [0.0; 2]), &mut [], &out, &col, &w, 1, &d, &Serial)
            .is_ok()
    );
    let dt = dims(2, 4, 4, 1, 3, 1, 1);
    assert!(matches!(
        conv_transpose2d_forward(&mut [0.0; 16], &mut small, &out, &w, &[0.0], 1, &dt, &Serial),
        Err(CoreError::BufferLen { what: "scratch", .. })
    ));
}

/// Both convolutions spread their samples (and the weight gradient's columns) over the threads:
/// forward outputs, column matrices and every gradient must keep the one-thread bits, with any
/// number of threads, an executor that runs tasks twice, and less scratch than samples.
#[test]
fn threads_and_scratch_do_not_change_bits() {
    use crate::layers::conv_transpose2d::conv_transpose2d_backward;
    use crate::testutil::{Threads, Twice};
    let execs: [&dyn Exec; 4] = [&Threads(2), &Threads(3), &Threads(5), &Twice];
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut r = Lcg::new(26);
    // Pico's middle transposed convolution and DCGAN's first convolution, batch 24.
    let n = 24;
    let dt = dims(32, 7, 7, 16, 4, 2, 1);
    let dc = dims(1, 28, 28, 16, 4, 2, 1);
    for transposed in [false, true] {
        let d = if transposed { dt } else { dc };
        let (ci, co, k) = (d.in_c, d.out_c, d.k);
        let (oh, ow) = if transposed { d.transpose_out_hw() } else { d.out_hw() }.unwrap();
        let cl = if transposed { d.transpose_train_len() } else { d.train_len() }.unwrap();
        let x = r.filled(n * ci * d.in_h * d.in_w);
        let w = r.filled(ci * co * k * k);
        let b = r.filled(co);
        let g = r.filled(n * co * oh * ow);
        // (out, col, dx, dw, db) for one executor and one scratch size.
        let run = |exec: &dyn Exec, scratch_len: usize| {
            let mut out = vec![0.0; g.len()];
            let mut col = vec![0.0; n * cl];
            let mut scratch = vec![f32::NAN; scratch_len];
            let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.25; w.len()], vec![0.0; co]);
            if transposed {
                conv_transpose2d_forward(
                    &mut out,
                    &mut col[..scratch_len],
                    &x,
                    &w,
                    &b,
                    n,
                    &d,
                    exec,
                )
                .unwrap();
                let mut full = vec![0.0; n * cl];
                let (gx, gw, gb) = (Some(&mut dx[..]), Some(&mut dw[..]), Some(&mut db[..]));
                conv_transpose2d_backward(gx, gw, gb, &mut full, &g, &x, &w, n, &d, exec).unwrap();
                col.clear();
            } else {
                conv2d_forward(&mut out, &mut col, &x, &w, &b, n, &d, exec).unwrap();
                let (gx, gw, gb) = (Some(&mut dx[..]), Some(&mut dw[..]), Some(&mut db[..]));
                conv2d_backward(gx, gw, gb, &mut scratch, &g, &col, &w, n, &d, exec).unwrap();
            }
            [bits(&out), bits(&col), bits(&dx), bits(&dw), bits(&db)]
        };
        // Scratch comes in slots of one group's buffers.
        let group = group_size(n, if transposed { 49 } else { 196 });
        let want = run(&Serial, group * cl);
        for exec in execs {
            for slots in [1, 2, n.div_ceil(group)] {
                let len = (slots * group * cl).min(n * cl);
                assert_eq!(run(exec, len), want, "transposed {transposed}, {slots} slots");
            }
        }
    }
}

/// The exact kernels spread their output planes over the threads without changing a bit.
#[test]
fn exact_kernels_keep_their_bits_on_threads() {
    use crate::layers::conv_transpose2d::conv_transpose2d_forward_exact_with;
    use crate::testutil::{Threads, Twice};
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut r = Lcg::new(27);
    for (n, transposed, d) in [
        (1, true, dims(128, 7, 7, 64, 4, 2, 1)),
        (2, true, dims(16, 14, 14, 3, 4, 2, 1)),
        (1, false, dims(64, 14, 14, 32, 4, 2, 1)),
    ] {
        let (oh, ow) = if transposed { d.transpose_out_hw() } else { d.out_hw() }.unwrap();
        let x = r.filled(n * d.in_c * d.in_h * d.in_w);
        let w = r.filled(d.in_c * d.out_c * d.k * d.k);
        let b = r.filled(d.out_c);
        let run = |exec: &dyn Exec| {
            let mut out = vec![f32::NAN; n * d.out_c * oh * ow];
            if transposed {
                conv_transpose2d_forward_exact_with(&mut out, &x, &w, &b, n, &d, exec).unwrap();
            } else {
                conv2d_forward_exact_with(&mut out, &x, &w, &b, n, &d, exec).unwrap();
            }
            bits(&out)
        };
        let want = run(&Serial);
        for exec in [&Threads(2) as &dyn Exec, &Threads(3), &Twice] {
            assert_eq!(run(exec), want, "{d:?}");
        }
    }
}

/// The grouped products (module docs) give each output the bits of one product per sample:
/// both convolutions' forward outputs, input gradients and weight gradients against the
/// per-sample passes written out with the same kernels, for batches of one partial group, of
/// several whole groups and of groups with a partial last one, on one and several threads.
#[test]
fn grouped_products_are_the_per_sample_products() {
    use crate::layers::conv_transpose2d::conv_transpose2d_backward;
    use crate::testutil::Threads;
    let mut r = Lcg::new(28);
    // 7 × 7 grids (groups of 16) and 14 × 14 grids (groups of 4), both directions; the first
    // sums over 384 rows, more than one summation block.
    let cases = [
        (false, dims(24, 14, 14, 16, 4, 2, 1)),
        (false, dims(3, 14, 14, 8, 3, 1, 1)),
        (true, dims(24, 7, 7, 16, 4, 2, 1)),
        (true, dims(8, 14, 14, 2, 3, 1, 1)),
    ];
    for (transposed, d) in cases {
        let g = if transposed { Geom::transpose(&d) } else { Geom::conv(&d) }.unwrap();
        let (inp_len, out_len, _) = g.io_lens();
        let (c_out, plane) = if transposed { (g.ci, g.ih * g.iw) } else { (g.cg, g.cols) };
        let w = r.filled(g.w);
        let b = r.filled(c_out);
        for n in [3, 32, 37] {
            let x = r.filled(n * inp_len);
            let dout = r.filled(n * out_len);
            // The per-sample passes: (out, dx, dw).
            let mut want = (vec![0.0; n * out_len], vec![0.0; n * inp_len], vec![0.5; g.w]);
            let mut col = vec![0.0; g.col];
            for s in 0..n {
                let (xs, ds) = (&x[s * inp_len..][..inp_len], &dout[s * out_len..][..out_len]);
                let o = &mut want.0[s * out_len..][..out_len];
                let dx = &mut want.1[s * inp_len..][..inp_len];
                fill_bias(o, &b, plane);
                if transposed {
                    kernels::matmul_tn(&mut col, &w, xs, g.rows, g.cg, g.cols, false, &Serial);
                    col2im_add(o, &col, &g, g.cols);
                    im2col(&mut col, ds, &g, g.cols);
                    kernels::matmul_nt(&mut want.2, xs, &col, g.cg, g.cols, g.rows, true, &Serial);
                    kernels::matmul(dx, &w, &col, g.cg, g.rows, g.cols, false, &Serial);
                } else {
                    im2col(&mut col, xs, &g, g.cols);
                    kernels::matmul(o, &w, &col, g.cg, g.rows, g.cols, true, &Serial);
                    kernels::matmul_nt(&mut want.2, ds, &col, g.cg, g.cols, g.rows, true, &Serial);
                    kernels::matmul_tn(&mut col, &w, ds, g.rows, g.cg, g.cols, false, &Serial);
                    dx.fill(0.0);
                    col2im_add(dx, &col, &g, g.cols);
                }
            }
            for exec in [&Serial as &dyn Exec, &Threads(2), &Threads(3)] {
                let mut got = (vec![0.0; n * out_len], vec![f32::NAN; n * inp_len], vec![0.5; g.w]);
                let mut buf = vec![f32::NAN; n * g.aux];
                let mut scratch = vec![f32::NAN; n * g.aux];
                let (dx, dw) = (Some(&mut got.1[..]), Some(&mut got.2[..]));
                if transposed {
                    conv_transpose2d_forward(&mut got.0, &mut buf, &x, &w, &b, n, &d, exec)
                        .unwrap();
                    conv_transpose2d_backward(
                        dx,
                        dw,
                        None,
                        &mut scratch,
                        &dout,
                        &x,
                        &w,
                        n,
                        &d,
                        exec,
                    )
                } else {
                    conv2d_forward(&mut got.0, &mut buf, &x, &w, &b, n, &d, exec).unwrap();
                    conv2d_backward(dx, dw, None, &mut scratch, &dout, &buf, &w, n, &d, exec)
                }
                .unwrap();
                let what =
                    std::format!("transposed {transposed}, n {n}, {} threads", exec.threads());
                // The first element whose bits differ, if any.
                let diff =
                    |a: &[f32], b: &[f32]| (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits());
                assert_eq!(diff(&got.0, &want.0), None, "out: {what}");
                assert_eq!(diff(&got.1, &want.1), None, "dx: {what}");
                assert_eq!(diff(&got.2, &want.2), None, "dw: {what}");
            }
        }
    }
}
