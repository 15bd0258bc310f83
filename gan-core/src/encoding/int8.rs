//! The int8 encoding, for microcontrollers without an FPU.
//!
//! The weights of a dense, convolution or transposed-convolution layer are stored as i8 with
//! one f32 scale per output channel (the output features of a dense layer, the output planes
//! of a convolution; [`Channels`] says which weights belong to which): symmetric, `w ≈ q·s`
//! with `s = max|w| / 127` over the channel's weights. The scales and the f32 bias follow, each
//! tensor on a 16-byte boundary. At inference each sample's input to the layer is quantised the
//! same way with one scale for the whole input (`x ≈ qx·sx`, recomputed for every sample), the
//! products are summed in i32, and the result is scaled back (see
//! [`crate::layers::dense::dense_forward_i8`] and the convolutions' `*_forward_i8`):
//!
//! ```text
//! out[j] = (Σ qx·q) as f32 · (sx · s[c(j)]) + bias[c(j)]
//! ```
//!
//! Integer sums are exact in any order, and the float steps (the scales, the rounding with
//! `libm::roundf`, the final multiply and add) are fixed, so host and firmware still produce
//! identical bytes. On a Cortex-M0+ an i8 multiply-accumulate is a few integer instructions
//! instead of two soft-float calls, and the weights take a quarter of the flash. A network with
//! parameters elsewhere (batch normalisation, minibatch discrimination) cannot be stored this
//! way: fold batch normalisation into the layer before it first ([`crate::fold`]).

use crate::error::CoreError;
use crate::format::{DType, FormatError, TensorEntry, TensorKind};
use crate::layers::{Channels, LayerWeights};
use crate::spec::{LayerInfo, Spec};

use super::{Encoded, Table};

/// Largest magnitude of a quantised value.
pub const QMAX: f32 = 127.0;

/// `x / scale` rounded half away from zero and clamped to ±127 (NaN gives 0).
///
/// The clamp is done on the integer (the float-to-int conversion saturates and maps NaN to 0),
/// which is the same as clamping the float and saves two soft-float compares per value on
/// cores without an FPU.
#[inline]
pub(crate) fn quantize(x: f32, scale: f32) -> i8 {
    (libm::roundf(x / scale) as i32).clamp(-127, 127) as i8
}

/// Largest `|x|` (NaN ignored). Compared as bit patterns, which order non-negative floats the
/// way their values do (no soft-float compare on cores without an FPU).
pub(crate) fn max_abs(xs: impl Iterator<Item = f32>) -> f32 {
    let mut m = 0u32;
    for x in xs {
        let a = x.to_bits() & 0x7FFF_FFFF;
        if a <= 0x7F80_0000 && a > m {
            m = a;
        }
    }
    f32::from_bits(m)
}

/// The scale for values whose largest magnitude is `m`: `m / 127`, or 0 when `m` is 0 or not
/// finite (then everything quantises to 0).
pub(crate) fn scale_for(m: f32) -> f32 {
    let s = m / QMAX;
    if s > 0.0 && s.is_finite() { s } else { 0.0 }
}

/// Quantises one activation row into `q` and returns its scale.
pub fn quantize_row(q: &mut [i8], x: &[f32]) -> f32 {
    let s = scale_for(max_abs(x.iter().copied()));
    if s == 0.0 {
        q.fill(0);
    } else {
        for (d, &v) in q.iter_mut().zip(x) {
            *d = quantize(v, s);
        }
    }
    s
}

/// Per-column quantisation of a `k × n` row-major weight matrix: `q` (`k·n`) and `scales` (`n`).
pub fn quantize_columns(
    q: &mut [i8], scales: &mut [f32], w: &[f32], k: usize, n: usize,
) -> Result<(), CoreError> {
    crate::error::check_len("q", q.len(), k * n)?;
    crate::error::check_len("scales", scales.len(), n)?;
    crate::error::check_len("w", w.len(), k * n)?;
    for (j, s) in scales.iter_mut().enumerate() {
        *s = scale_for(max_abs((0..k).map(|p| w[p * n + j])));
        for p in 0..k {
            q[p * n + j] = if *s == 0.0 { 0 } else { quantize(w[p * n + j], *s) };
        }
    }
    Ok(())
}

/// Per dense or convolution layer an i8 weight tensor, an f32 [`TensorKind::Scale`] tensor of
/// one scale per output channel and an f32 bias, each 16-byte aligned. A network with other
/// parameters is [`FormatError::Unsupported`].
pub(crate) fn table(spec: &Spec<'_>) -> Result<Table, FormatError> {
    let mut t = heapless::Vec::new();
    let mut off = 0usize;
    for info in spec.iter() {
        if info.weight_len + info.bias_len + info.stats_len == 0 {
            continue;
        }
        let Some(Channels { n, .. }) = channels(&info) else {
            return Err(FormatError::Unsupported);
        };
        if info.stats_len != 0 || info.bias_len != n {
            return Err(FormatError::Unsupported);
        }
        let layer = u16::try_from(info.index).map_err(|_| FormatError::TooLarge)?;
        for (kind, dtype, len) in [
            (TensorKind::Weight, DType::I8, info.weight_len),
            (TensorKind::Scale, DType::F32, n),
            (TensorKind::Bias, DType::F32, n),
        ] {
            super::push_tensor(&mut t, &mut off, layer, kind, dtype, len)?;
        }
    }
    Ok((t, off))
}

/// The output channels int8 quantises a layer's weights over, as the layer's kind says.
fn channels(l: &LayerInfo) -> Option<Channels> {
    crate::layers::channels(l)
}

/// Writes the int8 data section of `params` (layout of [`crate::spec`]) into `out` and returns
/// its length. Padding between tensors is zero.
pub(crate) fn encode(
    spec: &Spec<'_>, params: &[f32], out: &mut [u8],
) -> Result<usize, FormatError> {
    let (table, len) = table(spec)?;
    let out = out.get_mut(..len).ok_or(FormatError::BufferTooSmall)?;
    out.fill(0);
    for info in spec.iter() {
        let Some(ch) = channels(&info) else {
            continue;
        };
        let w = &params[info.weight_range()];
        let bias = &params[info.bias_range()];
        let entry = |kind: TensorKind| {
            table
                .iter()
                .find(|t| t.layer as usize == info.index && t.kind == kind)
                .map(|t| t.offset as usize)
                .ok_or(FormatError::BadTensorTable)
        };
        let (wo, so, bo) =
            (entry(TensorKind::Weight)?, entry(TensorKind::Scale)?, entry(TensorKind::Bias)?);
        let scale_at = |out: &[u8], c: usize| {
            f32::from_le_bytes([
                out[so + 4 * c],
                out[so + 4 * c + 1],
                out[so + 4 * c + 2],
                out[so + 4 * c + 3],
            ])
        };
        // The largest magnitude of every channel, then its scale, in the scale tensor.
        for (i, &v) in w.iter().enumerate() {
            let c = ch.of(i);
            let m = max_abs([scale_at(out, c), v].into_iter());
            out[so + 4 * c..so + 4 * c + 4].copy_from_slice(&m.to_le_bytes());
        }
        for c in 0..ch.n {
            let s = scale_for(scale_at(out, c));
            out[so + 4 * c..so + 4 * c + 4].copy_from_slice(&s.to_le_bytes());
        }
        for (i, &v) in w.iter().enumerate() {
            let s = scale_at(out, ch.of(i));
            out[wo + i] = if s == 0.0 { 0 } else { quantize(v, s) as u8 };
        }
        for (j, v) in bias.iter().enumerate() {
            out[bo + 4 * j..bo + 4 * j + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    Ok(len)
}

/// Scratch (in f32 elements) beyond the two activation buffers: room for one quantised input of
/// the widest layer.
pub(crate) const fn extra_scratch_len(max_features: usize) -> usize {
    max_features.div_ceil(4)
}

/// The extra scratch as the byte buffer of a quantised row.
pub(crate) fn row_buffer(extra: &mut [f32]) -> &mut [i8] {
    // SAFETY: f32 storage reinterpreted as bytes: `4 · len` bytes in bounds, any byte pattern
    // is a valid i8, and the f32 view is not used while this one is alive.
    unsafe { core::slice::from_raw_parts_mut(extra.as_mut_ptr().cast::<i8>(), 4 * extra.len()) }
}

/// A validated int8 data section, in place: it must be 4-byte aligned for its f32 tensors.
pub(crate) fn view<'a>(
    data: &'a [u8], tensors: &'a [TensorEntry],
) -> Result<Encoded<'a>, FormatError> {
    if !(data.as_ptr() as usize).is_multiple_of(4) {
        return Err(FormatError::Misaligned);
    }
    Ok(Encoded::I8 { data, tensors })
}

/// An i8 tensor of an int8 file, in place.
fn i8_view<'a>(data: &'a [u8], t: &TensorEntry) -> Option<&'a [i8]> {
    let bytes = data.get(t.offset as usize..t.offset as usize + t.len as usize)?;
    // SAFETY: i8 and u8 have the same size, alignment and validity.
    Some(unsafe { core::slice::from_raw_parts(bytes.as_ptr().cast::<i8>(), bytes.len()) })
}

/// An f32 tensor of an int8 file, in place (the data section is 4-byte aligned and every
/// tensor starts at a multiple of 16).
fn f32_view<'a>(data: &'a [u8], t: &TensorEntry) -> Option<&'a [f32]> {
    let bytes =
        data.get(t.offset as usize..(t.offset as usize).checked_add(4 * t.len as usize)?)?;
    // SAFETY: every bit pattern is a valid f32; only an aligned middle with no prefix or suffix
    // is accepted.
    let (pre, mid, post) = unsafe { bytes.align_to::<f32>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

/// One layer's tensors: the i8 weights, scales and bias of a dense or convolution layer; empty
/// f32 tensors for a layer without parameters.
pub(crate) fn layer<'a>(
    data: &'a [u8], tensors: &'a [TensorEntry], l: &LayerInfo,
) -> Result<LayerWeights<'a>, CoreError> {
    if l.weight_len + l.bias_len + l.stats_len == 0 {
        return Ok(LayerWeights::F32 { w: &[], b: &[], stats: &[] });
    }
    let find = |kind: TensorKind, dtype: DType| {
        tensors
            .iter()
            .find(|t| t.layer as usize == l.index && t.kind == kind)
            .filter(|t| t.dtype == dtype)
    };
    let found = (|| {
        let w = find(TensorKind::Weight, DType::I8)?;
        let s = find(TensorKind::Scale, DType::F32)?;
        let b = find(TensorKind::Bias, DType::F32)?;
        Some(LayerWeights::I8 {
            q: i8_view(data, w)?,
            scales: f32_view(data, s)?,
            b: f32_view(data, b)?,
        })
    })();
    found.ok_or(CoreError::Unsupported { layer: l.index })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::Encoding;
    use crate::format::{self, Header, ModelKind, NoiseKind, WeightsFile};
    use crate::kernels::Serial;
    use crate::spec::{Layer, Shape};
    use crate::testutil::Lcg;
    use std::vec;
    use std::vec::Vec;

    /// The integer clamp and the bit-pattern maximum are the float definitions.
    #[test]
    fn quantize_and_max_abs_match_their_float_definitions() {
        let float_quantize = |x: f32, scale: f32| {
            let r = libm::roundf(x / scale);
            if r > QMAX {
                127
            } else if r < -QMAX {
                -127
            } else {
                r as i8
            }
        };
        let mut bits = 0x2545_F491u32;
        let mut next = || {
            bits ^= bits << 13;
            bits ^= bits >> 17;
            bits ^= bits << 5;
            f32::from_bits(bits)
        };
        let specials = [
            0.0f32,
            -0.0,
            126.5,
            127.49,
            127.5,
            -127.5,
            1e30,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-40,
        ];
        for _ in 0..20_000 {
            let (x, s) = (next(), libm::fabsf(next()));
            for (x, s) in [(x, s), (x, 0.01), (x * 1e-38, 1e-39)] {
                assert_eq!(quantize(x, s), float_quantize(x, s), "{x:?} / {s:?}");
            }
        }
        for x in specials {
            for s in [1.0, 0.5, 1e-3] {
                assert_eq!(quantize(x, s), float_quantize(x, s), "{x:?} / {s:?}");
            }
        }
        let float_max = |xs: &[f32]| {
            let mut m = 0.0f32;
            for &x in xs {
                let a = libm::fabsf(x);
                if a > m {
                    m = a;
                }
            }
            m
        };
        for _ in 0..2_000 {
            let xs: Vec<f32> = (0..7).map(|_| next()).collect();
            assert_eq!(max_abs(xs.iter().copied()).to_bits(), float_max(&xs).to_bits(), "{xs:?}");
        }
        let xs = [f32::NAN, -3.0, f32::NEG_INFINITY, -0.0];
        assert_eq!(max_abs(xs.iter().copied()), float_max(&xs));
    }

    #[test]
    fn quantisation_rounds_and_clamps() {
        let mut q = [0i8; 6];
        let s = quantize_row(&mut q, &[1.27, -1.27, 0.005, 0.015, -0.025, f32::NAN]);
        assert_eq!(s, 1.27 / 127.0);
        assert_eq!(q, [127, -127, 1, 2, -3, 0]);
        let s = quantize_row(&mut q, &[0.0; 6]);
        assert_eq!((s, q), (0.0, [0; 6]));
        // Columns: each within half a step of the original, zero columns stay zero.
        let (k, n) = (5, 3);
        let w = [0.5, 0.0, -2.0, 0.25, 0.0, 1.0, -0.1, 0.0, 0.3, 0.0, 0.0, 0.0, 0.49, 0.0, -0.7];
        let mut q = [0i8; 15];
        let mut s = [0f32; 3];
        quantize_columns(&mut q, &mut s, &w, k, n).unwrap();
        assert_eq!(s, [0.5 / 127.0, 0.0, 2.0 / 127.0]);
        for p in 0..k {
            for j in 0..n {
                let back = q[p * n + j] as f32 * s[j];
                assert!((back - w[p * n + j]).abs() <= s[j] / 2.0 + 1e-7);
            }
        }
        assert_eq!(q[2], -127);
    }

    /// A generator exported as int8: the file parses, infers through the int8 kernels, stays
    /// close to the f32 network, and damaged tables are refused.
    #[test]
    fn int8_file_round_trip() {
        const LAYERS: [Layer; 5] = [
            Layer::Dense { out: 24 },
            Layer::LeakyRelu { alpha: 0.2 },
            Layer::Dense { out: 12 },
            Layer::Tanh,
            Layer::Reshape { to: Shape::image(1, 3, 4) },
        ];
        let spec = Spec::new(Shape::flat(6), &LAYERS).unwrap();
        let mut r = Lcg::new(9);
        let params: Vec<f32> = (0..spec.param_len()).map(|_| r.next_f32() - 0.5).collect();
        let h = i8_header(&spec).unwrap();
        assert_eq!(h.encoding(), Encoding::I8);
        let mut data = vec![0u8; h.data_len as usize];
        assert_eq!(Encoding::I8.encode(&spec, &params, None, &mut data).unwrap(), data.len());
        #[repr(C, align(16))]
        struct Buf([u8; 4096]);
        let mut buf = Buf([0; 4096]);
        let len = format::write(&mut buf.0, &h, &params).unwrap();
        assert_eq!(u16::from_le_bytes([buf.0[4], buf.0[5]]), 2);
        let f = WeightsFile::parse(&buf.0[..len]).unwrap();
        assert!(f.params().is_none());
        assert_eq!(f.data(), &data[..]);

        let x: Vec<f32> = (0..2 * 6).map(|_| r.next_f32() * 2.0 - 1.0).collect();
        let mut got = vec![0f32; 2 * 12];
        let mut scratch = vec![0f32; Encoding::I8.infer_scratch_len(&spec, 2)];
        crate::model::infer_encoded(&spec, &f.weights(), &x, &mut got, &mut scratch, 2, &Serial)
            .unwrap();
        let mut want = vec![0f32; 2 * 12];
        let mut scratch32 = vec![0f32; spec.infer_scratch_len(2)];
        crate::model::infer(&spec, &params, &x, &mut want, &mut scratch32, 2).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 0.03, "{g} vs {w}");
        }

        // Version 1 files cannot hold int8 tensors; a table that disagrees is refused.
        let mut v1 = Buf([0; 4096]);
        v1.0[..len].copy_from_slice(&buf.0[..len]);
        v1.0[4] = 1;
        assert_eq!(WeightsFile::parse(&v1.0[..len]).map(|_| ()), Err(FormatError::BadTensorTable));
        let mut h2 = h.clone();
        h2.tensors[1].offset += 16;
        assert_eq!(format::write(&mut [0u8; 4096], &h2, &params), Err(FormatError::BadTensorTable));
        // Flipping a quantised weight breaks the checksum.
        let mut bad = Buf([0; 4096]);
        bad.0[..len].copy_from_slice(&buf.0[..len]);
        bad.0[len - data.len() + 3] ^= 1;
        assert_eq!(WeightsFile::parse(&bad.0[..len]).map(|_| ()), Err(FormatError::DataChecksum));
    }

    /// A convolutional generator (batch norm folded) stored as int8: one scale per output
    /// channel of every layer, inference close to the f32 network.
    #[test]
    fn int8_conv_file_round_trip() {
        let layers = crate::presets::conv_generator(8, 8, 4, 3, Layer::Tanh);
        let spec = Spec::new(Shape::flat(5), &layers).unwrap();
        let folded_layers = crate::fold::folded_layers(&spec).unwrap();
        let folded = Spec::new(Shape::flat(5), &folded_layers).unwrap();
        assert_eq!(folded.iter().filter(|l| l.weight_len > 0).count(), 3);
        let mut r = Lcg::new(12);
        let params: Vec<f32> = (0..folded.param_len()).map(|_| r.next_f32() - 0.5).collect();
        let h = i8_header(&folded).unwrap();
        let scales: Vec<u32> =
            h.tensors.iter().filter(|t| t.kind == TensorKind::Scale).map(|t| t.len).collect();
        // dense to 4 × 2 × 2 (16 outputs), transposed convolutions to 3 and 1 channels.
        assert_eq!(scales, [16, 3, 1]);
        #[repr(C, align(16))]
        struct Buf([u8; 8192]);
        let mut buf = Buf([0; 8192]);
        let len = format::write(&mut buf.0, &h, &params).unwrap();
        let f = WeightsFile::parse(&buf.0[..len]).unwrap();
        let x: Vec<f32> = (0..2 * 5).map(|_| r.next_f32() * 2.0 - 1.0).collect();
        let out = folded.output().len();
        let mut got = vec![0f32; 2 * out];
        let mut scratch = vec![0f32; Encoding::I8.infer_scratch_len(&folded, 2)];
        crate::model::infer_encoded(&folded, &f.weights(), &x, &mut got, &mut scratch, 2, &Serial)
            .unwrap();
        let mut want = vec![0f32; 2 * out];
        let mut scratch32 = vec![0f32; folded.infer_scratch_len(2)];
        crate::model::infer(&folded, &params, &x, &mut want, &mut scratch32, 2).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 0.05, "{g} vs {w}");
        }
        // Unfolded, the batch normalisation cannot be stored.
        assert_eq!(i8_header(&spec), Err(FormatError::Unsupported));
    }

    #[test]
    fn int8_layout_needs_dense_only_parameters() {
        let layers = [Layer::Dense { out: 8 }, crate::presets::BN, Layer::Dense { out: 2 }];
        let spec = Spec::new(Shape::flat(3), &layers).unwrap();
        assert_eq!(i8_header(&spec), Err(FormatError::Unsupported));
    }

    /// An int8 generator header for `spec` (its input all noise).
    fn i8_header(spec: &Spec<'_>) -> Result<Header, FormatError> {
        let latent = spec.input().len() as u32;
        Header::for_spec_as(
            ModelKind::Generator,
            spec,
            latent,
            0,
            NoiseKind::Gaussian,
            Encoding::I8,
        )
    }
}
