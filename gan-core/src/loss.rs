//! GAN losses: value and gradient in one call.
//!
//! Every loss takes a batch of `N` scores (one per sample, any prior shape flattened) and
//! returns the **mean** loss over the batch. Unlike layer backward passes, the gradient buffer is
//! **overwritten** (not accumulated) with `d(mean loss)/d(input)`, already divided by `N`, so it
//! can be fed straight into the backward pass of the network that produced the scores.
//!
//! Shapes: `grad`, `p`/`logits`/`out`/`fake`/`real` and per-element `targets` are all `N`;
//! feature matching takes row-major feature matrices `real` N_real×F and `fake` N_fake×F.
//!
//! Errors: an empty batch (or a zero dimension) gives [`CoreError::ZeroSize`]; a buffer whose
//! length does not match gives [`CoreError::BufferLen`]. Nothing panics on input data.
//!
//! Sums are accumulated in `f32`, element by element in index order, so results are reproducible.

use crate::error::{CoreError, check_len};
use crate::layers::activation::{relu, sigmoid};

/// Epsilon inside the logarithms of [`bce`] and [`bce_targets`]: `ln(p + BCE_EPS)` stays finite
/// at `p = 0` (at most `-ln(1e-8) ≈ 18.42` per sample).
pub const BCE_EPS: f32 = 1e-8;

/// `Err(ZeroSize)` for an empty batch, then `Err(BufferLen)` unless `grad_len == n`.
fn check_batch(what: &'static str, grad_len: usize, n: usize) -> Result<(), CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len(what, grad_len, n)
}

/// `x·y`, or `Err(BufferLen)` naming `what` if the product overflows `usize`.
fn dim_product(what: &'static str, x: usize, y: usize, got: usize) -> Result<usize, CoreError> {
    x.checked_mul(y).ok_or(CoreError::BufferLen { what, expected: usize::MAX, got })
}

/// Shared body of the probability BCE. Lengths already checked, `p` non-empty.
fn bce_impl(grad: &mut [f32], p: &[f32], targets: impl Iterator<Item = f32>) -> f32 {
    let n = p.len() as f32;
    let inv_n = 1.0 / n;
    let mut sum = 0.0f32;
    for ((g, &p), t) in grad.iter_mut().zip(p).zip(targets) {
        let pos = p + BCE_EPS;
        let neg = (1.0 - p) + BCE_EPS;
        sum += -(t * libm::logf(pos) + (1.0 - t) * libm::logf(neg));
        *g = ((1.0 - t) / neg - t / pos) * inv_n;
    }
    sum / n
}

/// Binary cross-entropy on probabilities with one target for the whole batch.
///
/// `L = (1/N)·Σ_i −( t·ln(p_i + ε) + (1 − t)·ln(1 − p_i + ε) )` with `ε = BCE_EPS`;
/// `grad_i = ( (1 − t)/(1 − p_i + ε) − t/(p_i + ε) ) / N` (overwritten).
///
/// `p` must lie in `[0, 1]` (e.g. a Sigmoid output); outside it a logarithm may return NaN.
/// Prefer [`bce_logits`], which is stable and cheaper, when the logits are available.
/// `grad` and `p` have length `N`.
pub fn bce(grad: &mut [f32], p: &[f32], target: f32) -> Result<f32, CoreError> {
    check_batch("grad", grad.len(), p.len())?;
    Ok(bce_impl(grad, p, core::iter::repeat(target)))
}

/// [`bce`] with one target per sample (label smoothing, mixed real/fake batches).
///
/// `L = (1/N)·Σ_i −( t_i·ln(p_i + ε) + (1 − t_i)·ln(1 − p_i + ε) )`;
/// `grad_i = ( (1 − t_i)/(1 − p_i + ε) − t_i/(p_i + ε) ) / N`.
/// `grad`, `p` and `targets` have length `N`.
pub fn bce_targets(grad: &mut [f32], p: &[f32], targets: &[f32]) -> Result<f32, CoreError> {
    check_batch("grad", grad.len(), p.len())?;
    check_len("targets", targets.len(), p.len())?;
    Ok(bce_impl(grad, p, targets.iter().copied()))
}

/// Shared body of the logit BCE. Lengths already checked, `logits` non-empty.
fn bce_logits_impl(grad: &mut [f32], logits: &[f32], targets: impl Iterator<Item = f32>) -> f32 {
    let n = logits.len() as f32;
    let inv_n = 1.0 / n;
    let mut sum = 0.0f32;
    for ((g, &x), t) in grad.iter_mut().zip(logits).zip(targets) {
        // exp(-|x|) is in (0, 1], so nothing overflows for any finite x.
        sum += relu(x) - x * t + libm::log1pf(libm::expf(-libm::fabsf(x)));
        *g = (sigmoid(x) - t) * inv_n;
    }
    sum / n
}

/// Binary cross-entropy from logits (the sigmoid is folded in), one target for the batch.
///
/// `L = (1/N)·Σ_i ( max(x_i, 0) − x_i·t + ln(1 + e^{−|x_i|}) )`, which equals
/// `−t·ln σ(x) − (1 − t)·ln(1 − σ(x))` but never overflows;
/// `grad_i = (σ(x_i) − t) / N` (overwritten). `grad` and `logits` have length `N`.
pub fn bce_logits(grad: &mut [f32], logits: &[f32], target: f32) -> Result<f32, CoreError> {
    check_batch("grad", grad.len(), logits.len())?;
    Ok(bce_logits_impl(grad, logits, core::iter::repeat(target)))
}

/// [`bce_logits`] with one target per sample.
///
/// `L = (1/N)·Σ_i ( max(x_i, 0) − x_i·t_i + ln(1 + e^{−|x_i|}) )`; `grad_i = (σ(x_i) − t_i) / N`.
/// `grad`, `logits` and `targets` have length `N`.
pub fn bce_logits_targets(
    grad: &mut [f32], logits: &[f32], targets: &[f32],
) -> Result<f32, CoreError> {
    check_batch("grad", grad.len(), logits.len())?;
    check_len("targets", targets.len(), logits.len())?;
    Ok(bce_logits_impl(grad, logits, targets.iter().copied()))
}

/// Non-saturating generator loss on the discriminator's logits for generated samples.
///
/// `L = −(1/N)·Σ_i ln σ(x_i)`, i.e. [`bce_logits`] with target 1;
/// `grad_i = (σ(x_i) − 1) / N`. `grad` and `fake_logits` have length `N`.
pub fn ns_generator_logits(grad: &mut [f32], fake_logits: &[f32]) -> Result<f32, CoreError> {
    bce_logits(grad, fake_logits, 1.0)
}

/// Least-squares GAN loss (used for both players with different targets).
///
/// `L = (1/2N)·Σ_i (x_i − t)²`; `grad_i = (x_i − t) / N`. `grad` and `out` have length `N`.
pub fn lsgan(grad: &mut [f32], out: &[f32], target: f32) -> Result<f32, CoreError> {
    check_batch("grad", grad.len(), out.len())?;
    let n = out.len() as f32;
    let inv_n = 1.0 / n;
    let mut sum = 0.0f32;
    for (g, &x) in grad.iter_mut().zip(out) {
        let d = x - target;
        sum += d * d;
        *g = d * inv_n;
    }
    Ok(0.5 * sum / n)
}

/// Sum of a slice in index order, and `1/len` (the slice is non-empty).
fn sum_and_inv_len(x: &[f32]) -> (f32, f32) {
    (x.iter().fold(0.0f32, |s, &v| s + v), 1.0 / x.len() as f32)
}

/// Wasserstein critic loss (the critic minimises it).
///
/// `L = (1/N_f)·Σ fake_i − (1/N_r)·Σ real_i`; `grad_real_i = −1/N_r`, `grad_fake_i = 1/N_f`
/// (both overwritten). `grad_real`/`real` have length `N_r`, `grad_fake`/`fake` length `N_f`;
/// the two batches may differ in size. No gradient penalty or clipping here.
pub fn wasserstein_critic(
    grad_real: &mut [f32], grad_fake: &mut [f32], real: &[f32], fake: &[f32],
) -> Result<f32, CoreError> {
    check_batch("grad_real", grad_real.len(), real.len())?;
    check_batch("grad_fake", grad_fake.len(), fake.len())?;
    let (sum_real, inv_real) = sum_and_inv_len(real);
    let (sum_fake, inv_fake) = sum_and_inv_len(fake);
    grad_real.fill(-inv_real);
    grad_fake.fill(inv_fake);
    Ok(sum_fake / fake.len() as f32 - sum_real / real.len() as f32)
}

/// Wasserstein generator loss: `L = −(1/N)·Σ fake_i`; `grad_i = −1/N`.
/// `grad` and `fake` have length `N`.
pub fn wasserstein_generator(grad: &mut [f32], fake: &[f32]) -> Result<f32, CoreError> {
    check_batch("grad", grad.len(), fake.len())?;
    let (sum, inv_n) = sum_and_inv_len(fake);
    grad.fill(-inv_n);
    Ok(-(sum / fake.len() as f32))
}

/// Mean of `relu(1 + s·x_i)` over `x`, writing `grad_i = s/N` where the hinge is active
/// (`1 + s·x_i > 0`) and `0` elsewhere. `s` is `±1`. Lengths already checked, `x` non-empty.
fn hinge_side(grad: &mut [f32], x: &[f32], s: f32) -> f32 {
    let n = x.len() as f32;
    let inv_n = 1.0 / n;
    let mut sum = 0.0f32;
    for (g, &v) in grad.iter_mut().zip(x) {
        let m = 1.0 + s * v;
        if m > 0.0 {
            sum += m;
            *g = s * inv_n;
        } else {
            *g = 0.0;
        }
    }
    sum / n
}

/// Hinge critic loss.
///
/// `L = (1/N_r)·Σ max(0, 1 − real_i) + (1/N_f)·Σ max(0, 1 + fake_i)`;
/// `grad_real_i = −1/N_r` where `real_i < 1`, else 0; `grad_fake_i = 1/N_f` where
/// `fake_i > −1`, else 0 (at the kink itself the gradient is 0). Both overwritten.
/// `grad_real`/`real` have length `N_r`, `grad_fake`/`fake` length `N_f`.
pub fn hinge_critic(
    grad_real: &mut [f32], grad_fake: &mut [f32], real: &[f32], fake: &[f32],
) -> Result<f32, CoreError> {
    check_batch("grad_real", grad_real.len(), real.len())?;
    check_batch("grad_fake", grad_fake.len(), fake.len())?;
    let loss_real = hinge_side(grad_real, real, -1.0);
    let loss_fake = hinge_side(grad_fake, fake, 1.0);
    Ok(loss_real + loss_fake)
}

/// Hinge generator loss: `L = −(1/N)·Σ fake_i`; `grad_i = −1/N` (same as
/// [`wasserstein_generator`]). `grad` and `fake` have length `N`.
pub fn hinge_generator(grad: &mut [f32], fake: &[f32]) -> Result<f32, CoreError> {
    wasserstein_generator(grad, fake)
}

/// Feature matching: squared distance between the batch means of intermediate features.
///
/// With `μ_r[k] = (1/N_r)·Σ_i real[i][k]` and `μ_f[k] = (1/N_f)·Σ_i fake[i][k]`:
/// `L = Σ_k (μ_r[k] − μ_f[k])²`; `grad_fake[i][k] = −2·(μ_r[k] − μ_f[k]) / N_f` (overwritten).
/// The real features are treated as constants (no gradient).
///
/// Shapes: `real` N_r×F, `fake` and `grad_fake` N_f×F, row-major.
pub fn feature_matching(
    grad_fake: &mut [f32], real: &[f32], fake: &[f32], n_real: usize, n_fake: usize, f: usize,
) -> Result<f32, CoreError> {
    if n_real == 0 || n_fake == 0 || f == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len("real", real.len(), dim_product("real", n_real, f, real.len())?)?;
    let fake_len = dim_product("fake", n_fake, f, fake.len())?;
    check_len("fake", fake.len(), fake_len)?;
    check_len("grad_fake", grad_fake.len(), fake_len)?;
    let (nr, nf) = (n_real as f32, n_fake as f32);
    let mut loss = 0.0f32;
    // One feature (column) at a time; each column sum runs over the rows in order.
    for k in 0..f {
        let sum_real = real[k..].iter().step_by(f).fold(0.0f32, |s, &v| s + v);
        let sum_fake = fake[k..].iter().step_by(f).fold(0.0f32, |s, &v| s + v);
        let d = sum_real / nr - sum_fake / nf;
        loss += d * d;
        let g = -2.0 * d / nf;
        grad_fake[k..].iter_mut().step_by(f).for_each(|x| *x = g);
    }
    Ok(loss)
}

/// Softmax cross-entropy over `classes` logits per sample, for classifiers.
///
/// With `p_i = softmax(logits_i)` (computed stably, after subtracting the row maximum) and the
/// label `y_i`: `L = (1/N)·Σ_i −ln p_i[y_i]`; `grad_i[c] = (p_i[c] − [c = y_i]) / N`
/// (overwritten). `probs`, when not empty, receives `p` (N × classes) for reporting.
///
/// Shapes: `grad` and `logits` N×classes, `labels` N (each below `classes`).
pub fn softmax_cross_entropy(
    grad: &mut [f32], probs: &mut [f32], logits: &[f32], labels: &[u8], classes: usize,
) -> Result<f32, CoreError> {
    let n = labels.len();
    if n == 0 || classes == 0 {
        return Err(CoreError::ZeroSize);
    }
    let len = dim_product("logits", n, classes, logits.len())?;
    check_len("logits", logits.len(), len)?;
    check_len("grad", grad.len(), len)?;
    if !probs.is_empty() {
        check_len("probs", probs.len(), len)?;
    }
    if let Some(i) = labels.iter().position(|&y| y as usize >= classes) {
        return Err(CoreError::BufferLen {
            what: "labels",
            expected: classes,
            got: labels[i] as usize,
        });
    }
    let inv_n = 1.0 / n as f32;
    let mut loss = 0.0f32;
    for (i, (g, z)) in grad.chunks_exact_mut(classes).zip(logits.chunks_exact(classes)).enumerate()
    {
        let ln_sum = log_softmax_norm(z);
        let y = labels[i] as usize;
        loss -= z[y] - ln_sum;
        for (c, (g, &zc)) in g.iter_mut().zip(z).enumerate() {
            let p = libm::expf(zc - ln_sum);
            if !probs.is_empty() {
                probs[i * classes + c] = p;
            }
            *g = (p - if c == y { 1.0 } else { 0.0 }) * inv_n;
        }
    }
    Ok(loss * inv_n)
}

/// `ln Σ_c exp(z_c)`, computed as `max + ln Σ exp(z_c − max)` so it never overflows.
fn log_softmax_norm(z: &[f32]) -> f32 {
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let sum: f32 = z.iter().map(|&v| libm::expf(v - max)).sum();
    max + libm::logf(sum)
}

/// Softmax of each row of `logits` (N × `classes`) into `probs`, stably.
pub fn softmax(probs: &mut [f32], logits: &[f32], classes: usize) -> Result<(), CoreError> {
    if classes == 0 || logits.is_empty() {
        return Err(CoreError::ZeroSize);
    }
    check_len("probs", probs.len(), logits.len())?;
    if !logits.len().is_multiple_of(classes) {
        return Err(CoreError::BufferLen { what: "logits", expected: classes, got: logits.len() });
    }
    for (p, z) in probs.chunks_exact_mut(classes).zip(logits.chunks_exact(classes)) {
        let ln_sum = log_softmax_norm(z);
        for (p, &zc) in p.iter_mut().zip(z) {
            *p = libm::expf(zc - ln_sum);
        }
    }
    Ok(())
}

/// Fraction of scores strictly above `threshold`: `count(x_i > thr) / N`.
///
/// For reporting discriminator accuracy (e.g. real probabilities above 0.5, or fake logits
/// below 0 via `1 − accuracy_above(fake, 0.0)`). NaN scores count as not above. Returns `0.0`
/// for an empty slice.
pub fn accuracy_above(scores: &[f32], threshold: f32) -> f32 {
    if scores.is_empty() {
        return 0.0;
    }
    let count = scores.iter().filter(|&&x| x > threshold).count();
    count as f32 / scores.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Lcg, grad_check};
    use core::f32::consts::{LN_2, LN_10};

    /// `|a − b| <= tol`, with a readable failure.
    fn close(a: f32, b: f32, tol: f32) {
        assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
    }

    fn all_close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (&x, &y) in a.iter().zip(b) {
            close(x, y, tol);
        }
    }

    // ---- golden values -------------------------------------------------------------------

    #[test]
    fn bce_golden() {
        let mut g = [0.0f32; 1];
        // p = 0.5, t = 1: −ln(0.5) = ln 2 = 0.693147; grad −1/0.5 = −2.
        close(bce(&mut g, &[0.5], 1.0).unwrap(), LN_2, 1e-6);
        close(g[0], -2.0, 1e-5);
        // p = 0.9, t = 1: −ln(0.9) = 0.1053605; grad −1/0.9 = −1.1111111.
        close(bce(&mut g, &[0.9], 1.0).unwrap(), 0.105_360_5, 1e-6);
        close(g[0], -1.111_111, 1e-5);
        // p = 0.9, t = 0: −ln(0.1) = ln 10 = 2.3025851; grad 1/0.1 = 10.
        close(bce(&mut g, &[0.9], 0.0).unwrap(), LN_10, 1e-5);
        close(g[0], 10.0, 1e-4);
        // p = 0, t = 1: the epsilon keeps it finite, −ln(1e-8) = 8·ln 10 = 18.420681;
        // grad −1/1e-8 = −1e8.
        close(bce(&mut g, &[0.0], 1.0).unwrap(), 18.420_681, 1e-5);
        close(g[0], -1e8, 1e2);
        // p = 1, t = 0 mirrors it.
        close(bce(&mut g, &[1.0], 0.0).unwrap(), 18.420_681, 1e-5);
        // Mean over a batch and gradient divided by N = 2: (ln 2 + 0.1053605)/2 = 0.3992538;
        // grads −2/2 = −1 and −1.1111111/2 = −0.5555556.
        let mut g2 = [9.0f32; 2];
        close(bce(&mut g2, &[0.5, 0.9], 1.0).unwrap(), 0.399_253_8, 1e-6);
        all_close(&g2, &[-1.0, -0.555_555_6], 1e-5);
        // Per-element targets: t = (1, 0) on p = (0.9, 0.9): (0.1053605 + 2.3025851)/2
        // = 1.2039728; grads −1.1111111/2 = −0.5555556 and 10/2 = 5.
        close(bce_targets(&mut g2, &[0.9, 0.9], &[1.0, 0.0]).unwrap(), 1.203_972_8, 1e-5);
        all_close(&g2, &[-0.555_555_6, 5.0], 1e-4);
        // Smoothed target 0.9 at p = 0.5: −(0.9·ln 0.5 + 0.1·ln 0.5) = ln 2; grad
        // 0.1/0.5 − 0.9/0.5 = −1.6.
        close(bce_targets(&mut g, &[0.5], &[0.9]).unwrap(), LN_2, 1e-6);
        close(g[0], -1.6, 1e-5);
    }

    #[test]
    fn bce_logits_golden() {
        let mut g = [0.0f32; 1];
        // x = 0: 0 − 0 + ln(1 + 1) = ln 2 for any target; grad σ(0) − t = 0.5 − t.
        close(bce_logits(&mut g, &[0.0], 1.0).unwrap(), LN_2, 1e-6);
        close(g[0], -0.5, 1e-7);
        close(bce_logits(&mut g, &[0.0], 0.0).unwrap(), LN_2, 1e-6);
        close(g[0], 0.5, 1e-7);
        // x = 2, t = 1: 2 − 2 + ln(1 + e^−2) = ln(1.1353353) = 0.1269280;
        // grad σ(2) − 1 = 0.8807971 − 1 = −0.1192029.
        close(bce_logits(&mut g, &[2.0], 1.0).unwrap(), 0.126_928, 1e-6);
        close(g[0], -0.119_202_9, 1e-6);
        // Large |x|, where ln σ(x) computed naively would hit ln(0) or exp overflow:
        // x = 100, t = 0: 100 − 0 + ln(1 + e^−100) = 100; grad σ(100) = 1.
        let l = bce_logits(&mut g, &[100.0], 0.0).unwrap();
        assert!(l.is_finite());
        close(l, 100.0, 1e-4);
        close(g[0], 1.0, 1e-7);
        // x = 100, t = 1: 100 − 100 + ln(1 + e^−100) ≈ 3.7e−44; grad 0.
        let l = bce_logits(&mut g, &[100.0], 1.0).unwrap();
        assert!(l.is_finite() && l >= 0.0);
        close(l, 0.0, 1e-7);
        close(g[0], 0.0, 1e-7);
        // x = −100, t = 1: 0 + 100 + ln(1 + e^−100) = 100; grad σ(−100) − 1 = −1.
        close(bce_logits(&mut g, &[-100.0], 1.0).unwrap(), 100.0, 1e-4);
        close(g[0], -1.0, 1e-7);
        // x = −100, t = 0: ≈ 0; grad ≈ 0.
        close(bce_logits(&mut g, &[-100.0], 0.0).unwrap(), 0.0, 1e-7);
        close(g[0], 0.0, 1e-7);
        // Per-element targets, batch mean: logits (0, 100), targets (0.9, 0):
        // (ln 2 + 100)/2 = 50.3465736; grads (0.5 − 0.9)/2 = −0.2 and (1 − 0)/2 = 0.5.
        let mut g2 = [0.0f32; 2];
        let l = bce_logits_targets(&mut g2, &[0.0, 100.0], &[0.9, 0.0]).unwrap();
        close(l, 50.346_573, 1e-4);
        all_close(&g2, &[-0.2, 0.5], 1e-6);
    }

    #[test]
    fn ns_generator_golden() {
        // x = ln 3: σ = 0.75, −ln 0.75 = 0.2876821; grad 0.75 − 1 = −0.25.
        // x = 0: ln 2 = 0.6931472; grad −0.5. Mean (0.2876821 + 0.6931472)/2 = 0.4904146,
        // grads halved: −0.125, −0.25.
        let mut g = [0.0f32; 2];
        let l = ns_generator_logits(&mut g, &[libm::logf(3.0), 0.0]).unwrap();
        close(l, 0.490_414_6, 1e-6);
        all_close(&g, &[-0.125, -0.25], 1e-6);
    }

    #[test]
    fn lsgan_golden() {
        // out (1, 3, −1), t = 1: squares (0, 4, 4), 0.5·(8/3) = 1.3333333;
        // grads (0, 2, −2)/3 = (0, 0.6666667, −0.6666667).
        let mut g = [5.0f32; 3];
        close(lsgan(&mut g, &[1.0, 3.0, -1.0], 1.0).unwrap(), 1.333_333_3, 1e-6);
        all_close(&g, &[0.0, 0.666_666_7, -0.666_666_7], 1e-6);
        // t = 0 on (0.5, −0.5): 0.5·(0.25 + 0.25)/2 = 0.125; grads (0.25, −0.25).
        let mut g = [0.0f32; 2];
        close(lsgan(&mut g, &[0.5, -0.5], 0.0).unwrap(), 0.125, 1e-7);
        all_close(&g, &[0.25, -0.25], 1e-7);
    }

    #[test]
    fn wasserstein_golden() {
        // real (1, 2, 3) mean 2; fake (0.5, −0.5) mean 0; L = 0 − 2 = −2.
        // grad_real = −1/3 each, grad_fake = 1/2 each.
        let (mut gr, mut gf) = ([0.0f32; 3], [0.0f32; 2]);
        let l = wasserstein_critic(&mut gr, &mut gf, &[1.0, 2.0, 3.0], &[0.5, -0.5]).unwrap();
        close(l, -2.0, 1e-6);
        all_close(&gr, &[-1.0 / 3.0; 3], 1e-7);
        all_close(&gf, &[0.5; 2], 1e-7);
        // Generator: fake (1, 2, −6) mean −1, L = 1; grads −1/3.
        let mut g = [0.0f32; 3];
        close(wasserstein_generator(&mut g, &[1.0, 2.0, -6.0]).unwrap(), 1.0, 1e-6);
        all_close(&g, &[-1.0 / 3.0; 3], 1e-7);
    }

    #[test]
    fn hinge_golden() {
        // real (2, 0.5, −1): relu(1 − r) = (0, 0.5, 2), mean 2.5/3 = 0.8333333.
        // fake (−2, 0, 1.5): relu(1 + f) = (0, 1, 2.5), mean 3.5/3 = 1.1666667. L = 2.
        // grad_real = (0, −1/3, −1/3); grad_fake = (0, 1/3, 1/3).
        let (mut gr, mut gf) = ([7.0f32; 3], [7.0f32; 3]);
        let l = hinge_critic(&mut gr, &mut gf, &[2.0, 0.5, -1.0], &[-2.0, 0.0, 1.5]).unwrap();
        close(l, 2.0, 1e-6);
        let third = 1.0 / 3.0;
        all_close(&gr, &[0.0, -third, -third], 1e-7);
        all_close(&gf, &[0.0, third, third], 1e-7);
        // Exactly at the kinks (real = 1, fake = −1) the loss and gradient are 0.
        let (mut gr, mut gf) = ([7.0f32; 1], [7.0f32; 1]);
        close(hinge_critic(&mut gr, &mut gf, &[1.0], &[-1.0]).unwrap(), 0.0, 0.0);
        assert_eq!((gr[0], gf[0]), (0.0, 0.0));
        // Generator: fake (0.5, −1.5) → −mean = 0.5; grads −0.5.
        let mut g = [0.0f32; 2];
        close(hinge_generator(&mut g, &[0.5, -1.5]).unwrap(), 0.5, 1e-7);
        all_close(&g, &[-0.5, -0.5], 1e-7);
    }

    #[test]
    fn feature_matching_golden() {
        // real 2×3 rows (1, 2, 3), (3, 4, 5): means (2, 3, 4).
        // fake 3×3 rows (0, 0, 0), (1, 1, 1), (2, 2, 8): means (1, 1, 3).
        // d = (1, 2, 1), L = 1 + 4 + 1 = 6; grad row = −2·d/3 = (−0.6666667, −1.3333333, −0.6666667).
        let real = [1.0, 2.0, 3.0, 3.0, 4.0, 5.0];
        let fake = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 8.0];
        let mut g = [0.0f32; 9];
        let l = feature_matching(&mut g, &real, &fake, 2, 3, 3).unwrap();
        close(l, 6.0, 1e-5);
        let row = [-0.666_666_7, -1.333_333_3, -0.666_666_7];
        for r in g.chunks_exact(3) {
            all_close(r, &row, 1e-6);
        }
        // Identical statistics → zero loss and zero gradient.
        let l = feature_matching(&mut g, &fake, &fake, 3, 3, 3).unwrap();
        assert_eq!(l, 0.0);
        assert!(g.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn accuracy_golden() {
        // 0.6 and 0.9 are above 0.5; 0.5 itself is not: 2/4.
        assert_eq!(accuracy_above(&[0.1, 0.6, 0.5, 0.9], 0.5), 0.5);
        assert_eq!(accuracy_above(&[-1.0, -2.0, 3.0], 0.0), 1.0 / 3.0);
        assert_eq!(accuracy_above(&[f32::NAN, 1.0], 0.0), 0.5);
        assert_eq!(accuracy_above(&[], 0.0), 0.0);
    }

    /// The logit form and the probability form agree away from the epsilon's influence, and the
    /// chain rule through the sigmoid links their gradients: dL/dx = dL/dp · p(1 − p).
    #[test]
    fn logits_match_probabilities() {
        let x = [-3.0f32, -0.7, 0.0, 0.4, 2.5];
        let t = [1.0f32, 0.0, 0.3, 0.9, 0.0];
        let p: [f32; 5] = core::array::from_fn(|i| sigmoid(x[i]));
        let (mut gp, mut gx) = ([0.0f32; 5], [0.0f32; 5]);
        let lp = bce_targets(&mut gp, &p, &t).unwrap();
        let lx = bce_logits_targets(&mut gx, &x, &t).unwrap();
        close(lp, lx, 1e-5);
        for i in 0..5 {
            close(gp[i] * p[i] * (1.0 - p[i]), gx[i], 1e-5);
        }
    }

    // ---- finite-difference gradient checks -----------------------------------------------

    /// Random values in `[lo, hi)`.
    fn uniform<const N: usize>(r: &mut Lcg, lo: f32, hi: f32) -> [f32; N] {
        core::array::from_fn(|_| lo + (r.next_f32() + 1.0) * 0.5 * (hi - lo))
    }

    /// Checks the gradient `f` writes for `x` (its return value the loss) against central
    /// differences of step `h`, within `tol`.
    fn loss_grad_ok<const N: usize>(
        x: &[f32; N], h: f32, tol: f64, f: impl Fn(&mut [f32], &[f32]) -> f32,
    ) {
        let mut g = [0.0f32; N];
        f(&mut g, x);
        grad_check(x, &g, |xp| f(&mut [0.0; N], xp) as f64, h, tol);
    }

    #[test]
    fn bce_gradients() {
        let mut r = Lcg::new(21);
        let p = uniform::<8>(&mut r, 0.1, 0.9);
        let t = uniform::<8>(&mut r, 0.0, 1.0);
        for target in [0.0, 1.0, 0.9] {
            loss_grad_ok(&p, 1e-3, 1e-3, |g, p| bce(g, p, target).unwrap());
        }
        loss_grad_ok(&p, 1e-3, 1e-3, |g, p| bce_targets(g, p, &t).unwrap());
    }

    #[test]
    fn bce_logits_gradients() {
        let mut r = Lcg::new(22);
        let x = uniform::<8>(&mut r, -4.0, 4.0);
        let t = uniform::<8>(&mut r, 0.0, 1.0);
        for target in [0.0, 1.0, 0.1] {
            loss_grad_ok(&x, 1e-2, 1e-3, |g, x| bce_logits(g, x, target).unwrap());
        }
        loss_grad_ok(&x, 1e-2, 1e-3, |g, x| bce_logits_targets(g, x, &t).unwrap());
        loss_grad_ok(&x, 1e-2, 1e-3, |g, x| ns_generator_logits(g, x).unwrap());
    }

    #[test]
    fn lsgan_gradients() {
        let mut r = Lcg::new(23);
        let x = r.vec::<8>();
        for target in [0.0, 1.0, -1.0] {
            loss_grad_ok(&x, 1e-2, 1e-4, |g, x| lsgan(g, x, target).unwrap());
        }
    }

    #[test]
    fn wasserstein_and_hinge_gradients() {
        let mut r = Lcg::new(24);
        // Scores in [−3, 3], nudged away from the hinge kinks at ±1.
        let mut real = uniform::<6>(&mut r, -3.0, 3.0);
        let mut fake = uniform::<5>(&mut r, -3.0, 3.0);
        for v in real.iter_mut().chain(fake.iter_mut()) {
            if (v.abs() - 1.0).abs() < 0.1 {
                *v += 0.25;
            }
        }
        let (mut gr, mut gf) = ([0.0f32; 6], [0.0f32; 5]);

        wasserstein_critic(&mut gr, &mut gf, &real, &fake).unwrap();
        let wc = |rl: &[f32], fk: &[f32]| {
            wasserstein_critic(&mut [0.0; 6], &mut [0.0; 5], rl, fk).unwrap() as f64
        };
        grad_check(&real, &gr, |rp| wc(rp, &fake), 1e-2, 1e-4);
        grad_check(&fake, &gf, |fp| wc(&real, fp), 1e-2, 1e-4);

        hinge_critic(&mut gr, &mut gf, &real, &fake).unwrap();
        // Both sides of each hinge must be exercised, or the check proves less than it seems.
        assert!(gr.contains(&0.0) && gr.iter().any(|&g| g != 0.0));
        assert!(gf.contains(&0.0) && gf.iter().any(|&g| g != 0.0));
        let hc = |rl: &[f32], fk: &[f32]| {
            hinge_critic(&mut [0.0; 6], &mut [0.0; 5], rl, fk).unwrap() as f64
        };
        grad_check(&real, &gr, |rp| hc(rp, &fake), 1e-2, 1e-4);
        grad_check(&fake, &gf, |fp| hc(&real, fp), 1e-2, 1e-4);

        loss_grad_ok(&fake, 1e-2, 1e-4, |g, f| wasserstein_generator(g, f).unwrap());
        loss_grad_ok(&fake, 1e-2, 1e-4, |g, f| hinge_generator(g, f).unwrap());
    }

    #[test]
    fn feature_matching_gradients() {
        let (nr, nf, f) = (4, 3, 5);
        let mut r = Lcg::new(25);
        let real = r.vec::<20>();
        let fake = r.vec::<15>();
        let mut g = [0.0f32; 15];
        let l = feature_matching(&mut g, &real, &fake, nr, nf, f).unwrap();
        assert!(l > 0.0);
        grad_check(
            &fake,
            &g,
            |fp| feature_matching(&mut [0.0; 15], &real, fp, nr, nf, f).unwrap() as f64,
            1e-2,
            1e-4,
        );
    }

    // ---- errors --------------------------------------------------------------------------

    #[test]
    fn rejects_wrong_lengths() {
        let x = [0.5f32; 3];
        let mut g2 = [0.0f32; 2];
        let mut g3 = [0.0f32; 3];
        let is_len = |r: Result<f32, CoreError>, what: &str| {
            assert!(
                matches!(r, Err(CoreError::BufferLen { what: w, expected: 3, got: 2 }) if w == what),
                "{r:?}"
            );
        };
        is_len(bce(&mut g2, &x, 1.0), "grad");
        is_len(bce_targets(&mut g2, &x, &x), "grad");
        is_len(bce_targets(&mut g3, &x, &[1.0; 2]), "targets");
        is_len(bce_logits(&mut g2, &x, 1.0), "grad");
        is_len(bce_logits_targets(&mut g2, &x, &x), "grad");
        is_len(bce_logits_targets(&mut g3, &x, &[1.0; 2]), "targets");
        is_len(ns_generator_logits(&mut g2, &x), "grad");
        is_len(lsgan(&mut g2, &x, 1.0), "grad");
        is_len(wasserstein_generator(&mut g2, &x), "grad");
        is_len(hinge_generator(&mut g2, &x), "grad");
        let mut g3b = [0.0f32; 3];
        is_len(wasserstein_critic(&mut g2, &mut g3, &x, &x), "grad_real");
        is_len(wasserstein_critic(&mut g3, &mut g2, &x, &x), "grad_fake");
        is_len(hinge_critic(&mut g2, &mut g3, &x, &x), "grad_real");
        is_len(hinge_critic(&mut g3b, &mut g2, &x, &x), "grad_fake");

        // feature matching: n_real = 1, n_fake = 1, f = 3.
        let fm = |g: &mut [f32], r: &[f32], f: &[f32]| feature_matching(g, r, f, 1, 1, 3);
        is_len(fm(&mut g3, &[0.0; 2], &x), "real");
        is_len(fm(&mut g3, &x, &[0.0; 2]), "fake");
        is_len(fm(&mut g2, &x, &x), "grad_fake");
        assert!(matches!(
            feature_matching(&mut g3, &x, &x, usize::MAX, 1, 3),
            Err(CoreError::BufferLen { what: "real", .. })
        ));
    }

    #[test]
    fn rejects_zero_sizes() {
        let e = Err(CoreError::ZeroSize);
        let x = [0.5f32; 2];
        let mut g = [0.0f32; 2];
        assert_eq!(bce(&mut [], &[], 1.0), e);
        assert_eq!(bce_targets(&mut [], &[], &[]), e);
        assert_eq!(bce_logits(&mut [], &[], 1.0), e);
        assert_eq!(bce_logits_targets(&mut [], &[], &[]), e);
        assert_eq!(ns_generator_logits(&mut [], &[]), e);
        assert_eq!(lsgan(&mut [], &[], 0.0), e);
        assert_eq!(wasserstein_generator(&mut [], &[]), e);
        assert_eq!(hinge_generator(&mut [], &[]), e);
        assert_eq!(wasserstein_critic(&mut [], &mut g, &[], &x), e);
        assert_eq!(wasserstein_critic(&mut g, &mut [], &x, &[]), e);
        assert_eq!(hinge_critic(&mut [], &mut g, &[], &x), e);
        assert_eq!(hinge_critic(&mut g, &mut [], &x, &[]), e);
        assert_eq!(feature_matching(&mut g, &x, &x, 0, 1, 2), e);
        assert_eq!(feature_matching(&mut g, &x, &x, 1, 0, 2), e);
        assert_eq!(feature_matching(&mut [], &[], &[], 1, 1, 0), e);
    }

    /// Gradients are overwritten, not accumulated: a second call gives the same buffer.
    #[test]
    fn gradients_are_overwritten() {
        let x = [0.3f32, -0.2, 0.8];
        let mut a = [0.0f32; 3];
        let mut b = [123.0f32; 3];
        bce_logits(&mut a, &x, 1.0).unwrap();
        bce_logits(&mut b, &x, 1.0).unwrap();
        assert_eq!(a, b);
        lsgan(&mut b, &x, 1.0).unwrap();
        lsgan(&mut b, &x, 1.0).unwrap();
        lsgan(&mut a, &x, 1.0).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn softmax_cross_entropy_golden() {
        // Two classes with equal logits: ln 2 per sample, gradient ±1/(2N).
        let mut g = [0.0f32; 4];
        let mut p = [0.0f32; 4];
        let l = softmax_cross_entropy(&mut g, &mut p, &[3.0, 3.0, 0.0, 0.0], &[0, 1], 2).unwrap();
        close(l, LN_2, 1e-6);
        all_close(&g, &[-0.25, 0.25, 0.25, -0.25], 1e-6);
        all_close(&p, &[0.5; 4], 1e-6);
        // Logits (ln 1, ln 2, ln 7): p = (0.1, 0.2, 0.7); label 2 → −ln 0.7. Large offsets
        // change nothing (the row maximum is subtracted first).
        let z = [0.0, LN_2, libm::logf(7.0)].map(|v| v + 1000.0);
        let mut g = [0.0f32; 3];
        let l = softmax_cross_entropy(&mut g, &mut [], &z, &[2], 3).unwrap();
        // (The offset logits themselves round by up to 3e-5 in f32.)
        close(l, -libm::logf(0.7), 1e-4);
        all_close(&g, &[0.1, 0.2, -0.3], 1e-4);
        let mut sm = [0.0f32; 3];
        softmax(&mut sm, &z, 3).unwrap();
        all_close(&sm, &[0.1, 0.2, 0.7], 1e-4);
    }

    #[test]
    fn softmax_cross_entropy_gradients() {
        let mut r = Lcg::new(31);
        let (n, c) = (4, 5);
        let z: [f32; 20] = r.vec::<20>().map(|v| 3.0 * v);
        let labels = [0u8, 4, 2, 2];
        let mut g = [0.0f32; 20];
        softmax_cross_entropy(&mut g, &mut [], &z, &labels, c).unwrap();
        grad_check(
            &z,
            &g,
            |zp| {
                let mut tmp = [0.0f32; 20];
                softmax_cross_entropy(&mut tmp, &mut [], zp, &labels, c).unwrap() as f64
            },
            1e-2,
            1e-3,
        );
        assert_eq!(n, labels.len());
        // Bad inputs are refused, not read out of range.
        assert!(softmax_cross_entropy(&mut g, &mut [], &z, &[0, 5, 0, 0], c).is_err());
        assert!(softmax_cross_entropy(&mut g[1..], &mut [], &z, &labels, c).is_err());
        assert_eq!(softmax_cross_entropy(&mut [], &mut [], &[], &[], c), Err(CoreError::ZeroSize));
    }
}
