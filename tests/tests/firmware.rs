//! The firmware end to end: gan-embedded is built for both Cortex-M targets and run in
//! `qemu-system-arm`, and its digits must be byte-identical to host generation; bad weights
//! files must end QEMU with their distinct error codes; the Pico firmware must build and convert
//! to a UF2 that covers its load segments.
//!
//! The firmware builds run `cargo build --release` inside `gan-embedded/` (its own target folder,
//! so later runs are incremental). QEMU is required: if it is missing these tests fail, they
//! never skip. Every QEMU run is killed after [`QEMU_TIMEOUT`].
//!
//! Measurements (instructions per digit, flash, RAM, peak stack) are printed to stderr; see them
//! with `cargo test -p gan-tests --test firmware -- --nocapture`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gan_core::board::{self, Board};
use gan_core::encoding::Encoding;
use gan_core::format::{self, ModelKind, NoiseKind};
use gan_core::spec::{Layer, Shape, Spec};
use gan_train::sample::{AlignedBytes, ClassChoice};
use gan_train::uf2;

const QEMU_TIMEOUT: Duration = Duration::from_secs(60);

/// The Cortex-M4F board, thumbv7em-none-eabihf build.
const M4: &Board = &board::QEMU_M4;

/// ARMv6-M code (the Pico's instruction set) on the Cortex-M3 board, with the Pico's budgets.
const M0: &Board = &board::QEMU_M0;

/// ARMv8-M Mainline with FPU and DSP (the Pico 2's instruction set) on the Cortex-M33 board,
/// thumbv8m.main-none-eabihf build.
const M33: &Board = &board::QEMU_M33;

/// The QEMU machine of an emulated board.
fn qemu_of(b: &Board) -> board::Qemu {
    b.qemu.unwrap_or_else(|| panic!("{} is not an emulated board", b.name))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn embedded_dir() -> PathBuf {
    repo_root().join("gan-embedded")
}

fn elf_path(target: &str, bin: &str) -> PathBuf {
    embedded_dir().join("target").join(target).join("release").join(bin)
}

/// `cargo build --release <args>` inside gan-embedded, with the outer build's settings removed
/// so the firmware uses its own target folder and flags.
fn cargo_build(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(embedded_dir()).arg("build").arg("--release").args(args);
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "GAN_WEIGHTS",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`cargo build --release {}` in gan-embedded failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Builds the QEMU firmware for both targets and the Pico firmware, once per test run.
fn build_firmware() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let r = BUILT.get_or_init(|| {
        cargo_build(&["--target", M4.target, "--bin", "qemu"])?;
        cargo_build(&["--target", M0.target, "--bin", "qemu"])?;
        cargo_build(&["--target", M33.target, "--bin", "qemu"])?;
        cargo_build(&["--target", board::PICO.target, "--features", "pico", "--bin", "pico"])?;
        cargo_build(&["--target", board::PICO2.target, "--features", "pico2", "--bin", "pico2"])
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// `qemu-system-arm`, found on PATH, or a failed test saying how to get it.
fn qemu() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|p| p.join("qemu-system-arm")).find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "qemu-system-arm is not on PATH: the firmware tests need it \
             (Debian/Ubuntu: apt-get install qemu-system-arm; tests/run-all installs it)"
        )
    })
}

/// A scratch folder under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gan-fw-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one QEMU run produced.
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
    /// The raw digits file (`out=digits.bin`), if written.
    digits: Option<Vec<u8>>,
}

impl Run {
    /// The number after `key` on the first stdout line that starts with it.
    fn number(&self, key: &str) -> u64 {
        let line = self
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no `{key}` line in:\n{}", self.stdout));
        let digits: String = line.trim_start().chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap_or_else(|_| panic!("bad `{key}` line: {line}"))
    }

    /// Every number after `key` on stdout, in order.
    fn numbers(&self, key: &str) -> Vec<u64> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(key))
            .map(|l| {
                let d: String = l.trim_start().chars().take_while(char::is_ascii_digit).collect();
                d.parse().unwrap()
            })
            .collect()
    }
}

/// Runs the QEMU firmware for `board` with semihosting arguments `args`, optionally loading
/// `weights` into the WEIGHTS region. Fails the test on timeout.
fn run_qemu(board: &Board, weights: Option<&[u8]>, args: &[&str]) -> Run {
    build_firmware();
    let qemu = qemu();
    let dir = Scratch::new(board.name);
    let mut semihosting = String::from("enable=on,target=native,arg=firmware");
    for a in args.iter().chain(&["out=digits.bin"]) {
        assert!(
            !a.contains([',', ' ']),
            "argument {a:?} cannot be passed through -semihosting-config"
        );
        semihosting.push_str(",arg=");
        semihosting.push_str(a);
    }
    let mut cmd = Command::new(&qemu);
    cmd.current_dir(&dir.0)
        .args(["-machine", qemu_of(board).machine, "-cpu", qemu_of(board).cpu, "-nographic"])
        .args(["-semihosting-config", &semihosting])
        // One instruction = 1 ns of virtual time: the firmware's SysTick counts instructions.
        .args(["-icount", "shift=0"])
        .arg("-kernel")
        .arg(elf_path(board.target, "qemu"));
    if let Some(w) = weights {
        assert!(
            w.len() <= board.weights.len as usize + (1 << 20),
            "test weights do not fit the board"
        );
        std::fs::write(dir.0.join("weights.ganw"), w).unwrap();
        cmd.args([
            "-device",
            &format!("loader,file=weights.ganw,addr={:#x}", board.weights.origin),
        ]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", qemu.display()));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = pipe.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > QEMU_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "QEMU ({}) did not finish within {QEMU_TIMEOUT:?}; output so far:\n{}",
                board.name,
                out.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status: status.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        digits: std::fs::read(dir.0.join("digits.bin")).ok(),
    }
}

/// Host generation with the shared routine (what `gan-train sample` prints).
fn host_digits(weights: &[u8], seed: u64, n: usize, class: ClassChoice) -> Vec<u8> {
    let aligned = AlignedBytes::new(weights);
    let w = aligned.weights().expect("test weights are valid");
    gan_train::sample::generate(&w, seed, n, class).expect("host generation")
}

/// A small conditional generator (16 noise values + 10 classes → 48 → 784), uniform noise.
fn small_conditional() -> Vec<u8> {
    const LAYERS: [Layer; 4] = [
        Layer::Dense { out: 48 },
        Layer::LeakyRelu { alpha: 0.2 },
        Layer::Dense { out: 784 },
        Layer::Tanh,
    ];
    let spec = Spec::new(Shape::flat(26), &LAYERS).unwrap();
    gan_tests::make_weights_with(ModelKind::Generator, &spec, 16, 10, NoiseKind::Uniform, 41)
}

/// A small unconditional generator (24 → 40 → 784 with a Sigmoid output), Gaussian noise.
fn small_unconditional() -> Vec<u8> {
    const LAYERS: [Layer; 4] =
        [Layer::Dense { out: 40 }, Layer::Relu, Layer::Dense { out: 784 }, Layer::Sigmoid];
    gan_tests::make_weights(&Spec::new(Shape::flat(24), &LAYERS).unwrap(), 42)
}

fn assert_success(run: &Run, what: &str) {
    assert_eq!(
        run.status, 0,
        "{what}: QEMU exited with {}\nstdout:\n{}\nstderr:\n{}",
        run.status, run.stdout, run.stderr
    );
}

/// Runs the firmware on `weights` (three digits from `seed`, of `class` or cycling) and checks
/// its digits and ASCII art against the host's; returns the run.
fn check_loaded_weights(board: &Board, weights: &[u8], seed: u64, class: Option<u32>) -> Run {
    let seed_arg = format!("seed={seed}");
    let class_arg = class.map(|c| format!("class={c}"));
    let mut args = vec![seed_arg.as_str(), "count=3"];
    args.extend(class_arg.as_deref());
    let run = run_qemu(board, Some(weights), &args);
    assert_success(&run, "loaded weights");
    assert!(run.stdout.contains("weights: weights region"), "{}", run.stdout);
    let expected =
        host_digits(weights, seed, 3, class.map_or(ClassChoice::Cycle, ClassChoice::Fixed));
    let got = run.digits.clone().expect("the firmware wrote no digits file");
    assert_eq!(got.len(), 3 * 784);
    assert!(got == expected, "{}: firmware digits differ from host generation", board.name);
    // Three pieces of ASCII art, 28 lines each, drawn exactly as `gan-train sample --ascii`
    // draws the host's digits.
    let art: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.len() == 28 && l.bytes().all(|b| b" .:-=+*#%@".contains(&b)))
        .collect();
    let host_art = gan_train::sample::ascii_art(&expected, 28);
    assert_eq!(
        art,
        host_art.lines().collect::<Vec<_>>(),
        "{}: the firmware's ASCII art differs from the host's:\n{}",
        board.name,
        run.stdout
    );
    run
}

/// Prints the instructions per digit the firmware measured in `run` (for BENCHMARKS.md).
fn report_instructions(board: &Board, what: &str, run: &Run) {
    let macs = run.number("MACs:");
    let instructions = run.numbers("instructions:");
    assert!(instructions.iter().all(|&i| i > macs), "{instructions:?} vs {macs} MACs");
    let per_digit = instructions.iter().sum::<u64>() / instructions.len().max(1) as u64;
    eprintln!(
        "{} ({}), {what}: {per_digit} instructions/digit, {macs} MACs/digit, {:.2} instructions/MAC, peak stack {} B",
        board.name,
        board.target,
        per_digit as f64 / macs as f64,
        run.number("peak stack:")
    );
}

/// A `pico`-preset generator (convolutional, conditional, batch norm) with random weights.
fn pico_weights(seed: u64) -> Vec<u8> {
    let spec = gan_tests::pico_spec();
    let latent = gan_core::presets::PICO.latent;
    let classes = gan_core::presets::PICO_CLASSES;
    gan_tests::make_weights_with(
        ModelKind::Generator,
        &spec,
        latent,
        classes,
        NoiseKind::Gaussian,
        seed,
    )
}

/// The `pico` generator four ways: as trained (with batch normalisation), folded as `export`
/// writes it, folded as int8, and all-integer (q8).
fn pico_variants(seed: u64) -> [(&'static str, Vec<u8>); 4] {
    let trained = pico_weights(seed);
    let folded = gan_train::run::reencode_weights(&trained, Encoding::F32).unwrap();
    let int8 = gan_train::run::reencode_weights(&trained, Encoding::I8).unwrap();
    let q8 = gan_train::run::reencode_weights(&trained, Encoding::Q8).unwrap();
    assert!(folded.len() < trained.len() && int8.len() < folded.len() / 3);
    assert!(q8.len() < folded.len() / 2);
    [("with batch norm", trained), ("folded", folded), ("int8", int8), ("q8", q8)]
}

/// Every [`pico_variants`] variant (weights drawn with `seed`) on `board`: digits of every
/// class, then of each of `classes` alone, equal to the host's; instruction counts printed.
fn check_pico_preset(board: &Board, seed: u64, classes: &[u32]) {
    for (what, w) in pico_variants(seed) {
        let run = check_loaded_weights(board, &w, seed - 40, None);
        report_instructions(board, &format!("pico preset {what}"), &run);
        for &class in classes {
            check_loaded_weights(board, &w, seed + 50 + u64::from(class), Some(class));
        }
    }
}

#[test]
fn m4_pico_preset_matches_host() {
    check_pico_preset(M4, 51, &[0, 4, 9]);
}

#[test]
fn m0_pico_preset_matches_host() {
    check_pico_preset(M0, 52, &[8]);
}

#[test]
fn m33_pico_preset_matches_host() {
    check_pico_preset(M33, 53, &[2]);
}

#[test]
fn m4_digits_match_host_with_loaded_weights() {
    let w = small_conditional();
    check_loaded_weights(M4, &w, 0xDEAD_BEEF_0123_4567, None);
    check_loaded_weights(M4, &w, 5, Some(7));
}

#[test]
fn m0_digits_match_host_with_loaded_weights() {
    check_loaded_weights(M0, &small_unconditional(), 987_654_321, None);
    check_loaded_weights(M0, &small_conditional(), 3, None);
}

/// The weights every firmware links unless told otherwise: the default `pico` generator as
/// all-integer q8 (`data/weights/default-q8.ganw`), checked to be exactly the q8 export of the
/// f32 default (`data/weights/default.ganw`), as `default-i8.ganw` is its int8 export.
fn linked_default() -> Vec<u8> {
    let f32 = std::fs::read(repo_root().join("data/weights/default.ganw")).unwrap();
    let int8 = std::fs::read(repo_root().join("data/weights/default-i8.ganw")).unwrap();
    let q8 = std::fs::read(repo_root().join("data/weights/default-q8.ganw")).unwrap();
    let again_q8 = gan_train::run::reencode_weights(&f32, Encoding::Q8).unwrap();
    assert!(again_q8 == q8, "default-q8.ganw is not `export --dtype q8` of default.ganw");
    let again = gan_train::run::reencode_weights(&f32, Encoding::I8).unwrap();
    assert!(again == int8, "default-i8.ganw is not `export --dtype i8` of default.ganw");
    q8
}

/// Runs the linked default weights (one digit of every class), compares with the host, and
/// prints the measurements.
fn check_default_weights(board: &Board, region: Option<&[u8]>) {
    let default = linked_default();
    let run = run_qemu(board, region, &["seed=2026", "count=10"]);
    assert_success(&run, "default weights");
    assert!(run.stdout.contains("weights: linked weights"), "{}", run.stdout);
    let expected = host_digits(&default, 2026, 10, ClassChoice::Cycle);
    assert!(
        run.digits.as_deref() == Some(&expected[..]),
        "{}: firmware digits from the linked weights differ from host generation",
        board.name
    );

    let macs = run.number("MACs:");
    let instructions = run.numbers("instructions:");
    assert_eq!(instructions.len(), 10);
    let peak_stack = run.number("peak stack:");
    assert!(instructions.iter().all(|&i| i > macs), "{instructions:?} vs {macs} MACs");
    let elf = std::fs::read(elf_path(board.target, "qemu")).unwrap();
    let size = gan_tests::firmware_size(&elf).unwrap();
    assert_eq!(size.weights_flash as usize, default.len().next_multiple_of(4));
    let per_digit = instructions.iter().sum::<u64>() / 10;
    eprintln!(
        "firmware {} ({}): code flash {} B, linked weights {} B, static RAM {} B, peak stack {} B, \
         {} instructions/digit, {} MACs/digit, {:.2} instructions/MAC",
        board.name,
        board.target,
        size.code_flash,
        size.weights_flash,
        size.static_ram,
        peak_stack,
        per_digit,
        macs,
        per_digit as f64 / macs as f64
    );
}

#[test]
fn m4_default_weights_and_measurements() {
    // A WEIGHTS region without the magic is ignored: the linked file is used.
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 31 + 7) as u8).collect();
    check_default_weights(M4, Some(&garbage));
}

#[test]
fn m0_default_weights_and_measurements() {
    check_default_weights(M0, None);
}

#[test]
fn m33_default_weights_and_measurements() {
    check_default_weights(M33, None);
}

/// The `mcu` generator (`data/weights/mcu.ganw`) as f32, re-encoded with int8 weights and
/// all-integer (q8), loaded into the WEIGHTS region: the device's bytes equal the host's, and
/// the instruction counts are printed. An int8 table in a version-1 file is refused with the
/// tensor-table code.
fn check_mcu(board: &Board) {
    let mcu = std::fs::read(repo_root().join("data/weights/mcu.ganw")).unwrap();
    let run = check_loaded_weights(board, &mcu, 2026, None);
    report_instructions(board, "mcu preset f32", &run);
    let q8 = gan_train::run::reencode_weights(&mcu, Encoding::Q8).unwrap();
    let run = check_loaded_weights(board, &q8, 2027, None);
    report_instructions(board, "mcu preset q8", &run);
    let q = gan_train::run::reencode_weights(&mcu, Encoding::I8).unwrap();
    assert!(q.len() * 3 < mcu.len(), "int8 file is not smaller");
    let run = check_loaded_weights(board, &q, 2026, None);
    assert_eq!(run.numbers("instructions:").len(), 3);
    report_instructions(board, &format!("mcu preset int8 ({} B weights file)", q.len()), &run);

    let mut v1 = q.clone();
    v1[4] = 1;
    let run = run_qemu(board, Some(&v1), &["seed=1", "count=1"]);
    assert_eq!(run.status, 15, "int8 table in a v1 file\n{}", run.stdout);
}

#[test]
fn m4_mcu_weights_match_host() {
    check_mcu(M4);
}

#[test]
fn m0_mcu_weights_match_host() {
    check_mcu(M0);
}

#[test]
fn m33_mcu_weights_match_host() {
    check_mcu(M33);
}

/// The default generator as q8 with the shift of its last layer's requantisation set to 0,
/// checksums repaired.
fn bad_requant() -> Vec<u8> {
    let f32 = std::fs::read(repo_root().join("data/weights/default.ganw")).unwrap();
    let mut q8 = gan_train::run::reencode_weights(&f32, Encoding::Q8).unwrap();
    let (h, at) = format::parse_header(&q8).unwrap();
    let t = h.tensors.iter().rfind(|t| t.kind == format::TensorKind::Requant).unwrap();
    let o = at + t.offset as usize + 8;
    q8[o..o + 4].fill(0);
    gan_train::fuzz::repair_weights(&q8)
}

/// Each kind of bad weights file ends QEMU with its own error code.
fn check_bad_weights(board: &Board) {
    let good = small_conditional();
    let (header, data_at) = format::parse_header(&good).unwrap();
    let data_len = header.data_len as usize;
    assert_eq!(good.len(), data_at + data_len);

    let mut corrupt = good.clone();
    corrupt[data_at + data_len / 2] ^= 0x40;
    let truncated = good[..data_at + data_len / 2].to_vec();
    let mut version = good.clone();
    version[4] = format::VERSION as u8 + 1;
    let mut bad_header = good.clone();
    bad_header[format::PREAMBLE_LEN + 3] ^= 0x01;
    const WIDE: [Layer; 2] = [Layer::Dense { out: 4 }, Layer::Tanh];
    let too_wide = gan_tests::make_weights(&Spec::new(Shape::flat(1100), &WIDE).unwrap(), 3);
    // A convolutional generator with a 5 × 28 × 28 map: wider than the largest preset's.
    const WIDE_CONV: [Layer; 5] = [
        Layer::Dense { out: 8 * 14 * 14 },
        Layer::Reshape { to: Shape::image(8, 14, 14) },
        Layer::ConvTranspose2d { out_c: 5, k: 4, stride: 2, pad: 1 },
        Layer::Conv2d { out_c: 1, k: 3, stride: 1, pad: 1 },
        Layer::Tanh,
    ];
    let wide_conv = gan_tests::make_weights(&Spec::new(Shape::flat(8), &WIDE_CONV).unwrap(), 6);
    // The default int8 `pico` file with a flipped weight of its first transposed convolution,
    // and cut in the middle of that layer's weights.
    let conv = std::fs::read(repo_root().join("data/weights/default-i8.ganw")).unwrap();
    let (conv_header, conv_at) = format::parse_header(&conv).unwrap();
    let first_conv = conv_header
        .tensors
        .iter()
        .find(|t| t.layer == 3 && t.kind == format::TensorKind::Weight)
        .expect("the pico generator's layer 3 is its first transposed convolution");
    let mut corrupt_conv = conv.clone();
    corrupt_conv[conv_at + first_conv.offset as usize + 100] ^= 0x08;
    let truncated_conv = conv[..conv_at + first_conv.offset as usize + 1000].to_vec();
    // Valid checksums around a NaN weight (written by the format's own writer).
    let nan_spec = Spec::new(Shape::flat(26), &[Layer::Dense { out: 784 }, Layer::Tanh]).unwrap();
    let mut nan_params = gan_tests::random_params(&nan_spec, 8);
    nan_params[1234] = f32::NAN;
    let nan_header =
        format::Header::for_spec(ModelKind::Generator, &nan_spec, 26, 0, NoiseKind::Gaussian)
            .unwrap();
    let mut nan_weight = vec![0u8; format::max_file_len(nan_params.len())];
    let len = format::write(&mut nan_weight, &nan_header, &nan_params).unwrap();
    nan_weight.truncate(len);
    const DISC: [Layer; 4] = [
        Layer::Dense { out: 16 },
        Layer::LeakyRelu { alpha: 0.2 },
        Layer::Dense { out: 1 },
        Layer::Sigmoid,
    ];
    let disc = gan_tests::make_weights_with(
        ModelKind::Discriminator,
        &Spec::new(Shape::flat(784), &DISC).unwrap(),
        0,
        0,
        NoiseKind::Gaussian,
        4,
    );
    let mut cases: Vec<(&str, Vec<u8>, u8)> = vec![
        ("corrupt data", corrupt, 16),
        ("truncated", truncated, 10),
        ("unsupported version", version, 12),
        ("corrupt header", bad_header, 13),
        ("too wide for the buffers", too_wide, 18),
        ("a convolution too wide for the buffers", wide_conv, 18),
        ("corrupt int8 convolution data", corrupt_conv.clone(), 16),
        ("truncated int8 convolutions", truncated_conv, 10),
        ("a NaN weight", nan_weight, 22),
        ("a q8 requantisation out of range", bad_requant(), 23),
        ("a discriminator", disc, 19),
    ];
    if board.weights.len as usize <= 1 << 20 {
        // A generator whose file (~1.09 MB) is larger than the 1 MiB region. (On the M4 board a
        // file larger than its 2 MiB region would spill into the memory mirror over the code.)
        const BIG: [Layer; 4] = [
            Layer::Dense { out: 320 },
            Layer::LeakyRelu { alpha: 0.2 },
            Layer::Dense { out: 784 },
            Layer::Tanh,
        ];
        let big = gan_tests::make_weights(&Spec::new(Shape::flat(64), &BIG).unwrap(), 5);
        assert!(big.len() > board.weights.len as usize);
        cases.push(("larger than the region", big, 18));
    }
    for (what, bytes, code) in cases {
        let run = run_qemu(board, Some(&bytes), &["count=1"]);
        assert_eq!(
            run.status, code as i32,
            "{} with {what} weights: expected exit code {code}\nstdout:\n{}\nstderr:\n{}",
            board.name, run.stdout, run.stderr
        );
        assert!(run.stdout.contains(&format!("error {code}:")), "{}", run.stdout);
    }
}

#[test]
fn m4_bad_weights_exit_with_their_codes() {
    check_bad_weights(M4);
}

#[test]
fn m0_bad_weights_exit_with_their_codes() {
    check_bad_weights(M0);
}

#[test]
fn m33_bad_weights_exit_with_their_codes() {
    check_bad_weights(M33);
}

#[test]
fn bad_arguments_and_panics_exit_with_failure() {
    let run = run_qemu(M4, None, &["colour=blue"]);
    assert_eq!(run.status, 2, "{}", run.stdout);
    let run = run_qemu(M4, None, &["panic=1"]);
    assert_eq!(run.status, 101, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("panic"), "{}", run.stderr);
}

#[test]
fn pico_firmware_builds_and_converts_to_uf2() {
    build_firmware();
    for (b, first_is) in [(&board::PICO, "boot2"), (&board::PICO2, "the vector table")] {
        check_uf2(b, first_is);
    }
}

/// A Pico board's firmware as a UF2 (its family id, every byte of the ELF's segments, all of
/// it below the WEIGHTS region, `first_is` at the start of flash) and a weights-only UF2 for
/// its WEIGHTS region; the firmware fits the board's flash and RAM.
fn check_uf2(b: &Board, first_is: &str) {
    let family = b.uf2_family.unwrap();
    let elf = std::fs::read(elf_path(b.target, b.bin)).unwrap();
    let image = uf2::elf_to_uf2(&elf, family).unwrap();
    let blocks = uf2::read_uf2(&image).unwrap();
    assert!(!blocks.is_empty());
    let flash_start = b.boot2.map_or(b.flash.origin, |r| r.origin);
    for blk in &blocks {
        assert_eq!(blk.flags, uf2::FLAG_FAMILY_ID_PRESENT);
        assert_eq!(blk.family_id, family);
        assert_eq!(blk.addr % 256, 0);
        assert_eq!(blk.data.len(), 256);
        // Everything goes to the code half of the flash, below the WEIGHTS region.
        let code = flash_start..b.weights.origin;
        assert!(code.contains(&blk.addr), "{}: block at {:#x}", b.name, blk.addr);
    }
    assert_eq!(blocks[0].addr, flash_start, "{}: {first_is} comes first", b.name);
    let memory: std::collections::HashMap<u32, u8> = blocks
        .iter()
        .flat_map(|blk| blk.data.iter().enumerate().map(move |(i, &v)| (blk.addr + i as u32, v)))
        .collect();
    let segments = uf2::load_segments(&elf).unwrap();
    assert!(segments.len() >= 3, "expected vector table, code and data segments");
    for seg in &segments {
        for (i, &v) in seg.data.iter().enumerate() {
            let addr = seg.addr + i as u32;
            assert_eq!(memory.get(&addr), Some(&v), "{}: UF2 byte at {addr:#x}", b.name);
        }
    }
    if b.image_def {
        // The RP2350 boot ROM finds the image by its IMAGE_DEF block (marker 0xffffded3) in
        // the first 4 KiB of flash.
        let marker = (b.flash.origin..b.flash.origin + 4096).step_by(4).find(|a| {
            (0..4).all(|i| memory.get(&(a + i)) == Some(&0xffff_ded3u32.to_le_bytes()[i as usize]))
        });
        assert!(marker.is_some(), "{}: no IMAGE_DEF block in the first 4 KiB", b.name);
    }
    let size = gan_tests::firmware_size(&elf).unwrap();
    assert!(size.code_flash + size.weights_flash <= b.flash.len);
    assert!(size.static_ram < b.ram.len);
    eprintln!(
        "firmware {} ({}): code flash {} B, linked weights {} B, static RAM {} B, UF2 {} blocks",
        b.name,
        b.target,
        size.code_flash,
        size.weights_flash,
        size.static_ram,
        blocks.len()
    );

    // A weights-only UF2 for the WEIGHTS region, as users flash to swap models.
    let weights = std::fs::read(repo_root().join("data/weights/mcu.ganw")).unwrap();
    let wblocks = uf2::read_uf2(&uf2::bin_to_uf2(&weights, b.weights.origin, family)).unwrap();
    assert_eq!(wblocks.len(), weights.len().div_ceil(256));
    assert_eq!(wblocks[0].addr, b.weights.origin);
    let back: Vec<u8> = wblocks.iter().flat_map(|blk| blk.data.iter().copied()).collect();
    assert_eq!(&back[..weights.len()], &weights[..]);
    assert!(wblocks.last().unwrap().addr + 256 <= b.weights.end());
}

/// The firmware's capacities, as `gan-embedded/build.rs` reads them.
#[allow(dead_code)]
mod firmware_limits {
    include!("../../gan-embedded/src/limits.rs");
}

/// The shipped weights are generators that fit the firmware (the default int8 one is linked
/// into every firmware build).
#[test]
fn shipped_weights_fit_the_firmware() {
    let widest = firmware_limits::MAX_FEATURES;
    for (name, limit) in [
        ("default-q8.ganw", 200 * 1024),
        ("default-i8.ganw", 200 * 1024),
        ("default.ganw", 400 * 1024),
        ("mcu.ganw", 900 * 1024),
    ] {
        let bytes = std::fs::read(repo_root().join("data/weights").join(name)).unwrap();
        let aligned = AlignedBytes::new(&bytes);
        let w = aligned.weights().unwrap();
        w.check_generator_fits(firmware_limits::MAX_PARAMS, widest).unwrap();
        assert_eq!(w.spec().output().len(), 784);
        // Together with ~90 KB of code each must fit the Pico's 1 MiB code region.
        assert!(bytes.len() < limit, "{name} is {} bytes", bytes.len());
    }
}
