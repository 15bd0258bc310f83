//! Whole-network passes over a [`Spec`]: training forward, backward, and exact inference.
//!
//! Buffers (all caller-owned, lengths from the spec):
//! - `params`: [`Spec::param_len`] elements, layer tensors at [`crate::spec::LayerInfo`] offsets.
//! - `grads`: same layout as `params`; backward adds into it.
//! - `acts`: [`Spec::act_len`]`(n)`: the input batch (N × input) followed by every non-view
//!   layer's output. The caller writes the input into the first segment before [`forward`];
//!   [`output`] returns the last segment.
//! - `scratch`: [`Spec::backward_scratch_len`]`(n)` or [`Spec::infer_scratch_len`]`(n)`.

use crate::act::Activation;
use crate::dense;
use crate::error::{CoreError, check_len};
use crate::kernels;
use crate::kernels::Exec;
use crate::mbd;
use crate::spec::{Layer, LayerInfo, MAX_LAYERS, Spec};

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

/// Splits `acts` so that `inp` is the layer's input segment and `out` its output segment.
/// Non-view layers always write after their input, so the two never overlap.
fn in_out<'b>(acts: &'b mut [f32], info: &LayerInfo, n: usize) -> (&'b [f32], &'b mut [f32]) {
    let ir = info.in_range(n);
    let or = info.out_range(n);
    debug_assert!(ir.end <= or.start);
    let (head, tail) = acts.split_at_mut(or.start);
    (&head[ir], &mut tail[..or.end - or.start])
}

/// Training forward pass: fills every activation segment of `acts` from its input segment.
pub fn forward(
    spec: &Spec<'_>,
    params: &[f32],
    acts: &mut [f32],
    n: usize,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len("params", params.len(), spec.param_len())?;
    check_len("acts", acts.len(), spec.act_len(n))?;
    for info in spec.iter() {
        if info.layer.is_view() {
            continue;
        }
        if let Layer::MinibatchDisc { kernels, dims } = info.layer {
            let (head, tail) = acts.split_at_mut(info.out_range(n).start);
            let (out, aux) = tail.split_at_mut(info.aux_range(n).start - info.out_range(n).start);
            mbd::mbd_forward(
                &mut out[..n * info.out_shape.len()],
                &head[info.in_range(n)],
                &params[info.weight_range()],
                &mut aux[..n * info.layer.aux_len()],
                n,
                info.in_shape.len(),
                kernels as usize,
                dims as usize,
            )?;
            continue;
        }
        let (inp, out) = in_out(acts, &info, n);
        match info.layer {
            Layer::Dense { out: c_out } => dense::dense_forward(
                out,
                inp,
                &params[info.weight_range()],
                &params[info.bias_range()],
                n,
                info.in_shape.len(),
                c_out as usize,
                exec,
            )?,
            ref l => match Activation::of(l) {
                Some(a) => a.forward(out, inp),
                None => return Err(CoreError::Unsupported { layer: info.index }),
            },
        }
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
    grads: Option<&mut [f32]>,
    dinput: Option<&mut [f32]>,
    scratch: &mut [f32],
    n: usize,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    backward_impl(
        spec, params, acts, None, upto, dout, grads, dinput, scratch, n, exec,
    )
}

/// The shared walker. `wgrad_acts`, when given, replaces the layer inputs used for weight
/// gradients (activation masks still come from `acts`) and bias gradients are skipped: that is
/// the second pass of the gradient penalty (see [`crate::gp`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_impl(
    spec: &Spec<'_>,
    params: &[f32],
    acts: &[f32],
    wgrad_acts: Option<&[f32]>,
    upto: usize,
    dout: &[f32],
    mut grads: Option<&mut [f32]>,
    mut dinput: Option<&mut [f32]>,
    scratch: &mut [f32],
    n: usize,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    if upto == 0 || upto > spec.layers().len() {
        return Err(CoreError::Unsupported { layer: upto });
    }
    check_len("params", params.len(), spec.param_len())?;
    if let Some(g) = &grads {
        check_len("grads", g.len(), spec.param_len())?;
    }
    check_len("acts", acts.len(), spec.act_len(n))?;
    if let Some(w) = wgrad_acts {
        check_len("wgrad_acts", w.len(), spec.act_len(n))?;
    }
    check_len("scratch", scratch.len(), spec.backward_scratch_len(n))?;
    if let Some(d) = &dinput {
        check_len("dinput", d.len(), n * spec.input().len())?;
    }
    let mut infos: heapless::Vec<LayerInfo, MAX_LAYERS> = heapless::Vec::new();
    for info in spec.iter().take(upto) {
        // Cannot fail: Spec::new caps the layer count at MAX_LAYERS.
        let _ = infos.push(info);
    }
    let top = infos[upto - 1];
    check_len("dout", dout.len(), n * top.out_shape.len())?;
    let half = spec.max_features() * n;
    let (ping, aux_scratch) = scratch.split_at_mut(2 * half);
    let (mut cur, mut other) = ping.split_at_mut(half);
    cur[..dout.len()].copy_from_slice(dout);

    // Index of the first layer that does real work: below it only views remain, so its input
    // gradient is the network's input gradient.
    let first_real = infos.iter().position(|i| !i.layer.is_view());

    for info in infos.iter().rev() {
        if info.layer.is_view() {
            continue;
        }
        let out_len = n * info.out_shape.len();
        let in_len = n * info.in_shape.len();
        let is_first = Some(info.index) == first_real;
        let want_dinp = !is_first || dinput.is_some();
        let g_out = &cur[..out_len];
        let inp = &acts[info.in_range(n)];
        let dinp: Option<&mut [f32]> = if !want_dinp {
            None
        } else if is_first {
            dinput.as_deref_mut()
        } else {
            Some(&mut other[..in_len])
        };
        match info.layer {
            Layer::Dense { out: c_out } => {
                let (c_in, c_out) = (info.in_shape.len(), c_out as usize);
                let w = &params[info.weight_range()];
                if let Some(grads) = grads.as_deref_mut() {
                    let (gw, gb) = grads[info.param_range()]
                        .split_at_mut(info.bias_offset - info.param_offset);
                    let gw = &mut gw[..info.weight_len];
                    let wgrad_inp = match wgrad_acts {
                        Some(t) => &t[info.in_range(n)],
                        None => inp,
                    };
                    // dW (C_in×C_out) += inpᵀ · dout
                    kernels::matmul_tn(gw, wgrad_inp, g_out, c_in, n, c_out, true, exec);
                    if wgrad_acts.is_none() {
                        let gb = &mut gb[..info.bias_len];
                        for row in g_out.chunks_exact(c_out) {
                            for (g, &d) in gb.iter_mut().zip(row) {
                                *g += d;
                            }
                        }
                    }
                }
                if let Some(d) = dinp {
                    // dinp (N×C_in) = dout · Wᵀ
                    kernels::matmul_nt(d, g_out, w, n, c_out, c_in, false, exec);
                }
            }
            Layer::MinibatchDisc { kernels, dims } => {
                if wgrad_acts.is_some() {
                    return Err(CoreError::Unsupported { layer: info.index });
                }
                // An empty weight-gradient slice asks for the input gradient only.
                let dt: &mut [f32] = match grads.as_deref_mut() {
                    Some(g) => &mut g[info.weight_range()],
                    None => &mut [],
                };
                mbd::mbd_backward(
                    dinp,
                    dt,
                    g_out,
                    inp,
                    &params[info.weight_range()],
                    &mut aux_scratch[..n * info.layer.aux_len()],
                    n,
                    info.in_shape.len(),
                    kernels as usize,
                    dims as usize,
                )?;
            }
            ref l => match Activation::of(l) {
                Some(a) => {
                    if let Some(d) = dinp {
                        a.backward(d, g_out, inp, &acts[info.out_range(n)]);
                    }
                }
                None => return Err(CoreError::Unsupported { layer: info.index }),
            },
        }
        core::mem::swap(&mut cur, &mut other);
    }
    Ok(())
}

/// Exact inference: `output (N × out) = net(input (N × in))`, bit-identical on every target.
///
/// Uses the exact dense kernel and in-place activations. `scratch` has
/// [`Spec::infer_scratch_len`]`(n)` elements. This is the path `gan-train sample` and the
/// firmware share.
pub fn infer(
    spec: &Spec<'_>,
    params: &[f32],
    input: &[f32],
    output: &mut [f32],
    scratch: &mut [f32],
    n: usize,
) -> Result<(), CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len("params", params.len(), spec.param_len())?;
    check_len("input", input.len(), n * spec.input().len())?;
    check_len("output", output.len(), n * spec.output().len())?;
    check_len("scratch", scratch.len(), spec.infer_scratch_len(n))?;
    let half = spec.max_features() * n;
    let (mut a, mut b) = scratch.split_at_mut(half);
    let in_len = input.len();
    a[..in_len].copy_from_slice(input);
    let mut len = in_len;
    for info in spec.iter() {
        match info.layer {
            Layer::Dense { out: c_out } => {
                let out_len = n * c_out as usize;
                dense::dense_forward_exact(
                    &mut b[..out_len],
                    &a[..len],
                    &params[info.weight_range()],
                    &params[info.bias_range()],
                    n,
                    info.in_shape.len(),
                    c_out as usize,
                )?;
                core::mem::swap(&mut a, &mut b);
                len = out_len;
            }
            ref l if l.is_view() => {}
            ref l => match Activation::of(l) {
                Some(act) => act.forward_inplace(&mut a[..len]),
                None => return Err(CoreError::Unsupported { layer: info.index }),
            },
        }
    }
    output.copy_from_slice(&a[..len]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Serial;
    use crate::spec::Shape;
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

    fn run_forward(spec: &Spec, p: &[f32], x: &[f32], n: usize) -> vec::Vec<f32> {
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
        backward(&spec, &p, &acts, &g, None, Some(&mut dx2), &mut scratch, n, &Serial).unwrap();
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
}
