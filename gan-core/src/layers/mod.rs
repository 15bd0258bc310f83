//! Layer kinds: one module per kind, and the one table that maps a [`Layer`] to its kind.
//!
//! Each module owns everything about its kind: the shape rule and the sizes of its tensors and
//! auxiliary storage (`Rules`), initialisation, the training forward and backward passes,
//! exact inference and, where it has one, int8 inference. The free functions of each module
//! are the forward/backward pairs over plain slices (`dense_forward`, `dense_backward`, …);
//! the `Kind` implementation next to them adapts a [`LayerInfo`] and the network's buffers to
//! those functions.
//!
//! This file holds the only two matches over [`Layer`] in the crate: `rules` (a `const fn`,
//! so that [`crate::spec::Spec::new`] stays usable in `const` items) and `with_kind!`, which
//! turns a `Layer` into the value of its kind for everything else. Both are exhaustive with no
//! catch-all arm, so a new variant is a compile error until it has its own module and a line in
//! each of the two. The network walkers in [`crate::model`], [`crate::init`] and
//! [`crate::gp`] are loops over `with_kind!`.

use core::fmt;

use rand_core::Rng;

use crate::error::{CoreError, SpecError};
use crate::init::Init;
use crate::kernels::Exec;
use serde::{Deserialize, Serialize};

use crate::spec::{LayerInfo, Shape};

/// One layer of a network: the serialised tag of a layer kind (each kind has its module here,
/// and `rules`/`with_kind!` below map this enum to them).
///
/// New layer kinds are appended at the end so the postcard encoding of existing variants (the
/// variant index) never changes and old weight files stay readable. The enum is deliberately
/// exhaustive: code that matches on it, in any crate, stops compiling until it handles a new
/// kind.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
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
    /// Minibatch discrimination ([`crate::layers::mbd`]): appends `kernels` batch-similarity features
    /// to the flattened input. Parameters: tensor `T` of `in × kernels × dims`, no bias.
    /// Couples the samples of a batch, so it belongs in discriminators only.
    MinibatchDisc {
        /// Similarity kernels `B` (features added).
        kernels: u32,
        /// Dimensions `C` per kernel.
        dims: u32,
    },
    /// 2-D convolution with a square kernel ([`crate::layers::conv2d`]): `out_c` channels of
    /// `(H + 2·pad − k) / stride + 1` rows and as many columns (from `W`). Requires
    /// `stride >= 1`, `pad < k` and `k <= H + 2·pad` (and the same for `W`).
    Conv2d {
        /// Output channels.
        out_c: u32,
        /// Kernel side.
        k: u32,
        /// Step between kernel positions.
        stride: u32,
        /// Implicit zero rows/columns on every border.
        pad: u32,
    },
    /// Transposed 2-D convolution ([`crate::layers::conv_transpose2d`]), the adjoint of a
    /// [`Layer::Conv2d`] with the same `k`, `stride`, `pad`: output side `(H − 1)·stride − 2·pad + k`. Requires
    /// `stride >= 1`, `pad < k` and a positive output side.
    ConvTranspose2d {
        /// Output channels.
        out_c: u32,
        /// Kernel side.
        k: u32,
        /// Step between the input positions' kernel footprints in the output.
        stride: u32,
        /// Rows/columns cropped from every border of the full output.
        pad: u32,
    },
    /// Max pooling over `k × k` windows, no padding ([`crate::layers::pool`]): output side
    /// `(H − k) / stride + 1`. Requires `1 <= k <= min(H, W)`, `k·k <= 2²⁴`, `stride >= 1`.
    MaxPool2d {
        /// Window side.
        k: u32,
        /// Step between windows.
        stride: u32,
    },
    /// Batch normalisation ([`crate::layers::batch_norm`]) over channels: for a `C × H × W` input, one mean
    /// and variance per channel over `N·H·W` values; for a flat input (`F × 1 × 1`), per
    /// feature over `N`. Parameters `γ`, `β` and the running mean and variance.
    BatchNorm {
        /// Added to the variance before the square root; `0 < eps <= 1`.
        eps: f32,
        /// Weight of the batch statistics in the running average, in `[0, 1]`:
        /// `running ← (1 − momentum)·running + momentum·batch`.
        momentum: f32,
    },
    /// Inverted dropout ([`crate::layers::dropout`]): in training each element is zeroed with
    /// probability `p` and the survivors are scaled by `1/(1−p)`; identity at inference.
    Dropout {
        /// Drop probability, in `[0, 1)`.
        p: f32,
    },
}

pub mod activation;
pub mod batch_norm;
mod columns;
pub mod conv2d;
pub mod conv_transpose2d;
pub mod dense;
pub mod dropout;
pub mod mbd;
pub mod pool;
pub mod view;

/// Element counts of one layer's tensors and auxiliary storage, for one input shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sizes {
    /// Weight elements (bias excluded).
    pub weight: usize,
    /// Bias elements.
    pub bias: usize,
    /// Running-statistics elements (stored after the bias, never trained).
    pub stats: usize,
    /// Auxiliary activation storage per sample (see [`crate::spec`]).
    pub aux: usize,
}

impl Sizes {
    /// A layer with no parameters and no auxiliary storage.
    pub const NONE: Sizes = Sizes { weight: 0, bias: 0, stats: 0, aux: 0 };
}

/// What a layer is for one input shape: its output shape, its sizes, and whether it only
/// reinterprets its input (a view: its output aliases the input, no work is done).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rules {
    /// Shape of one output sample.
    pub out: Shape,
    /// Tensor and auxiliary sizes.
    pub sizes: Sizes,
    /// A view layer (`Flatten`, `Reshape`).
    pub view: bool,
}

impl Rules {
    /// A layer with output `out` and the given sizes.
    pub const fn new(out: Shape, sizes: Sizes) -> Self {
        Rules { out, sizes, view: false }
    }
    /// A parameter-free element-wise layer: output shape = input shape.
    pub const fn same(inp: Shape) -> Self {
        Rules::new(inp, Sizes::NONE)
    }
}

/// `a·b`, `None` on overflow (`const` helper for the kinds' size rules).
pub(crate) const fn mul(a: usize, b: usize) -> Option<usize> {
    a.checked_mul(b)
}

/// `a·b·c`, `None` on overflow.
pub(crate) const fn mul3(a: usize, b: usize, c: usize) -> Option<usize> {
    match mul(a, b) {
        Some(ab) => mul(ab, c),
        None => None,
    }
}

/// Unwraps a size inside a `const fn` (where `?` is not available), returning
/// `Err(SpecError::BadDimension)` for layer `$index` on `None`.
macro_rules! size {
    ($e:expr, $index:expr) => {
        match $e {
            Some(v) => v,
            None => return Err(crate::error::SpecError::BadDimension { layer: $index }),
        }
    };
}
pub(crate) use size;

/// The shape and size rules of `layer` for input shape `inp`; `index` is only used for error
/// reports. Usable in `const` context.
pub(crate) const fn rules(layer: &Layer, inp: Shape, index: usize) -> Result<Rules, SpecError> {
    let in_len = match inp.checked_len() {
        Some(n) if n > 0 => n,
        _ => return Err(SpecError::BadDimension { layer: index }),
    };
    match *layer {
        Layer::Dense { out } => dense::rules(out, in_len, index),
        Layer::Relu | Layer::Tanh | Layer::Sigmoid => Ok(Rules::same(inp)),
        Layer::LeakyRelu { alpha } => activation::leaky_rules(alpha, inp, index),
        Layer::Flatten => view::flatten_rules(in_len, index),
        Layer::Reshape { to } => view::reshape_rules(to, in_len, index),
        Layer::MinibatchDisc { kernels, dims } => mbd::rules(kernels, dims, in_len, index),
        Layer::Conv2d { out_c, k, stride, pad } => {
            conv2d::rules(out_c, k, stride, pad, inp, index, false)
        }
        Layer::ConvTranspose2d { out_c, k, stride, pad } => {
            conv_transpose2d::rules(out_c, k, stride, pad, inp, index)
        }
        Layer::MaxPool2d { k, stride } => pool::rules(k, stride, inp, index),
        Layer::BatchNorm { eps, momentum } => batch_norm::rules(eps, momentum, inp, index),
        Layer::Dropout { p } => dropout::rules(p, inp, index),
    }
}

/// Evaluates `$body` with `$k` bound to the value of `$layer`'s kind (a type implementing
/// [`Kind`]): the one place that maps every [`Layer`] variant to its module.
macro_rules! with_kind {
    ($layer:expr, |$k:ident| $body:expr) => {{
        #[allow(unused_imports)]
        use crate::layers::Kind as _;
        match $layer {
            crate::spec::Layer::Dense { out } => {
                let $k = crate::layers::dense::Dense { out };
                $body
            }
            crate::spec::Layer::Relu => {
                let $k = crate::layers::activation::Activation::Relu;
                $body
            }
            crate::spec::Layer::LeakyRelu { alpha } => {
                let $k = crate::layers::activation::Activation::LeakyRelu(alpha);
                $body
            }
            crate::spec::Layer::Tanh => {
                let $k = crate::layers::activation::Activation::Tanh;
                $body
            }
            crate::spec::Layer::Sigmoid => {
                let $k = crate::layers::activation::Activation::Sigmoid;
                $body
            }
            crate::spec::Layer::Flatten => {
                let $k = crate::layers::view::View::Flatten;
                $body
            }
            crate::spec::Layer::Reshape { to } => {
                let $k = crate::layers::view::View::Reshape(to);
                $body
            }
            crate::spec::Layer::MinibatchDisc { kernels, dims } => {
                let $k = crate::layers::mbd::MinibatchDisc { kernels, dims };
                $body
            }
            crate::spec::Layer::Conv2d { out_c, k, stride, pad } => {
                let $k = crate::layers::conv2d::Conv2d::new(out_c, k, stride, pad);
                $body
            }
            crate::spec::Layer::ConvTranspose2d { out_c, k, stride, pad } => {
                let $k =
                    crate::layers::conv_transpose2d::ConvTranspose2d::new(out_c, k, stride, pad);
                $body
            }
            crate::spec::Layer::MaxPool2d { k, stride } => {
                let $k = crate::layers::pool::MaxPool2d { k, stride };
                $body
            }
            crate::spec::Layer::BatchNorm { eps, momentum } => {
                let $k = crate::layers::batch_norm::BatchNorm { eps, momentum };
                $body
            }
            crate::spec::Layer::Dropout { p } => {
                let $k = crate::layers::dropout::Dropout { p };
                $body
            }
        }
    }};
}
pub(crate) use with_kind;

/// How the gradient penalty ([`crate::gp`]) carries a tangent through a layer. Only layers that
/// are linear or piecewise linear in their input have one: for them the exact parameter
/// gradient of the penalty needs no second derivatives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Tangent {
    /// A dense layer: `ṫ_out = ṫ_in · W`; its weight gradient is taken from the tangent input.
    Dense,
    /// `ṫ_out = ṫ_in` where the forward input was positive, `slope · ṫ_in` elsewhere (ReLU:
    /// slope 0, LeakyReLU: `alpha`).
    Slope(f32),
    /// A view: nothing to do.
    View,
}

/// Everything one layer's training forward pass works with.
pub(crate) struct Forward<'a> {
    /// The layer.
    pub l: &'a LayerInfo,
    /// The network's flat parameter buffer.
    pub params: &'a [f32],
    /// The layer's input (N × in).
    pub inp: &'a [f32],
    /// The layer's output (N × out).
    pub out: &'a mut [f32],
    /// The layer's auxiliary storage (N × aux; empty for most layers).
    pub aux: &'a mut [f32],
    /// Batch size.
    pub n: usize,
    /// Executor for the large products and element-wise loops.
    pub exec: &'a dyn Exec,
    /// Seed of the pass's dropout masks.
    pub seed: u64,
    /// Inference mode ([`crate::model::ForwardCtx::inference`]).
    pub inference: bool,
}

impl<'a> Forward<'a> {
    /// The layer's weights.
    pub fn w(&self) -> &'a [f32] {
        &self.params[self.l.weight_range()]
    }
    /// The layer's bias.
    pub fn b(&self) -> &'a [f32] {
        &self.params[self.l.bias_range()]
    }
}

/// Everything one layer's backward pass works with.
pub(crate) struct Backward<'a> {
    /// The layer.
    pub l: &'a LayerInfo,
    /// The network's flat parameter buffer.
    pub params: &'a [f32],
    /// The activation buffer the forward pass filled.
    pub acts: &'a [f32],
    /// Gradient with respect to the layer's output (N × out).
    pub dout: &'a [f32],
    /// Receives (overwritten) the gradient with respect to the layer's input; `None` when no
    /// one needs it (the first layer of a network whose input gradient is not asked for).
    pub dinp: Option<&'a mut [f32]>,
    /// The network's flat gradient buffer, added into; `None` skips the parameter gradients.
    pub grads: Option<&'a mut [f32]>,
    /// Scratch for column matrices and similar (the auxiliary part of
    /// [`crate::spec::Spec::backward_scratch_len`]).
    pub scratch: &'a mut [f32],
    /// Batch size.
    pub n: usize,
    /// Executor.
    pub exec: &'a dyn Exec,
}

impl<'a> Backward<'a> {
    /// The forward input of the layer.
    pub fn inp(&self) -> &'a [f32] {
        &self.acts[self.l.in_range(self.n)]
    }
    /// The forward output of the layer.
    pub fn out(&self) -> &'a [f32] {
        &self.acts[self.l.out_range(self.n)]
    }
    /// The auxiliary storage the forward pass wrote.
    pub fn aux(&self) -> &'a [f32] {
        &self.acts[self.l.aux_range(self.n)]
    }
    /// The layer's weights.
    pub fn w(&self) -> &'a [f32] {
        &self.params[self.l.weight_range()]
    }
    /// The layer's weight and bias gradients (`None, None` without a gradient buffer). Takes
    /// the gradient buffer out of `self`.
    pub fn param_grads(&mut self) -> (Option<&'a mut [f32]>, Option<&'a mut [f32]>) {
        match self.grads.take() {
            Some(g) => {
                let l = self.l;
                let (gw, gb) = g[l.param_range()].split_at_mut(l.bias_offset - l.param_offset);
                (Some(&mut gw[..l.weight_len]), Some(&mut gb[..l.bias_len]))
            }
            None => (None, None),
        }
    }
}

/// The parameters of one layer as an encoding stores them (see [`crate::encoding`]). A layer
/// without parameters sees empty f32 tensors under every encoding.
#[derive(Clone, Copy, Debug)]
pub enum LayerWeights<'a> {
    /// f32 tensors in the layout of [`crate::spec`].
    F32 {
        /// Weights.
        w: &'a [f32],
        /// Bias.
        b: &'a [f32],
        /// Running statistics (batch normalisation).
        stats: &'a [f32],
    },
    /// Int8 weights with one f32 scale per output channel ([`Channels`]), and the f32 bias.
    I8 {
        /// Quantised weights, in the f32 weights' layout.
        q: &'a [i8],
        /// One scale per output channel.
        scales: &'a [f32],
        /// Bias.
        b: &'a [f32],
    },
}

/// How the weight tensor of a dense or convolution layer maps to its `n` output channels (the
/// output features of a dense layer, the output planes of a convolution): element `i` of the
/// tensor contributes to channel `(i / inner) % n` only, and channel `c`'s bias is `b[c]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channels {
    /// Output channels.
    pub n: usize,
    /// Consecutive weight elements of one channel.
    pub inner: usize,
}

impl Channels {
    /// The channel weight element `i` belongs to.
    #[inline]
    pub const fn of(&self, i: usize) -> usize {
        (i / self.inner) % self.n
    }
}

/// How the weights of layer `l` belong to its output channels ([`Channels`]), if they do.
pub fn channels(l: &LayerInfo) -> Option<Channels> {
    with_kind!(l.layer, |k| k.channels(l))
}

/// The two activation buffers of inference: the current activation is the first `len`
/// elements of `cur`; a layer either rewrites it in place or writes its output into `next`,
/// after which the two swap.
pub(crate) struct PingPong<'s> {
    cur: &'s mut [f32],
    next: &'s mut [f32],
    len: usize,
}

impl<'s> PingPong<'s> {
    /// Two halves of `scratch` of `half` elements each, the first holding `input`.
    pub fn new(scratch: &'s mut [f32], half: usize, input: &[f32]) -> Self {
        let (cur, rest) = scratch.split_at_mut(half);
        cur[..input.len()].copy_from_slice(input);
        PingPong { cur, next: &mut rest[..half], len: input.len() }
    }
    /// The current activation.
    pub fn current(&self) -> &[f32] {
        &self.cur[..self.len]
    }
    /// The current activation, to rewrite in place.
    pub fn in_place(&mut self) -> &mut [f32] {
        &mut self.cur[..self.len]
    }
    /// Runs `f(out, inp)` with the current activation as `inp` and `out_len` elements of the
    /// other buffer as `out`, which then becomes the current activation.
    pub fn map(
        &mut self, out_len: usize, f: impl FnOnce(&mut [f32], &[f32]) -> Result<(), CoreError>,
    ) -> Result<(), CoreError> {
        f(&mut self.next[..out_len], &self.cur[..self.len])?;
        core::mem::swap(&mut self.cur, &mut self.next);
        self.len = out_len;
        Ok(())
    }
}

/// Everything one layer's inference pass works with.
pub(crate) struct Infer<'a, 'p, 's> {
    /// The layer.
    pub l: &'a LayerInfo,
    /// Its parameters.
    pub w: LayerWeights<'a>,
    /// The activations.
    pub pp: &'p mut PingPong<'s>,
    /// Room for one quantised activation row (int8 weights; empty otherwise).
    pub xq: &'p mut [i8],
    /// Batch size.
    pub n: usize,
    /// Executor.
    pub exec: &'a dyn Exec,
}

/// One layer kind. Implemented next to the kind's kernels; the network walkers reach it through
/// `with_kind!`.
///
/// The passes are required; the rest has defaults that fit a layer without parameters (no
/// multiply-accumulates, nothing to draw, nothing int8 can store, no running statistics, no
/// tangent for the gradient penalty). A kind with weights states their fans ([`Kind::fans`]),
/// and the default [`Kind::init`] draws them.
pub(crate) trait Kind {
    /// Short lowercase name, for summaries (`dense`, `conv2d`, …).
    fn name(&self) -> &'static str;
    /// Writes a label for layer tables: the name, with the hyper-parameters that tell two layers
    /// of the kind apart.
    fn label(&self, l: &LayerInfo, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let _ = l;
        f.write_str(self.name())
    }
    /// Multiply-accumulates per sample of the forward pass, saturating instead of overflowing.
    fn macs(&self, l: &LayerInfo) -> usize {
        let _ = l;
        0
    }
    /// `(fan_in, fan_out)` of the layer's weight tensor for [`Init::fill`]: the average number of
    /// terms summed into one output, and of outputs one input feeds. `None`: no weights are
    /// drawn.
    fn fans(&self, l: &LayerInfo) -> Option<(usize, usize)> {
        let _ = l;
        None
    }
    /// Initialises the layer's parameters (the buffer arrives zeroed): draws the weights with
    /// `init` and [`Kind::fans`].
    fn init<R: Rng + ?Sized>(
        &self, l: &LayerInfo, params: &mut [f32], init: Init, rng: &mut R,
    ) -> Result<(), CoreError> {
        if let Some((fan_in, fan_out)) = self.fans(l) {
            let got = params.len();
            let w = params.get_mut(l.weight_range()).ok_or(CoreError::BufferLen {
                what: "params",
                expected: l.weight_range().end,
                got,
            })?;
            init.fill(rng, w, fan_in, fan_out);
        }
        Ok(())
    }
    /// Training forward pass.
    fn forward(&self, a: Forward<'_>) -> Result<(), CoreError>;
    /// Backward pass after [`Kind::forward`].
    fn backward(&self, a: Backward<'_>) -> Result<(), CoreError>;
    /// Exact inference.
    fn infer(&self, a: Infer<'_, '_, '_>) -> Result<(), CoreError>;
    /// How the layer's weights belong to its output channels (`None` for a layer without a
    /// weight tensor of that kind): the int8 encoding ([`crate::encoding::int8`]) keeps one
    /// scale per channel, and [`crate::fold`] folds a following batch normalisation into them.
    fn channels(&self, l: &LayerInfo) -> Option<Channels> {
        let _ = l;
        None
    }
    /// Moves the layer's running statistics after a training forward (only batch
    /// normalisation keeps any).
    fn update_stats(
        &self, l: &LayerInfo, params: &mut [f32], acts: &[f32], n: usize,
    ) -> Result<(), CoreError> {
        let _ = (l, params, acts, n);
        Ok(())
    }
    /// How the gradient penalty passes a tangent through this layer; `None`: the exact
    /// penalty gradient does not cover it.
    fn tangent(&self) -> Option<Tangent> {
        None
    }
    /// What the layer is to the all-integer encoding ([`crate::encoding::q8`]).
    fn q8(&self) -> Q8Role {
        Q8Role::Unsupported
    }
    /// For a [`Q8Role::Weighted`] layer: the integer sums of one sample, `acc` (the output's
    /// elements, as i32 bits) from the int8 input `xq` and the weights `u` (offset by 128, in
    /// the [`Kind::q8_index`] layout; see [`crate::kernels::q8`]).
    fn q8_sums(
        &self, l: &LayerInfo, acc: &mut [f32], xq: &[i8], u: &[u8],
    ) -> Result<(), CoreError> {
        let _ = (acc, xq, u);
        Err(CoreError::Unsupported { layer: l.index })
    }
    /// Where the q8 encoding stores the weight the layer's own layout has at `i` (the
    /// kernels' order; the same place by default).
    fn q8_index(&self, l: &LayerInfo, i: usize) -> usize {
        let _ = l;
        i
    }
    /// Bytes of the layer's weights in the q8 encoding (its layout may pad; the layer's
    /// weight count by default).
    fn q8_len(&self, l: &LayerInfo) -> usize {
        l.weight_len
    }
}

/// What a layer is to the all-integer encoding ([`crate::encoding::q8`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Q8Role {
    /// Passes its input through at inference (views, dropout).
    Pass,
    /// Int8 weights per output channel, integer sums ([`Kind::q8_sums`]).
    Weighted,
    /// An activation, fused into the weighted layer before it.
    Act(activation::Activation),
    /// Not representable.
    Unsupported,
}

/// [`Kind::q8`] of a layer of a spec.
pub(crate) fn q8_role(l: &LayerInfo) -> Q8Role {
    with_kind!(l.layer, |k| k.q8())
}

/// [`Kind::q8_sums`] of a layer of a spec.
pub(crate) fn q8_sums(
    l: &LayerInfo, acc: &mut [f32], xq: &[i8], u: &[u8],
) -> Result<(), CoreError> {
    with_kind!(l.layer, |k| k.q8_sums(l, acc, xq, u))
}

/// [`Kind::q8_len`] of a layer of a spec.
pub(crate) fn q8_len(l: &LayerInfo) -> usize {
    with_kind!(l.layer, |k| k.q8_len(l))
}

/// [`Kind::q8_index`] of a layer of a spec.
pub(crate) fn q8_index(l: &LayerInfo, i: usize) -> usize {
    with_kind!(l.layer, |k| k.q8_index(l, i))
}

/// The non-const facts about a layer, through its kind.
impl Layer {
    /// Short lowercase name, for summaries.
    pub fn name(&self) -> &'static str {
        with_kind!(*self, |k| k.name())
    }

    /// Multiply-accumulates per sample in the forward pass for input shape `inp` (inference
    /// form: one per weight use for dense and convolution layers, one per element for
    /// `BatchNorm`, none for pooling, dropout and activations), or 0 if the layer does not
    /// accept `inp`. Saturates instead of overflowing.
    pub fn macs(&self, inp: Shape) -> usize {
        match crate::spec::Spec::new(inp, core::slice::from_ref(self)) {
            Ok(s) => s.iter().next().map_or(0, |l| layer_macs(&l)),
            Err(_) => 0,
        }
    }
}

/// Multiply-accumulates per sample of one layer of a spec.
pub(crate) fn layer_macs(l: &LayerInfo) -> usize {
    with_kind!(l.layer, |k| k.macs(l))
}

/// A layer of a spec as a table label, e.g. `dense 784→128` or `leaky_relu(0.2)`.
impl fmt::Display for LayerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        with_kind!(self.layer, |k| k.label(self, f))
    }
}
