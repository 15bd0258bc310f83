//! Fuzz targets: the input parsers and what runs on what they accept, as functions that must
//! return (with an error or not) and never panic, abort or hang on any bytes.
//!
//! `fuzz/` (a `cargo fuzz` project outside the workspace) drives them with libFuzzer; the test
//! suite replays a corpus of real files and a few thousand seeded mutations of them through the
//! same functions (`gan-train/tests/fuzz.rs`). The `*_repaired` targets fix the checksums of the
//! mutated bytes first, so that mutations reach the checks behind the checksums.

use gan_core::format::{self, Header, MAX_HEADER_LEN, ModelKind, PREAMBLE_LEN};
use gan_core::generate::ClassChoice;

use crate::config::{DataShape, TrainConfig};
use crate::sample::AlignedBytes;

/// The firmware's capacities (the file `gan-embedded/build.rs` includes too).
#[allow(dead_code)]
mod firmware {
    include!("../../gan-embedded/src/limits.rs");
}

/// A weights file: parse and validate it, describe it as `inspect` does, and for a generator
/// that passes draw two digits (exact path) and score-path samples, as `sample` and `score` do.
pub fn weights(bytes: &[u8]) {
    let _ = crate::inspect::describe_weights(bytes);
    let aligned = AlignedBytes::new(bytes);
    let Ok(w) = aligned.weights() else { return };
    // The firmware's own acceptance check, with its limits.
    let _ = w.check_generator_fits(firmware::MAX_PARAMS, firmware::MAX_FEATURES);
    if w.header.kind != ModelKind::Generator {
        return;
    }
    let _ = crate::sample::generate(&w, 1, 2, ClassChoice::Cycle);
    let _ = crate::sample::generate(&w, 2, 1, ClassChoice::Fixed(w.header.classes));
    let _ =
        crate::sample::generate_batched(&w, 3, 2, ClassChoice::Cycle, &gan_core::kernels::Serial);
}

/// [`weights`] after [`repair_weights`].
pub fn weights_repaired(bytes: &[u8]) {
    weights(&repair_weights(bytes));
}

/// An IDX file (images or labels).
pub fn idx(bytes: &[u8]) {
    if let Ok(idx) = crate::data::read_idx_bytes(bytes) {
        let _ = idx.into_images();
    }
    if let Ok(idx) = crate::data::read_idx_bytes(bytes) {
        let _ = idx.into_labels();
    }
}

/// A checkpoint: decode it, and for one that decodes, rebuild the GAN from it (every buffer
/// length checked) and export its generator.
pub fn checkpoint(bytes: &[u8]) {
    let Ok(ck) = crate::checkpoint::decode(bytes) else { return };
    if let Ok(gan) = crate::trainer::Gan::from_checkpoint(ck) {
        let _ = crate::run::export_bytes(&gan.state);
    }
}

/// [`checkpoint`] after [`repair_checkpoint`].
pub fn checkpoint_repaired(bytes: &[u8]) {
    checkpoint(&repair_checkpoint(bytes));
}

/// A TOML configuration: parse, validate, and build both networks for MNIST-shaped data.
pub fn config(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let Ok(cfg) = toml::from_str::<TrainConfig>(text) else { return };
    if cfg.validate().is_err() {
        return;
    }
    let _ = cfg.generator(DataShape::MNIST);
    let _ = cfg.discriminator(DataShape::MNIST);
}

/// Bytes with the header and data checksums of a weights file recomputed (the header decoded,
/// its data CRC set to the data that follows it, re-encoded, and its own CRC set). Bytes whose
/// header does not decode get only the header CRC fixed.
pub fn repair_weights(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if bytes.len() < PREAMBLE_LEN {
        return out;
    }
    let header_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let Some(hb) = bytes.get(PREAMBLE_LEN..PREAMBLE_LEN.saturating_add(header_len)) else {
        return out;
    };
    if header_len > MAX_HEADER_LEN {
        return out;
    }
    let Ok((mut h, _)) = postcard::take_from_bytes::<Header>(hb) else {
        out[12..16].copy_from_slice(&format::crc32(hb).to_le_bytes());
        return out;
    };
    let data_at = format::data_offset(header_len);
    let rest = bytes.get(data_at..).unwrap_or(&[]);
    let data = &rest[..rest.len().min(h.data_len as usize)];
    h.data_crc = format::crc32(data);
    let Ok(new_hb) = postcard::to_allocvec(&h) else { return out };
    out.truncate(8);
    out.extend_from_slice(&(new_hb.len() as u32).to_le_bytes());
    out.extend_from_slice(&format::crc32(&new_hb).to_le_bytes());
    out.extend_from_slice(&new_hb);
    out.resize(format::data_offset(new_hb.len()), 0);
    out.extend_from_slice(rest);
    out
}

/// Bytes with a checkpoint's payload length and CRC-32 set to the payload that follows its
/// 20-byte header (the layout of [`crate::checkpoint::encode`]).
pub fn repair_checkpoint(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.len() >= 20 {
        let crc = format::crc32(&out[20..]);
        let len = (out.len() - 20) as u64;
        out[8..12].copy_from_slice(&crc.to_le_bytes());
        out[12..20].copy_from_slice(&len.to_le_bytes());
    }
    out
}
