//! Weight encodings: how a network's parameters are stored in a weights file and read back in
//! place for inference.
//!
//! Each encoding is one module with its tensor table, its encoder (from the f32 parameter
//! buffer of [`crate::spec`]) and its in-place view; [`Encoding`] is the table that names them,
//! and [`Encoded`] a validated data section of any of them. The file container around the data
//! (preamble, header, checksums) is [`crate::format`]; the per-layer kernels that run each
//! encoding live with their layers ([`crate::layers`]), which see their parameters as
//! [`LayerWeights`].
//!
//! | encoding | module | tensors per layer | format version |
//! |---|---|---|---|
//! | [`Encoding::F32`] | [`mod@f32`] | the flat parameter buffer as it is | 1 |
//! | [`Encoding::I8`] | [`int8`] | dense and convolution layers: i8 weights, f32 scale per output channel, f32 bias | 2 |
//! | [`Encoding::Q8`] | [`q8`] | all-integer: i8 weights, i32 bias and requantisation per output channel; the input scale; the output lookup table | 3 |

use crate::error::CoreError;
use crate::format::{FormatError, MAX_TENSORS, TensorEntry};
use crate::layers::LayerWeights;
use crate::spec::{LayerInfo, Spec};

pub mod f32;
pub mod int8;
pub mod q8;

/// A tensor table and the length in bytes of the data section it describes.
pub type Table = (heapless::Vec<TensorEntry, MAX_TENSORS>, usize);

/// Appends a tensor of `len` elements at `*off` and moves `*off` past it, to the next
/// [`crate::format::DATA_ALIGN`] boundary: how every encoding lays out its tensors.
pub(crate) fn push_tensor(
    t: &mut heapless::Vec<TensorEntry, MAX_TENSORS>, off: &mut usize, layer: u16,
    kind: crate::format::TensorKind, dtype: crate::format::DType, len: usize,
) -> Result<(), FormatError> {
    let u32_of = |v: usize| u32::try_from(v).map_err(|_| FormatError::TooLarge);
    let entry = TensorEntry { layer, kind, dtype, offset: u32_of(*off)?, len: u32_of(len)? };
    t.push(entry).map_err(|_| FormatError::TooLarge)?;
    let align = crate::format::DATA_ALIGN;
    *off = len
        .checked_mul(dtype.size())
        .and_then(|b| off.checked_add(b))
        .and_then(|e| e.checked_next_multiple_of(align))
        .ok_or(FormatError::TooLarge)?;
    Ok(())
}

/// How the parameters are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Encoding {
    /// IEEE-754 binary32: exactly the trained parameters ([`mod@f32`]).
    F32,
    /// Int8 weights with one f32 scale per output channel ([`int8`]); activations stay f32.
    I8,
    /// All-integer: int8 weights and activations, fixed-point requantisation, the output
    /// through a lookup table ([`q8`]). Encoded with a calibration ([`q8::encode`]).
    Q8,
}

impl Encoding {
    /// Every encoding.
    pub const ALL: [Encoding; 3] = [Encoding::F32, Encoding::I8, Encoding::Q8];

    /// Short name (`f32`, `i8`), as the command line spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Encoding::F32 => "f32",
            Encoding::I8 => "i8",
            Encoding::Q8 => "q8",
        }
    }

    /// One line for people: what the tensors hold.
    pub const fn description(self) -> &'static str {
        match self {
            Encoding::F32 => "f32",
            Encoding::I8 => "int8 weights, f32 scales and biases",
            Encoding::Q8 => "all-integer: int8 weights and activations, int32 requantisation",
        }
    }

    /// The weights-file format version that introduced the encoding (files are written with
    /// it, so older readers keep accepting what they can read).
    pub const fn format_version(self) -> u16 {
        match self {
            Encoding::F32 => 1,
            Encoding::I8 => 2,
            Encoding::Q8 => 4,
        }
    }

    /// The tensor table of `spec` in this encoding. [`FormatError::Unsupported`] if the
    /// encoding cannot hold one of the network's layers.
    pub fn tensor_table(self, spec: &Spec<'_>) -> Result<Table, FormatError> {
        match self {
            Encoding::F32 => f32::table(spec),
            Encoding::I8 => int8::table(spec),
            Encoding::Q8 => q8::table(spec),
        }
    }

    /// Writes the data section of `params` (the f32 parameter buffer of `spec`) into the start
    /// of `out` and returns its length (that of [`Encoding::tensor_table`]). `q8` needs the
    /// activations' scales too (`calib`, see [`q8::calibrate`]; without them
    /// [`FormatError::Unsupported`]); the others ignore it.
    pub fn encode(
        self, spec: &Spec<'_>, params: &[f32], calib: Option<&q8::Calibration<'_>>, out: &mut [u8],
    ) -> Result<usize, FormatError> {
        if params.len() != spec.param_len() {
            return Err(FormatError::BadTensorTable);
        }
        match self {
            Encoding::F32 => f32::encode(spec, params, out),
            Encoding::I8 => int8::encode(spec, params, out),
            Encoding::Q8 => q8::encode(spec, params, calib.ok_or(FormatError::Unsupported)?, out),
        }
    }

    /// Whether [`Encoding::encode`] needs a calibration of the activations.
    pub const fn needs_calibration(self) -> bool {
        match self {
            Encoding::F32 | Encoding::I8 => false,
            Encoding::Q8 => true,
        }
    }

    /// Scratch elements for [`crate::model::infer_encoded`] of `spec` at batch `n`.
    pub const fn infer_scratch_len(self, spec: &Spec<'_>, n: usize) -> usize {
        spec.infer_scratch_len(n) + self.extra_scratch_len(spec.max_features())
    }

    /// Scratch elements for batch-1 inference of any network whose widest activation has at
    /// most `max_features` elements: what fixed buffers (the firmware's) must hold.
    pub const fn scratch_bound(self, max_features: usize) -> usize {
        2 * max_features + self.extra_scratch_len(max_features)
    }

    /// The largest [`Encoding::scratch_bound`] over every encoding.
    pub const fn max_scratch_bound(max_features: usize) -> usize {
        let mut max = 0;
        let mut i = 0;
        while i < Encoding::ALL.len() {
            let s = Encoding::ALL[i].scratch_bound(max_features);
            if s > max {
                max = s;
            }
            i += 1;
        }
        max
    }

    /// Scratch beyond the two activation buffers, for a widest activation of `max_features`.
    const fn extra_scratch_len(self, max_features: usize) -> usize {
        match self {
            Encoding::F32 => 0,
            Encoding::I8 => int8::extra_scratch_len(max_features),
            // The sums and two int8 rows fit the two activation buffers.
            Encoding::Q8 => q8::scratch_len(max_features).saturating_sub(2 * max_features),
        }
    }

    /// The encoding a tensor table describes: q8 if it has a requantisation, else int8 if any
    /// tensor is i8, else f32.
    pub fn of_table(tensors: &[TensorEntry]) -> Encoding {
        if tensors.iter().any(|t| t.kind == crate::format::TensorKind::Requant) {
            Encoding::Q8
        } else if tensors.iter().any(|t| t.dtype == crate::format::DType::I8) {
            Encoding::I8
        } else {
            Encoding::F32
        }
    }

    /// The data section of a validated file (its table equals [`Encoding::tensor_table`]) as
    /// this encoding, in place.
    pub(crate) fn view<'a>(
        self, data: &'a [u8], tensors: &'a [TensorEntry],
    ) -> Result<Encoded<'a>, FormatError> {
        match self {
            Encoding::F32 => Ok(Encoded::F32(f32::view(data)?)),
            Encoding::I8 => int8::view(data, tensors),
            Encoding::Q8 => q8::view(data, tensors),
        }
    }
}

/// A network's parameters in one of the encodings, in place (in a weights file, in flash).
#[derive(Clone, Copy, Debug)]
pub enum Encoded<'a> {
    /// The flat f32 parameter buffer.
    F32(&'a [f32]),
    /// An int8 data section (4-byte aligned) and its tensor table.
    I8 {
        /// The data section.
        data: &'a [u8],
        /// Its tensors.
        tensors: &'a [TensorEntry],
    },
    /// A q8 data section (4-byte aligned, requantisations checked) and its tensor table.
    Q8 {
        /// The data section.
        data: &'a [u8],
        /// Its tensors.
        tensors: &'a [TensorEntry],
    },
}

impl<'a> Encoded<'a> {
    /// Which encoding this is.
    pub fn encoding(&self) -> Encoding {
        match self {
            Encoded::F32(_) => Encoding::F32,
            Encoded::I8 { .. } => Encoding::I8,
            Encoded::Q8 { .. } => Encoding::Q8,
        }
    }

    /// The parameters of one layer of the network.
    pub(crate) fn layer(&self, l: &LayerInfo) -> Result<LayerWeights<'a>, CoreError> {
        match *self {
            Encoded::F32(params) => f32::layer(params, l),
            Encoded::I8 { data, tensors } => int8::layer(data, tensors, l),
            // Its layers run only together, in the integer walk (`q8::run`).
            Encoded::Q8 { .. } => Err(CoreError::Unsupported { layer: l.index }),
        }
    }
}
