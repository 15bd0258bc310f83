//! The one way work is split over an [`Exec`]: consecutive, disjoint ranges of an index space,
//! each handed to exactly one task.
//!
//! The matrix kernels split output columns, the element-wise loops ([`super::par`]) and the
//! optimizer steps split ranges of their buffers. Each range is claimed with an atomic flag
//! before it is touched, so an executor that runs a task twice cannot make two threads write the
//! same range, and one that skips a task is caught by a panic. Targets without atomic
//! read-modify-write (ARMv6-M) have no threads and always run one task.

#[cfg(target_has_atomic = "8")]
use core::sync::atomic::{AtomicBool, Ordering};

#[cfg(target_has_atomic = "8")]
use super::Exec;

/// Upper bound on the tasks of one split (also the size of the claim-flag array).
pub const MAX_TASKS: usize = 64;

/// Calls `f(start, end)` for the consecutive ranges `[t·chunk, min((t+1)·chunk, n))` as tasks
/// of `exec`. Each range is claimed first, so `f` sees every range at most once even if the
/// executor runs a task twice; a skipped task panics. Needs `n.div_ceil(chunk) <= MAX_TASKS`.
#[cfg(target_has_atomic = "8")]
pub(crate) fn split_ranges(
    exec: &dyn Exec, n: usize, chunk: usize, f: &(dyn Fn(usize, usize) + Sync),
) {
    let tasks = n.div_ceil(chunk.max(1));
    assert!(tasks <= MAX_TASKS);
    let claimed: [AtomicBool; MAX_TASKS] = [const { AtomicBool::new(false) }; MAX_TASKS];
    let task = |t: usize| {
        if t >= tasks || claimed[t].swap(true, Ordering::AcqRel) {
            return;
        }
        let start = t * chunk;
        f(start, (start + chunk).min(n));
    };
    exec.for_each(tasks, &task);
    assert!(
        claimed[..tasks].iter().all(|c| c.load(Ordering::Acquire)),
        "Exec::for_each skipped a task"
    );
}

/// A buffer shared by the tasks of one split.
///
/// SAFETY argument: it is made from a `&mut [T]` (or a matrix) that the caller holds mutably
/// for the whole split, so nothing outside the split touches it; every task reaches only the
/// range [`split_ranges`] handed it (for a matrix: those columns of every row), the ranges are
/// disjoint and each is handed out once. So no element is reached by two threads, and sharing
/// the pointer between them (`Send + Sync`) cannot create a data race.
pub(crate) struct OutPtr<T = f32> {
    /// Start of the buffer.
    pub(crate) ptr: *mut T,
}

// SAFETY: see the type's documentation: tasks only touch disjoint ranges.
unsafe impl<T: Send> Send for OutPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for OutPtr<T> {}

impl<T> OutPtr<T> {
    /// The buffer of `out`.
    pub(crate) fn new(out: &mut [T]) -> Self {
        OutPtr { ptr: out.as_mut_ptr() }
    }

    /// Elements `start..end` of the buffer.
    ///
    /// # Safety
    /// The range is inside the buffer and belongs to the calling task alone (see the type's
    /// documentation), and the buffer outlives the returned slice.
    pub(crate) unsafe fn range<'a>(&self, start: usize, end: usize) -> &'a mut [T] {
        // SAFETY: forwarded from the caller.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}
