//! The int8 product behind [`crate::layers::dense::dense_forward_i8`]: one quantised input row
//! times an i8 weight matrix, summed in i32, scaled back to f32.
//!
//! Integer sums are exact in any order, so the tiling below is free to change per target; the
//! float steps after the sum (one multiply by `sx · s[j]`, one add of the bias) are fixed.

/// `out[j] = (Σ_p xq[p]·q[p·n + j]) as f32 · (sx · scales[j]) + bias[j]` for `j < n`, with
/// `n = out.len()` and `q` a `xq.len() × n` row-major matrix.
///
/// Panics if `q`, `scales` or `bias` is shorter than that (callers check lengths first).
pub fn matvec_i8(out: &mut [f32], xq: &[i8], q: &[i8], scales: &[f32], bias: &[f32], sx: f32) {
    let n = out.len();
    assert!(q.len() >= xq.len() * n && scales.len() >= n && bias.len() >= n);
    let mut j = 0;
    while j + TILE <= n {
        // SAFETY: columns j..j+TILE ≤ n of every row p < xq.len() of `q` (asserted above).
        let acc = unsafe { column_sums::<TILE>(xq, q.as_ptr().add(j), n) };
        finish(&mut out[j..j + TILE], &acc, &scales[j..], &bias[j..], sx);
        j += TILE;
    }
    while j < n {
        // SAFETY: as above with one column.
        let acc = unsafe { column_sums::<1>(xq, q.as_ptr().add(j), n) };
        finish(&mut out[j..j + 1], &acc, &scales[j..], &bias[j..], sx);
        j += 1;
    }
}

/// Columns summed together, so the accumulators stay in registers: few on ARMv6-M (eight low
/// registers; no compare-and-swap atomics is how its targets are told apart), more on
/// ARMv7E-M, a vector's worth elsewhere.
/// (Measured on the default generator in QEMU: 2, 3 and 4 columns give 6.26 M, 5.97 M and
/// 5.93 M instructions per digit on ARMv6-M; 4, 8 and 12 give 0.83 M, 0.75 M and 0.74 M on the
/// Cortex-M4F.)
#[cfg(all(target_arch = "arm", not(target_has_atomic = "32")))]
const TILE: usize = 4;
#[cfg(all(target_arch = "arm", target_has_atomic = "32"))]
const TILE: usize = 8;
#[cfg(not(target_arch = "arm"))]
const TILE: usize = 16;

/// `Σ_p xq[p]·q[p·ld + l]` for `l < W`, in i32.
///
/// # Safety
/// `q[p·ld .. p·ld + W]` is readable for every `p < xq.len()`.
#[inline(always)]
unsafe fn column_sums<const W: usize>(xq: &[i8], q: *const i8, ld: usize) -> [i32; W] {
    let mut acc = [0i32; W];
    let mut row = q;
    for &x in xq {
        let x = x as i32;
        for (l, a) in acc.iter_mut().enumerate() {
            // SAFETY: row p, column l < W (contract).
            *a += x * unsafe { *row.add(l) } as i32;
        }
        row = row.wrapping_add(ld);
    }
    acc
}

/// `out[l] = acc[l] as f32 · (sx · scales[l]) + bias[l]`.
#[inline(always)]
fn finish(out: &mut [f32], acc: &[i32], scales: &[f32], bias: &[f32], sx: f32) {
    for (((o, &a), &s), &b) in out.iter_mut().zip(acc).zip(scales).zip(bias) {
        *o = a as f32 * (sx * s) + b;
    }
}
