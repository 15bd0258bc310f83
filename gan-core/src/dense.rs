//! Dense (fully connected) layer: `out = inp · W + b`.
//!
//! Shapes: `inp` N×C_in, `w` C_in×C_out (row `i` = weights leaving input `i`), `b` C_out,
//! `out` N×C_out. All row-major.

use crate::error::{CoreError, check_len};
use crate::kernels::{self, Exec};

fn check_shapes(
    out_len: usize,
    inp_len: usize,
    w_len: usize,
    b_len: usize,
    n: usize,
    c_in: usize,
    c_out: usize,
) -> Result<(), CoreError> {
    if n == 0 || c_in == 0 || c_out == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len("out", out_len, n * c_out)?;
    check_len("inp", inp_len, n * c_in)?;
    check_len("w", w_len, c_in * c_out)?;
    check_len("b", b_len, c_out)
}

/// Training forward: `out (N×C_out) = inp (N×C_in) · w (C_in×C_out) + b`.
///
/// Uses the fast kernels (may use FMA); see [`dense_forward_exact`] for the inference path.
#[allow(clippy::too_many_arguments)]
pub fn dense_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    c_in: usize,
    c_out: usize,
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
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    c_in: usize,
    c_out: usize,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    check_shapes(out.len(), inp.len(), w.len(), b.len(), n, c_in, c_out)?;
    kernels::matmul_exact_with(out, inp, w, b, n, c_in, c_out, exec);
    Ok(())
}

/// Backward of [`dense_forward`].
///
/// - `dw (C_in×C_out) += inpᵀ · dout`
/// - `db (C_out) += Σ_n dout[n]`
/// - `dinp (N×C_in) = dout · wᵀ` (overwritten, not accumulated; pass `None` to skip it, e.g.
///   for the first layer of a network whose input needs no gradient).
#[allow(clippy::too_many_arguments)]
pub fn dense_backward(
    dinp: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    n: usize,
    c_in: usize,
    c_out: usize,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    check_shapes(dout.len(), inp.len(), w.len(), db.len(), n, c_in, c_out)?;
    check_len("dw", dw.len(), c_in * c_out)?;
    if let Some(d) = &dinp {
        check_len("dinp", d.len(), n * c_in)?;
    }
    kernels::matmul_tn(dw, inp, dout, c_in, n, c_out, true, exec);
    for row in dout.chunks_exact(c_out) {
        for (g, &d) in db.iter_mut().zip(row) {
            *g += d;
        }
    }
    if let Some(dinp) = dinp {
        kernels::matmul_nt(dinp, dout, w, n, c_out, c_in, false, exec);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Serial;
    use crate::testutil::{Lcg, grad_check};

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
        dense_backward(
            Some(&mut dx),
            &mut dw,
            &mut db,
            &g,
            &x,
            &w,
            n,
            ci,
            co,
            &Serial,
        )
        .unwrap();
        grad_check(&x, &dx, |xp| loss(xp, &w, &b), 1e-2, 1e-3);
        grad_check(&w, &dw, |wp| loss(&x, wp, &b), 1e-2, 1e-3);
        grad_check(&b, &db, |bp| loss(&x, &w, bp), 1e-2, 1e-3);
        // Parameter gradients accumulate.
        dense_backward(None, &mut dw, &mut db, &g, &x, &w, n, ci, co, &Serial).unwrap();
        let mut dw1 = [0.0f32; 20];
        let mut db1 = [0.0f32; 5];
        dense_backward(None, &mut dw1, &mut db1, &g, &x, &w, n, ci, co, &Serial).unwrap();
        for (a, b) in dw.iter().zip(&dw1) {
            assert!((a - 2.0 * b).abs() <= 1e-6 * b.abs().max(1.0));
        }
    }
}
