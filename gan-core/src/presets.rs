//! The model presets: the layer lists behind `gan-train --arch`, in one place for the trainer,
//! the firmware and the tests.
//!
//! The builders take the data's image size, so the same presets train on any MNIST-format data;
//! the constants are the 28×28 instances (a test pins them to the builders).

use crate::spec::{Layer, MAX_LAYERS, Shape, Spec};

/// A list of layers built by a preset.
pub type Layers = heapless::Vec<Layer, MAX_LAYERS>;

/// The widths of an MLP preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mlp {
    /// Noise values per sample.
    pub latent: u32,
    /// Generator hidden widths.
    pub g_hidden: &'static [u32],
    /// Discriminator hidden widths.
    pub d_hidden: &'static [u32],
}

/// `mcu`: G z64 → 128 → 192 → 784 (184,400 parameters, 720 KiB as f32: fits a Raspberry Pi
/// Pico's flash), D 784 → 256 → 128 → 1.
pub const MCU: Mlp = Mlp { latent: 64, g_hidden: &[128, 192], d_hidden: &[256, 128] };

/// `classic`, the seed notebooks' MLP GAN: G z100 → 256 → 512 → 1024 → 784, D 784 → 512 →
/// 256 → 1.
pub const CLASSIC: Mlp = Mlp { latent: 100, g_hidden: &[256, 512, 1024], d_hidden: &[512, 256] };

/// The widths of a convolutional generator preset (see [`conv_generator_layers`]) with an MLP
/// discriminator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv {
    /// Noise values per sample (a conditional model adds one value per class).
    pub latent: u32,
    /// Channels of the quarter-size and of the half-size feature map.
    pub channels: [u32; 2],
    /// Discriminator hidden widths.
    pub d_hidden: &'static [u32],
}

/// `pico`: a conditional convolutional generator sized for the Raspberry Pi Pico: z32 + class
/// → dense 32·7·7 → BN → ReLU → ConvT 16 (14×14) → BN → ReLU → ConvT 1 (28×28) → Tanh; D an
/// MLP 784 + class → 256 → 128 → 1.
pub const PICO: Conv = Conv { latent: 32, channels: [32, 16], d_hidden: &[256, 128] };

/// Classes of the `pico` preset's conditional input (the ten digits).
pub const PICO_CLASSES: u32 = 10;

/// Noise values per sample of `dcgan`.
pub const DCGAN_LATENT: u32 = 100;

/// The hidden activation of the MLP discriminators and of the DCGAN discriminator.
pub const LEAKY: Layer = Layer::LeakyRelu { alpha: 0.2 };

/// The batch normalisation of the DCGAN networks (PyTorch's defaults).
pub const BN: Layer = Layer::BatchNorm { eps: 1e-5, momentum: 0.1 };

/// A stride-2, 4×4 convolution with padding 1 (halves the side).
const fn down(out_c: u32) -> Layer {
    Layer::Conv2d { out_c, k: 4, stride: 2, pad: 1 }
}

/// A stride-2, 4×4 transposed convolution with padding 1 (doubles the side).
const fn up(out_c: u32) -> Layer {
    Layer::ConvTranspose2d { out_c, k: 4, stride: 2, pad: 1 }
}

/// Appends, failing (returning `None`) when the list is full.
fn push(v: &mut Layers, l: Layer) -> Option<()> {
    v.push(l).ok()
}

/// An MLP generator for `h × w` images: a dense layer and `act` for each hidden width, a dense
/// layer to `h·w` pixels, the output activation `out`, and a view as `1 × h × w`. `None` if
/// that is more than [`MAX_LAYERS`] layers.
pub fn mlp_generator(hidden: &[u32], act: Layer, out: Layer, h: u32, w: u32) -> Option<Layers> {
    let mut v = Layers::new();
    for &width in hidden {
        push(&mut v, Layer::Dense { out: width })?;
        push(&mut v, act)?;
    }
    push(&mut v, Layer::Dense { out: h * w })?;
    push(&mut v, out)?;
    push(&mut v, Layer::Reshape { to: Shape::image(1, h, w) })?;
    Some(v)
}

/// An MLP discriminator: a dense layer, LeakyReLU(0.2) and (when `dropout > 0`) dropout for
/// each hidden width, then (optionally) minibatch discrimination with `(kernels, dims)`, a dense
/// layer to `outputs` values (one score; or, for a projection discriminator, the unconditional
/// score followed by one projection per class), and a Sigmoid when `sigmoid` (for BCE on
/// probabilities).
pub fn mlp_discriminator(
    hidden: &[u32], dropout: f32, minibatch: Option<(u32, u32)>, outputs: u32, sigmoid: bool,
) -> Option<Layers> {
    let mut v = Layers::new();
    for &width in hidden {
        push(&mut v, Layer::Dense { out: width })?;
        push(&mut v, LEAKY)?;
        if dropout > 0.0 {
            push(&mut v, Layer::Dropout { p: dropout })?;
        }
    }
    if let Some((kernels, dims)) = minibatch {
        push(&mut v, Layer::MinibatchDisc { kernels, dims })?;
    }
    push(&mut v, Layer::Dense { out: outputs })?;
    if sigmoid {
        push(&mut v, Layer::Sigmoid)?;
    }
    Some(v)
}

/// A convolutional generator for `h × w` images (both divisible by 4): dense to
/// `c0 × h/4 × w/4`, BN, ReLU, a transposed convolution to `c1` channels (twice the side), BN,
/// ReLU, a transposed convolution to one channel (the full size), the output activation `out`.
pub const fn conv_generator_layers(h: u32, w: u32, c0: u32, c1: u32, out: Layer) -> [Layer; 9] {
    let (h4, w4) = (h / 4, w / 4);
    // Saturated, not wrapped: a size past u32 gives a network that fails its shape checks.
    [
        Layer::Dense { out: c0.saturating_mul(h4).saturating_mul(w4) },
        Layer::Reshape { to: Shape::image(c0, h4, w4) },
        BN,
        Layer::Relu,
        up(c1),
        BN,
        Layer::Relu,
        up(1),
        out,
    ]
}

/// [`conv_generator_layers`] as a layer list.
pub fn conv_generator(h: u32, w: u32, c0: u32, c1: u32, out: Layer) -> Layers {
    Layers::from_slice(&conv_generator_layers(h, w, c0, c1, out)).unwrap_or_default()
}

/// The DCGAN generator for `h × w` images (both divisible by 4): [`conv_generator_layers`]
/// with 128 and 64 channels.
pub const fn dcgan_generator_layers(h: u32, w: u32, out: Layer) -> [Layer; 9] {
    conv_generator_layers(h, w, 128, 64, out)
}

/// [`dcgan_generator_layers`] as a layer list.
pub fn dcgan_generator(h: u32, w: u32, out: Layer) -> Layers {
    Layers::from_slice(&dcgan_generator_layers(h, w, out)).unwrap_or_default()
}

/// The DCGAN discriminator for `h × w` images: convolutions to 64 and 128 channels (the second
/// with BN), LeakyReLU(0.2) after each, a dense layer to one score.
pub const fn dcgan_discriminator_layers(h: u32, w: u32) -> [Layer; 8] {
    [
        Layer::Reshape { to: Shape::image(1, h, w) },
        down(64),
        LEAKY,
        down(128),
        BN,
        LEAKY,
        Layer::Flatten,
        Layer::Dense { out: 1 },
    ]
}

/// [`dcgan_discriminator_layers`] as a layer list, with a Sigmoid after the score when
/// `sigmoid` (for BCE on probabilities).
pub fn dcgan_discriminator(h: u32, w: u32, sigmoid: bool) -> Layers {
    let mut v = Layers::from_slice(&dcgan_discriminator_layers(h, w)).unwrap_or_default();
    if sigmoid {
        let _ = v.push(Layer::Sigmoid);
    }
    v
}

/// The `mcu` generator for 28×28 digits (Tanh output), the architecture of the firmware's
/// default weights: input [`MCU`]`.latent` noise values.
pub const MCU_GENERATOR: [Layer; 7] = [
    Layer::Dense { out: 128 },
    LEAKY,
    Layer::Dense { out: 192 },
    LEAKY,
    Layer::Dense { out: 784 },
    Layer::Tanh,
    Layer::Reshape { to: Shape::image(1, 28, 28) },
];

/// The `dcgan` generator for 28×28 digits (Tanh output): input [`DCGAN_LATENT`] noise values.
pub const DCGAN_GENERATOR: [Layer; 9] = dcgan_generator_layers(28, 28, Layer::Tanh);

/// The `pico` generator for 28×28 digits (Tanh output): input [`PICO`]`.latent` noise values
/// and a one-hot class of [`PICO_CLASSES`].
pub const PICO_GENERATOR: [Layer; 9] =
    conv_generator_layers(28, 28, PICO.channels[0], PICO.channels[1], Layer::Tanh);

/// The `pico` generator as a network spec (checked at compile time).
pub const PICO_SPEC: Spec<'static> =
    Spec::new_const(Shape::flat(PICO.latent + PICO_CLASSES), &PICO_GENERATOR);

/// The `mcu` generator as a network spec (checked at compile time).
pub const MCU_SPEC: Spec<'static> = Spec::new_const(Shape::flat(MCU.latent), &MCU_GENERATOR);

/// The `dcgan` discriminator for 28×28 digits (one logit out).
pub const DCGAN_DISCRIMINATOR: [Layer; 8] = dcgan_discriminator_layers(28, 28);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_the_builders_at_28x28() {
        let g = mlp_generator(MCU.g_hidden, LEAKY, Layer::Tanh, 28, 28).unwrap();
        assert_eq!(&g[..], &MCU_GENERATOR);
        assert_eq!(&dcgan_generator(28, 28, Layer::Tanh)[..], &DCGAN_GENERATOR);
        assert_eq!(&dcgan_discriminator(28, 28, false)[..], &DCGAN_DISCRIMINATOR);
        let mcu = Spec::new(Shape::flat(MCU.latent), &MCU_GENERATOR).unwrap();
        assert_eq!(mcu.output(), Shape::image(1, 28, 28));
        let d = mlp_discriminator(MCU.d_hidden, 0.0, None, 1, false).unwrap();
        let d = Spec::new(Shape::flat(784), &d).unwrap();
        // The README's parameter counts.
        assert_eq!(mcu.iter().map(|l| l.weight_len + l.bias_len).sum::<usize>(), 184_400);
        assert_eq!(d.output(), Shape::flat(1));
        let g = mlp_generator(CLASSIC.g_hidden, LEAKY, Layer::Tanh, 28, 28).unwrap();
        let g = Spec::new(Shape::flat(CLASSIC.latent), &g).unwrap();
        assert_eq!(g.iter().map(|l| l.weight_len + l.bias_len).sum::<usize>(), 1_486_352);
        let dc = Spec::new(Shape::flat(DCGAN_LATENT), &DCGAN_GENERATOR).unwrap();
        assert_eq!(dc.output(), Shape::image(1, 28, 28));
        assert!(mlp_generator(&[8; 40], LEAKY, Layer::Tanh, 28, 28).is_none());
        let [c0, c1] = PICO.channels;
        assert_eq!(&conv_generator(28, 28, c0, c1, Layer::Tanh)[..], &PICO_GENERATOR);
        assert_eq!(PICO_SPEC.output(), Shape::image(1, 28, 28));
        // The widest activation: the 16 × 14 × 14 map.
        assert_eq!(PICO_SPEC.max_features(), 16 * 14 * 14);
        assert_eq!(MCU_SPEC.max_features(), 784);
        // Sizes past u32 (huge images and widths) neither wrap nor panic: the network is
        // refused by its shape checks.
        let huge = conv_generator(1 << 20, 1 << 20, 1 << 16, 16, Layer::Tanh);
        assert_eq!(huge[0], Layer::Dense { out: u32::MAX });
        assert!(Spec::new(Shape::flat(32), &huge).is_err());
    }
}
