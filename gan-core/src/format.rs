//! The weights file: a small fixed preamble, a postcard header, then the parameter buffer.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "GANW"
//! 4       2     format version, u16 LE (1, 2 or 4, see below)
//! 6       2     flags, u16 LE (0; reserved)
//! 8       4     header length H in bytes, u32 LE
//! 12      4     CRC-32 (IEEE) of the header bytes, u32 LE
//! 16      H     header, postcard-encoded `Header`
//! 16+H    pad   zero bytes up to the next multiple of 16: the data start D
//! D       L     data: the tensors listed in the header
//! ```
//!
//! The data section holds the parameters in one of the encodings of [`crate::encoding`]
//! (f32: the flat parameter buffer of [`crate::spec`] as it is; int8: i8 weights with f32
//! scales), and the file's version is the one that introduced its encoding
//! ([`Encoding::format_version`]: 1 for f32, 2 for int8, 4 for q8), so older readers keep accepting the
//! files they can read. Version 3 held the first q8 weight layout, which this build no longer reads. Every tensor starts on a 16-byte boundary, so a device can use the
//! weights in place from flash: if the file starts 16-byte aligned, so does every tensor. The
//! header lists each tensor (kind, dtype, offset, length) so tools can show and check them;
//! [`WeightsFile::parse`] verifies that the list is exactly the encoding's table for the
//! architecture, that every offset is in bounds, and the CRC-32 of the data, before anything
//! reads a weight.

use serde::{Deserialize, Serialize};

use crate::encoding::{Encoded, Encoding};
use crate::error::SpecError;
use crate::spec::{Layer, Shape, Spec};

/// First four bytes of every weights file.
pub const MAGIC: [u8; 4] = *b"GANW";
/// The newest format version this build reads and writes: 2 adds int8 tensors, 3 the
/// all-integer `q8` encoding (i32 tensors, requantisation, output lookup table), 4 its weights
/// in blocks of eight output channels (version 3 files are refused: their layout was the
/// paired rows without blocks, see [`crate::kernels::q8`]). Each file is
/// written with the version of its encoding ([`Encoding::format_version`]), so f32 files are
/// still version 1 and older readers keep accepting them.
pub const VERSION: u16 = 4;
/// The oldest format version this build reads.
pub const MIN_VERSION: u16 = 1;
/// Bytes before the header.
pub const PREAMBLE_LEN: usize = 16;
/// Most layers a weights file may describe.
pub const MAX_FILE_LAYERS: usize = 32;
/// Most tensors a weights file may list.
pub const MAX_TENSORS: usize = 64;
/// Largest header accepted (far above what `MAX_FILE_LAYERS` and `MAX_TENSORS` produce).
pub const MAX_HEADER_LEN: usize = 8192;
/// Alignment of the data section and of every tensor, in bytes.
pub const DATA_ALIGN: usize = 16;

/// What the network in the file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ModelKind {
    /// A generator: input is `latent` noise values followed by a one-hot class of `classes`
    /// entries (none when unconditional).
    Generator,
    /// A discriminator (exported for inspection; the firmware refuses it).
    Discriminator,
    /// A classifier of images into `classes` classes (`gan-train score`'s digit classifier;
    /// the firmware refuses it).
    Classifier,
}

/// The noise distribution the generator was trained with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum NoiseKind {
    /// Standard normal (Box–Muller), see [`crate::noise::fill_gaussian`].
    Gaussian,
    /// Uniform on `[-1, 1)`, see [`crate::noise::fill_uniform`].
    Uniform,
}

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum DType {
    /// IEEE-754 binary32, little-endian.
    F32,
    /// Signed 8-bit integer: int8 weights (with a [`TensorKind::Scale`] tensor in the `i8`
    /// encoding), or bytes of a [`TensorKind::Lut`].
    I8,
    /// Signed 32-bit integer, little-endian (the `q8` encoding's biases and requantisation).
    I32,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::I8 => 1,
        }
    }
}

/// Role of a tensor within its layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum TensorKind {
    /// Weights (layout defined per layer in [`crate::spec`]).
    Weight,
    /// Bias.
    Bias,
    /// Running statistics of a batch-normalisation layer: per-channel means, then variances
    /// (used by inference instead of batch statistics).
    RunningStats,
    /// Per-output-column scales of an int8 weight tensor: weight = i8 value × scale (and in
    /// the `q8` encoding, the scale its network input is quantised with).
    Scale,
    /// The `q8` encoding's fixed-point requantisation of each output channel: multiplier for
    /// non-negative sums, multiplier for negative ones, right shift.
    Requant,
    /// The `q8` encoding's lookup table from the output layer's fixed-point values to pixels.
    Lut,
}

impl TensorKind {
    /// Short lower-case name for tables: `weight`, `bias`, `stats`.
    pub const fn name(self) -> &'static str {
        match self {
            TensorKind::Weight => "weight",
            TensorKind::Bias => "bias",
            TensorKind::RunningStats => "stats",
            TensorKind::Scale => "scale",
            TensorKind::Requant => "requant",
            TensorKind::Lut => "lut",
        }
    }
}

/// One tensor in the data section.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TensorEntry {
    /// Index of the layer that owns it.
    pub layer: u16,
    /// Weight or bias.
    pub kind: TensorKind,
    /// Element type.
    pub dtype: DType,
    /// Byte offset from the start of the data section (a multiple of 16).
    pub offset: u32,
    /// Number of elements.
    pub len: u32,
}

/// The decoded header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Header {
    /// What the network is.
    pub kind: ModelKind,
    /// Noise values per sample.
    pub latent: u32,
    /// Classes of a conditional model (0 = unconditional).
    pub classes: u32,
    /// Noise distribution.
    pub noise: NoiseKind,
    /// Input shape (for a generator: `latent + classes` features).
    pub input: Shape,
    /// Output shape (e.g. 1×28×28).
    pub output: Shape,
    /// The layers.
    pub layers: heapless::Vec<Layer, MAX_FILE_LAYERS>,
    /// Every tensor of the data section, in layer order.
    pub tensors: heapless::Vec<TensorEntry, MAX_TENSORS>,
    /// Length of the data section in bytes.
    pub data_len: u32,
    /// CRC-32 (IEEE) of the data section.
    pub data_crc: u32,
}

impl Header {
    /// The network described by this header.
    pub fn spec(&self) -> Result<Spec<'_>, SpecError> {
        Spec::new(self.input, &self.layers)
    }

    /// Builds a header for a network whose parameters are stored as f32, listing every tensor
    /// at its offset in the parameter layout. `data_crc` is filled in by [`write()`].
    pub fn for_spec(
        kind: ModelKind, spec: &Spec<'_>, latent: u32, classes: u32, noise: NoiseKind,
    ) -> Result<Self, FormatError> {
        Header::for_spec_as(kind, spec, latent, classes, noise, Encoding::F32)
    }

    /// Builds a header for a network whose parameters are stored in `encoding`, with that
    /// encoding's tensor table. Fails with [`FormatError::Unsupported`] if the encoding cannot
    /// hold one of the layers.
    pub fn for_spec_as(
        kind: ModelKind, spec: &Spec<'_>, latent: u32, classes: u32, noise: NoiseKind,
        encoding: Encoding,
    ) -> Result<Self, FormatError> {
        let mut layers = heapless::Vec::new();
        for l in spec.layers() {
            layers.push(*l).map_err(|_| FormatError::TooLarge)?;
        }
        let (tensors, data_len) = encoding.tensor_table(spec)?;
        Ok(Header {
            kind,
            latent,
            classes,
            noise,
            input: spec.input(),
            output: spec.output(),
            layers,
            tensors,
            data_len: u32::try_from(data_len).map_err(|_| FormatError::TooLarge)?,
            data_crc: 0,
        })
    }

    /// The encoding the tensor table describes.
    pub fn encoding(&self) -> Encoding {
        Encoding::of_table(&self.tensors)
    }

    /// Bytes a buffer needs to hold the file written from this header (an upper bound: the
    /// header is at most [`MAX_HEADER_LEN`]).
    pub fn file_len_bound(&self) -> usize {
        data_offset(MAX_HEADER_LEN) + self.data_len as usize
    }
}

/// Why a weights file was rejected. Each variant has a distinct [`FormatError::code`], which
/// the firmware uses as its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FormatError {
    /// Shorter than its preamble, header or data claim.
    Truncated,
    /// Does not start with `GANW`.
    BadMagic,
    /// A format version this build does not read.
    UnsupportedVersion(u16),
    /// Header CRC mismatch, undecodable header or header too long.
    CorruptHeader,
    /// The architecture is not a valid network.
    BadArchitecture(SpecError),
    /// The tensor list disagrees with the architecture or points outside the data.
    BadTensorTable,
    /// CRC-32 of the data does not match the header.
    DataChecksum,
    /// The data section is not 4-byte aligned in memory, so it cannot be used in place.
    Misaligned,
    /// The model does not fit the caller's limits or the format's fixed capacities.
    TooLarge,
    /// The model is not of the kind the caller needs (e.g. a discriminator given to firmware).
    WrongKind,
    /// An output buffer is too small.
    BufferTooSmall,
    /// The file uses a feature this build does not support for this network (int8 weights
    /// outside dense and convolution layers).
    Unsupported,
    /// A weight, scale, bias or running statistic is NaN or infinite (checksums intact: the
    /// model itself is broken, e.g. exported from a run that diverged).
    NonFinite {
        /// The layer whose tensor holds it.
        layer: u16,
    },
    /// A requantisation of the `q8` encoding is out of range (a negative multiplier or a shift
    /// outside `1..=62`; checksums intact).
    BadRequant {
        /// The layer it belongs to.
        layer: u16,
    },
}

impl FormatError {
    /// A distinct small number per variant (stable; the firmware exits with it).
    pub const fn code(&self) -> u8 {
        match self {
            // The codes run from `CODES.start` up without gaps; a new error takes the next one.
            FormatError::Truncated => 10,
            FormatError::BadMagic => 11,
            FormatError::UnsupportedVersion(_) => 12,
            FormatError::CorruptHeader => 13,
            FormatError::BadArchitecture(_) => 14,
            FormatError::BadTensorTable => 15,
            FormatError::DataChecksum => 16,
            FormatError::Misaligned => 17,
            FormatError::TooLarge => 18,
            FormatError::WrongKind => 19,
            FormatError::BufferTooSmall => 20,
            FormatError::Unsupported => 21,
            FormatError::NonFinite { .. } => 22,
            FormatError::BadRequant { .. } => 23,
        }
    }
}

impl FormatError {
    /// The range of [`FormatError::code`] values (10–23 today).
    pub const CODES: core::ops::RangeInclusive<u8> = 10..=23;
}

impl core::fmt::Display for FormatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FormatError::Truncated => write!(f, "weights file is truncated"),
            FormatError::BadMagic => write!(f, "not a weights file (magic is not GANW)"),
            FormatError::UnsupportedVersion(3) => write!(
                f,
                "weights format version 3 (the first q8 weight layout) is no longer read: \
                 export the model again (gan-train export --dtype q8)"
            ),
            FormatError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "weights format version {v} is not supported (this build reads {MIN_VERSION} to {VERSION})"
                )
            }
            FormatError::CorruptHeader => write!(f, "weights header is corrupt"),
            FormatError::BadArchitecture(e) => write!(f, "weights architecture is invalid: {e}"),
            FormatError::BadTensorTable => {
                write!(f, "weights tensor table disagrees with the architecture")
            }
            FormatError::DataChecksum => write!(f, "weights data checksum mismatch"),
            FormatError::Misaligned => write!(f, "weights data is not 4-byte aligned in memory"),
            FormatError::TooLarge => write!(f, "model is too large for this target"),
            FormatError::WrongKind => write!(f, "model is not a generator"),
            FormatError::BufferTooSmall => write!(f, "output buffer too small"),
            FormatError::Unsupported => write!(
                f,
                "the encoding cannot hold this network (int8: dense and convolution layers only, batch normalisation folded; q8: also a chain of weighted layers and activations ending in Tanh or Sigmoid)"
            ),
            FormatError::NonFinite { layer } => {
                write!(f, "weights of layer {layer} hold a NaN or an infinity")
            }
            FormatError::BadRequant { layer } => {
                write!(f, "the q8 requantisation of layer {layer} is out of range")
            }
        }
    }
}

impl core::error::Error for FormatError {}

/// A parsed and fully validated weights file, borrowing the bytes it came from.
#[derive(Clone, Debug)]
pub struct WeightsFile<'a> {
    /// The decoded header.
    pub header: Header,
    /// The data section, in place (validated against the header).
    data: &'a [u8],
    /// Total bytes used by the file (preamble, header, padding, data).
    pub file_len: usize,
}

/// Offset of the data section for a header of `header_len` bytes.
pub const fn data_offset(header_len: usize) -> usize {
    (PREAMBLE_LEN + header_len).div_ceil(DATA_ALIGN) * DATA_ALIGN
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the preamble and header only (no data checks): for tools that want to show a damaged
/// file's header. Returns the header and the data offset.
pub fn parse_header(bytes: &[u8]) -> Result<(Header, usize), FormatError> {
    if bytes.len() < PREAMBLE_LEN {
        return Err(if bytes.len() >= 4 && bytes[..4] != MAGIC {
            FormatError::BadMagic
        } else {
            FormatError::Truncated
        });
    }
    if bytes[..4] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = read_u16(bytes, 4);
    if !(MIN_VERSION..=VERSION).contains(&version) || version == 3 {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let header_len = read_u32(bytes, 8) as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(FormatError::CorruptHeader);
    }
    let header_bytes =
        bytes.get(PREAMBLE_LEN..PREAMBLE_LEN + header_len).ok_or(FormatError::Truncated)?;
    if crc32(header_bytes) != read_u32(bytes, 12) {
        return Err(FormatError::CorruptHeader);
    }
    let (header, rest) = postcard::take_from_bytes::<Header>(header_bytes)
        .map_err(|_| FormatError::CorruptHeader)?;
    if !rest.is_empty() {
        return Err(FormatError::CorruptHeader);
    }
    Ok((header, data_offset(header_len)))
}

/// The layer of the first f32 tensor of `table` (weights, scales, biases, running statistics)
/// that holds a NaN or an infinity in `data`. One pass over the bits, no float arithmetic.
fn non_finite(data: &[u8], table: &[TensorEntry]) -> Option<u16> {
    table.iter().filter(|t| t.dtype == DType::F32).find_map(|t| {
        let start = t.offset as usize;
        let bytes = data.get(start..start.saturating_add(4 * t.len as usize))?;
        let exponent = 0x7F80_0000;
        let bad = bytes
            .chunks_exact(4)
            .any(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & exponent == exponent);
        bad.then_some(t.layer)
    })
}

impl<'a> WeightsFile<'a> {
    /// Parses and validates a weights file: magic, version, header CRC, architecture, tensor
    /// table (must match the architecture's layout exactly), bounds, data CRC and finite values
    /// (every f32 tensor). Only then are the weights exposed. Trailing bytes after the data (e.g. erased flash) are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let (header, data_at) = parse_header(bytes)?;
        let spec = header.spec().map_err(FormatError::BadArchitecture)?;
        if header.input != spec.input() || header.output != spec.output() {
            return Err(FormatError::BadArchitecture(SpecError::ShapeMismatch {
                layer: header.layers.len(),
            }));
        }
        if header.kind == ModelKind::Generator
            && (header.latent as usize).checked_add(header.classes as usize)
                != Some(spec.input().len())
        {
            return Err(FormatError::BadArchitecture(SpecError::ShapeMismatch { layer: 0 }));
        }
        let encoding = header.encoding();
        // A file cannot hold an encoding newer than its version.
        if read_u16(bytes, 4) < encoding.format_version() {
            return Err(FormatError::BadTensorTable);
        }
        let (table, expected_len) = encoding.tensor_table(&spec)?;
        if header.tensors != table || header.data_len as usize != expected_len {
            return Err(FormatError::BadTensorTable);
        }
        let end = data_at.checked_add(expected_len).ok_or(FormatError::Truncated)?;
        let data = bytes.get(data_at..end).ok_or(FormatError::Truncated)?;
        if crc32(data) != header.data_crc {
            return Err(FormatError::DataChecksum);
        }
        // Alignment and element type: the same view `weights` hands out later.
        encoding.view(data, &table)?;
        if let Some(layer) = non_finite(data, &table) {
            return Err(FormatError::NonFinite { layer });
        }
        Ok(WeightsFile { header, data, file_len: end })
    }

    /// The flat f32 parameter buffer, in place (layout of [`crate::spec`]); `None` for a file
    /// in another encoding (see [`WeightsFile::weights`]).
    pub fn params(&self) -> Option<&'a [f32]> {
        match self.header.encoding() {
            Encoding::F32 => crate::encoding::f32::view(self.data).ok(),
            Encoding::I8 | Encoding::Q8 => None,
        }
    }

    /// The parameters in the file's encoding, in place.
    pub fn weights(&self) -> Encoded<'_> {
        // `parse` checked this exact view; the empty fallback is never taken (and would fail
        // every length check rather than read anything).
        self.header.encoding().view(self.data, &self.header.tensors).unwrap_or(Encoded::F32(&[]))
    }

    /// The data section's bytes, in place.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The network.
    pub fn spec(&self) -> Spec<'_> {
        // Validated in `parse`.
        Spec::new(self.header.input, &self.header.layers).unwrap_or_else(|_| unreachable!())
    }

    /// Checks that this is a generator whose parameters and widest activation fit the caller's
    /// fixed buffers.
    pub fn check_generator_fits(
        &self, max_params: usize, max_features: usize,
    ) -> Result<(), FormatError> {
        if self.header.kind != ModelKind::Generator {
            return Err(FormatError::WrongKind);
        }
        let spec = self.spec();
        if spec.param_len() > max_params || spec.max_features() > max_features {
            return Err(FormatError::TooLarge);
        }
        Ok(())
    }
}

/// Bytes needed to write an f32 file of `param_len` parameters (upper bound: the header is at
/// most `MAX_HEADER_LEN`); see [`Header::file_len_bound`] for any encoding.
pub fn max_file_len(param_len: usize) -> usize {
    data_offset(MAX_HEADER_LEN) + param_len * 4
}

/// Writes a complete weights file into `out` and returns the number of bytes used: the
/// parameters `params` (the f32 buffer of the network, layout of [`crate::spec`]) stored in
/// the header's encoding, with the format version of that encoding.
///
/// `header.data_crc` is computed here; the tensor table must be the encoding's table for the
/// architecture (as [`Header::for_spec_as`] builds it). Bytes of `out` after the file are
/// scratch: they may be left changed.
pub fn write(out: &mut [u8], header: &Header, params: &[f32]) -> Result<usize, FormatError> {
    write_calibrated(out, header, params, None)
}

/// [`write()`] with the activations' calibration an encoding may need (`q8`, see
/// [`Encoding::encode`]).
pub fn write_calibrated(
    out: &mut [u8], header: &Header, params: &[f32],
    calib: Option<&crate::encoding::q8::Calibration<'_>>,
) -> Result<usize, FormatError> {
    let spec = header.spec().map_err(FormatError::BadArchitecture)?;
    let encoding = header.encoding();
    let (table, len) = encoding.tensor_table(&spec)?;
    if params.len() != spec.param_len() || header.tensors != table {
        return Err(FormatError::BadTensorTable);
    }
    let mut h = header.clone();
    h.data_len = u32::try_from(len).map_err(|_| FormatError::TooLarge)?;
    // The data goes after the header, whose length depends on the data's CRC. Encode it after
    // the longest header this one can become (its CRC field at its widest), then move it down.
    h.data_crc = u32::MAX;
    let widest = data_offset(header_len(out, &h)?);
    let end = widest.checked_add(len).ok_or(FormatError::TooLarge)?;
    if out.len() < end {
        return Err(FormatError::BufferTooSmall);
    }
    encoding.encode(&spec, params, calib, &mut out[widest..end])?;
    h.data_crc = crc32(&out[widest..end]);
    let data = write_head(out, &h, encoding.format_version())?;
    out.copy_within(widest..end, data.start);
    Ok(data.end)
}

/// The encoded length of header `h` (serialised into `out` as scratch).
fn header_len(out: &mut [u8], h: &Header) -> Result<usize, FormatError> {
    if out.len() < PREAMBLE_LEN {
        return Err(FormatError::BufferTooSmall);
    }
    let room = (out.len() - PREAMBLE_LEN).min(MAX_HEADER_LEN);
    postcard::to_slice(h, &mut out[PREAMBLE_LEN..PREAMBLE_LEN + room])
        .map(|b| b.len())
        .map_err(|_| FormatError::BufferTooSmall)
}

/// Writes the preamble (with `version`), the header and the padding after it, and returns
/// where the `h.data_len` bytes of data go.
fn write_head(
    out: &mut [u8], h: &Header, version: u16,
) -> Result<core::ops::Range<usize>, FormatError> {
    let header_len = header_len(out, h)?;
    let data_at = data_offset(header_len);
    let end = data_at + h.data_len as usize;
    if out.len() < end {
        return Err(FormatError::BufferTooSmall);
    }
    let header_crc = crc32(&out[PREAMBLE_LEN..PREAMBLE_LEN + header_len]);
    out[..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&version.to_le_bytes());
    out[6..8].copy_from_slice(&0u16.to_le_bytes());
    out[8..12].copy_from_slice(&(header_len as u32).to_le_bytes());
    out[12..16].copy_from_slice(&header_crc.to_le_bytes());
    out[PREAMBLE_LEN + header_len..data_at].fill(0);
    Ok(data_at..end)
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// Incremental CRC-32 (IEEE 802.3, as in zlib and PNG).
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Self {
        Crc32(0xFFFF_FFFF)
    }
}

impl Crc32 {
    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }
    /// The checksum of everything fed so far.
    pub fn finish(&self) -> u32 {
        self.0 ^ 0xFFFF_FFFF
    }
}

/// CRC-32 (IEEE) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = Crc32::default();
    c.update(bytes);
    c.finish()
}

/// CRC-32 of the little-endian bytes of `values`.
pub fn crc32_f32(values: &[f32]) -> u32 {
    let mut c = Crc32::default();
    for v in values {
        c.update(&v.to_le_bytes());
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    const LAYERS: [Layer; 4] = [
        Layer::Dense { out: 5 },
        Layer::LeakyRelu { alpha: 0.2 },
        Layer::Dense { out: 6 },
        Layer::Tanh,
    ];

    #[repr(C, align(16))]
    struct Aligned([u8; 4096]);

    fn sample_file() -> (Aligned, usize, Vec<f32>) {
        let spec = Spec::new(Shape::flat(3), &LAYERS).unwrap();
        let params: Vec<f32> = (0..spec.param_len()).map(|i| i as f32 * 0.25 - 3.0).collect();
        let h = Header::for_spec(ModelKind::Generator, &spec, 3, 0, NoiseKind::Gaussian).unwrap();
        let mut buf = Aligned([0xAA; 4096]);
        let n = write(&mut buf.0, &h, &params).unwrap();
        (buf, n, params)
    }

    /// A NaN or an infinity anywhere in the f32 data (checksums repaired) is refused with the
    /// layer it is in; so is one in an int8 file's scales or biases, while any i8 weight is fine.
    #[test]
    fn non_finite_values_are_refused() {
        let spec = Spec::new(Shape::flat(3), &LAYERS).unwrap();
        let good: Vec<f32> = (0..spec.param_len()).map(|i| i as f32 * 0.25 - 3.0).collect();
        // The last bias value (what follows it is alignment padding, which nothing reads).
        let last = spec.iter().filter(|l| l.bias_len > 0).last().unwrap().bias_range().end - 1;
        for (at, bad) in [(0, f32::NAN), (17, f32::INFINITY), (last, f32::NEG_INFINITY)] {
            let mut params = good.clone();
            params[at] = bad;
            let h =
                Header::for_spec(ModelKind::Generator, &spec, 3, 0, NoiseKind::Gaussian).unwrap();
            let mut buf = Aligned([0; 4096]);
            let n = write(&mut buf.0, &h, &params).unwrap();
            let layer = spec.iter().find(|l| l.param_range().contains(&at)).unwrap().index as u16;
            let got = WeightsFile::parse(&buf.0[..n]).map(|_| ());
            assert_eq!(got, Err(FormatError::NonFinite { layer }), "{bad} at {at}");
            let text = std::format!("{}", FormatError::NonFinite { layer });
            assert!(text.contains("NaN or an infinity"), "{text}");
        }
        // int8: the weights are integers; a scale or bias that is not finite is refused.
        let h = Header::for_spec_as(
            ModelKind::Generator,
            &spec,
            3,
            0,
            NoiseKind::Gaussian,
            Encoding::I8,
        )
        .unwrap();
        let mut buf = Aligned([0; 4096]);
        let n = write(&mut buf.0, &h, &good).unwrap();
        assert!(WeightsFile::parse(&buf.0[..n]).is_ok());
        let data_at = n - h.data_len as usize;
        let scale = h.tensors.iter().find(|t| t.kind == TensorKind::Scale).unwrap();
        let at = data_at + scale.offset as usize;
        buf.0[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        let crc = crc32(&buf.0[data_at..n]);
        let mut h2 = h.clone();
        h2.data_crc = crc;
        let mut out = Aligned([0; 4096]);
        let range = write_head(&mut out.0, &h2, Encoding::I8.format_version()).unwrap();
        out.0[range.clone()].copy_from_slice(&buf.0[data_at..n]);
        let m = range.end;
        assert_eq!(
            WeightsFile::parse(&out.0[..m]).map(|_| ()),
            Err(FormatError::NonFinite { layer: scale.layer })
        );
    }

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn round_trip() {
        let (buf, n, params) = sample_file();
        let f = WeightsFile::parse(&buf.0[..n]).unwrap();
        assert_eq!(f.params(), Some(&params[..]));
        assert_eq!(f.file_len, n);
        assert_eq!(f.header.layers.as_slice(), &LAYERS);
        assert_eq!(f.header.tensors.len(), 4);
        assert_eq!(f.header.tensors[1].offset % 16, 0);
        assert_eq!(f.spec().output(), Shape::flat(6));
        // Trailing bytes (erased flash) are ignored.
        assert!(WeightsFile::parse(&buf.0).is_ok());
        assert!(f.check_generator_fits(1000, 6).is_ok());
        assert_eq!(f.check_generator_fits(10, 6), Err(FormatError::TooLarge));
        assert_eq!(f.check_generator_fits(1000, 5), Err(FormatError::TooLarge));
    }

    #[test]
    fn rejects_damage() {
        let (buf, n, _) = sample_file();
        let good = &buf.0[..n];
        let parse_mod = |f: &dyn Fn(&mut [u8])| {
            let mut b = Aligned([0; 4096]);
            b.0[..n].copy_from_slice(good);
            f(&mut b.0[..n]);
            WeightsFile::parse(&b.0[..n]).map(|_| ())
        };
        for cut in [0, 3, 15, 16, 40, n - 1] {
            let r = WeightsFile::parse(&good[..cut]).map(|_| ());
            assert_eq!(r, Err(FormatError::Truncated), "cut at {cut}");
        }
        assert_eq!(parse_mod(&|b| b[0] = b'X'), Err(FormatError::BadMagic));
        assert_eq!(parse_mod(&|b| b[4] = 9), Err(FormatError::UnsupportedVersion(9)));
        // Version 3 held the first q8 layout: refused, with what to do about it.
        assert_eq!(parse_mod(&|b| b[4] = 3), Err(FormatError::UnsupportedVersion(3)));
        let text = std::format!("{}", FormatError::UnsupportedVersion(3));
        assert!(text.contains("export the model again"), "{text}");
        assert_eq!(parse_mod(&|b| b[20] ^= 1), Err(FormatError::CorruptHeader));
        assert_eq!(parse_mod(&|b| b[n - 3] ^= 0x10), Err(FormatError::DataChecksum));
        // Misaligned in memory: the same bytes one byte later.
        let mut b = Aligned([0; 4096]);
        b.0[1..n + 1].copy_from_slice(good);
        assert_eq!(WeightsFile::parse(&b.0[1..n + 1]).map(|_| ()), Err(FormatError::Misaligned));
        // Every error has its own code.
        let codes = [
            FormatError::Truncated,
            FormatError::BadMagic,
            FormatError::UnsupportedVersion(0),
            FormatError::CorruptHeader,
            FormatError::BadArchitecture(SpecError::Empty),
            FormatError::BadTensorTable,
            FormatError::DataChecksum,
            FormatError::Misaligned,
            FormatError::TooLarge,
            FormatError::WrongKind,
            FormatError::BufferTooSmall,
            FormatError::Unsupported,
            FormatError::NonFinite { layer: 0 },
            FormatError::BadRequant { layer: 0 },
        ]
        .map(|e| e.code());
        for (i, a) in codes.iter().enumerate() {
            assert!(codes[i + 1..].iter().all(|b| b != a));
        }
        // And the codes fill `CODES` exactly.
        assert!(codes.iter().all(|c| FormatError::CODES.contains(c)));
        assert_eq!(codes.len(), FormatError::CODES.count());
    }

    /// Batch normalisation's running statistics are listed as their own tensor, after the
    /// layer's scale and shift, and a table without them is refused.
    #[test]
    fn batchnorm_running_stats_are_in_the_tensor_table() {
        let layers =
            [Layer::Dense { out: 12 }, crate::presets::BN, Layer::Relu, Layer::Dense { out: 4 }];
        let spec = Spec::new(Shape::flat(3), &layers).unwrap();
        let h = Header::for_spec(ModelKind::Generator, &spec, 3, 0, NoiseKind::Gaussian).unwrap();
        let bn = spec.iter().nth(1).unwrap();
        let kinds: Vec<(u16, TensorKind, u32, u32)> =
            h.tensors.iter().map(|t| (t.layer, t.kind, t.offset, t.len)).collect();
        assert_eq!(kinds.len(), 7);
        assert_eq!(kinds[4], (1, TensorKind::RunningStats, (bn.stats_offset * 4) as u32, 24));
        assert_eq!(TensorKind::RunningStats.name(), "stats");
        let params: Vec<f32> = (0..spec.param_len()).map(|i| i as f32).collect();
        let mut buf = Aligned([0; 4096]);
        let n = write(&mut buf.0, &h, &params).unwrap();
        let f = WeightsFile::parse(&buf.0[..n]).unwrap();
        assert_eq!(&f.params().unwrap()[bn.stats_range()], &params[bn.stats_range()]);
        // The same file with the stats entry dropped from its table.
        let mut h2 = h.clone();
        h2.tensors.remove(4);
        let mut buf2 = Aligned([0; 4096]);
        assert_eq!(write(&mut buf2.0, &h2, &params), Err(FormatError::BadTensorTable));
    }

    /// A header re-encoded with a consistent CRC but a lying architecture is still rejected.
    #[test]
    fn rejects_inconsistent_headers() {
        let spec = Spec::new(Shape::flat(3), &LAYERS).unwrap();
        let params = vec![0.5f32; spec.param_len()];
        let good =
            Header::for_spec(ModelKind::Generator, &spec, 3, 0, NoiseKind::Gaussian).unwrap();
        let check = |h: &Header| {
            let mut buf = Aligned([0; 4096]);
            // Write a consistent file, then swap in the modified header with a fresh CRC.
            let mut hb = [0u8; 1024];
            let mut h = h.clone();
            h.data_len = (params.len() * 4) as u32;
            h.data_crc = crc32_f32(&params);
            let hl = postcard::to_slice(&h, &mut hb).unwrap().len();
            buf.0[..4].copy_from_slice(&MAGIC);
            buf.0[4..6].copy_from_slice(&MIN_VERSION.to_le_bytes());
            buf.0[8..12].copy_from_slice(&(hl as u32).to_le_bytes());
            buf.0[12..16].copy_from_slice(&crc32(&hb[..hl]).to_le_bytes());
            buf.0[16..16 + hl].copy_from_slice(&hb[..hl]);
            let d = data_offset(hl);
            for (i, p) in params.iter().enumerate() {
                buf.0[d + 4 * i..d + 4 * i + 4].copy_from_slice(&p.to_le_bytes());
            }
            WeightsFile::parse(&buf.0[..d + params.len() * 4]).map(|_| ())
        };
        assert_eq!(check(&good), Ok(()));
        let mut h = good.clone();
        h.tensors[1].offset += 16;
        assert_eq!(check(&h), Err(FormatError::BadTensorTable));
        let mut h = good.clone();
        h.layers[0] = Layer::Dense { out: 7 };
        assert!(check(&h).is_err());
        let mut h = good.clone();
        h.latent = 2;
        assert!(matches!(check(&h), Err(FormatError::BadArchitecture(_))));
        let mut h = good.clone();
        h.layers.clear();
        assert_eq!(check(&h), Err(FormatError::BadArchitecture(SpecError::Empty)));
        let mut h = good.clone();
        h.kind = ModelKind::Discriminator;
        h.latent = 0;
        let mut buf = Aligned([0; 4096]);
        let n = write(&mut buf.0, &h, &params).unwrap();
        let f = WeightsFile::parse(&buf.0[..n]).unwrap();
        assert_eq!(f.check_generator_fits(usize::MAX, usize::MAX), Err(FormatError::WrongKind));
    }
}
