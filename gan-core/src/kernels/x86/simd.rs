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
    /// Lanes `0, 1` of each 128-bit block of `a` and `b`, interleaved: `a0 b0 a1 b1` per block.
    unsafe fn unpacklo(a: Self::V, b: Self::V) -> Self::V;
    /// Lanes `2, 3` of each 128-bit block of `a` and `b`, interleaved: `a2 b2 a3 b3` per block.
    unsafe fn unpackhi(a: Self::V, b: Self::V) -> Self::V;
    /// Per 128-bit block, the low lane pairs of `a` then of `b`: `a0 a1 b0 b1`.
    unsafe fn low_pairs(a: Self::V, b: Self::V) -> Self::V;
    /// Per 128-bit block, the high lane pairs of `a` then of `b`: `a2 a3 b2 b3`.
    unsafe fn high_pairs(a: Self::V, b: Self::V) -> Self::V;
    /// The first `min(w, LANES)` floats from `p`, zero in the other lanes, which are not read.
    /// `w ≥ 1`.
    unsafe fn load_n(p: *const f32, w: usize) -> Self::V;
    /// Stores the first `min(w, LANES)` lanes of `v` at `p`; nothing else is written. `w ≥ 1`.
    unsafe fn store_n(p: *mut f32, v: Self::V, w: usize);
}

/// `impl Simd for $t` (vector type `$v`, `$lanes` lanes): the operations that are one
/// intrinsic each — loads and stores (`LANES` floats at `p`, aligned for `load`/`store`: the
/// caller's contract) and lane-wise operations on registers — and the partial loads and stores,
/// which are the type's own `part_load`/`part_store`. Every intrinsic needs the instruction
/// set the caller runs with (module docs); `fmadd` also needs FMA, which only the training
/// kernels use and are compiled with.
macro_rules! impl_simd {
    ($t:ident, $v:ty, $lanes:literal, $zero:ident, $set1:ident, $fmadd:ident,
     [$($load:ident: $lf:ident),*], [$($store:ident: $sf:ident),*],
     [$($op:ident: $f:ident $(::<$imm:literal>)?),*]) => {
        impl Simd for $t {
            const LANES: usize = $lanes;
            type V = $v;
            #[inline(always)]
            unsafe fn zero() -> $v {
                // SAFETY: the instruction set (above); no memory is touched.
                unsafe { $zero() }
            }
            #[inline(always)]
            unsafe fn splat(p: *const f32) -> $v {
                // SAFETY: `p` is readable (caller); the instruction set as above.
                unsafe { $set1(*p) }
            }
            #[inline(always)]
            unsafe fn fmadd(a: $v, b: $v, c: $v) -> $v {
                // SAFETY: the instruction set and FMA (above); registers only.
                unsafe { $fmadd(a, b, c) }
            }
            $(
                #[inline(always)]
                unsafe fn $load(p: *const f32) -> $v {
                    // SAFETY: `LANES` floats readable at `p`, aligned if asked (caller).
                    unsafe { $lf(p) }
                }
            )*
            $(
                #[inline(always)]
                unsafe fn $store(p: *mut f32, v: $v) {
                    // SAFETY: `LANES` floats writable at `p`, aligned if asked (caller).
                    unsafe { $sf(p, v) }
                }
            )*
            $(
                #[inline(always)]
                unsafe fn $op(a: $v, b: $v) -> $v {
                    // SAFETY: the instruction set (above); registers only.
                    unsafe { $f $(::<$imm>)? (a, b) }
                }
            )*
            #[inline(always)]
            unsafe fn load_n(p: *const f32, w: usize) -> $v {
                // SAFETY: the caller's contract, passed on.
                unsafe { $t::part_load(p, w) }
            }
            #[inline(always)]
            unsafe fn store_n(p: *mut f32, v: $v, w: usize) {
                // SAFETY: the caller's contract, passed on.
                unsafe { $t::part_store(p, v, w) }
            }
        }
    };
}

/// Both instruction sets' [`Simd`] implementations from one table: per operation, the AVX
/// intrinsic, then the AVX-512F one.
macro_rules! both_widths {
    (zero: $z8:ident, $z16:ident; splat: $s8:ident, $s16:ident; fmadd: $m8:ident, $m16:ident;
     loads { $($load:ident: $l8:ident, $l16:ident;)* }
     stores { $($store:ident: $st8:ident, $st16:ident;)* }
     binary { $($op:ident: $f8:ident $(::<$i8:literal>)?, $f16:ident $(::<$i16:literal>)?;)* }) => {
        impl_simd!(Avx, __m256, 8, $z8, $s8, $m8, [$($load: $l8),*], [$($store: $st8),*],
            [$($op: $f8 $(::<$i8>)?),*]);
        impl_simd!(Avx512, __m512, 16, $z16, $s16, $m16, [$($load: $l16),*],
            [$($store: $st16),*], [$($op: $f16 $(::<$i16>)?),*]);
    };
}

both_widths! {
    zero: _mm256_setzero_ps, _mm512_setzero_ps;
    splat: _mm256_set1_ps, _mm512_set1_ps;
    fmadd: _mm256_fmadd_ps, _mm512_fmadd_ps;
    loads {
        load: _mm256_load_ps, _mm512_load_ps;
        loadu: _mm256_loadu_ps, _mm512_loadu_ps;
    }
    stores {
        store: _mm256_store_ps, _mm512_store_ps;
        storeu: _mm256_storeu_ps, _mm512_storeu_ps;
    }
    binary {
        add: _mm256_add_ps, _mm512_add_ps;
        mul: _mm256_mul_ps, _mm512_mul_ps;
        unpacklo: _mm256_unpacklo_ps, _mm512_unpacklo_ps;
        unpackhi: _mm256_unpackhi_ps, _mm512_unpackhi_ps;
        low_pairs: _mm256_shuffle_ps::<0x44>, _mm512_shuffle_ps::<0x44>;
        high_pairs: _mm256_shuffle_ps::<0xEE>, _mm512_shuffle_ps::<0xEE>;
    }
}

/// 256-bit AVX vectors (8 lanes). The FMA is AVX2+FMA's.
pub(super) struct Avx;

/// `MASKS[8 - w..16 - w]` has its first `w` lanes set: the masks of `_mm256_maskload_ps`.
static MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

impl Avx {
    /// [`Simd::load_n`].
    #[inline(always)]
    unsafe fn part_load(p: *const f32, w: usize) -> __m256 {
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
    /// [`Simd::store_n`].
    #[inline(always)]
    unsafe fn part_store(p: *mut f32, v: __m256, w: usize) {
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

impl Avx512 {
    /// [`Simd::load_n`].
    #[inline(always)]
    unsafe fn part_load(p: *const f32, w: usize) -> __m512 {
        // SAFETY: the masked lanes are readable (caller); the others are not read.
        unsafe { _mm512_maskz_loadu_ps(lanes(w), p) }
    }
    /// [`Simd::store_n`].
    #[inline(always)]
    unsafe fn part_store(p: *mut f32, v: __m512, w: usize) {
        // SAFETY: the masked lanes are writable (caller); the others are not written.
        unsafe { _mm512_mask_storeu_ps(p, lanes(w), v) }
    }
}

/// The first two stages of [`transpose8`] and [`transpose16`]: the 4 × 4 transposes within
/// each 128-bit block. `u[4g + j]` holds, in block `L`, lane `4L + j` of rows `4g .. 4g + 4`.
///
/// # Safety
/// The CPU supports `S`'s instruction set (the caller runs with it).
#[inline(always)]
unsafe fn transpose4_blocks<S: Simd, const N: usize>(r: [S::V; N]) -> [S::V; N] {
    // SAFETY: the instruction set (contract); register operations only.
    unsafe {
        // Pairs of rows interleaved within each block: [a0 b0 a1 b1 | a4 b4 a5 b5] …
        let t: [S::V; N] = core::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 { S::unpacklo(a, b) } else { S::unpackhi(a, b) }
        });
        // Then two pairs of those per block: four rows of one column.
        core::array::from_fn(|i| {
            let (g, j) = (i / 4, i % 4);
            let (x, y) = (t[4 * g + j / 2], t[4 * g + 2 + j / 2]);
            if j % 2 == 0 { S::low_pairs(x, y) } else { S::high_pairs(x, y) }
        })
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
        let u = transpose4_blocks::<Avx, 8>(r);
        // Then the halves: column j is the low halves of u[j] and u[4 + j], column j + 4 their
        // high halves.
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
        let u = transpose4_blocks::<Avx512, 16>(r);
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
