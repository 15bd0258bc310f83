//! The all-integer encoding's products ([`crate::encoding::q8`]).
//!
//! Weights are stored as unsigned bytes offset by 128 (`u = w + 128`), so a product needs an
//! unsigned byte load with an immediate offset (ARMv6-M has no immediate form of the signed
//! load), a multiply and an add; the offset comes back out once per output:
//! `Σ x·w = Σ x·u − 128·Σ x`. The sums are exact integers, so every kernel here gives the same
//! bits as the plain loops in [`reference`], whatever its order.
//!
//! Dense layers keep the `in × out` layout (a row of output channels per input); 4×4
//! transposed convolutions with stride 2 are stored per output parity (see
//! [`convt4_index`]) so that, for one output pixel, its input taps form one contiguous vector
//! and the weights of consecutive output channels sit next to each other.

use crate::layers::conv2d::Geom;

/// The weight offset.
pub const OFFSET: i32 = 128;

/// Output channels summed together, their accumulators kept in registers.
const TILE: usize = 8;

/// Longest gathered input vector of [`conv_transpose_4x4`] (4 taps × input channels).
const MAX_TAPS: usize = 512;

/// `Σ_p x[p]·u[p·n + j] + base` for `T` columns from `u` (the `j`-th column at `u[j]`).
///
/// # Safety
/// `u[p·n + l]` is readable for every `p < x.len()`, `l < T`.
#[inline(always)]
unsafe fn columns<const T: usize>(x: &[i8], u: *const u8, n: usize, base: i32) -> [i32; T] {
    let mut acc = [base; T];
    let mut row = u;
    for &xv in x {
        let xv = i32::from(xv);
        for (l, a) in acc.iter_mut().enumerate() {
            // SAFETY: row p, column l < T (contract).
            *a += xv * i32::from(unsafe { *row.add(l) });
        }
        row = row.wrapping_add(n);
    }
    acc
}

/// [`columns`] for a tile: on ARMv6-M (no atomics is how its targets are told apart) a loop in
/// assembly that keeps the eight accumulators, the input value and the pointers in registers:
/// per input one signed load, then per output channel an unsigned load with an immediate
/// offset, a multiply and an add — 28 instructions for 8 multiply-accumulates.
///
/// # Safety
/// As [`columns`] with `T = TILE`.
#[inline(always)]
unsafe fn tile(x: &[i8], u: *const u8, n: usize, base: i32) -> [i32; TILE] {
    #[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
    if !x.is_empty() {
        let mut acc = [base; TILE];
        // SAFETY: `x` has at least one element; every `u[p·n + l]` (p < x.len(), l < 8) is
        // readable (contract). The block saves and restores r6 and r7 (which Rust reserves) on
        // the stack, writes only `acc` and the registers it declares.
        unsafe {
            core::arch::asm!(
                "push {{r3, r6, r7}}",
                "mov lr, r4",
                "ldr r5, [r3, #0]",
                "ldr r6, [r3, #4]",
                "ldr r7, [r3, #8]",
                "ldr r4, [r3, #12]",
                "mov r8, r4",
                "ldr r4, [r3, #16]",
                "mov r9, r4",
                "ldr r4, [r3, #20]",
                "mov r10, r4",
                "ldr r4, [r3, #24]",
                "mov r11, r4",
                "ldr r4, [r3, #28]",
                "mov r12, r4",
                "2:",
                "ldrsb r3, [r0, r1]",
                "ldrb r4, [r2, #0]",
                "muls r4, r3, r4",
                "adds r5, r5, r4",
                "ldrb r4, [r2, #1]",
                "muls r4, r3, r4",
                "adds r6, r6, r4",
                "ldrb r4, [r2, #2]",
                "muls r4, r3, r4",
                "adds r7, r7, r4",
                "ldrb r4, [r2, #3]",
                "muls r4, r3, r4",
                "add r8, r4",
                "ldrb r4, [r2, #4]",
                "muls r4, r3, r4",
                "add r9, r4",
                "ldrb r4, [r2, #5]",
                "muls r4, r3, r4",
                "add r10, r4",
                "ldrb r4, [r2, #6]",
                "muls r4, r3, r4",
                "add r11, r4",
                "ldrb r4, [r2, #7]",
                "muls r4, r3, r4",
                "add r12, r4",
                "add r2, lr",
                "adds r1, r1, #1",
                "bne 2b",
                "pop {{r3}}",
                "str r5, [r3, #0]",
                "str r6, [r3, #4]",
                "str r7, [r3, #8]",
                "mov r4, r8",
                "str r4, [r3, #12]",
                "mov r4, r9",
                "str r4, [r3, #16]",
                "mov r4, r10",
                "str r4, [r3, #20]",
                "mov r4, r11",
                "str r4, [r3, #24]",
                "mov r4, r12",
                "str r4, [r3, #28]",
                "pop {{r6, r7}}",
                in("r0") x.as_ptr().add(x.len()),
                inout("r1") (x.len() as isize).wrapping_neg() => _,
                inout("r2") u => _,
                inout("r3") acc.as_mut_ptr() => _,
                inout("r4") n => _,
                out("r5") _,
                out("r8") _,
                out("r9") _,
                out("r10") _,
                out("r11") _,
                out("r12") _,
                out("lr") _,
            );
        }
        return acc;
    }
    // SAFETY: forwarded.
    unsafe { columns::<TILE>(x, u, n, base) }
}

/// Writes sums as i32 bits.
#[inline(always)]
fn store(out: &mut [f32], sums: &[i32]) {
    for (o, &s) in out.iter_mut().zip(sums) {
        *o = f32::from_bits(s as u32);
    }
}

/// A dense layer: `acc[j] = Σ_p x[p]·(u[p·n + j] − 128)` for `j < n = acc.len()`, as i32 bits.
///
/// Panics if `u` is shorter than `x.len() × n`.
pub fn dense(acc: &mut [f32], x: &[i8], u: &[u8]) {
    let n = acc.len();
    assert!(u.len() >= x.len() * n);
    let base = -OFFSET * x.iter().map(|&v| i32::from(v)).sum::<i32>();
    let mut j = 0;
    while j + TILE <= n {
        // SAFETY: columns j..j+TILE ≤ n of every row p < x.len() (asserted above).
        store(&mut acc[j..j + TILE], &unsafe { tile(x, u.as_ptr().add(j), n, base) });
        j += TILE;
    }
    while j < n {
        // SAFETY: as above with one column.
        store(&mut acc[j..j + 1], &unsafe { columns::<1>(x, u.as_ptr().add(j), n, base) });
        j += 1;
    }
}

/// Where the q8 layout of a 4×4, stride-2 transposed convolution (`c_in` input channels,
/// `c_out` output channels) keeps the weight that the layer's own layout
/// (`c_in × c_out × 4 × 4`, [`crate::layers::conv_transpose2d`]) has at `spec`:
/// `[parity][c_in][tap][c_out]`, where the output pixel's parity `(ry, rx)` picks kernel rows
/// `ry, ry + 2` and columns `rx, rx + 2` and tap `t = 2i + j` is row `ry + 2i`, column `rx + 2j`.
pub const fn convt4_index(spec: usize, c_in: usize, c_out: usize) -> usize {
    let (kx, ky) = (spec % 4, (spec / 4) % 4);
    let co = (spec / 16) % c_out;
    let ci = spec / (16 * c_out);
    let parity = (ky % 2) * 2 + kx % 2;
    let tap = (ky / 2) * 2 + kx / 2;
    ((parity * c_in + ci) * 4 + tap) * c_out + co
}

/// Whether [`conv_transpose_4x4`] runs a transposed convolution of geometry `g`.
pub(crate) fn is_convt4(g: &Geom) -> bool {
    g.k == 4 && g.s == 2 && 4 * g.cg <= MAX_TAPS
}

/// A 4×4, stride-2 transposed convolution of one sample ([`is_convt4`]): `acc` (`C_out × OH ×
/// OW`, as i32 bits) from `x` (`C_in × H × W`) and the weights `u` in the [`convt4_index`]
/// layout. Per output pixel the four input taps of every input channel are gathered into one
/// vector (zero where a tap falls outside the input), then every output channel is that
/// vector's dot product with a contiguous run of weights.
///
/// Panics if a slice is shorter than the geometry needs or `is_convt4(g)` does not hold.
pub(crate) fn conv_transpose_4x4(acc: &mut [f32], x: &[i8], u: &[u8], g: &Geom) {
    let (c_in, c_out) = (g.cg, g.ci);
    let (plane, grid) = (g.ih * g.iw, g.gh * g.gw);
    assert!(is_convt4(g) && acc.len() >= c_out * plane && x.len() >= c_in * grid);
    assert!(u.len() >= 16 * c_in * c_out);
    let taps = 4 * c_in;
    let mut v = [0i8; MAX_TAPS];
    // Along one axis, output coordinate `o` takes kernel row `(o + p) mod 2` from input
    // position `(o + p) div 2`, and row + 2 from the position before, where those exist.
    let axis = |o: usize, n: usize| {
        let t = o + g.p;
        let pos = t >> 1;
        (t & 1, [(pos < n).then_some(pos), pos.checked_sub(1).filter(|&q| q < n)])
    };
    for oy in 0..g.ih {
        let (ry, ys) = axis(oy, g.gh);
        for ox in 0..g.iw {
            let (rx, xs) = axis(ox, g.gw);
            let mut sum = 0i32;
            if let ([Some(y), Some(_)], [Some(xx), Some(_)]) = (ys, xs) {
                // Inside: the four taps are the input at (y, x), (y, x − 1), (y − 1, x) and
                // (y − 1, x − 1).
                let (at, row) = (y * g.gw + xx, g.gw);
                for (vc, xc) in v[..taps].chunks_exact_mut(4).zip(x.chunks_exact(grid)) {
                    let t = [xc[at], xc[at - 1], xc[at - row], xc[at - row - 1]];
                    vc.copy_from_slice(&t);
                    sum += t.iter().map(|&v| i32::from(v)).sum::<i32>();
                }
            } else {
                for (ci, vc) in v[..taps].chunks_exact_mut(4).enumerate() {
                    let xc = &x[ci * grid..(ci + 1) * grid];
                    for (t, slot) in vc.iter_mut().enumerate() {
                        *slot = match (ys[t >> 1], xs[t & 1]) {
                            (Some(y), Some(xx)) => xc[y * g.gw + xx],
                            _ => 0,
                        };
                        sum += i32::from(*slot);
                    }
                }
            }
            let w = &u[(ry * 2 + rx) * taps * c_out..];
            let base = -OFFSET * sum;
            let pixel = oy * g.iw + ox;
            let mut co = 0;
            while co + TILE <= c_out {
                // SAFETY: rows k < taps, columns co..co+TILE ≤ c_out of the parity's block
                // (asserted above: 16·c_in·c_out = 4 parities × taps × c_out).
                let s = unsafe { tile(&v[..taps], w.as_ptr().add(co), c_out, base) };
                for (l, &s) in s.iter().enumerate() {
                    acc[(co + l) * plane + pixel] = f32::from_bits(s as u32);
                }
                co += TILE;
            }
            while co < c_out {
                // SAFETY: as above with one column.
                let s = unsafe { columns::<1>(&v[..taps], w.as_ptr().add(co), c_out, base) };
                acc[co * plane + pixel] = f32::from_bits(s[0] as u32);
                co += 1;
            }
        }
    }
}

/// Plain loops over the layers' own weight layouts (offset by 128): the definitions the fast
/// kernels are tested against, and the path for convolution geometries without one.
pub mod reference {
    use crate::layers::conv2d::Geom;

    use super::OFFSET;

    /// A convolution: `acc[co][gy][gx] = Σ x[ci][iy][ix]·(u[co][ci][ky][kx] − 128)` over the
    /// taps inside the image.
    pub(crate) fn conv(acc: &mut [f32], x: &[i8], u: &[u8], g: &Geom) {
        let (plane_in, plane_out) = (g.ih * g.iw, g.gh * g.gw);
        for co in 0..g.cg {
            for gy in 0..g.gh {
                for gx in 0..g.gw {
                    let mut s = 0i32;
                    for ci in 0..g.ci {
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let (iy, ix) = (gy * g.s + ky, gx * g.s + kx);
                                if iy < g.p || ix < g.p || iy - g.p >= g.ih || ix - g.p >= g.iw {
                                    continue;
                                }
                                let xv = x[ci * plane_in + (iy - g.p) * g.iw + ix - g.p];
                                let w = u[((co * g.ci + ci) * g.k + ky) * g.k + kx];
                                s += i32::from(xv) * (i32::from(w) - OFFSET);
                            }
                        }
                    }
                    acc[co * plane_out + gy * g.gw + gx] = f32::from_bits(s as u32);
                }
            }
        }
    }

    /// A transposed convolution, as a scatter: every input value times every tap, added to
    /// the output pixel it lands on (`u` in the layer's own `C_in × C_out × k × k` layout).
    pub(crate) fn conv_transpose(acc: &mut [f32], x: &[i8], u: &[u8], g: &Geom) {
        let (c_in, c_out) = (g.cg, g.ci);
        let (plane, grid) = (g.ih * g.iw, g.gh * g.gw);
        let sums = &mut acc[..c_out * plane];
        sums.fill(f32::from_bits(0));
        for ci in 0..c_in {
            for gy in 0..g.gh {
                for gx in 0..g.gw {
                    let xv = i32::from(x[ci * grid + gy * g.gw + gx]);
                    for co in 0..c_out {
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let (oy, ox) = (gy * g.s + ky, gx * g.s + kx);
                                if oy < g.p || ox < g.p || oy - g.p >= g.ih || ox - g.p >= g.iw {
                                    continue;
                                }
                                let w = u[((ci * c_out + co) * g.k + ky) * g.k + kx];
                                let o = &mut sums[co * plane + (oy - g.p) * g.iw + ox - g.p];
                                let s = (o.to_bits() as i32) + xv * (i32::from(w) - OFFSET);
                                *o = f32::from_bits(s as u32);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::conv2d::ConvDims;
    use crate::testutil::Lcg;
    use std::vec;
    use std::vec::Vec;

    fn bytes(r: &mut Lcg, n: usize) -> Vec<u8> {
        (0..n).map(|_| ((r.next_f32() + 1.0) * 127.9) as u8).collect()
    }

    fn inputs(r: &mut Lcg, n: usize) -> Vec<i8> {
        // Some zeros, as after ReLU, and both signs.
        (0..n).map(|i| if i % 5 == 0 { 0 } else { (r.next_f32() * 127.0) as i8 }).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn reference_convolution_is_the_int8_kernel() {
        let mut r = Lcg::new(3);
        let d = ConvDims { in_c: 3, in_h: 7, in_w: 6, out_c: 4, k: 3, stride: 2, pad: 1 };
        let g = Geom::conv(&d).unwrap();
        let (x, u) = (inputs(&mut r, g.img), bytes(&mut r, g.w));
        let signed: Vec<i8> = u.iter().map(|&b| (i32::from(b) - OFFSET) as i8).collect();
        let (mut a, mut b) = (vec![f32::NAN; g.grid], vec![f32::NAN; g.grid]);
        reference::conv(&mut a, &x, &u, &g);
        crate::kernels::int8::conv2d_i8_sums(&mut b, &x, &signed, &g);
        assert_eq!(bits(&a), bits(&b));
    }

    #[test]
    fn dense_is_the_definition() {
        let mut r = Lcg::new(1);
        for (k, n) in [(1, 1), (3, 7), (42, 1568), (17, 9), (192, 784)] {
            let (x, u) = (inputs(&mut r, k), bytes(&mut r, k * n));
            let mut got = vec![f32::NAN; n];
            dense(&mut got, &x, &u);
            let want: Vec<f32> = (0..n)
                .map(|j| {
                    let s: i32 =
                        (0..k).map(|p| i32::from(x[p]) * (i32::from(u[p * n + j]) - OFFSET)).sum();
                    f32::from_bits(s as u32)
                })
                .collect();
            assert_eq!(bits(&got), bits(&want), "{k}×{n}");
        }
    }

    /// The 4×4 kernel on the permuted layout equals the scatter on the layer's own layout.
    #[test]
    fn transposed_4x4_kernel_is_the_definition() {
        let mut r = Lcg::new(2);
        for (ci, h, w, co, p) in [
            (32, 7, 7, 16, 1),
            (16, 14, 14, 1, 1),
            (3, 4, 6, 9, 0),
            (2, 5, 3, 5, 2),
            (1, 1, 1, 3, 1),
        ] {
            let d = ConvDims { in_c: ci, in_h: h, in_w: w, out_c: co, k: 4, stride: 2, pad: p };
            let Ok(g) = Geom::transpose(&d) else { continue };
            assert!(is_convt4(&g));
            let (x, u) = (inputs(&mut r, ci * h * w), bytes(&mut r, 16 * ci * co));
            let mut permuted = vec![0u8; u.len()];
            for (i, &b) in u.iter().enumerate() {
                permuted[convt4_index(i, ci, co)] = b;
            }
            let plane = g.ih * g.iw;
            let (mut got, mut want) = (vec![f32::NAN; co * plane], vec![f32::NAN; co * plane]);
            conv_transpose_4x4(&mut got, &x, &permuted, &g);
            reference::conv_transpose(&mut want, &x, &u, &g);
            assert_eq!(bits(&got), bits(&want), "{d:?}");
        }
        // The permutation is one, and the scatter is the int8 encoding's kernel.
        let d = ConvDims { in_c: 3, in_h: 5, in_w: 4, out_c: 2, k: 3, stride: 2, pad: 1 };
        let g = Geom::transpose(&d).unwrap();
        let (x, u) = (inputs(&mut r, 3 * 5 * 4), bytes(&mut r, 9 * 3 * 2));
        let signed: Vec<i8> = u.iter().map(|&b| (i32::from(b) - OFFSET) as i8).collect();
        let (mut a, mut b) = (vec![f32::NAN; g.img], vec![f32::NAN; g.img]);
        reference::conv_transpose(&mut a, &x, &u, &g);
        crate::kernels::int8::conv_transpose2d_i8_sums(&mut b, &x, &signed, &g);
        assert_eq!(bits(&a), bits(&b));
        let mut seen = vec![false; 16 * 6 * 5];
        for i in 0..seen.len() {
            let j = convt4_index(i, 6, 5);
            assert!(!seen[j]);
            seen[j] = true;
        }
    }
}
