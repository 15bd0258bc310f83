//! A 64-bit tick counter on SysTick, clocked from the core clock.
//!
//! SysTick is a 24-bit down-counter; it reloads with [`RELOAD`] and raises an exception on every
//! wrap, which the binary's `SysTick` handler forwards to [`on_wrap`]. [`now`] combines the wrap
//! count with the current value.
//!
//! - On the Pico (and any real Cortex-M) one tick is one core clock cycle.
//! - In QEMU with `-icount shift=0` every instruction advances virtual time by 1 ns and SysTick
//!   runs from the board's system clock (25 MHz on the mps2-an385/386, 20 MHz on the
//!   mps2-an505; `build.rs` takes it from the board table), so one tick is 40 or 50
//!   instructions ([`QEMU_INSTRUCTIONS_PER_TICK`]). QEMU does not model the DWT cycle counter,
//!   hence SysTick.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;

/// The largest 24-bit reload value: one wrap every 2^24 ticks.
pub const RELOAD: u32 = 0x00FF_FFFF;

/// Instructions per SysTick tick on the QEMU board of this build's target under `-icount
/// shift=0`: 1 ns per instruction over the board's system clock.
pub const QEMU_INSTRUCTIONS_PER_TICK: u64 = 1_000_000_000 / parse_hz(env!("GAN_QEMU_SYSCLK_HZ"));

/// A decimal number at compile time.
const fn parse_hz(s: &str) -> u64 {
    let b = s.as_bytes();
    let mut v = 0u64;
    let mut i = 0;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "GAN_QEMU_SYSCLK_HZ is not a number");
        v = v * 10 + (b[i] - b'0') as u64;
        i += 1;
    }
    assert!(v > 0, "GAN_QEMU_SYSCLK_HZ is zero");
    v
}

/// Wraps counted so far. Written only by the SysTick handler (through [`on_wrap`]); plain
/// load/store is enough and exists on ARMv6-M, which has no atomic read-modify-write.
static WRAPS: AtomicU32 = AtomicU32::new(0);

/// Starts SysTick on the core clock with the wrap exception enabled.
pub fn start(syst: &mut SYST) {
    syst.disable_counter();
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
    // Writing the current-value register zeroes it; the counter loads RELOAD on the next clock,
    // without counting a wrap. Wait for that so the first reading is not taken from the zero.
    while SYST::get_current() == 0 {}
}

/// Counts one wrap. Call this (only) from the `SysTick` exception handler.
pub fn on_wrap() {
    WRAPS.store(WRAPS.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// Ticks since [`start`].
pub fn now() -> u64 {
    loop {
        let before = WRAPS.load(Ordering::Relaxed);
        let current = SYST::get_current();
        let after = WRAPS.load(Ordering::Relaxed);
        // A wrap between the two loads would pair a fresh counter value with a stale wrap
        // count: read again.
        if before == after {
            return u64::from(before) * (u64::from(RELOAD) + 1) + u64::from(RELOAD - current);
        }
    }
}
