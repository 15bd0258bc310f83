//! Splitting element-wise work over an [`Exec`]: disjoint ranges of one output slice.
//!
//! Element-wise functions give the same bits however the slice is split, so results never
//! depend on the thread count.

use crate::kernels::Exec;

/// Slices shorter than this run as one task: spreading them costs more than it saves.
pub const PAR_MIN_ELEMS: usize = 32 * 1024;
const MAX_TASKS: usize = 64;

/// Calls `f(offset, chunk)` for consecutive, disjoint chunks covering `out`, as tasks of `exec`
/// (one task for slices shorter than [`PAR_MIN_ELEMS`]).
pub fn for_each_chunk(exec: &dyn Exec, out: &mut [f32], f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    for_each_chunk_min(exec, out, PAR_MIN_ELEMS, f);
}

/// [`for_each_chunk`] with chunks of at least `min_elems` elements (at least one task).
pub fn for_each_chunk_min(
    exec: &dyn Exec,
    out: &mut [f32],
    min_elems: usize,
    f: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let tasks = exec
        .threads()
        .clamp(1, MAX_TASKS)
        .min(out.len() / min_elems.max(1))
        .max(1);
    #[cfg(target_has_atomic = "8")]
    if tasks > 1 {
        split(exec, out, tasks, f);
        return;
    }
    let _ = (exec, tasks);
    f(0, out);
}

#[cfg(target_has_atomic = "8")]
fn split(exec: &dyn Exec, out: &mut [f32], tasks: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    use core::sync::atomic::{AtomicBool, Ordering};

    /// SAFETY argument: built from a `&mut [f32]` held for the whole call; task `t` touches only
    /// `[t·chunk, (t+1)·chunk)`, the ranges are disjoint, and a claim flag per task lets each
    /// range be handed out once even if an `Exec` calls `f(t)` twice. No element is reached by
    /// two threads, so sharing the pointer cannot race.
    struct Shared(*mut f32);
    // SAFETY: see above.
    unsafe impl Send for Shared {}
    // SAFETY: see above.
    unsafe impl Sync for Shared {}
    impl Shared {
        // A method, so closures capture the whole `Shared` (Sync), not the raw pointer field.
        fn at(&self, i: usize) -> *mut f32 {
            self.0.wrapping_add(i)
        }
    }

    let len = out.len();
    let chunk = len.div_ceil(tasks);
    let base = Shared(out.as_mut_ptr());
    let claimed: [AtomicBool; MAX_TASKS] = [const { AtomicBool::new(false) }; MAX_TASKS];
    let task = |t: usize| {
        if t >= tasks || claimed[t].swap(true, Ordering::AcqRel) {
            return;
        }
        let start = t * chunk;
        let end = (start + chunk).min(len);
        if start >= end {
            return;
        }
        // SAFETY: `[start, end)` is within `out` and belongs to this claimed task alone; `out`
        // stays mutably borrowed until `for_each` returns.
        let part = unsafe { core::slice::from_raw_parts_mut(base.at(start), end - start) };
        f(start, part);
    };
    exec.for_each(tasks, &task);
    assert!(
        claimed[..tasks].iter().all(|c| c.load(Ordering::Acquire)),
        "Exec::for_each skipped a task"
    );
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
