//! The USB-serial digit console the Raspberry Pi Pico boards run (feature `usb`): a board's
//! binary sets up its clocks, LED and USB peripheral, then hands them to [`run`].
//!
//! Open the board's USB serial port (e.g. `picocom /dev/ttyACM0`) and type a line
//! ([`crate::console`]):
//! - `7` + Enter, for a conditional model (the `pico` preset): a 7, from the next seed of the
//!   console's counter; `7 s42`: the 7 of seed 42 (sample 0 of `gan-train sample --seed 42
//!   --class 7`);
//! - `42` for a model without classes: the digit of seed 42 (`s42` works for both);
//! - `info`: where the weights come from and the model's size; `help`: this list.
//!
//! The LED blinks while a digit is being generated (from the SysTick handler, which also keeps
//! [`crate::ticks`] counting), and stays lit after a panic. Logs go out with defmt.

use core::cell::RefCell;
use core::convert::Infallible;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, Ordering};

use critical_section::Mutex;
use embedded_hal::digital::StatefulOutputPin;
use gan_core::format::{FormatError, WeightsFile};
use usb_device::bus::UsbBus;
use usb_device::class_prelude::UsbBusAllocator;
use usb_device::prelude::*;
use usbd_serial::SerialPort;

use crate::console::{Command, HELP, parse_command};
use crate::{Buffers, ClassChoice, Digits, Error, Source, stack, ticks};

/// The board's LED pin.
type Led = dyn StatefulOutputPin<Error = Infallible> + Send;

/// The LED, shared with the SysTick handler that blinks it.
static LED: Mutex<RefCell<Option<&'static mut Led>>> = Mutex::new(RefCell::new(None));
/// True while generating: the SysTick handler toggles the LED on every wrap (every 2^24 cycles,
/// about a tenth of a second).
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

/// The Pico boards' panic handler: logs the panic and [`halt`]s.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    halt()
}

/// Leaves the LED on (a steady light without USB output means the firmware stopped) and
/// waits.
pub fn halt() -> ! {
    set_led(true);
    loop {
        cortex_m::asm::wfi();
    }
}

/// A line of text being formatted for the serial port.
struct Line {
    buf: [u8; 160],
    len: usize,
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
struct Usb<'a, B: UsbBus> {
    dev: UsbDevice<'a, B>,
    serial: SerialPort<'a, B>,
}

impl<B: UsbBus> Usb<'_, B> {
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
        let mut l = Line { buf: [0; 160], len: 0 };
        let _ = l.write_fmt(args);
        self.send(&l.buf[..l.len]);
    }
}

/// The `main` of a Pico board: takes the peripherals, starts the clocks from the 12 MHz crystal
/// (`init_clocks_and_plls`, which leaves the core at `$sys_hz`), the LED on GPIO25, SysTick and
/// the USB peripheral (`$usb`, `$dpram`: its register blocks' names in the HAL's PAC), then
/// [`run`]s the console. `$hal` is the board's HAL crate (rp2040-hal, rp235x-hal: the same
/// API for all of this).
#[macro_export]
macro_rules! pico_main {
    ($hal:ident, $sys_hz:expr, $usb:ident, $dpram:ident) => {{
        use $crate::usb_console::halt;
        use $hal as hal;
        $crate::stack::paint();
        let (Some(mut pac), Some(mut core)) =
            (hal::pac::Peripherals::take(), cortex_m::Peripherals::take())
        else {
            halt()
        };
        let mut watchdog = hal::Watchdog::new(pac.WATCHDOG);
        let Ok(clocks) = hal::clocks::init_clocks_and_plls(
            12_000_000,
            pac.XOSC,
            pac.CLOCKS,
            pac.PLL_SYS,
            pac.PLL_USB,
            &mut pac.RESETS,
            &mut watchdog,
        ) else {
            halt()
        };
        let sio = hal::Sio::new(pac.SIO);
        let pins =
            hal::gpio::Pins::new(pac.IO_BANK0, pac.PADS_BANK0, sio.gpio_bank0, &mut pac.RESETS);
        type Led = hal::gpio::Pin<
            hal::gpio::bank0::Gpio25,
            hal::gpio::FunctionSioOutput,
            hal::gpio::PullDown,
        >;
        let Some(led) = cortex_m::singleton!(: Led = pins.gpio25.into_push_pull_output()) else {
            halt()
        };
        $crate::ticks::start(&mut core.SYST);
        let bus = usb_device::class_prelude::UsbBusAllocator::new(hal::usb::UsbBus::new(
            pac.$usb,
            pac.$dpram,
            clocks.usb_clock,
            true,
            &mut pac.RESETS,
        ));
        $crate::usb_console::run(led, &bus, $sys_hz)
    }};
}

/// Runs the console forever: `led` blinks while generating, `bus` is the board's USB
/// peripheral, `sys_hz` the core clock (one SysTick tick per cycle; [`ticks::start`] must have
/// been called).
pub fn run<B: UsbBus>(led: &'static mut Led, bus: &UsbBusAllocator<B>, sys_hz: u64) -> ! {
    critical_section::with(|cs| LED.borrow_ref_mut(cs).replace(led));
    let serial = SerialPort::new(bus);
    let dev = UsbDeviceBuilder::new(bus, UsbVidPid(0x16c0, 0x27dd))
        .strings(&[StringDescriptors::default()
            .manufacturer("gan-mcu")
            .product("GAN digit generator")
            .serial_number("0001")])
        .unwrap_or_else(|_| halt())
        .device_class(usbd_serial::USB_CLASS_CDC)
        .build();
    let mut usb = Usb { dev, serial };

    let (bytes, source) = crate::select_weights(crate::weights_region(), crate::linked_weights());
    defmt::info!("weights: {} at {=usize:#x}", source, bytes.as_ptr() as usize);
    let file = crate::load(bytes, source);
    let digits = match (&file, Buffers::take()) {
        (Ok(f), Some(bufs)) => Digits::new(f, 0, bufs),
        (Err(e), _) => Err(Error::Format(*e)),
        (Ok(_), None) => halt(),
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
                        let run = Session { digits: &mut digits, file: &file, source, sys_hz };
                        run.handle(&mut usb, &line[..len], &mut next_seed);
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

/// What a command line works with.
struct Session<'s, 'd> {
    digits: &'s mut Result<Digits<'d>, Error>,
    file: &'s Result<WeightsFile<'static>, FormatError>,
    source: Source,
    sys_hz: u64,
}

impl Session<'_, '_> {
    fn handle<B: UsbBus>(self, usb: &mut Usb<'_, B>, line: &[u8], next_seed: &mut u64) {
        let d = match self.digits {
            Ok(d) => d,
            Err(e) => {
                usb.send_fmt(format_args!("error {}: {}\r\n", e.code(), e));
                return;
            }
        };
        match parse_command(line, d.classes()) {
            None | Some(Command::Help) => usb.send(HELP),
            Some(Command::Info) => {
                if let Ok(f) = self.file {
                    let spec = f.spec();
                    usb.send_fmt(format_args!(
                        "{}: {} -> {}, {} parameters, {} classes, {} MACs per digit\r\n",
                        self.source.name(),
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
                let width = crate::art_width(d.output_shape());
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
                        crate::ascii_art(pixels, width, |l| {
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
                            cycles * 1000 / self.sys_hz
                        ));
                    }
                    Err(e) => usb.send_fmt(format_args!("error {}: {}\r\n", e.code(), e)),
                }
            }
        }
    }
}
