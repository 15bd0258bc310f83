//! Minibatch discrimination (Salimans et al., 2016, "Improved Techniques for Training GANs").
//!
//! Lets the discriminator see how similar each sample is to the rest of its batch, which
//! penalises a generator that collapses onto a few outputs.
//!
//! Shapes (all row-major):
//! - `inp` N×A: one feature row per sample;
//! - `t` A×(B·C): the learned tensor `T` (A × B × C) with its last two axes flattened;
//! - `M = inp · T` N×(B·C): B kernels of C values per sample (kept in `scratch`);
//! - `out` N×(A+B): each row is the input row followed by its B similarity features;
//! - `scratch` at least [`mbd_scratch_len`]`(N, B, C)` = 2·N·B·C: `M`, then `dM` (backward).
//!
//! With `M_{i,b}` the C-vector of sample `i` and kernel `b`:
//! - `c_b(i, j) = exp(−Σ_c |M_{i,b,c} − M_{j,b,c}|)` (symmetric in `i`, `j`);
//! - `o_{i,b} = Σ_{j ≠ i} c_b(i, j)` (the sample's similarity to itself is excluded).
//!
//! Each unordered pair is evaluated once and added to both samples; every `o_{i,b}` still
//! receives its terms in increasing `j`, so the result does not depend on that shortcut.

use core::fmt;

use crate::error::{CoreError, SpecError, check_len, check_min_len, check_opt_len};
use crate::kernels::{self, Serial};
use crate::layers::{self as layers, Backward, Forward, Infer, Kind, Rules, size};
use crate::spec::{LayerInfo, Shape};

/// A minibatch-discrimination layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinibatchDisc {
    /// Similarity kernels `B` (features added).
    pub kernels: u32,
    /// Dimensions `C` per kernel.
    pub dims: u32,
}

/// Shape rule: `A + B` flat features; `T` of `A × B·C`, no bias; `2·B·C` of auxiliary storage
/// per sample (`M` and its gradient).
pub(crate) const fn rules(
    kernels: u32, dims: u32, in_len: usize, index: usize,
) -> Result<Rules, SpecError> {
    if kernels == 0 || dims == 0 {
        return Err(SpecError::BadDimension { layer: index });
    }
    let out = match in_len.checked_add(kernels as usize) {
        Some(n) if n <= u32::MAX as usize => Shape::flat(n as u32),
        _ => return Err(SpecError::BadDimension { layer: index }),
    };
    let bc = size!(layers::mul(kernels as usize, dims as usize), index);
    Ok(Rules::new(
        out,
        layers::Sizes {
            weight: size!(layers::mul(in_len, bc), index),
            aux: size!(layers::mul(2, bc), index),
            ..layers::Sizes::NONE
        },
    ))
}

impl Kind for MinibatchDisc {
    fn name(&self) -> &'static str {
        "minibatch_disc"
    }
    fn label(&self, _: &LayerInfo, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "minibatch_disc(B={}, C={})", self.kernels, self.dims)
    }
    fn macs(&self, l: &LayerInfo) -> usize {
        l.weight_len
    }
    /// `T` maps the `A` input features to `B·C` kernel values.
    fn fans(&self, l: &LayerInfo) -> Option<(usize, usize)> {
        Some((l.in_shape.len(), self.kernels as usize * self.dims as usize))
    }
    fn forward(&self, a: Forward<'_>) -> Result<(), CoreError> {
        let (b, c) = (self.kernels as usize, self.dims as usize);
        mbd_forward(a.out, a.inp, a.w(), a.aux, a.n, a.l.in_shape.len(), b, c)
    }
    fn backward(&self, a: Backward<'_>) -> Result<(), CoreError> {
        let (b, c) = (self.kernels as usize, self.dims as usize);
        let (inp, t, l, n) = (a.inp(), a.w(), a.l, a.n);
        // An empty weight-gradient slice asks for the input gradient only.
        let dt: &mut [f32] = match a.grads {
            Some(g) => &mut g[l.weight_range()],
            None => &mut [],
        };
        let scratch = &mut a.scratch[..n * l.layer.aux_len(l.in_shape)];
        mbd_backward(a.dinp, dt, a.dout, inp, t, scratch, n, l.in_shape.len(), b, c)
    }
    /// Couples the samples of a batch, so it has no per-sample inference: it belongs in
    /// discriminators, which are never exported for generation.
    fn infer(&self, a: Infer<'_, '_, '_>) -> Result<(), CoreError> {
        Err(CoreError::Unsupported { layer: a.l.index })
    }
}

/// Scratch elements needed by [`mbd_forward`] and [`mbd_backward`]: `2·N·B·C` (`M` and `dM`).
///
/// Saturates instead of overflowing, so an absurd size simply fails the length check.
pub const fn mbd_scratch_len(n: usize, b: usize, c: usize) -> usize {
    n.saturating_mul(b).saturating_mul(c).saturating_mul(2)
}

/// Element counts derived from the dimensions.
struct Sizes {
    /// `B·C`, one row of `M`.
    bc: usize,
    /// `N·B·C`, all of `M`.
    nbc: usize,
}

/// `x·y`, or `Err(BufferLen)` naming `what` if the product overflows `usize`.
fn mul(what: &'static str, got: usize, x: usize, y: usize) -> Result<usize, CoreError> {
    x.checked_mul(y).ok_or(CoreError::BufferLen { what, expected: usize::MAX, got })
}

/// Validates dimensions and the buffers shared by forward and backward.
/// `out_len` is the length of `out` (forward) or `dout` (backward), named `out_name`.
#[allow(clippy::too_many_arguments)]
fn check_shapes(
    out_name: &'static str, out_len: usize, inp_len: usize, t_len: usize, scratch_len: usize,
    n: usize, a: usize, b: usize, c: usize,
) -> Result<Sizes, CoreError> {
    if n == 0 || a == 0 || b == 0 || c == 0 {
        return Err(CoreError::ZeroSize);
    }
    let bc = mul("t", t_len, b, c)?;
    let nbc = mul("scratch", scratch_len, n, bc)?;
    let row = a.checked_add(b).ok_or(CoreError::BufferLen {
        what: out_name,
        expected: usize::MAX,
        got: out_len,
    })?;
    check_len(out_name, out_len, mul(out_name, out_len, n, row)?)?;
    check_len("inp", inp_len, mul("inp", inp_len, n, a)?)?;
    check_len("t", t_len, mul("t", t_len, a, bc)?)?;
    check_min_len("scratch", scratch_len, mbd_scratch_len(n, b, c))?;
    Ok(Sizes { bc, nbc })
}

/// `Σ_c |x_c − y_c|`, summed in order.
#[inline]
fn l1_distance(x: &[f32], y: &[f32]) -> f32 {
    x.iter().zip(y).fold(0.0f32, |s, (&p, &q)| s + libm::fabsf(p - q))
}

/// Sign with `sign(0) = 0` (and NaN → 0): the subgradient of `|x|` used at the kink.
#[inline]
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Forward pass: `out[i] = [inp[i], o_{i,0}, …, o_{i,B−1}]` with
/// `o_{i,b} = Σ_{j≠i} exp(−Σ_c |M_{i,b,c} − M_{j,b,c}|)` and `M = inp · T`.
///
/// Buffers: `out` N×(A+B), `inp` N×A, `t` A×(B·C), `scratch` ≥ 2·N·B·C (its first N·B·C
/// elements hold `M` afterwards). A batch of one has all-zero similarity features.
#[allow(clippy::too_many_arguments)]
pub fn mbd_forward(
    out: &mut [f32], inp: &[f32], t: &[f32], scratch: &mut [f32], n: usize, a: usize, b: usize,
    c: usize,
) -> Result<(), CoreError> {
    let s = check_shapes("out", out.len(), inp.len(), t.len(), scratch.len(), n, a, b, c)?;
    let m = &mut scratch[..s.nbc];
    kernels::matmul(m, inp, t, n, a, s.bc, false, &Serial);
    let m = &*m;

    let row = a + b;
    for (o, x) in out.chunks_exact_mut(row).zip(inp.chunks_exact(a)) {
        let (head, sim) = o.split_at_mut(a);
        head.copy_from_slice(x);
        sim.fill(0.0);
    }
    for i in 0..n {
        let mi = &m[i * s.bc..(i + 1) * s.bc];
        for j in i + 1..n {
            let mj = &m[j * s.bc..(j + 1) * s.bc];
            // Rows i < j of `out`: split so both similarity blocks can be updated.
            let (lo, hi) = out.split_at_mut(j * row);
            let oi = &mut lo[i * row + a..(i + 1) * row];
            let oj = &mut hi[a..row];
            let kernels_i = mi.chunks_exact(c);
            let kernels_j = mj.chunks_exact(c);
            for ((si, sj), (ki, kj)) in oi.iter_mut().zip(oj).zip(kernels_i.zip(kernels_j)) {
                let sim = libm::expf(-l1_distance(ki, kj));
                *si += sim;
                *sj += sim;
            }
        }
    }
    Ok(())
}

/// Backward pass of [`mbd_forward`].
///
/// With `g_{i,b} = dout[i][A + b]` and `s = sign(M_{i,b,c} − M_{j,b,c})` (0 at 0), each pair
/// `i < j` contributes `w = (g_{i,b} + g_{j,b})·c_b(i, j)` as
/// `dM_{i,b,c} −= w·s` and `dM_{j,b,c} += w·s`. Then
/// - `dt (A×B·C) += inpᵀ · dM` (accumulated, like every parameter gradient);
/// - `dinp (N×A) = dout[:, ..A] + dM · Tᵀ` (overwritten; the first term is the pass-through of
///   the concatenation). Pass `None` to skip it.
///
/// Pass an empty `dt` to skip the weight gradient (back-propagating to the input only, as when
/// the generator is trained through a frozen discriminator).
///
/// Buffers: `dout` N×(A+B), `inp` N×A, `t` A×(B·C), `scratch` ≥ 2·N·B·C. `M` is recomputed
/// here, so `scratch` need not hold anything from the forward pass.
#[allow(clippy::too_many_arguments)]
pub fn mbd_backward(
    dinp: Option<&mut [f32]>, dt: &mut [f32], dout: &[f32], inp: &[f32], t: &[f32],
    scratch: &mut [f32], n: usize, a: usize, b: usize, c: usize,
) -> Result<(), CoreError> {
    let s = check_shapes("dout", dout.len(), inp.len(), t.len(), scratch.len(), n, a, b, c)?;
    if !dt.is_empty() {
        check_len("dt", dt.len(), t.len())?;
    }
    check_opt_len("dinp", dinp.as_deref(), inp.len())?;
    let (m, rest) = scratch.split_at_mut(s.nbc);
    let dm = &mut rest[..s.nbc];
    kernels::matmul(m, inp, t, n, a, s.bc, false, &Serial);
    let m = &*m;
    dm.fill(0.0);

    let row = a + b;
    for i in 0..n {
        let mi = &m[i * s.bc..(i + 1) * s.bc];
        let gi = &dout[i * row + a..(i + 1) * row];
        for j in i + 1..n {
            let mj = &m[j * s.bc..(j + 1) * s.bc];
            let gj = &dout[j * row + a..(j + 1) * row];
            let (lo, hi) = dm.split_at_mut(j * s.bc);
            let dmi = &mut lo[i * s.bc..(i + 1) * s.bc];
            let dmj = &mut hi[..s.bc];
            let kernels = mi.chunks_exact(c).zip(mj.chunks_exact(c));
            let dkernels = dmi.chunks_exact_mut(c).zip(dmj.chunks_exact_mut(c));
            let g = gi.iter().zip(gj);
            for (((ki, kj), (dki, dkj)), (&gib, &gjb)) in kernels.zip(dkernels).zip(g) {
                let w = (gib + gjb) * libm::expf(-l1_distance(ki, kj));
                for (((dx, dy), &x), &y) in dki.iter_mut().zip(dkj.iter_mut()).zip(ki).zip(kj) {
                    let v = w * sign(x - y);
                    *dx -= v;
                    *dy += v;
                }
            }
        }
    }
    let dm = &*dm;

    if !dt.is_empty() {
        kernels::matmul_tn(dt, inp, dm, a, n, s.bc, true, &Serial);
    }
    if let Some(dinp) = dinp {
        for (d, g) in dinp.chunks_exact_mut(a).zip(dout.chunks_exact(row)) {
            d.copy_from_slice(&g[..a]);
        }
        kernels::matmul_nt(dinp, dm, t, n, s.bc, a, true, &Serial);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Lcg, grad_check};

    const N: usize = 4;
    const A: usize = 3;
    const B: usize = 2;
    const C: usize = 3;
    const SCRATCH: usize = mbd_scratch_len(N, B, C);

    /// Definition of the forward pass in f64, straight from the formulas.
    fn reference(inp: &[f32], t: &[f32], n: usize, a: usize, b: usize, c: usize) -> [f64; 64] {
        let mut m = [0.0f64; 64];
        for i in 0..n {
            for k in 0..b * c {
                m[i * b * c + k] =
                    (0..a).map(|p| inp[i * a + p] as f64 * t[p * b * c + k] as f64).sum();
            }
        }
        let mut out = [0.0f64; 64];
        for i in 0..n {
            for p in 0..a {
                out[i * (a + b) + p] = inp[i * a + p] as f64;
            }
            for kb in 0..b {
                let mut o = 0.0;
                for j in (0..n).filter(|&j| j != i) {
                    let d: f64 = (0..c)
                        .map(|q| (m[(i * b + kb) * c + q] - m[(j * b + kb) * c + q]).abs())
                        .sum();
                    o += (-d).exp();
                }
                out[i * (a + b) + a + kb] = o;
            }
        }
        out
    }

    /// Smallest `|M_{i,b,c} − M_{j,b,c}|` over all pairs: the distance from the kinks of `|·|`.
    fn min_gap(inp: &[f32], t: &[f32]) -> f32 {
        let mut m = [0.0f32; N * B * C];
        kernels::matmul(&mut m, inp, t, N, A, B * C, false, &Serial);
        let mut gap = f32::INFINITY;
        for i in 0..N {
            for j in i + 1..N {
                for k in 0..B * C {
                    gap = gap.min((m[i * B * C + k] - m[j * B * C + k]).abs());
                }
            }
        }
        gap
    }

    #[test]
    fn forward_golden() {
        // N = 3, A = 1, B = 1, C = 1, T = [1]: M = inp = (0, 1, 3).
        // o_0 = e^−1 + e^−3 = 0.3678794 + 0.0497871 = 0.4176665
        // o_1 = e^−1 + e^−2 = 0.3678794 + 0.1353353 = 0.5032147
        // o_2 = e^−3 + e^−2 = 0.0497871 + 0.1353353 = 0.1851224
        let mut out = [0.0f32; 6];
        let mut scratch = [0.0f32; 6];
        mbd_forward(&mut out, &[0.0, 1.0, 3.0], &[1.0], &mut scratch, 3, 1, 1, 1).unwrap();
        let want = [0.0, 0.417_666_5, 1.0, 0.503_214_7, 3.0, 0.185_122_4];
        for (&o, &w) in out.iter().zip(&want) {
            assert!((o - w).abs() < 1e-6, "{out:?}");
        }

        // N = 2, A = 1, B = 2, C = 2, T = [[1, −1], [2, 0]] (kernel 0 = (1, −1), kernel 1 =
        // (2, 0)), inp = (1, 0.5): M_0 = (1, −1 | 2, 0), M_1 = (0.5, −0.5 | 1, 0).
        // Kernel 0: |1 − 0.5| + |−1 + 0.5| = 1 → e^−1 = 0.3678794.
        // Kernel 1: |2 − 1| + |0 − 0| = 1 → e^−1 (the zero difference contributes nothing).
        let mut out = [0.0f32; 6];
        let mut scratch = [0.0f32; 16];
        let t = [1.0, -1.0, 2.0, 0.0];
        mbd_forward(&mut out, &[1.0, 0.5], &t, &mut scratch, 2, 1, 2, 2).unwrap();
        let e1 = 0.367_879_4;
        let want = [1.0, e1, e1, 0.5, e1, e1];
        for (&o, &w) in out.iter().zip(&want) {
            assert!((o - w).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn forward_matches_reference() {
        let mut r = Lcg::new(5);
        let inp = r.vec::<{ N * A }>();
        let t = r.vec::<{ A * B * C }>();
        let mut out = [0.0f32; N * (A + B)];
        let mut scratch = [f32::NAN; SCRATCH + 3]; // longer than needed is fine
        mbd_forward(&mut out, &inp, &t, &mut scratch, N, A, B, C).unwrap();
        let want = reference(&inp, &t, N, A, B, C);
        for (k, &o) in out.iter().enumerate() {
            assert!((o as f64 - want[k]).abs() < 1e-5, "{k}: {o} vs {}", want[k]);
        }
    }

    #[test]
    fn self_similarity_is_excluded() {
        // A single sample has no partner: zero features.
        let mut out = [9.0f32; A + B];
        let mut scratch = [0.0f32; 2 * B * C];
        let t = [0.5f32; A * B * C];
        mbd_forward(&mut out, &[1.0, 2.0, 3.0], &t, &mut scratch, 1, A, B, C).unwrap();
        assert_eq!(out, [1.0, 2.0, 3.0, 0.0, 0.0]);
        // N identical samples: every c_b(i, j) = e^0 = 1, so o = N − 1 = 3.
        let inp = [0.25f32; N * A];
        let mut out = [0.0f32; N * (A + B)];
        let mut scratch = [0.0f32; SCRATCH];
        mbd_forward(&mut out, &inp, &t, &mut scratch, N, A, B, C).unwrap();
        for row in out.chunks_exact(A + B) {
            assert_eq!(&row[A..], &[3.0, 3.0]);
        }
    }

    /// Finite-difference check of `dinp` and `dt` for `L = Σ out ⊙ g`.
    #[test]
    fn backward_matches_finite_differences() {
        // The finite-difference steps (≤ 1e-3 per coordinate) move M by at most ~3e-3; take
        // the first seed whose pairs are all further apart than 0.05, so no |·| crosses its
        // kink during the check.
        let (inp, t, g) = (0..100)
            .map(|seed| {
                let mut r = Lcg::new(seed);
                let inp = r.vec::<{ N * A }>();
                let t = r.vec::<{ A * B * C }>();
                (inp, t, r.vec::<{ N * (A + B) }>())
            })
            .find(|(inp, t, _)| min_gap(inp, t) > 0.05)
            .expect("some seed keeps M away from the kinks");

        let loss = |x: &[f32], tt: &[f32]| -> f64 {
            let mut out = [0.0f32; N * (A + B)];
            let mut scratch = [0.0f32; SCRATCH];
            mbd_forward(&mut out, x, tt, &mut scratch, N, A, B, C).unwrap();
            out.iter().zip(&g).map(|(&o, &g)| o as f64 * g as f64).sum()
        };
        let mut dinp = [f32::NAN; N * A]; // overwritten
        let mut dt = [0.0f32; A * B * C];
        let mut scratch = [f32::NAN; SCRATCH]; // recomputed, not read
        mbd_backward(Some(&mut dinp), &mut dt, &g, &inp, &t, &mut scratch, N, A, B, C).unwrap();
        grad_check(&inp, &dinp, |xp| loss(xp, &t), 1e-3, 1e-3);
        grad_check(&t, &dt, |tp| loss(&inp, tp), 1e-3, 1e-3);

        // The similarity path must carry gradient, not just the pass-through.
        assert!(dt.iter().any(|&v| v.abs() > 1e-3));

        // dt accumulates; dinp = None is accepted.
        let dt1 = dt;
        mbd_backward(None, &mut dt, &g, &inp, &t, &mut scratch, N, A, B, C).unwrap();
        for (&two, &one) in dt.iter().zip(&dt1) {
            assert!((two - 2.0 * one).abs() <= 1e-6 * one.abs().max(1.0));
        }
    }

    #[test]
    fn rejects_bad_buffers() {
        let inp = [0.0f32; N * A];
        let t = [0.0f32; A * B * C];
        let dout = [0.0f32; N * (A + B)];
        let mut out = [0.0f32; N * (A + B)];
        let mut dinp = [0.0f32; N * A];
        let mut dt = [0.0f32; A * B * C];
        let mut scratch = [0.0f32; SCRATCH];
        let what = |r: Result<(), CoreError>| match r {
            Err(CoreError::BufferLen { what, .. }) => what,
            other => panic!("expected BufferLen, got {other:?}"),
        };

        let f = |out: &mut [f32], inp: &[f32], t: &[f32], s: &mut [f32]| {
            mbd_forward(out, inp, t, s, N, A, B, C)
        };
        assert_eq!(what(f(&mut out[1..], &inp, &t, &mut scratch)), "out");
        assert_eq!(what(f(&mut out, &inp[1..], &t, &mut scratch)), "inp");
        assert_eq!(what(f(&mut out, &inp, &t[1..], &mut scratch)), "t");
        assert_eq!(what(f(&mut out, &inp, &t, &mut scratch[1..])), "scratch");
        assert_eq!(f(&mut out, &inp, &t, &mut scratch), Ok(()));

        let bw = |dinp: Option<&mut [f32]>, dt: &mut [f32], dout: &[f32], s: &mut [f32]| {
            mbd_backward(dinp, dt, dout, &inp, &t, s, N, A, B, C)
        };
        assert_eq!(what(bw(Some(&mut dinp[1..]), &mut dt, &dout, &mut scratch)), "dinp");
        assert_eq!(what(bw(None, &mut dt[1..], &dout, &mut scratch)), "dt");
        assert_eq!(what(bw(None, &mut dt, &dout[1..], &mut scratch)), "dout");
        assert_eq!(what(bw(None, &mut dt, &dout, &mut scratch[1..])), "scratch");
        assert_eq!(bw(Some(&mut dinp), &mut dt, &dout, &mut scratch), Ok(()));

        // Dimensions whose products overflow are reported, not wrapped.
        let r = mbd_forward(&mut out, &inp, &t, &mut scratch, usize::MAX, A, B, C);
        assert!(matches!(r, Err(CoreError::BufferLen { .. })), "{r:?}");
        assert_eq!(mbd_scratch_len(usize::MAX, 2, 2), usize::MAX);
    }

    #[test]
    fn rejects_zero_sizes() {
        let mut out = [0.0f32; 8];
        let mut scratch = [0.0f32; 8];
        let mut dt = [0.0f32; 8];
        for (n, a, b, c) in [(0, 1, 1, 1), (1, 0, 1, 1), (1, 1, 0, 1), (1, 1, 1, 0)] {
            let r = mbd_forward(&mut out, &[], &[], &mut scratch, n, a, b, c);
            assert_eq!(r, Err(CoreError::ZeroSize));
            let r = mbd_backward(None, &mut dt, &[], &[], &[], &mut scratch, n, a, b, c);
            assert_eq!(r, Err(CoreError::ZeroSize));
        }
    }
}
