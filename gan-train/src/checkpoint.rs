//! Checkpoint files: the trainer's [`TrainState`] encoded with postcard behind a small header,
//! written atomically, with clear errors for damaged files.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "GANC"
//! 4       4     version, u32 LE (3; 1 and 2 are still read)
//! 8       4     CRC-32 of the payload, u32 LE
//! 12      8     payload length, u64 LE
//! 20      …     payload: postcard-encoded `TrainState`
//! ```
//!
//! Postcard writes a struct as its fields one after another. From version 3 the configuration
//! is a TOML string, so adding options never changes the layout again; versions 1 and 2 stored
//! it field by field ([`crate::config::LegacyConfig`]). Older payloads are read by rewriting
//! them into the current layout: the legacy configuration re-encoded as TOML, the rest as it
//! is, and the fields added since (version 2: the partial loss-log window; version 3: the
//! generator's moving average and the quality state) appended at their defaults.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use gan_core::format;

use crate::config::LegacyConfig;
use crate::run::write_atomic;
use crate::trainer::{LogWindow, QualityState, TrainState};

const MAGIC: &[u8; 4] = b"GANC";
/// The version this build writes.
pub const VERSION: u32 = 3;
/// Bytes before the payload.
const HEADER_LEN: usize = 20;

/// Serialises a training state: magic, version, CRC-32 and length of the postcard payload.
pub fn encode(state: &TrainState) -> Result<Vec<u8>> {
    let payload = postcard::to_stdvec(state).context("encoding checkpoint")?;
    let mut out = Vec::with_capacity(payload.len() + HEADER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&format::crc32(&payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Parses a checkpoint written by [`encode`] (or by a build that wrote version 1), with clear
/// errors for damage.
pub fn decode(bytes: &[u8]) -> Result<TrainState> {
    ensure!(bytes.len() >= HEADER_LEN, "checkpoint is truncated ({} bytes)", bytes.len());
    ensure!(&bytes[..4] == MAGIC, "not a checkpoint file (bad magic)");
    let version = u32::from_le_bytes(bytes[4..8].try_into()?);
    ensure!(
        (1..=VERSION).contains(&version),
        "checkpoint version {version} is not supported (this build reads 1 to {VERSION})"
    );
    let crc = u32::from_le_bytes(bytes[8..12].try_into()?);
    let len = u64::from_le_bytes(bytes[12..20].try_into()?) as usize;
    let payload = &bytes[HEADER_LEN..];
    ensure!(
        payload.len() == len,
        "checkpoint is truncated or has trailing bytes ({} of {len} payload bytes)",
        payload.len()
    );
    ensure!(format::crc32(payload) == crc, "checkpoint is corrupt (CRC mismatch)");
    let decode = |p: &[u8]| -> Result<TrainState> {
        postcard::from_bytes(p).context("checkpoint payload does not decode")
    };
    if version < VERSION {
        return decode(&upgrade(payload, version)?);
    }
    decode(payload)
}

/// A version 1 or 2 payload rewritten in the current layout (see the module docs).
fn upgrade(payload: &[u8], version: u32) -> Result<Vec<u8>> {
    let (legacy, rest) = postcard::take_from_bytes::<LegacyConfig>(payload)
        .context("checkpoint payload does not decode")?;
    let config = legacy.upgrade().context("checkpoint configuration does not decode")?;
    let mut out = postcard::to_stdvec(&toml::to_string(&config)?)?;
    out.extend_from_slice(rest);
    if version < 2 {
        out.extend_from_slice(&postcard::to_stdvec(&LogWindow::default())?);
    }
    out.extend_from_slice(&postcard::to_stdvec(&(None::<Vec<f32>>, QualityState::default()))?);
    Ok(out)
}

/// Writes a checkpoint atomically (see [`write_atomic`]).
pub fn save(path: &Path, state: &TrainState) -> Result<()> {
    write_atomic(path, &encode(state)?)
}

/// Reads a checkpoint.
pub fn load(path: &Path) -> Result<TrainState> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode(&bytes).with_context(|| format!("loading {}", path.display()))
}
