//! Splitting element-wise work over an [`Exec`]: disjoint ranges of one output slice.
//!
//! Element-wise functions give the same bits however the slice is split, so results never
//! depend on the thread count.

use super::Exec;
use super::split::MAX_TASKS;
#[cfg(target_has_atomic = "8")]
use super::split::{OutPtr, split_ranges};

/// Slices shorter than this run as one task: spreading them costs more than it saves.
pub const PAR_MIN_ELEMS: usize = 32 * 1024;

/// Calls `f(offset, chunk)` for consecutive, disjoint chunks covering `out`, as tasks of `exec`
/// (one task for slices shorter than [`PAR_MIN_ELEMS`]).
pub fn for_each_chunk(exec: &dyn Exec, out: &mut [f32], f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    for_each_chunk_min(exec, out, PAR_MIN_ELEMS, f);
}

/// [`for_each_chunk`] with chunks of at least `min_elems` elements (at least one task).
pub fn for_each_chunk_min(
    exec: &dyn Exec, out: &mut [f32], min_elems: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let tasks = exec.threads().clamp(1, MAX_TASKS).min(out.len() / min_elems.max(1)).max(1);
    let len = out.len();
    // Elements as "samples" of one value each: the same consecutive ranges, handed out once.
    for_each_sample(exec, len, tasks, [(out, 1)], (&mut [], 0), &|_, range, [part]| {
        f(range.start, part);
    });
}

/// Calls `f(start, end)` for at most `tasks` consecutive, disjoint ranges covering `0..n`, as
/// tasks of `exec` (one call covering everything when `tasks <= 1`). The caller's writes must
/// stay inside the part of its outputs that belongs to the range it is handed.
pub fn for_each_range(exec: &dyn Exec, n: usize, tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
    let tasks = tasks.clamp(1, MAX_TASKS).min(n.max(1));
    #[cfg(target_has_atomic = "8")]
    if tasks > 1 {
        split_ranges(exec, n, n.div_ceil(tasks), f);
        return;
    }
    let _ = (exec, tasks);
    f(0, n);
}

/// Tasks worth creating for element-wise work over `elems` elements split into `parts`
/// independent parts: one per thread of `exec` (at most `parts`) from [`PAR_MIN_ELEMS`] on.
pub fn elem_tasks(exec: &dyn Exec, elems: usize, parts: usize) -> usize {
    if elems < PAR_MIN_ELEMS { 1 } else { exec.threads().clamp(1, MAX_TASKS).min(parts.max(1)) }
}

/// How many tasks a loop over `n` samples of `flops_per_sample` each is worth: one per thread
/// of `exec` (at most `n`) once the whole loop reaches the size at which the matrix products
/// start splitting, otherwise one.
pub fn sample_tasks(exec: &dyn Exec, n: usize, flops_per_sample: usize) -> usize {
    let threads = exec.threads().clamp(1, MAX_TASKS);
    if threads == 1 || n.saturating_mul(flops_per_sample) < super::gemm::PAR_MIN_FLOPS {
        1
    } else {
        threads.min(n)
    }
}

/// The body of [`for_each_sample`]: `(slot, samples, parts)`.
pub type SampleFn<'f, const B: usize> =
    dyn Fn(&mut [f32], core::ops::Range<usize>, [&mut [f32]; B]) + Sync + 'f;

/// Runs `f(slot, samples, parts)` over at most `tasks` consecutive ranges of the samples
/// `0..n`, as tasks of `exec`. `parts[i]` is the part of `bufs[i].0` that belongs to those
/// samples (`bufs[i].1` elements per sample); `slot` is the task's own `slot_len` elements of
/// `slots` (room for `tasks` of them is needed). Every sample is handled by exactly one task, so
/// a loop whose samples are independent gives the same bits for any `exec` and `tasks`.
///
/// Panics if a buffer is shorter than `n` samples or `slots` than `tasks` slots.
pub fn for_each_sample<const B: usize>(
    exec: &dyn Exec, n: usize, tasks: usize, bufs: [(&mut [f32], usize); B],
    slots: (&mut [f32], usize), f: &SampleFn<'_, B>,
) {
    for_each_sample_aligned(exec, n, tasks, 1, bufs, slots, f);
}

/// [`for_each_sample`] with every range but the last a multiple of `align` samples long, so
/// each starts at a multiple of `align` (ranges of whole groups of samples).
pub fn for_each_sample_aligned<const B: usize>(
    exec: &dyn Exec, n: usize, tasks: usize, align: usize, bufs: [(&mut [f32], usize); B],
    (slots, slot_len): (&mut [f32], usize), f: &SampleFn<'_, B>,
) {
    let align = align.max(1);
    let tasks = tasks.clamp(1, MAX_TASKS).min(n.div_ceil(align).max(1));
    for (buf, per) in &bufs {
        assert!(buf.len() >= n * per, "a buffer is shorter than its samples");
    }
    assert!(slots.len() >= tasks * slot_len, "too few slots for the tasks");
    #[cfg(target_has_atomic = "8")]
    if tasks > 1 {
        let chunk = n.div_ceil(align).div_ceil(tasks) * align;
        let pers = bufs.each_ref().map(|b| b.1);
        let ptrs = bufs.map(|(b, _)| OutPtr::new(b));
        let slot_ptr = OutPtr::new(slots);
        split_ranges(exec, n, chunk, &|s0, s1| {
            let t = s0 / chunk;
            // SAFETY: `split_ranges` hands out each sample range once and the ranges are
            // disjoint, so these parts (and slot `t`, one per range) belong to this task alone
            // (see `OutPtr`); every buffer was checked to hold `n` samples and `slots` to hold
            // `tasks` slots, and all stay mutably borrowed until `split_ranges` returns.
            let parts =
                core::array::from_fn(|i| unsafe { ptrs[i].range(s0 * pers[i], s1 * pers[i]) });
            // SAFETY: as above; slot `t` belongs to the range starting at `t·chunk` alone.
            let slot = unsafe { slot_ptr.range(t * slot_len, (t + 1) * slot_len) };
            f(slot, s0..s1, parts);
        });
        return;
    }
    let _ = exec;
    let parts = bufs.map(|(b, per)| &mut b[..n * per]);
    f(&mut slots[..slot_len], 0..n, parts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Serial;

    /// An executor that claims many threads and runs tasks in reverse, some twice.
    struct Odd;
    impl Exec for Odd {
        fn threads(&self) -> usize {
            5
        }
        fn for_each(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
            for t in (0..tasks).rev() {
                f(t);
                f(t);
            }
        }
    }

    #[test]
    fn chunks_cover_the_slice_once_whatever_the_executor() {
        for exec in [&Serial as &dyn Exec, &Odd] {
            let mut v = std::vec![0.0f32; 5 * PAR_MIN_ELEMS + 3];
            for_each_chunk(exec, &mut v, &|off, c| {
                for (i, x) in c.iter_mut().enumerate() {
                    *x += (off + i) as f32;
                }
            });
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32));
        }
    }
}
