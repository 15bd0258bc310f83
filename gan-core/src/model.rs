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
use crate::error::{CoreError, check_len};
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
}

impl ForwardCtx {
    /// A context with the given dropout seed.
    pub const fn with_seed(seed: u64) -> Self {
        ForwardCtx { seed }
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
    acts: &'b mut [f32],
    info: &LayerInfo,
    n: usize,
) -> (&'b [f32], &'b mut [f32], &'b mut [f32]) {
    let ir = info.in_range(n);
    let or = info.out_range(n);
    let ar = info.aux_range(n);
    debug_assert!(ir.end <= or.start && or.end == ar.start);
    let (head, tail) = acts.split_at_mut(or.start);
    let (out, rest) = tail.split_at_mut(or.end - or.start);
    (&head[ir], out, &mut rest[..ar.end - ar.start])
}

/// Training forward pass: fills every activation segment of `acts` from its input segment.
///
/// Same as [`forward_with`] with the default [`ForwardCtx`] (dropout seed 0).
pub fn forward(
    spec: &Spec<'_>,
    params: &[f32],
    acts: &mut [f32],
    n: usize,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    forward_with(spec, params, acts, n, exec, &ForwardCtx::default())
}

/// Training forward pass with explicit per-pass settings (the dropout seed).
///
/// Batch normalisation uses batch statistics; dropout draws its masks from `ctx.seed`.
pub fn forward_with(
    spec: &Spec<'_>,
    params: &[f32],
    acts: &mut [f32],
    n: usize,
    exec: &dyn Exec,
    ctx: &ForwardCtx,
) -> Result<(), CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len("params", params.len(), spec.param_len())?;
    check_len("acts", acts.len(), spec.act_len(n))?;
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
    spec: &Spec<'_>,
    params: &[f32],
    acts: &[f32],
    dout: &[f32],
    grads: Option<&mut [f32]>,
    dinput: Option<&mut [f32]>,
    scratch: &mut [f32],
    n: usize,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    backward_from(
        spec,
        params,
        acts,
        spec.layers().len(),
        dout,
        grads,
        dinput,
        scratch,
        n,
        exec,
    )
}

/// The layers `0..upto` of `spec` with their offsets, checked against the buffers every
/// backward walker shares.
pub(crate) fn backward_layers(
    spec: &Spec<'_>,
    upto: usize,
    n: usize,
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
    spec: &Spec<'_>,
    params: &[f32],
    acts: &[f32],
    upto: usize,
    dout: &[f32],
    mut grads: Option<&mut [f32]>,
    mut dinput: Option<&mut [f32]>,
    scratch: &mut [f32],
    n: usize,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    let infos = backward_layers(spec, upto, n)?;
    check_len("params", params.len(), spec.param_len())?;
    if let Some(g) = &grads {
        check_len("grads", g.len(), spec.param_len())?;
    }
    check_len("acts", acts.len(), spec.act_len(n))?;
    check_len("scratch", scratch.len(), spec.backward_scratch_len(n))?;
    if let Some(d) = &dinput {
        check_len("dinput", d.len(), n * spec.input().len())?;
    }
    let top = infos[upto - 1];
    check_len("dout", dout.len(), n * top.out_shape.len())?;
    let half = spec.max_features() * n;
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
        let out_len = n * info.out_shape.len();
        let in_len = n * info.in_shape.len();
        let is_first = Some(info.index) == first_real;
        let dinp: Option<&mut [f32]> = if !is_first {
            Some(&mut other[..in_len])
        } else {
            dinput.as_deref_mut()
        };
        let a = Backward {
            l: info,
            params,
            acts,
            dout: &cur[..out_len],
            dinp,
            grads: grads.as_deref_mut(),
            scratch: &mut *aux_scratch,
            n,
            exec,
        };
        with_kind!(info.layer, |k| Kind::backward(&k, a))?;
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
    spec: &Spec<'_>,
    params: &[f32],
    input: &[f32],
    output: &mut [f32],
    scratch: &mut [f32],
    n: usize,
) -> Result<(), CoreError> {
    infer_with(spec, params, input, output, scratch, n, &Serial)
}

/// [`infer`] with the large dense products and activations split over the tasks of `exec`.
///
/// Threads only ever divide outputs between them (columns of a product, ranges of an
/// activation), never a sum, so the result is bit-identical to [`infer`] for every `exec`.
pub fn infer_with(
    spec: &Spec<'_>,
    params: &[f32],
    input: &[f32],
    output: &mut [f32],
    scratch: &mut [f32],
    n: usize,
    exec: &dyn Exec,
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
    spec: &Spec<'_>,
    weights: &Encoded<'_>,
    input: &[f32],
    output: &mut [f32],
    scratch: &mut [f32],
    n: usize,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len("input", input.len(), n * spec.input().len())?;
    check_len("output", output.len(), n * spec.output().len())?;
    check_len(
        "scratch",
        scratch.len(),
        weights.encoding().infer_scratch_len(spec, n),
    )?;
    let (ping_pong, extra) = scratch.split_at_mut(spec.infer_scratch_len(n));
    let xq = crate::encoding::int8::row_buffer(extra);
    let mut pp = PingPong::new(ping_pong, spec.max_features() * n, input);
    for info in spec.iter() {
        if info.view {
            continue;
        }
        let a = Infer {
            l: &info,
            w: weights.layer(&info)?,
            pp: &mut pp,
            xq: &mut *xq,
            n,
            exec,
        };
        with_kind!(info.layer, |k| Kind::infer(&k, a))?;
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
    spec: &Spec<'_>,
    params: &mut [f32],
    acts: &[f32],
    n: usize,
) -> Result<(), CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len("params", params.len(), spec.param_len())?;
    check_len("acts", acts.len(), spec.act_len(n))?;
    for info in spec.iter() {
        with_kind!(info.layer, |k| k.update_stats(&info, params, acts, n))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Serial;
    use crate::spec::{Layer, Shape};
    use crate::testutil::{Lcg, grad_check};
    use std::vec;

    const LAYERS: [Layer; 7] = [
        Layer::Dense { out: 6 },
        Layer::LeakyRelu { alpha: 0.2 },
        Layer::Reshape {
            to: Shape::image(1, 2, 3),
        },
        Layer::Flatten,
        Layer::Dense { out: 4 },
        Layer::Relu,
        Layer::Dense { out: 2 },
    ];

    fn setup(n: usize) -> (Spec<'static>, vec::Vec<f32>, vec::Vec<f32>) {
        let spec = Spec::new(Shape::flat(3), &LAYERS).unwrap();
        let mut r = Lcg::new(5);
        let mut p = vec![0.0; spec.param_len()];
        r.fill(&mut p);
        let mut x = vec![0.0; n * 3];
        r.fill(&mut x);
        (spec, p, x)
    }

    fn run_forward(spec: &Spec<'_>, p: &[f32], x: &[f32], n: usize) -> vec::Vec<f32> {
        let mut acts = vec![0.0; spec.act_len(n)];
        input_mut(spec, &mut acts, n).copy_from_slice(x);
        forward(spec, p, &mut acts, n, &Serial).unwrap();
        acts
    }

    #[test]
    fn infer_matches_forward() {
        let n = 4;
        let (spec, p, x) = setup(n);
        let acts = run_forward(&spec, &p, &x, n);
        let mut out = vec![0.0; n * 2];
        let mut scratch = vec![0.0; spec.infer_scratch_len(n)];
        infer(&spec, &p, &x, &mut out, &mut scratch, n).unwrap();
        for (a, b) in output(&spec, &acts, n).iter().zip(&out) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let n = 3;
        let (spec, p, x) = setup(n);
        let mut r = Lcg::new(9);
        let mut g = vec![0.0; n * 2];
        r.fill(&mut g);
        let loss = |p: &[f32], x: &[f32]| -> f64 {
            let acts = run_forward(&spec, p, x, n);
            output(&spec, &acts, n)
                .iter()
                .zip(&g)
                .map(|(&o, &g)| o as f64 * g as f64)
                .sum()
        };
        let acts = run_forward(&spec, &p, &x, n);
        let mut grads = vec![0.0; spec.param_len()];
        let mut dx = vec![0.0; n * 3];
        let mut scratch = vec![0.0; spec.backward_scratch_len(n)];
        backward(
            &spec,
            &p,
            &acts,
            &g,
            Some(&mut grads),
            Some(&mut dx),
            &mut scratch,
            n,
            &Serial,
        )
        .unwrap();
        grad_check(&p, &grads, |pp| loss(pp, &x), 1e-3, 2e-3);
        grad_check(&x, &dx, |xp| loss(&p, xp), 1e-3, 2e-3);

        // Without an input gradient the parameter gradients are the same.
        let mut grads2 = vec![0.0; spec.param_len()];
        backward(
            &spec,
            &p,
            &acts,
            &g,
            Some(&mut grads2),
            None,
            &mut scratch,
            n,
            &Serial,
        )
        .unwrap();
        assert_eq!(grads, grads2);
        // Without parameter gradients the input gradient is the same.
        let mut dx2 = vec![0.0; n * 3];
        backward(
            &spec,
            &p,
            &acts,
            &g,
            None,
            Some(&mut dx2),
            &mut scratch,
            n,
            &Serial,
        )
        .unwrap();
        assert_eq!(dx, dx2);
    }

    /// Backward from an inner layer equals the full backward of the truncated network.
    #[test]
    fn partial_backward_matches_truncated_network() {
        let n = 2;
        let (spec, p, x) = setup(n);
        let upto = 5; // through the ReLU after the second dense layer: output 4 features
        let mut r = Lcg::new(4);
        let mut g = vec![0.0; n * 4];
        r.fill(&mut g);
        let acts = run_forward(&spec, &p, &x, n);
        let mut grads = vec![0.0; spec.param_len()];
        let mut dx = vec![0.0; n * 3];
        let mut scratch = vec![0.0; spec.backward_scratch_len(n)];
        backward_from(
            &spec,
            &p,
            &acts,
            upto,
            &g,
            Some(&mut grads),
            Some(&mut dx),
            &mut scratch,
            n,
            &Serial,
        )
        .unwrap();
        let short = Spec::new(Shape::flat(3), &LAYERS[..upto]).unwrap();
        let sp = &p[..short.param_len()];
        let sacts = run_forward(&short, sp, &x, n);
        let mut sgrads = vec![0.0; short.param_len()];
        let mut sdx = vec![0.0; n * 3];
        let mut sscratch = vec![0.0; short.backward_scratch_len(n)];
        backward(
            &short,
            sp,
            &sacts,
            &g,
            Some(&mut sgrads),
            Some(&mut sdx),
            &mut sscratch,
            n,
            &Serial,
        )
        .unwrap();
        assert_eq!(&grads[..short.param_len()], &sgrads[..]);
        assert!(grads[short.param_len()..].iter().all(|&v| v == 0.0));
        assert_eq!(dx, sdx);
    }

    /// A discriminator with minibatch discrimination: whole-network finite differences.
    #[test]
    fn minibatch_disc_network_gradients() {
        let layers = [
            Layer::Dense { out: 4 },
            Layer::LeakyRelu { alpha: 0.2 },
            Layer::MinibatchDisc {
                kernels: 3,
                dims: 2,
            },
            Layer::Dense { out: 1 },
        ];
        let n = 4;
        let spec = Spec::new(Shape::flat(3), &layers).unwrap();
        assert_eq!(spec.layer(2).unwrap().out_shape, Shape::flat(7));
        let mut r = Lcg::new(8);
        let mut p = vec![0.0; spec.param_len()];
        r.fill(&mut p);
        let mut x = vec![0.0; n * 3];
        r.fill(&mut x);
        let mut g = vec![0.0; n];
        r.fill(&mut g);
        let loss = |p: &[f32], x: &[f32]| -> f64 {
            let acts = run_forward(&spec, p, x, n);
            output(&spec, &acts, n)
                .iter()
                .zip(&g)
                .map(|(&o, &g)| o as f64 * g as f64)
                .sum()
        };
        let acts = run_forward(&spec, &p, &x, n);
        let mut grads = vec![0.0; spec.param_len()];
        let mut dx = vec![0.0; n * 3];
        let mut scratch = vec![0.0; spec.backward_scratch_len(n)];
        backward(
            &spec,
            &p,
            &acts,
            &g,
            Some(&mut grads),
            Some(&mut dx),
            &mut scratch,
            n,
            &Serial,
        )
        .unwrap();
        grad_check(&p, &grads, |pp| loss(pp, &x), 1e-3, 3e-3);
        grad_check(&x, &dx, |xp| loss(&p, xp), 1e-3, 3e-3);
        // The input gradient alone (generator step through a frozen D) is the same.
        let mut dx2 = vec![0.0; n * 3];
        backward(
            &spec,
            &p,
            &acts,
            &g,
            None,
            Some(&mut dx2),
            &mut scratch,
            n,
            &Serial,
        )
        .unwrap();
        assert_eq!(dx, dx2);
    }

    #[test]
    fn rejects_wrong_buffers() {
        let (spec, p, x) = setup(2);
        let mut out = vec![0.0; 4];
        let mut scratch = vec![0.0; spec.infer_scratch_len(2) - 1];
        assert!(matches!(
            infer(&spec, &p, &x, &mut out, &mut scratch, 2),
            Err(CoreError::BufferLen {
                what: "scratch",
                ..
            })
        ));
        let mut acts = vec![0.0; 3];
        assert!(forward(&spec, &p, &mut acts, 2, &Serial).is_err());
        assert!(forward(&spec, &p[1..], &mut acts, 2, &Serial).is_err());
    }

    /// `Σ output ⊙ g` in f64 after a training forward with dropout seed `seed`.
    fn weighted_output(
        spec: &Spec<'_>,
        p: &[f32],
        x: &[f32],
        g: &[f32],
        n: usize,
        seed: u64,
    ) -> f64 {
        let mut acts = vec![0.0; spec.act_len(n)];
        input_mut(spec, &mut acts, n).copy_from_slice(x);
        forward_with(spec, p, &mut acts, n, &Serial, &ForwardCtx::with_seed(seed)).unwrap();
        output(spec, &acts, n)
            .iter()
            .zip(g)
            .map(|(&o, &g)| o as f64 * g as f64)
            .sum()
    }

    /// Whole-network finite differences of every parameter and input gradient, plus the
    /// optional-buffer variants of backward.
    fn check_network(layers: &[Layer], input: Shape, n: usize, seed: u64, atol: f64) {
        let spec = Spec::new(input, layers).unwrap();
        let mut r = Lcg::new(seed);
        let mut p = vec![0.0; spec.param_len()];
        r.fill(&mut p);
        let mut x = vec![0.0; n * input.len()];
        r.fill(&mut x);
        let mut g = vec![0.0; n * spec.output().len()];
        r.fill(&mut g);
        let ctx = ForwardCtx::with_seed(seed);
        let mut acts = vec![0.0; spec.act_len(n)];
        input_mut(&spec, &mut acts, n).copy_from_slice(&x);
        forward_with(&spec, &p, &mut acts, n, &Serial, &ctx).unwrap();
        let mut grads = vec![0.0; spec.param_len()];
        let mut dx = vec![0.0; x.len()];
        let mut scratch = vec![0.0; spec.backward_scratch_len(n)];
        backward(
            &spec,
            &p,
            &acts,
            &g,
            Some(&mut grads),
            Some(&mut dx),
            &mut scratch,
            n,
            &Serial,
        )
        .unwrap();
        grad_check(
            &p,
            &grads,
            |pp| weighted_output(&spec, pp, &x, &g, n, seed),
            1e-3,
            atol,
        );
        grad_check(
            &x,
            &dx,
            |xp| weighted_output(&spec, &p, xp, &g, n, seed),
            1e-3,
            atol,
        );
        // Running statistics are never trained.
        for info in spec.iter() {
            assert!(grads[info.stats_range()].iter().all(|&v| v == 0.0));
        }
        let mut grads2 = vec![0.0; spec.param_len()];
        backward(
            &spec,
            &p,
            &acts,
            &g,
            Some(&mut grads2),
            None,
            &mut scratch,
            n,
            &Serial,
        )
        .unwrap();
        assert_eq!(grads, grads2);
        let mut dx2 = vec![0.0; x.len()];
        backward(
            &spec,
            &p,
            &acts,
            &g,
            None,
            Some(&mut dx2),
            &mut scratch,
            n,
            &Serial,
        )
        .unwrap();
        assert_eq!(dx, dx2);
    }

    /// A small discriminator: conv, batch norm, LeakyReLU, max pool, dropout, strided conv.
    const CONV_D: [Layer; 9] = [
        Layer::Conv2d {
            out_c: 3,
            k: 3,
            stride: 1,
            pad: 1,
        },
        Layer::BatchNorm {
            eps: 1e-3,
            momentum: 0.1,
        },
        Layer::LeakyRelu { alpha: 0.2 },
        Layer::MaxPool2d { k: 2, stride: 2 },
        Layer::Dropout { p: 0.3 },
        Layer::Conv2d {
            out_c: 2,
            k: 3,
            stride: 2,
            pad: 1,
        },
        Layer::Tanh,
        Layer::Flatten,
        Layer::Dense { out: 1 },
    ];

    /// A small generator: dense, flat batch norm, reshape, batch norm over channels,
    /// transposed convolutions with stride 2 and padding.
    const CONV_G: [Layer; 10] = [
        Layer::Dense { out: 8 },
        Layer::BatchNorm {
            eps: 1e-3,
            momentum: 0.1,
        },
        Layer::LeakyRelu { alpha: 0.2 },
        Layer::Reshape {
            to: Shape::image(2, 2, 2),
        },
        Layer::ConvTranspose2d {
            out_c: 3,
            k: 4,
            stride: 2,
            pad: 1,
        },
        Layer::BatchNorm {
            eps: 1e-3,
            momentum: 0.1,
        },
        Layer::Tanh,
        Layer::Dropout { p: 0.25 },
        Layer::ConvTranspose2d {
            out_c: 1,
            k: 3,
            stride: 1,
            pad: 1,
        },
        Layer::Sigmoid,
    ];

    /// Smallest gap between the two largest inputs of any max-pool window (k = stride = 2)
    /// of layer `layer`, for the parameters and input `check_network` draws from `seed`.
    fn min_pool_gap(spec: &Spec<'_>, layer: usize, n: usize, seed: u64) -> f32 {
        let mut r = Lcg::new(seed);
        let mut p = vec![0.0; spec.param_len()];
        r.fill(&mut p);
        let mut x = vec![0.0; n * spec.input().len()];
        r.fill(&mut x);
        let mut acts = vec![0.0; spec.act_len(n)];
        input_mut(spec, &mut acts, n).copy_from_slice(&x);
        forward_with(
            spec,
            &p,
            &mut acts,
            n,
            &Serial,
            &ForwardCtx::with_seed(seed),
        )
        .unwrap();
        let info = spec.layer(layer).unwrap();
        let (h, w) = (info.in_shape.h as usize, info.in_shape.w as usize);
        let mut gap = f32::INFINITY;
        for plane in acts[info.in_range(n)].chunks_exact(h * w) {
            for oy in 0..h / 2 {
                for ox in 0..w / 2 {
                    let mut v = [0.0f32; 4];
                    for (j, v) in v.iter_mut().enumerate() {
                        *v = plane[(2 * oy + j / 2) * w + 2 * ox + j % 2];
                    }
                    v.sort_by(|a, b| b.total_cmp(a));
                    gap = gap.min(v[0] - v[1]);
                }
            }
        }
        gap
    }

    #[test]
    fn conv_discriminator_gradients() {
        let spec = Spec::new(Shape::image(2, 6, 6), &CONV_D).unwrap();
        assert_eq!(spec.layer(5).unwrap().out_shape, Shape::image(2, 2, 2));
        // Max pooling is not differentiable where a window's two largest inputs tie, and a
        // finite difference straddling a near-tie measures a blend of both slopes. Pick the
        // first data seed whose windows all have a clear winner (deterministic).
        let n = 3;
        let seed = (61..)
            .find(|&s| min_pool_gap(&spec, 3, n, s) > 0.02)
            .unwrap();
        check_network(&CONV_D, Shape::image(2, 6, 6), n, seed, 3e-3);
    }

    #[test]
    fn conv_generator_gradients() {
        let spec = Spec::new(Shape::flat(3), &CONV_G).unwrap();
        assert_eq!(spec.output(), Shape::image(1, 4, 4));
        check_network(&CONV_G, Shape::flat(3), 3, 62, 3e-3);
    }

    /// Runs a training forward on `x` and returns the activations.
    fn acts_for(spec: &Spec<'_>, p: &[f32], x: &[f32], n: usize) -> vec::Vec<f32> {
        run_forward(spec, p, x, n)
    }

    /// Copies every batch-norm layer's batch statistics into its running statistics.
    fn set_running_to_batch(spec: &Spec<'_>, p: &mut [f32], acts: &[f32], n: usize) {
        for info in spec.iter() {
            if let Layer::BatchNorm { .. } = info.layer {
                let c = info.stats_len;
                let batch = &acts[info.aux_range(n)][..c];
                p[info.stats_range()].copy_from_slice(batch);
            }
        }
    }

    #[test]
    fn infer_of_conv_batchnorm_network_matches_forward() {
        let with_p = |p: f32| -> [Layer; 9] {
            let mut l = CONV_D;
            l[4] = Layer::Dropout { p };
            l
        };
        let layers = with_p(0.0);
        let n = 4;
        let spec = Spec::new(Shape::image(2, 6, 6), &layers).unwrap();
        let mut r = Lcg::new(63);
        let mut p = vec![0.0; spec.param_len()];
        r.fill(&mut p);
        let mut x = vec![0.0; n * spec.input().len()];
        r.fill(&mut x);
        let acts = acts_for(&spec, &p, &x, n);
        set_running_to_batch(&spec, &mut p, &acts, n);
        let mut out = vec![0.0; n];
        let mut scratch = vec![0.0; spec.infer_scratch_len(n)];
        infer(&spec, &p, &x, &mut out, &mut scratch, n).unwrap();
        for (a, b) in output(&spec, &acts, n).iter().zip(&out) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // Deterministic, and each sample independent of its batch.
        let mut again = vec![0.0; n];
        infer(&spec, &p, &x, &mut again, &mut scratch, n).unwrap();
        assert_eq!(out.map_bits(), again.map_bits());
        let in_len = spec.input().len();
        let mut one = [0.0f32; 1];
        let mut scratch1 = vec![0.0; spec.infer_scratch_len(1)];
        for i in 0..n {
            infer(
                &spec,
                &p,
                &x[i * in_len..(i + 1) * in_len],
                &mut one,
                &mut scratch1,
                1,
            )
            .unwrap();
            assert_eq!(one[0].to_bits(), out[i].to_bits());
        }
        // Dropout is the identity at inference, whatever p.
        let dropping = with_p(0.5);
        let spec_d = Spec::new(Shape::image(2, 6, 6), &dropping).unwrap();
        let mut out_d = vec![0.0; n];
        infer(&spec_d, &p, &x, &mut out_d, &mut scratch, n).unwrap();
        assert_eq!(out.map_bits(), out_d.map_bits());
        // A training forward with p > 0 does differ.
        let acts_d = acts_for(&spec_d, &p, &x, n);
        assert_ne!(output(&spec_d, &acts_d, n), output(&spec, &acts, n));
    }

    #[test]
    fn infer_of_generator_matches_forward() {
        let mut layers = CONV_G;
        layers[7] = Layer::Dropout { p: 0.0 };
        let n = 3;
        let spec = Spec::new(Shape::flat(3), &layers).unwrap();
        let mut r = Lcg::new(64);
        let mut p = vec![0.0; spec.param_len()];
        r.fill(&mut p);
        let mut x = vec![0.0; n * 3];
        r.fill(&mut x);
        let acts = acts_for(&spec, &p, &x, n);
        set_running_to_batch(&spec, &mut p, &acts, n);
        let mut out = vec![0.0; n * 16];
        let mut scratch = vec![0.0; spec.infer_scratch_len(n)];
        infer(&spec, &p, &x, &mut out, &mut scratch, n).unwrap();
        for (a, b) in output(&spec, &acts, n).iter().zip(&out) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    /// Pins the inference bits of a conv network, so any change of the fixed summation order
    /// (which would break host/firmware agreement) is noticed.
    #[test]
    fn conv_infer_bits_are_pinned() {
        let spec = Spec::new(Shape::flat(3), &CONV_G).unwrap();
        let mut r = Lcg::new(65);
        let mut p = vec![0.0; spec.param_len()];
        r.fill(&mut p);
        for info in spec.iter() {
            if let Layer::BatchNorm { .. } = info.layer {
                // Positive running variances.
                let c = info.stats_len / 2;
                let st = &mut p[info.stats_range()];
                for v in &mut st[c..] {
                    *v = v.abs() + 0.5;
                }
            }
        }
        let mut x = vec![0.0; 2 * 3];
        r.fill(&mut x);
        let mut out = vec![0.0; 2 * 16];
        let mut scratch = vec![0.0; spec.infer_scratch_len(2)];
        infer(&spec, &p, &x, &mut out, &mut scratch, 2).unwrap();
        // FNV-1a over the output bits.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for v in &out {
            for byte in v.to_bits().to_le_bytes() {
                h = (h ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        assert_eq!(h, PINNED_CONV_INFER, "{h:#x}");
    }

    const PINNED_CONV_INFER: u64 = 0x80ef_e15d_2508_4d9c;

    #[test]
    fn running_statistics_follow_the_batch() {
        let n = 4;
        let spec = Spec::new(Shape::image(2, 6, 6), &CONV_D).unwrap();
        let mut r = Lcg::new(66);
        let mut p = vec![0.0; spec.param_len()];
        crate::init::init_params(
            &spec,
            &mut p,
            crate::init::Init::HeNormal,
            &mut crate::noise::rng(1),
        )
        .unwrap();
        let mut x = vec![0.0; n * spec.input().len()];
        r.fill(&mut x);
        let acts = acts_for(&spec, &p, &x, n);
        let bn = spec.layer(1).unwrap();
        let before = p.clone();
        update_running_stats(&spec, &mut p, &acts, n).unwrap();
        // Only the statistics moved.
        for (i, (a, b)) in p.iter().zip(&before).enumerate() {
            if !bn.stats_range().contains(&i) {
                assert_eq!(a, b);
            }
        }
        // momentum 0.1 from mean 0 / variance 1: 0.1·batch mean, 0.9 + 0.1·unbiased variance.
        let batch = &acts[bn.aux_range(n)][..6];
        let m = (n * 36) as f32;
        let st = &p[bn.stats_range()];
        for c in 0..3 {
            assert!((st[c] - 0.1 * batch[c]).abs() < 1e-6);
            let want = 0.9 + 0.1 * batch[3 + c] * m / (m - 1.0);
            assert!((st[3 + c] - want).abs() < 1e-5, "{} vs {want}", st[3 + c]);
        }
        // A network without batch norm is left alone.
        let (plain, pp, _) = setup(2);
        let mut pp2 = pp.clone();
        update_running_stats(&plain, &mut pp2, &vec![0.0; plain.act_len(2)], 2).unwrap();
        assert_eq!(pp, pp2);
        assert!(update_running_stats(&spec, &mut p, &acts[1..], n).is_err());
    }

    #[test]
    fn dropout_masks_follow_the_seed() {
        let layers = [Layer::Dense { out: 64 }, Layer::Dropout { p: 0.5 }];
        let spec = Spec::new(Shape::flat(2), &layers).unwrap();
        let mut r = Lcg::new(67);
        let mut p = vec![0.0; spec.param_len()];
        r.fill(&mut p);
        let x = [0.5f32, -0.25];
        let run = |seed| {
            let mut acts = vec![0.0; spec.act_len(1)];
            acts[..2].copy_from_slice(&x);
            forward_with(
                &spec,
                &p,
                &mut acts,
                1,
                &Serial,
                &ForwardCtx::with_seed(seed),
            )
            .unwrap();
            output(&spec, &acts, 1).to_vec()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        // forward is forward_with seed 0.
        let mut acts = vec![0.0; spec.act_len(1)];
        acts[..2].copy_from_slice(&x);
        forward(&spec, &p, &mut acts, 1, &Serial).unwrap();
        assert_eq!(output(&spec, &acts, 1), &run(0)[..]);
    }

    /// The full DCGAN pair at batch 2: initialise, train-forward, backward through D into G's
    /// output and through G, infer. Checks that every buffer size rule holds at real shapes.
    #[test]
    fn dcgan_pair_runs() {
        use crate::spec::tests::{DCGAN_D, DCGAN_G};
        let n = 2;
        let g = Spec::new(Shape::flat(100), &DCGAN_G).unwrap();
        let d = Spec::new(Shape::image(1, 28, 28), DCGAN_D).unwrap();
        let mut pg = vec![0.0; g.param_len()];
        let mut pd = vec![0.0; d.param_len()];
        let init = crate::init::Init::HeNormal;
        crate::init::init_params(&g, &mut pg, init, &mut crate::noise::rng(1)).unwrap();
        crate::init::init_params(&d, &mut pd, init, &mut crate::noise::rng(2)).unwrap();
        let mut z = vec![0.0; n * 100];
        Lcg::new(68).fill(&mut z);
        let mut ag = vec![0.0; g.act_len(n)];
        input_mut(&g, &mut ag, n).copy_from_slice(&z);
        forward(&g, &pg, &mut ag, n, &Serial).unwrap();
        let fake = output(&g, &ag, n).to_vec();
        assert!(fake.iter().all(|v| v.abs() <= 1.0));
        let mut ad = vec![0.0; d.act_len(n)];
        input_mut(&d, &mut ad, n).copy_from_slice(&fake);
        forward(&d, &pd, &mut ad, n, &Serial).unwrap();
        // Generator step: gradient of D's output with respect to the fake images, then G.
        let mut dfake = vec![0.0; fake.len()];
        let mut sd = vec![0.0; d.backward_scratch_len(n)];
        backward(
            &d,
            &pd,
            &ad,
            &[1.0; 2],
            None,
            Some(&mut dfake),
            &mut sd,
            n,
            &Serial,
        )
        .unwrap();
        assert!(dfake.iter().all(|v| v.is_finite()) && dfake.iter().any(|&v| v != 0.0));
        let mut gg = vec![0.0; g.param_len()];
        let mut sg = vec![0.0; g.backward_scratch_len(n)];
        backward(
            &g,
            &pg,
            &ag,
            &dfake,
            Some(&mut gg),
            None,
            &mut sg,
            n,
            &Serial,
        )
        .unwrap();
        assert!(gg.iter().all(|v| v.is_finite()));
        for info in g.iter() {
            if info.weight_len > 0 {
                assert!(
                    gg[info.weight_range()].iter().any(|&v| v != 0.0),
                    "{}",
                    info.index
                );
            }
        }
        update_running_stats(&g, &mut pg, &ag, n).unwrap();
        let mut img = vec![0.0; n * 784];
        let mut scratch = vec![0.0; g.infer_scratch_len(n)];
        infer(&g, &pg, &z, &mut img, &mut scratch, n).unwrap();
        assert!(img.iter().all(|v| v.abs() <= 1.0));
        // gp.rs knows only dense critics: conv layers are reported, not mishandled.
        let mut gp_scratch = vec![0.0; crate::gp::gp_scratch_len(&d, n)];
        let mut gd = vec![0.0; d.param_len()];
        assert!(matches!(
            crate::gp::gradient_penalty(&d, &pd, &mut gd, &fake, 10.0, &mut gp_scratch, n, &Serial),
            Err(CoreError::Unsupported { .. })
        ));
    }

    /// A DCGAN generator survives the weights file: running statistics included (they sit in
    /// the data section with the other tensors), and inference from the file's buffer in place
    /// gives the same bits.
    #[test]
    fn dcgan_generator_through_the_weights_file() {
        use crate::format::{self, Header, ModelKind, WeightsFile};
        use crate::spec::tests::DCGAN_G;
        let g = Spec::new(Shape::flat(100), &DCGAN_G).unwrap();
        let mut p = vec![0.0; g.param_len()];
        crate::init::init_params(
            &g,
            &mut p,
            crate::init::Init::HeNormal,
            &mut crate::noise::rng(5),
        )
        .unwrap();
        // Non-trivial running statistics.
        let n = 2;
        let mut z = vec![0.0; n * 100];
        Lcg::new(69).fill(&mut z);
        let acts = run_forward(&g, &p, &z, n);
        update_running_stats(&g, &mut p, &acts, n).unwrap();
        let header = Header::for_spec(
            ModelKind::Generator,
            &g,
            100,
            0,
            format::NoiseKind::Gaussian,
        )
        .unwrap();
        // Start the file on a 16-byte boundary so the data section can be read in place.
        let mut raw = vec![0u8; format::max_file_len(g.param_len()) + 16];
        let start = raw.as_ptr().align_offset(16);
        let bytes = &mut raw[start..];
        let len = format::write(bytes, &header, &p).unwrap();
        let file = WeightsFile::parse(&bytes[..len]).unwrap();
        assert_eq!(file.params(), Some(&p[..]));
        let spec = file.spec();
        let mut a = vec![0.0; n * 784];
        let mut b = vec![0.0; n * 784];
        let mut scratch = vec![0.0; spec.infer_scratch_len(n)];
        infer(&spec, file.params().unwrap(), &z, &mut a, &mut scratch, n).unwrap();
        infer(&g, &p, &z, &mut b, &mut scratch, n).unwrap();
        assert_eq!(a.map_bits(), b.map_bits());
    }

    trait MapBits {
        fn map_bits(&self) -> vec::Vec<u32>;
    }
    impl MapBits for vec::Vec<f32> {
        fn map_bits(&self) -> vec::Vec<u32> {
            self.iter().map(|v| v.to_bits()).collect()
        }
    }
}
