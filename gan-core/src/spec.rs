//! Network specs: a list of layers with shapes, and every size and offset derived from it.
//!
//! A [`Spec`] borrows a slice of [`Layer`]s and an input [`Shape`]. From it, without
//! allocation (and in `const` context), come:
//! - the parameter count and the offset of every layer's tensors in one flat parameter buffer
//!   ([`Spec::param_len`], [`Spec::layer`]);
//! - the activation buffer length for a training batch ([`Spec::act_len`]): the input and every
//!   layer output, one after another, so backward can read them;
//! - the scratch length for inference ([`Spec::infer_scratch_len`]): two ping-pong buffers of the
//!   widest activation; for backward ([`Spec::backward_scratch_len`]): the same plus the widest
//!   auxiliary storage.
//!
//! Parameter layout per layer (all inside the one flat buffer: weights, then bias, then the
//! running statistics of batch normalisation), with `C`, `H`, `W` the layer's input shape:
//! - `Dense { out }` with `in = in_shape.len()`: `W` is `in × out` row-major (row `i` holds the
//!   weights from input `i` to every output), then `b` of length `out`.
//! - `Conv2d { out_c, k, .. }`: `W` is `out_c × C × k × k` (row `o` of the `out_c × (C·k·k)`
//!   matrix holds every weight of output channel `o`; inside a row, input channel, then kernel
//!   row `ky`, then kernel column `kx`), then `b` of length `out_c`. The training kernel is
//!   `out = W · im2col(x)` per sample, so this is exactly the left operand (see [`crate::layers::conv2d`]).
//! - `ConvTranspose2d { out_c, k, .. }`: `W` is `C × out_c × k × k` (input channel first), the
//!   same buffer a `Conv2d` from `out_c` to `C` channels would use, so the layer is that
//!   convolution's adjoint; then `b` of length `out_c`.
//! - `BatchNorm`: weights are `γ` (length `C`), bias is `β` (length `C`), then a statistics
//!   tensor of `2·C`: running mean (`C`), then running variance (`C`). The statistics are not
//!   trained: their gradient is always zero and [`crate::model::update_running_stats`] writes
//!   them (see [`crate::layers::batch_norm`]). [`LayerInfo::stats_range`] locates them.
//! - activation, pooling, dropout and view layers have no parameters.
//!
//! Every tensor starts at a multiple of [`PARAM_ALIGN`] elements (16 bytes); the gaps are zero.
//! The weights file stores this buffer as is, so firmware can run from it in place, with every
//! tensor 16-byte aligned in flash.
//!
//! Auxiliary activation storage ([`Layer::aux_len`], per sample, right after a layer's output in
//! the activation buffer; `P = out_h·out_w` of a `Conv2d`, `Q = H·W` of a `ConvTranspose2d`):
//! - `MinibatchDisc`: `2·B·C` (the similarity tensor `M` and its gradient);
//! - `Conv2d`: `C·k·k·P + out_c·P`, the sample's im2col matrix (written by forward and read by
//!   backward for the weight gradient) and its share of the staging grid, laid out in groups
//!   of samples (see [`crate::layers::conv2d`]);
//! - `ConvTranspose2d`: `out_c·k·k·Q + C·Q`, forward's column buffer (`Wᵀ·x` before col2im)
//!   and staging grid, likewise;
//! - `MaxPool2d`: one per output element: the argmax's position inside its window, as f32;
//! - `BatchNorm`: `2·C`; the first `2·C` of the batch's region hold the batch mean and biased
//!   variance of every channel (the rest is unused);
//! - `Dropout`: one per input element: the mask (`0` or `1/(1−p)`).
//!
//! The convolutions' column buffers dominate: in the 28×28 DCGAN the 64↔128-channel layers
//! keep 50 176 values per sample, 8× their output. They live here because the training
//! forward pass takes no scratch buffer; the memory buys im2col + blocked matrix products
//! (and, for `Conv2d`, a backward pass that does not redo im2col). Inference needs none of it.

use serde::{Deserialize, Serialize};

use crate::error::SpecError;
pub use crate::layers::Layer;
use crate::layers::{self, Sizes};

/// Shape of one sample, channels first: `C × H × W`. A flat vector of `F` features is `(F, 1, 1)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Shape {
    /// Channels.
    pub c: u32,
    /// Height.
    pub h: u32,
    /// Width.
    pub w: u32,
}

impl Shape {
    /// A flat feature vector of `f` elements.
    pub const fn flat(f: u32) -> Self {
        Shape { c: f, h: 1, w: 1 }
    }

    /// A `c × h × w` image.
    pub const fn image(c: u32, h: u32, w: u32) -> Self {
        Shape { c, h, w }
    }

    /// Number of elements, or `None` on overflow.
    pub const fn checked_len(&self) -> Option<usize> {
        match (self.c as usize).checked_mul(self.h as usize) {
            Some(ch) => ch.checked_mul(self.w as usize),
            None => None,
        }
    }

    /// Number of elements. Only meaningful for shapes inside a validated [`Spec`].
    pub const fn len(&self) -> usize {
        match self.checked_len() {
            Some(n) => n,
            None => 0,
        }
    }

    /// True if any dimension is zero.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channels, height and width as indices.
    pub const fn chw(&self) -> (usize, usize, usize) {
        (self.c as usize, self.h as usize, self.w as usize)
    }
}

impl core::fmt::Display for Shape {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.h == 1 && self.w == 1 {
            write!(f, "{}", self.c)
        } else {
            write!(f, "{}×{}×{}", self.c, self.h, self.w)
        }
    }
}

impl Layer {
    /// Output shape for input shape `inp`. `index` is only used for error reports.
    pub const fn out_shape(&self, inp: Shape, index: usize) -> Result<Shape, SpecError> {
        match layers::rules(self, inp, index) {
            Ok(r) => Ok(r.out),
            Err(e) => Err(e),
        }
    }

    /// Every tensor and auxiliary size for input `inp` (zeros if the layer does not accept
    /// `inp`; only meaningful for shapes inside a validated [`Spec`], where it never fails).
    const fn sizes_or_zero(&self, inp: Shape) -> Sizes {
        match layers::rules(self, inp, 0) {
            Ok(r) => r.sizes,
            Err(_) => Sizes::NONE,
        }
    }

    /// Number of weight elements (excluding bias) for input shape `inp`: `in·out` for `Dense`,
    /// `out_c·C·k·k` for both convolutions, `C` (`γ`) for `BatchNorm`.
    pub const fn weight_len(&self, inp: Shape) -> usize {
        self.sizes_or_zero(inp).weight
    }

    /// Extra activation storage per sample that a layer keeps beside its output, for input
    /// shape `inp` (see the module docs for what each layer keeps there).
    pub const fn aux_len(&self, inp: Shape) -> usize {
        self.sizes_or_zero(inp).aux
    }

    /// Number of bias elements for input shape `inp` (`β` for `BatchNorm`).
    pub const fn bias_len(&self, inp: Shape) -> usize {
        self.sizes_or_zero(inp).bias
    }

    /// Number of non-trained state elements stored after the bias: `2·C` (running mean, running
    /// variance) for `BatchNorm`, else 0.
    pub const fn stats_len(&self, inp: Shape) -> usize {
        self.sizes_or_zero(inp).stats
    }

    /// Weights plus bias plus running statistics (without alignment padding).
    pub const fn param_len(&self, inp: Shape) -> usize {
        let s = self.sizes_or_zero(inp);
        s.weight + s.bias + s.stats
    }
}

/// Everything the network walker needs to know about one layer, for a given spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerInfo {
    /// Position in the spec.
    pub index: usize,
    /// The layer.
    pub layer: Layer,
    /// Shape of one input sample.
    pub in_shape: Shape,
    /// Shape of one output sample.
    pub out_shape: Shape,
    /// Offset of this layer's weights in the flat parameter buffer.
    pub param_offset: usize,
    /// Weight elements (bias excluded).
    pub weight_len: usize,
    /// Offset of this layer's bias (the weights' end rounded up to [`PARAM_ALIGN`]).
    pub bias_offset: usize,
    /// Bias elements.
    pub bias_len: usize,
    /// Offset of this layer's running statistics (the bias' end rounded up to
    /// [`PARAM_ALIGN`]); see [`Layer::stats_len`].
    pub stats_offset: usize,
    /// Running-statistics elements (`2·C` for `BatchNorm`, else 0).
    pub stats_len: usize,
    /// Offset of this layer's input in the activation buffer, in elements **per sample**:
    /// multiply by the batch size `n` to get the element offset.
    pub act_in: usize,
    /// Offset of this layer's output in the activation buffer, per sample (see `act_in`).
    /// Equal to `act_in` for view layers.
    pub act_out: usize,
    /// Offset of this layer's auxiliary storage ([`Layer::aux_len`]), per sample; it follows
    /// the output (view layers have none).
    pub act_aux: usize,
    /// A view layer (`Flatten`, `Reshape`): its output aliases its input and no pass does any
    /// work for it.
    pub view: bool,
}

impl LayerInfo {
    /// Range of the weights in the flat parameter buffer.
    pub const fn weight_range(&self) -> core::ops::Range<usize> {
        self.param_offset..self.param_offset + self.weight_len
    }
    /// Range of the bias in the flat parameter buffer.
    pub const fn bias_range(&self) -> core::ops::Range<usize> {
        self.bias_offset..self.bias_offset + self.bias_len
    }
    /// Range of the running statistics in the flat parameter buffer (empty for all layers but
    /// `BatchNorm`, where it holds the running mean, then the running variance).
    pub const fn stats_range(&self) -> core::ops::Range<usize> {
        self.stats_offset..self.stats_offset + self.stats_len
    }
    /// Range of all this layer's parameters (weights, padding, bias, padding, statistics,
    /// padding).
    pub const fn param_range(&self) -> core::ops::Range<usize> {
        self.param_offset..self.stats_offset + align_param(self.stats_len)
    }
    /// Input range in an activation buffer for batch `n`.
    pub const fn in_range(&self, n: usize) -> core::ops::Range<usize> {
        n * self.act_in..n * (self.act_in + self.in_shape.len())
    }
    /// Output range in an activation buffer for batch `n`.
    pub const fn out_range(&self, n: usize) -> core::ops::Range<usize> {
        n * self.act_out..n * (self.act_out + self.out_shape.len())
    }
    /// Auxiliary range in an activation buffer for batch `n` (empty for most layers).
    pub const fn aux_range(&self, n: usize) -> core::ops::Range<usize> {
        n * self.act_aux..n * (self.act_aux + self.layer.aux_len(self.in_shape))
    }
}

/// A validated network: an input shape and a list of layers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spec<'a> {
    input: Shape,
    layers: &'a [Layer],
    // Cached totals (computed once by `new`).
    param_len: usize,
    act_per_sample: usize,
    max_features: usize,
    max_aux: usize,
    output: Shape,
}

/// Upper bound on layers in one spec, so every walk is bounded.
pub const MAX_LAYERS: usize = 64;

/// Every parameter tensor starts at a multiple of this many elements (16 bytes of f32).
pub const PARAM_ALIGN: usize = 4;

/// Rounds `x` up to a multiple of [`PARAM_ALIGN`].
pub const fn align_param(x: usize) -> usize {
    x.div_ceil(PARAM_ALIGN) * PARAM_ALIGN
}

impl<'a> Spec<'a> {
    /// Validates the chain of shapes and computes sizes. Usable in `const` context.
    pub const fn new(input: Shape, layers: &'a [Layer]) -> Result<Self, SpecError> {
        if layers.is_empty() {
            return Err(SpecError::Empty);
        }
        if layers.len() > MAX_LAYERS {
            return Err(SpecError::TooManyLayers);
        }
        let mut shape = input;
        let mut max_features = match input.checked_len() {
            Some(n) if n > 0 => n,
            _ => return Err(SpecError::BadDimension { layer: usize::MAX }),
        };
        let mut act_per_sample = max_features;
        let mut max_aux = 0;
        let mut param_len: usize = 0;
        let mut i = 0;
        while i < layers.len() {
            let layer = layers[i];
            let rules = match layers::rules(&layer, shape, i) {
                Ok(r) => r,
                Err(e) => return Err(e),
            };
            let (out, sizes) = (rules.out, rules.sizes);
            let out_len = match out.checked_len() {
                Some(n) if n > 0 => n,
                _ => return Err(SpecError::BadDimension { layer: i }),
            };
            // Same arithmetic as LayerIter: weights, bias and statistics each start aligned.
            // Every tensor is far below usize::MAX / 8, so the rounding cannot overflow.
            let limit = usize::MAX / 8;
            if sizes.weight >= limit || sizes.bias >= limit || sizes.stats >= limit {
                return Err(SpecError::BadDimension { layer: i });
            }
            let tensors = align_param(sizes.weight) + align_param(sizes.bias);
            param_len = match param_len.checked_add(tensors + align_param(sizes.stats)) {
                Some(p) if p < limit => p,
                _ => return Err(SpecError::BadDimension { layer: i }),
            };
            if !rules.view {
                act_per_sample = match act_per_sample.checked_add(out_len) {
                    Some(a) => match a.checked_add(sizes.aux) {
                        Some(a) => a,
                        None => return Err(SpecError::BadDimension { layer: i }),
                    },
                    None => return Err(SpecError::BadDimension { layer: i }),
                };
            }
            if sizes.aux > max_aux {
                max_aux = sizes.aux;
            }
            if out_len > max_features {
                max_features = out_len;
            }
            shape = out;
            i += 1;
        }
        Ok(Spec { input, layers, param_len, act_per_sample, max_features, max_aux, output: shape })
    }

    /// Like [`Spec::new`] but panics on an invalid spec; for `const` items in firmware and tests,
    /// where a bad spec is a compile error.
    pub const fn new_const(input: Shape, layers: &'a [Layer]) -> Self {
        match Self::new(input, layers) {
            Ok(s) => s,
            Err(_) => panic!("invalid network spec"),
        }
    }

    /// Input shape of one sample.
    pub const fn input(&self) -> Shape {
        self.input
    }
    /// Output shape of one sample.
    pub const fn output(&self) -> Shape {
        self.output
    }
    /// The layers.
    pub const fn layers(&self) -> &'a [Layer] {
        self.layers
    }
    /// Total parameter elements (all weights, biases and running statistics, with padding).
    pub const fn param_len(&self) -> usize {
        self.param_len
    }
    /// Largest activation (input or any layer output), elements per sample.
    pub const fn max_features(&self) -> usize {
        self.max_features
    }
    /// Activation buffer length for a training batch of `n`: the input followed by every
    /// non-view layer output and its auxiliary storage.
    pub const fn act_len(&self, n: usize) -> usize {
        self.act_per_sample * n
    }
    /// Scratch length for [`crate::model::infer`] with batch `n`: two ping-pong buffers.
    ///
    /// Every layer's inference kernel runs from one buffer into the other (or in place), the
    /// convolutions included: they are direct fixed-order loops that need no column buffer.
    pub const fn infer_scratch_len(&self, n: usize) -> usize {
        2 * self.max_features * n
    }
    /// Scratch length for [`crate::model::backward`] with batch `n`: two ping-pong gradient
    /// buffers plus the largest auxiliary buffer of any layer (`max aux_len · n`).
    ///
    /// The auxiliary part is also the training buffer of the convolutions' backward pass:
    /// they need their `aux_len` for every sample (or for a group of them), at most that.
    pub const fn backward_scratch_len(&self, n: usize) -> usize {
        (2 * self.max_features + self.max_aux) * n
    }
    /// Multiply-accumulates per sample for one forward pass.
    pub fn macs(&self) -> usize {
        self.iter().map(|l| layers::layer_macs(&l)).sum()
    }

    /// Walks the layers with shapes and offsets. Allocation-free.
    pub fn iter(&self) -> LayerIter<'a> {
        LayerIter {
            layers: self.layers,
            index: 0,
            shape: self.input,
            param_offset: 0,
            act_in: 0,
            act_next: self.input.len(),
        }
    }

    /// Information about layer `index`, or `None` if out of range.
    pub fn layer(&self, index: usize) -> Option<LayerInfo> {
        self.iter().nth(index)
    }
}

/// Iterator over [`LayerInfo`] for a validated spec.
#[derive(Clone, Debug)]
pub struct LayerIter<'a> {
    layers: &'a [Layer],
    index: usize,
    shape: Shape,
    param_offset: usize,
    act_in: usize,
    act_next: usize,
}

impl Iterator for LayerIter<'_> {
    type Item = LayerInfo;

    fn next(&mut self) -> Option<LayerInfo> {
        let layer = *self.layers.get(self.index)?;
        // The spec was validated by `Spec::new`; the fallback is never taken.
        let rules = layers::rules(&layer, self.shape, self.index).unwrap_or(layers::Rules {
            out: self.shape,
            sizes: Sizes::NONE,
            view: true,
        });
        let (out_shape, sizes, view) = (rules.out, rules.sizes, rules.view);
        let (act_out, next) = if view {
            (self.act_in, self.act_next)
        } else {
            (self.act_next, self.act_next + out_shape.len() + sizes.aux)
        };
        let bias_offset = self.param_offset + align_param(sizes.weight);
        let info = LayerInfo {
            index: self.index,
            layer,
            in_shape: self.shape,
            out_shape,
            param_offset: self.param_offset,
            weight_len: sizes.weight,
            bias_offset,
            bias_len: sizes.bias,
            stats_offset: bias_offset + align_param(sizes.bias),
            stats_len: sizes.stats,
            act_in: self.act_in,
            act_out,
            act_aux: act_out + out_shape.len(),
            view,
        };
        self.param_offset = info.param_range().end;
        self.act_in = act_out;
        self.act_next = next;
        self.shape = out_shape;
        self.index += 1;
        Some(info)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.layers.len() - self.index;
        (n, Some(n))
    }
}

impl ExactSizeIterator for LayerIter<'_> {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MLP: [Layer; 4] = [
        Layer::Dense { out: 8 },
        Layer::LeakyRelu { alpha: 0.2 },
        Layer::Dense { out: 3 },
        Layer::Tanh,
    ];

    #[test]
    fn sizes_and_offsets() {
        const S: Spec<'static> = Spec::new_const(Shape::flat(5), &MLP);
        // 40 + 8 + 24 + 3 -> 3 padded to 4.
        assert_eq!(S.param_len(), 5 * 8 + 8 + 8 * 3 + 4);
        assert_eq!(S.max_features(), 8);
        assert_eq!(S.act_len(2), 2 * (5 + 8 + 8 + 3 + 3));
        assert_eq!(S.output(), Shape::flat(3));
        let l2 = S.layer(2).unwrap();
        assert_eq!(l2.param_offset, 48);
        assert_eq!(l2.weight_range(), 48..72);
        assert_eq!(l2.bias_range(), 72..75);
        assert_eq!(l2.param_range(), 48..76);
        let odd = Spec::new(Shape::flat(3), &[Layer::Dense { out: 3 }]).unwrap();
        let l = odd.layer(0).unwrap();
        assert_eq!((l.weight_range(), l.bias_range(), odd.param_len()), (0..9, 12..15, 16));
        assert_eq!(l2.act_in, 5 + 8);
        assert_eq!(l2.act_out, 5 + 8 + 8);
        assert_eq!(S.layer(3).unwrap().out_range(2), 2 * 24..2 * 27);
        assert_eq!(S.macs(), 5 * 8 + 8 * 3);
    }

    #[test]
    fn views_alias_their_input() {
        let layers = [
            Layer::Dense { out: 12 },
            Layer::Reshape { to: Shape::image(3, 2, 2) },
            Layer::Flatten,
            Layer::Dense { out: 1 },
        ];
        let s = Spec::new(Shape::flat(4), &layers).unwrap();
        let infos: heapless::Vec<LayerInfo, 8> = s.iter().collect();
        assert_eq!(infos[1].act_out, infos[1].act_in);
        assert_eq!(infos[1].out_shape, Shape::image(3, 2, 2));
        assert_eq!(infos[2].act_out, infos[0].act_out);
        assert_eq!(s.act_len(1), 4 + 12 + 1);
    }

    #[test]
    fn rejects_bad_specs() {
        assert_eq!(Spec::new(Shape::flat(3), &[]), Err(SpecError::Empty));
        assert_eq!(
            Spec::new(Shape::flat(0), &MLP),
            Err(SpecError::BadDimension { layer: usize::MAX })
        );
        assert_eq!(
            Spec::new(Shape::flat(3), &[Layer::Dense { out: 0 }]),
            Err(SpecError::BadDimension { layer: 0 })
        );
        assert_eq!(
            Spec::new(Shape::flat(3), &[Layer::Reshape { to: Shape::image(1, 2, 2) }]),
            Err(SpecError::ShapeMismatch { layer: 0 })
        );
        assert_eq!(
            Spec::new(Shape::flat(3), &[Layer::LeakyRelu { alpha: f32::NAN }]),
            Err(SpecError::BadParameter { layer: 0 })
        );
        assert_eq!(
            Spec::new(
                Shape::flat(u32::MAX),
                &[Layer::Dense { out: u32::MAX }, Layer::Dense { out: u32::MAX }]
            )
            .err()
            .map(|_| ()),
            Some(())
        );
    }

    /// The DCGAN generator for 28×28 digits (latent 100): the preset.
    pub(crate) const DCGAN_G: [Layer; 9] = crate::presets::DCGAN_GENERATOR;

    /// The DCGAN discriminator for 28×28 digits, on image input: the preset without its
    /// leading view of the flat pixels as an image.
    pub(crate) const DCGAN_D: &[Layer] = crate::presets::DCGAN_DISCRIMINATOR.split_at(1).1;

    #[test]
    fn dcgan_generator_shapes_and_sizes() {
        // Usable in const context, like the firmware's specs.
        const G: Spec<'static> = Spec::new_const(Shape::flat(100), &DCGAN_G);
        let shapes: heapless::Vec<Shape, 16> = G.iter().map(|l| l.out_shape).collect();
        assert_eq!(
            &shapes[..],
            &[
                Shape::flat(6272),
                Shape::image(128, 7, 7),
                Shape::image(128, 7, 7),
                Shape::image(128, 7, 7),
                Shape::image(64, 14, 14),
                Shape::image(64, 14, 14),
                Shape::image(64, 14, 14),
                Shape::image(1, 28, 28),
                Shape::image(1, 28, 28),
            ]
        );
        assert_eq!(G.output(), Shape::image(1, 28, 28));
        let convt1 = G.layer(4).unwrap();
        assert_eq!((convt1.weight_len, convt1.bias_len), (128 * 64 * 16, 64));
        // The column matrix and the staging grid (the input's 128 × 7 × 7).
        assert_eq!(convt1.layer.aux_len(convt1.in_shape), 64 * 16 * 49 + 128 * 49);
        let convt2 = G.layer(7).unwrap();
        assert_eq!((convt2.weight_len, convt2.bias_len), (64 * 16, 1));
        assert_eq!(convt2.layer.aux_len(convt2.in_shape), 16 * 196 + 64 * 196);
        let bn1 = G.layer(2).unwrap();
        assert_eq!((bn1.weight_len, bn1.bias_len, bn1.stats_len), (128, 128, 256));
        // Dense 627200 + 6272; BN 128 + 128 + 256; ConvT 131072 + 64; BN 64 + 64 + 128;
        // ConvT 1024 + 1 (padded to 4).
        let want = 627_200 + 6272 + 512 + 131_072 + 64 + 256 + 1024 + 4;
        assert_eq!(G.param_len(), want);
        assert_eq!(G.iter().last().unwrap().param_range().end, want);
        let act = 100
            + 6272
            + (6272 + 256)
            + 6272
            + (12_544 + 50_176 + 6272)
            + (12_544 + 128)
            + 12_544
            + (784 + 3136 + 12_544)
            + 784;
        assert_eq!(G.act_len(1), act);
        assert_eq!(G.max_features(), 12_544);
        assert_eq!(G.backward_scratch_len(2), 2 * (2 * 12_544 + 50_176 + 6272));
        assert_eq!(G.macs(), 627_200 + 6272 + 128 * 64 * 16 * 49 + 12_544 + 64 * 16 * 196);
    }

    #[test]
    fn dcgan_discriminator_shapes_and_sizes() {
        let d = Spec::new(Shape::image(1, 28, 28), DCGAN_D).unwrap();
        let shapes: heapless::Vec<Shape, 16> = d.iter().map(|l| l.out_shape).collect();
        assert_eq!(
            &shapes[..],
            &[
                Shape::image(64, 14, 14),
                Shape::image(64, 14, 14),
                Shape::image(128, 7, 7),
                Shape::image(128, 7, 7),
                Shape::image(128, 7, 7),
                Shape::flat(6272),
                Shape::flat(1),
            ]
        );
        let c1 = d.layer(0).unwrap();
        assert_eq!((c1.weight_len, c1.bias_len), (64 * 16, 64));
        // The column matrix and the staging grid (the output's 64 × 14 × 14).
        assert_eq!(c1.layer.aux_len(c1.in_shape), 16 * 196 + 64 * 196);
        let c2 = d.layer(2).unwrap();
        assert_eq!((c2.weight_len, c2.bias_len), (128 * 64 * 16, 128));
        assert_eq!(c2.layer.aux_len(c2.in_shape), 64 * 16 * 49 + 128 * 49);
        assert_eq!(c2.param_offset, 1024 + 64);
        assert_eq!(d.macs(), 1024 * 196 + 131_072 * 49 + 6272 + 6272);
        // The flatten aliases the LeakyReLU's output.
        assert_eq!(d.layer(5).unwrap().act_out, d.layer(4).unwrap().act_out);
    }

    #[test]
    fn batch_norm_layout_and_aux() {
        let layers = [
            Layer::Dense { out: 6 },
            crate::presets::BN,
            Layer::Dropout { p: 0.5 },
            Layer::Reshape { to: Shape::image(1, 2, 3) },
            Layer::MaxPool2d { k: 2, stride: 1 },
        ];
        let s = Spec::new(Shape::flat(5), &layers).unwrap();
        let bn = s.layer(1).unwrap();
        // Dense: 30 weights (padded to 32) + 6 bias (padded to 8) = 40.
        assert_eq!(bn.param_offset, 40);
        assert_eq!(bn.weight_range(), 40..46);
        assert_eq!(bn.bias_range(), 48..54);
        assert_eq!(bn.stats_range(), 56..68);
        assert_eq!(bn.param_range(), 40..68);
        assert_eq!(s.param_len(), 68);
        // Layers without statistics keep their old ranges: empty statistics at the bias end.
        let dense = s.layer(0).unwrap();
        assert_eq!(dense.stats_range(), 40..40);
        assert_eq!(dense.param_range(), 0..40);
        let drop = s.layer(2).unwrap();
        assert_eq!(drop.param_range(), 68..68);
        // Aux: BN 2·6, dropout 6 (its mask), max pool one per output (1×1×2).
        assert_eq!(bn.layer.aux_len(bn.in_shape), 12);
        assert_eq!(drop.layer.aux_len(drop.in_shape), 6);
        let pool = s.layer(4).unwrap();
        assert_eq!(pool.out_shape, Shape::image(1, 1, 2));
        assert_eq!(pool.layer.aux_len(pool.in_shape), 2);
        assert_eq!(bn.aux_range(3), 3 * (5 + 6 + 6)..3 * (5 + 6 + 6 + 12));
        assert_eq!(s.act_len(1), 5 + 6 + (6 + 12) + (6 + 6) + (2 + 2));
    }

    #[test]
    fn rejects_bad_new_layers() {
        let img = Shape::image(2, 5, 5);
        let one = |l: Layer| Spec::new(img, core::slice::from_ref(&l)).map(|s| s.output());
        let conv = |out_c, k, stride, pad| Layer::Conv2d { out_c, k, stride, pad };
        let convt = |out_c, k, stride, pad| Layer::ConvTranspose2d { out_c, k, stride, pad };
        let bad_dim = Err(SpecError::BadDimension { layer: 0 });
        let bad_par = Err(SpecError::BadParameter { layer: 0 });
        let mismatch = Err(SpecError::ShapeMismatch { layer: 0 });
        assert_eq!(one(conv(3, 3, 1, 1)), Ok(Shape::image(3, 5, 5)));
        assert_eq!(one(conv(3, 3, 2, 0)), Ok(Shape::image(3, 2, 2)));
        assert_eq!(one(conv(0, 3, 1, 1)), bad_dim);
        assert_eq!(one(conv(3, 0, 1, 0)), bad_dim);
        assert_eq!(one(conv(3, 3, 0, 1)), bad_par);
        assert_eq!(one(conv(3, 3, 1, 3)), bad_par); // pad >= k
        assert_eq!(one(conv(3, 8, 1, 1)), mismatch); // 8 > 5 + 2
        assert_eq!(one(conv(3, 7, 1, 1)), Ok(Shape::image(3, 1, 1)));
        assert_eq!(one(convt(3, 4, 2, 1)), Ok(Shape::image(3, 10, 10)));
        assert_eq!(one(convt(3, 4, 0, 1)), bad_par);
        assert_eq!(one(convt(3, 2, 1, 2)), bad_par);
        assert_eq!(one(convt(0, 2, 1, 0)), bad_dim);
        assert_eq!(
            Spec::new(Shape::image(1, 1, 1), &[convt(1, 3, 1, 2)]).map(|s| s.output()),
            mismatch // (1 − 1)·1 + 3 − 4 < 1
        );
        let pool = |k, stride| Layer::MaxPool2d { k, stride };
        assert_eq!(one(pool(2, 2)), Ok(Shape::image(2, 2, 2)));
        assert_eq!(one(pool(6, 1)), mismatch);
        assert_eq!(one(pool(2, 0)), bad_par);
        assert_eq!(one(pool(0, 1)), bad_dim);
        let bn = |eps, momentum| Layer::BatchNorm { eps, momentum };
        assert_eq!(one(bn(1e-5, 0.1)), Ok(img));
        for (eps, m) in [(0.0, 0.1), (f32::NAN, 0.1), (1e-5, 1.5), (1e-5, f32::NAN), (2.0, 0.1)] {
            assert_eq!(one(bn(eps, m)), bad_par, "{eps} {m}");
        }
        assert_eq!(one(Layer::Dropout { p: 0.0 }), Ok(img));
        for p in [1.0, -0.1, f32::NAN] {
            assert_eq!(one(Layer::Dropout { p }), bad_par, "{p}");
        }
        // Weight and column sizes that overflow usize are rejected, not wrapped.
        assert!(Spec::new(Shape::image(u32::MAX, 2, 2), &[conv(u32::MAX, 2, 1, 0)]).is_err());
        assert!(Spec::new(Shape::image(u32::MAX, 1, 1), &[convt(u32::MAX, 4, 1, 0)]).is_err());
        // A transposed convolution whose output side does not fit u32.
        assert!(Spec::new(Shape::image(1, u32::MAX, 1), &[convt(1, 4, 4, 0)]).is_err());
    }

    /// New variants are appended: the postcard variant index of the old ones never changes.
    #[test]
    fn layer_encoding_is_stable() {
        let cases = [
            (Layer::Dense { out: 3 }, 0u8),
            (Layer::Relu, 1),
            (Layer::Reshape { to: Shape::flat(1) }, 6),
            (Layer::MinibatchDisc { kernels: 1, dims: 1 }, 7),
            (Layer::Conv2d { out_c: 1, k: 1, stride: 1, pad: 0 }, 8),
            (Layer::ConvTranspose2d { out_c: 1, k: 1, stride: 1, pad: 0 }, 9),
            (Layer::MaxPool2d { k: 2, stride: 2 }, 10),
            (crate::presets::BN, 11),
            (Layer::Dropout { p: 0.5 }, 12),
        ];
        for (layer, index) in cases {
            let bytes = postcard::to_stdvec(&layer).unwrap();
            assert_eq!(bytes[0], index, "{layer:?}");
            assert_eq!(postcard::from_bytes::<Layer>(&bytes).unwrap(), layer);
        }
    }
}
