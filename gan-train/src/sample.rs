//! Generating digits from an exported weights file with the exact inference path, the one the
//! firmware runs. `gan-train sample` and the device produce the same bytes for the same seed.

use std::path::Path;

use anyhow::{Context, Result};
use gan_core::format::WeightsFile;
use gan_core::generate::Generator;
use gan_core::noise;

use crate::team::Team;

/// File bytes held in a buffer whose start is 16-byte aligned, so the weights can be used in
/// place exactly as on the device.
pub struct AlignedBytes {
    words: Vec<u128>,
    len: usize,
}

impl AlignedBytes {
    /// Copies `bytes` into an aligned buffer.
    pub fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u128; bytes.len().div_ceil(16)];
        // SAFETY: the Vec<u128> owns words.len()*16 initialised bytes; any byte pattern is valid
        // for u128, and bytes.len() <= words.len()*16.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 16)
        };
        dst[..bytes.len()].copy_from_slice(bytes);
        AlignedBytes { words, len: bytes.len() }
    }

    /// Reads a file into an aligned buffer.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self::new(&bytes))
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: see `new`; `len` never exceeds the owned byte count.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    /// Parses and validates the weights file held in this buffer.
    pub fn weights(&self) -> Result<WeightsFile<'_>> {
        WeightsFile::parse(self.bytes()).map_err(|e| anyhow::anyhow!("invalid weights file: {e}"))
    }
}

pub use gan_core::generate::ClassChoice;

/// Generates `n` samples for `seed`, one at a time (batch 1, like the device), returning
/// `n × output_len` grey bytes.
///
/// The noise for sample `i` is the `i`-th draw of `latent` values from `noise::rng(seed)`; with
/// a conditional model the class one-hot follows the noise. This is the same routine the
/// firmware runs ([`Generator::generate`]), with each sample's products spread over a
/// [`Team`] of threads (which never changes a bit).
pub fn generate(w: &WeightsFile<'_>, seed: u64, n: usize, class: ClassChoice) -> Result<Vec<u8>> {
    let g = Generator::new(w).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::limits::check_samples(n)?;
    crate::limits::check_network(g.spec(), "the generator")?;
    let mut z = vec![0.0f32; g.input_len()];
    let mut y = vec![0.0f32; g.output_len()];
    let mut scratch = vec![0.0f32; g.scratch_len()];
    let mut out = vec![0u8; n * g.output_len()];
    let mut rng = noise::rng(seed);
    let team = Team::with_rayon_threads().context("starting the inference threads")?;
    for (i, pixels) in out.chunks_exact_mut(g.output_len()).enumerate() {
        let cls = class.class_of(i, g.classes());
        if g.classes() > 0 && cls >= g.classes() {
            anyhow::bail!("class {cls} is out of range: the model has {} classes", g.classes());
        }
        g.generate_with(&mut rng, cls, &mut z, &mut y, &mut scratch, pixels, &team)?;
    }
    Ok(out)
}

/// Samples per batch of [`generate_batched`].
const GEN_BATCH: usize = 256;

/// The same draws as [`generate`] (sample `i` gets the `i`-th noise vector of `seed` and the
/// class of `class`), computed in batches through the fast training kernels in inference mode
/// instead of the exact path: pixels within a grey level or so of [`generate`]'s, many times
/// faster for convolutional generators. For scores over thousands of samples. Returns the grey
/// bytes and each sample's class (0 for an unconditional model). Int8 files take the exact path.
pub fn generate_batched(
    w: &WeightsFile<'_>, seed: u64, n: usize, class: ClassChoice,
    exec: &dyn gan_core::kernels::Exec,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let g = Generator::new(w).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::limits::check_samples(n)?;
    crate::limits::check_network(g.spec(), "the generator")?;
    let classes = g.classes();
    let labels: Vec<u8> = (0..n).map(|i| class.class_of(i, classes) as u8).collect();
    if classes > 0 && labels.iter().any(|&c| c as usize >= classes) {
        anyhow::bail!("the class is out of range: the model has {classes} classes");
    }
    let Some(params) = w.params() else {
        return Ok((generate(w, seed, n, class)?, labels));
    };
    let spec = g.spec();
    let (inp, px) = (g.input_len(), g.output_len());
    let h = &w.header;
    let mut rng = noise::rng(seed);
    let mut z = vec![0.0f32; n * inp];
    for (row, &c) in z.chunks_exact_mut(inp).zip(&labels) {
        noise::generator_input(h.noise, &mut rng, h.latent as usize, c as usize, row);
    }
    let y = forward_batched(spec, params, &z, n, exec)?;
    let sigmoid = spec.iter().filter(|l| !l.view).last().map(|l| l.layer)
        == Some(gan_core::layers::Layer::Sigmoid);
    let out = y
        .iter()
        .map(|&v| if sigmoid { gan_core::to_pixel_unit(v) } else { gan_core::to_pixel(v) })
        .collect::<Vec<u8>>();
    debug_assert_eq!(out.len(), n * px);
    Ok((out, labels))
}

/// Runs the network `spec` with `params` on the `n` inputs in `z` in batches of a few hundred
/// through the fast kernels in inference mode (BatchNorm's running statistics, no dropout);
/// returns the `n` outputs.
pub fn forward_batched(
    spec: &gan_core::spec::Spec<'_>, params: &[f32], z: &[f32], n: usize,
    exec: &dyn gan_core::kernels::Exec,
) -> Result<Vec<f32>> {
    let (inp, outp) = (spec.input().len(), spec.output().len());
    anyhow::ensure!(z.len() == n * inp, "{} input values for {n} samples of {inp}", z.len());
    let mut out = vec![0.0f32; n * outp];
    let mut acts = Vec::new();
    let ctx = gan_core::model::ForwardCtx::inference();
    for (zc, oc) in z.chunks(GEN_BATCH * inp.max(1)).zip(out.chunks_mut(GEN_BATCH * outp.max(1))) {
        let b = oc.len() / outp.max(1);
        acts.resize(spec.act_len(b), 0.0);
        gan_core::model::input_mut(spec, &mut acts, b).copy_from_slice(zc);
        gan_core::model::forward_with(spec, params, &mut acts, b, exec, &ctx)?;
        oc.copy_from_slice(gan_core::model::output(spec, &acts, b));
    }
    Ok(out)
}

/// An image as ASCII art, one text line per pixel row (dark to bright: " .:-=+*#%@"), drawn by
/// [`gan_core::ascii_art`] like the firmware's (lines wrap after
/// [`gan_core::ASCII_MAX_LINE`] characters).
pub fn ascii_art(pixels: &[u8], width: usize) -> String {
    let mut s = String::with_capacity(pixels.len() + pixels.len() / width.max(1));
    gan_core::ascii_art(pixels, width, |line| {
        s.extend(line.iter().map(|&b| b as char));
    });
    s
}

/// An IDX file (magic 2051, unsigned bytes) holding `n` images of `h × w`.
pub fn write_idx_images(pixels: &[u8], n: usize, h: usize, w: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + pixels.len());
    out.extend_from_slice(&0x0000_0803u32.to_be_bytes());
    for d in [n, h, w] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(&pixels[..(n * h * w).min(pixels.len())]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_bytes_are_aligned_and_equal() {
        let data: Vec<u8> = (0..=40).collect();
        let a = AlignedBytes::new(&data[1..]);
        assert_eq!(a.bytes(), &data[1..]);
        assert_eq!(a.bytes().as_ptr() as usize % 16, 0);
    }

    #[test]
    fn ascii_ramp_ends() {
        assert_eq!(ascii_art(&[0, 255, 128, 0], 2), " @\n+ \n");
        // Ten bins of 25.6 grey levels: edges between 25|26, 51|52, …, 230|231.
        assert_eq!(ascii_art(&[25, 26, 51, 52, 230, 231], 6), " ..:%@\n");
    }

    #[test]
    fn idx_round_trips_through_the_reader() {
        let px: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let bytes = write_idx_images(&px, 2, 3, 4);
        let idx = crate::data::read_idx_bytes(&bytes).unwrap();
        let (images, n, h, w) = idx.into_images().unwrap();
        assert_eq!((images, n, h, w), (px, 2, 3, 4));
    }
}
