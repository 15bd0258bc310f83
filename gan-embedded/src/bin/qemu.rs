//! QEMU firmware (mps2-an386 Cortex-M4F for thumbv7em-none-eabihf, mps2-an385 for thumbv6m,
//! mps2-an505 Cortex-M33 for thumbv8m.main-none-eabihf):
//! generates digits and reports them over semihosting.
//!
//! Arguments come from the semihosting command line as `key=value` words (QEMU:
//! `-semihosting-config enable=on,target=native,arg=gan,arg=seed=7,arg=count=3`, or the kernel
//! path plus `-append "seed=7 count=3"`): `seed` (u64, default 0), `count` (default 1),
//! `class` (fixed class for a conditional model; default: cycle 0, 1, 2, …) and `out` (host file
//! for the raw bytes, default `digits.bin`). The first word is skipped if it has no `=` (the
//! program name).
//!
//! For each digit it prints ASCII art, the instructions it took (SysTick under
//! `-icount shift=0`) and the MAC count to the console, and appends the raw grey bytes to
//! `out`. At the end it prints the peak stack use and exits QEMU with status 0, or with the
//! error's code: `FormatError::CODES` (10–23) for a bad weights file (`FormatError::code`), 2
//! for bad arguments, 3 if the host file cannot be written, 101 on a panic, 102 on a hard
//! fault.
//!
//! With the `qemu-defmt` feature, log lines also go out as defmt frames on semihosting stdout
//! (decode them with `defmt-print`), and the text above moves to stderr so the two streams never
//! mix.
#![no_std]
#![no_main]

use core::fmt::Write;

// The critical-section implementation (single core, interrupts masked) comes from cortex-m.
use cortex_m as _;
use cortex_m_rt::{ExceptionFrame, entry, exception};
#[cfg(feature = "qemu-defmt")]
use defmt_semihosting as _;
use gan_embedded::semihosting::{self as sh, File};
use gan_embedded::{Buffers, ClassChoice, Digits, Error, stack, ticks};

const EXIT_USAGE: u8 = 2;
const EXIT_HOST_IO: u8 = 3;
const EXIT_PANIC: u8 = 101;
const EXIT_HARD_FAULT: u8 = 102;

/// Logs through defmt when the `qemu-defmt` feature is on; compiles to nothing otherwise.
macro_rules! log {
    ($($t:tt)*) => {
        #[cfg(feature = "qemu-defmt")]
        defmt::info!($($t)*);
    };
}

/// The text console: stdout, or stderr when stdout carries defmt frames.
fn console() -> Result<File, sh::HostError> {
    if cfg!(feature = "qemu-defmt") { File::stderr() } else { File::stdout() }
}

struct Args<'a> {
    seed: u64,
    count: u32,
    class: ClassChoice,
    out: &'a [u8],
    panic: bool,
}

fn parse_number(v: &[u8]) -> Option<u64> {
    let s = core::str::from_utf8(v).ok()?;
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_args(line: &[u8]) -> Result<Args<'_>, &[u8]> {
    let mut args =
        Args { seed: 0, count: 1, class: ClassChoice::Cycle, out: b"digits.bin", panic: false };
    let words = line.split(|&b| b == b' ' || b == 0).filter(|w| !w.is_empty());
    for (i, word) in words.enumerate() {
        let Some(eq) = word.iter().position(|&b| b == b'=') else {
            if i == 0 {
                continue; // the program name
            }
            return Err(word);
        };
        let (key, value) = (&word[..eq], &word[eq + 1..]);
        match key {
            b"seed" => args.seed = parse_number(value).ok_or(word)?,
            b"count" => {
                args.count = parse_number(value).and_then(|n| n.try_into().ok()).ok_or(word)?;
            }
            b"class" => {
                let c = parse_number(value).and_then(|n| n.try_into().ok()).ok_or(word)?;
                args.class = ClassChoice::Fixed(c);
            }
            b"out" if !value.is_empty() => args.out = value,
            // Test hook: proves that a panic ends QEMU with a failure status.
            b"panic" => args.panic = true,
            _ => return Err(word),
        }
    }
    Ok(args)
}

#[entry]
fn main() -> ! {
    stack::paint();
    let status = match run() {
        Ok(()) => 0,
        Err(code) => code,
    };
    sh::exit(status)
}

/// Formats `num / den` with two decimals, without pulling in float formatting.
struct Ratio(u64, u64);

impl core::fmt::Display for Ratio {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let hundredths = (self.0 * 100 + self.1 / 2) / self.1.max(1);
        write!(f, "{}.{:02}", hundredths / 100, hundredths % 100)
    }
}

fn run() -> Result<(), u8> {
    let mut con = console().map_err(|_| EXIT_HOST_IO)?;
    let mut cmd = [0u8; 512];
    let line = sh::command_line(&mut cmd).unwrap_or(b"");
    let args = match parse_args(line) {
        Ok(a) => a,
        Err(word) => {
            let _ = con.write_all(b"bad argument: ");
            let _ = con.write_all(word);
            let _ = con.write_all(b"\nusage: [seed=N] [count=N] [class=N] [out=PATH]\n");
            return Err(EXIT_USAGE);
        }
    };
    if args.panic {
        panic!("panic requested on the command line");
    }
    let mut cp = cortex_m::Peripherals::take().ok_or(EXIT_PANIC)?;

    let (bytes, source) = gan_embedded::select_weights(
        gan_embedded::weights_region(),
        gan_embedded::linked_weights(),
    );
    let _ = writeln!(con, "weights: {} at {:#010x}", source.name(), bytes.as_ptr() as usize);
    log!("weights: {}", source);
    let file = gan_embedded::load(bytes, source).map_err(|e| {
        let _ = writeln!(con, "error {}: {e}", e.code());
        log!("invalid weights: {}", e);
        e.code()
    })?;
    let fail = |con: &mut File, e: Error| {
        let _ = writeln!(con, "error {}: {e}", e.code());
        e.code()
    };
    let bufs = Buffers::take().ok_or(EXIT_PANIC)?;
    let mut digits = Digits::new(&file, args.seed, bufs).map_err(|e| fail(&mut con, e))?;
    if let ClassChoice::Fixed(c) = args.class {
        if digits.classes() > 0 && c as usize >= digits.classes() {
            let _ = writeln!(
                con,
                "class {c} is out of range: the model has {} classes",
                digits.classes()
            );
            return Err(EXIT_USAGE);
        }
    }
    let spec = file.spec();
    let macs = digits.macs() as u64;
    let _ = writeln!(
        con,
        "model: {} -> {} in {} layers, {} parameters, {} classes",
        spec.input(),
        spec.output(),
        spec.layers().len(),
        spec.param_len(),
        digits.classes()
    );
    let _ = writeln!(con, "MACs: {macs}");
    let _ = writeln!(con, "seed {} count {}", args.seed, args.count);
    log!("generating {} digits from seed {}", args.count, args.seed);

    let mut host = File::create(args.out).map_err(|_| {
        let _ = con.write_all(b"cannot create the output file\n");
        EXIT_HOST_IO
    })?;
    let width = gan_embedded::art_width(digits.output_shape());
    // Stack so far: boot, argument parsing and weights validation. Paint again so the next
    // reading covers generation alone.
    let setup_stack = stack::peak();
    stack::paint();
    ticks::start(&mut cp.SYST);
    for i in 0..args.count {
        let t0 = ticks::now();
        let pixels = digits.next(args.class).map_err(|e| fail(&mut con, e))?;
        let instructions = (ticks::now() - t0) * ticks::QEMU_INSTRUCTIONS_PER_TICK;
        host.write_all(pixels).map_err(|_| EXIT_HOST_IO)?;
        let _ = writeln!(con, "digit {i}");
        gan_embedded::ascii_art(pixels, width, |l| {
            let _ = con.write_all(l);
        });
        let _ =
            writeln!(con, "instructions: {instructions} ({} per MAC)", Ratio(instructions, macs));
        log!("digit {}: {} instructions", i, instructions);
    }
    host.close().map_err(|_| EXIT_HOST_IO)?;
    let generate_stack = stack::peak();
    let _ = writeln!(
        con,
        "peak stack: {} bytes (setup and validation {setup_stack}, generation {generate_stack}; \
         stack region {})",
        setup_stack.max(generate_stack),
        stack::size()
    );
    Ok(())
}

#[exception]
fn SysTick() {
    ticks::on_wrap();
}

#[exception]
unsafe fn HardFault(_frame: &ExceptionFrame) -> ! {
    if let Ok(mut e) = File::stderr() {
        let _ = e.write_all(b"hard fault\n");
    }
    sh::exit(EXIT_HARD_FAULT)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if let Ok(mut e) = File::stderr() {
        let _ = writeln!(e, "panic: {info}");
    }
    sh::exit(EXIT_PANIC)
}
