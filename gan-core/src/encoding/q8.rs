//! The all-integer encoding `q8`: int8 weights *and* int8 activations, for cores where every
//! floating-point operation is a library call.
//!
//! The network is read as a chain of steps, each a weighted layer (dense, convolution,
//! transposed convolution) with the activation after it fused in (views and dropout pass
//! through; batch normalisation must be folded first, [`crate::fold`]). Scales are static,
//! fixed at export: the network input is quantised with one scale `s_in`, and every step's
//! output with one scale `s_y` calibrated on sample outputs of the f32 network (the largest
//! magnitude seen, `/ 127`). Per step and output channel `c`:
//!
//! ```text
//! acc   = bias[c] + Σ xq·q                      (i32; bias in units of s_x·s_w[c])
//! y_q   = clamp((acc·m + 2^(sh−1)) >> sh, ±127) (i64 product; m = m_pos[c] if acc ≥ 0,
//!                                                 m_neg[c] if acc < 0)
//! ```
//!
//! with `m / 2^sh ≈ s_x·s_w[c] / s_y` (an int32 multiplier in `[2^30, 2^31)` and a right shift,
//! as in the integer-only inference scheme of TFLite and CMSIS-NN). ReLU is `m_neg = 0`,
//! LeakyReLU(α) `m_neg = round(α·m_pos)`, no activation `m_neg = m_pos`. The last step, followed
//! by Tanh or Sigmoid, requantises to an index in `[−1024, 1024)` at the scale
//! `range / 1024` (range 4 for Tanh, 8 for Sigmoid, where they have saturated to a pixel's
//! precision) and a 2,048-entry table maps the index straight to the grey byte the f32
//! network's pixel conversion would give. So a digit takes no floating-point operation per
//! multiply-accumulate or per activation: only the noise and its quantisation (one division
//! per input value) are float.
//!
//! Tensors per step: `weight` (int8 per-channel symmetric like [`super::int8`], stored as bytes
//! offset by 128 in the layout the kernels want, see [`crate::kernels::q8`]), `bias` (i32),
//! `requant` (i32 triples `m_pos, m_neg, sh`); the first step also owns the input `scale` (one
//! f32), the last the `lut` (2,048 bytes). Everything is integer and fixed at export, so host
//! and firmware produce the same bytes.

use crate::error::CoreError;
use crate::format::{DType, FormatError, MAX_FILE_LAYERS, TensorEntry, TensorKind};
use crate::layers::activation::Activation;
use crate::layers::{self, Channels, Q8Role};
use crate::spec::{LayerInfo, Spec};

use super::int8::{max_abs, quantize, row_buffer, scale_for};
use super::{Encoded, Table};

/// Entries of the output lookup table.
pub const LUT_LEN: usize = 2048;
/// The index range of the table is `[−LUT_HALF, LUT_HALF)`.
const LUT_HALF: i32 = (LUT_LEN / 2) as i32;
/// Largest shift of a requantisation.
const MAX_SHIFT: i32 = 62;
/// Bound on a stored bias (keeps `bias + Σ` far from overflowing i32).
const MAX_BIAS: f64 = (1u32 << 30) as f64;

/// The activation fused into a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    /// None: `m_neg = m_pos`.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `x` or `α·x`.
    Leaky(f32),
    /// The output: Tanh through the lookup table.
    Tanh,
    /// The output: Sigmoid through the lookup table.
    Sigmoid,
}

/// One step: a weighted layer and the activation after it.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// The weighted layer.
    pub info: LayerInfo,
    /// Its output channels.
    pub ch: Channels,
    /// The activation fused in.
    pub act: Act,
    /// The layer whose output is the step's (the activation's, or the weighted layer's).
    pub out_layer: usize,
}

/// The steps of `spec`, or [`FormatError::Unsupported`] if it is not a chain of weighted
/// layers and activations ending in Tanh or Sigmoid.
pub fn plan(spec: &Spec<'_>) -> Result<heapless::Vec<Step, MAX_FILE_LAYERS>, FormatError> {
    let mut steps: heapless::Vec<Step, MAX_FILE_LAYERS> = heapless::Vec::new();
    // Whether the last step still takes an activation.
    let mut open = false;
    for info in spec.iter() {
        match layers::q8_role(&info) {
            Q8Role::Pass => {}
            Q8Role::Weighted => {
                let ch = layers::channels(&info).ok_or(FormatError::Unsupported)?;
                if info.stats_len != 0
                    || info.bias_len != ch.n
                    || steps.last().is_some_and(|s| matches!(s.act, Act::Tanh | Act::Sigmoid))
                {
                    return Err(FormatError::Unsupported);
                }
                steps
                    .push(Step { info, ch, act: Act::Identity, out_layer: info.index })
                    .map_err(|_| FormatError::TooLarge)?;
                open = true;
            }
            Q8Role::Act(a) => {
                let step = steps.last_mut().filter(|_| open).ok_or(FormatError::Unsupported)?;
                step.out_layer = info.index;
                step.act = match a {
                    Activation::Relu => Act::Relu,
                    Activation::LeakyRelu(alpha) => Act::Leaky(alpha),
                    Activation::Tanh => Act::Tanh,
                    Activation::Sigmoid => Act::Sigmoid,
                };
                open = false;
            }
            Q8Role::Unsupported => return Err(FormatError::Unsupported),
        }
    }
    match steps.last() {
        Some(s) if matches!(s.act, Act::Tanh | Act::Sigmoid) => Ok(steps),
        _ => Err(FormatError::Unsupported),
    }
}

/// The tensor table: per step (in layer order) the input scale (first step only), weight,
/// bias, requant and lookup table (last step only).
pub(crate) fn table(spec: &Spec<'_>) -> Result<Table, FormatError> {
    let steps = plan(spec)?;
    let mut t = heapless::Vec::new();
    let mut off = 0usize;
    for (i, s) in steps.iter().enumerate() {
        let layer = u16::try_from(s.info.index).map_err(|_| FormatError::TooLarge)?;
        let first = (i == 0).then_some((TensorKind::Scale, DType::F32, 1));
        let last = (i + 1 == steps.len()).then_some((TensorKind::Lut, DType::I8, LUT_LEN));
        let mid = [
            (TensorKind::Weight, DType::I8, layers::q8_len(&s.info)),
            (TensorKind::Bias, DType::I32, s.ch.n),
            (TensorKind::Requant, DType::I32, 3 * s.ch.n),
        ];
        for (kind, dtype, len) in first.into_iter().chain(mid).chain(last) {
            super::push_tensor(&mut t, &mut off, layer, kind, dtype, len)?;
        }
    }
    Ok((t, off))
}

/// What export measured on the f32 network: the largest magnitude of its input and of every
/// step's output (after the activation; the last step's is not used), over calibration
/// samples.
#[derive(Clone, Copy, Debug)]
pub struct Calibration<'c> {
    /// Largest `|input|`.
    pub input_max: f32,
    /// Largest `|output|` of each step, in step order.
    pub output_max: &'c [f32],
}

/// Runs the f32 network `params` (batch normalisation folded) on the `n` inputs of `inputs`
/// with exact inference and returns the largest magnitudes [`encode`] calibrates with:
/// `(input_max, output_max)`, the latter one per step into `output_max`. `scratch` has
/// [`Spec::infer_scratch_len`]`(1)` elements, `output` the network's output length.
pub fn calibrate(
    spec: &Spec<'_>, params: &[f32], inputs: &[f32], n: usize, output: &mut [f32],
    scratch: &mut [f32], output_max: &mut [f32],
) -> Result<f32, CoreError> {
    let steps = plan(spec).map_err(|_| CoreError::Unsupported { layer: 0 })?;
    crate::error::check_len("output_max", output_max.len(), steps.len())?;
    let per = spec.input().len();
    crate::error::check_len("inputs", inputs.len(), n * per)?;
    output_max.fill(0.0);
    let weights = Encoded::F32(params);
    for x in inputs.chunks_exact(per.max(1)) {
        let mut seen = |l: &LayerInfo, act: &[f32]| {
            if let Some(i) = steps.iter().position(|s| s.out_layer == l.index) {
                output_max[i] = max_abs([output_max[i]].into_iter().chain(act.iter().copied()));
            }
        };
        let exec = &crate::kernels::Serial;
        crate::model::infer_observed(spec, &weights, x, output, scratch, 1, exec, &mut seen)?;
    }
    Ok(max_abs(inputs.iter().copied()))
}

/// `M ≈ m / 2^sh` with `m` in `[2^30, 2^31)` (or 0), `1 <= sh <= 62`; `None` when `M` is
/// negative, not finite or too large for a 31-bit multiplier. Doubling is exact in f64, so the
/// result depends on `M` alone.
pub fn fixed_point(mult: f64) -> Option<(i32, i32)> {
    if !(mult >= 0.0 && mult.is_finite()) {
        return None;
    }
    let top = i32::MAX as f64;
    let (mut v, mut sh) = (mult * 2.0, 1);
    while sh < MAX_SHIFT && v * 2.0 < top {
        v *= 2.0;
        sh += 1;
    }
    let m = libm::round(v);
    (m <= top).then_some((m as i32, sh))
}

/// `(acc·m + 2^(sh−1)) >> sh` (the exact 64-bit value, shifted arithmetically) for the sum's
/// sign, clamped to `lo..=hi`.
#[cfg(test)]
fn requant(acc: i32, r: &[i32], lo: i32, hi: i32) -> i32 {
    Rescale::of(r).apply(acc, lo, hi)
}

/// One output channel's requantisation (a `requant` triple: multipliers for sums `>= 0` and
/// `< 0`, the shift), read once per channel.
#[derive(Clone, Copy)]
struct Rescale {
    pos: i32,
    neg: i32,
    sh: u32,
}

impl Rescale {
    #[inline(always)]
    fn of(r: &[i32]) -> Self {
        Rescale { pos: r[0], neg: r[1], sh: r[2] as u32 }
    }

    /// [`requant`] of one sum.
    #[inline(always)]
    fn apply(self, acc: i32, lo: i32, hi: i32) -> i32 {
        let m = if acc < 0 { self.neg } else { self.pos };
        // Cores with a 32 × 32 → 64 multiplier (all but ARMv6-M, told apart by their atomics)
        // do the i64 formula in a few instructions, from the product's high word in the usual
        // case; the word-wise version gives the same value.
        // A zero multiplier (ReLU's, for negative sums) gives zero whatever the shift.
        if m == 0 {
            return 0.clamp(lo, hi);
        }
        if cfg!(all(target_arch = "arm", not(target_has_atomic = "32"))) {
            if self.sh >= 33 {
                return ((high_word(acc, m as u32) + (1 << (self.sh - 33))) >> (self.sh - 32))
                    .clamp(lo, hi);
            }
            let v = mul_round_shift(acc, m as u32, self.sh);
            return v.clamp(i64::from(lo), i64::from(hi)) as i32;
        }
        if self.sh >= 33 {
            return high_word_round_shift(acc, m, self.sh).clamp(lo, hi);
        }
        mul_round_shift_wide(acc, m, self.sh).clamp(i64::from(lo), i64::from(hi)) as i32
    }
}

/// [`mul_round_shift_wide`] for `33 <= sh <= 62`, as an i32 (it fits: `|a·m| < 2^62`).
#[inline(always)]
fn high_word_round_shift(a: i32, m: i32, sh: u32) -> i32 {
    let hi = ((i64::from(a) * i64::from(m)) >> 32) as i32;
    (hi + (1 << (sh - 33))) >> (sh - 32)
}

/// `(a·m + 2^(sh−1)) >> sh` with the 64-bit product; for `sh >= 33` (the usual case: the
/// multiplier is below 1/2) from its high word alone: with `a·m = hi·2^32 + lo`, adding
/// `lo < 2^32` to `hi·2^32 + 2^(sh−1)` cannot carry past a multiple of `2^sh`, so the result is
/// `(hi + 2^(sh−33)) >> (sh − 32)`: one `SMULL`, an add and a shift.
#[inline]
fn mul_round_shift_wide(a: i32, m: i32, sh: u32) -> i64 {
    if sh >= 33 {
        i64::from(high_word_round_shift(a, m, sh))
    } else {
        (i64::from(a) * i64::from(m) + (1i64 << (sh - 1))) >> sh
    }
}

/// `(a·m) >> 32` (the high word of the exact product, floored) for `m < 2^31`, from four
/// 16 × 16-bit products: [`mul_round_shift`] for the usual shifts (`>= 33`) without the low
/// word's shifting, for cores without a 32 × 32 → 64 multiplier.
#[inline(always)]
fn high_word(a: i32, m: u32) -> i32 {
    let ua = a.unsigned_abs();
    let (a0, a1, m0, m1) = (ua & 0xFFFF, ua >> 16, m & 0xFFFF, m >> 16);
    // Both middle products are below 2^31 (a1 <= 2^15, m1 < 2^15), so their sum fits.
    let mid = a1 * m0 + a0 * m1;
    let (lo, carry) = (a0 * m0).overflowing_add(mid << 16);
    let hi = a1 * m1 + (mid >> 16) + u32::from(carry);
    // −(hi·2^32 + lo) = (!hi + [lo == 0])·2^32 + (2^32 − lo).
    if a < 0 { (!hi).wrapping_add(u32::from(lo == 0)) as i32 } else { hi as i32 }
}

/// `(a·m + 2^(sh−1)) >> sh` for `m < 2^31`, `1 <= sh <= 62`, with the product built from four
/// 16 × 16-bit products and the shift done on the two words: the same value as the i64
/// formula, without the 64-bit multiply and shift routines a core without a 32 × 32 → 64
/// multiplier (ARMv6-M) would call.
#[inline]
fn mul_round_shift(a: i32, m: u32, sh: u32) -> i64 {
    let ua = a.unsigned_abs();
    let (a0, a1, m0, m1) = (ua & 0xFFFF, ua >> 16, m & 0xFFFF, m >> 16);
    // |a|·m as (hi, lo): a0·m0 + (a0·m1 + a1·m0)·2^16 + a1·m1·2^32.
    let (p0, p1, p2, p3) = (a0 * m0, a0 * m1, a1 * m0, a1 * m1);
    let (mid, carry_mid) = p1.overflowing_add(p2);
    let (lo, carry_lo) = p0.overflowing_add(mid << 16);
    let hi = p3 + (mid >> 16) + (u32::from(carry_mid) << 16) + u32::from(carry_lo);
    // Negate for a negative sum (two's complement of the 64-bit pair).
    let (hi, lo) = if a < 0 {
        let lo_n = (!lo).wrapping_add(1);
        ((!hi).wrapping_add(u32::from(lo_n == 0)), lo_n)
    } else {
        (hi, lo)
    };
    // + 2^(sh−1).
    let (hi, lo) = if sh <= 32 {
        let (l, c) = lo.overflowing_add(1u32.wrapping_shl(sh - 1));
        (hi.wrapping_add(u32::from(c)), l)
    } else {
        (hi.wrapping_add(1 << (sh - 33)), lo)
    };
    // Arithmetic shift of the pair by sh.
    let hi = hi as i32;
    if sh < 32 {
        i64::from(hi >> sh) << 32 | i64::from((hi << (32 - sh)) as u32 | (lo >> sh))
    } else {
        i64::from(hi >> (sh - 32))
    }
}

/// The output table's scale: index `i` stands for `i · range / 1024`.
fn lut_scale(act: Act) -> f64 {
    let range = if act == Act::Sigmoid { 8.0 } else { 4.0 };
    range / f64::from(LUT_HALF)
}

/// Writes the `q8` data section of `params` (the f32 parameter buffer of `spec`, batch
/// normalisation folded) with the scales of `calib`, and returns its length.
pub fn encode(
    spec: &Spec<'_>, params: &[f32], calib: &Calibration<'_>, out: &mut [u8],
) -> Result<usize, FormatError> {
    let steps = plan(spec)?;
    let (table, len) = table(spec)?;
    if params.len() != spec.param_len() || calib.output_max.len() != steps.len() {
        return Err(FormatError::BadTensorTable);
    }
    let out = out.get_mut(..len).ok_or(FormatError::BufferTooSmall)?;
    out.fill(0);
    let at = |layer: usize, kind: TensorKind| {
        table
            .iter()
            .find(|t| t.layer as usize == layer && t.kind == kind)
            .map(|t| t.offset as usize)
            .ok_or(FormatError::BadTensorTable)
    };
    let scale_of = |m: f32| match scale_for(m) {
        0.0 => 1.0,
        s => f64::from(s),
    };
    let s_in = scale_of(calib.input_max);
    let first = at(steps[0].info.index, TensorKind::Scale)?;
    out[first..first + 4].copy_from_slice(&(s_in as f32).to_le_bytes());
    let mut s_x = f64::from(s_in as f32);
    for (i, s) in steps.iter().enumerate() {
        let last = i + 1 == steps.len();
        let s_y = if last { lut_scale(s.act) } else { scale_of(calib.output_max[i]) };
        let w = &params[s.info.weight_range()];
        let bias = &params[s.info.bias_range()];
        let wo = at(s.info.index, TensorKind::Weight)?;
        // Padding of the layout: zero weights.
        out[wo..wo + layers::q8_len(&s.info)].fill(crate::kernels::q8::OFFSET as u8);
        let (wo, bo, ro) =
            (wo, at(s.info.index, TensorKind::Bias)?, at(s.info.index, TensorKind::Requant)?);
        // Each channel's weight scale, in one pass over the weights, kept (as f32 bits) in the
        // bias tensor until the biases are written below.
        let scale_slot = |out: &[u8], c: usize| {
            let o = bo + 4 * c;
            f32::from_le_bytes([out[o], out[o + 1], out[o + 2], out[o + 3]])
        };
        for (k, &v) in w.iter().enumerate() {
            let c = s.ch.of(k);
            let m = max_abs([scale_slot(out, c), v].into_iter());
            out[bo + 4 * c..bo + 4 * c + 4].copy_from_slice(&m.to_le_bytes());
        }
        for c in 0..s.ch.n {
            let sw = scale_for(scale_slot(out, c));
            out[bo + 4 * c..bo + 4 * c + 4].copy_from_slice(&sw.to_le_bytes());
        }
        for (k, &v) in w.iter().enumerate() {
            let sw = scale_slot(out, s.ch.of(k));
            let q = if sw == 0.0 { 0 } else { i32::from(quantize(v, sw)) };
            out[wo + layers::q8_index(&s.info, k)] = (q + crate::kernels::q8::OFFSET) as u8;
        }
        for c in 0..s.ch.n {
            let sw = scale_slot(out, c);
            // The accumulator's scale (any positive one for an all-zero channel).
            let acc_scale = if sw == 0.0 { s_y / 256.0 } else { s_x * f64::from(sw) };
            let b = libm::round(f64::from(bias[c]) / acc_scale).clamp(-MAX_BIAS, MAX_BIAS);
            let (m, sh) = fixed_point(acc_scale / s_y).ok_or(FormatError::TooLarge)?;
            let m_neg = match s.act {
                Act::Relu => 0,
                Act::Leaky(alpha) => libm::round(f64::from(m) * f64::from(alpha)) as i32,
                Act::Identity | Act::Tanh | Act::Sigmoid => m,
            };
            out[bo + 4 * c..bo + 4 * c + 4].copy_from_slice(&(b as i32).to_le_bytes());
            for (j, v) in [m, m_neg, sh].into_iter().enumerate() {
                let o = ro + 12 * c + 4 * j;
                out[o..o + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        if last {
            let lut = at(s.info.index, TensorKind::Lut)?;
            for (i, p) in out[lut..lut + LUT_LEN].iter_mut().enumerate() {
                let v = ((i as i32 - LUT_HALF) as f64 * s_y) as f32;
                *p = if s.act == Act::Sigmoid {
                    crate::to_pixel_unit(1.0 / (1.0 + libm::expf(-v)))
                } else {
                    crate::to_pixel(libm::tanhf(v))
                };
            }
        }
        s_x = s_y;
    }
    Ok(len)
}

/// The data section of a validated file as `q8`, in place: 4-byte aligned, every
/// requantisation in range (multipliers `>= 0`, shifts `1..=62`).
pub(crate) fn view<'a>(
    data: &'a [u8], tensors: &'a [TensorEntry],
) -> Result<Encoded<'a>, FormatError> {
    if !(data.as_ptr() as usize).is_multiple_of(4) {
        return Err(FormatError::Misaligned);
    }
    for t in tensors.iter().filter(|t| t.kind == TensorKind::Requant) {
        let r = i32_view(data, t).ok_or(FormatError::BadTensorTable)?;
        if r.chunks_exact(3).any(|r| r[0] < 0 || r[1] < 0 || !(1..=MAX_SHIFT).contains(&r[2])) {
            return Err(FormatError::BadRequant { layer: t.layer });
        }
    }
    Ok(Encoded::Q8 { data, tensors })
}

/// An i32 tensor, in place (4-byte aligned data, 16-byte aligned tensors).
fn i32_view<'a>(data: &'a [u8], t: &TensorEntry) -> Option<&'a [i32]> {
    let bytes =
        data.get(t.offset as usize..(t.offset as usize).checked_add(4 * t.len as usize)?)?;
    // SAFETY: every bit pattern is a valid i32; only an aligned middle with no prefix or suffix
    // is accepted.
    let (pre, mid, post) = unsafe { bytes.align_to::<i32>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

/// An i8 (or byte) tensor, in place.
fn i8_view<'a>(data: &'a [u8], t: &TensorEntry) -> Option<&'a [i8]> {
    let bytes = data.get(t.offset as usize..t.offset as usize + t.len as usize)?;
    // SAFETY: i8 and u8 have the same size, alignment and validity.
    Some(unsafe { core::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) })
}

/// Scratch (f32 elements) the integer walk needs for a widest activation of `max_features`:
/// the sums (as i32 bits) and two int8 activation buffers.
pub(crate) const fn scratch_len(max_features: usize) -> usize {
    max_features + max_features.div_ceil(2)
}

/// Requantises a layer's sums: channel `c` is the `c`-th plane of `plane` sums in `acc` (one
/// sum for a dense layer), plus `bias[c]`, rescaled by its `requant` triple, clamped to
/// `lo..=hi` and written through `put`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rescale<T>(
    acc: &[f32], bias: &[i32], rq: &[i32], plane: usize, out: &mut [T], lo: i32, hi: i32,
    put: impl Fn(i32) -> T,
) {
    let channels = bias.iter().zip(rq.chunks_exact(3)).map(|(&b, r)| (b, Rescale::of(r)));
    let one = |v: &f32, b: i32, r: Rescale| r.apply((v.to_bits() as i32).saturating_add(b), lo, hi);
    if plane == 1 {
        for ((o, v), (b, r)) in out.iter_mut().zip(acc).zip(channels) {
            *o = put(one(v, b, r));
        }
        return;
    }
    for ((o, a), (b, r)) in out.chunks_exact_mut(plane).zip(acc.chunks_exact(plane)).zip(channels) {
        for (o, v) in o.iter_mut().zip(a) {
            *o = put(one(v, b, r));
        }
    }
}

/// Runs the network on `input` (one sample) and writes the grey bytes to `pixels`.
/// `scratch` has at least [`scratch_len`] of the widest activation.
pub(crate) fn run(
    spec: &Spec<'_>, data: &[u8], tensors: &[TensorEntry], input: &[f32], pixels: &mut [u8],
    scratch: &mut [f32],
) -> Result<(), CoreError> {
    let bad = CoreError::Unsupported { layer: 0 };
    let steps = plan(spec).map_err(|_| bad)?;
    let mf = spec.max_features();
    crate::error::check_len("input", input.len(), spec.input().len())?;
    crate::error::check_len("pixels", pixels.len(), spec.output().len())?;
    crate::error::check_min_len("scratch", scratch.len(), scratch_len(mf))?;
    let (acc, rest) = scratch.split_at_mut(mf);
    let bytes = row_buffer(&mut rest[..mf.div_ceil(2)]);
    let (mut x, mut y) = bytes.split_at_mut(mf);
    let find = |layer: usize, kind: TensorKind| {
        tensors.iter().find(|t| t.layer as usize == layer && t.kind == kind).ok_or(bad)
    };
    let f32_at = |t: &TensorEntry| -> Result<f32, CoreError> {
        let o = t.offset as usize;
        let b = data.get(o..o + 4).ok_or(bad)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let s_in = f32_at(find(steps[0].info.index, TensorKind::Scale)?)?;
    for (q, &v) in x.iter_mut().zip(input) {
        *q = if s_in > 0.0 { quantize(v, s_in) } else { 0 };
    }
    for (i, s) in steps.iter().enumerate() {
        let l = &s.info;
        let t = find(l.index, TensorKind::Weight)?;
        let u = data.get(t.offset as usize..t.offset as usize + t.len as usize).ok_or(bad)?;
        let bias = i32_view(data, find(l.index, TensorKind::Bias)?).ok_or(bad)?;
        let rq = i32_view(data, find(l.index, TensorKind::Requant)?).ok_or(bad)?;
        let (n_in, n_out) = (l.in_shape.len(), l.out_shape.len());
        // Output channel `c` is the `c`-th plane of `plane` values (one value for a dense layer).
        let plane = ((l.out_shape.h as usize) * (l.out_shape.w as usize)).max(1);
        layers::q8_sums(l, &mut acc[..n_out], &x[..n_in], u)?;
        if i + 1 < steps.len() {
            let out = &mut y[..n_out];
            rescale(&acc[..n_out], bias, rq, plane, out, -127, 127, |v| v as i8);
            core::mem::swap(&mut x, &mut y);
        } else {
            let lut = i8_view(data, find(l.index, TensorKind::Lut)?).ok_or(bad)?;
            let lut = lut.get(..LUT_LEN).ok_or(bad)?;
            let at = |v: i32| lut[(v + LUT_HALF) as usize] as u8;
            rescale(&acc[..n_out], bias, rq, plane, pixels, -LUT_HALF, LUT_HALF - 1, at);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::Encoding;
    use crate::format::{self, Header, ModelKind, NoiseKind, WeightsFile};
    use crate::generate::Generator;
    use crate::spec::{Layer, Shape};
    use crate::testutil::Lcg;
    use std::vec;
    use std::vec::Vec;

    #[repr(C, align(16))]
    struct Buf([u8; 1 << 16]);

    /// `spec` with random parameters as a q8 generator file (calibrated on random noise), in
    /// `buf`; returns the file length and the parameters.
    fn q8_file(spec: &Spec<'_>, seed: u64, buf: &mut Buf) -> (usize, Vec<f32>) {
        let mut r = Lcg::new(seed);
        let params: Vec<f32> = (0..spec.param_len()).map(|_| 0.6 * r.next_f32()).collect();
        let n = 64;
        let inputs: Vec<f32> = (0..n * spec.input().len()).map(|_| 2.0 * r.next_f32()).collect();
        let steps = plan(spec).unwrap();
        let mut maxima = vec![0.0; steps.len()];
        let mut out = vec![0.0; spec.output().len()];
        let mut scratch = vec![0.0; spec.infer_scratch_len(1)];
        let input_max =
            calibrate(spec, &params, &inputs, n, &mut out, &mut scratch, &mut maxima).unwrap();
        let latent = spec.input().len() as u32;
        let h = Header::for_spec_as(
            ModelKind::Generator,
            spec,
            latent,
            0,
            NoiseKind::Gaussian,
            Encoding::Q8,
        )
        .unwrap();
        assert_eq!(h.encoding(), Encoding::Q8);
        let calib = Calibration { input_max, output_max: &maxima };
        assert_eq!(format::write(&mut buf.0, &h, &params), Err(FormatError::Unsupported));
        let len = format::write_calibrated(&mut buf.0, &h, &params, Some(&calib)).unwrap();
        (len, params)
    }

    /// Pixels of `count` samples from a file: (q8 bytes, f32 bytes of the same parameters).
    fn both_pixels(file: &[u8], spec: &Spec<'_>, params: &[f32], count: u64) -> (Vec<u8>, Vec<u8>) {
        let f = WeightsFile::parse(file).unwrap();
        let g = Generator::new(&f).unwrap();
        assert_eq!(g.encoding(), Encoding::Q8);
        let (mut q, mut exact) = (Vec::new(), Vec::new());
        let mut x = vec![0.0; g.input_len()];
        let mut y = vec![0.0; g.output_len()];
        let mut scratch = vec![0.0; g.scratch_len()];
        let mut px = vec![0u8; g.output_len()];
        let mut scratch32 = vec![0.0; spec.infer_scratch_len(1)];
        for seed in 0..count {
            let mut rng = crate::noise::rng(seed);
            g.generate(&mut rng, 0, &mut x, &mut y, &mut scratch, &mut px).unwrap();
            q.extend_from_slice(&px);
            crate::model::infer(spec, params, &x, &mut y, &mut scratch32, 1).unwrap();
            exact.extend(y.iter().map(|&v| crate::to_pixel(v)));
        }
        (q, exact)
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).sum::<f64>() / a.len() as f64
    }

    /// The word-wise product and shift is the i64 formula, edges included.
    #[test]
    fn mul_round_shift_is_the_64_bit_formula() {
        let mut r = Lcg::new(9);
        let mut cases: Vec<(i32, u32, u32)> = Vec::new();
        for &a in &[0, 1, -1, 2, -2, 65535, -65536, i32::MAX, i32::MIN, i32::MIN + 1, 12345, -98765]
        {
            for &m in &[0u32, 1, 65535, 65536, 1 << 30, (1 << 31) - 1, 1_234_567_890] {
                for sh in [1, 2, 15, 16, 31, 32, 33, 40, 61, 62] {
                    cases.push((a, m, sh));
                }
            }
        }
        for _ in 0..20_000 {
            let a = (r.next_f32() * 2.0e9) as i32 >> ((r.next_f32().abs() * 24.0) as u32);
            let m = ((r.next_f32().abs() * 2.1e9) as u32).min((1 << 31) - 1);
            let sh = 1 + (r.next_f32().abs() * 61.9) as u32;
            cases.push((a, m, sh));
        }
        for (a, m, sh) in cases {
            let want = (i64::from(a) * i64::from(m) + (1i64 << (sh - 1))) >> sh;
            assert_eq!(mul_round_shift(a, m, sh), want, "{a} {m} {sh}");
            assert_eq!(mul_round_shift_wide(a, m as i32, sh), want, "wide: {a} {m} {sh}");
            let hi = (i64::from(a) * i64::from(m)) >> 32;
            assert_eq!(i64::from(high_word(a, m)), hi, "high word: {a} {m}");
            if sh >= 33 && m > 0 {
                let r = Rescale { pos: m as i32, neg: m as i32, sh };
                assert_eq!(i64::from(r.apply(a, i32::MIN, i32::MAX)), want, "{a} {m} {sh}");
            }
        }
    }

    #[test]
    fn fixed_point_multipliers_are_accurate() {
        for m in [1e-9, 3.1e-5, 0.0123, 0.5, 0.999_999, 1.0, 7.25, 1234.5, 1e6] {
            let (q, sh) = fixed_point(m).unwrap();
            assert!((1 << 30..=i32::MAX).contains(&q) && (1..=MAX_SHIFT).contains(&sh), "{m}");
            let back = f64::from(q) / libm::ldexp(1.0, sh);
            assert!((back - m).abs() <= m * 1e-9, "{m}: {q} >> {sh}");
        }
        assert_eq!(fixed_point(0.0).map(|f| f.0), Some(0));
        assert_eq!(fixed_point(-1.0), None);
        assert_eq!(fixed_point(f64::NAN), None);
        assert_eq!(fixed_point(3e9), None);
        // Rounding half up, and the clamp.
        let r = [1 << 30, 0, 31]; // × 0.5, ReLU
        assert_eq!(requant(3, &r, -127, 127), 2);
        assert_eq!(requant(-3, &r, -127, 127), 0);
        assert_eq!(requant(1000, &r, -127, 127), 127);
        let r = [1 << 30, 1 << 29, 31]; // × 0.5, leaky × 0.25
        assert_eq!(requant(-9, &r, -127, 127), -2);
        assert_eq!(requant(-10, &r, -127, 127), -2);
        assert_eq!(requant(-1000, &r, -127, 127), -127);
    }

    /// An MLP generator: the integer walk equals a plain re-computation from the file's
    /// tensors, and its pixels stay close to the f32 network's.
    #[test]
    fn mlp_matches_the_integer_definition_and_the_f32_network() {
        let layers = [
            Layer::Dense { out: 24 },
            Layer::LeakyRelu { alpha: 0.2 },
            Layer::Dense { out: 40 },
            Layer::Relu,
            Layer::Dense { out: 36 },
            Layer::Tanh,
            Layer::Reshape { to: Shape::image(1, 6, 6) },
        ];
        let spec = Spec::new(Shape::flat(10), &layers).unwrap();
        let mut buf = Buf([0; 1 << 16]);
        let (len, params) = q8_file(&spec, 3, &mut buf);
        let (q, exact) = both_pixels(&buf.0[..len], &spec, &params, 20);
        assert!(mean_abs_diff(&q, &exact) < 2.0, "{}", mean_abs_diff(&q, &exact));

        // The definition, straight from the tensors.
        let f = WeightsFile::parse(&buf.0[..len]).unwrap();
        let tensor = |layer: usize, kind: TensorKind| {
            let t = f.header.tensors.iter().find(|t| t.layer as usize == layer && t.kind == kind);
            let t = t.unwrap();
            &f.data()[t.offset as usize..]
        };
        let i32s = |b: &[u8], n: usize| -> Vec<i64> {
            (0..n)
                .map(|i| i32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()) as i64)
                .collect()
        };
        let s_in = f32::from_le_bytes(tensor(0, TensorKind::Scale)[..4].try_into().unwrap());
        let lut = tensor(4, TensorKind::Lut);
        let mut rng = crate::noise::rng(7);
        let mut z = vec![0.0f32; 10];
        crate::noise::generator_input(NoiseKind::Gaussian, &mut rng, 10, 0, &mut z);
        let mut x: Vec<i64> =
            z.iter().map(|&v| (libm::roundf(v / s_in) as i64).clamp(-127, 127)).collect();
        let mut want = Vec::new();
        for (layer, n_out, last) in [(0, 24, false), (2, 40, false), (4, 36, true)] {
            let n_in = x.len();
            let w = tensor(layer, TensorKind::Weight);
            let b = i32s(tensor(layer, TensorKind::Bias), n_out);
            let r = i32s(tensor(layer, TensorKind::Requant), 3 * n_out);
            let mut y = Vec::new();
            for j in 0..n_out {
                let acc: i64 = b[j]
                    + (0..n_in)
                        .map(|p| {
                            x[p] * (w[crate::kernels::q8::pair_index(p, j, n_in, n_out)] as i64
                                - 128)
                        })
                        .sum::<i64>();
                let m = if acc < 0 { r[3 * j + 1] } else { r[3 * j] };
                let v = (acc * m + (1 << (r[3 * j + 2] - 1))) >> r[3 * j + 2];
                if last {
                    want.push(lut[(v.clamp(-1024, 1023) + 1024) as usize]);
                } else {
                    y.push(v.clamp(-127, 127));
                }
            }
            x = y;
        }
        let g = Generator::new(&f).unwrap();
        let mut rng = crate::noise::rng(7);
        let (mut zz, mut out) = (vec![0.0; 10], vec![1.0; 36]);
        let mut scratch = vec![0.0; g.scratch_len()];
        let mut px = vec![0u8; 36];
        g.generate(&mut rng, 0, &mut zz, &mut out, &mut scratch, &mut px).unwrap();
        assert_eq!(px, want);
        assert!(out.iter().all(|&v| v == 0.0));
    }

    /// The convolutional generator (batch normalisation folded): pixels close to the f32
    /// network's, and a bad requantisation is refused with its own code.
    #[test]
    fn conv_generator_round_trip_and_bad_requantisation() {
        let layers = crate::presets::conv_generator(8, 8, 6, 4, Layer::Tanh);
        let spec = Spec::new(Shape::flat(7), &layers).unwrap();
        // Unfolded batch normalisation cannot be stored.
        assert_eq!(plan(&spec).err(), Some(FormatError::Unsupported));
        let folded_layers = crate::fold::folded_layers(&spec).unwrap();
        let folded = Spec::new(Shape::flat(7), &folded_layers).unwrap();
        let steps = plan(&folded).unwrap();
        assert_eq!(steps.len(), 3);
        assert!(steps[..2].iter().all(|s| s.act == Act::Relu) && steps[2].act == Act::Tanh);
        let mut buf = Buf([0; 1 << 16]);
        let (len, params) = q8_file(&folded, 5, &mut buf);
        let (q, exact) = both_pixels(&buf.0[..len], &folded, &params, 20);
        assert!(mean_abs_diff(&q, &exact) < 3.0, "{}", mean_abs_diff(&q, &exact));
        // A shift of 0 in the last layer's requantisation, checksums repaired.
        let f = WeightsFile::parse(&buf.0[..len]).unwrap();
        let t = *f.header.tensors.iter().rfind(|t| t.kind == TensorKind::Requant).unwrap();
        let mut data = f.data().to_vec();
        data[t.offset as usize + 8..t.offset as usize + 12].fill(0);
        let mut h = f.header.clone();
        h.data_crc = format::crc32(&data);
        let mut head = [0u8; 4096];
        let hl = postcard::to_slice(&h, &mut head).unwrap().len();
        let mut bad = Buf([0; 1 << 16]);
        bad.0[..4].copy_from_slice(&format::MAGIC);
        bad.0[4..6].copy_from_slice(&Encoding::Q8.format_version().to_le_bytes());
        bad.0[8..12].copy_from_slice(&(hl as u32).to_le_bytes());
        bad.0[12..16].copy_from_slice(&format::crc32(&head[..hl]).to_le_bytes());
        bad.0[16..16 + hl].copy_from_slice(&head[..hl]);
        let at = (16 + hl).next_multiple_of(16);
        bad.0[at..at + data.len()].copy_from_slice(&data);
        let e = WeightsFile::parse(&bad.0[..at + data.len()]).err();
        assert_eq!(e, Some(FormatError::BadRequant { layer: t.layer }));
        assert_eq!(FormatError::BadRequant { layer: t.layer }.code(), 23);
    }

    #[test]
    fn networks_that_are_not_chains_ending_in_tanh_are_refused() {
        let no_tanh = [Layer::Dense { out: 4 }, Layer::Relu, Layer::Dense { out: 4 }];
        let double = [
            Layer::Dense { out: 4 },
            Layer::Relu,
            Layer::Relu,
            Layer::Dense { out: 4 },
            Layer::Tanh,
        ];
        let after = [Layer::Dense { out: 4 }, Layer::Tanh, Layer::Dense { out: 4 }, Layer::Tanh];
        for layers in [&no_tanh[..], &double, &after] {
            let spec = Spec::new(Shape::flat(3), layers).unwrap();
            assert_eq!(plan(&spec).err(), Some(FormatError::Unsupported), "{layers:?}");
        }
        let ok = [
            Layer::Dense { out: 4 },
            Layer::Dropout { p: 0.1 },
            Layer::Relu,
            Layer::Dense { out: 4 },
            Layer::Sigmoid,
        ];
        let spec = Spec::new(Shape::flat(3), &ok).unwrap();
        let steps = plan(&spec).unwrap();
        assert_eq!((steps[0].act, steps[0].out_layer, steps[1].act), (Act::Relu, 2, Act::Sigmoid));
    }
}
