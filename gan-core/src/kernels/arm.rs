//! The exact kernel's inner loop on ARM cores with a hardware FPU (Cortex-M4F and up).

use core::arch::asm;

/// For `p` in `0..4·quads` in order, and each `l < 8`: `acc[l] = acc[l] + a[p]·b[p·n + l]`,
/// with `n = stride / 4`.
///
/// `VMLA.F32` rounds the product and then the sum (it is not fused), so this is exactly the
/// scalar `s += a·b`. Written in assembly only to get `VLDM`: one instruction loads four
/// floats, which LLVM does not emit for these loads by itself. The loop costs 47
/// instructions per 32 multiply-accumulates.
///
/// The FP registers used (s16–s31) are saved and restored inside the block, because Rust
/// cannot name them as operands on targets whose FPU lacks double precision.
///
/// # Safety
/// `quads ≥ 1`; `a[..4·quads]` and `b[p·n .. p·n + 8]` for `p < 4·quads` are readable;
/// `stride ≥ 16` and a multiple of 4.
#[inline]
pub(crate) unsafe fn mac8(
    acc: &mut [f32; 8], a: *const f32, b: *const f32, stride: usize, quads: usize,
) {
    // SAFETY: reads only what the contract allows, writes only `acc`; saves and restores
    // every FP register it touches; flags are declared clobbered by omitting
    // `preserves_flags`, the stack is used (no `nostack`) and left balanced.
    unsafe {
        asm!(
            "vpush {{s16-s31}}",
            "vldmia {acc}, {{s16-s23}}",
            "2:",
            "vldmia {a}!, {{s28-s31}}",
            "vldmia {b}!, {{s24-s27}}",
            "vmla.f32 s16, s28, s24",
            "vmla.f32 s17, s28, s25",
            "vmla.f32 s18, s28, s26",
            "vmla.f32 s19, s28, s27",
            "vldmia {b}, {{s24-s27}}",
            "add {b}, {step}",
            "vmla.f32 s20, s28, s24",
            "vmla.f32 s21, s28, s25",
            "vmla.f32 s22, s28, s26",
            "vmla.f32 s23, s28, s27",
            "vldmia {b}!, {{s24-s27}}",
            "vmla.f32 s16, s29, s24",
            "vmla.f32 s17, s29, s25",
            "vmla.f32 s18, s29, s26",
            "vmla.f32 s19, s29, s27",
            "vldmia {b}, {{s24-s27}}",
            "add {b}, {step}",
            "vmla.f32 s20, s29, s24",
            "vmla.f32 s21, s29, s25",
            "vmla.f32 s22, s29, s26",
            "vmla.f32 s23, s29, s27",
            "vldmia {b}!, {{s24-s27}}",
            "vmla.f32 s16, s30, s24",
            "vmla.f32 s17, s30, s25",
            "vmla.f32 s18, s30, s26",
            "vmla.f32 s19, s30, s27",
            "vldmia {b}, {{s24-s27}}",
            "add {b}, {step}",
            "vmla.f32 s20, s30, s24",
            "vmla.f32 s21, s30, s25",
            "vmla.f32 s22, s30, s26",
            "vmla.f32 s23, s30, s27",
            "vldmia {b}!, {{s24-s27}}",
            "vmla.f32 s16, s31, s24",
            "vmla.f32 s17, s31, s25",
            "vmla.f32 s18, s31, s26",
            "vmla.f32 s19, s31, s27",
            "vldmia {b}, {{s24-s27}}",
            "add {b}, {step}",
            "vmla.f32 s20, s31, s24",
            "vmla.f32 s21, s31, s25",
            "vmla.f32 s22, s31, s26",
            "vmla.f32 s23, s31, s27",
            "subs {q}, #1",
            "bne 2b",
            "vstmia {acc}, {{s16-s23}}",
            "vpop {{s16-s31}}",
            acc = in(reg) acc.as_mut_ptr(),
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            step = in(reg) stride - 16,
            q = inout(reg) quads => _,
        );
    }
}
