//! Network specs: a list of layers with shapes, and every size and offset derived from it.
//!
//! A [`Spec`] borrows a slice of [`Layer`]s and an input [`Shape`]. From it, without
//! allocation (and in `const` context), come:
//! - the parameter count and the offset of every layer's tensors in one flat parameter buffer
//!   ([`Spec::param_len`], [`Spec::layer`]);
//! - the activation buffer length for a training batch ([`Spec::act_len`]): the input and every
//!   layer output, one after another, so backward can read them;
//! - the scratch length for inference ([`Spec::infer_scratch_len`]): two ping-pong buffers of the
//!   widest activation.
//!
//! Parameter layout per layer (all inside the one flat buffer, weights first, then bias):
//! - `Dense { out }` with `in = in_shape.len()`: `W` is `in × out` row-major (row `i` holds the
//!   weights from input `i` to every output), then `b` of length `out`.
//! - activation and view layers have no parameters.
//!
//! Every tensor starts at a multiple of [`PARAM_ALIGN`] elements (16 bytes); the gaps are zero.
//! The weights file stores this buffer as is, so firmware can run from it in place, with every
//! tensor 16-byte aligned in flash.

use serde::{Deserialize, Serialize};

use crate::error::SpecError;

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

/// One layer of a network.
///
/// New layer kinds are appended at the end so the postcard encoding of existing variants (the
/// variant index) never changes and old weight files stay readable.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Layer {
    /// Fully connected: `y = x·W + b` over the flattened input.
    Dense {
        /// Output features.
        out: u32,
    },
    /// `max(x, 0)`.
    Relu,
    /// `x` if `x > 0`, else `alpha·x`.
    LeakyRelu {
        /// Negative slope, finite and `>= 0`.
        alpha: f32,
    },
    /// Hyperbolic tangent.
    Tanh,
    /// Logistic sigmoid.
    Sigmoid,
    /// View as a flat vector (no copy).
    Flatten,
    /// View as another shape with the same element count (no copy).
    Reshape {
        /// Target shape.
        to: Shape,
    },
    /// Minibatch discrimination ([`crate::mbd`]): appends `kernels` batch-similarity features
    /// to the flattened input. Parameters: tensor `T` of `in × kernels × dims`, no bias.
    /// Couples the samples of a batch, so it belongs in discriminators only.
    MinibatchDisc {
        /// Similarity kernels `B` (features added).
        kernels: u32,
        /// Dimensions `C` per kernel.
        dims: u32,
    },
}

impl Layer {
    /// Output shape for input shape `inp`. `index` is only used for error reports.
    pub const fn out_shape(&self, inp: Shape, index: usize) -> Result<Shape, SpecError> {
        let in_len = match inp.checked_len() {
            Some(n) if n > 0 => n,
            _ => return Err(SpecError::BadDimension { layer: index }),
        };
        match *self {
            Layer::Dense { out } => {
                if out == 0 {
                    Err(SpecError::BadDimension { layer: index })
                } else {
                    Ok(Shape::flat(out))
                }
            }
            Layer::LeakyRelu { alpha } => {
                // Written so NaN fails too.
                if alpha >= 0.0 && alpha <= 1.0e6 {
                    Ok(inp)
                } else {
                    Err(SpecError::BadParameter { layer: index })
                }
            }
            Layer::Relu | Layer::Tanh | Layer::Sigmoid => Ok(inp),
            Layer::Flatten => {
                if in_len > u32::MAX as usize {
                    Err(SpecError::BadDimension { layer: index })
                } else {
                    Ok(Shape::flat(in_len as u32))
                }
            }
            Layer::Reshape { to } => match to.checked_len() {
                Some(n) if n == in_len => Ok(to),
                _ => Err(SpecError::ShapeMismatch { layer: index }),
            },
            Layer::MinibatchDisc { kernels, dims } => {
                if kernels == 0 || dims == 0 {
                    return Err(SpecError::BadDimension { layer: index });
                }
                match in_len.checked_add(kernels as usize) {
                    Some(n) if n <= u32::MAX as usize => Ok(Shape::flat(n as u32)),
                    _ => Err(SpecError::BadDimension { layer: index }),
                }
            }
        }
    }

    /// Weight elements per input element (the weight tensor is `inp.len() ×` this).
    const fn weight_factor(&self) -> usize {
        match *self {
            Layer::Dense { out } => out as usize,
            Layer::MinibatchDisc { kernels, dims } => kernels as usize * dims as usize,
            _ => 0,
        }
    }

    /// Number of weight elements (excluding bias) for input shape `inp`.
    pub const fn weight_len(&self, inp: Shape) -> usize {
        inp.len() * self.weight_factor()
    }

    /// Extra activation storage per sample that a layer keeps beside its output (the
    /// similarity tensor of minibatch discrimination and its gradient).
    pub const fn aux_len(&self) -> usize {
        match *self {
            Layer::MinibatchDisc { kernels, dims } => 2 * kernels as usize * dims as usize,
            _ => 0,
        }
    }

    /// Number of bias elements.
    pub const fn bias_len(&self) -> usize {
        match *self {
            Layer::Dense { out } => out as usize,
            _ => 0,
        }
    }

    /// Weights plus bias.
    pub const fn param_len(&self, inp: Shape) -> usize {
        self.weight_len(inp) + self.bias_len()
    }

    /// True for layers that only reinterpret their input (their output aliases the input).
    pub const fn is_view(&self) -> bool {
        matches!(self, Layer::Flatten | Layer::Reshape { .. })
    }

    /// Short lowercase name, for summaries.
    pub const fn name(&self) -> &'static str {
        match self {
            Layer::Dense { .. } => "dense",
            Layer::Relu => "relu",
            Layer::LeakyRelu { .. } => "leaky_relu",
            Layer::Tanh => "tanh",
            Layer::Sigmoid => "sigmoid",
            Layer::Flatten => "flatten",
            Layer::Reshape { .. } => "reshape",
            Layer::MinibatchDisc { .. } => "minibatch_disc",
        }
    }

    /// Multiply-accumulates per sample in the forward pass.
    pub const fn macs(&self, inp: Shape) -> usize {
        self.weight_len(inp)
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
    /// Offset of this layer's input in the activation buffer, in elements **per sample**:
    /// multiply by the batch size `n` to get the element offset.
    pub act_in: usize,
    /// Offset of this layer's output in the activation buffer, per sample (see `act_in`).
    /// Equal to `act_in` for view layers.
    pub act_out: usize,
    /// Offset of this layer's auxiliary storage ([`Layer::aux_len`]), per sample; it follows
    /// the output.
    pub act_aux: usize,
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
    /// Range of all this layer's parameters (weights, padding, bias, padding).
    pub const fn param_range(&self) -> core::ops::Range<usize> {
        self.param_offset..self.bias_offset + align_param(self.bias_len)
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
        n * self.act_aux..n * (self.act_aux + self.layer.aux_len())
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
            let out = match layer.out_shape(shape, i) {
                Ok(s) => s,
                Err(e) => return Err(e),
            };
            let out_len = match out.checked_len() {
                Some(n) if n > 0 => n,
                _ => return Err(SpecError::BadDimension { layer: i }),
            };
            let w = match shape.len().checked_mul(layer.weight_factor()) {
                Some(w) => w,
                None => return Err(SpecError::BadDimension { layer: i }),
            };
            // Same arithmetic as LayerIter: weights and bias each start aligned.
            param_len = match param_len.checked_add(align_param(w)) {
                Some(p) => match p.checked_add(align_param(layer.bias_len())) {
                    Some(p) if p < usize::MAX / 8 => p,
                    _ => return Err(SpecError::BadDimension { layer: i }),
                },
                None => return Err(SpecError::BadDimension { layer: i }),
            };
            if !layer.is_view() {
                act_per_sample = match act_per_sample.checked_add(out_len) {
                    Some(a) => match a.checked_add(layer.aux_len()) {
                        Some(a) => a,
                        None => return Err(SpecError::BadDimension { layer: i }),
                    },
                    None => return Err(SpecError::BadDimension { layer: i }),
                };
            }
            if layer.aux_len() > max_aux {
                max_aux = layer.aux_len();
            }
            if out_len > max_features {
                max_features = out_len;
            }
            shape = out;
            i += 1;
        }
        Ok(Spec {
            input,
            layers,
            param_len,
            act_per_sample,
            max_features,
            max_aux,
            output: shape,
        })
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
    /// Total parameter elements (all weights and biases).
    pub const fn param_len(&self) -> usize {
        self.param_len
    }
    /// Largest activation (input or any layer output), elements per sample.
    pub const fn max_features(&self) -> usize {
        self.max_features
    }
    /// Activation buffer length for a training batch of `n`: the input followed by every
    /// non-view layer output.
    pub const fn act_len(&self, n: usize) -> usize {
        self.act_per_sample * n
    }
    /// Scratch length for [`crate::model::infer`] with batch `n`: two ping-pong buffers.
    pub const fn infer_scratch_len(&self, n: usize) -> usize {
        2 * self.max_features * n
    }
    /// Scratch length for [`crate::model::backward`] with batch `n`: two ping-pong gradient
    /// buffers plus the largest auxiliary buffer of any layer.
    pub const fn backward_scratch_len(&self, n: usize) -> usize {
        (2 * self.max_features + self.max_aux) * n
    }
    /// Multiply-accumulates per sample for one forward pass.
    pub fn macs(&self) -> usize {
        self.iter().map(|l| l.layer.macs(l.in_shape)).sum()
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
        let out_shape = layer
            .out_shape(self.shape, self.index)
            .unwrap_or(self.shape);
        let (act_out, next) = if layer.is_view() {
            (self.act_in, self.act_next)
        } else {
            (
                self.act_next,
                self.act_next + out_shape.len() + layer.aux_len(),
            )
        };
        let weight_len = layer.weight_len(self.shape);
        let info = LayerInfo {
            index: self.index,
            layer,
            in_shape: self.shape,
            out_shape,
            param_offset: self.param_offset,
            weight_len,
            bias_offset: self.param_offset + align_param(weight_len),
            bias_len: layer.bias_len(),
            act_in: self.act_in,
            act_out,
            act_aux: act_out + out_shape.len(),
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
mod tests {
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
        assert_eq!(
            (l.weight_range(), l.bias_range(), odd.param_len()),
            (0..9, 12..15, 16)
        );
        assert_eq!(l2.act_in, 5 + 8);
        assert_eq!(l2.act_out, 5 + 8 + 8);
        assert_eq!(S.layer(3).unwrap().out_range(2), 2 * 24..2 * 27);
        assert_eq!(S.macs(), 5 * 8 + 8 * 3);
    }

    #[test]
    fn views_alias_their_input() {
        let layers = [
            Layer::Dense { out: 12 },
            Layer::Reshape {
                to: Shape::image(3, 2, 2),
            },
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
            Spec::new(
                Shape::flat(3),
                &[Layer::Reshape {
                    to: Shape::image(1, 2, 2)
                }]
            ),
            Err(SpecError::ShapeMismatch { layer: 0 })
        );
        assert_eq!(
            Spec::new(Shape::flat(3), &[Layer::LeakyRelu { alpha: f32::NAN }]),
            Err(SpecError::BadParameter { layer: 0 })
        );
        assert_eq!(
            Spec::new(
                Shape::flat(u32::MAX),
                &[
                    Layer::Dense { out: u32::MAX },
                    Layer::Dense { out: u32::MAX }
                ]
            )
            .err()
            .map(|_| ()),
            Some(())
        );
    }
}
