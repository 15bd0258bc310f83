//! `gan-core`: the exact, allocation-free math under every part of the project.
//!
//! Everything here works on plain `&[f32]` / `&mut [f32]` slices that the caller owns, so the
//! same code runs in the desktop trainer and on a Cortex-M0+ with no allocator.
//!
//! Conventions (shared by every module):
//! - Forward/backward come in pairs of free functions: outputs first, then inputs, then
//!   dimensions, e.g. [`dense::dense_forward`] / [`dense::dense_backward`].
//! - Backward functions *add* into gradient buffers; the caller zeroes them.
//! - Shapes: `N` batch, `C` channels, `H`, `W`; activations are stored sample-major
//!   (`N × C × H × W`, row-major). Every buffer states its shape in a comment.
//! - One flat buffer per role (parameters, gradients, optimizer moments, activations) with
//!   offsets computed from a [`spec::Spec`].
//! - All transcendental math goes through `libm`, never `std` float methods, and the inference
//!   path keeps one fixed summation order, so host and firmware produce the same bits.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod act;
pub mod conv;
pub mod dense;
pub mod dropout;
pub mod error;
pub mod format;
pub mod generate;
pub mod gp;
pub mod init;
pub mod kernels;
pub mod loss;
pub mod mbd;
pub mod model;
pub mod noise;
pub mod norm;
pub mod optim;
pub mod par;
pub mod pool;
pub mod quant;
pub mod spec;
pub mod vtanh;

#[cfg(test)]
pub(crate) mod testutil;

pub use error::{CoreError, SpecError};
pub use spec::{Layer, Shape, Spec};

/// Characters for grey levels in ASCII art, darkest first.
pub const ASCII_RAMP: &[u8; 10] = b" .:-=+*#%@";

/// The [`ASCII_RAMP`] character for grey level `p`: ten equal bins of 25.6 levels. Shared by
/// `gan-train sample --ascii` and the firmware, so both draw the same picture.
pub fn ascii_shade(p: u8) -> u8 {
    ASCII_RAMP[p as usize * ASCII_RAMP.len() / 256]
}

/// Converts one generator output in `[-1, 1]` (Tanh) to a grey level `0..=255`.
///
/// Host `sample` and the firmware both call this, so their bytes match exactly.
#[inline]
pub fn to_pixel(x: f32) -> u8 {
    let v = (x + 1.0) * 127.5;
    // NaN fails both comparisons and lands on 0.
    if v >= 255.0 {
        255
    } else if v > 0.0 {
        (v + 0.5) as u8
    } else {
        0
    }
}

/// Converts one generator output in `[0, 1]` (Sigmoid) to a grey level `0..=255`.
#[inline]
pub fn to_pixel_unit(x: f32) -> u8 {
    to_pixel(x * 2.0 - 1.0)
}
