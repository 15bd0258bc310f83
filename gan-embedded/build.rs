//! Build script: picks the memory map for each binary and target, passes the linker flags, and
//! copies (after validating it) the weights file that gets linked into the firmware.
//!
//! - `GAN_WEIGHTS`: path of the weights file to link (default `../data/weights/default-q8.ganw`,
//!   the default `pico` generator as int8;
//!   a relative path is taken from this package's folder).
//! - memory maps: each binary's `memory.x` is written from the board table
//!   (`gan_core::board`): the board whose binary and target are this build's. The `qemu`
//!   binary is the Cortex-M4F board on thumbv7em and the Pico-sized ARMv6-M board on thumbv6m;
//!   the `pico` binary is the Pico. `memory/gan-sections.x` holds the sections every map
//!   shares.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use gan_core::board;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let target = env::var("TARGET").expect("TARGET is set by cargo");

    memory_maps(&out, &manifest, &target);
    qemu_clock(&target);
    linker_flags();
    linked_weights(&out, &manifest);
}

/// The system clock of the QEMU board this target's `qemu` binary runs on, for the
/// instruction counts (`src/ticks.rs`); 25 MHz for a target without one.
fn qemu_clock(target: &str) {
    let hz =
        board::for_build("qemu", target).and_then(|b| b.qemu).map_or(25_000_000, |q| q.sysclk_hz);
    println!("cargo:rustc-env=GAN_QEMU_SYSCLK_HZ={hz}");
}

/// Writes one `memory.x` per binary into its own folder and points that binary's linker there.
fn memory_maps(out: &Path, manifest: &Path, target: &str) {
    println!("cargo:rerun-if-changed=memory");
    let mut bins: Vec<&str> = board::BOARDS.iter().map(|b| b.bin).collect();
    bins.dedup();
    for bin in bins {
        // A binary with no board for this target (the Pico's on thumbv7em) is never built.
        let Some(b) = board::for_build(bin, target) else {
            continue;
        };
        let dir = out.join(bin);
        fs::create_dir_all(&dir).expect("create memory map folder");
        fs::write(dir.join("memory.x"), memory_x(b)).expect("write memory map");
        // cortex-m-rt's link.x says `INCLUDE memory.x`: the linker finds the one in this folder.
        println!("cargo:rustc-link-arg-bin={bin}=-L{}", dir.display());
    }
    // Sections shared by every map (WEIGHTS symbols, the linked-weights section), included by
    // each memory.x.
    fs::copy(manifest.join("memory/gan-sections.x"), out.join("gan-sections.x")).expect("copy");
    println!("cargo:rustc-link-search={}", out.display());
}

/// The linker memory map of a board (see `gan_core::board` for what each region is).
fn memory_x(b: &board::Board) -> String {
    let region = |name: &str, r: &board::Region| {
        format!("  {name:<7} : ORIGIN = {:#010x}, LENGTH = {:#x}\n", r.origin, r.len)
    };
    let mut s = format!(
        "/* {}: written by build.rs from gan_core::board::{}. */\nMEMORY\n{{\n",
        b.description,
        b.name.to_uppercase().replace('-', "_")
    );
    if let Some(boot2) = &b.boot2 {
        s += &region("BOOT2", boot2);
    }
    s += &region("FLASH", &b.flash);
    s += &region("WEIGHTS", &b.weights);
    s += &region("RAM", &b.ram);
    s += "}\n\n";
    if b.boot2.is_some() {
        // The second-stage bootloader must be the first bytes of flash.
        s += "SECTIONS {\n  .boot2 ORIGIN(BOOT2) :\n  {\n    KEEP(*(.boot2));\n  } > BOOT2\n} INSERT BEFORE .text;\n\n";
    }
    if b.image_def {
        // The boot ROM's IMAGE_DEF block, within the first 4 KiB of flash: right after the
        // vector table, code after it.
        s += "SECTIONS {\n  .start_block : ALIGN(4)\n  {\n    KEEP(*(.start_block));\n  } > FLASH\n} INSERT AFTER .vector_table;\n";
        s += "_stext = ALIGN(ADDR(.start_block) + SIZEOF(.start_block), 8);\n\n";
    }
    s += "INCLUDE gan-sections.x\n";
    s
}

fn linker_flags() {
    // cortex-m-rt's linker script: vector table, sections, RAM init, stack; includes memory.x.
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    // No page alignment of sections: flash does not start on a page boundary (0x1000_0100 on the
    // Pico), and page-aligned segments would waste flash or overlap boot2.
    println!("cargo:rustc-link-arg-bins=--nmagic");
    // defmt's linker script keeps the interned log strings (an info section, not flashed), only
    // for binaries that log with defmt.
    if env::var_os("CARGO_FEATURE_PICO").is_some() {
        println!("cargo:rustc-link-arg-bin=pico=-Tdefmt.x");
    }
    if env::var_os("CARGO_FEATURE_PICO2").is_some() {
        println!("cargo:rustc-link-arg-bin=pico2=-Tdefmt.x");
    }
    if env::var_os("CARGO_FEATURE_QEMU_DEFMT").is_some() {
        println!("cargo:rustc-link-arg-bin=qemu=-Tdefmt.x");
    }
}

/// Copies the weights file into OUT_DIR as `weights.ganw` (what `src/lib.rs` includes), after
/// checking that it is a valid generator, so a bad file fails the build instead of the device.
fn linked_weights(out: &Path, manifest: &Path) {
    println!("cargo:rerun-if-env-changed=GAN_WEIGHTS");
    let path = match env::var_os("GAN_WEIGHTS") {
        Some(p) if !p.is_empty() => manifest.join(PathBuf::from(p)),
        _ => manifest.join("../data/weights/default-q8.ganw"),
    };
    println!("cargo:rerun-if-changed={}", path.display());
    let bytes = fs::read(&path).unwrap_or_else(|e| {
        panic!("cannot read the weights file {}: {e} (set GAN_WEIGHTS)", path.display())
    });
    check_weights(&bytes, &path);
    fs::write(out.join("weights.ganw"), &bytes).expect("write weights into OUT_DIR");
}

fn check_weights(bytes: &[u8], path: &Path) {
    // Parse from a 16-byte aligned copy, as the firmware will see it in flash.
    let mut words = vec![0u128; bytes.len().div_ceil(16)];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks(16)) {
        let mut b = [0u8; 16];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u128::from_ne_bytes(b);
    }
    // SAFETY: `words` owns `words.len() * 16` initialised bytes and any u8 value is valid.
    let aligned =
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 16) };
    let file = gan_core::format::WeightsFile::parse(&aligned[..bytes.len()])
        .unwrap_or_else(|e| panic!("{} is not a valid weights file: {e}", path.display()));
    if let Err(e) = file.check_generator_fits(MAX_PARAMS, MAX_FEATURES) {
        panic!("{} cannot run on this firmware: {e}", path.display());
    }
    if file.spec().output().len() > MAX_PIXELS {
        panic!("{}: the generator output is larger than {MAX_PIXELS} pixels", path.display());
    }
    if file.spec().input().len() > MAX_INPUT {
        panic!("{}: the generator input is larger than {MAX_INPUT} values", path.display());
    }
}

// MAX_FEATURES, MAX_INPUT, MAX_PIXELS, MAX_PARAMS: the same numbers the firmware checks at boot.
#[allow(dead_code)]
mod limits {
    include!("src/limits.rs");
}
use limits::{MAX_FEATURES, MAX_INPUT, MAX_PARAMS, MAX_PIXELS};
