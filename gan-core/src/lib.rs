//! `gan-core`: the exact, allocation-free math under every part of the project.
//!
//! Everything here works on plain `&[f32]` / `&mut [f32]` slices that the caller owns, so the
//! same code runs in the desktop trainer and on a Cortex-M0+ with no allocator.
//!
//! Conventions (shared by every module):
//! - Forward/backward come in pairs of free functions: outputs first, then inputs, then
//!   dimensions, e.g. [`layers::dense::dense_forward`] / [`layers::dense::dense_backward`].
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

pub mod board;
pub mod encoding;
pub mod error;
pub mod fold;
pub mod format;
pub mod generate;
pub mod gp;
pub mod init;
pub mod kernels;
pub mod layers;
pub mod loss;
pub mod model;
pub mod noise;
pub mod optim;
pub mod presets;
pub mod spec;

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

/// Longest line [`ascii_art`] writes, without its newline; wider images wrap.
pub const ASCII_MAX_LINE: usize = 64;

/// Renders grey bytes as ASCII art ([`ascii_shade`]), `width` characters per line, calling
/// `line` once per line (each ends with `\n`). Lines wider than [`ASCII_MAX_LINE`] wrap. The
/// host's `sample --ascii` and the firmware both draw through this.
pub fn ascii_art(pixels: &[u8], width: usize, mut line: impl FnMut(&[u8])) {
    let width = width.clamp(1, ASCII_MAX_LINE);
    let mut buf = [0u8; ASCII_MAX_LINE + 1];
    for row in pixels.chunks(width) {
        for (dst, &p) in buf.iter_mut().zip(row) {
            *dst = ascii_shade(p);
        }
        buf[row.len()] = b'\n';
        line(&buf[..=row.len()]);
    }
}

/// Width of the text rendering of an output `shape`: the image width, 28 for a flat 784-value
/// output, else everything on one line.
pub fn art_width(shape: Shape) -> usize {
    let len = shape.len();
    if shape.h > 1 || shape.w > 1 {
        shape.w as usize
    } else if len == 28 * 28 {
        28
    } else {
        len.max(1)
    }
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
