//! Whole-network tests: finite-difference checks of the backward pass, inference against
//! the training forward, pinned bits, batch-norm statistics, dropout masks, the DCGAN pair.

use super::*;
use crate::kernels::Serial;
use crate::spec::{Layer, Shape};
use crate::testutil::{Lcg, grad_check};
use std::vec;
use std::vec::Vec;

const LAYERS: [Layer; 7] = [
    Layer::Dense { out: 6 },
    Layer::LeakyRelu { alpha: 0.2 },
    Layer::Reshape { to: Shape::image(1, 2, 3) },
    Layer::Flatten,
    Layer::Dense { out: 4 },
    Layer::Relu,
    Layer::Dense { out: 2 },
];

fn setup(n: usize) -> (Spec<'static>, vec::Vec<f32>, vec::Vec<f32>) {
    let spec = Spec::new(Shape::flat(3), &LAYERS).unwrap();
    let mut r = Lcg::new(5);
    let p = r.filled(spec.param_len());
    let x = r.filled(n * 3);
    (spec, p, x)
}

fn run_forward(spec: &Spec<'_>, p: &[f32], x: &[f32], n: usize) -> vec::Vec<f32> {
    let mut acts = vec![0.0; spec.act_len(n)];
    input_mut(spec, &mut acts, n).copy_from_slice(x);
    forward(spec, p, &mut acts, n, &Serial).unwrap();
    acts
}

/// [`backward`] from output gradient `g` asking for the parameter gradients and/or the input
/// gradient (`want`); returns them (empty when not asked for).
fn back(
    spec: &Spec<'_>, p: &[f32], acts: &[f32], g: &[f32], n: usize, want: (bool, bool),
) -> (vec::Vec<f32>, vec::Vec<f32>) {
    let mut grads = vec![0.0; if want.0 { spec.param_len() } else { 0 }];
    let mut dx = vec![0.0; if want.1 { n * spec.input().len() } else { 0 }];
    let mut scratch = vec![0.0; spec.backward_scratch_len(n)];
    let (gr, d) = (want.0.then_some(&mut grads[..]), want.1.then_some(&mut dx[..]));
    backward(spec, p, acts, g, gr, d, &mut scratch, n, &Serial).unwrap();
    (grads, dx)
}

/// `Σ output ⊙ g` in f64 after a training forward (dropout seed 0).
fn weighted(spec: &Spec<'_>, p: &[f32], x: &[f32], g: &[f32], n: usize) -> f64 {
    weighted_output(spec, p, x, g, n, 0)
}

/// Runs [`infer`] on `x` and checks it against the training forward's output in `acts`
/// (within `tol`); returns the inferred outputs.
fn infer_is_forward(
    spec: &Spec<'_>, p: &[f32], x: &[f32], acts: &[f32], n: usize, tol: f32,
) -> Vec<f32> {
    let want = output(spec, acts, n);
    let mut out = vec![0.0; want.len()];
    let mut scratch = vec![0.0; spec.infer_scratch_len(n)];
    infer(spec, p, x, &mut out, &mut scratch, n).unwrap();
    for (a, b) in want.iter().zip(&out) {
        assert!((a - b).abs() < tol, "{a} vs {b}");
    }
    out
}

#[test]
fn infer_matches_forward() {
    let n = 4;
    let (spec, p, x) = setup(n);
    let acts = run_forward(&spec, &p, &x, n);
    infer_is_forward(&spec, &p, &x, &acts, n, 1e-5);
}

/// Runs the training forward and backward with output gradient `g` and checks the parameter
/// and input gradients against central differences of `Σ output ⊙ g` (tolerance `tol`);
/// returns the activations and both gradients.
fn checked_gradients(
    spec: &Spec<'_>, p: &[f32], x: &[f32], g: &[f32], n: usize, tol: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let loss = |p: &[f32], x: &[f32]| weighted(spec, p, x, g, n);
    let acts = run_forward(spec, p, x, n);
    let (grads, dx) = back(spec, p, &acts, g, n, (true, true));
    grad_check(p, &grads, |pp| loss(pp, x), 1e-3, tol);
    grad_check(x, &dx, |xp| loss(p, xp), 1e-3, tol);
    (acts, grads, dx)
}

#[test]
fn backward_matches_finite_differences() {
    let n = 3;
    let (spec, p, x) = setup(n);
    let mut r = Lcg::new(9);
    let g = r.filled(n * 2);
    let (acts, grads, dx) = checked_gradients(&spec, &p, &x, &g, n, 2e-3);

    // Without an input gradient the parameter gradients are the same.
    let (grads2, _) = back(&spec, &p, &acts, &g, n, (true, false));
    assert_eq!(grads, grads2);
    // Without parameter gradients the input gradient is the same.
    let (_, dx2) = back(&spec, &p, &acts, &g, n, (false, true));
    assert_eq!(dx, dx2);
}

/// Backward from an inner layer equals the full backward of the truncated network.
#[test]
fn partial_backward_matches_truncated_network() {
    let n = 2;
    let (spec, p, x) = setup(n);
    let upto = 5; // through the ReLU after the second dense layer: output 4 features
    let mut r = Lcg::new(4);
    let g = r.filled(n * 4);
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
    let (sgrads, sdx) = back(&short, sp, &sacts, &g, n, (true, true));
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
        Layer::MinibatchDisc { kernels: 3, dims: 2 },
        Layer::Dense { out: 1 },
    ];
    let n = 4;
    let spec = Spec::new(Shape::flat(3), &layers).unwrap();
    assert_eq!(spec.layer(2).unwrap().out_shape, Shape::flat(7));
    let mut r = Lcg::new(8);
    let p = r.filled(spec.param_len());
    let x = r.filled(n * 3);
    let g = r.filled(n);
    let (acts, _, dx) = checked_gradients(&spec, &p, &x, &g, n, 3e-3);
    // The input gradient alone (generator step through a frozen D) is the same.
    let (_, dx2) = back(&spec, &p, &acts, &g, n, (false, true));
    assert_eq!(dx, dx2);
}

#[test]
fn rejects_wrong_buffers() {
    let (spec, p, x) = setup(2);
    let mut out = vec![0.0; 4];
    let mut scratch = vec![0.0; spec.infer_scratch_len(2) - 1];
    assert!(matches!(
        infer(&spec, &p, &x, &mut out, &mut scratch, 2),
        Err(CoreError::BufferLen { what: "scratch", .. })
    ));
    let mut acts = vec![0.0; 3];
    assert!(forward(&spec, &p, &mut acts, 2, &Serial).is_err());
    assert!(forward(&spec, &p[1..], &mut acts, 2, &Serial).is_err());
}

/// `Σ output ⊙ g` in f64 after a training forward with dropout seed `seed`.
fn weighted_output(spec: &Spec<'_>, p: &[f32], x: &[f32], g: &[f32], n: usize, seed: u64) -> f64 {
    let mut acts = vec![0.0; spec.act_len(n)];
    input_mut(spec, &mut acts, n).copy_from_slice(x);
    forward_with(spec, p, &mut acts, n, &Serial, &ForwardCtx::with_seed(seed)).unwrap();
    output(spec, &acts, n).iter().zip(g).map(|(&o, &g)| o as f64 * g as f64).sum()
}

/// Whole-network finite differences of every parameter and input gradient, plus the
/// optional-buffer variants of backward.
fn check_network(layers: &[Layer], input: Shape, n: usize, seed: u64, atol: f64) {
    let spec = Spec::new(input, layers).unwrap();
    let mut r = Lcg::new(seed);
    let p = r.filled(spec.param_len());
    let x = r.filled(n * input.len());
    let g = r.filled(n * spec.output().len());
    let ctx = ForwardCtx::with_seed(seed);
    let mut acts = vec![0.0; spec.act_len(n)];
    input_mut(&spec, &mut acts, n).copy_from_slice(&x);
    forward_with(&spec, &p, &mut acts, n, &Serial, &ctx).unwrap();
    let (grads, dx) = back(&spec, &p, &acts, &g, n, (true, true));
    grad_check(&p, &grads, |pp| weighted_output(&spec, pp, &x, &g, n, seed), 1e-3, atol);
    grad_check(&x, &dx, |xp| weighted_output(&spec, &p, xp, &g, n, seed), 1e-3, atol);
    // Running statistics are never trained.
    for info in spec.iter() {
        assert!(grads[info.stats_range()].iter().all(|&v| v == 0.0));
    }
    let (grads2, _) = back(&spec, &p, &acts, &g, n, (true, false));
    assert_eq!(grads, grads2);
    let (_, dx2) = back(&spec, &p, &acts, &g, n, (false, true));
    assert_eq!(dx, dx2);
}

/// A small discriminator: conv, batch norm, LeakyReLU, max pool, dropout, strided conv.
const CONV_D: [Layer; 9] = [
    Layer::Conv2d { out_c: 3, k: 3, stride: 1, pad: 1 },
    Layer::BatchNorm { eps: 1e-3, momentum: 0.1 },
    Layer::LeakyRelu { alpha: 0.2 },
    Layer::MaxPool2d { k: 2, stride: 2 },
    Layer::Dropout { p: 0.3 },
    Layer::Conv2d { out_c: 2, k: 3, stride: 2, pad: 1 },
    Layer::Tanh,
    Layer::Flatten,
    Layer::Dense { out: 1 },
];

/// A small generator: dense, flat batch norm, reshape, batch norm over channels,
/// transposed convolutions with stride 2 and padding.
const CONV_G: [Layer; 10] = [
    Layer::Dense { out: 8 },
    Layer::BatchNorm { eps: 1e-3, momentum: 0.1 },
    Layer::LeakyRelu { alpha: 0.2 },
    Layer::Reshape { to: Shape::image(2, 2, 2) },
    Layer::ConvTranspose2d { out_c: 3, k: 4, stride: 2, pad: 1 },
    Layer::BatchNorm { eps: 1e-3, momentum: 0.1 },
    Layer::Tanh,
    Layer::Dropout { p: 0.25 },
    Layer::ConvTranspose2d { out_c: 1, k: 3, stride: 1, pad: 1 },
    Layer::Sigmoid,
];

/// Smallest gap between the two largest inputs of any max-pool window (k = stride = 2)
/// of layer `layer`, for the parameters and input `check_network` draws from `seed`.
fn min_pool_gap(spec: &Spec<'_>, layer: usize, n: usize, seed: u64) -> f32 {
    let mut r = Lcg::new(seed);
    let p = r.filled(spec.param_len());
    let x = r.filled(n * spec.input().len());
    let mut acts = vec![0.0; spec.act_len(n)];
    input_mut(spec, &mut acts, n).copy_from_slice(&x);
    forward_with(spec, &p, &mut acts, n, &Serial, &ForwardCtx::with_seed(seed)).unwrap();
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
    let seed = (61..).find(|&s| min_pool_gap(&spec, 3, n, s) > 0.02).unwrap();
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
        // Batch normalisation is the one kind with running statistics.
        if info.stats_len > 0 {
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
    let mut p = r.filled(spec.param_len());
    let x = r.filled(n * spec.input().len());
    let acts = acts_for(&spec, &p, &x, n);
    set_running_to_batch(&spec, &mut p, &acts, n);
    let out = infer_is_forward(&spec, &p, &x, &acts, n, 1e-4);
    // Deterministic, and each sample independent of its batch.
    let mut again = vec![0.0; n];
    let mut scratch = vec![0.0; spec.infer_scratch_len(n)];
    infer(&spec, &p, &x, &mut again, &mut scratch, n).unwrap();
    assert_eq!(out.map_bits(), again.map_bits());
    let in_len = spec.input().len();
    let mut one = [0.0f32; 1];
    let mut scratch1 = vec![0.0; spec.infer_scratch_len(1)];
    for i in 0..n {
        infer(&spec, &p, &x[i * in_len..(i + 1) * in_len], &mut one, &mut scratch1, 1).unwrap();
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

/// The fast forward in inference mode computes what `infer` computes (running statistics, no
/// dropout), to within the training kernels' rounding, whatever the batch statistics are.
#[test]
fn inference_mode_forward_matches_infer() {
    let mut layers = CONV_D;
    layers[4] = Layer::Dropout { p: 0.5 };
    let n = 5;
    let spec = Spec::new(Shape::image(2, 6, 6), &layers).unwrap();
    let mut r = Lcg::new(66);
    let mut p = r.filled(spec.param_len());
    for info in spec.iter().filter(|l| l.stats_len > 0) {
        // Positive running variances, far from this batch's statistics.
        let c = info.stats_len / 2;
        p[info.stats_range()][c..].iter_mut().for_each(|v| *v = v.abs() + 0.5);
    }
    let x = r.filled(n * spec.input().len());
    let mut want = vec![0.0; n];
    infer(&spec, &p, &x, &mut want, &mut vec![0.0; spec.infer_scratch_len(n)], n).unwrap();
    let mut acts = vec![0.0; spec.act_len(n)];
    input_mut(&spec, &mut acts, n).copy_from_slice(&x);
    forward_with(&spec, &p, &mut acts, n, &Serial, &ForwardCtx::inference()).unwrap();
    for (a, b) in output(&spec, &acts, n).iter().zip(&want) {
        assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
    // The training forward uses the batch's statistics and masks: other numbers.
    let train = acts_for(&spec, &p, &x, n);
    assert!(output(&spec, &train, n).iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn infer_of_generator_matches_forward() {
    let mut layers = CONV_G;
    layers[7] = Layer::Dropout { p: 0.0 };
    let n = 3;
    let spec = Spec::new(Shape::flat(3), &layers).unwrap();
    let mut r = Lcg::new(64);
    let mut p = r.filled(spec.param_len());
    let x = r.filled(n * 3);
    let acts = acts_for(&spec, &p, &x, n);
    set_running_to_batch(&spec, &mut p, &acts, n);
    infer_is_forward(&spec, &p, &x, &acts, n, 1e-5);
}

/// Pins the inference bits of a conv network, so any change of the fixed summation order
/// (which would break host/firmware agreement) is noticed.
#[test]
fn conv_infer_bits_are_pinned() {
    let spec = Spec::new(Shape::flat(3), &CONV_G).unwrap();
    let mut r = Lcg::new(65);
    let mut p = r.filled(spec.param_len());
    for info in spec.iter() {
        if info.stats_len > 0 {
            // Positive running variances (batch normalisation's).
            let c = info.stats_len / 2;
            let st = &mut p[info.stats_range()];
            for v in &mut st[c..] {
                *v = v.abs() + 0.5;
            }
        }
    }
    let x = r.filled(2 * 3);
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
    crate::init::init_params(&spec, &mut p, crate::init::Init::HeNormal, &mut crate::noise::rng(1))
        .unwrap();
    let x = r.filled(n * spec.input().len());
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
    let p = r.filled(spec.param_len());
    let x = [0.5f32, -0.25];
    let run = |seed| {
        let mut acts = vec![0.0; spec.act_len(1)];
        acts[..2].copy_from_slice(&x);
        forward_with(&spec, &p, &mut acts, 1, &Serial, &ForwardCtx::with_seed(seed)).unwrap();
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
    let (_, dfake) = back(&d, &pd, &ad, &[1.0; 2], n, (false, true));
    assert!(dfake.iter().all(|v| v.is_finite()) && dfake.iter().any(|&v| v != 0.0));
    let (gg, _) = back(&g, &pg, &ag, &dfake, n, (true, false));
    assert!(gg.iter().all(|v| v.is_finite()));
    for info in g.iter() {
        if info.weight_len > 0 {
            assert!(gg[info.weight_range()].iter().any(|&v| v != 0.0), "{}", info.index);
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
    crate::init::init_params(&g, &mut p, crate::init::Init::HeNormal, &mut crate::noise::rng(5))
        .unwrap();
    // Non-trivial running statistics.
    let n = 2;
    let mut z = vec![0.0; n * 100];
    Lcg::new(69).fill(&mut z);
    let acts = run_forward(&g, &p, &z, n);
    update_running_stats(&g, &mut p, &acts, n).unwrap();
    let header =
        Header::for_spec(ModelKind::Generator, &g, 100, 0, format::NoiseKind::Gaussian).unwrap();
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
