//! Raspberry Pi Pico (RP2040) firmware: the USB-serial digit console
//! ([`gan_embedded::usb_console`]): type `7` + Enter for a 7.
//!
//! The LED is GPIO25. Logs go out with defmt over RTT (`probe-rs run --chip RP2040` shows
//! them). Weights: the 1 MiB WEIGHTS region at 0x1010_0000 if it holds a `GANW` file (flashed
//! as a weights-only UF2), else the file linked at build time.
//!
//! Floating point: rp2040-hal's ROM float routines are turned off (`disable-intrinsics`). They
//! are faster but treat subnormals as zero, so their results could differ from the host's in
//! the last bits; the soft-float routines of the Rust compiler are exact IEEE-754, which keeps
//! the device's digits byte-identical to `gan-train sample` (the all-integer default uses
//! floating point only for the noise).
//!
//! Critical sections come from cortex-m's single-core implementation (interrupts masked): this
//! firmware never starts the second core.
#![no_std]
#![no_main]

use defmt_rtt as _;
use rp2040_hal as hal;

/// Second-stage bootloader for the Pico's W25Q16 flash (placed first in flash by the memory map
/// `build.rs` writes from the board table).
#[unsafe(link_section = ".boot2")]
#[used]
static BOOT2: [u8; 256] = rp2040_boot2::BOOT_LOADER_W25Q080;

/// Core clock set up by `init_clocks_and_plls`; one SysTick tick is one cycle.
const SYS_HZ: u64 = 125_000_000;

#[hal::entry]
fn main() -> ! {
    gan_embedded::pico_main!(rp2040_hal, SYS_HZ, USBCTRL_REGS, USBCTRL_DPRAM)
}
