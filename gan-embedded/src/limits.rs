// Compile-time capacities of the firmware, shared by `build.rs` (which checks the linked weights
// file against them) and the library (which checks whatever it runs at boot). The buffers they
// size are statics: a firmware whose buffers do not fit a board's RAM fails to link.

/// Widest activation (input, hidden or output features) the static buffers hold: that of the
/// largest preset the firmware runs (the `pico` generator's 16 × 14 × 14 map), and at least
/// 1024 so that MLP generators up to 1024 wide run too.
pub const MAX_FEATURES: usize = {
    let pico = gan_core::presets::PICO_SPEC.max_features();
    let mcu = gan_core::presets::MCU_SPEC.max_features();
    let widest = if pico > mcu { pico } else { mcu };
    if widest > 1024 { widest } else { 1024 }
};
/// Most generator input values (noise, then the class one-hot).
pub const MAX_INPUT: usize = 1024;
/// Most output values (grey pixels) per generated sample: one 28×28 digit.
pub const MAX_PIXELS: usize = 784;
/// Most parameters accepted: 2 MiB of f32, the largest weights region of any memory map. The
/// weights are used in place, so this is a sanity bound; the real limit is the flash region the
/// file sits in, checked against the header before any weight is read.
pub const MAX_PARAMS: usize = 512 * 1024;
