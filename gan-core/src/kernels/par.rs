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
    #[cfg(target_has_atomic = "8")]
    if tasks > 1 {
        let len = out.len();
        let base = OutPtr::new(out);
        split_ranges(exec, len, len.div_ceil(tasks), &|start, end| {
            // SAFETY: `split_ranges` hands out disjoint ranges of `out`, each once (see
            // `OutPtr`); `out` stays mutably borrowed until it returns.
            let part = unsafe { base.range(start, end) };
            f(start, part);
        });
        return;
    }
    let _ = (exec, tasks);
    f(0, out);
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
