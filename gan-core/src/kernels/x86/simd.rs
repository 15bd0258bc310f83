//! The vector operations the x86-64 kernels are written in, for 256-bit AVX and 512-bit AVX-512F.
//!
//! Every function is `#[inline(always)]` and has no target features of its own: the kernels
//! call them only from inside their entry points, which carry `#[target_feature]`, so each
//! intrinsic ends up inlined into a function compiled with its feature.
//!
//! Partial vectors (the right edge of a matrix) are read and written lane by lane as each
//! instruction set does it best: AVX-512 with mask registers, AVX with a masked load and a
//! store through a stack buffer (masked stores are slow on several AMD cores). Either way only
//! the lanes asked for are touched, and the arithmetic per lane is the same as for a full
//! vector.

use core::arch::x86_64::*;

/// One vector instruction set.
pub(super) trait Simd {
    /// f32 lanes per vector.
    const LANES: usize;
    /// A vector of `LANES` f32.
    type V: Copy;

    /// All lanes zero.
    unsafe fn zero() -> Self::V;
    /// `*p` in every lane.
    unsafe fn splat(p: *const f32) -> Self::V;
    /// `LANES` floats from a 64-byte-aligned (AVX-512) or 32-byte-aligned (AVX) address.
    unsafe fn load(p: *const f32) -> Self::V;
    /// `LANES` floats from any address.
    unsafe fn loadu(p: *const f32) -> Self::V;
    /// Stores `LANES` floats at an aligned address (as for [`Simd::load`]).
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Stores `LANES` floats at any address.
    unsafe fn storeu(p: *mut f32, v: Self::V);
    /// `a + b`, lane-wise, rounded to f32.
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `a · b`, lane-wise, rounded to f32.
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `a · b + c`, lane-wise, with one rounding (a fused multiply-add; training kernels only).
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// The first `min(w, LANES)` floats from `p`, zero in the other lanes, which are not read.
    /// `w ≥ 1`.
    unsafe fn load_n(p: *const f32, w: usize) -> Self::V;
    /// Stores the first `min(w, LANES)` lanes of `v` at `p`; nothing else is written. `w ≥ 1`.
    unsafe fn store_n(p: *mut f32, v: Self::V, w: usize);
}

/// 256-bit AVX vectors (8 lanes). The FMA is AVX2+FMA's.
pub(super) struct Avx;

/// `MASKS[8 - w..16 - w]` has its first `w` lanes set: the masks of `_mm256_maskload_ps`.
static MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

impl Simd for Avx {
    const LANES: usize = 8;
    type V = __m256;

    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: the caller runs with AVX (module docs).
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m256 {
        // SAFETY: `p` is readable (caller); AVX as above.
        unsafe { _mm256_broadcast_ss(&*p) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: forwarded from the caller.
        unsafe { _mm256_load_ps(p) }
    }
    #[inline(always)]
    unsafe fn loadu(p: *const f32) -> __m256 {
        // SAFETY: forwarded from the caller.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: forwarded from the caller.
        unsafe { _mm256_store_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn storeu(p: *mut f32, v: __m256) {
        // SAFETY: forwarded from the caller.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX (module docs).
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX (module docs).
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: only the training kernels call this, compiled with AVX2+FMA.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn load_n(p: *const f32, w: usize) -> __m256 {
        if w >= 8 {
            // SAFETY: eight floats readable (caller).
            return unsafe { _mm256_loadu_ps(p) };
        }
        // SAFETY: `8 - w` is in 1..=7, so the mask slice is inside `MASKS`; masked-off lanes
        // are not read.
        unsafe {
            let mask = _mm256_loadu_si256(MASKS.as_ptr().add(8 - w).cast::<__m256i>());
            _mm256_maskload_ps(p, mask)
        }
    }
    #[inline(always)]
    unsafe fn store_n(p: *mut f32, v: __m256, w: usize) {
        if w >= 8 {
            // SAFETY: eight floats writable (caller).
            return unsafe { _mm256_storeu_ps(p, v) };
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds eight floats; `w < 8` floats at `p` are writable (caller) and
        // do not overlap the stack buffer.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            core::ptr::copy_nonoverlapping(lanes.as_ptr(), p, w);
        }
    }
}

/// 512-bit AVX-512F vectors (16 lanes).
pub(super) struct Avx512;

/// Mask of the first `w` of 16 lanes (all lanes when `w ≥ 16`).
#[inline(always)]
fn lanes(w: usize) -> __mmask16 {
    if w >= 16 { 0xFFFF } else { (1u16 << w) - 1 }
}

impl Simd for Avx512 {
    const LANES: usize = 16;
    type V = __m512;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: the caller runs with AVX-512F (module docs).
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m512 {
        // SAFETY: `p` is readable (caller); AVX-512F as above.
        unsafe { _mm512_set1_ps(*p) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: forwarded from the caller.
        unsafe { _mm512_load_ps(p) }
    }
    #[inline(always)]
    unsafe fn loadu(p: *const f32) -> __m512 {
        // SAFETY: forwarded from the caller.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: forwarded from the caller.
        unsafe { _mm512_store_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn storeu(p: *mut f32, v: __m512) {
        // SAFETY: forwarded from the caller.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F (module docs).
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F (module docs).
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: AVX-512F (module docs).
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn load_n(p: *const f32, w: usize) -> __m512 {
        // SAFETY: the masked lanes are readable (caller); the others are not read.
        unsafe { _mm512_maskz_loadu_ps(lanes(w), p) }
    }
    #[inline(always)]
    unsafe fn store_n(p: *mut f32, v: __m512, w: usize) {
        // SAFETY: the masked lanes are writable (caller); the others are not written.
        unsafe { _mm512_mask_storeu_ps(p, lanes(w), v) }
    }
}

/// The 8×8 transpose of eight AVX rows: lane `j` of result `i` is lane `i` of row `j`.
///
/// # Safety
/// The CPU supports AVX (the caller runs with it).
#[inline(always)]
pub(crate) unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // SAFETY: AVX (contract); register operations only.
    unsafe {
        // Pairs of rows interleaved within each 128-bit half: [a0 b0 a1 b1 | a4 b4 a5 b5] …
        let t: [__m256; 8] = core::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 { _mm256_unpacklo_ps(a, b) } else { _mm256_unpackhi_ps(a, b) }
        });
        // Four rows per column within each half: u[4g + j] holds column j (low half) and
        // j + 4 (high half) of rows 4g .. 4g + 4.
        let u: [__m256; 8] = core::array::from_fn(|i| {
            let (g, j) = (i / 4, i % 4);
            let (x, y) = (t[4 * g + j / 2], t[4 * g + 2 + j / 2]);
            if j % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(x, y)
            } else {
                _mm256_shuffle_ps::<0xEE>(x, y)
            }
        });
        core::array::from_fn(|i| {
            let (j, high) = (i % 4, i >= 4);
            if high {
                _mm256_permute2f128_ps::<0x31>(u[j], u[4 + j])
            } else {
                _mm256_permute2f128_ps::<0x20>(u[j], u[4 + j])
            }
        })
    }
}

/// The 16×16 transpose of sixteen AVX-512 rows: lane `j` of result `i` is lane `i` of row `j`.
///
/// # Safety
/// The CPU supports AVX-512F (the caller runs with it).
#[inline(always)]
pub(crate) unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // SAFETY: AVX-512F (contract); register operations only.
    unsafe {
        // As in `transpose8`, within each 128-bit lane: u[4g + j] holds, in lane L, rows
        // 4g .. 4g + 4 of column 4L + j.
        let t: [__m512; 16] = core::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 { _mm512_unpacklo_ps(a, b) } else { _mm512_unpackhi_ps(a, b) }
        });
        let u: [__m512; 16] = core::array::from_fn(|i| {
            let (g, j) = (i / 4, i % 4);
            let (x, y) = (t[4 * g + j / 2], t[4 * g + 2 + j / 2]);
            if j % 2 == 0 {
                _mm512_shuffle_ps::<0x44>(x, y)
            } else {
                _mm512_shuffle_ps::<0xEE>(x, y)
            }
        });
        // Then the 4×4 transpose of 128-bit lanes among u[j], u[4 + j], u[8 + j], u[12 + j]:
        // column 4L + j is lane L of each of them, in that order.
        let mut out = [_mm512_setzero_ps(); 16];
        for j in 0..4 {
            let (a, b, c, d) = (u[j], u[4 + j], u[8 + j], u[12 + j]);
            let v0 = _mm512_shuffle_f32x4::<0x44>(a, b);
            let v1 = _mm512_shuffle_f32x4::<0xEE>(a, b);
            let v2 = _mm512_shuffle_f32x4::<0x44>(c, d);
            let v3 = _mm512_shuffle_f32x4::<0xEE>(c, d);
            out[j] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
            out[4 + j] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
            out[8 + j] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
            out[12 + j] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
        }
        out
    }
}
