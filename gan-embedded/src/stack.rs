//! Stack high-water mark: paint the free stack with a pattern at boot, and later find the
//! lowest word that is no longer the pattern.
//!
//! The stack grows down from `_stack_start` (top of RAM) towards `_stack_end` (the end of the
//! statics), both defined by cortex-m-rt's linker script.

use core::ptr;

const PAINT: u32 = 0xA5C3_5A3C;

/// Bytes just below the current stack pointer left unpainted, for the frame of this function.
const MARGIN: usize = 64;

fn bounds() -> (usize, usize) {
    unsafe extern "C" {
        static _stack_start: u32;
        static _stack_end: u32;
    }
    // Only the addresses of the linker symbols are taken; nothing is read.
    (&raw const _stack_end as usize, &raw const _stack_start as usize)
}

/// Fills the unused part of the stack (from its lowest address up to just below the current
/// stack pointer) with the pattern. Call once, early in `main`.
#[inline(never)]
pub fn paint() {
    let (bottom, _) = bounds();
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = (bottom + 3) & !3;
    while p + 4 <= sp.saturating_sub(MARGIN) {
        // SAFETY: [bottom, sp - MARGIN) is RAM below every live stack frame and above every
        // static; nothing else uses it.
        unsafe { ptr::write_volatile(ptr::with_exposed_provenance_mut::<u32>(p), PAINT) };
        p += 4;
    }
}

/// Deepest stack use since [`paint`], in bytes (from the top of the stack).
pub fn peak() -> usize {
    let (bottom, top) = bounds();
    let mut p = (bottom + 3) & !3;
    // SAFETY: reads of RAM inside the stack region.
    while p < top && unsafe { ptr::read_volatile(ptr::with_exposed_provenance::<u32>(p)) } == PAINT
    {
        p += 4;
    }
    top - p
}

/// Size of the stack region (all RAM above the statics), in bytes.
pub fn size() -> usize {
    let (bottom, top) = bounds();
    top - bottom
}
