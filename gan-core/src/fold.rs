//! Folding batch normalisation into the layer before it, for inference.
//!
//! At inference a batch normalisation with running statistics is an affine map per channel,
//! `y = a·x + c` with `a = γ / √(σ² + ε)` and `c = β − μ·a` (what
//! [`crate::layers::batch_norm`] computes). When it directly follows a dense or convolution
//! layer (through reshapes or flattens only), that map moves into the layer: every weight of
//! output channel `j` is multiplied by `a`, and the bias becomes `a·b + c`. The network loses
//! the normalisation, runs fewer operations, and its weights can be stored as int8, which
//! keeps no batch normalisation.
//!
//! Which normalisation channel an output of the layer before belongs to comes from
//! [`Channels`]: a convolution's output channel is the normalised channel; a dense layer's
//! `n` outputs viewed as `C × H × W` give output `j` to channel `j / (H·W)`.
//!
//! The folded network computes the same function up to rounding (a few units in the last
//! place of each activation); exported generators are folded, so host and firmware run the
//! same folded file and still agree bit for bit.

use crate::error::{CoreError, SpecError};
use crate::layers::{Channels, Layer, channels};
use crate::presets::Layers;
use crate::spec::{LayerInfo, Spec};

/// The producing layer of a foldable batch normalisation: its index, its channels and how many
/// of its outputs share one normalised channel.
#[derive(Clone, Copy, Debug)]
struct Producer {
    index: usize,
    ch: Channels,
    per: usize,
}

/// If layer `bn` is a batch normalisation that can fold into the layer before it, that layer.
fn producer(spec: &Spec<'_>, bn: &LayerInfo) -> Option<Producer> {
    if !matches!(bn.layer, Layer::BatchNorm { .. }) {
        return None;
    }
    // The nearest layer before that is not a view.
    let before = (0..bn.index).rev().filter_map(|i| spec.layer(i)).find(|l| !l.view)?;
    let ch = channels(&before)?;
    let c = bn.in_shape.c as usize;
    if before.stats_len != 0 || before.bias_len != ch.n || c == 0 || !ch.n.is_multiple_of(c) {
        return None;
    }
    Some(Producer { index: before.index, ch, per: ch.n / c })
}

/// The layers of `spec` with every batch normalisation that can be folded removed (the others
/// stay). The input shape is unchanged.
pub fn folded_layers(spec: &Spec<'_>) -> Result<Layers, SpecError> {
    let mut out = Layers::new();
    for l in spec.iter() {
        if producer(spec, &l).is_none() {
            out.push(l.layer).map_err(|_| SpecError::TooManyLayers)?;
        }
    }
    Ok(out)
}

/// True if `spec` has a batch normalisation that [`folded_layers`] removes.
pub fn can_fold(spec: &Spec<'_>) -> bool {
    spec.iter().any(|l| producer(spec, &l).is_some())
}

/// Writes the parameters of the folded network `folded` (built from [`folded_layers`] of
/// `spec`) into `out` (`folded.param_len()` elements), from the parameters `params` of `spec`.
/// Padding stays zero.
pub fn fold_params(
    spec: &Spec<'_>, params: &[f32], folded: &Spec<'_>, out: &mut [f32],
) -> Result<(), CoreError> {
    crate::error::check_len("params", params.len(), spec.param_len())?;
    crate::error::check_len("out", out.len(), folded.param_len())?;
    out.fill(0.0);
    let mismatch = CoreError::Spec(SpecError::ShapeMismatch { layer: usize::MAX });
    // Copy every kept layer's tensors; remember where each original layer went.
    let mut dest = [usize::MAX; crate::spec::MAX_LAYERS];
    let mut kept = folded.iter();
    for l in spec.iter() {
        if producer(spec, &l).is_some() {
            continue;
        }
        let f = kept.next().ok_or(mismatch)?;
        if f.layer != l.layer || f.out_shape != l.out_shape {
            return Err(mismatch);
        }
        dest[l.index] = f.index;
        for (from, to) in [
            (l.weight_range(), f.weight_range()),
            (l.bias_range(), f.bias_range()),
            (l.stats_range(), f.stats_range()),
        ] {
            out[to].copy_from_slice(&params[from]);
        }
    }
    if kept.next().is_some() {
        return Err(mismatch);
    }
    // Fold each removed normalisation into its (already copied) producer.
    for bn in spec.iter() {
        let Some(p) = producer(spec, &bn) else {
            continue;
        };
        let Layer::BatchNorm { eps, .. } = bn.layer else {
            continue;
        };
        let f = folded.layer(dest[p.index]).ok_or(mismatch)?;
        let gamma = &params[bn.weight_range()];
        let beta = &params[bn.bias_range()];
        let (mean, var) = params[bn.stats_range()].split_at(bn.stats_len / 2);
        let affine = |c: usize| {
            let a = gamma[c] / libm::sqrtf(var[c] + eps);
            (a, beta[c] - mean[c] * a)
        };
        let (w, rest) = out[f.param_offset..].split_at_mut(f.bias_offset - f.param_offset);
        for (i, v) in w[..f.weight_len].iter_mut().enumerate() {
            *v *= affine(p.ch.of(i) / p.per).0;
        }
        for (j, v) in rest[..f.bias_len].iter_mut().enumerate() {
            let (a, c) = affine(j / p.per);
            *v = *v * a + c;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model;
    use crate::presets::BN;
    use crate::spec::Shape;
    use crate::testutil::Lcg;
    use std::vec;
    use std::vec::Vec;

    /// Random parameters with batch-norm scales near 1 and positive variances.
    fn params(spec: &Spec<'_>, r: &mut Lcg) -> Vec<f32> {
        let mut p: Vec<f32> = (0..spec.param_len()).map(|_| r.next_f32() - 0.5).collect();
        for l in spec.iter().filter(|l| l.stats_len > 0) {
            for v in &mut p[l.weight_range()] {
                *v += 1.0;
            }
            let half = l.stats_len / 2;
            for v in &mut p[l.stats_range()][half..] {
                *v = 0.3 + 2.0 * v.abs();
            }
        }
        p
    }

    /// Folds `layers` on input `input`, checks which layers remain, and compares the folded
    /// network's exact inference with the original's on a batch of random inputs.
    fn check(input: Shape, layers: &[Layer], remaining: usize) {
        let spec = Spec::new(input, layers).unwrap();
        let folded_layers = folded_layers(&spec).unwrap();
        assert_eq!(folded_layers.len(), remaining, "{layers:?}");
        assert_eq!(can_fold(&spec), remaining < layers.len());
        let folded = Spec::new(input, &folded_layers).unwrap();
        assert_eq!(folded.output(), spec.output());
        let mut r = Lcg::new(31);
        let p = params(&spec, &mut r);
        let mut fp = vec![0f32; folded.param_len()];
        fold_params(&spec, &p, &folded, &mut fp).unwrap();
        let n = 3;
        let x: Vec<f32> = (0..n * input.len()).map(|_| r.next_f32() * 2.0 - 1.0).collect();
        let mut want = vec![0f32; n * spec.output().len()];
        let mut got = want.clone();
        model::infer(&spec, &p, &x, &mut want, &mut vec![0.0; spec.infer_scratch_len(n)], n)
            .unwrap();
        model::infer(&folded, &fp, &x, &mut got, &mut vec![0.0; folded.infer_scratch_len(n)], n)
            .unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * scale.max(1.0), "{g} vs {w} ({layers:?})");
        }
        // The wrong output size is refused.
        assert!(fold_params(&spec, &p, &folded, &mut vec![0.0; fp.len() + 1]).is_err());
    }

    #[test]
    fn folds_after_dense_conv_and_transposed_conv() {
        let up = Layer::ConvTranspose2d { out_c: 3, k: 4, stride: 2, pad: 1 };
        let down = Layer::Conv2d { out_c: 4, k: 3, stride: 1, pad: 1 };
        // dense → reshape → BN (12 outputs viewed as 3 × 2 × 2), as the conv generators do.
        let dense_map = [
            Layer::Dense { out: 12 },
            Layer::Reshape { to: Shape::image(3, 2, 2) },
            BN,
            Layer::Relu,
            up,
            BN,
            Layer::Relu,
            down,
            BN,
            Layer::Tanh,
        ];
        check(Shape::flat(5), &dense_map, 7);
        // A flat BN after a dense layer.
        check(Shape::flat(4), &[Layer::Dense { out: 6 }, BN, Layer::Relu], 2);
        // Not foldable: BN first, after an activation, or after another BN.
        check(Shape::image(2, 3, 3), &[BN, down, Layer::Relu, BN], 4);
        check(Shape::flat(4), &[Layer::Dense { out: 6 }, BN, BN], 2);
    }
}
