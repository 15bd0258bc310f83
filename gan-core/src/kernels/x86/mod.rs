//! x86-64 kernels: run-time feature detection (CPUID and XGETBV, no `std`), the training
//! micro-kernels and the exact kernel's tiles, each written once over the vector width
//! ([`simd::Simd`]) and compiled for AVX2+FMA (256-bit) and AVX-512F (512-bit).

use core::arch::x86_64::*;
use core::sync::atomic::{AtomicU8, Ordering};

mod channels;
mod cols;
mod exact;
mod gemm;
mod simd;

pub(crate) use channels::channel_sums_avx;
pub(crate) use cols::{col2im_add_avx2, col2im_add_avx512, im2col_avx2, im2col_avx512};
pub(crate) use exact::{exact_avx, exact_avx512};
pub(crate) use gemm::{Avx2Kernel, Avx512Kernel};
pub(crate) use simd::{transpose8, transpose16};

const DETECTED: u8 = 1;
const AVX: u8 = 2;
const AVX2_FMA: u8 = 4;
const AVX512: u8 = 8;

/// 0 until the first query, then `DETECTED` plus the feature bits.
static FEATURES: AtomicU8 = AtomicU8::new(0);

/// The feature bits the kernels may use (see [`super::limit_vector_isa`]).
static ALLOWED: AtomicU8 = AtomicU8::new(u8::MAX);

/// Allows only the features of `level`: 0 none, 1 AVX and AVX2+FMA, 2 everything.
pub(crate) fn allow(level: u8) {
    let bits = match level {
        0 => 0,
        1 => AVX | AVX2_FMA,
        _ => u8::MAX,
    };
    ALLOWED.store(bits, Ordering::Relaxed);
}

fn features() -> u8 {
    let allowed = ALLOWED.load(Ordering::Relaxed);
    let f = FEATURES.load(Ordering::Relaxed);
    if f != 0 {
        return f & allowed;
    }
    // Racing first calls compute the same value, so a relaxed store is enough.
    let f = detect();
    FEATURES.store(f, Ordering::Relaxed);
    f & allowed
}

pub(crate) fn has_avx() -> bool {
    cfg!(target_feature = "avx") || features() & AVX != 0
}

pub(crate) fn has_avx2_fma() -> bool {
    cfg!(all(target_feature = "avx2", target_feature = "fma")) || features() & AVX2_FMA != 0
}

/// AVX-512F with the OS saving opmask and `zmm` state (reported only together with
/// AVX2+FMA).
pub(crate) fn has_avx512() -> bool {
    cfg!(target_feature = "avx512f") || features() & AVX512 != 0
}

fn detect() -> u8 {
    let mut f = DETECTED;
    // SAFETY: CPUID exists on every x86-64 CPU. (The CPUID intrinsics are `unsafe fn`s on
    // older toolchains and safe on newer ones, hence the `allow`.)
    #[allow(unused_unsafe)]
    let (max_leaf, leaf1) = unsafe { (__cpuid(0).eax, __cpuid(1)) };
    let fma = leaf1.ecx & (1 << 12) != 0;
    let osxsave = leaf1.ecx & (1 << 27) != 0;
    let avx = leaf1.ecx & (1 << 28) != 0;
    if !(osxsave && avx) {
        return f;
    }
    // SAFETY: OSXSAVE is set, so the OS has enabled XGETBV.
    let xcr0 = unsafe { xcr0() };
    // The OS must save both XMM (bit 1) and YMM (bit 2) state across context switches.
    if xcr0 & 0b110 != 0b110 {
        return f;
    }
    f |= AVX;
    if max_leaf >= 7 {
        // SAFETY: as above; leaf 7 exists (max_leaf ≥ 7).
        #[allow(unused_unsafe)]
        let leaf7 = unsafe { __cpuid_count(7, 0) };
        let avx2 = leaf7.ebx & (1 << 5) != 0;
        let avx512f = leaf7.ebx & (1 << 16) != 0;
        if avx2 && fma {
            f |= AVX2_FMA;
            // ZMM state needs opmask (bit 5), the upper halves of zmm0–15 (bit 6) and
            // zmm16–31 (bit 7) saved by the OS too.
            if avx512f && xcr0 & 0b1110_0000 == 0b1110_0000 {
                f |= AVX512;
            }
        }
    }
    f
}

/// # Safety
/// The CPU must report OSXSAVE.
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    // SAFETY: forwarded from the caller.
    unsafe { _xgetbv(0) }
}
