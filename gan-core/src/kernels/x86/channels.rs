//! Batch normalisation's channel sums with AVX: eight channels side by side, one f64 lane each.
//!
//! [`crate::layers::batch_norm`] defines every statistic as a sequential f64 sum per channel
//! (sample by sample, each plane from its start). Its portable loop runs eight such chains
//! with scalar loads and conversions; here eight rows of eight floats (one per channel) are
//! loaded, transposed so that each vector holds the eight channels' values at one position,
//! widened to f64 and added into per-channel lanes. Every lane sees exactly the operations of
//! its channel's scalar loop, in the same order (no fused multiply-add), so the sums have the
//! same bits.

use core::arch::x86_64::*;

use super::transpose8;
use crate::kernels::channels::Terms;

/// The sums of `terms` over channels `ch0..ch0 + 8` of N×C×S buffers: `[Σ first, Σ second]`
/// per channel (the second is 0 for the one-term kinds).
///
/// # Safety
/// The CPU supports AVX.
///
/// # Panics
/// If a buffer is shorter than `n·c·s` or `ch0 + 8 > c`.
#[target_feature(enable = "avx")]
pub(crate) unsafe fn channel_sums_avx(
    terms: Terms<'_>, n: usize, c: usize, s: usize, ch0: usize,
) -> [[f64; 2]; 8] {
    let split = |a: [__m256d; 2]| -> [f64; 8] {
        let mut v = [0.0f64; 8];
        // SAFETY: eight f64 written into `v`; AVX (contract).
        unsafe {
            _mm256_storeu_pd(v.as_mut_ptr(), a[0]);
            _mm256_storeu_pd(v.as_mut_ptr().add(4), a[1]);
        }
        v
    };
    match terms {
        Terms::Sum(x) => {
            // SAFETY: AVX (contract); the buffers' lengths are checked by `body`.
            let acc = unsafe { body::<2, false>(x, x, (n, c, s, ch0), |v, _| widen(v)) };
            let v = split(acc);
            core::array::from_fn(|l| [v[l], 0.0])
        }
        Terms::SqDev(x, mean) => {
            // SAFETY: as above; eight f64 read from `mean`.
            let acc = unsafe {
                let m = [_mm256_loadu_pd(mean.as_ptr()), _mm256_loadu_pd(mean.as_ptr().add(4))];
                body::<2, false>(x, x, (n, c, s, ch0), |v, _| {
                    let w = widen(v);
                    core::array::from_fn(|h| {
                        let d = _mm256_sub_pd(w[h], m[h]);
                        _mm256_mul_pd(d, d)
                    })
                })
            };
            let v = split(acc);
            core::array::from_fn(|l| [v[l], 0.0])
        }
        Terms::Grad { g, x, mu, inv_std } => {
            // SAFETY: as above; eight f32 read from each of `mu` and `inv_std`.
            let acc = unsafe {
                let (mu, is) = (_mm256_loadu_ps(mu.as_ptr()), _mm256_loadu_ps(inv_std.as_ptr()));
                body::<4, true>(g, x, (n, c, s, ch0), |gv, xv| {
                    let xh = widen(_mm256_mul_ps(_mm256_sub_ps(xv, mu), is));
                    let gw = widen(gv);
                    [gw[0], gw[1], _mm256_mul_pd(gw[0], xh[0]), _mm256_mul_pd(gw[1], xh[1])]
                })
            };
            let (sg, sgx) = (split([acc[0], acc[1]]), split([acc[2], acc[3]]));
            core::array::from_fn(|l| [sg[l], sgx[l]])
        }
    }
}

/// The eight f32 lanes of `v` as two vectors of four f64 (lanes 0–3, then 4–7).
#[inline(always)]
unsafe fn widen(v: __m256) -> [__m256d; 2] {
    // SAFETY: AVX (the caller runs with it); registers only.
    unsafe {
        [_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v))]
    }
}

/// `acc[k] += f(a, b)[k]` over every position of channels `ch0..ch0 + 8`, sample by sample and
/// each plane in order, where `a` and `b` hold the eight channels' values at that position
/// (`b` is `a` unless `TWO`).
///
/// # Safety
/// AVX (the caller runs with it).
#[inline(always)]
unsafe fn body<const V: usize, const TWO: bool>(
    a: &[f32], b: &[f32], (n, c, s, ch0): (usize, usize, usize, usize),
    f: impl Fn(__m256, __m256) -> [__m256d; V],
) -> [__m256d; V] {
    assert!(ch0 + 8 <= c, "channels out of range");
    let len = n.checked_mul(c).and_then(|x| x.checked_mul(s)).expect("size overflows");
    assert!(a.len() >= len && b.len() >= len, "buffers shorter than N·C·S");
    // SAFETY: AVX (contract); every read is inside the first `n·c·s` floats of `a` or `b`:
    // channel `ch0 + l < c` of sample `i < n` at position `j < s`.
    unsafe {
        let mut acc = [_mm256_setzero_pd(); V];
        let full = s / 8 * 8;
        let rows = |p: *const f32, j: usize| -> [__m256; 8] {
            transpose8(core::array::from_fn(|l| _mm256_loadu_ps(p.add(l * s + j))))
        };
        let column = |p: *const f32, j: usize| -> __m256 {
            let v: [f32; 8] = core::array::from_fn(|l| *p.add(l * s + j));
            _mm256_loadu_ps(v.as_ptr())
        };
        for i in 0..n {
            let at = (i * c + ch0) * s;
            let (pa, pb) = (a.as_ptr().add(at), b.as_ptr().add(at));
            let mut j = 0;
            while j < full {
                let ra = rows(pa, j);
                let rb = if TWO { rows(pb, j) } else { ra };
                for (&va, &vb) in ra.iter().zip(&rb) {
                    let t = f(va, vb);
                    for (acc, t) in acc.iter_mut().zip(t) {
                        *acc = _mm256_add_pd(*acc, t);
                    }
                }
                j += 8;
            }
            for j in full..s {
                let va = column(pa, j);
                let vb = if TWO { column(pb, j) } else { va };
                for (acc, t) in acc.iter_mut().zip(f(va, vb)) {
                    *acc = _mm256_add_pd(*acc, t);
                }
            }
        }
        acc
    }
}
