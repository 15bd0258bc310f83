//! The fuzz targets of `gan_train::fuzz` on a corpus of real inputs (the shipped weights, a
//! checkpoint, configurations, IDX data) and seeded mutations of them, half with their checksums
//! repaired so that they reach the checks behind them. Any panic fails the test, names the
//! target and iteration, and leaves the input in the system's temporary folder for replay.
//!
//! `GAN_FUZZ_ITERATIONS=N` sets the mutations per corpus file (default 300, a few seconds in
//! all); the long runs are documented in `fuzz/README.md`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use gan_train::config::{Arch, DataShape, TrainConfig};
use gan_train::fuzz;
use gan_train::trainer::Gan;

fn repo(path: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// A small deterministic generator of mutations.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// A position, most often in the first `hot` bytes (where the headers are).
    fn pos(&mut self, len: usize, hot: usize) -> usize {
        if self.below(4) < 3 { self.below(hot.min(len)) } else { self.below(len) }
    }

    /// One to four mutations of `input`.
    fn mutate(&mut self, input: &[u8], hot: usize) -> Vec<u8> {
        const WORDS: [u32; 8] = [0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF];
        let mut v = input.to_vec();
        for _ in 0..1 + self.below(4) {
            if v.is_empty() {
                v.push(0);
            }
            let len = v.len();
            let at = self.pos(len, hot);
            match self.below(7) {
                0 => v[at] ^= 1 << self.below(8),
                1 => v[at] = [0, 0xFF, 0x7F, 0x80, 1][self.below(5)],
                2 if at + 4 <= len => {
                    let w = WORDS[self.below(WORDS.len())];
                    v[at..at + 4].copy_from_slice(&w.to_le_bytes());
                }
                3 => v.truncate(at),
                4 => {
                    let n = self.below(64).min(len - at);
                    v.drain(at..at + n);
                }
                5 => {
                    let n = self.below(64).min(len - at);
                    let chunk = v[at..at + n].to_vec();
                    v.splice(at..at, chunk);
                }
                _ => v[at] = v[at].wrapping_add(1 + self.below(4) as u8),
            }
        }
        v
    }
}

/// Runs `target` on `input` and `iterations` mutations of it (`hot`: the header bytes that
/// most mutations hit); a panic fails with the target's name and the iteration.
fn run(name: &str, target: fn(&[u8]), input: &[u8], hot: usize, iterations: usize, seed: u64) {
    let mut m = Mutator(seed | 1);
    for i in 0..=iterations {
        let bytes = if i == 0 { input.to_vec() } else { m.mutate(input, hot) };
        if catch_unwind(AssertUnwindSafe(|| target(&bytes))).is_err() {
            let keep = std::env::temp_dir().join(format!("gan-fuzz-{name}-{seed}-{i}.bin"));
            let _ = std::fs::write(&keep, &bytes);
            panic!(
                "fuzz target {name} panicked on iteration {i}; input kept at {}",
                keep.display()
            );
        }
    }
}

fn iterations() -> usize {
    std::env::var("GAN_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}

#[test]
fn weights_files() {
    let n = iterations();
    for (i, file) in [
        "data/weights/default-q8.ganw",
        "data/weights/default-i8.ganw",
        "data/weights/default.ganw",
        "data/weights/mcu.ganw",
    ]
    .iter()
    .enumerate()
    {
        let bytes = repo(file);
        // Of the big f32 files, fewer mutations: each copies the whole file.
        let n = if bytes.len() > 200_000 { n / 3 } else { n };
        run("weights", fuzz::weights, &bytes, 512, n, 11 + i as u64);
        run("weights_repaired", fuzz::weights_repaired, &bytes, 512, n, 21 + i as u64);
    }
}

#[test]
fn checkpoints() {
    let n = iterations();
    for (i, arch) in [Arch::Custom, Arch::Pico].into_iter().enumerate() {
        let cfg = TrainConfig {
            arch,
            latent: 8,
            g_hidden: if arch == Arch::Pico { vec![4, 2] } else { vec![16] },
            d_hidden: vec![8],
            ..TrainConfig::preset(arch)
        };
        let gan = Gan::new(&cfg, DataShape::MNIST).unwrap();
        let bytes = gan_train::checkpoint::encode(&gan.checkpoint()).unwrap();
        run("checkpoint", fuzz::checkpoint, &bytes, 64, n, 31 + i as u64);
        run("checkpoint_repaired", fuzz::checkpoint_repaired, &bytes, 2048, n, 41 + i as u64);
    }
}

#[test]
fn configurations() {
    let n = iterations();
    for (i, arch) in [Arch::Pico, Arch::Mcu, Arch::Dcgan, Arch::Custom].into_iter().enumerate() {
        let text = toml::to_string(&TrainConfig::preset(arch)).unwrap();
        run("config", fuzz::config, text.as_bytes(), text.len(), n, 51 + i as u64);
    }
}

#[test]
fn idx_files() {
    use std::io::{Read, Write};
    let n = iterations();
    let gunzip = |path: &str| {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&repo(path)[..]).read_to_end(&mut out).unwrap();
        out
    };
    let images = gunzip("data/mnist-10k/images-idx3-ubyte.gz");
    let labels = gunzip("data/mnist-10k/labels-idx1-ubyte.gz");
    // Twenty images and labels, with the counts in their headers set to match.
    let mut few = images[..16 + 20 * 784].to_vec();
    few[4..8].copy_from_slice(&20u32.to_be_bytes());
    let mut few_labels = labels[..8 + 20].to_vec();
    few_labels[4..8].copy_from_slice(&20u32.to_be_bytes());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&few).unwrap();
    let few_gz = gz.finish().unwrap();
    run("idx", fuzz::idx, &few, 16, n, 61);
    run("idx", fuzz::idx, &few_labels, 8, n, 62);
    run("idx", fuzz::idx, &few_gz, 32, n, 63);
}
