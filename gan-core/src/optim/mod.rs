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

mod adam;
mod sgd;

pub use adam::{AdamConfig, adam_step};
pub use sgd::{SgdConfig, sgd_step};

use crate::error::{CoreError, check_len};
use crate::kernels::Exec;
#[cfg(target_has_atomic = "8")]
use crate::kernels::split::{MAX_TASKS, OutPtr, split_ranges};

/// `x` finite and `>= lo` (false for NaN).
pub(crate) fn finite_at_least(x: f32, lo: f32) -> bool {
    x >= lo && x.is_finite()
}

/// `0 <= x < 1` (false for NaN).
pub(crate) fn unit_interval(x: f32) -> bool {
    (0.0..1.0).contains(&x)
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
    /// Returns whether every parameter is finite after the step.
    ///
    /// Errors: [`CoreError::BufferLen`] if `grads` or `state` has the wrong length, and the
    /// errors of [`adam_step`] / [`sgd_step`]. Nothing is written on error.
    pub fn step(
        &self, params: &mut [f32], grads: &[f32], state: &mut [f32], step: u64,
    ) -> Result<bool, CoreError> {
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
    /// [`Optimizer::step`] for every `exec`, and so is the answer (whether every parameter is
    /// finite after the step). Nothing is written on error.
    pub fn step_with(
        &self, params: &mut [f32], grads: &[f32], state: &mut [f32], step: u64, exec: &dyn Exec,
    ) -> Result<bool, CoreError> {
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
            let finite = core::sync::atomic::AtomicBool::new(true);
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
                let ok = match self {
                    Optimizer::Adam(cfg) => {
                        // SAFETY: as above, the second moment's range of the same task.
                        let v = unsafe { st.range(n + a, n + b) };
                        adam_step(p, g, m, v, step, cfg)
                    }
                    Optimizer::Sgd(cfg) => sgd_step(p, g, m, cfg),
                };
                if ok != Ok(true) {
                    finite.store(false, core::sync::atomic::Ordering::Relaxed);
                }
            });
            return Ok(finite.into_inner());
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
    x.chunks(FINITE_BLOCK).all(|block| block.iter().fold(0u32, |acc, &v| acc | non_finite(v)) == 0)
}

/// 1 if `x` is NaN or `±inf` (its exponent bits all ones), else 0: branch-free, for ORing over
/// a loop ([`all_finite`], the optimizers' steps).
#[inline(always)]
pub(crate) fn non_finite(x: f32) -> u32 {
    u32::from(x.to_bits() & EXP_MASK == EXP_MASK)
}

/// [`all_finite`] over `exec`: consecutive ranges checked by its tasks (one task below
/// [`crate::kernels::par::PAR_MIN_ELEMS`] values). The answer does not depend on the split.
pub fn all_finite_with(x: &[f32], exec: &dyn Exec) -> bool {
    use crate::kernels::par;
    let finite = core::sync::atomic::AtomicBool::new(true);
    let tasks = par::elem_tasks(exec, x.len(), x.len());
    par::for_each_range(exec, x.len(), tasks, &|a, b| {
        if !all_finite(&x[a..b]) {
            finite.store(false, core::sync::atomic::Ordering::Relaxed);
        }
    });
    finite.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Lcg, Twice};
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn optimizer_step_equals_direct_calls() {
        const P: usize = 13;
        let mut rng = Lcg::new(5);
        let init: [f32; P] = rng.vec();
        let grads: [[f32; P]; 3] = [rng.vec(), rng.vec(), rng.vec()];

        let adam = AdamConfig { weight_decay: 0.01, ..AdamConfig::default() };
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
            let sgd = SgdConfig { lr: 0.05, momentum, weight_decay: 0.001 };
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
        let n = 3 * STEP_CHUNK + 7;
        let mut r = Lcg::new(17);
        let params: Vec<f32> = (0..n).map(|_| r.next_f32()).collect();
        let grads: Vec<f32> = (0..n).map(|_| r.next_f32()).collect();
        let sgd = |momentum| Optimizer::Sgd(SgdConfig { lr: 0.01, momentum, weight_decay: 1e-4 });
        for opt in [Optimizer::default(), sgd(0.9), sgd(0.0)] {
            let (mut p1, mut p2) = (params.clone(), params.clone());
            let mut s1 = vec![0.0; opt.state_len(n)];
            let mut s2 = s1.clone();
            for step in 1..=3 {
                assert_eq!(opt.step(&mut p1, &grads, &mut s1, step), Ok(true));
                assert_eq!(opt.step_with(&mut p2, &grads, &mut s2, step, &Twice), Ok(true));
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&p1), bits(&p2), "{opt:?}");
            assert_eq!(bits(&s1), bits(&s2), "{opt:?}");
            // A parameter that is no longer finite is reported, wherever it falls (the
            // lanes, the tail that fills none, any task), by both paths.
            let cases =
                [(5, f32::NAN), (2 * STEP_CHUNK + 1, f32::INFINITY), (n - 1, -f32::INFINITY)];
            for (at, bad) in cases {
                let (mut q1, mut q2, mut t1) = (p1.clone(), p1.clone(), s1.clone());
                let mut t2 = t1.clone();
                let mut g = grads.clone();
                g[at] = bad;
                assert_eq!(opt.step(&mut q1, &g, &mut t1, 4), Ok(false), "{opt:?} at {at}");
                assert_eq!(opt.step_with(&mut q2, &g, &mut t2, 4, &Twice), Ok(false), "{opt:?}");
                assert_eq!(bits(&q1), bits(&q2), "{opt:?}");
            }
            // Errors leave everything untouched, as in one task.
            let before = p2.clone();
            assert!(opt.step_with(&mut p2, &grads[1..], &mut s2, 4, &Twice).is_err());
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
            Err(CoreError::BufferLen { what: "optimizer_state", expected: 8, got: 4 })
        );
        assert!(matches!(
            adam.step(&mut p, &g[..2], &mut [0.0; 8], 1),
            Err(CoreError::BufferLen { what: "grads", .. })
        ));
        assert_eq!(adam.step(&mut p, &g, &mut [0.0; 8], 0), Err(CoreError::ZeroSize));
        let plain = Optimizer::Sgd(SgdConfig::default());
        assert!(matches!(
            plain.step(&mut p, &g, &mut [0.0; 4], 1),
            Err(CoreError::BufferLen { what: "optimizer_state", expected: 0, got: 4 })
        ));
        let mom = Optimizer::Sgd(SgdConfig { momentum: 0.9, ..SgdConfig::default() });
        assert!(matches!(
            mom.step(&mut p, &g, &mut [], 1),
            Err(CoreError::BufferLen { what: "optimizer_state", expected: 4, got: 0 })
        ));
        assert_eq!(p, [0.5; 4]);
    }

    #[test]
    fn defaults_validity_and_serde() {
        let a = AdamConfig::default();
        assert_eq!((a.lr, a.beta1, a.beta2, a.eps, a.weight_decay), (2e-4, 0.5, 0.999, 1e-8, 0.0));
        let s = SgdConfig::default();
        assert_eq!((s.lr, s.momentum, s.weight_decay), (1e-2, 0.0, 0.0));
        assert!(a.is_valid() && s.is_valid() && Optimizer::default().is_valid());
        assert!(!AdamConfig { beta1: 1.0, ..a }.is_valid());
        assert!(!AdamConfig { eps: 0.0, ..a }.is_valid());
        assert!(!AdamConfig { lr: f32::NAN, ..a }.is_valid());
        assert!(!SgdConfig { momentum: -0.1, ..s }.is_valid());
        assert!(!Optimizer::Sgd(SgdConfig { lr: f32::INFINITY, ..s }).is_valid());
        for opt in [Optimizer::Adam(a), Optimizer::Sgd(SgdConfig { momentum: 0.9, ..s })] {
            let bytes = postcard::to_stdvec(&opt).unwrap();
            assert_eq!(postcard::from_bytes::<Optimizer>(&bytes).unwrap(), opt);
        }
    }

    #[test]
    fn sum_squares_matches_f64() {
        let mut rng = Lcg::new(3);
        assert_eq!(sum_squares(&[]), 0.0);
        assert_eq!(sum_squares(&[3.0]), 9.0);
        assert_eq!(sum_squares(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]), 285.0);
        for n in [7usize, 8, 9, 1023, 1024, 1025, 5000, 100_003] {
            let x = rng.filled(n);
            let exact: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
            let got = sum_squares(&x) as f64;
            assert!((got - exact).abs() <= 1e-6 * exact, "n {n}: {got} vs {exact}");
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

    #[test]
    fn split_finiteness_check_finds_every_bad_value() {
        use crate::kernels::par::PAR_MIN_ELEMS;
        let x = vec![0.5f32; 2 * PAR_MIN_ELEMS + 3];
        assert!(all_finite_with(&x, &Twice) && all_finite_with(&[], &Twice));
        for pos in [0, PAR_MIN_ELEMS - 1, PAR_MIN_ELEMS, PAR_MIN_ELEMS + 1, x.len() - 1] {
            let mut y = x.clone();
            y[pos] = f32::NAN;
            assert!(!all_finite_with(&y, &Twice), "at {pos}");
            assert!(!all_finite_with(&y[..pos + 1], &crate::kernels::Serial), "at {pos}");
        }
    }
}
