//! Batch normalisation over channels.
//!
//! Shapes: `x` N×C×S with `S = H·W` (`S = 1` for a flat input of `C` features, so a flat layer
//! normalises every feature over the batch), `γ` and `β` of length `C`, and two statistics
//! buffers of `2·C`: the mean of every channel, then its variance.
//!
//! Training ([`batchnorm_forward`]) normalises with the batch's own statistics over the
//! `M = N·S` values of each channel: `μ = Σx/M`, `σ² = Σ(x − μ)²/M` (biased),
//! `x̂ = (x − μ)/√(σ² + ε)`, `y = γ·x̂ + β`. The sums run in f64 (two passes), so the
//! statistics are accurate even for large batches; training runs on the host.
//!
//! Inference ([`batchnorm_forward_exact`]) uses the running statistics instead:
//! `y = x·a + b` with `a = γ / √(σ²_run + ε)` and `b = β − μ_run·a`, each step rounded to f32
//! (square root and division are correctly rounded everywhere), so it is bit-exact across
//! targets.
//!
//! Running statistics ([`update_running`]) follow `run ← (1 − m)·run + m·batch`, with the
//! variance's batch value made unbiased (`σ²·M/(M − 1)`, for `M > 1`), as PyTorch does.
//!
//! # Where things live in a network
//! - `γ` is the layer's weight tensor, `β` its bias, and the running mean and variance a third
//!   tensor of the flat parameter buffer ([`crate::spec::LayerInfo::stats_range`]). Keeping
//!   them there means checkpoints, the weights file and the firmware (which runs in place from
//!   that buffer) carry them with no extra plumbing. Their gradient is always zero, so the
//!   optimizers leave them unchanged as long as weight decay is off for them (L2 decay adds
//!   `λ·p` to every gradient; a trainer using it should skip `stats_range`).
//!   [`crate::model::update_running_stats`] writes them after a training forward.
//! - Forward stores the batch mean and variance (`2·C` values) in the layer's auxiliary
//!   activation storage. That is all backward needs: `x̂` is recomputed from the input (one
//!   subtraction and one multiplication per element, far cheaper than keeping a second copy
//!   of the activation), and [`crate::model::update_running_stats`] reads the same values, so
//!   it needs no second pass over the batch. The auxiliary storage is sized `2·C` per sample;
//!   only the first `2·C` of the batch's region is used.
//!
//! Backward, with `g = ∂L/∂y`: `∂L/∂γ = Σ g·x̂`, `∂L/∂β = Σ g`, and
//! `∂L/∂x = γ/√(σ² + ε) · (g − Σg/M − x̂·Σ(g·x̂)/M)` (sums over the channel's `M` values).

use core::fmt;

use rand_core::Rng;

use crate::error::{CoreError, SpecError, check_len, check_opt_len};
use crate::init::Init;
use crate::kernels::channels::Terms;
use crate::kernels::split::OutPtr;
use crate::kernels::{self, Exec, par};
use crate::layers::{Backward, Forward, Infer, Kind, LayerWeights, Rules, Sizes, mul, size};
use crate::spec::{LayerInfo, Shape};

/// A batch-normalisation layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm {
    /// Added to the variance before the square root.
    pub eps: f32,
    /// Weight of the batch statistics in the running average.
    pub momentum: f32,
}

/// Shape rule: the input shape; `γ` and `β` of `C`, running statistics of `2·C`, and `2·C` of
/// auxiliary storage for the batch statistics.
pub(crate) const fn rules(
    eps: f32, momentum: f32, inp: Shape, index: usize,
) -> Result<Rules, SpecError> {
    // Written so NaN fails too.
    if !(eps > 0.0 && eps <= 1.0 && momentum >= 0.0 && momentum <= 1.0) {
        return Err(SpecError::BadParameter { layer: index });
    }
    let c = inp.c as usize;
    Ok(Rules::new(
        inp,
        Sizes { weight: c, bias: c, stats: size!(mul(2, c), index), aux: size!(mul(2, c), index) },
    ))
}

/// `(C, H·W)` of a layer's input: the channels and plane size.
fn channels(l: &LayerInfo) -> (usize, usize) {
    let s = l.in_shape;
    (s.c as usize, s.h as usize * s.w as usize)
}

impl Kind for BatchNorm {
    fn name(&self) -> &'static str {
        "batch_norm"
    }
    fn label(&self, _: &LayerInfo, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("batch_norm")
    }
    fn macs(&self, l: &LayerInfo) -> usize {
        l.in_shape.len()
    }
    /// `γ = 1`, `β = 0`, running mean `0`, running variance `1` (no draws).
    fn init<R: Rng + ?Sized>(
        &self, l: &LayerInfo, params: &mut [f32], _: Init, _: &mut R,
    ) -> Result<(), CoreError> {
        params[l.weight_range()].fill(1.0);
        let stats = &mut params[l.stats_range()];
        let c = stats.len() / 2;
        stats[c..].fill(1.0);
        Ok(())
    }
    fn forward(&self, a: Forward<'_>) -> Result<(), CoreError> {
        let (c, hw) = channels(a.l);
        let (w, b) = (a.w(), a.b());
        if a.inference {
            a.out.copy_from_slice(a.inp);
            let running = &a.params[a.l.stats_range()];
            return batchnorm_forward_exact(a.out, w, b, running, a.n, c, hw, self.eps);
        }
        batchnorm_forward(a.out, &mut a.aux[..2 * c], a.inp, w, b, a.n, c, hw, self.eps, a.exec)
    }
    fn backward(&self, mut a: Backward<'_>) -> Result<(), CoreError> {
        let (c, hw) = channels(a.l);
        let (inp, stats, w, dout) = (a.inp(), &a.aux()[..2 * c], a.w(), a.dout);
        let (gw, gb) = a.param_grads();
        batchnorm_backward(a.dinp, gw, gb, dout, inp, stats, w, a.n, c, hw, self.eps, a.exec)
    }
    fn infer(&self, a: Infer<'_, '_, '_>) -> Result<(), CoreError> {
        let (c, hw) = channels(a.l);
        match a.w {
            LayerWeights::F32 { w, b, stats } => {
                batchnorm_forward_exact(a.pp.in_place(), w, b, stats, a.n, c, hw, self.eps)
            }
            // Int8 files keep no batch normalisation (it is refused when encoding).
            LayerWeights::I8 { .. } => Err(CoreError::Unsupported { layer: a.l.index }),
        }
    }
    fn update_stats(
        &self, l: &LayerInfo, params: &mut [f32], acts: &[f32], n: usize,
    ) -> Result<(), CoreError> {
        let (c, hw) = channels(l);
        let batch = &acts[l.aux_range(n)][..2 * c];
        update_running(&mut params[l.stats_range()], batch, n * hw, self.momentum)
    }
}

/// Validates `n`, `c`, `s` and returns `(N·C·S, N·S)`.
fn sizes(n: usize, c: usize, s: usize) -> Result<(usize, usize), CoreError> {
    if n == 0 || c == 0 || s == 0 {
        return Err(CoreError::ZeroSize);
    }
    let overflow = CoreError::BufferLen { what: "x", expected: usize::MAX, got: 0 };
    let m = n.checked_mul(s).ok_or(overflow)?;
    Ok((m.checked_mul(c).ok_or(overflow)?, m))
}

/// [`sizes`], then the lengths both training passes check: `out` (the output or its gradient,
/// named), the input, the `2·C` batch statistics and `γ`.
fn check_training(
    out: (&'static str, usize), inp: usize, stats: usize, gamma: usize, n: usize, c: usize,
    s: usize,
) -> Result<(usize, usize), CoreError> {
    let (len, m) = sizes(n, c, s)?;
    check_len(out.0, out.1, len)?;
    check_len("inp", inp, len)?;
    check_len("stats", stats, 2 * c)?;
    check_len("gamma", gamma, c)?;
    Ok((len, m))
}

/// The planes of channel `ch` (each `s` long), sample after sample.
fn planes(x: &[f32], c: usize, s: usize, ch: usize) -> impl Iterator<Item = &[f32]> {
    x.chunks_exact(c * s).map(move |sample| &sample[ch * s..(ch + 1) * s])
}

/// Channels whose sums [`channel_sums`] runs side by side.
const LANES: usize = kernels::channels::GROUP;

/// For each of the `L` channels `ch0 + l`, the `K` sums `Σ f(l, at)[k]` over its elements
/// (`at` their index in the N×C×S buffer) in the order of [`planes`]: sample by sample, each
/// plane from its start, one f64 addition after the other — the bits of a loop over that one
/// channel. The `L` channels run in the same loop so that their addition chains overlap (one
/// chain waits on every addition's latency).
#[inline(always)]
fn channel_sums<const L: usize, const K: usize>(
    n: usize, c: usize, s: usize, ch0: usize, f: impl Fn(usize, usize) -> [f64; K],
) -> [[f64; K]; L] {
    let mut acc = [[0.0f64; K]; L];
    for i in 0..n {
        for j in 0..s {
            for (l, a) in acc.iter_mut().enumerate() {
                let v = f(l, (i * c + ch0 + l) * s + j);
                for (a, v) in a.iter_mut().zip(v) {
                    *a += v;
                }
            }
        }
    }
    acc
}

/// [`channel_sums`] of a group of [`LANES`] channels from the vector kernel
/// ([`kernels::channels`]), when the CPU has one; `None` otherwise and for other group sizes.
#[inline(always)]
fn vector_sums<const L: usize, const K: usize>(
    (n, c, s, ch0): (usize, usize, usize, usize), terms: Terms<'_>,
) -> Option<[[f64; K]; L]> {
    if L != LANES {
        return None;
    }
    let v = kernels::channels::channel_sums(terms, n, c, s, ch0)?;
    Some(core::array::from_fn(|l| core::array::from_fn(|k| v[l][k])))
}

/// The per-channel constants of a group as the vector kernel takes them: `x` padded with
/// zeros to [`LANES`] (only groups of [`LANES`] reach the kernel).
#[inline(always)]
fn widen_group<T: Copy + Default, const L: usize>(x: &[T; L]) -> [T; LANES] {
    core::array::from_fn(|l| if l < L { x[l] } else { T::default() })
}

/// Calls `run(ch, wide)` for the channels `c0..c1`: `wide` for each group of [`LANES`] from
/// `c0` on, then one by one for the rest.
#[inline(always)]
fn channel_groups(c0: usize, c1: usize, mut run: impl FnMut(usize, bool)) {
    let mut ch = c0;
    while ch + LANES <= c1 {
        run(ch, true);
        ch += LANES;
    }
    for ch in ch..c1 {
        run(ch, false);
    }
}

/// `1/√(var + eps)`, shared by forward and backward so both see the same bits.
#[inline]
fn inv_std(var: f32, eps: f32) -> f32 {
    1.0 / libm::sqrtf(var + eps)
}

/// Training forward: normalises `inp` (N×C×S) with its batch statistics, writing `out`
/// (N×C×S) and `stats` (`2·C`: batch mean, then biased batch variance).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward(
    out: &mut [f32], stats: &mut [f32], inp: &[f32], gamma: &[f32], beta: &[f32], n: usize,
    c: usize, s: usize, eps: f32, exec: &dyn Exec,
) -> Result<(), CoreError> {
    let (len, m) =
        check_training(("out", out.len()), inp.len(), stats.len(), gamma.len(), n, c, s)?;
    check_len("beta", beta.len(), c)?;
    let (outs, st) = (OutPtr::new(out), OutPtr::new(stats));
    // Channels are independent: spread them over the threads.
    par::for_each_range(exec, c, par::elem_tasks(exec, len, c), &|c0, c1| {
        channel_groups(c0, c1, |ch, wide| {
            // SAFETY: the channels `ch..ch + L` (their statistics and their planes in every
            // sample) belong to this task alone: the ranges handed out are disjoint (see
            // `OutPtr`), and `out` and `stats` were checked to hold `N·C·S` and `2·C` elements.
            unsafe {
                if wide {
                    forward_group::<LANES>(&outs, &st, inp, gamma, beta, (n, c, s, m), ch, eps);
                } else {
                    forward_group::<1>(&outs, &st, inp, gamma, beta, (n, c, s, m), ch, eps);
                }
            }
        });
    });
    Ok(())
}

/// [`batchnorm_forward`] of the channels `ch..ch + L`: their mean, then their variance about
/// it (each a sequential f64 sum, see [`channel_sums`]), then their output planes.
///
/// # Safety
/// Those channels' statistics in `st` (`2·C` floats) and planes in `outs` (`N·C·S` floats)
/// are accessed by nobody else during the call.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn forward_group<const L: usize>(
    outs: &OutPtr, st: &OutPtr, inp: &[f32], gamma: &[f32], beta: &[f32],
    (n, c, s, m): (usize, usize, usize, usize), ch: usize, eps: f32,
) {
    let dims = (n, c, s, ch);
    let sums = vector_sums::<L, 1>(dims, Terms::Sum(inp))
        .unwrap_or_else(|| channel_sums::<L, 1>(n, c, s, ch, |_, at| [inp[at] as f64]));
    let mean: [f64; L] = core::array::from_fn(|l| sums[l][0] / m as f64);
    let sq =
        vector_sums::<L, 1>(dims, Terms::SqDev(inp, widen_group(&mean))).unwrap_or_else(|| {
            channel_sums::<L, 1>(n, c, s, ch, |l, at| {
                let d = inp[at] as f64 - mean[l];
                [d * d]
            })
        });
    for l in 0..L {
        let ch = ch + l;
        let (mean, var) = (mean[l] as f32, (sq[l][0] / m as f64) as f32);
        // SAFETY: channel `ch` is this call's (contract).
        unsafe {
            st.range(ch, ch + 1)[0] = mean;
            st.range(c + ch, c + ch + 1)[0] = var;
        }
        let (scale, shift) = (inv_std(var, eps), beta[ch]);
        let g = gamma[ch];
        for (i, x) in planes(inp, c, s, ch).enumerate() {
            let at = (i * c + ch) * s;
            // SAFETY: as above.
            let o = unsafe { outs.range(at, at + s) };
            for (o, &x) in o.iter_mut().zip(x) {
                *o = g * ((x - mean) * scale) + shift;
            }
        }
    }
}

/// Backward of [`batchnorm_forward`], from `dout` (N×C×S), the forward input and its `stats`.
///
/// `dgamma`, `dbeta` (C) are added into and skipped when `None`; `dinp` (N×C×S) is overwritten
/// and skipped when `None`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    dinp: Option<&mut [f32]>, dgamma: Option<&mut [f32]>, dbeta: Option<&mut [f32]>, dout: &[f32],
    inp: &[f32], stats: &[f32], gamma: &[f32], n: usize, c: usize, s: usize, eps: f32,
    exec: &dyn Exec,
) -> Result<(), CoreError> {
    let (len, m) =
        check_training(("dout", dout.len()), inp.len(), stats.len(), gamma.len(), n, c, s)?;
    check_opt_len("dinp", dinp.as_deref(), len)?;
    check_opt_len("dgamma", dgamma.as_deref(), c)?;
    check_opt_len("dbeta", dbeta.as_deref(), c)?;
    let (mean, var) = stats.split_at(c);
    let ptr = |b: Option<&mut [f32]>| b.map(OutPtr::new);
    let (dinp, dgamma, dbeta) = (ptr(dinp), ptr(dgamma), ptr(dbeta));
    // Channels are independent: spread them over the threads.
    par::for_each_range(exec, c, par::elem_tasks(exec, len, c), &|c0, c1| {
        let outs = (dinp.as_ref(), dgamma.as_ref(), dbeta.as_ref());
        let args = (dout, inp, mean, var, gamma);
        channel_groups(c0, c1, |ch, wide| {
            // SAFETY: channels `ch..ch + L` — their entries of `dgamma` and `dbeta` and their
            // planes of `dinp` in every sample — belong to this task alone (the ranges handed
            // out are disjoint, see `OutPtr`); the lengths were checked above.
            unsafe {
                if wide {
                    backward_group::<LANES>(outs, args, (n, c, s, m), ch, eps);
                } else {
                    backward_group::<1>(outs, args, (n, c, s, m), ch, eps);
                }
            }
        });
    });
    Ok(())
}

/// The outputs of [`batchnorm_backward`]: `dinp`, `dgamma`, `dbeta`.
type Grads<'p> = (Option<&'p OutPtr>, Option<&'p OutPtr>, Option<&'p OutPtr>);
/// Its inputs: `dout`, `inp`, the batch means and variances, `gamma`.
type BackIn<'a> = (&'a [f32], &'a [f32], &'a [f32], &'a [f32], &'a [f32]);

/// [`batchnorm_backward`] of the channels `ch..ch + L`: the sums of the gradient and of the
/// gradient times the normalised input (sequential f64 sums, see [`channel_sums`]), then each
/// channel's parameter gradients and input-gradient planes.
///
/// # Safety
/// Those channels' entries of `dgamma`/`dbeta` (`C` floats) and planes of `dinp` (`N·C·S`)
/// are accessed by nobody else during the call.
#[inline(always)]
unsafe fn backward_group<const L: usize>(
    (dinp, dgamma, dbeta): Grads<'_>, (dout, inp, mean, var, gamma): BackIn<'_>,
    (n, c, s, m): (usize, usize, usize, usize), ch: usize, eps: f32,
) {
    let mu: [f32; L] = core::array::from_fn(|l| mean[ch + l]);
    let is: [f32; L] = core::array::from_fn(|l| inv_std(var[ch + l], eps));
    let grad = Terms::Grad { g: dout, x: inp, mu: widen_group(&mu), inv_std: widen_group(&is) };
    let sums = vector_sums::<L, 2>((n, c, s, ch), grad).unwrap_or_else(|| {
        channel_sums::<L, 2>(n, c, s, ch, |l, at| {
            let g = dout[at] as f64;
            [g, g * ((inp[at] - mu[l]) * is[l]) as f64]
        })
    });
    for l in 0..L {
        let (ch, mu, is) = (ch + l, mu[l], is[l]);
        let [sum_g, sum_gx] = sums[l];
        if let Some(d) = dgamma {
            // SAFETY: channel `ch` is this call's (contract).
            unsafe { d.range(ch, ch + 1)[0] += sum_gx as f32 };
        }
        if let Some(d) = dbeta {
            // SAFETY: as above.
            unsafe { d.range(ch, ch + 1)[0] += sum_g as f32 };
        }
        if let Some(dinp) = dinp {
            let mean_g = (sum_g / m as f64) as f32;
            let mean_gx = (sum_gx / m as f64) as f32;
            let k = gamma[ch] * is;
            for (i, (g, x)) in planes(dout, c, s, ch).zip(planes(inp, c, s, ch)).enumerate() {
                let at = (i * c + ch) * s;
                // SAFETY: as above.
                let d = unsafe { dinp.range(at, at + s) };
                for ((d, &g), &x) in d.iter_mut().zip(g).zip(x) {
                    let xh = (x - mu) * is;
                    *d = k * (g - mean_g - xh * mean_gx);
                }
            }
        }
    }
}

/// Exact inference, in place: `x` (N×C×S) `← x·a + b` per channel with
/// `a = γ/√(var_run + ε)`, `b = β − mean_run·a`. `running` is `2·C` (mean, then variance).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_forward_exact(
    x: &mut [f32], gamma: &[f32], beta: &[f32], running: &[f32], n: usize, c: usize, s: usize,
    eps: f32,
) -> Result<(), CoreError> {
    let (len, _) = sizes(n, c, s)?;
    check_len("x", x.len(), len)?;
    check_len("gamma", gamma.len(), c)?;
    check_len("beta", beta.len(), c)?;
    check_len("running", running.len(), 2 * c)?;
    let (mean, var) = running.split_at(c);
    for sample in x.chunks_exact_mut(c * s) {
        for (ch, plane) in sample.chunks_exact_mut(s).enumerate() {
            let a = gamma[ch] / libm::sqrtf(var[ch] + eps);
            let b = beta[ch] - mean[ch] * a;
            for v in plane.iter_mut() {
                *v = *v * a + b;
            }
        }
    }
    Ok(())
}

/// Moves the running statistics towards a batch's: `running` (`2·C`: mean, variance)
/// `← (1 − momentum)·running + momentum·batch`, where `stats` (`2·C`) is what
/// [`batchnorm_forward`] wrote for a batch of `count = N·S` values per channel; the variance
/// is made unbiased (`·count/(count − 1)`) when `count > 1`.
pub fn update_running(
    running: &mut [f32], stats: &[f32], count: usize, momentum: f32,
) -> Result<(), CoreError> {
    if count == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len("stats", stats.len(), running.len())?;
    if !running.len().is_multiple_of(2) {
        return Err(CoreError::BufferLen {
            what: "running",
            expected: running.len() + 1,
            got: running.len(),
        });
    }
    let c = running.len() / 2;
    let unbias = if count > 1 { count as f32 / (count - 1) as f32 } else { 1.0 };
    let keep = 1.0 - momentum;
    for (i, (r, &b)) in running.iter_mut().zip(stats).enumerate() {
        let b = if i < c { b } else { b * unbias };
        *r = keep * *r + momentum * b;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Serial;
    use crate::testutil::{Lcg, Threads, Twice, grad_check};
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn forward_normalises_each_channel() {
        let mut r = Lcg::new(41);
        let (n, c, s) = (3, 2, 4);
        let x: Vec<f32> = r.filled(n * c * s).iter().map(|v| 3.0 * v + 1.5).collect();
        let gamma = [1.0, 1.0];
        let beta = [0.0, 0.0];
        let mut out = vec![0.0; x.len()];
        let mut stats = [0.0; 4];
        batchnorm_forward(&mut out, &mut stats, &x, &gamma, &beta, n, c, s, 1e-5, &Serial).unwrap();
        for ch in 0..c {
            let vals: Vec<f64> =
                planes(&out, c, s, ch).flat_map(|p| p.iter().map(|&v| v as f64)).collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            assert!(mean.abs() < 1e-6, "{mean}");
            assert!((var - 1.0).abs() < 1e-4, "{var}");
            // The stored statistics are the input's.
            let xs: Vec<f64> =
                planes(&x, c, s, ch).flat_map(|p| p.iter().map(|&v| v as f64)).collect();
            let xm = xs.iter().sum::<f64>() / xs.len() as f64;
            let xv = xs.iter().map(|v| (v - xm).powi(2)).sum::<f64>() / xs.len() as f64;
            assert!((stats[ch] as f64 - xm).abs() < 1e-6);
            assert!((stats[c + ch] as f64 - xv).abs() < 1e-5);
        }
    }

    fn check_gradients(n: usize, c: usize, s: usize, seed: u64) {
        let mut r = Lcg::new(seed);
        let len = n * c * s;
        let x = r.filled(len);
        let gamma: Vec<f32> = r.filled(c).iter().map(|v| 1.0 + 0.5 * v).collect();
        let beta = r.filled(c);
        let g = r.filled(len);
        let eps = 1e-3;
        let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
            let mut out = vec![0.0; len];
            let mut stats = vec![0.0; 2 * c];
            batchnorm_forward(&mut out, &mut stats, x, gamma, beta, n, c, s, eps, &Serial).unwrap();
            out.iter().zip(&g).map(|(&o, &g)| o as f64 * g as f64).sum()
        };
        let mut out = vec![0.0; len];
        let mut stats = vec![0.0; 2 * c];
        batchnorm_forward(&mut out, &mut stats, &x, &gamma, &beta, n, c, s, eps, &Serial).unwrap();
        let mut dx = vec![f32::NAN; len];
        let mut dgamma = vec![0.0; c];
        let mut dbeta = vec![0.0; c];
        let back = |dx: &mut [f32], dgamma: Option<&mut [f32]>, dbeta: Option<&mut [f32]>| {
            let (g, x, gm) = (&g, &x, &gamma);
            batchnorm_backward(Some(dx), dgamma, dbeta, g, x, &stats, gm, n, c, s, eps, &Serial)
                .unwrap();
        };
        back(&mut dx, Some(&mut dgamma), Some(&mut dbeta));
        grad_check(&x, &dx, |xp| loss(xp, &gamma, &beta), 1e-3, 2e-3);
        grad_check(&gamma, &dgamma, |gp| loss(&x, gp, &beta), 1e-3, 2e-3);
        grad_check(&beta, &dbeta, |bp| loss(&x, &gamma, bp), 1e-3, 2e-3);
        // The input gradient alone is the same; the parameter buffers are optional.
        let mut dx2 = vec![0.0; len];
        back(&mut dx2, None, None);
        assert_eq!(dx, dx2);
    }

    #[test]
    fn backward_matches_finite_differences_image() {
        // C × H × W input: statistics per channel over N·H·W.
        check_gradients(3, 2, 6, 42);
    }

    #[test]
    fn backward_matches_finite_differences_flat() {
        // Flat input: statistics per feature over N.
        check_gradients(5, 4, 1, 43);
    }

    #[test]
    fn exact_inference_with_batch_statistics_equals_training_forward() {
        let mut r = Lcg::new(44);
        let (n, c, s) = (4, 3, 5);
        let x = r.filled(n * c * s);
        let gamma = r.filled(c);
        let beta = r.filled(c);
        let mut out = vec![0.0; x.len()];
        let mut stats = vec![0.0; 2 * c];
        batchnorm_forward(&mut out, &mut stats, &x, &gamma, &beta, n, c, s, 1e-5, &Serial).unwrap();
        let mut y = x.clone();
        batchnorm_forward_exact(&mut y, &gamma, &beta, &stats, n, c, s, 1e-5).unwrap();
        for (a, b) in y.iter().zip(&out) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn running_statistics_move_by_momentum() {
        let mut running = [0.0, 2.0, 1.0, 1.0];
        let stats = [1.0, -2.0, 0.5, 3.0];
        update_running(&mut running, &stats, 4, 0.25).unwrap();
        // Means: 0.75·run + 0.25·batch; variances unbiased by 4/3 first.
        let want = [0.25, 1.0, 0.75 + 0.25 * 0.5 * 4.0 / 3.0, 0.75 + 0.25 * 3.0 * 4.0 / 3.0];
        for (a, b) in running.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        let mut same = running;
        update_running(&mut same, &stats, 4, 0.0).unwrap();
        assert_eq!(same, running);
        assert!(update_running(&mut [0.0; 3], &[0.0; 3], 4, 0.1).is_err());
        assert_eq!(update_running(&mut [0.0; 2], &[0.0; 2], 0, 0.1), Err(CoreError::ZeroSize));
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The bits of both training passes on `exec` (`eps` 1e-5; the parameter gradients added
    /// onto 0.5 and 0.25): `(out, stats, dx, dgamma, dbeta)`.
    fn training_bits(
        x: &[f32], g: &[f32], gamma: &[f32], beta: &[f32], (n, c, s): (usize, usize, usize),
        exec: &dyn Exec,
    ) -> [Vec<u32>; 5] {
        let len = n * c * s;
        let (mut out, mut stats) = (vec![0.0; len], vec![0.0; 2 * c]);
        batchnorm_forward(&mut out, &mut stats, x, gamma, beta, n, c, s, 1e-5, exec).unwrap();
        let (mut dx, mut dg, mut db) = (vec![0.0; len], vec![0.5; c], vec![0.25; c]);
        let (gx, gg, gb) = (Some(&mut dx[..]), Some(&mut dg[..]), Some(&mut db[..]));
        batchnorm_backward(gx, gg, gb, g, x, &stats, gamma, n, c, s, 1e-5, exec).unwrap();
        [bits(&out), bits(&stats), bits(&dx), bits(&dg), bits(&db)]
    }

    /// Channels spread over threads keep the one-thread bits, image and flat layouts.
    #[test]
    fn threads_do_not_change_bits() {
        let mut r = Lcg::new(31);
        for (n, c, s) in [(32, 32, 49), (32, 1568, 1), (3, 5, 7)] {
            let len = n * c * s;
            let (x, g) = (r.filled(len), r.filled(len));
            let (gamma, beta) = (r.filled(c), r.filled(c));
            let run = |exec: &dyn Exec| training_bits(&x, &g, &gamma, &beta, (n, c, s), exec);
            let want = run(&Serial);
            for exec in [&Threads(2) as &dyn Exec, &Threads(3), &Twice] {
                assert_eq!(run(exec), want, "{:?}", (n, c, s));
            }
        }
    }

    /// The one-channel-at-a-time definition of the training passes, every sum a plain
    /// sequential f64 loop: `(out, stats, dx, dgamma, dbeta)`.
    fn reference(
        x: &[f32], g: &[f32], gamma: &[f32], beta: &[f32], (n, c, s): (usize, usize, usize),
    ) -> [Vec<f32>; 5] {
        let (m, eps) = ((n * s) as f64, 1e-5);
        let at = |i: usize, ch: usize, j: usize| (i * c + ch) * s + j;
        let mut out = [vec![0.0f32; n * c * s], vec![0.0; 2 * c], vec![0.0; n * c * s]];
        let (mut dg, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
        for ch in 0..c {
            let idx: Vec<usize> = (0..n).flat_map(|i| (0..s).map(move |j| at(i, ch, j))).collect();
            let mut sum = 0.0f64;
            idx.iter().for_each(|&k| sum += x[k] as f64);
            let mean = sum / m;
            let mut sq = 0.0f64;
            idx.iter().for_each(|&k| sq += (x[k] as f64 - mean) * (x[k] as f64 - mean));
            let (mu, var) = (mean as f32, (sq / m) as f32);
            let is = inv_std(var, eps);
            out[1][ch] = mu;
            out[1][c + ch] = var;
            let (mut sg, mut sgx) = (0.0f64, 0.0f64);
            for &k in &idx {
                out[0][k] = gamma[ch] * ((x[k] - mu) * is) + beta[ch];
                sg += g[k] as f64;
                sgx += g[k] as f64 * ((x[k] - mu) * is) as f64;
            }
            dg[ch] = 0.5 + sgx as f32;
            db[ch] = 0.25 + sg as f32;
            let (mg, mgx, k2) = ((sg / m) as f32, (sgx / m) as f32, gamma[ch] * is);
            for &k in &idx {
                out[2][k] = k2 * (g[k] - mg - (x[k] - mu) * is * mgx);
            }
        }
        let [o, st, dx] = out;
        [o, st, dx, dg, db]
    }

    /// Channels summed side by side, in groups of eight from any starting channel (as the
    /// threads split them), give the bits of the one-channel definition.
    #[test]
    fn grouped_channels_are_the_one_channel_definition() {
        let mut r = Lcg::new(33);
        for (n, c, s) in [(3, 19, 7), (4, 8, 5), (5, 27, 1), (2, 3, 9), (3, 19, 23), (2, 16, 49)] {
            let len = n * c * s;
            let (x, g) = (r.filled(len), r.filled(len));
            let (gamma, beta) = (r.filled(c), r.filled(c));
            let want = reference(&x, &g, &gamma, &beta, (n, c, s));
            let want = want.map(|v| bits(&v));
            for exec in [&Serial as &dyn Exec, &Threads(3), &Twice] {
                let got = training_bits(&x, &g, &gamma, &beta, (n, c, s), exec);
                for (k, (got, want)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(got, want, "output {k} of {:?}", (n, c, s));
                }
            }
        }
    }

    /// The vector kernel's sums of a group (where this CPU runs one) are the portable loop's,
    /// bit for bit, also over infinities, NaN, signed zeros and tiny values, from any first
    /// channel, with and without a tail of positions that fills no vector.
    #[test]
    fn vector_group_sums_are_the_portable_loop() {
        let mut r = Lcg::new(35);
        let special = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -0.0, 0.0, 1e-40, -3e38];
        for (n, c, s, ch) in [(3, 11, 17, 2), (2, 8, 8, 0), (4, 9, 3, 1), (1, 16, 49, 8)] {
            let len = n * c * s;
            let (mut x, g) = (r.filled(len), r.filled(len));
            for (i, v) in special.iter().enumerate() {
                x[(i * 7) % len] = *v;
            }
            let mu: [f32; LANES] = core::array::from_fn(|_| r.next_f32());
            let is: [f32; LANES] = core::array::from_fn(|_| r.next_f32() + 1.0);
            let mean: [f64; LANES] = core::array::from_fn(|l| mu[l] as f64 / 3.0);
            let dims = (n, c, s, ch);
            let want_sum = channel_sums::<LANES, 1>(n, c, s, ch, |_, at| [x[at] as f64]);
            let want_sq = channel_sums::<LANES, 1>(n, c, s, ch, |l, at| {
                let d = x[at] as f64 - mean[l];
                [d * d]
            });
            let want_grad = channel_sums::<LANES, 2>(n, c, s, ch, |l, at| {
                let gv = g[at] as f64;
                [gv, gv * ((x[at] - mu[l]) * is[l]) as f64]
            });
            let grad = Terms::Grad { g: &g, x: &x, mu, inv_std: is };
            let Some(got_sum) = vector_sums::<LANES, 1>(dims, Terms::Sum(&x)) else {
                return; // No vector kernel on this CPU: the portable loop is all there is.
            };
            assert_eq!(bits64(&got_sum), bits64(&want_sum), "Σx {dims:?}");
            let got_sq = vector_sums::<LANES, 1>(dims, Terms::SqDev(&x, mean)).unwrap();
            assert_eq!(bits64(&got_sq), bits64(&want_sq), "Σ(x − μ)² {dims:?}");
            let got_grad = vector_sums::<LANES, 2>(dims, grad).unwrap();
            assert_eq!(bits64(&got_grad), bits64(&want_grad), "Σg, Σg·x̂ {dims:?}");
        }
        // Other group sizes never take the vector kernel.
        assert!(vector_sums::<1, 1>((1, 8, 8, 0), Terms::Sum(&[0.0; 64])).is_none());
    }

    fn bits64<const K: usize>(v: &[[f64; K]]) -> Vec<u64> {
        v.iter().flatten().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn rejects_wrong_lengths() {
        let mut out = [0.0; 4];
        let mut stats = [0.0; 4];
        assert!(matches!(
            batchnorm_forward(
                &mut out,
                &mut stats[..3],
                &[0.0; 4],
                &[1.0; 2],
                &[0.0; 2],
                2,
                2,
                1,
                1e-5,
                &Serial
            ),
            Err(CoreError::BufferLen { what: "stats", .. })
        ));
        assert_eq!(
            batchnorm_forward_exact(&mut out, &[1.0; 2], &[0.0; 2], &stats, 2, 0, 1, 1e-5),
            Err(CoreError::ZeroSize)
        );
    }
}
