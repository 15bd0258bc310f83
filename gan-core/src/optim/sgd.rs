//! SGD with momentum ([`sgd_step`]), as PyTorch's `torch.optim.SGD` with its default flags.

use serde::{Deserialize, Serialize};

use super::{finite_at_least, non_finite, unit_interval};
use crate::error::{CoreError, check_len};

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
        SgdConfig { lr: 1e-2, momentum: 0.0, weight_decay: 0.0 }
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
/// Returns whether every updated parameter is finite (as [`super::adam_step`]).
///
/// Errors (nothing is written): [`CoreError::BufferLen`] if `grads` or `momentum_buf` has the
/// wrong length.
pub fn sgd_step(
    params: &mut [f32], grads: &[f32], momentum_buf: &mut [f32], cfg: &SgdConfig,
) -> Result<bool, CoreError> {
    let n = params.len();
    check_len("grads", grads.len(), n)?;
    let SgdConfig { lr, momentum, weight_decay } = *cfg;
    let mut bad = 0u32;
    if momentum == 0.0 {
        if !momentum_buf.is_empty() {
            check_len("sgd_momentum", momentum_buf.len(), n)?;
        }
        // Shapes: params, grads P.
        for (p, &g) in params.iter_mut().zip(grads) {
            let g = g + weight_decay * *p;
            *p -= lr * g;
            bad |= non_finite(*p);
        }
    } else {
        check_len("sgd_momentum", momentum_buf.len(), n)?;
        // Shapes: params, grads, momentum_buf P.
        for ((p, &g), b) in params.iter_mut().zip(grads).zip(momentum_buf) {
            let g = g + weight_decay * *p;
            *b = momentum * *b + g;
            *p -= lr * *b;
            bad |= non_finite(*p);
        }
    }
    Ok(bad == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::close;

    #[test]
    fn sgd_without_momentum_by_hand() {
        // p = 1, g = 0.5, lr = 0.1: p = 1 − 0.05 = 0.95; then g = −0.2: p = 0.95 + 0.02 = 0.97.
        let c = SgdConfig { lr: 0.1, ..SgdConfig::default() };
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
        let c = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.0 };
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
        let mut c = SgdConfig { lr: 0.1, momentum: 0.0, weight_decay: 0.1 };
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
        let mom = SgdConfig { momentum: 0.9, ..plain };
        assert!(matches!(
            sgd_step(&mut p, &[0.0; 2], &mut [], &plain),
            Err(CoreError::BufferLen { what: "grads", .. })
        ));
        assert_eq!(
            sgd_step(&mut p, &[1.0; 3], &mut [], &mom),
            Err(CoreError::BufferLen { what: "sgd_momentum", expected: 3, got: 0 })
        );
        assert!(matches!(
            sgd_step(&mut p, &[1.0; 3], &mut [0.0; 2], &plain),
            Err(CoreError::BufferLen { what: "sgd_momentum", .. })
        ));
        assert_eq!(p, [1.0; 3]);
    }
}
