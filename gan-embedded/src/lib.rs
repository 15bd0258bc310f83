//! Board-agnostic firmware core: find a weights file in flash, validate it in place, and
//! generate digits with the same `gan-core` routine as the desktop `sample` command, so both
//! produce the same bytes for the same seed.
//!
//! - Weights: the WEIGHTS flash region (between the linker symbols `__weights_start` and
//!   `__weights_end`) is used if it starts with `GANW`, so new weights can be flashed without
//!   rebuilding; otherwise the file linked at build time (`GAN_WEIGHTS`, see `build.rs`).
//!   Either way the weights are read in place from flash, never copied.
//! - Buffers: one set of `static` buffers sized at compile time for the largest supported model
//!   ([`MAX_FEATURES`], [`MAX_INPUT`], [`MAX_PIXELS`]); see [`Buffers::take`].
//! - Errors: a bad weights file is an [`Error`] with a distinct [`Error::code`] (the QEMU binary
//!   exits with it), never a panic.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use core::cell::{Cell, UnsafeCell};

use critical_section::Mutex;
use gan_core::encoding::Encoding;
use gan_core::error::CoreError;
use gan_core::format::{self, FormatError, WeightsFile};
use gan_core::generate::Generator;
use gan_core::noise::{self, NoiseRng};
use gan_core::spec::Shape;

pub mod console;
pub mod semihosting;
pub mod stack;
pub mod ticks;
#[cfg(feature = "usb")]
pub mod usb_console;

include!("limits.rs");

/// Why the firmware cannot generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    /// The weights file is invalid or does not fit this firmware.
    Format(FormatError),
    /// Inference failed. Cannot happen for a file that passed [`load`]; kept so a bug is
    /// reported, not hidden.
    Generate(CoreError),
}

impl Error {
    /// Exit status: [`FormatError::code`] (in [`FormatError::CODES`]) for a bad file, 30 for an
    /// inference error.
    pub const fn code(&self) -> u8 {
        match self {
            Error::Format(e) => e.code(),
            Error::Generate(_) => 30,
        }
    }
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        Error::Format(e)
    }
}

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        Error::Generate(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Format(e) => write!(f, "{e}"),
            Error::Generate(e) => write!(f, "generation failed: {e}"),
        }
    }
}

/// Where the weights in use come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Source {
    /// The WEIGHTS flash region (flashed or loaded separately).
    Region,
    /// The file linked into the firmware at build time.
    Linked,
}

impl Source {
    /// A short name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Source::Region => "weights region",
            Source::Linked => "linked weights",
        }
    }
}

/// Aligns its contents to 16 bytes: the weights format puts every tensor at a multiple of 16
/// from the file start, and the parser needs at least 4-byte alignment to read f32 in place.
#[repr(C, align(16))]
struct Aligned<T: ?Sized>(T);

const LINKED_LEN: usize = include_bytes!(concat!(env!("OUT_DIR"), "/weights.ganw")).len();

/// The weights file linked at build time, in its own output section (`.gan_weights`, see
/// `memory/gan-sections.x`) so size reports show code and weights apart.
#[unsafe(link_section = ".gan_weights")]
static LINKED: Aligned<[u8; LINKED_LEN]> =
    Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/weights.ganw")));

/// The weights file linked at build time.
pub fn linked_weights() -> &'static [u8] {
    &LINKED.0
}

/// The whole WEIGHTS flash region, as placed by the memory map.
pub fn weights_region() -> &'static [u8] {
    unsafe extern "C" {
        static __weights_start: u8;
        static __weights_end: u8;
    }
    // SAFETY: only the symbol addresses are taken. The region between them is flash (or the
    // RAM that stands in for it in QEMU) that nothing writes while the firmware runs, and it is
    // not a Rust object, so the slice is built from the bare address.
    unsafe {
        let start = &raw const __weights_start as usize;
        let end = &raw const __weights_end as usize;
        core::slice::from_raw_parts(core::ptr::with_exposed_provenance(start), end - start)
    }
}

/// Picks the weights: the WEIGHTS region if it starts with the magic `GANW`, else the linked
/// file.
pub fn select_weights(region: &'static [u8], linked: &'static [u8]) -> (&'static [u8], Source) {
    if region.starts_with(&format::MAGIC) {
        (region, Source::Region)
    } else {
        (linked, Source::Linked)
    }
}

/// Length of a run of erased bytes that marks a file as cut short (longer than the zero padding
/// a tensor can end with, 12 bytes).
const ERASED_TAIL: usize = 16;

/// Validates a weights file in place and checks that it fits this firmware's buffers.
///
/// `bytes` is either a file of exact length (the linked one) or a whole flash region with the
/// file at its start and erased or stale bytes after it (`source == Region`). In a region,
/// a file that was cut short while flashing is followed by erased flash (`0x00` in QEMU,
/// `0xFF` on real flash), so its data checksum fails; when the end of its data section and the
/// bytes after it are erased, the error is reported as `Truncated` rather than `DataChecksum`.
/// A file that claims to be longer than its region is `TooLarge`.
// Not inlined: the decoded headers and other temporaries of validation then live in this
// function's frame, which is gone by the time the caller generates, instead of in the caller's
// frame under every digit.
#[inline(never)]
pub fn load(bytes: &'static [u8], source: Source) -> Result<WeightsFile<'static>, FormatError> {
    let file = match WeightsFile::parse(bytes) {
        Ok(f) => f,
        Err(e) if source == Source::Region => return Err(region_error(bytes, e)),
        Err(e) => return Err(e),
    };
    file.check_generator_fits(MAX_PARAMS, MAX_FEATURES)?;
    if file.spec().output().len() > MAX_PIXELS || file.spec().input().len() > MAX_INPUT {
        return Err(FormatError::TooLarge);
    }
    Ok(file)
}

/// Refines a parse error for a file read from a flash region (see [`load`]).
fn region_error(region: &[u8], e: FormatError) -> FormatError {
    let Ok((header, data_at)) = format::parse_header(region) else {
        return e;
    };
    let Some(end) = data_at.checked_add(header.data_len as usize) else {
        return FormatError::TooLarge;
    };
    match e {
        FormatError::Truncated if end > region.len() => FormatError::TooLarge,
        FormatError::DataChecksum if erased_tail(region, data_at, end) => FormatError::Truncated,
        e => e,
    }
}

/// True if the last [`ERASED_TAIL`] bytes of the data section `[data_at, end)` and the bytes
/// after it (up to the same count) all hold one erased value, `0x00` or `0xFF`.
fn erased_tail(bytes: &[u8], data_at: usize, end: usize) -> bool {
    if end - data_at < ERASED_TAIL {
        return false;
    }
    let erased = bytes[end - 1];
    if erased != 0x00 && erased != 0xFF {
        return false;
    }
    let after = &bytes[end..bytes.len().min(end + ERASED_TAIL)];
    bytes[end - ERASED_TAIL..end].iter().chain(after).all(|&b| b == erased)
}

pub use gan_core::generate::ClassChoice;
pub use gan_core::{art_width, ascii_art};

/// Scratch elements: what [`Generator::scratch_len`] asks for the largest supported model in
/// any encoding.
const SCRATCH_LEN: usize = Encoding::max_scratch_bound(MAX_FEATURES);

/// The working memory of one generation, sized for the largest supported model.
pub struct Buffers {
    /// Generator input: noise, then the class one-hot.
    input: [f32; MAX_INPUT],
    /// Network output before conversion to pixels.
    output: [f32; MAX_PIXELS],
    /// Two ping-pong activation buffers for inference, then room for one int8-quantised row
    /// (int8 weights).
    scratch: [f32; SCRATCH_LEN],
    /// The generated sample as grey bytes.
    pixels: [u8; MAX_PIXELS],
}

/// A value that can be borrowed mutably exactly once for the whole program.
///
/// This is `cortex_m::singleton!` without its one drawback here: `singleton!` evaluates the
/// initial value at run time as a local and then moves it into its static, a 16 KiB stack
/// temporary unless the optimiser happens to remove it. This value is
/// a zero-initialised static (it lives in `.bss`, cleared by the runtime before `main`), and
/// the flag saying it was handed out is flipped inside a critical section, so the `&'static mut`
/// is unique. The critical section only covers the flag: generation itself runs with interrupts
/// enabled, which the SysTick counter needs.
struct Once<T> {
    taken: Mutex<Cell<bool>>,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reachable only through the single `&'static mut` that
// `Buffers::take` hands out.
unsafe impl<T: Send> Sync for Once<T> {}

static BUFFERS: Once<Buffers> = Once {
    taken: Mutex::new(Cell::new(false)),
    value: UnsafeCell::new(Buffers {
        input: [0.0; MAX_INPUT],
        output: [0.0; MAX_PIXELS],
        scratch: [0.0; SCRATCH_LEN],
        pixels: [0; MAX_PIXELS],
    }),
};

impl Buffers {
    /// The program's buffers; `Some` on the first call only.
    pub fn take() -> Option<&'static mut Buffers> {
        let first = critical_section::with(|cs| !BUFFERS.taken.borrow(cs).replace(true));
        // SAFETY: `first` is true for exactly one caller over the program's life, so this is
        // the only reference to the value ever made.
        first.then(|| unsafe { &mut *BUFFERS.value.get() })
    }
}

/// Generates samples one at a time from a validated weights file.
pub struct Digits<'a> {
    generator: Generator<'a>,
    rng: NoiseRng,
    index: usize,
    bufs: &'a mut Buffers,
}

impl<'a> Digits<'a> {
    /// A generator for `file` (from [`load`]) whose noise stream starts from `seed`.
    pub fn new(file: &'a WeightsFile<'a>, seed: u64, bufs: &'a mut Buffers) -> Result<Self, Error> {
        let generator = Generator::new(file)?;
        if generator.input_len() > MAX_INPUT
            || generator.scratch_len() > SCRATCH_LEN
            || generator.output_len() > MAX_PIXELS
        {
            return Err(Error::Format(FormatError::TooLarge));
        }
        Ok(Digits { generator, rng: noise::rng(seed), index: 0, bufs })
    }

    /// Restarts the noise stream from `seed` (the next sample is sample 0 again).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = noise::rng(seed);
        self.index = 0;
    }

    /// The network's output shape (e.g. 1×28×28).
    pub fn output_shape(&self) -> Shape {
        self.generator.spec().output()
    }

    /// Classes of a conditional model (0 when unconditional).
    pub fn classes(&self) -> usize {
        self.generator.classes()
    }

    /// Multiply-accumulates per sample.
    pub fn macs(&self) -> usize {
        self.generator.spec().macs()
    }

    /// Generates the next sample and returns its grey bytes. Sample `i` of seed `s` equals
    /// sample `i` of `gan_train::sample::generate(file, s, n, class)`.
    pub fn next(&mut self, class: ClassChoice) -> Result<&[u8], Error> {
        let g = &self.generator;
        let classes = g.classes();
        let cls = class.class_of(self.index, classes);
        let b = &mut *self.bufs;
        let n_out = g.output_len();
        g.generate(
            &mut self.rng,
            cls,
            &mut b.input[..g.input_len()],
            &mut b.output[..n_out],
            &mut b.scratch[..g.scratch_len()],
            &mut b.pixels[..n_out],
        )?;
        self.index += 1;
        Ok(&self.bufs.pixels[..n_out])
    }
}
