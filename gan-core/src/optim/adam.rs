//! Adam ([`adam_step`]), as PyTorch's `torch.optim.Adam` with its default flags.

use serde::{Deserialize, Serialize};

use super::{finite_at_least, non_finite, unit_interval};
use crate::error::{CoreError, check_len};

/// Adam hyper-parameters.
///
/// One step with gradient `g`, step number `t` (1-based):
///
/// ```text
/// g   ← g + weight_decay·p
/// m   ← beta1·m + (1 − beta1)·g
/// v   ← beta2·v + (1 − beta2)·g²
/// m̂   = m / (1 − beta1^t)
/// v̂   = v / (1 − beta2^t)
/// p   ← p − lr·m̂ / (√v̂ + eps)
/// ```
///
/// Meaningful values: `lr > 0`, `beta1` and `beta2` in `[0, 1)`, `eps > 0`,
/// `weight_decay >= 0` (see [`AdamConfig::is_valid`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AdamConfig {
    /// Learning rate `lr`.
    pub lr: f32,
    /// Decay of the first moment `m`.
    pub beta1: f32,
    /// Decay of the second moment `v`.
    pub beta2: f32,
    /// Added to `√v̂` in the denominator, so a zero second moment does not divide by zero.
    pub eps: f32,
    /// L2 penalty `λ`: `λ·p` is added to the gradient.
    pub weight_decay: f32,
}

impl Default for AdamConfig {
    /// The DCGAN settings: `lr = 2e-4`, `beta1 = 0.5`, `beta2 = 0.999`, `eps = 1e-8`,
    /// `weight_decay = 0`.
    fn default() -> Self {
        AdamConfig { lr: 2e-4, beta1: 0.5, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

impl AdamConfig {
    /// True if every field is finite and in range: `lr >= 0`, `0 <= beta1 < 1`,
    /// `0 <= beta2 < 1`, `eps > 0`, `weight_decay >= 0`.
    ///
    /// [`adam_step`] does not check this; out-of-range values produce non-finite parameters
    /// (e.g. `beta1 = 1` makes the bias correction `1 − beta1^t` zero).
    pub fn is_valid(&self) -> bool {
        // Comparisons are written so that NaN fails them.
        finite_at_least(self.lr, 0.0)
            && unit_interval(self.beta1)
            && unit_interval(self.beta2)
            && self.eps > 0.0
            && self.eps.is_finite()
            && finite_at_least(self.weight_decay, 0.0)
    }
}

/// Bias correction `1 − beta^t` for a decay `beta` in `[0, 1)` and step `t >= 1`.
///
/// Computed as `1 − beta^t = −expm1(t·ln(beta))` with `ln(beta) = log1pf(beta − 1)`: for
/// `beta >= 0.5`, `beta − 1` is exact in f32, and `log1pf`/`expm1f` keep full relative
/// precision near zero. The direct `1 − powf(beta, t)` subtracts two nearly equal numbers in
/// the first steps with `beta = 0.999` (the rounding error of `powf`, up to ~6e-8 absolute,
/// against a result of ~1e-3·t): a relative error of order 1e-5 (7e-6 at `t = 2`), against
/// about 1e-7 here. For large `t` the two agree: `t as f32` is exact up to 2^24 and off by at
/// most 2^-24 relative above it, and by then `beta^t` has long underflowed to 0 for any
/// `beta` in practical use, so the correction is exactly 1.
fn bias_correction(beta: f32, step: u64) -> f32 {
    let t = step as f32;
    // beta = 0 gives log1pf(-1) = -inf, expm1f(-inf) = -1: correction 1, as it should be.
    -libm::expm1f(t * libm::log1pf(beta - 1.0))
}

/// One Adam step over a flat buffer (PyTorch semantics, L2 weight decay).
///
/// For every element, with `t = step`:
///
/// ```text
/// g  = grads[i] + weight_decay·p
/// m ← beta1·m + (1 − beta1)·g
/// v ← beta2·v + (1 − beta2)·g²
/// p ← p − (lr / (1 − beta1^t)) · m / (√v / √(1 − beta2^t) + eps)
/// ```
///
/// which is `p − lr·m̂/(√v̂ + eps)` rearranged as PyTorch does it. `step` is the 1-based
/// number of this step (incremented *before* the call); `m` and `v` start at zero and have
/// the same length P as `params` and `grads`.
///
/// Returns whether every updated parameter is finite (the trainer's NaN guard, checked in
/// the same pass rather than by reading the buffer again).
///
/// Errors (nothing is written): [`CoreError::BufferLen`] if `grads`, `m` or `v` differ in
/// length from `params`; [`CoreError::ZeroSize`] if `step == 0` (the bias correction would
/// divide by zero). Hyper-parameters are not validated (see [`AdamConfig::is_valid`]).
pub fn adam_step(
    params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], step: u64, cfg: &AdamConfig,
) -> Result<bool, CoreError> {
    let n = params.len();
    check_len("grads", grads.len(), n)?;
    check_len("adam_m", m.len(), n)?;
    check_len("adam_v", v.len(), n)?;
    if step == 0 {
        return Err(CoreError::ZeroSize);
    }
    let AdamConfig { lr, beta1, beta2, eps, weight_decay } = *cfg;
    let step_size = lr / bias_correction(beta1, step);
    let inv_sqrt_bc2 = 1.0 / libm::sqrtf(bias_correction(beta2, step));
    let (one_m_b1, one_m_b2) = (1.0 - beta1, 1.0 - beta2);
    let update = |p: &mut f32, g: f32, m: &mut f32, v: &mut f32, sqrt_v: fn(f32) -> f32| {
        let g = g + weight_decay * *p;
        *m = beta1 * *m + one_m_b1 * g;
        *v = beta2 * *v + one_m_b2 * (g * g);
        let denom = sqrt_v(*v) * inv_sqrt_bc2 + eps;
        *p -= step_size * *m / denom;
        non_finite(*p)
    };
    let mut bad = 0u32;
    // Shapes: params, grads, m, v all P. Four lanes at a time so the loop vectorises: the square
    // root is taken for all four lanes at once (`sqrt4`, correctly rounded like `libm::sqrtf`,
    // so the bits are those of the one-at-a-time loop).
    let mut pc = params.chunks_exact_mut(4);
    let mut gc = grads.chunks_exact(4);
    let mut mc = m.chunks_exact_mut(4);
    let mut vc = v.chunks_exact_mut(4);
    for (((p, g), m), v) in (&mut pc).zip(&mut gc).zip(&mut mc).zip(&mut vc) {
        let mut vv = [0.0f32; 4];
        for i in 0..4 {
            let gi = g[i] + weight_decay * p[i];
            m[i] = beta1 * m[i] + one_m_b1 * gi;
            v[i] = beta2 * v[i] + one_m_b2 * (gi * gi);
            vv[i] = v[i];
        }
        let sq = sqrt4(vv);
        for i in 0..4 {
            let denom = sq[i] * inv_sqrt_bc2 + eps;
            p[i] -= step_size * m[i] / denom;
            bad |= non_finite(p[i]);
        }
    }
    let rest = pc
        .into_remainder()
        .iter_mut()
        .zip(gc.remainder())
        .zip(mc.into_remainder().iter_mut().zip(vc.into_remainder()));
    for ((p, &g), (m, v)) in rest {
        bad |= update(p, g, m, v, libm::sqrtf);
    }
    Ok(bad == 0)
}

/// Square roots of four lanes, each correctly rounded (IEEE 754), so equal to `libm::sqrtf`
/// lane by lane.
#[inline(always)]
fn sqrt4(x: [f32; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_loadu_ps, _mm_sqrt_ps, _mm_storeu_ps};
        let mut out = [0.0f32; 4];
        // SAFETY: SSE is part of the x86-64 baseline; both pointers are valid for 4 floats.
        #[allow(unused_unsafe)]
        unsafe {
            _mm_storeu_ps(out.as_mut_ptr(), _mm_sqrt_ps(_mm_loadu_ps(x.as_ptr())));
        }
        out
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        x.map(libm::sqrtf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Lcg, close};
    use std::vec;
    use std::vec::Vec;

    /// The four-lane loop gives exactly the bits of the plain one-element-at-a-time update,
    /// including the tail that does not fill a chunk.
    #[test]
    fn adam_lanes_match_the_scalar_update_bit_for_bit() {
        let cfg = AdamConfig { weight_decay: 0.01, ..AdamConfig::default() };
        let n = 37;
        let mut r = crate::testutil::Lcg::new(17);
        let mut p = [0.0f32; 37];
        r.fill(&mut p);
        let mut g = [0.0f32; 37];
        r.fill(&mut g);
        let (mut m, mut v) = ([0.0f32; 37], [0.0f32; 37]);
        let (mut p2, mut m2, mut v2) = (p, m, v);
        for step in 1..=3 {
            adam_step(&mut p, &g, &mut m, &mut v, step, &cfg).unwrap();
            let step_size = cfg.lr / bias_correction(cfg.beta1, step);
            let inv = 1.0 / libm::sqrtf(bias_correction(cfg.beta2, step));
            for i in 0..n {
                let gi = g[i] + cfg.weight_decay * p2[i];
                m2[i] = cfg.beta1 * m2[i] + (1.0 - cfg.beta1) * gi;
                v2[i] = cfg.beta2 * v2[i] + (1.0 - cfg.beta2) * (gi * gi);
                p2[i] -= step_size * m2[i] / (libm::sqrtf(v2[i]) * inv + cfg.eps);
            }
        }
        assert_eq!(p.map(f32::to_bits), p2.map(f32::to_bits));
        assert_eq!(v.map(f32::to_bits), v2.map(f32::to_bits));
    }

    /// Straightforward f64 Adam, written from the textbook form (`m̂`, `v̂`), as the reference.
    fn adam_reference(
        p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], t: u64, c: &AdamConfig,
    ) {
        let (b1, b2) = (c.beta1 as f64, c.beta2 as f64);
        for i in 0..p.len() {
            let gi = g[i] + c.weight_decay as f64 * p[i];
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let mh = m[i] / (1.0 - b1.powi(t as i32));
            let vh = v[i] / (1.0 - b2.powi(t as i32));
            p[i] -= c.lr as f64 * mh / (vh.sqrt() + c.eps as f64);
        }
    }

    const HAND: AdamConfig =
        AdamConfig { lr: 0.1, beta1: 0.5, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };

    #[test]
    fn adam_one_step_by_hand() {
        // p = 1, g = 0.5, lr = 0.1, beta1 = 0.5, beta2 = 0.999, t = 1:
        //   m = 0.5·0 + 0.5·0.5           = 0.25
        //   v = 0.999·0 + 0.001·0.25      = 0.00025
        //   m̂ = 0.25 / (1 − 0.5)          = 0.5
        //   v̂ = 0.00025 / (1 − 0.999)     = 0.25,  √v̂ = 0.5
        //   p = 1 − 0.1·0.5/(0.5 + 1e-8)  = 0.900000002
        let (mut p, mut m, mut v) = ([1.0f32], [0.0f32], [0.0f32]);
        adam_step(&mut p, &[0.5], &mut m, &mut v, 1, &HAND).unwrap();
        assert_eq!(m[0], 0.25);
        // (1 − 0.999) in f32 is 0.001 only to ~5e-5 relative.
        assert!(close(v[0], 0.00025, 2e-8), "v {}", v[0]);
        assert!(close(p[0], 0.900000002, 1e-6), "p {}", p[0]);
    }

    #[test]
    fn adam_three_steps_by_hand() {
        // Continuing from the step above with g = 0.1 at t = 2, then g = −0.4 at t = 3.
        // t = 2:
        //   m = 0.5·0.25 + 0.5·0.1                = 0.175
        //   v = 0.999·0.00025 + 0.001·0.01        = 0.00025975
        //   m̂ = 0.175 / (1 − 0.25)                = 0.233333…
        //   v̂ = 0.00025975 / (1 − 0.998001)       = 0.129939970,  √v̂ = 0.360471871
        //   p = 0.900000002 − 0.1·0.233333/0.360471871 = 0.835270034
        // t = 3:
        //   m = 0.5·0.175 + 0.5·(−0.4)            = −0.1125
        //   v = 0.999·0.00025975 + 0.001·0.16     = 0.00041949025
        //   m̂ = −0.1125 / (1 − 0.125)             = −0.128571429
        //   v̂ = 0.00041949025 / (1 − 0.997002999) = 0.139970007,  √v̂ = 0.374125656
        //   p = 0.835270034 + 0.1·0.128571429/0.374125656 = 0.869635874
        let (mut p, mut m, mut v) = ([1.0f32], [0.0f32], [0.0f32]);
        let expect_p = [0.900000002, 0.835270034, 0.869635874];
        let expect_m = [0.25, 0.175, -0.1125];
        for (t, g) in [0.5f32, 0.1, -0.4].into_iter().enumerate() {
            adam_step(&mut p, &[g], &mut m, &mut v, t as u64 + 1, &HAND).unwrap();
            assert!(close(m[0], expect_m[t], 1e-7), "t {} m {}", t + 1, m[0]);
            assert!(close(p[0], expect_p[t], 1e-6), "t {} p {}", t + 1, p[0]);
        }
        assert!(close(v[0], 0.00041949025, 1e-7 * 0.00041949025 + 2e-8));
    }

    #[test]
    fn adam_matches_f64_reference_over_many_steps() {
        let mut rng = Lcg::new(11);
        let cfg = AdamConfig { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        const P: usize = 37;
        let mut p: [f32; P] = rng.vec();
        let (mut m, mut v) = ([0.0f32; P], [0.0f32; P]);
        let mut pr: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let (mut mr, mut vr) = (vec![0.0f64; P], vec![0.0f64; P]);
        for t in 1..=50u64 {
            let g: [f32; P] = rng.vec();
            let gr: Vec<f64> = g.iter().map(|&x| x as f64).collect();
            adam_step(&mut p, &g, &mut m, &mut v, t, &cfg).unwrap();
            adam_reference(&mut pr, &gr, &mut mr, &mut vr, t, &cfg);
        }
        for (a, b) in p.iter().zip(&pr) {
            assert!(close(*a, *b, 1e-5), "{a} vs {b}");
        }
    }

    #[test]
    fn adam_converges_on_a_quadratic() {
        // f(p) = ½ Σ a_i (p_i − c_i)², gradient a_i (p_i − c_i); minimum at p = c.
        const P: usize = 9;
        let a: [f32; P] = core::array::from_fn(|i| 0.5 + i as f32);
        let c: [f32; P] = core::array::from_fn(|i| i as f32 * 0.3 - 1.0);
        let mut p = [2.0f32; P];
        let (mut m, mut v, mut g) = ([0.0f32; P], [0.0f32; P], [0.0f32; P]);
        let cfg = AdamConfig { lr: 0.01, beta1: 0.9, ..AdamConfig::default() };
        for t in 1..=3000 {
            for (((g, &p), &a), &c) in g.iter_mut().zip(&p).zip(&a).zip(&c) {
                *g = a * (p - c);
            }
            adam_step(&mut p, &g, &mut m, &mut v, t, &cfg).unwrap();
        }
        for (p, c) in p.iter().zip(&c) {
            assert!((p - c).abs() < 1e-2, "{p} vs {c}");
        }
    }

    #[test]
    fn adam_weight_decay_is_l2_on_the_gradient() {
        // p = 2, g = 0.5, λ = 0.1: the effective gradient is 0.5 + 0.1·2 = 0.7, so one step
        // equals a step without decay and gradient 0.7.
        let wd = AdamConfig { weight_decay: 0.1, ..HAND };
        let (mut p1, mut m1, mut v1) = ([2.0f32, -3.0], [0.0f32; 2], [0.0f32; 2]);
        let (mut p2, mut m2, mut v2) = (p1, [0.0f32; 2], [0.0f32; 2]);
        adam_step(&mut p1, &[0.5, 0.2], &mut m1, &mut v1, 1, &wd).unwrap();
        let g2 = [0.5 + 0.1f32 * 2.0, 0.2 + 0.1f32 * -3.0];
        adam_step(&mut p2, &g2, &mut m2, &mut v2, 1, &HAND).unwrap();
        assert_eq!(m1, m2);
        assert_eq!(p1, p2);
        // Second step at p = 1.9 with g = 0: the decay alone, 0.1·1.9 = 0.19, drives it.
        //   m = 0.5·0.35 + 0.5·0.19 = 0.27,  m̂ = 0.36
        //   v = 0.999·0.00049 + 0.001·0.0361 = 0.00052561,  v̂ = 0.262936,  √v̂ = 0.512773
        //   p = 1.9 − 0.1·0.36/0.512773 = 1.829794
        adam_step(&mut p1, &[0.0, 0.0], &mut m1, &mut v1, 2, &wd).unwrap();
        assert!(close(m1[0], 0.27, 1e-7), "m {}", m1[0]);
        assert!(close(p1[0], 1.829794, 2e-6), "p {}", p1[0]);
    }

    #[test]
    fn adam_errors_leave_buffers_untouched() {
        let mut p = [1.0f32; 4];
        let (mut m, mut v) = ([0.0f32; 4], [0.0f32; 4]);
        let g = [1.0f32; 4];
        let c = AdamConfig::default();
        assert_eq!(
            adam_step(&mut p, &g[..3], &mut m, &mut v, 1, &c),
            Err(CoreError::BufferLen { what: "grads", expected: 4, got: 3 })
        );
        assert!(matches!(
            adam_step(&mut p, &g, &mut m[..3], &mut v, 1, &c),
            Err(CoreError::BufferLen { what: "adam_m", .. })
        ));
        assert!(matches!(
            adam_step(&mut p, &g, &mut m, &mut [0.0; 5], 1, &c),
            Err(CoreError::BufferLen { what: "adam_v", .. })
        ));
        assert_eq!(adam_step(&mut p, &g, &mut m, &mut v, 0, &c), Err(CoreError::ZeroSize));
        assert_eq!((p, m, v), ([1.0; 4], [0.0; 4], [0.0; 4]));
        // Empty buffers are fine.
        assert_eq!(adam_step(&mut [], &[], &mut [], &mut [], 1, &c), Ok(true));
    }

    #[test]
    fn bias_correction_is_accurate() {
        for beta in [0.0f32, 0.5, 0.9, 0.99, 0.999, 0.9999] {
            for t in [1u64, 2, 3, 10, 100, 1000, 12345, 1 << 20, 1 << 40, u64::MAX] {
                let b = beta as f64;
                let exact = if t > 1 << 30 {
                    1.0 - (t as f64 * b.ln()).exp()
                } else {
                    1.0 - b.powi(t as i32)
                };
                let got = bias_correction(beta, t) as f64;
                assert!((got - exact).abs() <= 1e-6 * exact, "beta {beta} t {t}: {got} vs {exact}");
            }
        }
    }
}
