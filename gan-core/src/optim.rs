//! Optimizers over one flat parameter buffer: Adam and SGD with momentum.
//!
//! Every optimizer is a single pass over `params` (length P) and `grads` (length P). Optimizer
//! state (Adam's moments, SGD's momentum buffer) lives in buffers the caller owns, each of
//! length P, so the trainer can checkpoint it and nothing here allocates.
//!
//! The update rules follow PyTorch's `torch.optim.Adam` and `torch.optim.SGD` (default
//! flags: no AMSGrad, no Nesterov, no dampening). Weight decay is the classic L2 form: it is
//! added to the gradient (`g ← g + λ·p`) before the update, not decoupled as in AdamW.
//!
//! The inner loops zip the buffers together with no indexing, and the per-step scalars (bias
//! corrections, step size) are computed once outside them, so LLVM vectorises the SGD,
//! [`sum_squares`] and [`all_finite`] loops. Adam's loop runs four lanes at a time with a
//! four-lane square root that is correctly rounded like `libm::sqrtf` (`sqrt4`), so it
//! vectorises too and keeps the one-at-a-time bits. [`Optimizer::step_with`] splits a step over
//! threads; the update is element-wise, so that never changes a bit.

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, check_len};
use crate::kernels::Exec;
#[cfg(target_has_atomic = "8")]
use crate::kernels::split::{MAX_TASKS, OutPtr, split_ranges};

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
        AdamConfig {
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
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

/// SGD hyper-parameters.
///
/// One step with gradient `g`:
///
/// ```text
/// g   ← g + weight_decay·p
/// buf ← momentum·buf + g        (only when momentum ≠ 0; buf starts at zero)
/// p   ← p − lr·buf              (p ← p − lr·g when momentum = 0)
/// ```
///
/// A zero-initialised buffer reproduces PyTorch's first step, which sets `buf = g`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SgdConfig {
    /// Learning rate `lr`.
    pub lr: f32,
    /// Momentum factor `μ`; `0` disables the momentum buffer.
    pub momentum: f32,
    /// L2 penalty `λ`: `λ·p` is added to the gradient.
    pub weight_decay: f32,
}

impl Default for SgdConfig {
    /// `lr = 1e-2`, `momentum = 0`, `weight_decay = 0`.
    fn default() -> Self {
        SgdConfig {
            lr: 1e-2,
            momentum: 0.0,
            weight_decay: 0.0,
        }
    }
}

impl SgdConfig {
    /// True if every field is finite and in range: `lr >= 0`, `0 <= momentum < 1`,
    /// `weight_decay >= 0`. [`sgd_step`] does not check this.
    pub fn is_valid(&self) -> bool {
        finite_at_least(self.lr, 0.0)
            && unit_interval(self.momentum)
            && finite_at_least(self.weight_decay, 0.0)
    }
}

/// `x` finite and `>= lo` (false for NaN).
fn finite_at_least(x: f32, lo: f32) -> bool {
    x >= lo && x.is_finite()
}

/// `0 <= x < 1` (false for NaN).
fn unit_interval(x: f32) -> bool {
    (0.0..1.0).contains(&x)
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
/// Errors (nothing is written): [`CoreError::BufferLen`] if `grads`, `m` or `v` differ in
/// length from `params`; [`CoreError::ZeroSize`] if `step == 0` (the bias correction would
/// divide by zero). Hyper-parameters are not validated (see [`AdamConfig::is_valid`]).
pub fn adam_step(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    step: u64,
    cfg: &AdamConfig,
) -> Result<(), CoreError> {
    let n = params.len();
    check_len("grads", grads.len(), n)?;
    check_len("adam_m", m.len(), n)?;
    check_len("adam_v", v.len(), n)?;
    if step == 0 {
        return Err(CoreError::ZeroSize);
    }
    let AdamConfig {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
    } = *cfg;
    let step_size = lr / bias_correction(beta1, step);
    let inv_sqrt_bc2 = 1.0 / libm::sqrtf(bias_correction(beta2, step));
    let (one_m_b1, one_m_b2) = (1.0 - beta1, 1.0 - beta2);
    let update = |p: &mut f32, g: f32, m: &mut f32, v: &mut f32, sqrt_v: fn(f32) -> f32| {
        let g = g + weight_decay * *p;
        *m = beta1 * *m + one_m_b1 * g;
        *v = beta2 * *v + one_m_b2 * (g * g);
        let denom = sqrt_v(*v) * inv_sqrt_bc2 + eps;
        *p -= step_size * *m / denom;
    };
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
        }
    }
    let rest = pc
        .into_remainder()
        .iter_mut()
        .zip(gc.remainder())
        .zip(mc.into_remainder().iter_mut().zip(vc.into_remainder()));
    for ((p, &g), (m, v)) in rest {
        update(p, g, m, v, libm::sqrtf);
    }
    Ok(())
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

/// One SGD step over a flat buffer, with optional momentum (PyTorch semantics, no dampening,
/// no Nesterov, L2 weight decay).
///
/// For every element:
///
/// ```text
/// g    = grads[i] + weight_decay·p
/// buf ← momentum·buf + g          (momentum ≠ 0)
/// p   ← p − lr·buf                (momentum ≠ 0)
/// p   ← p − lr·g                  (momentum = 0)
/// ```
///
/// With `momentum ≠ 0`, `momentum_buf` has length P (the length of `params`) and starts at
/// zero. With `momentum = 0` it is neither read nor written, and may be empty (length 0) or
/// length P.
///
/// Errors (nothing is written): [`CoreError::BufferLen`] if `grads` or `momentum_buf` has the
/// wrong length.
pub fn sgd_step(
    params: &mut [f32],
    grads: &[f32],
    momentum_buf: &mut [f32],
    cfg: &SgdConfig,
) -> Result<(), CoreError> {
    let n = params.len();
    check_len("grads", grads.len(), n)?;
    let SgdConfig {
        lr,
        momentum,
        weight_decay,
    } = *cfg;
    if momentum == 0.0 {
        if !momentum_buf.is_empty() {
            check_len("sgd_momentum", momentum_buf.len(), n)?;
        }
        // Shapes: params, grads P.
        for (p, &g) in params.iter_mut().zip(grads) {
            let g = g + weight_decay * *p;
            *p -= lr * g;
        }
    } else {
        check_len("sgd_momentum", momentum_buf.len(), n)?;
        // Shapes: params, grads, momentum_buf P.
        for ((p, &g), b) in params.iter_mut().zip(grads).zip(momentum_buf) {
            let g = g + weight_decay * *p;
            *b = momentum * *b + g;
            *p -= lr * *b;
        }
    }
    Ok(())
}

/// An optimizer choice with its hyper-parameters, as stored in training configs and
/// checkpoints.
///
/// State layout for [`Optimizer::step`], with P = number of parameters:
/// - `Adam`: `state = [m (P) | v (P)]`, length 2·P;
/// - `Sgd` with `momentum ≠ 0`: `state = [buf (P)]`, length P;
/// - `Sgd` with `momentum = 0`: no state, length 0.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Optimizer {
    /// Adam, see [`adam_step`].
    Adam(AdamConfig),
    /// SGD with optional momentum, see [`sgd_step`].
    Sgd(SgdConfig),
}

impl Default for Optimizer {
    /// Adam with [`AdamConfig::default`] (the DCGAN settings).
    fn default() -> Self {
        Optimizer::Adam(AdamConfig::default())
    }
}

impl Optimizer {
    /// Number of state buffers, each as long as the parameter buffer: Adam 2 (`m`, `v`),
    /// SGD 1 if `momentum ≠ 0`, else 0. The state length is `state_buffers() · P`.
    pub fn state_buffers(&self) -> usize {
        match self {
            Optimizer::Adam(_) => 2,
            Optimizer::Sgd(c) if c.momentum != 0.0 => 1,
            Optimizer::Sgd(_) => 0,
        }
    }

    /// Length of the state buffer for `n_params` parameters: `state_buffers() · n_params`
    /// (saturating).
    pub fn state_len(&self, n_params: usize) -> usize {
        self.state_buffers().saturating_mul(n_params)
    }

    /// One optimizer step. `state` is `state_buffers() · P` long (for Adam, `m` then `v`) and
    /// starts at zero; `step` is the 1-based number of this step (used by Adam's bias
    /// correction, ignored by SGD).
    ///
    /// Errors: [`CoreError::BufferLen`] if `grads` or `state` has the wrong length, and the
    /// errors of [`adam_step`] / [`sgd_step`]. Nothing is written on error.
    pub fn step(
        &self,
        params: &mut [f32],
        grads: &[f32],
        state: &mut [f32],
        step: u64,
    ) -> Result<(), CoreError> {
        let n = params.len();
        check_len("grads", grads.len(), n)?;
        check_len("optimizer_state", state.len(), self.state_len(n))?;
        match self {
            Optimizer::Adam(cfg) => {
                let (m, v) = state.split_at_mut(n);
                adam_step(params, grads, m, v, step, cfg)
            }
            Optimizer::Sgd(cfg) => sgd_step(params, grads, state, cfg),
        }
    }

    /// [`Optimizer::step`] split over the tasks of `exec` in ranges of at least
    /// [`STEP_CHUNK`] parameters. The update is element-wise, so the result is bit-identical to
    /// [`Optimizer::step`] for every `exec`. Nothing is written on error.
    pub fn step_with(
        &self,
        params: &mut [f32],
        grads: &[f32],
        state: &mut [f32],
        step: u64,
        exec: &dyn Exec,
    ) -> Result<(), CoreError> {
        #[cfg(target_has_atomic = "8")]
        if exec.threads() > 1 && params.len() > STEP_CHUNK {
            let n = params.len();
            check_len("grads", grads.len(), n)?;
            check_len("optimizer_state", state.len(), self.state_len(n))?;
            if matches!(self, Optimizer::Adam(_)) && step == 0 {
                return Err(CoreError::ZeroSize);
            }
            let chunk = STEP_CHUNK.max(n.div_ceil(MAX_TASKS)).next_multiple_of(4);
            let with_state = !state.is_empty();
            let (p, st) = (OutPtr::new(params), OutPtr::new(state));
            split_ranges(exec, n, chunk, &|a, b| {
                // SAFETY: `split_ranges` hands out disjoint ranges `a..b` of `0..n`, each once;
                // `params` (n) and `state` (0, n or 2n: the buffers at offsets 0 and n) are
                // borrowed mutably until it returns, so each task owns its ranges of them.
                let p = unsafe { p.range(a, b) };
                let m: &mut [f32] = if with_state {
                    // SAFETY: as above (the first state buffer's range of this task).
                    unsafe { st.range(a, b) }
                } else {
                    &mut []
                };
                let g = &grads[a..b];
                // The lengths were checked above and `step` is valid: these cannot fail.
                let _ = match self {
                    Optimizer::Adam(cfg) => {
                        // SAFETY: as above, the second moment's range of the same task.
                        let v = unsafe { st.range(n + a, n + b) };
                        adam_step(p, g, m, v, step, cfg)
                    }
                    Optimizer::Sgd(cfg) => sgd_step(p, g, m, cfg),
                };
            });
            return Ok(());
        }
        let _ = exec;
        self.step(params, grads, state, step)
    }

    /// The learning rate `lr` of the chosen optimizer.
    pub fn lr(&self) -> f32 {
        match self {
            Optimizer::Adam(c) => c.lr,
            Optimizer::Sgd(c) => c.lr,
        }
    }

    /// True if the hyper-parameters are in range ([`AdamConfig::is_valid`],
    /// [`SgdConfig::is_valid`]).
    pub fn is_valid(&self) -> bool {
        match self {
            Optimizer::Adam(c) => c.is_valid(),
            Optimizer::Sgd(c) => c.is_valid(),
        }
    }
}

/// Smallest range of parameters one task of [`Optimizer::step_with`] updates.
pub const STEP_CHUNK: usize = 1 << 15;

/// Elements summed per block by [`sum_squares`].
const SUM_BLOCK: usize = 1024;
/// Independent accumulators inside a block (one SIMD register of f32 on AVX).
const SUM_LANES: usize = 8;

/// Sum of squares `Σ x_i²`, accumulated in f32; for gradient-norm logging
/// (`‖g‖₂ = √sum_squares(g)`).
///
/// Order of summation (fixed, the same on every target): `x` is cut into blocks of 1024
/// elements; inside a block, element `j` is added to lane `j mod 8` of eight accumulators, the
/// lanes are then added left to right, and the block sums are added to the total in order.
/// The independent lanes let LLVM vectorise without reassociating, and the blocks keep each
/// running sum short, so the rounding error grows with the number of blocks rather than the
/// number of elements. Returns 0 for an empty slice; `inf` on overflow, NaN if any element
/// is NaN.
pub fn sum_squares(x: &[f32]) -> f32 {
    let mut total = 0.0f32;
    for block in x.chunks(SUM_BLOCK) {
        let mut lanes = [0.0f32; SUM_LANES];
        let mut chunks = block.chunks_exact(SUM_LANES);
        for c in &mut chunks {
            for (acc, &v) in lanes.iter_mut().zip(c) {
                *acc += v * v;
            }
        }
        for (acc, &v) in lanes.iter_mut().zip(chunks.remainder()) {
            *acc += v * v;
        }
        total += lanes.iter().fold(0.0f32, |s, &l| s + l);
    }
    total
}

/// Elements checked per block by [`all_finite`] before deciding whether to stop early.
const FINITE_BLOCK: usize = 256;
/// The f32 exponent field; all ones means `±inf` or NaN.
const EXP_MASK: u32 = 0x7f80_0000;

/// True if every value is finite (no NaN, no `±inf`); true for an empty slice. A NaN guard
/// for losses, gradients and parameters.
///
/// A value `x` is non-finite exactly when its exponent bits are all ones:
/// `bits(x) & 0x7f80_0000 == 0x7f80_0000`. The check ORs that test over blocks of 256
/// elements (branch-free, so it vectorises) and stops at the first block with a hit.
pub fn all_finite(x: &[f32]) -> bool {
    x.chunks(FINITE_BLOCK).all(|block| {
        let bad = block.iter().fold(0u32, |acc, v| {
            acc | u32::from(v.to_bits() & EXP_MASK == EXP_MASK)
        });
        bad == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The four-lane loop gives exactly the bits of the plain one-element-at-a-time update,
    /// including the tail that does not fill a chunk.
    #[test]
    fn adam_lanes_match_the_scalar_update_bit_for_bit() {
        let cfg = AdamConfig {
            weight_decay: 0.01,
            ..AdamConfig::default()
        };
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
    use crate::testutil::Lcg;
    use std::vec;
    use std::vec::Vec;

    fn close(a: f32, b: f64, tol: f64) -> bool {
        (a as f64 - b).abs() <= tol
    }

    /// Straightforward f64 Adam, written from the textbook form (`m̂`, `v̂`), as the reference.
    fn adam_reference(
        p: &mut [f64],
        g: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        t: u64,
        c: &AdamConfig,
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

    const HAND: AdamConfig = AdamConfig {
        lr: 0.1,
        beta1: 0.5,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };

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
        let cfg = AdamConfig {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
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
        let cfg = AdamConfig {
            lr: 0.01,
            beta1: 0.9,
            ..AdamConfig::default()
        };
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
        let wd = AdamConfig {
            weight_decay: 0.1,
            ..HAND
        };
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
            Err(CoreError::BufferLen {
                what: "grads",
                expected: 4,
                got: 3
            })
        );
        assert!(matches!(
            adam_step(&mut p, &g, &mut m[..3], &mut v, 1, &c),
            Err(CoreError::BufferLen { what: "adam_m", .. })
        ));
        assert!(matches!(
            adam_step(&mut p, &g, &mut m, &mut [0.0; 5], 1, &c),
            Err(CoreError::BufferLen { what: "adam_v", .. })
        ));
        assert_eq!(
            adam_step(&mut p, &g, &mut m, &mut v, 0, &c),
            Err(CoreError::ZeroSize)
        );
        assert_eq!((p, m, v), ([1.0; 4], [0.0; 4], [0.0; 4]));
        // Empty buffers are fine.
        assert_eq!(adam_step(&mut [], &[], &mut [], &mut [], 1, &c), Ok(()));
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
                assert!(
                    (got - exact).abs() <= 1e-6 * exact,
                    "beta {beta} t {t}: {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn sgd_without_momentum_by_hand() {
        // p = 1, g = 0.5, lr = 0.1: p = 1 − 0.05 = 0.95; then g = −0.2: p = 0.95 + 0.02 = 0.97.
        let c = SgdConfig {
            lr: 0.1,
            ..SgdConfig::default()
        };
        let mut p = [1.0f32];
        sgd_step(&mut p, &[0.5], &mut [], &c).unwrap();
        assert!(close(p[0], 0.95, 1e-7));
        // A full-length buffer is accepted and left alone.
        let mut buf = [7.0f32];
        sgd_step(&mut p, &[-0.2], &mut buf, &c).unwrap();
        assert!(close(p[0], 0.97, 1e-7));
        assert_eq!(buf, [7.0]);
    }

    #[test]
    fn sgd_with_momentum_by_hand() {
        // lr = 0.1, μ = 0.9, p = 1:
        //   g = 0.5:  buf = 0.9·0 + 0.5    = 0.5,   p = 1 − 0.05      = 0.95
        //   g = 0.3:  buf = 0.9·0.5 + 0.3  = 0.75,  p = 0.95 − 0.075  = 0.875
        //   g = −1:   buf = 0.9·0.75 − 1   = −0.325, p = 0.875 + 0.0325 = 0.9075
        let c = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        };
        let (mut p, mut buf) = ([1.0f32], [0.0f32]);
        for (g, eb, ep) in [(0.5, 0.5, 0.95), (0.3, 0.75, 0.875), (-1.0, -0.325, 0.9075)] {
            sgd_step(&mut p, &[g], &mut buf, &c).unwrap();
            assert!(close(buf[0], eb, 1e-7), "buf {}", buf[0]);
            assert!(close(p[0], ep, 1e-7), "p {}", p[0]);
        }
    }

    #[test]
    fn sgd_weight_decay_by_hand() {
        // p = 2, g = 0.5, λ = 0.1, lr = 0.1: g' = 0.5 + 0.2 = 0.7, p = 2 − 0.07 = 1.93.
        // With μ = 0.5 the next step (g = 0, p = 1.93): g' = 0.193, buf = 0.35 + 0.193 = 0.543,
        // p = 1.93 − 0.0543 = 1.8757.
        let mut c = SgdConfig {
            lr: 0.1,
            momentum: 0.0,
            weight_decay: 0.1,
        };
        let mut p = [2.0f32];
        sgd_step(&mut p, &[0.5], &mut [], &c).unwrap();
        assert!(close(p[0], 1.93, 1e-7));
        c.momentum = 0.5;
        let (mut p, mut buf) = ([2.0f32], [0.0f32]);
        sgd_step(&mut p, &[0.5], &mut buf, &c).unwrap();
        assert!(close(p[0], 1.93, 1e-7));
        sgd_step(&mut p, &[0.0], &mut buf, &c).unwrap();
        assert!(close(buf[0], 0.543, 1e-7), "buf {}", buf[0]);
        assert!(close(p[0], 1.8757, 1e-6), "p {}", p[0]);
    }

    #[test]
    fn sgd_errors() {
        let mut p = [1.0f32; 3];
        let plain = SgdConfig::default();
        let mom = SgdConfig {
            momentum: 0.9,
            ..plain
        };
        assert!(matches!(
            sgd_step(&mut p, &[0.0; 2], &mut [], &plain),
            Err(CoreError::BufferLen { what: "grads", .. })
        ));
        assert_eq!(
            sgd_step(&mut p, &[1.0; 3], &mut [], &mom),
            Err(CoreError::BufferLen {
                what: "sgd_momentum",
                expected: 3,
                got: 0
            })
        );
        assert!(matches!(
            sgd_step(&mut p, &[1.0; 3], &mut [0.0; 2], &plain),
            Err(CoreError::BufferLen {
                what: "sgd_momentum",
                ..
            })
        ));
        assert_eq!(p, [1.0; 3]);
    }

    #[test]
    fn optimizer_step_equals_direct_calls() {
        const P: usize = 13;
        let mut rng = Lcg::new(5);
        let init: [f32; P] = rng.vec();
        let grads: [[f32; P]; 3] = [rng.vec(), rng.vec(), rng.vec()];

        let adam = AdamConfig {
            weight_decay: 0.01,
            ..AdamConfig::default()
        };
        let opt = Optimizer::Adam(adam);
        assert_eq!(opt.state_buffers(), 2);
        let (mut p1, mut state) = (init, [0.0f32; 2 * P]);
        let (mut p2, mut m, mut v) = (init, [0.0f32; P], [0.0f32; P]);
        for (t, g) in grads.iter().enumerate() {
            let t = t as u64 + 1;
            opt.step(&mut p1, g, &mut state, t).unwrap();
            adam_step(&mut p2, g, &mut m, &mut v, t, &adam).unwrap();
        }
        assert_eq!(p1, p2);
        assert_eq!(state[..P], m);
        assert_eq!(state[P..], v);
        assert_eq!(opt.lr(), 2e-4);

        for momentum in [0.0f32, 0.9] {
            let sgd = SgdConfig {
                lr: 0.05,
                momentum,
                weight_decay: 0.001,
            };
            let opt = Optimizer::Sgd(sgd);
            let k = opt.state_buffers();
            assert_eq!(k, usize::from(momentum != 0.0));
            let (mut p1, mut state) = (init, vec![0.0f32; k * P]);
            let (mut p2, mut buf) = (init, vec![0.0f32; k * P]);
            for (t, g) in grads.iter().enumerate() {
                opt.step(&mut p1, g, &mut state, t as u64 + 1).unwrap();
                sgd_step(&mut p2, g, &mut buf, &sgd).unwrap();
            }
            assert_eq!(p1, p2);
            assert_eq!(state, buf);
            assert_eq!(opt.lr(), 0.05);
        }
    }

    /// Split over tasks (here by an executor that runs every task twice, in reverse), a step
    /// gives the bits of the one-task step, for every optimizer.
    #[test]
    fn split_steps_are_bit_identical() {
        struct Twice;
        impl Exec for Twice {
            fn threads(&self) -> usize {
                3
            }
            fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
                for t in (0..tasks).rev().chain(0..tasks) {
                    f(t);
                }
            }
        }
        let n = 3 * STEP_CHUNK + 7;
        let mut r = Lcg::new(17);
        let params: Vec<f32> = (0..n).map(|_| r.next_f32()).collect();
        let grads: Vec<f32> = (0..n).map(|_| r.next_f32()).collect();
        let sgd = |momentum| {
            Optimizer::Sgd(SgdConfig {
                lr: 0.01,
                momentum,
                weight_decay: 1e-4,
            })
        };
        for opt in [Optimizer::default(), sgd(0.9), sgd(0.0)] {
            let (mut p1, mut p2) = (params.clone(), params.clone());
            let mut s1 = vec![0.0; opt.state_len(n)];
            let mut s2 = s1.clone();
            for step in 1..=3 {
                opt.step(&mut p1, &grads, &mut s1, step).unwrap();
                opt.step_with(&mut p2, &grads, &mut s2, step, &Twice)
                    .unwrap();
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&p1), bits(&p2), "{opt:?}");
            assert_eq!(bits(&s1), bits(&s2), "{opt:?}");
            // Errors leave everything untouched, as in one task.
            let before = p2.clone();
            assert!(
                opt.step_with(&mut p2, &grads[1..], &mut s2, 4, &Twice)
                    .is_err()
            );
            assert_eq!(bits(&p2), bits(&before));
        }
    }

    #[test]
    fn optimizer_state_length_errors() {
        let mut p = [0.5f32; 4];
        let g = [1.0f32; 4];
        let adam = Optimizer::default();
        assert_eq!(adam.state_len(4), 8);
        assert_eq!(
            adam.step(&mut p, &g, &mut [0.0; 4], 1),
            Err(CoreError::BufferLen {
                what: "optimizer_state",
                expected: 8,
                got: 4
            })
        );
        assert!(matches!(
            adam.step(&mut p, &g[..2], &mut [0.0; 8], 1),
            Err(CoreError::BufferLen { what: "grads", .. })
        ));
        assert_eq!(
            adam.step(&mut p, &g, &mut [0.0; 8], 0),
            Err(CoreError::ZeroSize)
        );
        let plain = Optimizer::Sgd(SgdConfig::default());
        assert!(matches!(
            plain.step(&mut p, &g, &mut [0.0; 4], 1),
            Err(CoreError::BufferLen {
                what: "optimizer_state",
                expected: 0,
                got: 4
            })
        ));
        let mom = Optimizer::Sgd(SgdConfig {
            momentum: 0.9,
            ..SgdConfig::default()
        });
        assert!(matches!(
            mom.step(&mut p, &g, &mut [], 1),
            Err(CoreError::BufferLen {
                what: "optimizer_state",
                expected: 4,
                got: 0
            })
        ));
        assert_eq!(p, [0.5; 4]);
    }

    #[test]
    fn defaults_validity_and_serde() {
        let a = AdamConfig::default();
        assert_eq!(
            (a.lr, a.beta1, a.beta2, a.eps, a.weight_decay),
            (2e-4, 0.5, 0.999, 1e-8, 0.0)
        );
        let s = SgdConfig::default();
        assert_eq!((s.lr, s.momentum, s.weight_decay), (1e-2, 0.0, 0.0));
        assert!(a.is_valid() && s.is_valid() && Optimizer::default().is_valid());
        assert!(!AdamConfig { beta1: 1.0, ..a }.is_valid());
        assert!(!AdamConfig { eps: 0.0, ..a }.is_valid());
        assert!(!AdamConfig { lr: f32::NAN, ..a }.is_valid());
        assert!(
            !SgdConfig {
                momentum: -0.1,
                ..s
            }
            .is_valid()
        );
        assert!(
            !Optimizer::Sgd(SgdConfig {
                lr: f32::INFINITY,
                ..s
            })
            .is_valid()
        );
        for opt in [
            Optimizer::Adam(a),
            Optimizer::Sgd(SgdConfig { momentum: 0.9, ..s }),
        ] {
            let bytes = postcard::to_stdvec(&opt).unwrap();
            assert_eq!(postcard::from_bytes::<Optimizer>(&bytes).unwrap(), opt);
        }
    }

    #[test]
    fn sum_squares_matches_f64() {
        let mut rng = Lcg::new(3);
        assert_eq!(sum_squares(&[]), 0.0);
        assert_eq!(sum_squares(&[3.0]), 9.0);
        assert_eq!(
            sum_squares(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]),
            285.0
        );
        for n in [7usize, 8, 9, 1023, 1024, 1025, 5000, 100_003] {
            let mut x = vec![0.0f32; n];
            rng.fill(&mut x);
            let exact: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
            let got = sum_squares(&x) as f64;
            assert!(
                (got - exact).abs() <= 1e-6 * exact,
                "n {n}: {got} vs {exact}"
            );
        }
        assert!(sum_squares(&[1.0, f32::NAN]).is_nan());
        assert_eq!(sum_squares(&[f32::MAX, f32::MAX]), f32::INFINITY);
    }

    #[test]
    fn all_finite_finds_every_bad_value() {
        assert!(all_finite(&[]));
        let mut x = vec![1.0f32; 1000];
        x[3] = f32::MAX;
        x[4] = -f32::MAX;
        x[5] = f32::MIN_POSITIVE / 2.0; // subnormal
        x[6] = -0.0;
        assert!(all_finite(&x));
        for pos in [0usize, 255, 256, 700, 999] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
                let mut y = x.clone();
                y[pos] = bad;
                assert!(!all_finite(&y), "{bad} at {pos}");
            }
        }
    }
}
