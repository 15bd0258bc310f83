//! Whole-network passes over a [`Spec`]: training forward, backward, and exact inference.
//!
//! Buffers (all caller-owned, lengths from the spec):
//! - `params`: [`Spec::param_len`] elements, layer tensors at [`crate::spec::LayerInfo`] offsets.
//! - `grads`: same layout as `params`; backward adds into it.
//! - `acts`: [`Spec::act_len`]`(n)`: the input batch (N × input) followed by every non-view
//!   layer's output. The caller writes the input into the first segment before [`forward`];
//!   [`output`] returns the last segment.
//! - `scratch`: [`Spec::backward_scratch_len`]`(n)` or [`Spec::infer_scratch_len`]`(n)`.
//!
//! Training and inference differ for two layers:
//! - `BatchNorm`: [`forward`] normalises with the batch's statistics (and keeps them in the
//!   layer's auxiliary storage); [`infer`] uses the running statistics stored in `params`.
//!   Call [`update_running_stats`] after a training forward to move the running statistics
//!   (the trainer decides which forward passes count, e.g. only real batches).
//! - `Dropout`: [`forward_with`] draws masks from [`ForwardCtx::seed`] ([`forward`] uses seed 0);
//!   [`infer`] is the identity.
//!
//! Layers that keep something for backward (convolutions, pooling, batch normalisation,
//! dropout, minibatch discrimination) write it to their auxiliary region of `acts`
//! ([`crate::spec::LayerInfo::aux_range`]); see [`crate::spec`] for what each one stores.
//!
//! Every walker here is a loop over the layers that hands each one to its kind
//! ([`crate::layers`]); what a layer does lives in its own module.

use crate::encoding::Encoded;
use crate::error::{CoreError, check_len, check_opt_len};
use crate::kernels::{Exec, Serial};
use crate::layers::{Backward, Forward, Infer, Kind, PingPong, with_kind};
use crate::spec::{LayerInfo, MAX_LAYERS, Spec};

/// Per-pass settings of a training forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct ForwardCtx {
    /// Seed of every dropout mask of the pass: element `i` of layer `l` is dropped according
    /// to [`crate::layers::dropout::keep_uniform`]`(seed, l, i)`. Use a new seed per step (e.g.
    /// derived from the run seed and the step number) so masks differ between steps yet replay
    /// exactly.
    pub seed: u64,
    /// Run the layers as inference does, through the fast training kernels: batch
    /// normalisation with its running statistics, dropout as the identity. For grids, scores and
    /// batched sampling where speed matters more than the exact path's bits ([`infer`] gives
    /// those); nothing the forward keeps is then fit for a backward pass through those layers.
    pub inference: bool,
}

impl ForwardCtx {
    /// A training context with the given dropout seed.
    pub const fn with_seed(seed: u64) -> Self {
        ForwardCtx { seed, inference: false }
    }

    /// An inference-mode context (see [`ForwardCtx::inference`]).
    pub const fn inference() -> Self {
        ForwardCtx { seed: 0, inference: true }
    }
}

/// The output segment of `acts` after [`forward`] (N × output).
pub fn output<'b>(spec: &Spec<'_>, acts: &'b [f32], n: usize) -> &'b [f32] {
    let last = spec.iter().last();
    match last {
        Some(info) => acts.get(info.out_range(n)).unwrap_or(&[]),
        None => &[],
    }
}

/// The input segment of `acts` (N × input), to fill before [`forward`].
pub fn input_mut<'b>(spec: &Spec<'_>, acts: &'b mut [f32], n: usize) -> &'b mut [f32] {
    let len = (n * spec.input().len()).min(acts.len());
    &mut acts[..len]
}

/// Splits `acts` into the layer's input, output and auxiliary segments (the auxiliary one
/// follows the output and is empty for most layers). Non-view layers always write after their
/// input, so the three never overlap.
pub(crate) fn in_out_aux<'b>(
    acts: &'b mut [f32], info: &LayerInfo, n: usize,
) -> (&'b [f32], &'b mut [f32], &'b mut [f32]) {
    let ir = info.in_range(n);
    let or = info.out_range(n);
    let ar = info.aux_range(n);
    debug_assert!(ir.end <= or.start && or.end == ar.start);
    let (head, tail) = acts.split_at_mut(or.start);
    let (out, rest) = tail.split_at_mut(or.end - or.start);
    (&head[ir], out, &mut rest[..ar.end - ar.start])
}

/// A batch of `n ≥ 1` with a parameter buffer of `params` and an activation buffer of `acts`
/// elements, as `spec` needs them.
fn check_batch(spec: &Spec<'_>, params: usize, acts: usize, n: usize) -> Result<(), CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len("params", params, spec.param_len())?;
    check_len("acts", acts, spec.act_len(n))
}

/// Training forward pass: fills every activation segment of `acts` from its input segment.
///
/// Same as [`forward_with`] with the default [`ForwardCtx`] (dropout seed 0).
pub fn forward(
    spec: &Spec<'_>, params: &[f32], acts: &mut [f32], n: usize, exec: &dyn Exec,
) -> Result<(), CoreError> {
    forward_with(spec, params, acts, n, exec, &ForwardCtx::default())
}

/// Training forward pass with explicit per-pass settings (the dropout seed).
///
/// Batch normalisation uses batch statistics; dropout draws its masks from `ctx.seed`.
pub fn forward_with(
    spec: &Spec<'_>, params: &[f32], acts: &mut [f32], n: usize, exec: &dyn Exec, ctx: &ForwardCtx,
) -> Result<(), CoreError> {
    check_batch(spec, params.len(), acts.len(), n)?;
    for info in spec.iter() {
        if info.view {
            continue;
        }
        let (inp, out, aux) = in_out_aux(acts, &info, n);
        let a = Forward {
            l: &info,
            params,
            inp,
            out,
            aux,
            n,
            exec,
            seed: ctx.seed,
            inference: ctx.inference,
        };
        with_kind!(info.layer, |k| Kind::forward(&k, a))?;
    }
    Ok(())
}

/// Backward pass after [`forward`] on the same `acts`.
///
/// `dout` (N × output) is the loss gradient with respect to the network output. Parameter
/// gradients are added into `grads` (pass `None` when only the input gradient is needed, e.g.
/// back-propagating through the discriminator to train the generator: that skips the weight
/// gradient products). If `dinput` is `Some`, it receives (overwritten) the gradient with respect
/// to the network input (N × input). `scratch` has [`Spec::backward_scratch_len`]`(n)` elements.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    spec: &Spec<'_>, params: &[f32], acts: &[f32], dout: &[f32], grads: Option<&mut [f32]>,
    dinput: Option<&mut [f32]>, scratch: &mut [f32], n: usize, exec: &dyn Exec,
) -> Result<(), CoreError> {
    backward_from(spec, params, acts, spec.layers().len(), dout, grads, dinput, scratch, n, exec)
}

/// The layers `0..upto` of `spec` with their offsets, checked against the buffers every
/// backward walker shares.
pub(crate) fn backward_layers(
    spec: &Spec<'_>, upto: usize, n: usize,
) -> Result<heapless::Vec<LayerInfo, MAX_LAYERS>, CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    if upto == 0 || upto > spec.layers().len() {
        return Err(CoreError::Unsupported { layer: upto });
    }
    let mut infos: heapless::Vec<LayerInfo, MAX_LAYERS> = heapless::Vec::new();
    for info in spec.iter().take(upto) {
        // Cannot fail: Spec::new caps the layer count at MAX_LAYERS.
        let _ = infos.push(info);
    }
    Ok(infos)
}

/// Like [`backward`], but starts at the output of layer `upto - 1`: `dout` is the gradient with
/// respect to that layer's output (N × its output size), and only layers `0..upto` are walked.
/// Used for losses on inner features (feature matching).
#[allow(clippy::too_many_arguments)]
pub fn backward_from(
    spec: &Spec<'_>, params: &[f32], acts: &[f32], upto: usize, dout: &[f32],
    mut grads: Option<&mut [f32]>, dinput: Option<&mut [f32]>, scratch: &mut [f32], n: usize,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    let infos = backward_layers(spec, upto, n)?;
    check_len("params", params.len(), spec.param_len())?;
    check_opt_len("grads", grads.as_deref(), spec.param_len())?;
    check_len("acts", acts.len(), spec.act_len(n))?;
    check_len("scratch", scratch.len(), spec.backward_scratch_len(n))?;
    check_opt_len("dinput", dinput.as_deref(), n * spec.input().len())?;
    let top = infos[upto - 1];
    check_len("dout", dout.len(), n * top.out_shape.len())?;
    walk_back(&infos, n, spec.max_features(), dout, scratch, dinput, |st| {
        let a = Backward {
            l: st.l,
            params,
            acts,
            dout: st.dout,
            dinp: st.dinp,
            grads: grads.as_deref_mut(),
            scratch: st.scratch,
            n,
            exec,
        };
        with_kind!(st.l.layer, |k| Kind::backward(&k, a))
    })
}

/// One layer of a backward walk ([`walk_back`]).
pub(crate) struct BackStep<'a> {
    /// The layer.
    pub l: &'a LayerInfo,
    /// Gradient with respect to its output (N × out).
    pub dout: &'a [f32],
    /// Where the gradient with respect to its input goes; `None` for the first layer that does
    /// work when no input gradient of the network is asked for.
    pub dinp: Option<&'a mut [f32]>,
    /// The auxiliary scratch (the part of [`Spec::backward_scratch_len`] past the two gradient
    /// buffers).
    pub scratch: &'a mut [f32],
}

/// Walks `infos` (the layers of a spec, in order) backwards from `dout`, the gradient of the
/// last one's output, calling `f` for every layer that is not a view. The gradients pass
/// through two ping-pong buffers of `max_features·n` at the start of `scratch` (which has
/// [`Spec::backward_scratch_len`]); the first layer that does work writes into `dinput`.
pub(crate) fn walk_back(
    infos: &[LayerInfo], n: usize, max_features: usize, dout: &[f32], scratch: &mut [f32],
    mut dinput: Option<&mut [f32]>, mut f: impl FnMut(BackStep<'_>) -> Result<(), CoreError>,
) -> Result<(), CoreError> {
    let half = max_features * n;
    let (ping, aux_scratch) = scratch.split_at_mut(2 * half);
    let (mut cur, mut other) = ping.split_at_mut(half);
    cur[..dout.len()].copy_from_slice(dout);
    // Index of the first layer that does real work: below it only views remain, so its input
    // gradient is the network's input gradient.
    let first_real = infos.iter().position(|i| !i.view);
    for info in infos.iter().rev() {
        if info.view {
            continue;
        }
        let dinp = if Some(info.index) != first_real {
            Some(&mut other[..n * info.in_shape.len()])
        } else {
            dinput.as_deref_mut()
        };
        f(BackStep {
            l: info,
            dout: &cur[..n * info.out_shape.len()],
            dinp,
            scratch: &mut *aux_scratch,
        })?;
        core::mem::swap(&mut cur, &mut other);
    }
    Ok(())
}

/// Exact inference: `output (N × out) = net(input (N × in))`, bit-identical on every target.
///
/// Uses the exact dense and convolution kernels, in-place activations, batch normalisation
/// with the running statistics from `params`, and skips dropout. Every sample is computed
/// independently, so a sample's output does not depend on the batch it is in. `scratch` has
/// [`Spec::infer_scratch_len`]`(n)` elements. This is the path `gan-train sample` and the
/// firmware share. [`infer_with`] runs the same computation on several threads.
pub fn infer(
    spec: &Spec<'_>, params: &[f32], input: &[f32], output: &mut [f32], scratch: &mut [f32],
    n: usize,
) -> Result<(), CoreError> {
    infer_with(spec, params, input, output, scratch, n, &Serial)
}

/// [`infer`] with the large dense products and activations split over the tasks of `exec`.
///
/// Threads only ever divide outputs between them (columns of a product, ranges of an
/// activation), never a sum, so the result is bit-identical to [`infer`] for every `exec`.
pub fn infer_with(
    spec: &Spec<'_>, params: &[f32], input: &[f32], output: &mut [f32], scratch: &mut [f32],
    n: usize, exec: &dyn Exec,
) -> Result<(), CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len("params", params.len(), spec.param_len())?;
    infer_encoded(spec, &Encoded::F32(params), input, output, scratch, n, exec)
}

/// Exact inference of a network whose parameters are stored in any encoding
/// ([`crate::encoding`]): [`infer_with`] for f32 parameters, the int8 kernels for int8 ones.
/// `scratch` has [`crate::encoding::Encoding::infer_scratch_len`] elements for the encoding.
pub fn infer_encoded(
    spec: &Spec<'_>, weights: &Encoded<'_>, input: &[f32], output: &mut [f32], scratch: &mut [f32],
    n: usize, exec: &dyn Exec,
) -> Result<(), CoreError> {
    infer_observed(spec, weights, input, output, scratch, n, exec, &mut |_, _| {})
}

/// [`infer_encoded`], calling `seen(layer, activation)` with every non-view layer's output
/// (`n` samples) as soon as it is computed (what calibration looks at).
#[allow(clippy::too_many_arguments)]
pub fn infer_observed(
    spec: &Spec<'_>, weights: &Encoded<'_>, input: &[f32], output: &mut [f32], scratch: &mut [f32],
    n: usize, exec: &dyn Exec, seen: &mut dyn FnMut(&LayerInfo, &[f32]),
) -> Result<(), CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len("input", input.len(), n * spec.input().len())?;
    check_len("output", output.len(), n * spec.output().len())?;
    check_len("scratch", scratch.len(), weights.encoding().infer_scratch_len(spec, n))?;
    let (ping_pong, extra) = scratch.split_at_mut(spec.infer_scratch_len(n));
    let xq = crate::encoding::int8::row_buffer(extra);
    let mut pp = PingPong::new(ping_pong, spec.max_features() * n, input);
    for info in spec.iter() {
        if info.view {
            continue;
        }
        let a = Infer { l: &info, w: weights.layer(&info)?, pp: &mut pp, xq: &mut *xq, n, exec };
        with_kind!(info.layer, |k| Kind::infer(&k, a))?;
        seen(&info, pp.current());
    }
    output.copy_from_slice(pp.current());
    Ok(())
}

/// Moves the running statistics of every `BatchNorm` layer towards the batch statistics that
/// the last [`forward`] / [`forward_with`] on `acts` stored, with each layer's momentum (see
/// [`crate::layers::batch_norm::update_running`]). `params` is the same buffer the forward pass
/// read; only the layers' [`LayerInfo::stats_range`] is written. Does nothing for a network
/// without batch normalisation.
pub fn update_running_stats(
    spec: &Spec<'_>, params: &mut [f32], acts: &[f32], n: usize,
) -> Result<(), CoreError> {
    check_batch(spec, params.len(), acts.len(), n)?;
    for info in spec.iter() {
        with_kind!(info.layer, |k| k.update_stats(&info, params, acts, n))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
