//! The all-integer encoding's products ([`crate::encoding::q8`]).
//!
//! Weights are stored as unsigned bytes offset by 128 (`u = w + 128`), so a product needs an
//! unsigned byte load with an immediate offset (ARMv6-M has no immediate form of the signed
//! load), a multiply and an add; the offset comes back out once per output:
//! `Σ x·w = Σ x·u − 128·Σ x`. The sums are exact integers, so every kernel here gives the same
//! bits as the plain loops in [`mod@reference`], whatever its order.
//!
//! A product `k × n` (inputs × output channels) is stored in **blocks of eight channels**
//! ([`pair_index`]): block `b` holds channels `8b .. 8b + 8` (the last block fewer, rounded
//! up to even) for every input, as consecutive **pair rows**. For inputs `p, p + 1` and
//! channels `c, c + 1` the four bytes `u[p][c], u[p][c+1], u[p+1][c], u[p+1][c+1]` form one
//! word, and a block's pair row is its channel pairs' words in order (16 bytes in a full
//! block), so a kernel walks one block from its start to its end. On ARMv6-M every channel's
//! byte of a pair row is at an immediate offset from one pointer; with the DSP extension
//! (Cortex-M4F, Cortex-M33) one post-incremented load fetches a channel pair's word, one
//! `UXTB16` gives a channel's two weights as halfwords and one `SMLAD` adds both of its
//! products. Inputs are widened to halfwords first (a dense layer's in chunks, a
//! convolution's when its taps are gathered), so that an input pair is one word too. Odd `k`
//! or `n` are padded with zero weights. Dense layers store their `in × out` matrix this way;
//! 4×4 transposed convolutions with stride 2 store, per output parity, the `taps × out` matrix
//! of one output pixel ([`convt4_index`]), so a pixel's input taps form one contiguous vector.

use crate::layers::conv2d::Geom;

/// The weight offset.
pub const OFFSET: i32 = 128;

/// Output channels of a full block, their accumulators kept in registers.
const TILE: usize = 8;

/// Longest widened input vector: the taps of [`conv_transpose_4x4`] (4 × input channels), a
/// chunk of a dense layer's inputs.
const MAX_TAPS: usize = 512;

/// Inputs widened to halfwords, word-aligned so that a pair of them is one aligned word.
#[repr(C, align(4))]
struct Wide([i16; MAX_TAPS]);

/// Where the blocked layout of a `k × n` matrix keeps element `(p, c)`.
#[inline(always)]
pub const fn pair_index(p: usize, c: usize, k: usize, n: usize) -> usize {
    let b = c / TILE;
    block_at(b, k) + (p / 2) * 2 * block_width(b, n) + (c % TILE / 2) * 4 + (p % 2) * 2 + c % 2
}

/// Where block `b` of a matrix of `k` inputs starts (every block before it is full).
#[inline(always)]
const fn block_at(b: usize, k: usize) -> usize {
    b * TILE * 2 * k.div_ceil(2)
}

/// Channels in block `b` of `n`, rounded up to even.
#[inline(always)]
const fn block_width(b: usize, n: usize) -> usize {
    let w = 2 * n.div_ceil(2) - b * TILE;
    if w < TILE { w } else { TILE }
}

/// Bytes of a `k × n` matrix in the blocked layout (`k` and `n` rounded up to even).
pub const fn pair_len(k: usize, n: usize) -> usize {
    k.div_ceil(2) * 2 * (2 * n.div_ceil(2))
}

/// `init[l] + Σ_p x[p]·u(p, l)` for the eight channels of a full block whose pair rows start
/// at `u`, in portable Rust (the definition the assembly tiles follow).
///
/// # Safety
/// `x.len()` is even and `u` is readable for its `x.len() / 2` pair rows of 16 bytes.
#[inline(always)]
unsafe fn columns(x: &[i16], u: *const u8, acc: &mut [i32; TILE]) {
    for (i, pair) in x.chunks_exact(2).enumerate() {
        let row = u.wrapping_add(i * 2 * TILE);
        for (l, a) in acc.iter_mut().enumerate() {
            let at = (l / 2) * 4 + l % 2;
            // SAFETY: both bytes of channel l < TILE in pair row i (contract).
            let (w0, w1) = unsafe { (*row.add(at), *row.add(at + 2)) };
            *a += i32::from(pair[0]) * i32::from(w0) + i32::from(pair[1]) * i32::from(w1);
        }
    }
}

/// The ARMv6-M tile's eight channels for one input (in `r3`): from the pair row at `r2`, bytes
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

/// One input of the ARMv6-M two-channel loop: the halfword `extract`ed into `r6`, times the
/// weight byte at `off` from `r1`, added into `r3`.
#[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
macro_rules! v6m_tap {
    ($extract:literal, $off:literal) => {
        concat!(
            $extract,
            "\n",
            "ldrb r7, [r1, #",
            $off,
            "]\n",
            "muls r7, r6, r7\n",
            "adds r3, r3, r7\n"
        )
    };
}

/// The DSP tile's two channels of the next word of the pair row at `r1` (post-incremented):
/// `UXTB16` unpacks each channel's two weights into halfwords and its `SMLAD` (the encodings
/// given) adds both products with the input pair in `r12`.
#[cfg(all(target_arch = "arm", target_has_atomic = "32", target_abi = "eabihf"))]
macro_rules! dsp_word {
    ($smlad_a:literal, $smlad_b:literal) => {
        concat!(
            "ldr lr, [r1], #4\n",
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

/// One input pair (the next word at `r0`, post-incremented, into `r12`) against a full pair
/// row: `smlad r4, r3, r12, r4` … `smlad r11, r3, r12, r11`.
#[cfg(all(target_arch = "arm", target_has_atomic = "32", target_abi = "eabihf"))]
macro_rules! dsp_row {
    () => {
        concat!(
            "ldr r12, [r0], #4\n",
            dsp_word!("0xFB23440C", "0xFB23550C"),
            dsp_word!("0xFB23660C", "0xFB23770C"),
            dsp_word!("0xFB23880C", "0xFB23990C"),
            dsp_word!("0xFB23AA0C", "0xFB23BB0C"),
        )
    };
}

/// [`columns`] in assembly where there is a kernel for the core:
/// - ARMv6-M (no atomics is how its targets are told apart): the eight accumulators, the
///   input value and the pointers in registers; per input one signed halfword load, then per
///   channel an unsigned byte load with an immediate offset, a multiply and an add: 54
///   instructions per two inputs × eight channels, 3.4 per multiply-accumulate;
/// - ARMv7E-M and ARMv8-M Mainline with an FPU (`eabihf`: Cortex-M4F, M7, M33, all with the
///   DSP extension): per input pair one word, per channel pair one word, two `UXTB16` and two
///   `SMLAD`, two pair rows per turn: 44 instructions per 32 multiply-accumulates, 1.4 each
///   (an odd last pair row after the loop).
///
/// # Safety
/// As [`columns`].
#[inline(always)]
unsafe fn tile(x: &[i16], u: *const u8, acc: &mut [i32; TILE]) {
    #[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
    if !x.is_empty() {
        // SAFETY: `x` has at least two elements; every byte read lies in the pair rows the
        // contract makes readable. The block saves and restores r6 and r7 (which Rust
        // reserves) on the stack, writes only `acc` and the registers it declares.
        unsafe {
            core::arch::asm!(
                "push {{r3, r6, r7}}",
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
                "ldrsh r3, [r0, r1]",
                v6m_lanes!(0),
                // The second: two bytes further.
                "adds r1, r1, #2",
                "ldrsh r3, [r0, r1]",
                v6m_lanes!(2),
                "adds r2, r2, #16",
                "adds r1, r1, #2",
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
                inout("r1") (2 * x.len() as isize).wrapping_neg() => _,
                inout("r2") u => _,
                inout("r3") acc.as_mut_ptr() => _,
                out("r4") _, out("r5") _, out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                out("r12") _,
            );
        }
        return;
    }
    #[cfg(all(target_arch = "arm", target_has_atomic = "32", target_abi = "eabihf"))]
    if !x.is_empty() {
        // Two pair rows per turn, then an odd last one.
        let both = x.len() & !3;
        // SAFETY: as above: the words read lie in the `x.len() / 2` readable pair rows and in
        // `x`; r6, r7 (reserved by Rust) are saved and restored on the stack, and so are the
        // pointer to `acc` and the end of `x` (r12 on entry).
        unsafe {
            core::arch::asm!(
                "push {{r6, r7}}",
                "push {{r3, r12}}",
                "ldm r3, {{r4, r5, r6, r7, r8, r9, r10, r11}}",
                "cmp r0, r2",
                "beq 3f",
                "2:",
                dsp_row!(),
                dsp_row!(),
                "cmp r0, r2",
                "bne 2b",
                "3:",
                "ldr r12, [sp, #4]",
                "cmp r0, r12",
                "beq 4f",
                dsp_row!(),
                "4:",
                "pop {{r3, r12}}",
                "stm r3, {{r4, r5, r6, r7, r8, r9, r10, r11}}",
                "pop {{r6, r7}}",
                inout("r0") x.as_ptr() => _,
                inout("r1") u => _,
                in("r2") x.as_ptr().add(both),
                inout("r3") acc.as_mut_ptr() => _,
                out("r4") _, out("r5") _, out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                inout("r12") x.as_ptr().add(x.len()) => _,
                out("lr") _,
            );
        }
        return;
    }
    // SAFETY: forwarded.
    unsafe { columns(x, u, acc) }
}

/// Four pair rows of a two-channel block against four input pairs per turn (`LDM` of four
/// words each) from `x` to `end`, weights from `block`, summed into `acc`: `UXTB16` of each
/// weight word (the encodings given: `ror #8` for the block's odd channel) and an `SMLAD`.
#[cfg(all(target_arch = "arm", target_has_atomic = "32", target_abi = "eabihf"))]
macro_rules! dsp_two_wide {
    ($x:expr, $block:expr, $end:expr, $acc:ident,
     $u10:literal, $u11:literal, $u12:literal, $ulr:literal) => {
        core::arch::asm!(
            concat!(
                "2:\n",
                "ldm r0!, {{r4, r5, r8, r9}}\n",
                "ldm r1!, {{r10, r11, r12, lr}}\n",
                ".inst.w ", $u10, "\n",
                ".inst.w 0xFB2A3304\n", // smlad r3, r10, r4, r3
                ".inst.w ", $u11, "\n",
                ".inst.w 0xFB2B3305\n", // smlad r3, r11, r5, r3
                ".inst.w ", $u12, "\n",
                ".inst.w 0xFB2C3308\n", // smlad r3, r12, r8, r3
                ".inst.w ", $ulr, "\n",
                ".inst.w 0xFB2E3309\n", // smlad r3, lr, r9, r3
                "cmp r0, r2\n",
                "bne 2b\n",
            ),
            inout("r0") $x => _,
            inout("r1") $block => _,
            in("r2") $end,
            inout("r3") 0i32 => $acc,
            out("r4") _, out("r5") _, out("r8") _, out("r9") _,
            out("r10") _, out("r11") _, out("r12") _, out("lr") _,
            options(nostack, readonly),
        )
    };
}

/// `Σ_p x[p]·u(p, c)` for channel `c` of a block `w` channels wide (`w` even) whose pair rows
/// start at `u`: on ARMv6-M a loop in assembly (12 instructions per two multiply-accumulates,
/// 20 per four for two-channel blocks);
/// with the DSP extension, for two-channel blocks (a layer with one or two output channels,
/// such as a grey-scale image's), four pair rows per `LDM` (12 instructions per eight);
/// elsewhere portable.
///
/// # Safety
/// `x.len()` is even, `c < w`, and `u` is readable for the `x.len() / 2` pair rows of `2·w`
/// bytes.
#[inline(always)]
unsafe fn one_channel(x: &[i16], u: *const u8, w: usize, c: usize) -> i32 {
    let stride = 2 * w;
    let u = u.wrapping_add((c / 2) * 4 + c % 2);
    #[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
    if w == 2 && x.len().is_multiple_of(4) && !x.is_empty() && (x.as_ptr() as usize) % 4 == 0 {
        // Two-channel blocks (pair rows of 4 bytes): four inputs per `LDM` of two words,
        // each halfword sign-extended in a register (20 instructions per four
        // multiply-accumulates instead of 24).
        let acc: i32;
        // SAFETY: the `x.len() / 2` pair rows read lie in the readable ones, the inputs in `x`
        // (word-aligned, checked, a multiple of four). r6 and r7 (reserved by Rust) are saved
        // and restored on the stack; only the declared registers are written.
        unsafe {
            core::arch::asm!(
                "push {{r6, r7}}",
                "movs r3, #0",
                "2:",
                "ldm r0!, {{r4, r5}}",
                v6m_tap!("sxth r6, r4", 0),
                v6m_tap!("asrs r6, r4, #16", 2),
                v6m_tap!("sxth r6, r5", 4),
                v6m_tap!("asrs r6, r5, #16", 6),
                "adds r1, r1, #8",
                "cmp r0, r2",
                "bne 2b",
                "pop {{r6, r7}}",
                inout("r0") x.as_ptr() => _, inout("r1") u => _, in("r2") x.as_ptr().add(x.len()),
                out("r3") acc, out("r4") _, out("r5") _,
            );
        }
        return acc;
    }
    #[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
    if !x.is_empty() {
        let acc: i32;
        // SAFETY: the reads stay inside the bytes the contract makes readable; only the
        // declared registers are written.
        unsafe {
            core::arch::asm!(
                "movs {acc}, #0",
                "2:",
                "ldrsh {t}, [{end}, {i}]",
                "ldrb {w}, [{u}, #0]",
                "muls {w}, {t}, {w}",
                "adds {acc}, {acc}, {w}",
                "adds {i}, {i}, #2",
                "ldrsh {t}, [{end}, {i}]",
                "ldrb {w}, [{u}, #2]",
                "muls {w}, {t}, {w}",
                "adds {acc}, {acc}, {w}",
                "adds {u}, {u}, {stride}",
                "adds {i}, {i}, #2",
                "bne 2b",
                end = in(reg) x.as_ptr().add(x.len()),
                i = inout(reg) (2 * x.len() as isize).wrapping_neg() => _,
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
    #[cfg(all(target_arch = "arm", target_has_atomic = "32", target_abi = "eabihf"))]
    // SAFETY: forwarded.
    let (mut acc, done) = unsafe { two_wide(x, u, w, c) };
    #[cfg(not(all(target_arch = "arm", target_has_atomic = "32", target_abi = "eabihf")))]
    let (mut acc, done) = (0i32, 0usize);
    let mut row = u.wrapping_add(done / 2 * stride);
    for xp in x[done..].chunks_exact(2) {
        // SAFETY: this pair row's two bytes of the channel (contract).
        let (w0, w1) = unsafe { (*row, *row.add(2)) };
        acc += i32::from(xp[0]) * i32::from(w0) + i32::from(xp[1]) * i32::from(w1);
        row = row.wrapping_add(stride);
    }
    acc
}

/// The DSP part of [`one_channel`] for two-channel blocks: the sum over the first inputs, a
/// multiple of eight, four pair rows per `LDM` (12 instructions per eight multiply-accumulates),
/// and how many inputs that was (none when the block is wider or the words are not aligned).
///
/// # Safety
/// As [`one_channel`].
#[cfg(all(target_arch = "arm", target_has_atomic = "32", target_abi = "eabihf"))]
#[inline(always)]
unsafe fn two_wide(x: &[i16], u: *const u8, w: usize, c: usize) -> (i32, usize) {
    let mut acc = 0i32;
    let mut done = 0;
    if w == 2 && x.len() >= 8 {
        // The block starts at `u − c` (w = 2: c is 0 or 1); `LDM` needs its words aligned.
        let (x_end, block) = (x.len() & !7, u.wrapping_sub(c));
        if (x.as_ptr() as usize | block as usize) % 4 == 0 {
            done = x_end;
            // SAFETY: the `x_end / 2` pair rows of 4 bytes read lie in the readable ones, the
            // `x_end` inputs in `x`; both are word-aligned (checked). Only the declared
            // registers are written.
            unsafe {
                let (xs, end) = (x.as_ptr(), x.as_ptr().add(x_end));
                if c == 0 {
                    dsp_two_wide!(
                        xs,
                        block,
                        end,
                        acc,
                        "0xFA3FFA8A",
                        "0xFA3FFB8B",
                        "0xFA3FFC8C",
                        "0xFA3FFE8E"
                    );
                } else {
                    dsp_two_wide!(
                        xs,
                        block,
                        end,
                        acc,
                        "0xFA3FFA9A",
                        "0xFA3FFB9B",
                        "0xFA3FFC9C",
                        "0xFA3FFE9E"
                    );
                }
            }
        }
    }
    (acc, done)
}

/// Adds `Σ_p x[p]·u(2·row0 + p, c)` to `init(c)` for every channel `c < n = out.len()` of the
/// blocked `k × n` matrix `u` and stores it (as i32 bits) in `out[c]`: `x` (even length) is the
/// part of a dense layer's input that starts at pair row `row0`. `init` is `base` for every
/// channel, or, without one, what `out` holds.
///
/// Panics if `x` does not fit the matrix or `u` is too short.
#[inline(always)]
fn accumulate(out: &mut [f32], x: &[i16], u: &[u8], k: usize, row0: usize, base: Option<i32>) {
    let (pairs, n) = (k.div_ceil(2), out.len());
    assert!(x.len().is_multiple_of(2) && row0 + x.len() / 2 <= pairs && u.len() >= pair_len(k, n));
    for (b, out) in out.chunks_mut(TILE).enumerate() {
        let w = block_width(b, n);
        // The block's last channel may be padding (n odd): `out` holds the real ones.
        let mut sums = [0i32; TILE];
        for (s, o) in sums.iter_mut().zip(out.iter()) {
            *s = base.unwrap_or(o.to_bits() as i32);
        }
        // Block b's pair rows from row0: inside the matrix (asserted above), x.len() / 2 of
        // them, 2·w bytes each.
        let rows = u[block_at(b, k) + row0 * 2 * w..].as_ptr();
        if w == TILE {
            // SAFETY: the rows just described, 16 bytes each.
            unsafe { tile(x, rows, &mut sums) };
        } else {
            for (l, s) in sums[..out.len()].iter_mut().enumerate() {
                // SAFETY: the rows just described; channel l < out.len() <= w.
                *s += unsafe { one_channel(x, rows, w, l) };
            }
        }
        for (o, &s) in out.iter_mut().zip(&sums) {
            *o = f32::from_bits(s as u32);
        }
    }
}

/// Every output channel of one pixel: `out[c·step] = base + Σ_p x[p]·u(p, c)` (as i32 bits)
/// for `c < n`, `u` the blocked `x.len() × n` matrix: [`accumulate`] for one whole input
/// vector and one base, without its generality (the transposed convolution's inner loop).
///
/// # Safety
/// `x.len()` is even, `u` is readable for [`pair_len`]`(x.len(), n)` bytes and `out` writable
/// at `c·step` for every `c < n`.
#[inline(always)]
unsafe fn pixel(out: *mut f32, step: usize, x: &[i16], u: *const u8, n: usize, base: i32) {
    // Bytes of a full block: x.len() / 2 pair rows of 16.
    let blk = TILE * x.len();
    let full = n / TILE;
    for b in 0..full {
        // SAFETY: block b lies in the matrix; channels below n (contract).
        unsafe {
            let mut sums = [base; TILE];
            tile(x, u.add(b * blk), &mut sums);
            for (l, &s) in sums.iter().enumerate() {
                *out.add((b * TILE + l) * step) = f32::from_bits(s as u32);
            }
        }
    }
    let (c0, w) = (full * TILE, block_width(full, n));
    if c0 == n {
        return;
    }
    // SAFETY: as above, for the last block (w channels wide, n − c0 of them real).
    unsafe {
        let rows = u.add(full * blk);
        if w == TILE {
            let mut sums = [base; TILE];
            tile(x, rows, &mut sums);
            for (l, &s) in sums[..n - c0].iter().enumerate() {
                *out.add((c0 + l) * step) = f32::from_bits(s as u32);
            }
        } else {
            for l in 0..n - c0 {
                let s = base + one_channel(x, rows, w, l);
                *out.add((c0 + l) * step) = f32::from_bits(s as u32);
            }
        }
    }
}

/// A dense layer: `acc[j] = Σ_p x[p]·(u(p, j) − 128)` for `j < n = acc.len()`, as i32 bits,
/// with `u` the blocked `k × n` matrix ([`pair_index`]).
///
/// Panics if `u` is shorter than [`pair_len`]`(x.len(), n)`.
pub fn dense(acc: &mut [f32], x: &[i8], u: &[u8]) {
    let (k, n) = (x.len(), acc.len());
    assert!(u.len() >= pair_len(k, n));
    let base = -OFFSET * x.iter().map(|&v| i32::from(v)).sum::<i32>();
    if x.is_empty() {
        acc.fill(f32::from_bits(0));
    }
    let mut wide = Wide([0; MAX_TAPS]);
    for (i, chunk) in x.chunks(MAX_TAPS).enumerate() {
        for (d, &s) in wide.0.iter_mut().zip(chunk) {
            *d = i16::from(s);
        }
        // An odd last input meets the zero-weight padding row with a zero.
        let len = chunk.len().next_multiple_of(2);
        wide.0[chunk.len()..len].fill(0);
        let first = (i == 0).then_some(base);
        accumulate(acc, &wide.0[..len], u, k, i * MAX_TAPS / 2, first);
    }
}

/// Where the q8 layout of a 4×4, stride-2 transposed convolution (`c_in` input channels,
/// `c_out` output channels) keeps the weight that the layer's own layout
/// (`c_in × c_out × 4 × 4`, [`crate::layers::conv_transpose2d`]) has at `spec`: per output
/// parity `(ry, rx)` (which picks kernel rows `ry, ry + 2` and columns `rx, rx + 2`) the
/// blocked `taps × c_out` matrix, tap `4·ci + 2i + j` being row `ry + 2i`, column `rx + 2j` of
/// input channel `ci`.
pub const fn convt4_index(spec: usize, c_in: usize, c_out: usize) -> usize {
    let (kx, ky) = (spec % 4, (spec / 4) % 4);
    let co = (spec / 16) % c_out;
    let ci = spec / (16 * c_out);
    let parity = (ky % 2) * 2 + kx % 2;
    let tap = ci * 4 + (ky / 2) * 2 + kx / 2;
    parity * pair_len(4 * c_in, c_out) + pair_index(tap, co, 4 * c_in, c_out)
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
/// layout. Per 2 × 2 block of output pixels the four input taps of every input channel are
/// gathered into one vector of halfwords (zero where a tap falls outside the input), then
/// every output channel of each of the four pixels is that vector's dot product with its
/// parity's weights.
///
/// Panics if a slice is shorter than the geometry needs or `is_convt4(g)` does not hold.
pub(crate) fn conv_transpose_4x4(acc: &mut [f32], x: &[i8], u: &[u8], g: &Geom) {
    let (c_in, c_out) = (g.cg, g.ci);
    let (plane, grid) = (g.ih * g.iw, g.gh * g.gw);
    assert!(is_convt4(g) && acc.len() >= c_out * plane && x.len() >= c_in * grid);
    assert!(u.len() >= convt4_len(c_in, c_out));
    let taps = 4 * c_in;
    let block = pair_len(taps, c_out);
    let mut v = Wide([0; MAX_TAPS]);
    let (acc_at, u_at) = (acc.as_mut_ptr(), u.as_ptr());
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
            let vt = &mut v.0[..taps];
            if let ([Some(y), Some(_)], [Some(xx), Some(_)]) = (ys, xs) {
                // Inside: the four taps are the input at (y, x), (y, x − 1), (y − 1, x) and
                // (y − 1, x − 1).
                let (at, row) = (y * g.gw + xx, g.gw);
                assert!(at > row && at < grid);
                for (ci, vc) in vt.chunks_exact_mut(4).enumerate() {
                    // SAFETY: ci·grid + at − row − 1 >= 0 and ci·grid + at < c_in·grid <=
                    // x.len() (asserted).
                    let t = unsafe {
                        let p = x.as_ptr().add(ci * grid + at);
                        [*p, *p.sub(1), *p.sub(row), *p.sub(row + 1)]
                    };
                    let t = t.map(i16::from);
                    vc.copy_from_slice(&t);
                    sum += i32::from(t[0] + t[1] + t[2] + t[3]);
                }
            } else {
                // At an edge: zeros, then the taps that fall inside.
                vt.fill(0);
                for t in 0..4 {
                    let (Some(y), Some(xx)) = (ys[t >> 1], xs[t & 1]) else { continue };
                    let at = y * g.gw + xx;
                    for (vc, xc) in vt.chunks_exact_mut(4).zip(x.chunks_exact(grid)) {
                        vc[t] = i16::from(xc[at]);
                        sum += i32::from(xc[at]);
                    }
                }
            }
            // The block's output pixels, each with its parity's weights (oy + p = 2·py + ry:
            // the parity is the place in the block).
            let x_taps = &v.0[..taps];
            let emit = |par: usize, oy: usize, ox: usize| {
                // SAFETY: oy < OH and ox < OW (block_of), so every channel's pixel is inside
                // `acc` (c_out planes, asserted); the parity's taps × c_out matrix is inside
                // `u` (asserted); `taps` is even.
                unsafe {
                    let out = acc_at.add(oy * g.iw + ox);
                    pixel(out, plane, x_taps, u_at.add(par * block), c_out, -OFFSET * sum);
                }
            };
            for (ry, oy) in oys.iter().enumerate() {
                let Some(oy) = *oy else { continue };
                if let Some(ox) = oxs[0] {
                    emit(2 * ry, oy, ox);
                }
                if let Some(ox) = oxs[1] {
                    emit(2 * ry + 1, oy, ox);
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
        for (k, n) in
            [(1, 1), (3, 7), (42, 1568), (17, 9), (192, 784), (2, 8), (6, 17), (1100, 11), (513, 2)]
        {
            let (x, u) = (inputs(&mut r, k), bytes(&mut r, k * n));
            // The blocked layout, padding bytes random too (they must not count).
            let mut paired = bytes(&mut r, pair_len(k, n));
            for p in 0..k {
                for c in 0..n {
                    paired[pair_index(p, c, k, n)] = u[p * n + c];
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
