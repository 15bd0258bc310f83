//! Int8 weights for microcontrollers without an FPU.
//!
//! A dense layer's weights are stored as i8 with one f32 scale per output column (symmetric:
//! `w ≈ q·s`, `s = max|w| / 127` over the column). At inference each input row is quantised the
//! same way with one scale for the row (`x ≈ qx·sx`, recomputed for every sample), the products
//! are summed in i32, and the result is scaled back:
//!
//! ```text
//! out[j] = (Σ_p qx[p]·q[p][j]) as f32 · (sx · s[j]) + bias[j]
//! ```
//!
//! Integer sums are exact in any order, and the float steps (the scales, the rounding with
//! `libm::roundf`, the final multiply and add) are fixed, so host and firmware still produce
//! identical bytes. On a Cortex-M0+ an i8 multiply-accumulate is a few integer instructions
//! instead of two soft-float calls, and the weights take a quarter of the flash.
//!
//! The sum is exact while `C_in · 127²` stays below 2²⁴ (`C_in` ≤ 1040): then converting it to
//! f32 is exact too. Wider layers still give identical bits everywhere (the conversion rounds to
//! nearest on every target), just with that rounding.

use crate::act::Activation;
use crate::error::{CoreError, check_len};
use crate::format::{self, DType, FormatError, TensorEntry, TensorKind};
use crate::pool::{self, PoolDims};
use crate::spec::{Layer, Spec};

/// Largest magnitude of a quantised value.
pub const QMAX: f32 = 127.0;

/// `x / scale` rounded half away from zero and clamped to ±127 (NaN gives 0).
#[inline]
fn quantize(x: f32, scale: f32) -> i8 {
    let r = libm::roundf(x / scale);
    if r > QMAX {
        127
    } else if r < -QMAX {
        -127
    } else {
        r as i8
    }
}

/// Largest `|x|` (NaN ignored).
fn max_abs(xs: impl Iterator<Item = f32>) -> f32 {
    let mut m = 0.0f32;
    for x in xs {
        let a = libm::fabsf(x);
        if a > m {
            m = a;
        }
    }
    m
}

/// The scale for values whose largest magnitude is `m`: `m / 127`, or 0 when `m` is 0 or not
/// finite (then everything quantises to 0).
fn scale_for(m: f32) -> f32 {
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
    q: &mut [i8],
    scales: &mut [f32],
    w: &[f32],
    k: usize,
    n: usize,
) -> Result<(), CoreError> {
    check_len("q", q.len(), k * n)?;
    check_len("scales", scales.len(), n)?;
    check_len("w", w.len(), k * n)?;
    for (j, s) in scales.iter_mut().enumerate() {
        *s = scale_for(max_abs((0..k).map(|p| w[p * n + j])));
        for p in 0..k {
            q[p * n + j] = if *s == 0.0 {
                0
            } else {
                quantize(w[p * n + j], *s)
            };
        }
    }
    Ok(())
}

/// Int8 dense layer: `out (N × C_out)` from `inp (N × C_in)`, weights `q (C_in × C_out)` with
/// column `scales` and `bias`; `xq` (at least `C_in`) holds each quantised input row in turn.
#[allow(clippy::too_many_arguments)]
pub fn dense_forward_i8(
    out: &mut [f32],
    xq: &mut [i8],
    inp: &[f32],
    q: &[i8],
    scales: &[f32],
    bias: &[f32],
    n: usize,
    c_in: usize,
    c_out: usize,
) -> Result<(), CoreError> {
    if n == 0 || c_in == 0 || c_out == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len("out", out.len(), n * c_out)?;
    check_len("inp", inp.len(), n * c_in)?;
    check_len("q", q.len(), c_in * c_out)?;
    check_len("scales", scales.len(), c_out)?;
    check_len("bias", bias.len(), c_out)?;
    if xq.len() < c_in {
        return Err(CoreError::BufferLen {
            what: "xq",
            got: xq.len(),
            expected: c_in,
        });
    }
    let xq = &mut xq[..c_in];
    for (orow, irow) in out.chunks_exact_mut(c_out).zip(inp.chunks_exact(c_in)) {
        let sx = quantize_row(xq, irow);
        let mut j = 0;
        while j + TILE <= c_out {
            // SAFETY: columns j..j+TILE ≤ c_out of every row p < c_in of `q` (length checked).
            let acc = unsafe { column_sums::<TILE>(xq, q.as_ptr().add(j), c_out) };
            finish(&mut orow[j..j + TILE], &acc, &scales[j..], &bias[j..], sx);
            j += TILE;
        }
        while j < c_out {
            // SAFETY: as above with one column.
            let acc = unsafe { column_sums::<1>(xq, q.as_ptr().add(j), c_out) };
            finish(&mut orow[j..j + 1], &acc, &scales[j..], &bias[j..], sx);
            j += 1;
        }
    }
    Ok(())
}

/// Columns summed together, so the accumulators stay in registers: few on ARMv6-M (eight low
/// registers; no compare-and-swap atomics is how its targets are told apart), more on
/// ARMv7E-M, a vector's worth elsewhere.
/// (Measured on the default generator in QEMU: 2, 3 and 4 columns give 6.26 M, 5.97 M and
/// 5.93 M instructions per digit on ARMv6-M; 4, 8 and 12 give 0.83 M, 0.75 M and 0.74 M on the
/// Cortex-M4F.)
#[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
const TILE: usize = 4;
#[cfg(all(target_arch = "arm", target_has_atomic = "32"))]
const TILE: usize = 8;
#[cfg(not(target_arch = "arm"))]
const TILE: usize = 16;

/// `Σ_p xq[p]·q[p·ld + l]` for `l < W`, in i32.
///
/// # Safety
/// `q[p·ld .. p·ld + W]` is readable for every `p < xq.len()`.
#[inline(always)]
unsafe fn column_sums<const W: usize>(xq: &[i8], q: *const i8, ld: usize) -> [i32; W] {
    let mut acc = [0i32; W];
    let mut row = q;
    for &x in xq {
        let x = x as i32;
        for (l, a) in acc.iter_mut().enumerate() {
            // SAFETY: row p, column l < W (contract).
            *a += x * unsafe { *row.add(l) } as i32;
        }
        row = row.wrapping_add(ld);
    }
    acc
}

/// `out[l] = acc[l] as f32 · (sx · scales[l]) + bias[l]`.
#[inline(always)]
fn finish(out: &mut [f32], acc: &[i32], scales: &[f32], bias: &[f32], sx: f32) {
    for (((o, &a), &s), &b) in out.iter_mut().zip(acc).zip(scales).zip(bias) {
        *o = a as f32 * (sx * s) + b;
    }
}

/// Extra scratch (in f32 elements) [`infer_i8`] needs beyond [`Spec::infer_scratch_len`]: room
/// for one quantised row of the widest layer.
pub const fn extra_scratch_len(spec: &Spec<'_>) -> usize {
    spec.max_features().div_ceil(4)
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

/// The (weights, scales, bias) of dense layer `layer` in an int8 file's tensor table.
fn dense_tensors<'a>(
    data: &'a [u8],
    tensors: &[TensorEntry],
    layer: usize,
) -> Option<(&'a [i8], &'a [f32], &'a [f32])> {
    let find = |kind: TensorKind| {
        tensors
            .iter()
            .find(|t| t.layer as usize == layer && t.kind == kind)
    };
    let w = find(TensorKind::Weight).filter(|t| t.dtype == DType::I8)?;
    let s = find(TensorKind::Scale).filter(|t| t.dtype == DType::F32)?;
    let b = find(TensorKind::Bias).filter(|t| t.dtype == DType::F32)?;
    Some((i8_view(data, w)?, f32_view(data, s)?, f32_view(data, b)?))
}

/// Exact inference of an int8 network (the data section and tensor table of a validated int8
/// weights file): as [`crate::model::infer`], with [`dense_forward_i8`] for the dense layers.
/// `scratch` has [`Spec::infer_scratch_len`]`(n)` + [`extra_scratch_len`] elements.
pub fn infer_i8(
    spec: &Spec<'_>,
    data: &[u8],
    tensors: &[TensorEntry],
    input: &[f32],
    output: &mut [f32],
    scratch: &mut [f32],
    n: usize,
) -> Result<(), CoreError> {
    if n == 0 {
        return Err(CoreError::ZeroSize);
    }
    check_len("input", input.len(), n * spec.input().len())?;
    check_len("output", output.len(), n * spec.output().len())?;
    check_len(
        "scratch",
        scratch.len(),
        spec.infer_scratch_len(n) + extra_scratch_len(spec),
    )?;
    let (ping_pong, xq_store) = scratch.split_at_mut(spec.infer_scratch_len(n));
    // SAFETY: f32 storage reinterpreted as bytes: `4 · len` bytes in bounds, any byte pattern
    // is a valid i8, and the f32 view is not used while this one is alive.
    let xq = unsafe {
        core::slice::from_raw_parts_mut(xq_store.as_mut_ptr().cast::<i8>(), 4 * xq_store.len())
    };
    let half = spec.max_features() * n;
    let (mut a, mut b) = ping_pong.split_at_mut(half);
    a[..input.len()].copy_from_slice(input);
    let mut len = input.len();
    for info in spec.iter() {
        let out_len = n * info.out_shape.len();
        match info.layer {
            Layer::Dense { out: c_out } => {
                let (w, s, bias) = dense_tensors(data, tensors, info.index)
                    .ok_or(CoreError::Unsupported { layer: info.index })?;
                let c_in = info.in_shape.len();
                dense_forward_i8(
                    &mut b[..out_len],
                    xq,
                    &a[..len],
                    w,
                    s,
                    bias,
                    n,
                    c_in,
                    c_out as usize,
                )?;
                core::mem::swap(&mut a, &mut b);
                len = out_len;
            }
            Layer::MaxPool2d { k, stride } => {
                let d = PoolDims {
                    c: info.in_shape.c as usize,
                    h: info.in_shape.h as usize,
                    w: info.in_shape.w as usize,
                    k: k as usize,
                    stride: stride as usize,
                };
                pool::maxpool2d_forward(&mut b[..out_len], None, &a[..len], n, &d)?;
                core::mem::swap(&mut a, &mut b);
                len = out_len;
            }
            Layer::Dropout { .. } => {}
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

/// Writes the int8 data section of a network with f32 parameters `params` (layout of
/// [`crate::spec`]) into `out`, in the layout of [`format::quant_table`], and returns its
/// length. Padding between tensors is zero.
pub fn encode(spec: &Spec<'_>, params: &[f32], out: &mut [u8]) -> Result<usize, FormatError> {
    let (table, len) = format::quant_table(spec)?;
    if params.len() != spec.param_len() {
        return Err(FormatError::BadTensorTable);
    }
    let out = out.get_mut(..len).ok_or(FormatError::BufferTooSmall)?;
    out.fill(0);
    for info in spec.iter() {
        let Layer::Dense { out: c_out } = info.layer else {
            continue;
        };
        let (k, n) = (info.in_shape.len(), c_out as usize);
        let w = &params[info.weight_range()];
        let bias = &params[info.bias_range()];
        let entry = |kind: TensorKind| {
            table
                .iter()
                .find(|t| t.layer as usize == info.index && t.kind == kind)
                .map(|t| t.offset as usize)
                .ok_or(FormatError::BadTensorTable)
        };
        let (wo, so, bo) = (
            entry(TensorKind::Weight)?,
            entry(TensorKind::Scale)?,
            entry(TensorKind::Bias)?,
        );
        for j in 0..n {
            let s = scale_for(max_abs((0..k).map(|p| w[p * n + j])));
            out[so + 4 * j..so + 4 * j + 4].copy_from_slice(&s.to_le_bytes());
            for p in 0..k {
                let q = if s == 0.0 {
                    0
                } else {
                    quantize(w[p * n + j], s)
                };
                out[wo + p * n + j] = q as u8;
            }
        }
        for (j, v) in bias.iter().enumerate() {
            out[bo + 4 * j..bo + 4 * j + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Header, ModelKind, NoiseKind, WeightsFile};
    use crate::spec::Shape;
    use crate::testutil::Lcg;
    use std::vec;
    use std::vec::Vec;

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
        let w = [
            0.5, 0.0, -2.0, 0.25, 0.0, 1.0, -0.1, 0.0, 0.3, 0.0, 0.0, 0.0, 0.49, 0.0, -0.7,
        ];
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

    /// The kernel against the formula written out with plain loops.
    #[test]
    fn dense_i8_matches_its_definition() {
        let mut r = Lcg::new(5);
        for &(n, k, co) in &[(1, 7, 5), (3, 40, 37), (2, 300, 17)] {
            let x: Vec<f32> = (0..n * k).map(|_| r.next_f32() * 4.0 - 2.0).collect();
            let w: Vec<f32> = (0..k * co).map(|_| r.next_f32() - 0.5).collect();
            let bias: Vec<f32> = (0..co).map(|_| r.next_f32()).collect();
            let mut q = vec![0i8; k * co];
            let mut s = vec![0f32; co];
            quantize_columns(&mut q, &mut s, &w, k, co).unwrap();
            let mut xq = vec![0i8; k];
            let mut out = vec![0f32; n * co];
            dense_forward_i8(&mut out, &mut xq, &x, &q, &s, &bias, n, k, co).unwrap();
            for i in 0..n {
                let row = &x[i * k..(i + 1) * k];
                let m = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let sx = m / 127.0;
                for j in 0..co {
                    let mut acc = 0i64;
                    for p in 0..k {
                        let qx = libm::roundf(row[p] / sx).clamp(-127.0, 127.0) as i64;
                        acc += qx * q[p * co + j] as i64;
                    }
                    let want = acc as f32 * (sx * s[j]) + bias[j];
                    assert_eq!(
                        out[i * co + j].to_bits(),
                        want.to_bits(),
                        "({n},{k},{co}) {i},{j}"
                    );
                    // And within the worst-case quantisation error of the f32 layer:
                    // |Δx| ≤ sx/2 and |Δw| ≤ s/2 per term, plus float rounding.
                    let exact: f32 = (0..k).map(|p| row[p] * w[p * co + j]).sum::<f32>() + bias[j];
                    let bound: f32 = (0..k)
                        .map(|p| {
                            let (xa, wa) = (row[p].abs(), w[p * co + j].abs());
                            sx / 2.0 * wa + xa * s[j] / 2.0 + sx * s[j] / 4.0 + 1e-5 * xa * wa
                        })
                        .sum();
                    let err = (out[i * co + j] - exact).abs();
                    assert!(
                        err <= bound + 1e-5,
                        "{exact} vs {}: {err} > {bound}",
                        out[i * co + j]
                    );
                }
            }
        }
    }

    /// A generator exported as int8: the file parses, infers through `infer_i8`, stays close to
    /// the f32 network, and damaged tables are refused.
    #[test]
    fn int8_file_round_trip() {
        const LAYERS: [Layer; 5] = [
            Layer::Dense { out: 24 },
            Layer::LeakyRelu { alpha: 0.2 },
            Layer::Dense { out: 12 },
            Layer::Tanh,
            Layer::Reshape {
                to: Shape::image(1, 3, 4),
            },
        ];
        let spec = Spec::new(Shape::flat(6), &LAYERS).unwrap();
        let mut r = Lcg::new(9);
        let params: Vec<f32> = (0..spec.param_len()).map(|_| r.next_f32() - 0.5).collect();
        let h =
            Header::for_spec_i8(ModelKind::Generator, &spec, 6, 0, NoiseKind::Gaussian).unwrap();
        assert!(h.is_i8());
        let mut data = vec![0u8; h.data_len as usize];
        assert_eq!(encode(&spec, &params, &mut data).unwrap(), data.len());
        #[repr(C, align(16))]
        struct Buf([u8; 4096]);
        let mut buf = Buf([0; 4096]);
        let len = format::write_data(&mut buf.0, &h, &data).unwrap();
        assert_eq!(u16::from_le_bytes([buf.0[4], buf.0[5]]), 2);
        let f = WeightsFile::parse(&buf.0[..len]).unwrap();
        assert!(f.params().is_none());
        assert_eq!(f.i8_data(), Some(&data[..]));

        let x: Vec<f32> = (0..2 * 6).map(|_| r.next_f32() * 2.0 - 1.0).collect();
        let mut got = vec![0f32; 2 * 12];
        let mut scratch = vec![0f32; spec.infer_scratch_len(2) + extra_scratch_len(&spec)];
        infer_i8(
            &spec,
            &data,
            &f.header.tensors,
            &x,
            &mut got,
            &mut scratch,
            2,
        )
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
        assert_eq!(
            WeightsFile::parse(&v1.0[..len]).map(|_| ()),
            Err(FormatError::BadTensorTable)
        );
        let mut h2 = h.clone();
        h2.tensors[1].offset += 16;
        assert_eq!(
            format::write_data(&mut [0u8; 4096], &h2, &data),
            Err(FormatError::BadTensorTable)
        );
        // Flipping a quantised weight breaks the checksum.
        let mut bad = Buf([0; 4096]);
        bad.0[..len].copy_from_slice(&buf.0[..len]);
        bad.0[len - data.len() + 3] ^= 1;
        assert_eq!(
            WeightsFile::parse(&bad.0[..len]).map(|_| ()),
            Err(FormatError::DataChecksum)
        );
    }

    #[test]
    fn int8_layout_needs_dense_only_parameters() {
        let layers = [
            Layer::Dense { out: 8 },
            Layer::BatchNorm {
                eps: 1e-5,
                momentum: 0.1,
            },
            Layer::Dense { out: 2 },
        ];
        let spec = Spec::new(Shape::flat(3), &layers).unwrap();
        assert_eq!(
            Header::for_spec_i8(ModelKind::Generator, &spec, 3, 0, NoiseKind::Gaussian),
            Err(FormatError::Unsupported)
        );
    }
}
