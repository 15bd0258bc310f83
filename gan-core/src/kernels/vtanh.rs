//! `libm::tanhf` over a slice, restated without branches so the compiler vectorises it.
//!
//! Every result is bit-identical to `libm::tanhf` (the tests compare them on boundary values, on
//! a sweep across the whole `f32` range and on random inputs; an ignored test checks all 2³²
//! inputs). It is the same algorithm — musl's `tanhf` on top of FreeBSD's `expm1f` — with each
//! `if` replaced by computing both sides and selecting, which the compiler turns into vector
//! blends. Only the paths `tanhf` can reach are kept: `expm1f` is called with `2|x|` in
//! `(0.51, 20]` (reduction by `k` in `1..=29`) or `-2|x|` in `[-0.51, 0)` (`k` in `{-1, 0}`).
//!
//! On x86-64 the loop is compiled three times (baseline SSE2, AVX2, AVX-512F) and picked at
//! run time; on AArch64 it is vectorised for NEON. Vector code does not fuse multiply-adds (Rust
//! never contracts floating-point operations), so every ISA computes the same bits. Targets
//! without wide vectors (the Cortex-M firmware) call `libm::tanhf` directly: the same bits, and
//! cheaper there than evaluating every branch.

// FreeBSD s_expm1f.c constants, as in libm, by their bits.
const LN2_HI: f32 = f32::from_bits(0x3f31_7180);
const LN2_LO: f32 = f32::from_bits(0x3717_f7d1);
const INV_LN2: f32 = f32::from_bits(0x3fb8_aa3b);
const Q1: f32 = f32::from_bits(0xbd08_8868); // -0x888868p-28
const Q2: f32 = f32::from_bits(0x3acf_3010); // 0xcf3010p-33

/// `tanhf(x)` with no data-dependent branches. Same bits as `libm::tanhf`.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let ix = x.to_bits();
    let sign = ix & 0x8000_0000;
    let w = ix & 0x7fff_ffff;
    let ax = f32::from_bits(w);

    // tanhf: |x| > log(5/3)/2 uses expm1f(2|x|), smaller |x| expm1f(-2|x|).
    let pos = w > 0x3e82_c578;
    let y = if pos { 2.0 * ax } else { -2.0 * ax };
    let hy = y.to_bits() & 0x7fff_ffff;

    // expm1f argument reduction, y = k·ln2 + (x + c). With k = 1 and k = -1 the special cases
    // of expm1f compute `y ∓ LN2_HI` and `±LN2_LO`, which is what `t·LN2_HI` and `t·LN2_LO` give
    // for t = ±1 (multiplying by ±1 is exact); with k = 0, t = 0 leaves y unchanged and c = 0.
    let k_formula = (INV_LN2 * y + 0.5) as i32;
    let k: i32 = if pos {
        // |y| < 1.5·ln2 is reduced by exactly one ln2.
        if hy < 0x3f85_1592 { 1 } else { k_formula }
    } else if hy > 0x3eb1_7218 {
        -1
    } else {
        0
    };
    let t = k as f32;
    let hi = y - t * LN2_HI;
    let lo = t * LN2_LO;
    let xr = hi - lo;
    let c = (hi - xr) - lo;

    // expm1f core on the reduced argument.
    let hfx = 0.5 * xr;
    let hxs = xr * hfx;
    let r1 = 1.0 + hxs * (Q1 + hxs * Q2);
    let t3 = 3.0 - r1 * hfx;
    let e0 = hxs * ((r1 - t3) / (6.0 - xr * t3));
    let em_k0 = xr - (xr * e0 - hxs);
    let e = (xr * (e0 - c) - c) - hxs;
    let em_km1 = 0.5 * (xr - e) - 0.5;
    let em_k1 = if xr < -0.25 { -2.0 * (e - (xr + 0.5)) } else { 1.0 + 2.0 * (xr - e) };
    // 2^k and 2^-k for 2 ≤ k ≤ 29 (the clamp only keeps unused lanes' shifts in range).
    let kc = k.clamp(0, 64);
    let twopk = f32::from_bits(((0x7f + kc) as u32) << 23);
    let uf = f32::from_bits(((0x7f - kc).max(0) as u32) << 23);
    let em_kbig =
        if k < 23 { (xr - e + (1.0 - uf)) * twopk } else { (xr - (e + uf) + 1.0) * twopk };
    let em = match k {
        0 => {
            // |y| < 2^-25: expm1f returns y itself.
            if hy < 0x3300_0000 { y } else { em_k0 }
        }
        -1 => em_km1,
        1 => em_k1,
        _ => em_kbig,
    };

    // tanhf from expm1f.
    let tt = if w > 0x3f0c_9f54 {
        1.0 - 2.0 / (em + 2.0)
    } else if pos {
        em / (em + 2.0)
    } else {
        -em / (em + 2.0)
    };
    // |x| > 10 or NaN: 1 + 0/|x| (NaN stays NaN); zero and subnormal: |x|.
    let tt = if w > 0x4120_0000 { 1.0 + 0.0 / ax } else { tt };
    let tt = if w < 0x0080_0000 { ax } else { tt };
    f32::from_bits(tt.to_bits() ^ sign)
}

/// Targets with wide vectors run the branch-free form; elsewhere (microcontrollers, where it
/// would only add work) `libm::tanhf` itself, which gives the same bits.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn lane(x: f32) -> f32 {
    tanh(x)
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline(always)]
fn lane(x: f32) -> f32 {
    libm::tanhf(x)
}

#[inline(always)]
fn map_body(out: &mut [f32], inp: &[f32]) {
    for (o, &x) in out.iter_mut().zip(inp) {
        *o = lane(x);
    }
}

#[inline(always)]
fn inplace_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = lane(*v);
    }
}

/// `out[i] = tanhf(inp[i])` for the common length.
pub fn tanh_map(out: &mut [f32], inp: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::kernels::cpu_has_avx512() {
            // SAFETY: the CPU supports AVX-512F.
            return unsafe { x86::map512(out, inp) };
        }
        if crate::kernels::cpu_has_avx2_fma() {
            // SAFETY: the CPU supports AVX2.
            return unsafe { x86::map256(out, inp) };
        }
    }
    map_body(out, inp);
}

/// `x[i] = tanhf(x[i])`.
pub fn tanh_inplace(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::kernels::cpu_has_avx512() {
            // SAFETY: the CPU supports AVX-512F.
            return unsafe { x86::inplace512(x) };
        }
        if crate::kernels::cpu_has_avx2_fma() {
            // SAFETY: the CPU supports AVX2.
            return unsafe { x86::inplace256(x) };
        }
    }
    inplace_body(x);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{inplace_body, map_body};

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn map512(out: &mut [f32], inp: &[f32]) {
        map_body(out, inp);
    }
    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn map256(out: &mut [f32], inp: &[f32]) {
        map_body(out, inp);
    }
    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn inplace512(x: &mut [f32]) {
        inplace_body(x);
    }
    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn inplace256(x: &mut [f32]) {
        inplace_body(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn check(bits: impl IntoIterator<Item = u32>) {
        let xs: Vec<f32> = bits.into_iter().map(f32::from_bits).collect();
        let mut got = std::vec![0.0f32; xs.len()];
        tanh_map(&mut got, &xs);
        let mut inplace = xs.clone();
        tanh_inplace(&mut inplace);
        for ((&x, &g), &h) in xs.iter().zip(&got).zip(&inplace) {
            let want = libm::tanhf(x);
            assert_eq!(
                g.to_bits(),
                want.to_bits(),
                "tanh({x:e} = {:#010x}): {g:e} vs libm {want:e}",
                x.to_bits()
            );
            assert_eq!(h.to_bits(), want.to_bits(), "in place, x = {x:e}");
            assert_eq!(tanh(x).to_bits(), want.to_bits(), "scalar, x = {x:e}");
        }
    }

    /// Every threshold of tanhf and expm1f (in terms of |x|), ±3 ulp, both signs.
    #[test]
    fn boundaries_and_special_values() {
        let edges: [u32; 12] = [
            0,
            1,
            0x0080_0000,             // smallest normal
            0x3280_0000,             // 2|x| = 2^-25
            0x3e31_7218,             // 2|x| = ln2/2
            0x3e82_c578,             // log(5/3)/2
            0x3f0c_9f54,             // log(3)/2
            0x3f85_1592 - (1 << 23), // 2|x| = 1.5·ln2
            f32::to_bits(23.0 * core::f32::consts::LN_2 / 2.0),
            0x4120_0000, // 10
            0x7f7f_ffff, // f32::MAX
            0x7f80_0000, // inf
        ];
        let mut bits = Vec::new();
        for e in edges {
            for d in 0..7u32 {
                let b = (e + d).saturating_sub(3);
                bits.push(b);
                bits.push(b | 0x8000_0000);
            }
        }
        bits.extend([0x7fc0_0000, 0xffc0_0000, 0x7f80_0001, 0x7fff_ffff]);
        check(bits);
    }

    /// Every 65,537th bit pattern (65,536 values spread over all exponents and both signs) and
    /// a dense sweep of the range where tanh is neither ±1 nor the identity.
    #[test]
    fn sweeps_match_libm() {
        check((0..=u32::MAX / 65_537).map(|i| i * 65_537));
        let (lo, hi) = (0x3900_0000u32, 0x4120_0000u32);
        check((lo..hi).step_by(257).flat_map(|b| [b, b | 0x8000_0000]));
    }

    /// All 2³² inputs: `cargo test --release -p gan-core vtanh -- --ignored` (about a minute).
    #[test]
    #[ignore]
    fn exhaustive() {
        let mut buf = std::vec![0.0f32; 1 << 16];
        let mut out = std::vec![0.0f32; 1 << 16];
        for hi in 0..=u16::MAX as u32 {
            for (lo, x) in buf.iter_mut().enumerate() {
                *x = f32::from_bits(hi << 16 | lo as u32);
            }
            tanh_map(&mut out, &buf);
            for (&x, &g) in buf.iter().zip(&out) {
                assert_eq!(g.to_bits(), libm::tanhf(x).to_bits(), "x = {:#010x}", x.to_bits());
            }
        }
    }
}
