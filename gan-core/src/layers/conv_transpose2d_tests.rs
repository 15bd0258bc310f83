//! Tests of the transposed convolution against its definition, the adjoint of the
//! convolution, and its blocked exact kernel.

use super::*;
use crate::kernels::Serial;
use crate::layers::conv2d::conv2d_forward;
use crate::layers::conv2d::tests::{check_forwards, check_int8_kernel, dims};
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
                                let wv =
                                    w[((c * d.out_c + o) * d.k + ky as usize) * d.k + kx as usize];
                                out[((i * d.out_c + o) * oh + oy as usize) * ow + ox as usize] +=
                                    xv * wv as f64;
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
    check_forwards::<Transposed>(22, naive_conv_t);
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
        let x = r.filled(n * ci * h * wd);
        let y = r.filled(n * co * oh * ow);
        let w = r.filled(co * ci * k * k);
        let mut cx = vec![0.0; y.len()];
        let mut col = vec![0.0; n * d.train_len().unwrap()];
        conv2d_forward(&mut cx, &mut col, &x, &w, &vec![0.0; co], n, &d, &Serial).unwrap();
        let mut ty = vec![0.0; x.len()];
        let mut scratch = vec![0.0; n * dt.transpose_train_len().unwrap()];
        conv_transpose2d_forward(&mut ty, &mut scratch, &y, &w, &vec![0.0; ci], n, &dt, &Serial)
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

/// The blocked host kernel gives the plane-by-plane loops' bits, for whole blocks, a
/// block narrower than eight, strides 1 to 3 and odd sizes.
#[test]
fn blocked_exact_kernel_is_the_plane_loops() {
    let mut r = crate::testutil::Lcg::new(17);
    for (in_c, in_h, in_w, out_c, k, stride, pad, n) in [
        (16, 7, 7, 16, 4, 2, 1, 2),
        (3, 6, 5, 32, 4, 2, 1, 1),
        (5, 7, 7, 1, 4, 2, 1, 3),
        (4, 7, 7, 1, 4, 2, 1, 1),
        (5, 14, 14, 1, 4, 2, 1, 2),
        (3, 13, 11, 1, 4, 2, 1, 1),
        (3, 9, 4, 1, 3, 1, 1, 2),
        (3, 5, 6, 8, 3, 2, 0, 1),
        (3, 6, 6, 8, 4, 2, 1, 2),
        (4, 4, 3, 3, 3, 1, 1, 2),
        (2, 3, 5, 8, 5, 3, 2, 1),
    ] {
        let d = ConvDims { in_c, in_h, in_w, out_c, k, stride, pad };
        let g = Geom::transpose(&d).unwrap();
        let inp: std::vec::Vec<f32> =
            (0..n * g.grid).map(|i| if i % 7 == 0 { 0.0 } else { r.next_f32() }).collect();
        let mut w: std::vec::Vec<f32> = (0..g.w).map(|_| r.next_f32()).collect();
        // A non-finite weight in the second input channel (the tap-by-tap fallback for
        // that channel only), and exact zeros among the inputs.
        if in_c > 1 && (out_c == 16 || in_h == 14 || (out_c, k) == (8, 4)) {
            w[g.w / in_c + 5] = f32::INFINITY;
        }
        let b: std::vec::Vec<f32> = (0..out_c).map(|_| r.next_f32()).collect();
        let mut want = std::vec![f32::NAN; n * g.img];
        exact_by_plane(&mut want, &inp, &w, &b, n, &g, &Serial);
        // The portable body too, whatever this CPU has.
        let per = if out_c % BLOCK == 0 { BLOCK } else { out_c };
        assert!(per <= BLOCK);
        let mut body = std::vec![f32::NAN; n * g.img];
        for (item, planes) in body.chunks_exact_mut(per * g.ih * g.iw).enumerate() {
            let (sample, co0) = (item / (out_c / per), item % (out_c / per) * per);
            let x = &inp[sample * g.grid..(sample + 1) * g.grid];
            let blk = Block { co0, per, oy0: 0, oy1: g.ih };
            let (strip, quad) = (strip_portable::<BLOCK>, quad_portable::<BLOCK>);
            exact_block_body(planes, x, &w, &b, &blk, &g, strip, quad, taps_portable::<BLOCK>);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<std::vec::Vec<_>>();
        assert_eq!(bits(&body), bits(&want), "portable {d:?}");
        // The AVX body too (blocks of eight, one channel) on CPUs that have it, even where
        // AVX-512 would be chosen.
        #[cfg(target_arch = "x86_64")]
        if kernels::exact_isa() != kernels::ExactIsa::Portable && (per == BLOCK || per == 1) {
            let mut avx = std::vec![f32::NAN; n * g.img];
            for (item, planes) in avx.chunks_exact_mut(per * g.ih * g.iw).enumerate() {
                let (sample, co0) = (item / (out_c / per), item % (out_c / per) * per);
                let x = &inp[sample * g.grid..(sample + 1) * g.grid];
                let blk = Block { co0, per, oy0: 0, oy1: g.ih };
                // SAFETY: the CPU has AVX (checked).
                unsafe { exact_block_avx(planes, x, &w, &b, &blk, &g) };
            }
            assert_eq!(bits(&avx), bits(&want), "AVX {d:?}");
        }
        for exec in [&Serial as &dyn Exec, &crate::testutil::Threads(3)] {
            let mut got = std::vec![f32::NAN; n * g.img];
            conv_transpose2d_forward_exact_with(&mut got, &inp, &w, &b, n, &d, exec).unwrap();
            assert_eq!(bits(&got), bits(&want), "{d:?}");
        }
    }
}
