//! Inverted dropout with stateless, reproducible masks.
//!
//! Shapes: `inp`, `out`, `mask`, `dinp`, `dout` all have the same length (any shape, usually
//! N × features).
//!
//! In training every element is kept with probability `1 − p` and scaled by `1/(1 − p)`, so
//! the expected output equals the input and inference is the identity (no rescaling there).
//!
//! The mask is not drawn from a generator that would have to be threaded through the network
//! and saved in checkpoints: element `i` of the layer with stream number `stream` (the layer
//! index in a network) is kept iff `u(seed, stream, i) >= p`, where `u` is a 64-bit mixing
//! hash of the three numbers mapped to `[0, 1)` on a grid of `2⁻²⁴` ([`keep_uniform`]). One
//! `seed` per training step (see [`crate::model::ForwardCtx`]) fixes every mask of that step
//! on every target, and repeating a forward pass repeats its masks exactly.
//!
//! Forward writes the mask values (`0` or `1/(1 − p)`) to `mask`, which backward multiplies
//! into the gradient; in a network that buffer is the layer's auxiliary activation storage.

use core::fmt;

use crate::error::{CoreError, SpecError, check_len};
use crate::layers::{Backward, Forward, Infer, Kind, Q8Role, Rules, Sizes};
use crate::spec::{LayerInfo, Shape};

/// A dropout layer with drop probability `p`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Drop probability, in `[0, 1)`.
    pub p: f32,
}

/// Shape rule: the input shape; auxiliary storage for the mask (one value per element).
pub(crate) const fn rules(p: f32, inp: Shape, index: usize) -> Result<Rules, SpecError> {
    if p >= 0.0 && p < 1.0 {
        Ok(Rules::new(inp, Sizes { aux: inp.len(), ..Sizes::NONE }))
    } else {
        Err(SpecError::BadParameter { layer: index })
    }
}

impl Kind for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn q8(&self) -> Q8Role {
        Q8Role::Pass
    }
    fn label(&self, _: &LayerInfo, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dropout({})", self.p)
    }
    fn forward(&self, a: Forward<'_>) -> Result<(), CoreError> {
        if a.inference {
            a.out.copy_from_slice(a.inp);
            return Ok(());
        }
        dropout_forward(a.out, a.aux, a.inp, self.p, a.seed, a.l.index as u64)
    }
    fn backward(&self, a: Backward<'_>) -> Result<(), CoreError> {
        let mask = a.aux();
        match a.dinp {
            Some(d) => dropout_backward(d, a.dout, mask),
            None => Ok(()),
        }
    }
    /// The identity at inference.
    fn infer(&self, _: Infer<'_, '_, '_>) -> Result<(), CoreError> {
        Ok(())
    }
}

/// The splitmix64 finaliser: a bijective 64-bit mix with good avalanche.
#[inline]
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Odd constant (2⁶⁴/φ) that spreads consecutive integers over the 64-bit range.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The uniform number in `[0, 1)` behind element `index` of stream `stream` for `seed`: a
/// multiple of `2⁻²⁴`, identical on every target.
#[inline]
pub const fn keep_uniform(seed: u64, stream: u64, index: u64) -> f32 {
    let key = mix(seed ^ mix(stream.wrapping_add(1).wrapping_mul(GOLDEN)));
    let h = mix(key.wrapping_add(index.wrapping_mul(GOLDEN)));
    (h >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// Training forward: `out = inp ⊙ mask` with `mask[i] = 1/(1 − p)` if
/// `keep_uniform(seed, stream, i) >= p`, else `0`; `mask` receives those values.
///
/// `p` must lie in `[0, 1)`; anything else (NaN included) is rejected with
/// [`CoreError::Spec`]. With `p = 0` the output equals the input exactly.
pub fn dropout_forward(
    out: &mut [f32], mask: &mut [f32], inp: &[f32], p: f32, seed: u64, stream: u64,
) -> Result<(), CoreError> {
    // NaN is not contained either.
    if !(0.0..1.0).contains(&p) {
        return Err(CoreError::Spec(SpecError::BadParameter { layer: usize::MAX }));
    }
    check_len("out", out.len(), inp.len())?;
    check_len("mask", mask.len(), inp.len())?;
    let scale = 1.0 / (1.0 - p);
    for (i, ((o, m), &x)) in out.iter_mut().zip(mask.iter_mut()).zip(inp).enumerate() {
        *m = if keep_uniform(seed, stream, i as u64) >= p { scale } else { 0.0 };
        *o = x * *m;
    }
    Ok(())
}

/// Backward: `dinp = dout ⊙ mask` (overwritten), with the `mask` written by
/// [`dropout_forward`].
pub fn dropout_backward(dinp: &mut [f32], dout: &[f32], mask: &[f32]) -> Result<(), CoreError> {
    check_len("dinp", dinp.len(), dout.len())?;
    check_len("mask", mask.len(), dout.len())?;
    for ((d, &g), &m) in dinp.iter_mut().zip(dout).zip(mask) {
        *d = g * m;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Lcg, grad_check};
    use std::vec;

    #[test]
    fn keep_rate_and_scale() {
        let len = 20_000;
        let x = vec![1.0f32; len];
        let mut out = vec![0.0; len];
        let mut mask = vec![0.0; len];
        dropout_forward(&mut out, &mut mask, &x, 0.3, 7, 2).unwrap();
        let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / len as f64;
        assert!((kept - 0.7).abs() < 0.015, "{kept}");
        assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0 / 0.7));
        let mean = out.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
        assert!((mean - 1.0).abs() < 0.03, "{mean}");
    }

    #[test]
    fn masks_depend_on_seed_and_stream_only() {
        let x = [1.0f32; 64];
        let run = |seed, stream| {
            let mut out = [0.0; 64];
            let mut mask = [0.0; 64];
            dropout_forward(&mut out, &mut mask, &x, 0.5, seed, stream).unwrap();
            mask
        };
        assert_eq!(run(1, 0), run(1, 0));
        assert_ne!(run(1, 0), run(2, 0));
        assert_ne!(run(1, 0), run(1, 1));
        // Pinned values, so a change of the hash (which would change every mask of a resumed
        // or replayed run) is noticed.
        let pinned = [
            ((0, 0, 0), 0x3e4f_fa2c),
            ((0, 0, 1), 0x3ead_1536),
            ((5, 3, 1000), 0x3f01_cdbd),
            ((u64::MAX, 63, 1 << 40), 0x3eef_5e78),
        ];
        for ((seed, stream, index), bits) in pinned {
            assert_eq!(keep_uniform(seed, stream, index).to_bits(), bits);
        }
    }

    #[test]
    fn zero_probability_is_the_identity() {
        let mut r = Lcg::new(51);
        let x = r.vec::<32>();
        let mut out = [0.0; 32];
        let mut mask = [0.0; 32];
        dropout_forward(&mut out, &mut mask, &x, 0.0, 9, 0).unwrap();
        assert_eq!(out, x);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut r = Lcg::new(52);
        let x = r.vec::<40>();
        let g = r.vec::<40>();
        let (p, seed, stream) = (0.4, 1234, 3);
        let loss = |x: &[f32]| -> f64 {
            let mut out = [0.0; 40];
            let mut mask = [0.0; 40];
            dropout_forward(&mut out, &mut mask, x, p, seed, stream).unwrap();
            out.iter().zip(&g).map(|(&o, &g)| o as f64 * g as f64).sum()
        };
        let mut out = [0.0; 40];
        let mut mask = [0.0; 40];
        dropout_forward(&mut out, &mut mask, &x, p, seed, stream).unwrap();
        assert!(mask.contains(&0.0) && mask.iter().any(|&m| m > 1.0));
        let mut dx = [0.0; 40];
        dropout_backward(&mut dx, &g, &mask).unwrap();
        grad_check(&x, &dx, loss, 1e-2, 1e-3);
    }

    #[test]
    fn rejects_bad_input() {
        let mut out = [0.0; 4];
        let mut mask = [0.0; 4];
        for p in [1.0, -0.1, f32::NAN] {
            assert!(dropout_forward(&mut out, &mut mask, &[0.0; 4], p, 0, 0).is_err());
        }
        assert!(matches!(
            dropout_forward(&mut out, &mut mask[..3], &[0.0; 4], 0.5, 0, 0),
            Err(CoreError::BufferLen { what: "mask", .. })
        ));
        assert!(dropout_backward(&mut out, &[0.0; 3], &mask).is_err());
    }
}
