//! Seeded noise: the same seed gives the same latent vectors on x86-64 and on a Cortex-M0+.
//!
//! The generator is xoshiro256++ seeded through SplitMix64 ([`rng`]). Floats are built from the
//! top 24 bits of `next_u32` (exact in f32), and the Gaussian uses Box–Muller with `libm`, so the
//! bits depend on nothing but the seed.

use rand_core::{Rng, SeedableRng};

use crate::format::NoiseKind;

/// The project's random generator.
pub type NoiseRng = rand_xoshiro::Xoshiro256PlusPlus;

/// A generator seeded from `seed` (via SplitMix64).
pub fn rng(seed: u64) -> NoiseRng {
    NoiseRng::seed_from_u64(seed)
}

/// The generator's full state, for checkpoints.
pub fn rng_state(r: &NoiseRng) -> [u8; 32] {
    r.state()
}

/// Restores a generator saved with [`rng_state`].
pub fn rng_from_state(state: [u8; 32]) -> NoiseRng {
    NoiseRng::from_seed(state)
}

const INV_2_24: f32 = 1.0 / 16_777_216.0;

/// Uniform on `[0, 1)` with 24 random bits.
#[inline]
pub fn unit<R: Rng + ?Sized>(r: &mut R) -> f32 {
    (r.next_u32() >> 8) as f32 * INV_2_24
}

/// Uniform on `[-1, 1)`.
#[inline]
pub fn uniform<R: Rng + ?Sized>(r: &mut R) -> f32 {
    (r.next_u32() >> 8) as f32 * (2.0 * INV_2_24) - 1.0
}

/// Two independent standard normal values (Box–Muller).
#[inline]
pub fn gaussian_pair<R: Rng + ?Sized>(r: &mut R) -> (f32, f32) {
    // u1 in (0, 1] so the logarithm is finite.
    let u1 = ((r.next_u32() >> 8) + 1) as f32 * INV_2_24;
    let u2 = unit(r);
    let radius = libm::sqrtf(-2.0 * libm::logf(u1));
    let theta = 2.0 * core::f32::consts::PI * u2;
    (radius * libm::cosf(theta), radius * libm::sinf(theta))
}

/// Fills `out` with standard normal values, drawn in pairs (an odd tail uses the first of a
/// fresh pair).
pub fn fill_gaussian<R: Rng + ?Sized>(r: &mut R, out: &mut [f32]) {
    let mut pairs = out.chunks_exact_mut(2);
    for p in &mut pairs {
        let (a, b) = gaussian_pair(r);
        p[0] = a;
        p[1] = b;
    }
    if let [last] = pairs.into_remainder() {
        *last = gaussian_pair(r).0;
    }
}

/// Fills `out` with values uniform on `[-1, 1)`.
pub fn fill_uniform<R: Rng + ?Sized>(r: &mut R, out: &mut [f32]) {
    for v in out {
        *v = uniform(r);
    }
}

/// Fills `out` with the given distribution.
pub fn fill<R: Rng + ?Sized>(kind: NoiseKind, r: &mut R, out: &mut [f32]) {
    match kind {
        NoiseKind::Gaussian => fill_gaussian(r, out),
        NoiseKind::Uniform => fill_uniform(r, out),
    }
}

/// Writes one generator input: `latent` noise values followed by a one-hot `class` among
/// `classes` (nothing when `classes == 0`). `out` has `latent + classes` elements; a `class`
/// out of range leaves the one-hot part all zero.
pub fn generator_input<R: Rng + ?Sized>(
    kind: NoiseKind, r: &mut R, latent: usize, class: usize, out: &mut [f32],
) {
    let (z, onehot) = out.split_at_mut(latent.min(out.len()));
    fill(kind, r, z);
    onehot.fill(0.0);
    if let Some(v) = onehot.get_mut(class) {
        *v = 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_and_pinned_bits() {
        let mut a = rng(42);
        let mut b = rng(42);
        let mut x = [0.0f32; 7];
        let mut y = [0.0f32; 7];
        fill_gaussian(&mut a, &mut x);
        fill_gaussian(&mut b, &mut y);
        assert_eq!(x, y);
        // Pinned so that any change to the generator or the transform is noticed: firmware and
        // old exported samples rely on these exact bits.
        let bits: [u32; 4] = core::array::from_fn(|i| x[i].to_bits());
        assert_eq!(bits, PINNED_GAUSSIAN_SEED42);
        let mut u = rng(42);
        assert_eq!(uniform(&mut u).to_bits(), PINNED_UNIFORM_SEED42);
    }

    const PINNED_GAUSSIAN_SEED42: [u32; 4] = [3196684003, 1058339854, 3177124788, 3190810272];
    const PINNED_UNIFORM_SEED42: u32 = 1059122330;

    #[test]
    fn moments_and_ranges() {
        let mut r = rng(7);
        let mut g = [0.0f32; 20000];
        fill_gaussian(&mut r, &mut g);
        let n = g.len() as f64;
        let mean = g.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = g.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
        assert!(g.iter().all(|v| v.is_finite()));
        let mut u = [0.0f32; 20000];
        fill_uniform(&mut r, &mut u);
        assert!(u.iter().all(|&v| (-1.0..1.0).contains(&v)));
        let mean = u.iter().map(|&v| v as f64).sum::<f64>() / n;
        assert!(mean.abs() < 0.03);
    }

    #[test]
    fn state_round_trip() {
        let mut a = rng(3);
        let _ = uniform(&mut a);
        let mut b = rng_from_state(rng_state(&a));
        assert_eq!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn conditional_input() {
        let mut r = rng(1);
        let mut out = [9.0f32; 5];
        generator_input(NoiseKind::Uniform, &mut r, 2, 1, &mut out);
        assert_eq!(&out[2..], &[0.0, 1.0, 0.0]);
        assert!(out[..2].iter().all(|v| (-1.0..1.0).contains(v)));
    }
}
