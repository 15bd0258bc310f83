//! Fault injection for the crash tests.
//!
//! With `GAN_TRAIN_FAILPOINT=NAME:N` in the environment the process aborts — no unwinding, no
//! destructors, no flushing, as if killed with `kill -9` — the `N`-th time it reaches the point
//! called `NAME`. The points sit inside the writes that a crash could tear:
//!
//! | point | where |
//! |---|---|
//! | `write-half` | [`crate::run::write_atomic`], half of the temporary file written |
//! | `write` | [`crate::run::write_atomic`], temporary file complete, before the rename |
//! | `append-half` | appending rows to `losses.csv`, half of the new text written |
//! | `append` | appending rows to `losses.csv`, all written, before the checkpoint that owns them |
//!
//! Unset (always, outside tests) a point costs one cached environment lookup.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The armed point and the hit that aborts, read once from the environment.
fn armed() -> Option<&'static (String, u64)> {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("GAN_TRAIN_FAILPOINT").ok()?;
            let (name, n) = v.split_once(':')?;
            Some((name.to_string(), n.parse().ok()?))
        })
        .as_ref()
}

/// Aborts the process if `name` is the armed point and this is its armed hit.
pub fn hit(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    if let Some((armed, at)) = armed()
        && armed == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *at
    {
        std::process::abort();
    }
}
