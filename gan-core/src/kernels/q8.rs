//! The all-integer encoding's products ([`crate::encoding::q8`]).
//!
//! Weights are stored as unsigned bytes offset by 128 (`u = w + 128`), so a product needs an
//! unsigned byte load with an immediate offset (ARMv6-M has no immediate form of the signed
//! load), a multiply and an add; the offset comes back out once per output:
//! `Σ x·w = Σ x·u − 128·Σ x`. The sums are exact integers, so every kernel here gives the same
//! bits as the plain loops in [`mod@reference`], whatever its order.
//!
//! A product `k × n` (inputs × output channels) is stored in **pairs of input rows**, the two
//! rows interleaved by channel pairs ([`pair_index`]): for inputs `p, p + 1` and channels
//! `c, c + 1` the four bytes `u[p][c], u[p][c+1], u[p+1][c], u[p+1][c+1]` form one word. On
//! ARMv6-M every channel's byte of a row is still at an immediate offset; with the DSP
//! extension (Cortex-M4F, Cortex-M33) one `UXTB16` of that word gives a channel's two weights
//! as halfwords, and one `SMLAD` adds both of its products. Odd `k` or `n` are padded with
//! zero weights. Dense layers store their `in × out` matrix this way; 4×4 transposed
//! convolutions with stride 2 store, per output parity, the `taps × out` matrix of one output
//! pixel (see [`convt4_index`]), so a pixel's input taps form one contiguous vector.

use crate::layers::conv2d::Geom;

/// The weight offset.
pub const OFFSET: i32 = 128;

/// Output channels summed together, their accumulators kept in registers.
const TILE: usize = 8;

/// Longest gathered input vector of [`conv_transpose_4x4`] (4 taps × input channels).
const MAX_TAPS: usize = 512;

/// Where the paired layout of a `k × n` matrix keeps element `(p, c)`.
#[inline(always)]
pub const fn pair_index(p: usize, c: usize, n: usize) -> usize {
    (p / 2) * pair_row(n) + (c / 2) * 4 + (p % 2) * 2 + c % 2
}

/// Bytes of one pair of input rows: `n` rounded up to even, twice.
#[inline(always)]
pub const fn pair_row(n: usize) -> usize {
    2 * (2 * n.div_ceil(2))
}

/// Bytes of a `k × n` matrix in the paired layout (`k` and `n` rounded up to even).
pub const fn pair_len(k: usize, n: usize) -> usize {
    k.div_ceil(2) * pair_row(n)
}

/// `Σ_p x[p]·u(p, l) + base` for the `TILE` channels whose pair-row bytes start at `u`, in
/// portable Rust (the definition the assembly tiles follow).
///
/// # Safety
/// `u` points into a paired matrix of `x.len()` (even) inputs with `TILE` channels readable
/// from it in every pair of rows, pair rows `stride` bytes apart.
#[inline(always)]
unsafe fn columns(x: &[i8], u: *const u8, stride: usize, base: i32) -> [i32; TILE] {
    let mut acc = [base; TILE];
    let mut row = u;
    for pair in x.chunks_exact(2) {
        for (l, a) in acc.iter_mut().enumerate() {
            let at = (l / 2) * 4 + l % 2;
            // SAFETY: both rows of this pair, channel l < TILE (contract).
            let (w0, w1) = unsafe { (*row.add(at), *row.add(at + 2)) };
            *a += i32::from(pair[0]) * i32::from(w0) + i32::from(pair[1]) * i32::from(w1);
        }
        row = row.wrapping_add(stride);
    }
    acc
}

/// The ARMv6-M tile's eight channels for one input (in `r3`): from the pair-row at `r2`, bytes
/// `b, b + 1, b + 4, b + 5, …` (`b` = 0 for the pair's first input, 2 for its second), each an
/// `LDRB`, a `MULS` and an add into its accumulator (r5–r7, r8–r12).
#[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
macro_rules! v6m_lanes {
    ($b:literal) => {
        concat!(
            v6m_lane!($b, 0, "adds r5, r5,"),
            v6m_lane!($b, 1, "adds r6, r6,"),
            v6m_lane!($b, 4, "adds r7, r7,"),
            v6m_lane!($b, 5, "add r8,"),
            v6m_lane!($b, 8, "add r9,"),
            v6m_lane!($b, 9, "add r10,"),
            v6m_lane!($b, 12, "add r11,"),
            v6m_lane!($b, 13, "add r12,"),
        )
    };
}

/// One channel of [`v6m_lanes`]: byte `b + at`, times `r3`, added by `add … r4`.
#[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
macro_rules! v6m_lane {
    ($b:literal, $at:literal, $add:literal) => {
        concat!("ldrb r4, [r2, #", $b, " + ", $at, "]\n", "muls r4, r3, r4\n", $add, " r4\n")
    };
}

/// The DSP tile's two channels of one word (at byte `off` of the pair-row at `r1`): `UXTB16`
/// unpacks each channel's two weights into halfwords and its `SMLAD` (the encodings given)
/// adds both products with the input pair in `r12`.
#[cfg(all(target_arch = "arm", target_has_atomic = "32", target_abi = "eabihf"))]
macro_rules! dsp_pair {
    ($off:literal, $smlad_a:literal, $smlad_b:literal) => {
        concat!(
            "ldr lr, [r1, #",
            $off,
            "]\n",
            ".inst.w 0xFA3FF38E\n", // uxtb16 r3, lr
            ".inst.w ",
            $smlad_a,
            "\n",
            ".inst.w 0xFA3FF39E\n", // uxtb16 r3, lr, ror #8
            ".inst.w ",
            $smlad_b,
            "\n"
        )
    };
}

/// [`columns`] in assembly where there is a kernel for the core:
/// - ARMv6-M (no atomics is how its targets are told apart): the eight accumulators, the
///   input value and the pointers in registers; per input one signed load, then per channel
///   an unsigned load with an immediate offset, a multiply and an add: 54 instructions per
///   two inputs × eight channels, 3.4 per multiply-accumulate;
/// - ARMv7E-M and ARMv8-M Mainline with an FPU (`eabihf`: Cortex-M4F, M7, M33, all with the
///   DSP extension): the two inputs as one halfword pair, then per channel pair one word,
///   two `UXTB16` and two `SMLAD`: 27 instructions per 16 multiply-accumulates, 1.7 each.
///
/// # Safety
/// As [`columns`].
#[inline(always)]
unsafe fn tile(x: &[i8], u: *const u8, stride: usize, base: i32) -> [i32; TILE] {
    #[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
    if !x.is_empty() {
        let mut acc = [base; TILE];
        // SAFETY: `x` has at least two elements; every byte read lies in the pairs of rows
        // the contract makes readable. The block saves and restores r6 and r7 (which Rust
        // reserves) on the stack, writes only `acc` and the registers it declares.
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
                // The first input of the pair: channel bytes at 0, 1, 4, 5, 8, 9, 12, 13.
                "ldrsb r3, [r0, r1]",
                v6m_lanes!(0),
                // The second: two bytes further.
                "adds r1, r1, #1",
                "ldrsb r3, [r0, r1]",
                v6m_lanes!(2),
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
                inout("r4") stride => _,
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
    #[cfg(all(target_arch = "arm", target_has_atomic = "32", target_abi = "eabihf"))]
    if !x.is_empty() {
        let mut acc = [base; TILE];
        // SAFETY: as above: `x` has at least two elements, the words read lie in the readable
        // pairs of rows; r6, r7 (reserved by Rust) are saved and restored on the stack, the
        // stride is kept there too.
        unsafe {
            core::arch::asm!(
                "push {{r6, r7}}",
                "push {{r3}}",
                "push {{r4}}",
                "ldm r3, {{r4, r5, r6, r7, r8, r9, r10, r11}}",
                "2:",
                "ldrsb r3, [r0], #1",
                "ldrsb r12, [r0], #1",
                // pkhbt r12, r3, r12, lsl #16 (the DSP instructions are spelled as their
                // encodings: not every assembler configuration for these targets enables them)
                ".inst.w 0xEAC34C0C",
                dsp_pair!(0, "0xFB23440C", "0xFB23550C"),
                dsp_pair!(4, "0xFB23660C", "0xFB23770C"),
                dsp_pair!(8, "0xFB23880C", "0xFB23990C"),
                dsp_pair!(12, "0xFB23AA0C", "0xFB23BB0C"),
                "ldr r3, [sp, #0]",
                "add r1, r3",
                "cmp r0, r2",
                "bne 2b",
                "add sp, #4",
                "pop {{r3}}",
                "stm r3, {{r4, r5, r6, r7, r8, r9, r10, r11}}",
                "pop {{r6, r7}}",
                inout("r0") x.as_ptr() => _,
                inout("r1") u => _,
                in("r2") x.as_ptr().add(x.len()),
                inout("r3") acc.as_mut_ptr() => _,
                inout("r4") stride => _,
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
    unsafe { columns(x, u, stride, base) }
}

/// Writes sums as i32 bits.
#[inline(always)]
fn store(out: &mut [f32], sums: &[i32]) {
    for (o, &s) in out.iter_mut().zip(sums) {
        *o = f32::from_bits(s as u32);
    }
}

/// The sums of output channels `c..c + TILE` (or to the end) of a paired `k × n` matrix at
/// `u` for the input `x` (`k` of them, even), plus `base`.
#[inline(always)]
fn channels(out: &mut [f32], x: &[i8], u: &[u8], n: usize, c: usize, base: i32) {
    let stride = pair_row(n);
    if c + TILE <= n {
        // SAFETY: channels c..c+TILE < n of every pair of rows of the k × n matrix, which
        // the callers check `u` holds.
        store(out, &unsafe { tile(x, u.as_ptr().add((c / 2) * 4), stride, base) });
        return;
    }
    // Fewer than a tile: one channel at a time.
    for (l, o) in out.iter_mut().enumerate() {
        let cc = c + l;
        let at = (cc / 2) * 4 + cc % 2;
        assert!(u.len() >= at + (x.len() / 2).saturating_sub(1) * stride + 3 || x.is_empty());
        // SAFETY: pair row `i < x.len() / 2` of channel `cc` is at `at + i·stride` (+2 for the
        // second input), inside `u` (asserted).
        *o = f32::from_bits((unsafe { one_channel(x, u.as_ptr().add(at), stride) } + base) as u32);
    }
}

/// `Σ_p x[p]·u(p, c)` for one channel whose first pair-row byte is at `u` (`x.len()` even):
/// on ARMv6-M a loop in assembly (12 instructions per two multiply-accumulates), elsewhere
/// portable.
///
/// # Safety
/// Bytes `u[i·stride]` and `u[i·stride + 2]` are readable for every `i < x.len() / 2`.
#[inline(always)]
unsafe fn one_channel(x: &[i8], u: *const u8, stride: usize) -> i32 {
    #[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
    if !x.is_empty() {
        let acc: i32;
        // SAFETY: the reads stay inside the bytes the contract makes readable; only the
        // declared registers are written.
        unsafe {
            core::arch::asm!(
                "movs {acc}, #0",
                "2:",
                "ldrsb {t}, [{end}, {i}]",
                "ldrb {w}, [{u}, #0]",
                "muls {w}, {t}, {w}",
                "adds {acc}, {acc}, {w}",
                "adds {i}, {i}, #1",
                "ldrsb {t}, [{end}, {i}]",
                "ldrb {w}, [{u}, #2]",
                "muls {w}, {t}, {w}",
                "adds {acc}, {acc}, {w}",
                "adds {u}, {u}, {stride}",
                "adds {i}, {i}, #1",
                "bne 2b",
                end = in(reg) x.as_ptr().add(x.len()),
                i = inout(reg) (x.len() as isize).wrapping_neg() => _,
                u = inout(reg) u => _,
                stride = in(reg) stride,
                t = out(reg) _,
                w = out(reg) _,
                acc = out(reg) acc,
                options(nostack, readonly),
            );
        }
        return acc;
    }
    let mut acc = 0i32;
    let mut row = u;
    for xp in x.chunks_exact(2) {
        // SAFETY: this pair's two bytes (contract).
        let (w0, w1) = unsafe { (*row, *row.add(2)) };
        acc += i32::from(xp[0]) * i32::from(w0) + i32::from(xp[1]) * i32::from(w1);
        row = row.wrapping_add(stride);
    }
    acc
}

/// A dense layer: `acc[j] = Σ_p x[p]·(u(p, j) − 128)` for `j < n = acc.len()`, as i32 bits,
/// with `u` the paired `k × n` matrix ([`pair_index`]).
///
/// Panics if `u` is shorter than [`pair_len`]`(x.len(), n)`.
pub fn dense(acc: &mut [f32], x: &[i8], u: &[u8]) {
    let (k, n) = (x.len(), acc.len());
    assert!(u.len() >= pair_len(k, n));
    let base = -OFFSET * x.iter().map(|&v| i32::from(v)).sum::<i32>();
    // An odd last input goes through the portable loop after the even part.
    let even = k & !1;
    for (c, out) in (0..n).step_by(TILE).zip(acc.chunks_mut(TILE)) {
        channels(out, &x[..even], u, n, c, base);
        if even < k {
            for (l, o) in out.iter_mut().enumerate() {
                let s = i32::from(x[even]) * i32::from(u[pair_index(even, c + l, n)]);
                *o = f32::from_bits((o.to_bits() as i32 + s) as u32);
            }
        }
    }
}

/// Where the q8 layout of a 4×4, stride-2 transposed convolution (`c_in` input channels,
/// `c_out` output channels) keeps the weight that the layer's own layout
/// (`c_in × c_out × 4 × 4`, [`crate::layers::conv_transpose2d`]) has at `spec`: per output
/// parity `(ry, rx)` (which picks kernel rows `ry, ry + 2` and columns `rx, rx + 2`) the
/// paired `taps × c_out` matrix, tap `4·ci + 2i + j` being row `ry + 2i`, column `rx + 2j` of
/// input channel `ci`.
pub const fn convt4_index(spec: usize, c_in: usize, c_out: usize) -> usize {
    let (kx, ky) = (spec % 4, (spec / 4) % 4);
    let co = (spec / 16) % c_out;
    let ci = spec / (16 * c_out);
    let parity = (ky % 2) * 2 + kx % 2;
    let tap = ci * 4 + (ky / 2) * 2 + kx / 2;
    parity * pair_len(4 * c_in, c_out) + pair_index(tap, co, c_out)
}

/// Bytes of a 4×4, stride-2 transposed convolution's weights in the q8 layout.
pub const fn convt4_len(c_in: usize, c_out: usize) -> usize {
    4 * pair_len(4 * c_in, c_out)
}

/// Whether [`conv_transpose_4x4`] runs a transposed convolution of geometry `g`.
pub(crate) fn is_convt4(g: &Geom) -> bool {
    g.k == 4 && g.s == 2 && 4 * g.cg <= MAX_TAPS
}

/// A 4×4, stride-2 transposed convolution of one sample ([`is_convt4`]): `acc` (`C_out × OH ×
/// OW`, as i32 bits) from `x` (`C_in × H × W`) and the weights `u` in the [`convt4_index`]
/// layout. Per output pixel the four input taps of every input channel are gathered into one
/// vector (zero where a tap falls outside the input), then every output channel is that
/// vector's dot product with its weights.
///
/// Panics if a slice is shorter than the geometry needs or `is_convt4(g)` does not hold.
pub(crate) fn conv_transpose_4x4(acc: &mut [f32], x: &[i8], u: &[u8], g: &Geom) {
    let (c_in, c_out) = (g.cg, g.ci);
    let (plane, grid) = (g.ih * g.iw, g.gh * g.gw);
    assert!(is_convt4(g) && acc.len() >= c_out * plane && x.len() >= c_in * grid);
    assert!(u.len() >= convt4_len(c_in, c_out));
    let taps = 4 * c_in;
    let block = pair_len(taps, c_out);
    let mut v = [0i8; MAX_TAPS];
    let mut sums = [0f32; TILE];
    // Output coordinates 2·pos − p and 2·pos − p + 1 (parities 0 and 1) read the same input
    // positions pos and pos − 1: gather once per such 2 × 2 block of output pixels.
    let block_of = |pos: usize, n_out: usize| {
        let first = (2 * pos).checked_sub(g.p);
        let second = (2 * pos + 1).checked_sub(g.p);
        [first, second].map(|o| o.filter(|&o| o < n_out))
    };
    let valid =
        |pos: usize, n: usize| [(pos < n).then_some(pos), pos.checked_sub(1).filter(|&q| q < n)];
    for py in 0..=g.gh {
        let oys = block_of(py, g.ih);
        if oys == [None, None] {
            continue;
        }
        let ys = valid(py, g.gh);
        for px in 0..=g.gw {
            let oxs = block_of(px, g.iw);
            if oxs == [None, None] {
                continue;
            }
            let xs = valid(px, g.gw);
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
            for (ry, oy) in oys.iter().enumerate() {
                let Some(oy) = *oy else { continue };
                for (rx, ox) in oxs.iter().enumerate() {
                    let Some(ox) = *ox else { continue };
                    // oy + p = 2·py + ry: the parity is the place in the block.
                    let par = ry * 2 + rx;
                    let w = &u[par * block..(par + 1) * block];
                    let pixel = oy * g.iw + ox;
                    for c in (0..c_out).step_by(TILE) {
                        let out = &mut sums[..TILE.min(c_out - c)];
                        channels(out, &v[..taps], w, c_out, c, -OFFSET * sum);
                        for (l, &s) in out.iter().enumerate() {
                            acc[(c + l) * plane + pixel] = s;
                        }
                    }
                }
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
        for (k, n) in [(1, 1), (3, 7), (42, 1568), (17, 9), (192, 784), (2, 8), (6, 17)] {
            let (x, u) = (inputs(&mut r, k), bytes(&mut r, k * n));
            // The paired layout, padding bytes random too (they must not count).
            let mut paired = bytes(&mut r, pair_len(k, n));
            for p in 0..k {
                for c in 0..n {
                    paired[pair_index(p, c, n)] = u[p * n + c];
                }
            }
            let mut got = vec![f32::NAN; n];
            dense(&mut got, &x, &paired);
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
            let mut permuted = bytes(&mut r, convt4_len(ci, co));
            for (i, &b) in u.iter().enumerate() {
                permuted[convt4_index(i, ci, co)] = b;
            }
            let plane = g.ih * g.iw;
            let (mut got, mut want) = (vec![f32::NAN; co * plane], vec![f32::NAN; co * plane]);
            conv_transpose_4x4(&mut got, &x, &permuted, &g);
            reference::conv_transpose(&mut want, &x, &u, &g);
            assert_eq!(bits(&got), bits(&want), "{d:?}");
        }
        // The layout is one-to-one, and the scatter is the int8 encoding's kernel.
        let d = ConvDims { in_c: 3, in_h: 5, in_w: 4, out_c: 2, k: 3, stride: 2, pad: 1 };
        let g = Geom::transpose(&d).unwrap();
        let (x, u) = (inputs(&mut r, 3 * 5 * 4), bytes(&mut r, 9 * 3 * 2));
        let signed: Vec<i8> = u.iter().map(|&b| (i32::from(b) - OFFSET) as i8).collect();
        let (mut a, mut b) = (vec![f32::NAN; g.img], vec![f32::NAN; g.img]);
        reference::conv_transpose(&mut a, &x, &u, &g);
        crate::kernels::int8::conv_transpose2d_i8_sums(&mut b, &x, &signed, &g);
        assert_eq!(bits(&a), bits(&b));
        let mut seen = vec![false; convt4_len(6, 5)];
        for i in 0..16 * 6 * 5 {
            let j = convt4_index(i, 6, 5);
            assert!(!seen[j]);
            seen[j] = true;
        }
    }
}
