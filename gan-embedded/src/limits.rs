// Compile-time capacities of the firmware, shared by `build.rs` (which checks the linked weights
// file against them) and the library (which checks whatever it runs at boot).

/// Widest activation (input, hidden or output features) the static buffers hold.
pub const MAX_FEATURES: usize = 1024;
/// Most output values (grey pixels) per generated sample: one 28×28 digit.
pub const MAX_PIXELS: usize = 784;
/// Most parameters accepted: 2 MiB of f32, the largest weights region of any memory map. The
/// weights are used in place, so this is a sanity bound; the real limit is the flash region the
/// file sits in, checked against the header before any weight is read.
pub const MAX_PARAMS: usize = 512 * 1024;
