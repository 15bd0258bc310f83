//! Dense (fully connected) layer: `out = inp · W + b`.
//!
//! Shapes: `inp` N×C_in, `w` C_in×C_out (row `i` = weights leaving input `i`), `b` C_out,
//! `out` N×C_out. All row-major.
//!
//! Int8 inference ([`dense_forward_i8`]) takes the weights as i8 with one f32 scale per output
//! column (see [`crate::encoding::int8`]): each input row is quantised with one scale of its
//! own, the products are summed exactly in i32, and the sum is scaled back:
//! `out[j] = (Σ_p qx[p]·q[p][j]) as f32 · (sx · s[j]) + b[j]`.

use core::fmt;

use crate::encoding::int8::quantize_row;
use crate::error::{CoreError, SpecError, check_len, check_opt_len};
use crate::kernels::{self, Exec};
use crate::layers::{
    Backward, Channels, Forward, Infer, Kind, LayerWeights, Q8Role, Rules, Sizes, Tangent, mul,
    size,
};
use crate::spec::{LayerInfo, Shape};

/// A dense layer of `out` output features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dense {
    /// Output features.
    pub out: u32,
}

/// Shape rule: a flat output of `out` features; `W` is `in × out`, then `b` of `out`.
pub(crate) const fn rules(out: u32, in_len: usize, index: usize) -> Result<Rules, SpecError> {
    if out == 0 {
        return Err(SpecError::BadDimension { layer: index });
    }
    Ok(Rules::new(
        Shape::flat(out),
        Sizes {
            weight: size!(mul(in_len, out as usize), index),
            bias: out as usize,
            ..Sizes::NONE
        },
    ))
}

impl Kind for Dense {
    fn name(&self) -> &'static str {
        "dense"
    }
    fn label(&self, l: &LayerInfo, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dense {}→{}", l.in_shape.len(), self.out)
    }
    fn macs(&self, l: &LayerInfo) -> usize {
        l.weight_len
    }
    fn fans(&self, l: &LayerInfo) -> Option<(usize, usize)> {
        Some((l.in_shape.len(), l.out_shape.len()))
    }
    fn channels(&self, _: &LayerInfo) -> Option<Channels> {
        // `w` is C_in × C_out, row-major: element `p·C_out + j` feeds output `j`.
        Some(Channels { n: self.out as usize, inner: 1 })
    }
    fn q8(&self) -> Q8Role {
        Q8Role::Weighted
    }
    fn q8_sums(
        &self, l: &LayerInfo, acc: &mut [f32], xq: &[i8], u: &[u8],
    ) -> Result<(), CoreError> {
        let (c_in, c_out) = (l.in_shape.len(), self.out as usize);
        check_len("acc", acc.len(), c_out)?;
        check_len("xq", xq.len(), c_in)?;
        check_len("u", u.len(), kernels::q8::pair_len(c_in, c_out))?;
        kernels::q8::dense(acc, xq, u);
        Ok(())
    }
    fn q8_index(&self, l: &LayerInfo, i: usize) -> usize {
        let n = self.out as usize;
        kernels::q8::pair_index(i / n, i % n, l.in_shape.len(), n)
    }
    fn q8_len(&self, l: &LayerInfo) -> usize {
        kernels::q8::pair_len(l.in_shape.len(), self.out as usize)
    }
    fn forward(&self, a: Forward<'_>) -> Result<(), CoreError> {
        let (c_in, c_out) = (a.l.in_shape.len(), self.out as usize);
        dense_forward(a.out, a.inp, a.w(), a.b(), a.n, c_in, c_out, a.exec)
    }
    fn backward(&self, mut a: Backward<'_>) -> Result<(), CoreError> {
        let (c_in, c_out) = (a.l.in_shape.len(), self.out as usize);
        let (inp, w, dout) = (a.inp(), a.w(), a.dout);
        let grads = match a.param_grads() {
            (Some(gw), Some(gb)) => Some((gw, gb)),
            _ => None,
        };
        dense_backward(a.dinp, grads, dout, inp, w, a.n, c_in, c_out, a.exec)
    }
    fn infer(&self, a: Infer<'_, '_, '_>) -> Result<(), CoreError> {
        let (n, c_in, c_out) = (a.n, a.l.in_shape.len(), self.out as usize);
        let (xq, exec) = (a.xq, a.exec);
        match a.w {
            LayerWeights::F32 { w, b, .. } => a.pp.map(n * c_out, |out, inp| {
                dense_forward_exact(out, inp, w, b, n, c_in, c_out, exec)
            }),
            LayerWeights::I8 { q, scales, b } => a.pp.map(n * c_out, |out, inp| {
                dense_forward_i8(out, xq, inp, q, scales, b, n, c_in, c_out)
            }),
        }
    }
    fn tangent(&self) -> Option<Tangent> {
        Some(Tangent::Dense)
    }
}

/// Checks what every dense pass has: nonzero sizes, the `N×C_out` output (or output gradient)
/// buffer `out`, the `N×C_in` input and the `C_in×C_out` weight matrix `w`, each with its name.
fn check_dims(
    out: (&'static str, usize), inp_len: usize, w: (&'static str, usize), n: usize, c_in: usize,
    c_out: usize,
) -> Result<(), CoreError> {
    if n == 0 || c_in == 0 || c_out == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len(out.0, out.1, n * c_out)?;
    check_len("inp", inp_len, n * c_in)?;
    check_len(w.0, w.1, c_in * c_out)
}

/// [`check_dims`] for the float forward passes, with the bias.
fn check_shapes(
    out_len: usize, inp_len: usize, w_len: usize, b_len: usize, n: usize, c_in: usize, c_out: usize,
) -> Result<(), CoreError> {
    check_dims(("out", out_len), inp_len, ("w", w_len), n, c_in, c_out)?;
    check_len("b", b_len, c_out)
}

/// Training forward: `out (N×C_out) = inp (N×C_in) · w (C_in×C_out) + b`.
///
/// Uses the fast kernels (may use FMA); see [`dense_forward_exact`] for the inference path.
#[allow(clippy::too_many_arguments)]
pub fn dense_forward(
    out: &mut [f32], inp: &[f32], w: &[f32], b: &[f32], n: usize, c_in: usize, c_out: usize,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    check_shapes(out.len(), inp.len(), w.len(), b.len(), n, c_in, c_out)?;
    for row in out.chunks_exact_mut(c_out) {
        row.copy_from_slice(b);
    }
    kernels::matmul(out, inp, w, n, c_in, c_out, true, exec);
    Ok(())
}

/// Inference forward with the exact kernel: bit-identical on every target, for any `exec`
/// (threads split the output columns, never a sum).
#[allow(clippy::too_many_arguments)]
pub fn dense_forward_exact(
    out: &mut [f32], inp: &[f32], w: &[f32], b: &[f32], n: usize, c_in: usize, c_out: usize,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    check_shapes(out.len(), inp.len(), w.len(), b.len(), n, c_in, c_out)?;
    kernels::matmul_exact_with(out, inp, w, b, n, c_in, c_out, exec);
    Ok(())
}

/// Backward of [`dense_forward`].
///
/// - `dw (C_in×C_out) += inpᵀ · dout`, `db (C_out) += Σ_n dout[n]`, from `grads = (dw, db)`
///   (pass `None` when only the input gradient is needed);
/// - `dinp (N×C_in) = dout · wᵀ` (overwritten, not accumulated; pass `None` to skip it, e.g.
///   for the first layer of a network whose input needs no gradient).
#[allow(clippy::too_many_arguments)]
pub fn dense_backward(
    dinp: Option<&mut [f32]>, grads: Option<(&mut [f32], &mut [f32])>, dout: &[f32], inp: &[f32],
    w: &[f32], n: usize, c_in: usize, c_out: usize, exec: &dyn Exec,
) -> Result<(), CoreError> {
    check_dims(("dout", dout.len()), inp.len(), ("w", w.len()), n, c_in, c_out)?;
    if let Some((dw, db)) = &grads {
        check_len("dw", dw.len(), c_in * c_out)?;
        check_len("db", db.len(), c_out)?;
    }
    check_opt_len("dinp", dinp.as_deref(), n * c_in)?;
    if let Some((dw, db)) = grads {
        kernels::matmul_tn(dw, inp, dout, c_in, n, c_out, true, exec);
        for row in dout.chunks_exact(c_out) {
            for (g, &d) in db.iter_mut().zip(row) {
                *g += d;
            }
        }
    }
    if let Some(dinp) = dinp {
        kernels::matmul_nt(dinp, dout, w, n, c_out, c_in, false, exec);
    }
    Ok(())
}

/// Int8 inference: `out (N × C_out)` from `inp (N × C_in)`, weights `q (C_in × C_out)` with
/// column `scales` and `bias`; `xq` (at least `C_in`) holds each quantised input row in turn.
///
/// Integer sums are exact in any order and the float steps are fixed, so every target gets the
/// same bits. The sum is exact while `C_in · 127²` stays below 2²⁴ (`C_in` ≤ 1040); then
/// converting it to f32 is exact too. Wider layers still give identical bits everywhere (the
/// conversion rounds to nearest on every target), just with that rounding.
#[allow(clippy::too_many_arguments)]
pub fn dense_forward_i8(
    out: &mut [f32], xq: &mut [i8], inp: &[f32], q: &[i8], scales: &[f32], bias: &[f32], n: usize,
    c_in: usize, c_out: usize,
) -> Result<(), CoreError> {
    check_dims(("out", out.len()), inp.len(), ("q", q.len()), n, c_in, c_out)?;
    check_len("scales", scales.len(), c_out)?;
    check_len("bias", bias.len(), c_out)?;
    if xq.len() < c_in {
        return Err(CoreError::BufferLen { what: "xq", got: xq.len(), expected: c_in });
    }
    let xq = &mut xq[..c_in];
    for (orow, irow) in out.chunks_exact_mut(c_out).zip(inp.chunks_exact(c_in)) {
        let sx = quantize_row(xq, irow);
        kernels::int8::matvec_i8(orow, xq, q, scales, bias, sx);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Serial;
    use crate::testutil::{Lcg, grad_check};
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn forward_matches_definition() {
        let (n, ci, co) = (3, 5, 4);
        let mut r = Lcg::new(1);
        let x = r.vec::<15>();
        let w = r.vec::<20>();
        let b = r.vec::<4>();
        let mut out = [0.0f32; 12];
        let mut out_exact = [0.0f32; 12];
        dense_forward(&mut out, &x, &w, &b, n, ci, co, &Serial).unwrap();
        dense_forward_exact(&mut out_exact, &x, &w, &b, n, ci, co, &Serial).unwrap();
        for s in 0..n {
            for j in 0..co {
                let mut e = 0.0f64;
                for i in 0..ci {
                    e += x[s * ci + i] as f64 * w[i * co + j] as f64;
                }
                e += b[j] as f64;
                assert!((out[s * co + j] as f64 - e).abs() < 1e-5);
                assert!((out_exact[s * co + j] as f64 - e).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn rejects_wrong_lengths() {
        let mut out = [0.0f32; 4];
        let r = dense_forward(&mut out, &[0.0; 3], &[0.0; 8], &[0.0; 2], 2, 2, 2, &Serial);
        assert!(matches!(r, Err(CoreError::BufferLen { what: "inp", .. })));
        let r = dense_forward_exact(&mut out, &[0.0; 4], &[0.0; 4], &[0.0; 2], 0, 2, 2, &Serial);
        assert_eq!(r, Err(CoreError::ZeroSize));
    }

    /// Finite-difference check of every gradient of `L = Σ out ⊙ g` for a random `g`.
    #[test]
    fn backward_matches_finite_differences() {
        let (n, ci, co) = (3, 4, 5);
        let mut r = Lcg::new(7);
        let x = r.vec::<12>();
        let w = r.vec::<20>();
        let b = r.vec::<5>();
        let g = r.vec::<15>();
        let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
            let mut out = [0.0f32; 15];
            dense_forward(&mut out, x, w, b, n, ci, co, &Serial).unwrap();
            out.iter().zip(&g).map(|(&o, &g)| o as f64 * g as f64).sum()
        };
        let mut dx = [0.0f32; 12];
        let mut dw = [0.0f32; 20];
        let mut db = [0.0f32; 5];
        dense_backward(Some(&mut dx), Some((&mut dw, &mut db)), &g, &x, &w, n, ci, co, &Serial)
            .unwrap();
        grad_check(&x, &dx, |xp| loss(xp, &w, &b), 1e-2, 1e-3);
        grad_check(&w, &dw, |wp| loss(&x, wp, &b), 1e-2, 1e-3);
        grad_check(&b, &db, |bp| loss(&x, &w, bp), 1e-2, 1e-3);
        // Parameter gradients accumulate.
        dense_backward(None, Some((&mut dw, &mut db)), &g, &x, &w, n, ci, co, &Serial).unwrap();
        let mut dw1 = [0.0f32; 20];
        let mut db1 = [0.0f32; 5];
        dense_backward(None, Some((&mut dw1, &mut db1)), &g, &x, &w, n, ci, co, &Serial).unwrap();
        for (a, b) in dw.iter().zip(&dw1) {
            assert!((a - 2.0 * b).abs() <= 1e-6 * b.abs().max(1.0));
        }
    }

    /// The kernel against the formula written out with plain loops.
    #[test]
    fn dense_i8_matches_its_definition() {
        let mut r = Lcg::new(5);
        for &(n, k, co) in &[(1, 7, 5), (3, 40, 37), (2, 300, 17)] {
            let x: Vec<f32> = (0..n * k).map(|_| r.next_f32() * 4.0 - 2.0).collect();
            let w: Vec<f32> = (0..k * co).map(|_| r.next_f32() - 0.5).collect();
            let bias: Vec<f32> = (0..co).map(|_| r.next_f32()).collect();
            let mut q = vec![0i8; k * co];
            let mut s = vec![0f32; co];
            crate::encoding::int8::quantize_columns(&mut q, &mut s, &w, k, co).unwrap();
            let mut xq = vec![0i8; k];
            let mut out = vec![0f32; n * co];
            dense_forward_i8(&mut out, &mut xq, &x, &q, &s, &bias, n, k, co).unwrap();
            for i in 0..n {
                let row = &x[i * k..(i + 1) * k];
                let m = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let sx = m / 127.0;
                for j in 0..co {
                    let mut acc = 0i64;
                    for p in 0..k {
                        let qx = libm::roundf(row[p] / sx).clamp(-127.0, 127.0) as i64;
                        acc += qx * q[p * co + j] as i64;
                    }
                    let want = acc as f32 * (sx * s[j]) + bias[j];
                    assert_eq!(out[i * co + j].to_bits(), want.to_bits(), "({n},{k},{co}) {i},{j}");
                    // And within the worst-case quantisation error of the f32 layer:
                    // |Δx| ≤ sx/2 and |Δw| ≤ s/2 per term, plus float rounding.
                    let exact: f32 = (0..k).map(|p| row[p] * w[p * co + j]).sum::<f32>() + bias[j];
                    let bound: f32 = (0..k)
                        .map(|p| {
                            let (xa, wa) = (row[p].abs(), w[p * co + j].abs());
                            sx / 2.0 * wa + xa * s[j] / 2.0 + sx * s[j] / 4.0 + 1e-5 * xa * wa
                        })
                        .sum();
                    let err = (out[i * co + j] - exact).abs();
                    assert!(err <= bound + 1e-5, "{exact} vs {}: {err} > {bound}", out[i * co + j]);
                }
            }
        }
    }
}
