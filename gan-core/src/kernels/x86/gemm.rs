//! The training micro-kernels for AVX2+FMA (6×16 tiles, 12 `ymm` accumulators) and AVX-512F
//! (8×32 tiles, 16 `zmm` accumulators), both the one tile below over the vector width.
//!
//! Every output of a tile is `acc = 0`, then one fused multiply-add per `p` in order over the
//! summation block, whatever the tile's shape or the instruction set, so the AVX2 and AVX-512
//! kernels give the same bits (the blocking, [`super::super::gemm`]'s `KC`, is the same too).

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::simd::{Avx, Avx512, Simd};
use crate::kernels::gemm::{Aligned, Gemm, Micro, Tile, pack_a, pack_b};

/// Summation block: a 256-row panel of `B` (16 KiB for AVX2, 32 KiB for AVX-512) stays in L1
/// while the tiles stream the packed rows of `A` from L2.
const KC: usize = 256;

/// `R × V·LANES` tile over a micro-panel of `A` and a panel of `2·LANES` columns of `B`.
///
/// # Safety
/// See [`Micro::tile`]; `t.rows == R`; `LANES·(V − 1) < t.cols ≤ LANES·V`; the caller runs
/// with `S`'s instruction set (and FMA).
#[inline(always)]
unsafe fn tile<S: Simd, const R: usize, const V: usize>(t: &Tile) {
    let l = S::LANES;
    // SAFETY: (whole body)  `a` walks the micro-panel (`lda` floats per step, r < R ≤ MR),
    // `b` the 64-byte-aligned packed panel (2·LANES floats per step); row r < rows and the
    // `cols − LANES·v ≥ 1` columns of vector v are inside this tile's C (contract).
    unsafe {
        // The tile's rows of C, wanted after the last step: fetched meanwhile (a weight
        // gradient of a short batch has only `kc = 64` steps to hide an L3 miss behind).
        for r in 0..R {
            let cp = t.c.wrapping_add(r * t.ldc);
            _mm_prefetch::<_MM_HINT_T0>(cp.cast::<i8>());
            _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(t.cols - 1).cast::<i8>());
        }
        let mut acc = [[S::zero(); V]; R];
        let mut a = t.a;
        let mut b = t.b;
        for _ in 0..t.kc {
            let mut bv = [S::zero(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = S::load(b.add(l * v));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = S::splat(a.add(r));
                for (s, &y) in acc_r.iter_mut().zip(&bv) {
                    *s = S::fmadd(av, y, *s);
                }
            }
            a = a.wrapping_add(t.lda);
            b = b.wrapping_add(2 * l);
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, &s) in acc_r.iter().enumerate() {
                let w = t.cols - l * v;
                let cp = t.c.add(r * t.ldc + l * v);
                let x = if t.add { S::add(S::load_n(cp, w), s) } else { s };
                S::store_n(cp, x, w);
            }
        }
    }
}

/// # Safety
/// As [`tile`]; the CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize, const V: usize>(t: &Tile) {
    // SAFETY: forwarded; the features are enabled here.
    unsafe { tile::<Avx, R, V>(t) }
}

/// # Safety
/// As [`tile`]; the CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize, const V: usize>(t: &Tile) {
    // SAFETY: forwarded; the feature is enabled here.
    unsafe { tile::<Avx512, R, V>(t) }
}

/// One [`Micro`] kernel over `$tile`: `MR × NR` tiles, a `$rows_a`-row buffer of `A` at
/// [`KC`], and the tile instantiation for every row count and one or two vectors per row.
macro_rules! micro_kernel {
    ($name:ident, mr: $mr:literal, nr: $nr:literal, rows_a: $rows_a:literal,
     tile: $tile:ident, rows: [$($r:literal),*]) => {
        impl Micro for $name {
            const MR: usize = $mr;
            const NR: usize = $nr;
            const KC: usize = KC;
            type PanelA = Aligned<{ $rows_a * KC }>;
            type PanelB = Aligned<{ KC * $nr }>;
            fn panels() -> (Self::PanelA, Self::PanelB) {
                (Aligned::uninit(), Aligned::uninit())
            }
            fn pack_a(p: &mut [MaybeUninit<f32>], g: &Gemm<'_>, ic: usize, mc: usize, pc: usize, kc: usize) {
                if g.acs == 1 {
                    // SAFETY: both instruction sets include AVX, and the kernels only run
                    // after their own (wider) detection.
                    unsafe { pack_a_rows::<$mr>(p, g, ic, mc, pc, kc) };
                } else {
                    pack_a::<$mr>(p, g, ic, mc, pc, kc);
                }
            }
            unsafe fn tile(t: &Tile) {
                // SAFETY: forwarded (the caller checked the instruction set); each
                // instantiation handles exactly `rows` rows, and the one-vector variants at
                // most NR / 2 columns.
                unsafe {
                    if t.cols > $nr / 2 {
                        match t.rows {
                            $($r => $tile::<$r, 2>(t),)*
                            _ => $tile::<$mr, 2>(t),
                        }
                    } else {
                        match t.rows {
                            $($r => $tile::<$r, 1>(t),)*
                            _ => $tile::<$mr, 1>(t),
                        }
                    }
                }
            }
            unsafe fn pack_b(
                panel: &mut [MaybeUninit<f32>], g: &Gemm<'_>, pc: usize, kc: usize, jc: usize,
                cols: usize,
            ) {
                if g.bcs == 1 {
                    pack_b::<$nr>(panel, g, pc, kc, jc, cols);
                } else {
                    // SAFETY: forwarded (both instruction sets include AVX).
                    unsafe { pack_b_transposed::<$nr>(panel, g, pc, kc, jc, cols) };
                }
            }
        }
    };
}

/// 6×16 AVX2+FMA micro-kernel: 12 `ymm` accumulators, two panel loads and six broadcasts per
/// step of `p`; 96 rows of `A` at `KC` (96 KiB on the stack).
pub(crate) struct Avx2Kernel;
micro_kernel!(Avx2Kernel, mr: 6, nr: 16, rows_a: 96, tile: tile_avx2, rows: [1, 2, 3, 4, 5]);

/// 8×32 AVX-512F micro-kernel: 16 `zmm` accumulators, two panel loads and eight broadcasts
/// per step of `p`; 64 rows of `A` at `KC` (64 KiB on the stack).
pub(crate) struct Avx512Kernel;
micro_kernel!(Avx512Kernel, mr: 8, nr: 32, rows_a: 64, tile: tile_avx512, rows: [1, 2, 3, 4, 5, 6, 7]);

/// [`pack_a`] for row-major `A` (`A(i, p) = a[i·ars + p]`): each full micro-panel of
/// `4 ≤ MR ≤ 8` rows in blocks of 8 steps, transposed in registers (rows past `MR` zero), every
/// step's `MR` values stored at once. For `MR < 8` a store also covers the first lanes of the
/// next step, which the next store rewrites; the micro-panel's last step is stored lane by
/// lane. Short micro-panels and the steps after the last whole block take the scalar loops of
/// [`pack_a`], so the packed panel holds exactly what [`pack_a`] writes.
///
/// # Safety
/// The CPU supports AVX.
#[target_feature(enable = "avx")]
unsafe fn pack_a_rows<const MR: usize>(
    panel: &mut [MaybeUninit<f32>], g: &Gemm<'_>, ic: usize, mc: usize, pc: usize, kc: usize,
) {
    const { assert!(MR >= 4 && MR <= 8) };
    assert!(g.acs == 1 && panel.len() >= mc.div_ceil(MR) * MR * kc && kc >= 1);
    assert!(ic + mc <= g.m && pc + kc <= g.k);
    let dst = panel.as_mut_ptr().cast::<f32>();
    let src = g.a.as_ptr();
    let full = mc / MR * MR;
    let kc8 = kc / 8 * 8;
    for ir in (0..full).step_by(MR) {
        // SAFETY: (whole loop)  rows ic+ir..ic+ir+MR ≤ m and columns pc..pc+kc ≤ k of A are
        // in `a` (Gemm invariant, asserted ranges); the micro-panel's kc·MR floats start at
        // ir·kc in `panel`. A whole-vector store at step p < kc − 1 writes slot p and, for
        // MR < 8, the first 8 − MR ≤ MR lanes of slot p + 1 (inside the micro-panel, and
        // rewritten later); the last step is stored lane by lane.
        unsafe {
            let d = dst.add(ir * kc);
            let row = |r: usize| src.add((ic + ir + r) * g.ars + pc);
            for pp in (0..kc8).step_by(8) {
                let r: [__m256; 8] = core::array::from_fn(|q| {
                    if q < MR { _mm256_loadu_ps(row(q).add(pp)) } else { _mm256_setzero_ps() }
                });
                for (x, v) in super::transpose8(r).into_iter().enumerate() {
                    let p = pp + x;
                    if MR == 8 || p + 1 < kc {
                        _mm256_storeu_ps(d.add(p * MR), v);
                    } else {
                        let mut lanes = [0.0f32; 8];
                        _mm256_storeu_ps(lanes.as_mut_ptr(), v);
                        core::ptr::copy_nonoverlapping(lanes.as_ptr(), d.add(p * MR), MR);
                    }
                }
            }
            for r in 0..MR {
                for p in kc8..kc {
                    *d.add(p * MR + r) = *row(r).add(p);
                }
            }
        }
    }
    if full < mc {
        pack_a::<MR>(&mut panel[full * kc..], g, ic + full, mc - full, pc, kc);
    }
}

/// [`pack_b`] for column-major `B` (`B(p, j) = b[j·bcs + p]`) into `NR`-wide panel
/// rows, transposing 8×8 blocks in registers; edges fall back to the scalar loops.
///
/// # Safety
/// The CPU supports AVX.
#[target_feature(enable = "avx")]
unsafe fn pack_b_transposed<const NR: usize>(
    panel: &mut [MaybeUninit<f32>], g: &Gemm<'_>, pc: usize, kc: usize, jc: usize, cols: usize,
) {
    const { assert!(NR.is_multiple_of(8)) };
    assert!(g.brs == 1 && panel.len() >= kc * NR && (1..=NR).contains(&cols) && kc >= 1);
    assert!(pc + kc <= g.k && jc + cols <= g.n);
    let dst = panel.as_mut_ptr().cast::<f32>();
    let src = g.b.as_ptr();
    let full = cols / 8 * 8;
    let kc8 = kc / 8 * 8;
    for jj in (0..full).step_by(8) {
        // SAFETY: (whole loop)  columns jc+jj..jc+jj+8 ≤ n and rows pc..pc+kc ≤ k of B are
        // in `b` (Gemm invariant, asserted ranges); panel rows < kc hold NR floats.
        unsafe {
            let col = |q: usize| src.add((jc + jj + q) * g.bcs + pc);
            for pp in (0..kc8).step_by(8) {
                let r: [__m256; 8] = core::array::from_fn(|q| _mm256_loadu_ps(col(q).add(pp)));
                for (x, row) in super::transpose8(r).into_iter().enumerate() {
                    _mm256_store_ps(dst.add((pp + x) * NR + jj), row);
                }
            }
            for pp in kc8..kc {
                for q in 0..8 {
                    *dst.add(pp * NR + jj + q) = *col(q).add(pp);
                }
            }
        }
    }
    for jj in full..cols {
        // SAFETY: as above for one column.
        unsafe {
            let s = src.add((jc + jj) * g.bcs + pc);
            for pp in 0..kc {
                *dst.add(pp * NR + jj) = *s.add(pp);
            }
        }
    }
    if cols < NR {
        for pp in 0..kc {
            // SAFETY: row pp of the panel is in bounds.
            unsafe { core::ptr::write_bytes(dst.add(pp * NR + cols), 0, NR - cols) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Lcg;
    use std::vec;
    use std::vec::Vec;

    /// Packs with `f` into a buffer of sentinels and returns every float's bits.
    fn packed(f: impl Fn(&mut [MaybeUninit<f32>]), len: usize) -> Vec<u32> {
        let mut buf = vec![MaybeUninit::new(f32::from_bits(0x7FC0_1234)); len];
        f(&mut buf);
        // SAFETY: every element was initialised above (packing only overwrites).
        buf.iter().map(|v| unsafe { v.assume_init() }.to_bits()).collect()
    }

    fn check<const MR: usize>() {
        let mut r = Lcg::new(77);
        for (m, k) in [(1, 1), (5, 9), (6, 8), (8, 8), (13, 17), (24, 64), (30, 33), (64, 256)] {
            let (a, b) = (r.filled(m * k), vec![0.0; k]);
            let g = Gemm::new(&a, (k, 1), &b, (1, 1), (m, k, 1), false);
            // Whole and partial row blocks and summation blocks.
            for (ic, mc, pc, kc) in [(0, m, 0, k), (m / 3, m - m / 3, k / 2, k - k / 2)] {
                if mc == 0 || kc == 0 {
                    continue;
                }
                let len = mc.div_ceil(MR) * MR * kc + 8;
                let want = packed(|p| pack_a::<MR>(p, &g, ic, mc, pc, kc), len);
                // SAFETY: the test only runs where the CPU has AVX.
                let got = packed(|p| unsafe { pack_a_rows::<MR>(p, &g, ic, mc, pc, kc) }, len);
                assert_eq!(got, want, "MR {MR}, m {m}, k {k}, block {:?}", (ic, mc, pc, kc));
            }
        }
    }

    #[test]
    fn vector_packing_of_a_is_the_scalar_packing() {
        if !super::super::has_avx() {
            std::eprintln!("no AVX here: nothing to compare");
            return;
        }
        check::<6>();
        check::<8>();
        check::<4>();
    }
}
