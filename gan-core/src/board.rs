//! The boards the firmware runs on, in one table: memory map, weights region, how the board is
//! flashed (UF2 family id) or emulated (QEMU machine and CPU), and which firmware binary and
//! Rust target build for it.
//!
//! The firmware's build script writes each binary's `memory.x` from this table, `gan-train`
//! writes UF2 files for the weights region and family id given here, and the firmware tests
//! start QEMU with the machine, CPU and load address given here. Adding a board is a row in
//! [`BOARDS`] plus its firmware binary.

/// A range of the address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First address.
    pub origin: u32,
    /// Length in bytes.
    pub len: u32,
}

impl Region {
    /// One past the last address.
    pub const fn end(&self) -> u32 {
        self.origin + self.len
    }
    /// Whether `addr` lies inside.
    pub const fn contains(&self, addr: u32) -> bool {
        addr >= self.origin && addr - self.origin < self.len
    }
}

/// A QEMU machine that runs a board's firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Qemu {
    /// `-machine` value.
    pub machine: &'static str,
    /// `-cpu` value.
    pub cpu: &'static str,
    /// The board's system clock, which QEMU's SysTick counts (with `-icount shift=0`, one
    /// tick is `10⁹ / sysclk_hz` instructions).
    pub sysclk_hz: u32,
}

/// One board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Board {
    /// Short name (`pico`, `qemu-m4`, `qemu-m0`).
    pub name: &'static str,
    /// One line for people.
    pub description: &'static str,
    /// The firmware binary that runs on it (`gan-embedded/src/bin/<bin>.rs`).
    pub bin: &'static str,
    /// The Rust target it is built for.
    pub target: &'static str,
    /// A second-stage bootloader at the start of flash, if the board has one (RP2040: 256
    /// bytes the boot ROM copies to SRAM and runs).
    pub boot2: Option<Region>,
    /// Whether the boot ROM looks for an `IMAGE_DEF` block in the first 4 KiB of flash
    /// (RP2350): the memory map then places the binary's `.start_block` section right after
    /// the vector table.
    pub image_def: bool,
    /// Vector table, code, read-only data and the weights linked at build time.
    pub flash: Region,
    /// A weights file flashed on its own; the firmware uses it if it starts with `GANW`.
    pub weights: Region,
    /// RAM.
    pub ram: Region,
    /// UF2 family id, for boards flashed by UF2 drag-and-drop.
    pub uf2_family: Option<u32>,
    /// The QEMU machine, for emulated boards.
    pub qemu: Option<Qemu>,
}

/// UF2 family id of the RP2040.
pub const RP2040_FAMILY_ID: u32 = 0xE48B_FF56;
/// UF2 family id of the RP2350 running Arm code in the secure state.
pub const RP2350_ARM_S_FAMILY_ID: u32 = 0xE48B_FF59;

/// KiB.
const K: u32 = 1024;
/// MiB.
const M: u32 = 1024 * 1024;

/// Raspberry Pi Pico (RP2040: Cortex-M0+, 2 MiB of QSPI flash executed in place at
/// `0x1000_0000`, 264 KiB of SRAM). The first MiB of flash holds boot2, the firmware and its
/// linked weights; the second a weights file flashed on its own.
pub const PICO: Board = Board {
    name: "pico",
    description: "Raspberry Pi Pico (RP2040, Cortex-M0+)",
    bin: "pico",
    target: "thumbv6m-none-eabi",
    boot2: Some(Region { origin: 0x1000_0000, len: 0x100 }),
    image_def: false,
    flash: Region { origin: 0x1000_0100, len: M - 0x100 },
    weights: Region { origin: 0x1010_0000, len: M },
    ram: Region { origin: 0x2000_0000, len: 264 * K },
    uf2_family: Some(RP2040_FAMILY_ID),
    qemu: None,
};

/// Raspberry Pi Pico 2 (RP2350: Cortex-M33 with FPU and DSP, 4 MiB of QSPI flash executed in
/// place at `0x1000_0000`, 520 KiB of SRAM of which the 512 KiB at `0x2000_0000` are used). The
/// first 2 MiB of flash hold the firmware and its linked weights; the second a weights file
/// flashed on its own. No second-stage bootloader: the boot ROM finds the image by its
/// `IMAGE_DEF` block.
pub const PICO2: Board = Board {
    name: "pico2",
    description: "Raspberry Pi Pico 2 (RP2350, Cortex-M33)",
    bin: "pico2",
    target: "thumbv8m.main-none-eabihf",
    boot2: None,
    image_def: true,
    flash: Region { origin: 0x1000_0000, len: 2 * M },
    weights: Region { origin: 0x1020_0000, len: 2 * M },
    ram: Region { origin: 0x2000_0000, len: 512 * K },
    uf2_family: Some(RP2350_ARM_S_FAMILY_ID),
    qemu: None,
};

/// QEMU `mps2-an386` (Cortex-M4F): 4 MiB of SSRAM at `0x0000_0000` split into 2 MiB of code
/// and a 2 MiB weights region, and 4 MiB of RAM at `0x2000_0000`.
pub const QEMU_M4: Board = Board {
    name: "qemu-m4",
    description: "QEMU mps2-an386 (Cortex-M4F)",
    bin: "qemu",
    target: "thumbv7em-none-eabihf",
    boot2: None,
    image_def: false,
    flash: Region { origin: 0, len: 2 * M },
    weights: Region { origin: 0x0020_0000, len: 2 * M },
    ram: Region { origin: 0x2000_0000, len: 4 * M },
    uf2_family: None,
    qemu: Some(Qemu { machine: "mps2-an386", cpu: "cortex-m4", sysclk_hz: 25_000_000 }),
};

/// ARMv6-M code (the Pico's instruction set) on QEMU `mps2-an385` (a Cortex-M3 board, which
/// runs it), with the Pico's region sizes at the board's addresses, so a firmware that links
/// here also fits the Pico: the budgets are enforced by the linker.
pub const QEMU_M0: Board = Board {
    name: "qemu-m0",
    description: "ARMv6-M on QEMU mps2-an385, with the Pico's sizes",
    bin: "qemu",
    target: "thumbv6m-none-eabi",
    boot2: None,
    image_def: false,
    flash: Region { origin: 0, len: M },
    weights: Region { origin: 0x0010_0000, len: M },
    ram: Region { origin: 0x2000_0000, len: 264 * K },
    uf2_family: None,
    qemu: Some(Qemu { machine: "mps2-an385", cpu: "cortex-m3", sysclk_hz: 25_000_000 }),
};

/// The Pico 2's instruction set and sizes (RP2350: Cortex-M33 with FPU and DSP, 520 KiB of
/// SRAM) on QEMU `mps2-an505`, a Cortex-M33 board. The CPU starts in the secure state with its
/// vector table at `0x1000_0000`, so everything lives at the secure aliases: SSRAM1 at
/// `0x1000_0000` (4 MiB: 2 MiB of code, a 2 MiB weights region) and SSRAM2 at `0x3800_0000`.
pub const QEMU_M33: Board = Board {
    name: "qemu-m33",
    description: "QEMU mps2-an505 (Cortex-M33), with the Pico 2's RAM",
    bin: "qemu",
    target: "thumbv8m.main-none-eabihf",
    boot2: None,
    image_def: false,
    flash: Region { origin: 0x1000_0000, len: 2 * M },
    weights: Region { origin: 0x1020_0000, len: 2 * M },
    ram: Region { origin: 0x3800_0000, len: 520 * K },
    uf2_family: None,
    qemu: Some(Qemu { machine: "mps2-an505", cpu: "cortex-m33", sysclk_hz: 20_000_000 }),
};

/// Every board.
pub const BOARDS: [Board; 5] = [PICO, PICO2, QEMU_M4, QEMU_M0, QEMU_M33];

/// The board called `name`.
pub fn by_name(name: &str) -> Option<&'static Board> {
    BOARDS.iter().find(|b| b.name == name)
}

/// The board firmware binary `bin` runs on when built for `target`.
pub fn for_build(bin: &str, target: &str) -> Option<&'static Board> {
    BOARDS.iter().find(|b| b.bin == bin && b.target == target)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regions of a board do not overlap, the weights follow the code, and names and builds are
    /// unique.
    #[test]
    fn the_table_is_consistent() {
        for (i, b) in BOARDS.iter().enumerate() {
            let mut regions = [Some(b.flash), Some(b.weights), Some(b.ram), b.boot2];
            regions.sort_by_key(|r| r.map(|r| r.origin));
            for w in regions.windows(2) {
                if let [Some(x), Some(y)] = w {
                    assert!(x.end() <= y.origin, "{}: {x:?} overlaps {y:?}", b.name);
                }
            }
            assert!(b.weights.origin >= b.flash.end(), "{}", b.name);
            assert_eq!(b.weights.origin % 4096, 0, "{}: weights not page aligned", b.name);
            assert!(b.uf2_family.is_some() != b.qemu.is_some(), "{}", b.name);
            for other in &BOARDS[i + 1..] {
                assert_ne!(b.name, other.name);
                assert!((b.bin, b.target) != (other.bin, other.target));
            }
            assert_eq!(by_name(b.name), Some(b));
            assert_eq!(for_build(b.bin, b.target), Some(b));
        }
        assert!(PICO.weights.contains(0x1010_0000) && !PICO.weights.contains(0x1020_0000));
        assert_eq!(for_build("pico", "thumbv7em-none-eabihf"), None);
    }
}
