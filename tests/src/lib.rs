//! Helpers shared by the end-to-end tests: random weights files for any generator spec, the
//! "mcu" generator architecture the firmware ships with, and a minimal ELF section reader for
//! firmware size reports.

use gan_core::format::{self, Header, ModelKind, NoiseKind};
use gan_core::noise;
use gan_core::spec::{Shape, Spec};

/// Noise values per sample of the "mcu" generator.
pub const MCU_LATENT: u32 = gan_core::presets::MCU.latent;

/// The "mcu" generator's spec ([`gan_core::presets::MCU_GENERATOR`]): 64 → 128 → 192 → 784,
/// small enough (~184K parameters, ~738 KB of f32) to sit in the Pico's 1 MiB code region next
/// to the firmware.
pub fn mcu_spec() -> Spec<'static> {
    Spec::new_const(Shape::flat(MCU_LATENT), &gan_core::presets::MCU_GENERATOR)
}

/// Random parameters for `spec`: He-normal weights (standard deviation `sqrt(2 / fan_in)`) and
/// small normal biases (standard deviation 0.01, not zero, so that every byte of a test file
/// carries information). A layer with running statistics (batch norm) gets scales near 1,
/// means near 0 and variances between 0.5 and about 2, as a trained one has. Alignment gaps
/// stay zero. Deterministic in `seed`.
pub fn random_params(spec: &Spec<'_>, seed: u64) -> Vec<f32> {
    let mut params = vec![0.0f32; spec.param_len()];
    let mut rng = noise::rng(seed);
    for info in spec.iter() {
        if info.weight_len == 0 {
            continue;
        }
        let norm = info.stats_len > 0;
        let std = if norm { 0.1 } else { (2.0 / info.in_shape.len() as f32).sqrt() };
        let w = &mut params[info.weight_range()];
        noise::fill_gaussian(&mut rng, w);
        w.iter_mut().for_each(|v| *v = *v * std + if norm { 1.0 } else { 0.0 });
        let b = &mut params[info.bias_range()];
        noise::fill_gaussian(&mut rng, b);
        b.iter_mut().for_each(|v| *v *= 0.01);
        if norm {
            // The means, then the variances.
            let stats = &mut params[info.stats_range()];
            noise::fill_gaussian(&mut rng, stats);
            let (mean, var) = stats.split_at_mut(info.stats_len / 2);
            mean.iter_mut().for_each(|v| *v *= 0.1);
            var.iter_mut().for_each(|v| *v = 0.5 + 0.5 * v.abs());
        }
    }
    params
}

/// The `pico` preset's generator ([`gan_core::presets::PICO_GENERATOR`]): 32 noise values and
/// a one-hot class of 10 → dense 32·7·7 → BN → ReLU → ConvT 16 → BN → ReLU → ConvT 1 → Tanh.
pub fn pico_spec() -> Spec<'static> {
    gan_core::presets::PICO_SPEC
}

/// A complete weights file for an unconditional generator with Gaussian noise whose latent size
/// is the spec's input size, with [`random_params`].
pub fn make_weights(spec: &Spec<'_>, seed: u64) -> Vec<u8> {
    let latent = spec.input().len() as u32;
    make_weights_with(ModelKind::Generator, spec, latent, 0, NoiseKind::Gaussian, seed)
}

/// A complete weights file of any kind with [`random_params`].
pub fn make_weights_with(
    kind: ModelKind, spec: &Spec<'_>, latent: u32, classes: u32, noise: NoiseKind, seed: u64,
) -> Vec<u8> {
    let header = Header::for_spec(kind, spec, latent, classes, noise).expect("header for spec");
    let params = random_params(spec, seed);
    let mut out = vec![0u8; format::max_file_len(params.len())];
    let n = format::write(&mut out, &header, &params).expect("write weights file");
    out.truncate(n);
    out
}

/// One section of an ELF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// Name, e.g. `.text`.
    pub name: String,
    /// Address in memory (VMA).
    pub addr: u32,
    /// Size in bytes.
    pub size: u32,
    /// `SHT_NOBITS` (e.g. `.bss`: takes RAM, no file bytes).
    pub nobits: bool,
    /// `SHF_ALLOC`: occupies memory at run time.
    pub alloc: bool,
}

fn u16_at(b: &[u8], at: usize) -> anyhow::Result<u16> {
    let s = b.get(at..at + 2).ok_or_else(|| anyhow::anyhow!("ELF too short at {at}"))?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> anyhow::Result<u32> {
    let s = b.get(at..at + 4).ok_or_else(|| anyhow::anyhow!("ELF too short at {at}"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The sections of a 32-bit little-endian ELF file.
pub fn elf_sections(elf: &[u8]) -> anyhow::Result<Vec<Section>> {
    anyhow::ensure!(
        elf.starts_with(b"\x7fELF") && elf.get(4) == Some(&1) && elf.get(5) == Some(&1),
        "not an ELF32 LE file"
    );
    let shoff = u32_at(elf, 32)? as usize;
    let shentsize = u16_at(elf, 46)? as usize;
    let shnum = u16_at(elf, 48)? as usize;
    let shstrndx = u16_at(elf, 50)? as usize;
    let sh = |i: usize| shoff + i * shentsize;
    let strtab = u32_at(elf, sh(shstrndx) + 16)? as usize;
    let mut out = Vec::with_capacity(shnum);
    for i in 1..shnum {
        let name_off = strtab + u32_at(elf, sh(i))? as usize;
        let name_end = elf[name_off..].iter().position(|&b| b == 0).map(|e| name_off + e);
        let name =
            String::from_utf8_lossy(&elf[name_off..name_end.unwrap_or(name_off)]).into_owned();
        let kind = u32_at(elf, sh(i) + 4)?;
        let flags = u32_at(elf, sh(i) + 8)?;
        out.push(Section {
            name,
            addr: u32_at(elf, sh(i) + 12)?,
            size: u32_at(elf, sh(i) + 20)?,
            nobits: kind == 8,
            alloc: flags & 2 != 0,
        });
    }
    Ok(out)
}

/// Memory use of a firmware image, from its sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirmwareSize {
    /// Flash taken by everything but the linked weights: vector table, boot2, code, read-only
    /// data and the initial values of `.data`.
    pub code_flash: u32,
    /// Flash taken by the linked weights file (`.gan_weights`).
    pub weights_flash: u32,
    /// RAM taken by statics (`.data`, `.bss`, `.uninit`); the rest of RAM is stack.
    pub static_ram: u32,
}

/// Sizes of a firmware image built with gan-embedded's memory maps (RAM at 0x2000_0000).
pub fn firmware_size(elf: &[u8]) -> anyhow::Result<FirmwareSize> {
    let mut s = FirmwareSize { code_flash: 0, weights_flash: 0, static_ram: 0 };
    for sec in elf_sections(elf)?.iter().filter(|s| s.alloc && s.size > 0) {
        let in_ram = (0x2000_0000..0x4000_0000).contains(&sec.addr);
        if sec.name == ".gan_weights" {
            s.weights_flash += sec.size;
            continue;
        }
        if in_ram {
            s.static_ram += sec.size;
        }
        // `.data` lives in RAM but its initial values are stored in flash too.
        if !in_ram || !sec.nobits {
            s.code_flash += sec.size;
        }
    }
    Ok(s)
}
