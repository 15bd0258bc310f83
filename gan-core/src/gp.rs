//! WGAN-GP gradient penalty with its exact parameter gradient.
//!
//! For interpolates `x̂ᵢ` (N × input) and a critic `D` with one output per sample:
//!
//! ```text
//! gᵢ = ∇ₓ D(x̂ᵢ)            ‖gᵢ‖ = sqrt(Σ gᵢ² + ε)
//! P  = λ/N · Σᵢ (‖gᵢ‖ − 1)²
//! ```
//!
//! The trainer needs `∂P/∂θ`. With `vᵢ = ∂P/∂gᵢ = 2λ/N · (‖gᵢ‖ − 1)/‖gᵢ‖ · gᵢ` held constant,
//! `∂P/∂θ = ∇θ Σᵢ gᵢ·vᵢ`, and `gᵢ·vᵢ` is the directional derivative of `D` at `x̂ᵢ` along `vᵢ`.
//! For a critic built from dense layers and ReLU / LeakyReLU (piecewise linear; the usual WGAN
//! critic), the activation slopes are locally constant, so that directional derivative is linear
//! in each weight matrix and its gradient is exact and cheap:
//!
//! 1. forward `x̂`, backward with `dout = 1` → `g` (input gradient, no parameter gradients);
//! 2. tangent forward: `ṫ₀ = v`, dense `ṫ = ṫ_in·W` (no bias), activation `ṫ = φ'(a) ⊙ ṫ_in`;
//! 3. backward with `dout = 1` again, taking the weight gradient as `ṫ_inᵀ · δ` instead of
//!    `inpᵀ · δ`; biases get nothing (the directional derivative does not depend on them).
//!
//! Critics with smooth activations (Tanh, Sigmoid) would need second-derivative terms and are
//! rejected with [`CoreError::Unsupported`].

use crate::error::{CoreError, check_len};
use crate::kernels::{self, Exec};
use crate::layers::{Backward, Kind, Tangent, with_kind};
use crate::model;
use crate::spec::{LayerInfo, Spec};

/// Default penalty weight λ.
pub const DEFAULT_LAMBDA: f32 = 10.0;
/// ε inside the square root of the per-sample norm.
pub const NORM_EPS: f32 = 1e-12;

/// Scratch elements [`gradient_penalty`] needs for batch `n`.
pub const fn gp_scratch_len(spec: &Spec<'_>, n: usize) -> usize {
    2 * spec.act_len(n) + spec.backward_scratch_len(n) + n * spec.input().len() + n
}

/// Interpolates `x̂ = ε·real + (1−ε)·fake` per sample, with one `eps[i]` in `[0, 1]` per sample.
/// All of `out`, `real`, `fake` are N × features.
pub fn interpolate(
    out: &mut [f32], real: &[f32], fake: &[f32], eps: &[f32],
) -> Result<(), CoreError> {
    let n = eps.len();
    if n == 0 || !out.len().is_multiple_of(n) {
        return Err(CoreError::ZeroSize);
    }
    check_len("real", real.len(), out.len())?;
    check_len("fake", fake.len(), out.len())?;
    let f = out.len() / n;
    for (((o, r), fk), &e) in
        out.chunks_exact_mut(f).zip(real.chunks_exact(f)).zip(fake.chunks_exact(f)).zip(eps)
    {
        for ((o, &r), &fk) in o.iter_mut().zip(r).zip(fk) {
            *o = e * r + (1.0 - e) * fk;
        }
    }
    Ok(())
}

/// Computes the penalty at `x_hat` (N × input) and adds `∂P/∂θ` into `grads`.
///
/// Returns `(P, mean ‖g‖)`. `scratch` has [`gp_scratch_len`] elements.
#[allow(clippy::too_many_arguments)]
pub fn gradient_penalty(
    spec: &Spec<'_>, params: &[f32], grads: &mut [f32], x_hat: &[f32], lambda: f32,
    scratch: &mut [f32], n: usize, exec: &dyn Exec,
) -> Result<(f32, f32), CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    let in_len = spec.input().len();
    if spec.output().len() != 1 {
        return Err(CoreError::Unsupported { layer: spec.layers().len() - 1 });
    }
    check_len("x_hat", x_hat.len(), n * in_len)?;
    check_len("grads", grads.len(), spec.param_len())?;
    check_len("scratch", scratch.len(), gp_scratch_len(spec, n))?;
    for info in spec.iter() {
        tangent_of(&info)?;
    }
    let (acts, rest) = scratch.split_at_mut(spec.act_len(n));
    let (tangent, rest) = rest.split_at_mut(spec.act_len(n));
    let (bscratch, rest) = rest.split_at_mut(spec.backward_scratch_len(n));
    let (g, ones) = rest.split_at_mut(n * in_len);
    ones.fill(1.0);

    // 1. g = ∇ₓ D(x̂).
    acts[..n * in_len].copy_from_slice(x_hat);
    model::forward(spec, params, acts, n, exec)?;
    model::backward(spec, params, acts, ones, None, Some(g), bscratch, n, exec)?;

    // Penalty and v (written over g).
    let mut penalty = 0.0f32;
    let mut norm_sum = 0.0f32;
    let scale = 2.0 * lambda / n as f32;
    for gi in g.chunks_exact_mut(in_len) {
        let sq: f32 = gi.iter().map(|&v| v * v).sum();
        let norm = libm::sqrtf(sq + NORM_EPS);
        penalty += (norm - 1.0) * (norm - 1.0);
        norm_sum += norm;
        let k = scale * (norm - 1.0) / norm;
        for v in gi.iter_mut() {
            *v *= k;
        }
    }
    let penalty = lambda * penalty / n as f32;

    // 2. Tangent forward along v.
    tangent[..n * in_len].copy_from_slice(g);
    for info in spec.iter() {
        let ir = info.in_range(n);
        let or = info.out_range(n);
        let slope = match tangent_of(&info)? {
            Tangent::View => continue,
            Tangent::Dense => None,
            Tangent::Slope(s) => Some(s),
        };
        let (head, tail) = tangent.split_at_mut(or.start);
        let t_in = &head[ir.clone()];
        let t_out = &mut tail[..or.end - or.start];
        match slope {
            None => kernels::matmul(
                t_out,
                t_in,
                &params[info.weight_range()],
                n,
                info.in_shape.len(),
                info.out_shape.len(),
                false,
                exec,
            ),
            Some(slope) => {
                for ((t, &ti), &a) in t_out.iter_mut().zip(t_in).zip(&acts[ir]) {
                    *t = if a > 0.0 { ti } else { slope * ti };
                }
            }
        }
    }

    // 3. Weight gradients of Σ gᵢ·vᵢ.
    tangent_backward(spec, params, acts, tangent, ones, grads, bscratch, n, exec)?;
    Ok((penalty, norm_sum / n as f32))
}

/// How the tangent passes through a layer, or `Unsupported` for a layer the exact penalty
/// gradient does not cover.
fn tangent_of(info: &LayerInfo) -> Result<Tangent, CoreError> {
    with_kind!(info.layer, |k| k.tangent()).ok_or(CoreError::Unsupported { layer: info.index })
}

/// A backward pass of the critic with `dout = 1` in which each dense layer takes its weight
/// gradient from the tangent input `ṫ_in` instead of its forward input (and biases get none);
/// the slope layers back-propagate as in [`model::backward`], with the masks of `acts`.
#[allow(clippy::too_many_arguments)]
fn tangent_backward(
    spec: &Spec<'_>, params: &[f32], acts: &[f32], tangent: &[f32], dout: &[f32],
    grads: &mut [f32], scratch: &mut [f32], n: usize, exec: &dyn Exec,
) -> Result<(), CoreError> {
    let infos = model::backward_layers(spec, spec.layers().len(), n)?;
    model::walk_back(&infos, n, spec.max_features(), dout, scratch, None, |st| {
        let (info, g_out) = (st.l, st.dout);
        match tangent_of(info)? {
            Tangent::View => {}
            Tangent::Dense => {
                let (c_in, c_out) = (info.in_shape.len(), info.out_shape.len());
                let gw = &mut grads[info.weight_range()];
                let t_in = &tangent[info.in_range(n)];
                // dW (C_in×C_out) += ṫ_inᵀ · dout
                kernels::matmul_tn(gw, t_in, g_out, c_in, n, c_out, true, exec);
                if let Some(d) = st.dinp {
                    // dinp (N×C_in) = dout · Wᵀ
                    let w = &params[info.weight_range()];
                    kernels::matmul_nt(d, g_out, w, n, c_out, c_in, false, exec);
                }
            }
            Tangent::Slope(_) => {
                let a = Backward {
                    l: info,
                    params,
                    acts,
                    dout: g_out,
                    dinp: st.dinp,
                    grads: None,
                    scratch: st.scratch,
                    n,
                    exec,
                };
                with_kind!(info.layer, |k| Kind::backward(&k, a))?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Serial;
    use crate::spec::Layer;
    use crate::spec::Shape;
    use crate::testutil::{Lcg, grad_check};
    use std::vec;

    const CRITIC: [Layer; 5] = [
        Layer::Dense { out: 6 },
        Layer::LeakyRelu { alpha: 0.2 },
        Layer::Dense { out: 5 },
        Layer::Relu,
        Layer::Dense { out: 1 },
    ];

    fn penalty_only(spec: &Spec<'_>, p: &[f32], x: &[f32], n: usize) -> f64 {
        let mut grads = vec![0.0; spec.param_len()];
        let mut s = vec![0.0; gp_scratch_len(spec, n)];
        gradient_penalty(spec, p, &mut grads, x, 10.0, &mut s, n, &Serial).unwrap().0 as f64
    }

    #[test]
    fn penalty_gradient_matches_finite_differences() {
        let n = 3;
        let spec = Spec::new(Shape::flat(4), &CRITIC).unwrap();
        let mut r = Lcg::new(21);
        let p = r.filled(spec.param_len());
        let x = r.filled(n * 4);
        let mut grads = vec![0.0; spec.param_len()];
        let mut s = vec![0.0; gp_scratch_len(&spec, n)];
        let (pen, _) =
            gradient_penalty(&spec, &p, &mut grads, &x, 10.0, &mut s, n, &Serial).unwrap();
        assert!(pen > 0.0);
        // Small steps: the penalty is piecewise smooth; they must not flip an activation.
        grad_check(&p, &grads, |pp| penalty_only(&spec, pp, &x, n), 1e-3, 2e-3);
        // Bias gradients are exactly zero for a piecewise-linear critic.
        for info in spec.iter() {
            assert!(grads[info.bias_range()].iter().all(|&g| g == 0.0));
        }
    }

    /// A linear critic D(x) = w·x + b has ‖∇D‖ = ‖w‖: the penalty is λ(‖w‖−1)² in closed form.
    #[test]
    fn golden_linear_critic() {
        let spec = Spec::new(Shape::flat(2), &[Layer::Dense { out: 1 }]).unwrap();
        // w = (3, 4): ‖w‖ = 5, P = 10·(5−1)² = 160; ∂P/∂w = 2·10·(5−1)·w/5 = 16·w.
        let p = [3.0, 4.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0];
        assert_eq!(spec.param_len(), p.len());
        let x = [0.1, -0.2, 0.7, 0.3];
        let mut grads = [0.0; 8];
        let mut s = vec![0.0; gp_scratch_len(&spec, 2)];
        let (pen, norm) =
            gradient_penalty(&spec, &p, &mut grads, &x, 10.0, &mut s, 2, &Serial).unwrap();
        assert!((pen - 160.0).abs() < 1e-3, "{pen}");
        assert!((norm - 5.0).abs() < 1e-5);
        assert!((grads[0] - 48.0).abs() < 1e-3 && (grads[1] - 64.0).abs() < 1e-3, "{grads:?}");
        assert_eq!(grads[4], 0.0);
    }

    #[test]
    fn rejects_smooth_critics_and_bad_buffers() {
        let layers = [Layer::Dense { out: 3 }, Layer::Tanh, Layer::Dense { out: 1 }];
        let spec = Spec::new(Shape::flat(2), &layers).unwrap();
        let p = vec![0.1; spec.param_len()];
        let mut g = vec![0.0; spec.param_len()];
        let mut s = vec![0.0; gp_scratch_len(&spec, 1)];
        assert_eq!(
            gradient_penalty(&spec, &p, &mut g, &[0.0, 0.0], 10.0, &mut s, 1, &Serial),
            Err(CoreError::Unsupported { layer: 1 })
        );
        let spec = Spec::new(Shape::flat(2), &CRITIC[..2]).unwrap();
        let p = vec![0.1; spec.param_len()];
        let mut g = vec![0.0; spec.param_len()];
        let mut s = vec![0.0; gp_scratch_len(&spec, 1)];
        assert!(
            gradient_penalty(&spec, &p, &mut g, &[0.0, 0.0], 10.0, &mut s, 1, &Serial).is_err()
        );
    }

    #[test]
    fn interpolation() {
        let mut out = [0.0; 4];
        interpolate(&mut out, &[1.0, 1.0, 2.0, 2.0], &[0.0, 0.0, 0.0, 4.0], &[0.25, 0.5]).unwrap();
        assert_eq!(out, [0.25, 0.25, 1.0, 3.0]);
    }
}
