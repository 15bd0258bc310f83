//! Weight initialisation schemes, and filling a whole flat parameter buffer from a [`Spec`].
//!
//! The random values come from [`crate::noise`], so for a given seed the initial parameters are
//! the same bits on every target. Draw order (part of that promise): one layer after another,
//! inside a weight tensor in buffer order; normal schemes draw through
//! [`noise::fill_gaussian`] over the whole tensor, uniform schemes draw one
//! [`noise::uniform`] per element. Biases and padding take no draws.

use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, check_len};
use crate::layers::with_kind;
use crate::noise;
use crate::spec::Spec;

/// A weight initialisation scheme for a `fan_in × fan_out` weight matrix.
///
/// | scheme          | distribution          | scale                                 |
/// |-----------------|-----------------------|---------------------------------------|
/// | `HeNormal`      | `N(0, std²)`          | `std = √(2 / fan_in)`                 |
/// | `HeUniform`     | `U[−bound, bound)`    | `bound = √(6 / fan_in)`               |
/// | `XavierNormal`  | `N(0, std²)`          | `std = √(2 / (fan_in + fan_out))`     |
/// | `XavierUniform` | `U[−bound, bound)`    | `bound = √(6 / (fan_in + fan_out))`   |
/// | `Zeros`         | all `0`               |                                       |
/// | `Normal002`     | `N(0, std²)`          | `std = 0.02`                          |
///
/// Both uniform forms have standard deviation `bound / √3`, equal to their normal
/// counterpart's `std`. He (Kaiming) suits ReLU-like layers, Xavier (Glorot) tanh/sigmoid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Init {
    /// He normal: `w ~ N(0, 2 / fan_in)`.
    HeNormal,
    /// He uniform: `w ~ U[−√(6 / fan_in), √(6 / fan_in))`.
    HeUniform,
    /// Xavier/Glorot normal: `w ~ N(0, 2 / (fan_in + fan_out))`.
    XavierNormal,
    /// Xavier/Glorot uniform: `w ~ U[−√(6 / (fan_in + fan_out)), √(6 / (fan_in + fan_out)))`.
    XavierUniform,
    /// All weights `0` (draws nothing from the generator).
    Zeros,
    /// `w ~ N(0, 0.02²)` whatever the fans: the DCGAN paper's initialisation.
    Normal002,
}

impl Default for Init {
    /// [`Init::HeNormal`].
    fn default() -> Self {
        Init::HeNormal
    }
}

impl Init {
    /// The scale of this scheme for the given fans: the standard deviation for the normal
    /// schemes (`√(2/fan)`), the bound for the uniform ones (`√(6/fan)`), `0` for `Zeros`, with
    /// `fan = fan_in` (He) or `fan_in + fan_out` (Xavier). A fan of 0 counts as 1, so the
    /// scale is always finite.
    pub fn scale(self, fan_in: usize, fan_out: usize) -> f32 {
        let he = fan_in.max(1) as f32;
        let xavier = fan_in.saturating_add(fan_out).max(1) as f32;
        match self {
            Init::HeNormal => libm::sqrtf(2.0 / he),
            Init::HeUniform => libm::sqrtf(6.0 / he),
            Init::XavierNormal => libm::sqrtf(2.0 / xavier),
            Init::XavierUniform => libm::sqrtf(6.0 / xavier),
            Init::Zeros => 0.0,
            Init::Normal002 => 0.02,
        }
    }

    /// Fills `w` (normally `fan_in × fan_out` elements) with this scheme:
    /// `w_i = scale · z_i` with `z_i` standard normal ([`noise::fill_gaussian`]) for the normal
    /// schemes, `w_i = scale · u_i` with `u_i` uniform on `[−1, 1)` ([`noise::uniform`]) for the
    /// uniform schemes, `w_i = 0` for `Zeros`; `scale` is [`Init::scale`]. The fans only set
    /// the scale: every element of `w` is written, whatever its length.
    pub fn fill<R: Rng + ?Sized>(self, rng: &mut R, w: &mut [f32], fan_in: usize, fan_out: usize) {
        let scale = self.scale(fan_in, fan_out);
        match self {
            Init::HeNormal | Init::XavierNormal | Init::Normal002 => {
                noise::fill_gaussian(rng, w);
                for v in w.iter_mut() {
                    *v *= scale;
                }
            }
            Init::HeUniform | Init::XavierUniform => {
                for v in w.iter_mut() {
                    *v = noise::uniform(rng) * scale;
                }
            }
            Init::Zeros => w.fill(0.0),
        }
    }
}

/// Initialises every layer of `spec` in the flat parameter buffer `params` (length
/// `spec.param_len()`):
/// - weights of each `Dense` layer: `weight_init.fill(rng, W, fan_in, fan_out)` with
///   `fan_in = in_shape.len()` (input features) and `fan_out = out_shape.len()` (output
///   features);
/// - weights of each convolution: `weight_init.fill(rng, W, fan_in, fan_out)` with the fans
///   counted as the average number of terms summed into one output (`fan_in`) and of outputs
///   one input feeds (`fan_out`), for `C_in` input and `C_out` output channels, kernel `k` and
///   stride `s`: `Conv2d` `fan_in = C_in·k²`, `fan_out = max(1, C_out·k²/s²)`;
///   `ConvTranspose2d` `fan_in = max(1, C_in·k²/s²)`, `fan_out = C_out·k²` (each output of a
///   stride-`s` transposed convolution sums about `k²/s²` taps per input channel);
/// - `BatchNorm`: `γ = 1`, `β = 0`, running mean `0`, running variance `1` (no draws);
/// - biases: `0`;
/// - the alignment padding between tensors: `0`.
///
/// Layers are visited in order, so the result depends only on the spec, the scheme and the
/// generator's state.
///
/// Each layer kind draws its own weights (see [`crate::layers`]); the rules above are theirs.
///
/// Errors: [`CoreError::BufferLen`] if `params.len() != spec.param_len()` (nothing written).
pub fn init_params<R: Rng + ?Sized>(
    spec: &Spec<'_>, params: &mut [f32], weight_init: Init, rng: &mut R,
) -> Result<(), CoreError> {
    check_len("params", params.len(), spec.param_len())?;
    // Biases and padding are zero; weights are overwritten below.
    params.fill(0.0);
    for info in spec.iter() {
        with_kind!(info.layer, |k| k.init(&info, params, weight_init, rng))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Layer;
    use crate::spec::Shape;
    use std::vec;

    const ALL: [Init; 6] = [
        Init::HeNormal,
        Init::HeUniform,
        Init::XavierNormal,
        Init::XavierUniform,
        Init::Zeros,
        Init::Normal002,
    ];

    /// (mean, standard deviation, largest |w|) in f64.
    fn stats(w: &[f32]) -> (f64, f64, f64) {
        let n = w.len() as f64;
        let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let max = w.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
        (mean, var.sqrt(), max)
    }

    #[test]
    fn empirical_scale_of_every_scheme() {
        let (fan_in, fan_out) = (256usize, 512usize);
        let mut w = vec![0.0f32; fan_in * fan_out];
        let mut rng = noise::rng(1);
        // Expected standard deviations and bounds, from the formulas.
        let he_std = (2.0f64 / 256.0).sqrt(); // 0.0884
        let he_bound = (6.0f64 / 256.0).sqrt(); // 0.1531
        let xa_std = (2.0f64 / 768.0).sqrt(); // 0.0510
        let xa_bound = (6.0f64 / 768.0).sqrt(); // 0.0884
        for (init, std, bound) in [
            (Init::HeNormal, he_std, None),
            (Init::HeUniform, he_bound / 3f64.sqrt(), Some(he_bound)),
            (Init::XavierNormal, xa_std, None),
            (Init::XavierUniform, xa_bound / 3f64.sqrt(), Some(xa_bound)),
        ] {
            init.fill(&mut rng, &mut w, fan_in, fan_out);
            let (mean, sd, max) = stats(&w);
            assert!(mean.abs() < 0.01 * std, "{init:?}: mean {mean}");
            assert!((sd / std - 1.0).abs() < 0.02, "{init:?}: std {sd}, want {std}");
            match bound {
                // Uniform: inside the bound and reaching close to it.
                Some(b) => assert!(max <= b && max > 0.999 * b, "{init:?}: max {max}, bound {b}"),
                // Normal: 131072 draws reach beyond 4 std but not beyond 6.
                None => assert!(max > 4.0 * std && max < 6.0 * std, "{init:?}: max {max}"),
            }
        }
    }

    #[test]
    fn zeros_overwrite_and_draw_nothing() {
        let mut w = [3.0f32; 10];
        let mut a = noise::rng(9);
        Init::Zeros.fill(&mut a, &mut w, 5, 2);
        assert_eq!(w, [0.0; 10]);
        assert_eq!(a.next_u64(), noise::rng(9).next_u64());
    }

    #[test]
    fn same_seed_same_bits() {
        for init in ALL {
            let mut a = [0.0f32; 33];
            let mut b = [0.0f32; 33];
            init.fill(&mut noise::rng(4), &mut a, 3, 11);
            init.fill(&mut noise::rng(4), &mut b, 3, 11);
            assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits), "{init:?}");
            let mut c = [0.0f32; 33];
            init.fill(&mut noise::rng(5), &mut c, 3, 11);
            assert_eq!(a == c, init == Init::Zeros, "{init:?}");
        }
    }

    #[test]
    fn scale_formulas_and_zero_fans() {
        assert_eq!(Init::HeNormal.scale(8, 100), 0.5);
        assert_eq!(Init::HeUniform.scale(6, 100), 1.0);
        assert_eq!(Init::XavierNormal.scale(3, 5), 0.5);
        assert_eq!(Init::XavierUniform.scale(4, 2), 1.0);
        assert_eq!(Init::Zeros.scale(4, 2), 0.0);
        assert_eq!(Init::Normal002.scale(4, 2), 0.02);
        for init in ALL {
            assert!(init.scale(0, 0).is_finite());
            let mut w = [0.0f32; 4];
            init.fill(&mut noise::rng(0), &mut w, 0, 0);
            assert!(w.iter().all(|v| v.is_finite()));
        }
    }

    // input 3 → Dense 5 → LeakyReLU → Dense 3: weights 15 (+1 pad), bias 5 (+3 pad),
    // weights 15 (+1 pad), bias 3 (+1 pad) = 44 elements.
    const ODD: [Layer; 3] =
        [Layer::Dense { out: 5 }, Layer::LeakyRelu { alpha: 0.2 }, Layer::Dense { out: 3 }];

    #[test]
    fn init_params_fills_weights_and_zeroes_the_rest() {
        let spec = Spec::new(Shape::flat(3), &ODD).unwrap();
        assert_eq!(spec.param_len(), 44);
        for init in [Init::HeNormal, Init::XavierUniform] {
            let mut params = vec![7.0f32; spec.param_len()];
            init_params(&spec, &mut params, init, &mut noise::rng(2)).unwrap();
            let mut is_weight = vec![false; params.len()];
            for info in spec.iter() {
                let w = &params[info.weight_range()];
                assert!(w.iter().all(|&v| v != 0.0), "{init:?} layer {}", info.index);
                let bound = 4.0 * init.scale(info.in_shape.len(), info.out_shape.len());
                assert!(w.iter().all(|v| v.abs() < bound), "{init:?}: {w:?}");
                is_weight[info.weight_range()].fill(true);
            }
            // Every weight element was covered (15 + 15), and everything else — biases and
            // padding — is zero even though the buffer started at 7.
            assert_eq!(is_weight.iter().filter(|&&b| b).count(), 30);
            for (v, w) in params.iter().zip(&is_weight) {
                assert!(*w || *v == 0.0);
            }
            // Same seed, same parameters; the layers draw in order from one generator.
            let mut again = vec![0.0f32; spec.param_len()];
            init_params(&spec, &mut again, init, &mut noise::rng(2)).unwrap();
            assert_eq!(params, again);
            let l0 = spec.layer(0).unwrap();
            let l2 = spec.layer(2).unwrap();
            let mut manual = [0.0f32; 30];
            let mut rng = noise::rng(2);
            init.fill(&mut rng, &mut manual[..15], 3, 5);
            init.fill(&mut rng, &mut manual[15..], 5, 3);
            assert_eq!(&params[l0.weight_range()], &manual[..15]);
            assert_eq!(&params[l2.weight_range()], &manual[15..]);
        }
    }

    #[test]
    fn init_params_checks_the_length() {
        let spec = Spec::new(Shape::flat(3), &ODD).unwrap();
        let mut params = vec![7.0f32; 43];
        assert_eq!(
            init_params(&spec, &mut params, Init::HeNormal, &mut noise::rng(0)),
            Err(CoreError::BufferLen { what: "params", expected: 44, got: 43 })
        );
        assert!(params.iter().all(|&v| v == 7.0));
    }

    #[test]
    fn init_params_convolutions_and_batch_norm() {
        let layers = [
            Layer::Conv2d { out_c: 8, k: 4, stride: 2, pad: 1 },
            crate::presets::BN,
            Layer::ConvTranspose2d { out_c: 3, k: 4, stride: 2, pad: 1 },
        ];
        let spec = Spec::new(Shape::image(2, 8, 8), &layers).unwrap();
        let mut params = vec![7.0f32; spec.param_len()];
        init_params(&spec, &mut params, Init::HeNormal, &mut noise::rng(3)).unwrap();
        let conv = spec.layer(0).unwrap();
        let bn = spec.layer(1).unwrap();
        let convt = spec.layer(2).unwrap();
        // Conv: fan_in = 2·16 = 32; transposed: fan_in = 8·16/4 = 32 as well.
        for info in [conv, convt] {
            let w = &params[info.weight_range()];
            let (_, sd, _) = stats(w);
            let want = (2.0f64 / 32.0).sqrt();
            assert!((sd / want - 1.0).abs() < 0.2, "{sd} vs {want}");
            assert!(params[info.bias_range()].iter().all(|&v| v == 0.0));
        }
        assert!(params[bn.weight_range()].iter().all(|&v| v == 1.0));
        assert!(params[bn.bias_range()].iter().all(|&v| v == 0.0));
        let st = &params[bn.stats_range()];
        assert_eq!(st.len(), 16);
        assert!(st[..8].iter().all(|&v| v == 0.0) && st[8..].iter().all(|&v| v == 1.0));
        // The draws are the conv weights, then the transposed conv weights, in order.
        let mut rng = noise::rng(3);
        let mut manual = vec![0.0f32; conv.weight_len];
        Init::HeNormal.fill(&mut rng, &mut manual, 32, 32);
        assert_eq!(&params[conv.weight_range()], &manual[..]);
    }

    #[test]
    fn init_serde_round_trip() {
        for init in ALL {
            let bytes = postcard::to_stdvec(&init).unwrap();
            assert_eq!(postcard::from_bytes::<Init>(&bytes).unwrap(), init);
        }
    }
}
