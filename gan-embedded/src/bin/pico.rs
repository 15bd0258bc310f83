//! Raspberry Pi Pico (RP2040) firmware: generates a digit for every seed typed over USB serial
//! and sends it back as ASCII art.
//!
//! Open the board's USB serial port (e.g. `picocom /dev/ttyACM0`) and type a line
//! ([`gan_embedded::console`]):
//! - `7` + Enter, for a conditional model (the `pico` preset): a 7, from the next seed of the
//!   console's counter; `7 s42`: the 7 of seed 42 (sample 0 of `gan-train sample --seed 42
//!   --class 7`);
//! - `42` for a model without classes: the digit of seed 42 (`s42` works for both);
//! - `info`: where the weights come from and the model's size; `help`: this list.
//!
//! The LED (GPIO25) blinks while a digit is being generated. Logs go out with defmt over RTT
//! (`probe-rs run --chip RP2040` shows them). Weights: the 1 MiB WEIGHTS region at 0x1010_0000
//! if it holds a `GANW` file (flashed as a weights-only UF2), else the file linked at build time.
//!
//! Floating point: rp2040-hal's ROM float routines are turned off (`disable-intrinsics`). They
//! are faster but treat subnormals as zero, so their results could differ from the host's in
//! the last bits; the soft-float routines of the Rust compiler are exact IEEE-754, which keeps
//! the device's digits byte-identical to `gan-train sample`.
//!
//! Critical sections come from cortex-m's single-core implementation (interrupts masked): this
//! firmware never starts the second core.
#![no_std]
#![no_main]

use core::cell::RefCell;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, Ordering};

use critical_section::Mutex;
use defmt_rtt as _;
use embedded_hal::digital::{OutputPin, StatefulOutputPin};
use gan_core::format::WeightsFile;
use gan_embedded::{Buffers, ClassChoice, Digits, Error, Source, stack, ticks};
use rp2040_hal::{self as hal, pac};
use usb_device::class_prelude::UsbBusAllocator;
use usb_device::prelude::*;
use usbd_serial::SerialPort;

/// Second-stage bootloader for the Pico's W25Q16 flash (placed first in flash by `memory/pico.x`).
#[unsafe(link_section = ".boot2")]
#[used]
static BOOT2: [u8; 256] = rp2040_boot2::BOOT_LOADER_W25Q080;

/// The Pico's crystal.
const XOSC_HZ: u32 = 12_000_000;
/// Core clock set up by `init_clocks_and_plls`; one SysTick tick is one cycle.
const SYS_HZ: u64 = 125_000_000;

type LedPin =
    hal::gpio::Pin<hal::gpio::bank0::Gpio25, hal::gpio::FunctionSioOutput, hal::gpio::PullDown>;

/// The LED, shared with the SysTick handler that blinks it.
static LED: Mutex<RefCell<Option<LedPin>>> = Mutex::new(RefCell::new(None));
/// True while generating: the SysTick handler toggles the LED on every wrap (every 2^24 cycles,
/// about 134 ms).
static BUSY: AtomicBool = AtomicBool::new(false);

fn set_led(on: bool) {
    critical_section::with(|cs| {
        if let Some(led) = LED.borrow_ref_mut(cs).as_mut() {
            let _ = if on { led.set_high() } else { led.set_low() };
        }
    });
}

#[cortex_m_rt::exception]
fn SysTick() {
    ticks::on_wrap();
    if BUSY.load(Ordering::Relaxed) {
        critical_section::with(|cs| {
            if let Some(led) = LED.borrow_ref_mut(cs).as_mut() {
                let _ = led.toggle();
            }
        });
    }
}

/// A line of text being formatted for the serial port.
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    const fn new() -> Self {
        Line { buf: [0; 160], len: 0 }
    }
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n == s.len() { Ok(()) } else { Err(core::fmt::Error) }
    }
}

/// The USB device and its serial port.
struct Usb<'a> {
    dev: UsbDevice<'a, hal::usb::UsbBus>,
    serial: SerialPort<'a, hal::usb::UsbBus>,
}

impl Usb<'_> {
    fn poll(&mut self) -> bool {
        self.dev.poll(&mut [&mut self.serial])
    }

    /// Sends everything, polling the bus while the transmit buffer is full. Gives up (drops the
    /// rest) if the host stops reading, so a closed terminal cannot hang the firmware.
    fn send(&mut self, mut bytes: &[u8]) {
        let mut stalls = 0u32;
        while !bytes.is_empty() && stalls < 200_000 {
            match self.serial.write(bytes) {
                Ok(n) if n > 0 => {
                    bytes = &bytes[n..];
                    stalls = 0;
                }
                Ok(_) | Err(UsbError::WouldBlock) => {
                    self.poll();
                    stalls += 1;
                }
                Err(_) => return,
            }
        }
    }

    fn send_fmt(&mut self, args: core::fmt::Arguments<'_>) {
        let mut l = Line::new();
        let _ = l.write_fmt(args);
        self.send(l.as_bytes());
    }
}

use gan_embedded::console::{Command, HELP, parse_command};

#[hal::entry]
fn main() -> ! {
    stack::paint();
    let mut pac = pac::Peripherals::take().unwrap();
    let mut core = pac::CorePeripherals::take().unwrap();
    let mut watchdog = hal::Watchdog::new(pac.WATCHDOG);
    let clocks = hal::clocks::init_clocks_and_plls(
        XOSC_HZ,
        pac.XOSC,
        pac.CLOCKS,
        pac.PLL_SYS,
        pac.PLL_USB,
        &mut pac.RESETS,
        &mut watchdog,
    )
    .ok()
    .unwrap();
    let sio = hal::Sio::new(pac.SIO);
    let pins = hal::gpio::Pins::new(pac.IO_BANK0, pac.PADS_BANK0, sio.gpio_bank0, &mut pac.RESETS);
    let led: LedPin = pins.gpio25.into_push_pull_output();
    critical_section::with(|cs| LED.borrow_ref_mut(cs).replace(led));
    ticks::start(&mut core.SYST);

    let bus = UsbBusAllocator::new(hal::usb::UsbBus::new(
        pac.USBCTRL_REGS,
        pac.USBCTRL_DPRAM,
        clocks.usb_clock,
        true,
        &mut pac.RESETS,
    ));
    let serial = SerialPort::new(&bus);
    let dev = UsbDeviceBuilder::new(&bus, UsbVidPid(0x16c0, 0x27dd))
        .strings(&[StringDescriptors::default()
            .manufacturer("gan-mcu")
            .product("GAN digit generator")
            .serial_number("0001")])
        .unwrap()
        .device_class(usbd_serial::USB_CLASS_CDC)
        .build();
    let mut usb = Usb { dev, serial };

    let (bytes, source) = gan_embedded::select_weights(
        gan_embedded::weights_region(),
        gan_embedded::linked_weights(),
    );
    defmt::info!("weights: {} at {=usize:#x}", source, bytes.as_ptr() as usize);
    let file = gan_embedded::load(bytes, source);
    let bufs = Buffers::take().unwrap();
    let digits = match &file {
        Ok(f) => Digits::new(f, 0, bufs),
        Err(e) => Err(Error::Format(*e)),
    };
    let mut digits = match digits {
        Ok(d) => {
            defmt::info!("model ready: {} MACs per digit", d.macs());
            Ok(d)
        }
        Err(e) => {
            defmt::error!("cannot use the weights: {} (code {})", e, e.code());
            Err(e)
        }
    };

    let mut line = [0u8; 48];
    let mut len = 0usize;
    // The seed of the next digit typed without one.
    let mut next_seed = 0u64;
    loop {
        if !usb.poll() {
            continue;
        }
        let mut rx = [0u8; 64];
        let n = match usb.serial.read(&mut rx) {
            Ok(n) => n,
            Err(_) => continue,
        };
        for &b in &rx[..n] {
            match b {
                b'\r' | b'\n' => {
                    usb.send(b"\r\n");
                    if len > 0 {
                        handle(&mut usb, &line[..len], &mut digits, &file, source, &mut next_seed);
                    }
                    len = 0;
                }
                // Backspace / delete: erase the last character on the terminal too.
                0x08 | 0x7f if len > 0 => {
                    len -= 1;
                    usb.send(b"\x08 \x08");
                }
                0x08 | 0x7f => {}
                _ if len < line.len() => {
                    line[len] = b;
                    len += 1;
                    usb.send(&[b]);
                }
                _ => {}
            }
        }
    }
}

fn handle(
    usb: &mut Usb<'_>, line: &[u8], digits: &mut Result<Digits<'_>, Error>,
    file: &Result<WeightsFile<'static>, gan_core::format::FormatError>, source: Source,
    next_seed: &mut u64,
) {
    let d = match digits {
        Ok(d) => d,
        Err(e) => {
            usb.send_fmt(format_args!("error {}: {}\r\n", e.code(), e));
            return;
        }
    };
    match parse_command(line, d.classes()) {
        None | Some(Command::Help) => usb.send(HELP),
        Some(Command::Info) => {
            if let Ok(f) = file {
                let spec = f.spec();
                usb.send_fmt(format_args!(
                    "{}: {} -> {}, {} parameters, {} classes, {} MACs per digit\r\n",
                    source.name(),
                    spec.input(),
                    spec.output(),
                    spec.param_len(),
                    d.classes(),
                    d.macs()
                ));
            }
            usb.send_fmt(format_args!(
                "peak stack so far: {} of {} bytes\r\n",
                stack::peak(),
                stack::size()
            ));
        }
        Some(Command::Generate { seed, class }) => {
            if let Some(c) = class {
                if d.classes() > 0 && c as usize >= d.classes() {
                    usb.send_fmt(format_args!("the model has {} classes\r\n", d.classes()));
                    return;
                }
            }
            let seed = seed.unwrap_or_else(|| {
                let s = *next_seed;
                *next_seed = s.wrapping_add(1);
                s
            });
            d.reseed(seed);
            let width = gan_embedded::art_width(d.output_shape());
            BUSY.store(true, Ordering::Relaxed);
            set_led(true);
            let t0 = ticks::now();
            let result = d.next(class.map_or(ClassChoice::Cycle, ClassChoice::Fixed));
            let cycles = ticks::now() - t0;
            BUSY.store(false, Ordering::Relaxed);
            set_led(false);
            match result {
                Ok(pixels) => {
                    defmt::info!("seed {}: {} cycles", seed, cycles);
                    gan_embedded::ascii_art(pixels, width, |l| {
                        // The art lines end with `\n`; terminals want `\r\n`.
                        usb.send(&l[..l.len() - 1]);
                        usb.send(b"\r\n");
                    });
                    match class {
                        Some(c) => usb.send_fmt(format_args!("class {c}, seed {seed}: ")),
                        None => usb.send_fmt(format_args!("seed {seed}: ")),
                    }
                    usb.send_fmt(format_args!(
                        "{cycles} cycles ({} ms)\r\n",
                        cycles * 1000 / SYS_HZ
                    ));
                }
                Err(e) => usb.send_fmt(format_args!("error {}: {}\r\n", e.code(), e)),
            }
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    // Leave the LED on: a steady light without USB output means the firmware stopped.
    set_led(true);
    loop {
        cortex_m::asm::wfi();
    }
}
