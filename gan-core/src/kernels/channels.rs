//! Batch normalisation's per-channel statistics on a vector unit: the terms a group of eight
//! channels sums, and the kernel that sums them where the CPU has one. The definition of every
//! sum (and the portable loop) is [`crate::layers::batch_norm`]'s; a kernel here gives the
//! same bits or is not used.

/// Channels one call sums side by side.
pub(crate) const GROUP: usize = 8;

/// What a call sums over each element of [`GROUP`] channels, every sum in f64.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum Terms<'a> {
    /// `Σ x`.
    Sum(&'a [f32]),
    /// `Σ (x − μ)²` with `x` widened to f64 and the channel's f64 mean `μ`.
    SqDev(&'a [f32], [f64; GROUP]),
    /// `Σ g` and `Σ g · x̂`, with `x̂ = (x − μ)·σ⁻¹` rounded to f32 and `g` widened to f64.
    Grad { g: &'a [f32], x: &'a [f32], mu: [f32; GROUP], inv_std: [f32; GROUP] },
}

/// The sums of `terms` over channels `ch0..ch0 + GROUP` of N×C×S buffers, sample by sample and
/// each plane in order: `[Σ first, Σ second]` per channel (the second is 0 for the one-term
/// kinds). `None` where no vector kernel runs (then the caller runs its portable loop).
///
/// # Panics
/// If a buffer is shorter than `n·c·s` or `ch0 + GROUP > c`.
pub(crate) fn channel_sums(
    terms: Terms<'_>, n: usize, c: usize, s: usize, ch0: usize,
) -> Option<[[f64; 2]; GROUP]> {
    #[cfg(target_arch = "x86_64")]
    if super::exact_isa() != super::ExactIsa::Portable {
        // SAFETY: every level above portable includes AVX.
        return Some(unsafe { super::x86::channel_sums_avx(terms, n, c, s, ch0) });
    }
    let _ = (terms, n, c, s, ch0);
    None
}
