//! Raspberry Pi Pico 2 (RP2350, Cortex-M33 in the secure state) firmware: the same
//! USB-serial digit console as the Pico's ([`gan_embedded::usb_console`]).
//!
//! The LED is GPIO25. Logs go out with defmt over RTT (`probe-rs run --chip RP235x`). Weights:
//! the 2 MiB WEIGHTS region at 0x1020_0000 (the second half of the 4 MiB flash) if it holds a
//! `GANW` file, else the file linked at build time. The boot ROM starts the image through the
//! `IMAGE_DEF` block below, which the memory map places right after the vector table (within
//! the first 4 KiB of flash, where the ROM looks).
//!
//! The Cortex-M33 has a single-precision FPU: the f32 encodings run on it (`thumbv8m.main-none-
//! eabihf`), with the same bytes as the desktop, like the Cortex-M4F build in QEMU.
//!
//! Not run on hardware yet: it builds, and its instruction set runs in QEMU (`mps2-an505`,
//! the `qemu` binary), but no Pico 2 has run this binary.
#![no_std]
#![no_main]

use defmt_rtt as _;
use rp235x_hal as hal;

/// Tells the boot ROM this is a secure Arm executable.
#[unsafe(link_section = ".start_block")]
#[used]
static IMAGE_DEF: hal::block::ImageDef = hal::block::ImageDef::secure_exe();

/// Core clock set up by `init_clocks_and_plls`; one SysTick tick is one cycle.
const SYS_HZ: u64 = 150_000_000;

#[hal::entry]
fn main() -> ! {
    gan_embedded::pico_main!(rp235x_hal, SYS_HZ, USB, USB_DPRAM)
}
