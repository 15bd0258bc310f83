//! Error types. Small, `Copy`, printable with `core::fmt::Display` and, behind the `defmt`
//! feature, `defmt::Format`, so the firmware can report them without allocation.

use core::fmt;

/// A network spec that does not describe a valid network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SpecError {
    /// The spec has no layers.
    Empty,
    /// A dimension is zero or the element count overflows `usize`.
    BadDimension {
        /// Index of the offending layer (`usize::MAX` for the input shape).
        layer: usize,
    },
    /// A layer cannot take the shape produced by the layer before it.
    ShapeMismatch {
        /// Index of the offending layer.
        layer: usize,
    },
    /// A layer hyper-parameter is out of range (e.g. dropout p outside `[0, 1)`).
    BadParameter {
        /// Index of the offending layer.
        layer: usize,
    },
    /// More layers than the fixed-capacity containers hold.
    TooManyLayers,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SpecError::Empty => write!(f, "network spec has no layers"),
            SpecError::BadDimension { layer } if layer == usize::MAX => {
                write!(f, "input shape has a zero or overflowing dimension")
            }
            SpecError::BadDimension { layer } => {
                write!(f, "layer {layer}: zero or overflowing dimension")
            }
            SpecError::ShapeMismatch { layer } => {
                write!(f, "layer {layer}: input shape does not fit the previous layer's output")
            }
            SpecError::BadParameter { layer } => write!(f, "layer {layer}: parameter out of range"),
            SpecError::TooManyLayers => write!(f, "too many layers"),
        }
    }
}

/// Errors returned by the math core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CoreError {
    /// The network spec is invalid.
    Spec(SpecError),
    /// A caller-provided buffer has the wrong length.
    BufferLen {
        /// Which buffer (a static name such as `"params"`).
        what: &'static str,
        /// Length required.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// A layer kind is not supported by this operation (e.g. not yet implemented on this path).
    Unsupported {
        /// Index of the layer.
        layer: usize,
    },
    /// A batch size of zero, or a dimension argument that is zero.
    ZeroSize,
}

impl From<SpecError> for CoreError {
    fn from(e: SpecError) -> Self {
        CoreError::Spec(e)
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Spec(e) => write!(f, "invalid network spec: {e}"),
            CoreError::BufferLen { what, expected, got } => {
                write!(f, "buffer `{what}` has length {got}, expected {expected}")
            }
            CoreError::Unsupported { layer } => {
                write!(f, "layer {layer} is not supported by this operation")
            }
            CoreError::ZeroSize => write!(f, "zero batch size or dimension"),
        }
    }
}

impl core::error::Error for SpecError {}
impl core::error::Error for CoreError {}

/// Returns `Err(BufferLen)` unless `got == expected`.
#[inline]
pub(crate) fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), CoreError> {
    if got == expected { Ok(()) } else { Err(CoreError::BufferLen { what, expected, got }) }
}

/// [`check_len`] for an optional buffer: `Ok` when it is `None`.
#[inline]
pub(crate) fn check_opt_len(
    what: &'static str, buf: Option<&[f32]>, expected: usize,
) -> Result<(), CoreError> {
    match buf {
        Some(b) => check_len(what, b.len(), expected),
        None => Ok(()),
    }
}

/// Returns `Err(BufferLen)` unless `got >= needed`.
#[inline]
pub(crate) fn check_min_len(
    what: &'static str, got: usize, needed: usize,
) -> Result<(), CoreError> {
    if got >= needed { Ok(()) } else { Err(CoreError::BufferLen { what, expected: needed, got }) }
}
