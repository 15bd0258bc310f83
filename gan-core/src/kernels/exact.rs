//! The exact (fixed-order) kernel: the driver that splits output columns over threads, and the
//! portable tiles. The x86-64 tiles are in [`super::x86`], the ARM inner loop in `arm`.

#[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
use super::arm;
#[cfg(target_has_atomic = "8")]
use super::split::split_ranges;
use super::split::{MAX_TASKS, OutPtr};
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{ExactIsa, Exec, len_of};

/// Bounds checks, then the product as one task, or split by output columns over `exec` when it
/// is large enough (see [`matmul_exact_with`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn exact(
    isa: ExactIsa, c: &mut [f32], a: &[f32], b: &[f32], bias: &[f32], m: usize, k: usize, n: usize,
    exec: &dyn Exec,
) {
    assert!(c.len() >= len_of(m, n), "C is shorter than m×n");
    assert!(a.len() >= len_of(m, k), "A is shorter than m×k");
    assert!(b.len() >= len_of(k, n), "B is shorter than k×n");
    assert!(bias.len() >= n, "bias is shorter than n");
    if m == 0 || n == 0 {
        return;
    }
    let out = OutPtr::new(c);
    let threads = exec.threads().clamp(1, MAX_TASKS);
    let macs = m.saturating_mul(k).saturating_mul(n);
    let tasks = if threads == 1 || macs < PAR_MIN_EXACT_MACS {
        1
    } else {
        (threads * EXACT_TASKS_PER_THREAD).min(n.div_ceil(EXACT_CHUNK))
    };
    // Claiming tasks needs atomic read-modify-write; targets without it (ARMv6-M) have no
    // threads to spread the work over anyway.
    #[cfg(target_has_atomic = "8")]
    if tasks > 1 {
        let chunk = n.div_ceil(EXACT_CHUNK).div_ceil(tasks) * EXACT_CHUNK;
        // SAFETY: lengths checked above; each call gets a disjoint column range of `C` (see
        // `split_ranges`), which stays mutably borrowed until it returns.
        split_ranges(exec, n, chunk, &|j0, j1| unsafe {
            exact_part(isa, &out, a, b, bias, m, k, n, j0, j1);
        });
        return;
    }
    let _ = tasks;
    // SAFETY: lengths checked above; this call is the only user of `C`.
    unsafe { exact_part(isa, &out, a, b, bias, m, k, n, 0, n) };
}

/// Products with fewer multiply-adds than this run the exact kernel as one task.
pub(crate) const PAR_MIN_EXACT_MACS: usize = 1 << 16;

/// Tasks per thread for a split exact product: more, smaller blocks than threads, so that a
/// thread that starts late (descheduled, or still waking up) holds up little of the product; the
/// others claim the blocks it has not reached.
const EXACT_TASKS_PER_THREAD: usize = 4;

/// Columns per task block of the exact kernel (a multiple of every exact kernel's strip width).
const EXACT_CHUNK: usize = 32;

/// Output columns `[j0, j1)` of the exact product `C (m×n) = A (m×k) · B (k×n) + bias`.
///
/// # Safety
/// `out` points to `m·n` floats whose columns `[j0, j1)` nobody else accesses during the call;
/// `a` holds `m·k`, `b` `k·n` and `bias` `n` floats; `j0 < j1 ≤ n`.
#[allow(clippy::too_many_arguments)]
unsafe fn exact_part(
    isa: ExactIsa, out: &OutPtr, a: &[f32], b: &[f32], bias: &[f32], m: usize, k: usize, n: usize,
    j0: usize, j1: usize,
) {
    // SAFETY: column j0 of row 0 of C and B and bias[j0] are in bounds (j0 < n).
    let e = unsafe {
        Exact {
            c: out.ptr.add(j0),
            a: a.as_ptr(),
            b: b.as_ptr().add(j0),
            bias: bias.as_ptr().add(j0),
            m,
            k,
            n: j1 - j0,
            ld: n,
        }
    };
    match isa {
        // SAFETY: the `j1 − j0` columns from `e.c`/`e.b` with row stride `n` stay inside C and
        // B, which is `Exact`'s contract.
        ExactIsa::Portable => unsafe { exact_portable(&e) },
        // SAFETY: as above; `Avx` is only chosen after `has_avx`.
        #[cfg(target_arch = "x86_64")]
        ExactIsa::Avx => unsafe { x86::exact_avx(&e) },
        // SAFETY: as above; `Avx512` is only chosen after `has_avx512`.
        #[cfg(target_arch = "x86_64")]
        ExactIsa::Avx512 => unsafe { x86::exact_avx512(&e) },
    }
}

/// Operands of one exact product over `n` columns of `C` and `B` whose rows are `ld ≥ n`
/// floats apart: `c` reaches `C(i, j)` at `i·ld + j` for `i < m`, `j < n`, `b` reaches
/// `B(p, j)` at `p·ld + j` for `p < k`, `a` holds `m·k` and `bias` `n` floats; `c` aliases
/// none of the others. Every exact kernel takes its product in this form.
pub(crate) struct Exact {
    pub(crate) c: *mut f32,
    pub(crate) a: *const f32,
    pub(crate) b: *const f32,
    pub(crate) bias: *const f32,
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) ld: usize,
}

/// Portable exact kernel: one row at a time, 8 (then 4, then 1) columns per tile.
///
/// # Safety
/// `e` satisfies [`Exact`]'s contract.
pub(crate) unsafe fn exact_portable(e: &Exact) {
    let Exact { c, a, b, bias, m, k, n, ld } = *e;
    for i in 0..m {
        // SAFETY: (offsets)  row i of A and of C.
        let (arow, crow) = unsafe { (a.add(i * k), c.add(i * ld)) };
        let mut j = 0;
        while j + 8 <= n {
            // SAFETY: columns j..j+8 < n of row i; B columns j..j+8 exist in every row.
            unsafe { exact_cols::<8>(crow.add(j), arow, b.add(j), bias.add(j), k, ld) };
            j += 8;
        }
        while j + 4 <= n {
            // SAFETY: as above with 4 columns.
            unsafe { exact_cols::<4>(crow.add(j), arow, b.add(j), bias.add(j), k, ld) };
            j += 4;
        }
        while j < n {
            // SAFETY: as above with 1 column.
            unsafe { exact_cols::<1>(crow.add(j), arow, b.add(j), bias.add(j), k, ld) };
            j += 1;
        }
    }
}

/// `W` consecutive outputs of one row, each `((0 + a0·b0) + a1·b1 …) + bias`.
///
/// `b` points at `B(0, j)`, `arow` at `A(i, 0)`, `c` at `C(i, j)`, `bias` at `bias[j]`.
/// The summation is unrolled by 4 only to share loads and loop overhead: outputs stay
/// independent and `p` runs strictly in order.
///
/// # Safety
/// `arow[..k]`, `bias[..W]`, `c[..W]` and `b[p·ld .. p·ld + W]` for `p < k` are valid.
#[inline(always)]
unsafe fn exact_cols<const W: usize>(
    c: *mut f32, arow: *const f32, b: *const f32, bias: *const f32, k: usize, ld: usize,
) {
    let mut acc = [0.0f32; W];
    let mut bp = b;
    let mut p = 0;
    #[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
    if W == 8 && k >= 4 && ld >= 4 {
        let quads = k / 4;
        // SAFETY: W == 8, so `acc` is a `[f32; 8]`; rows p < 4·quads ≤ k of B and A are
        // readable (contract); ld ≥ 4 makes the stride at least 16 bytes.
        unsafe {
            let acc8 = &mut *(acc.as_mut_ptr() as *mut [f32; 8]);
            arm::mac8(acc8, arow, bp, ld * 4, quads);
        }
        p = 4 * quads;
        bp = bp.wrapping_add(p * ld);
    }
    while p + 4 <= k {
        // SAFETY: p + 4 ≤ k.
        let a4: [f32; 4] = unsafe { *(arow.add(p) as *const [f32; 4]) };
        for av in a4 {
            // SAFETY: B row p' < k, columns j..j+W.
            let bv: [f32; W] = unsafe { *(bp as *const [f32; W]) };
            for (s, &y) in acc.iter_mut().zip(&bv) {
                *s += av * y;
            }
            bp = bp.wrapping_add(ld);
        }
        p += 4;
    }
    while p < k {
        // SAFETY: p < k.
        let av = unsafe { *arow.add(p) };
        // SAFETY: as above.
        let bv: [f32; W] = unsafe { *(bp as *const [f32; W]) };
        for (s, &y) in acc.iter_mut().zip(&bv) {
            *s += av * y;
        }
        bp = bp.wrapping_add(ld);
        p += 1;
    }
    for (l, s) in acc.iter().enumerate() {
        // SAFETY: l < W.
        unsafe { *c.add(l) = *s + *bias.add(l) };
    }
}
