//! The few Arm semihosting calls the QEMU binary needs: console output, a host file, the command
//! line and the exit status.
//!
//! A semihosting call is `bkpt 0xAB` with the operation number in `r0` and a pointer to an
//! argument block in `r1`; the debugger (here QEMU with `-semihosting-config enable=on`) does the
//! work on the host and puts the result in `r0`. Without a debugger attached the breakpoint
//! faults, so only binaries meant for QEMU or a debug probe use this module.

use core::arch::asm;

const SYS_OPEN: usize = 0x01;
const SYS_CLOSE: usize = 0x02;
const SYS_WRITE: usize = 0x05;
const SYS_GET_CMDLINE: usize = 0x15;
const SYS_EXIT: usize = 0x18;
const SYS_EXIT_EXTENDED: usize = 0x20;

/// `ADP_Stopped_ApplicationExit`: a normal exit; with `SYS_EXIT_EXTENDED` the subcode is the
/// process exit status QEMU exits with.
const ADP_STOPPED_APPLICATION_EXIT: usize = 0x20026;
/// `ADP_Stopped_RunTimeErrorUnknown`: an abnormal exit (for hosts without `SYS_EXIT_EXTENDED`).
const ADP_STOPPED_RUN_TIME_ERROR: usize = 0x20023;

/// `SYS_OPEN` modes (the index of the C `fopen` mode string).
const MODE_WRITE: usize = 4; // "w"
const MODE_WRITE_BINARY: usize = 5; // "wb"
const MODE_APPEND: usize = 8; // "a"

/// Performs one semihosting call.
///
/// # Safety
/// `arg` must be what operation `op` expects: usually the address of an argument block that
/// stays valid (and writable, for calls that fill it) during the call.
#[inline(always)]
unsafe fn call(op: usize, arg: usize) -> isize {
    let ret: usize;
    // SAFETY: per the caller's contract; the host reads and writes only the memory `arg`
    // describes, which the compiler must assume is touched (no `nomem`/`readonly`).
    unsafe {
        asm!("bkpt #0xab", inout("r0") op => ret, in("r1") arg, options(nostack, preserves_flags));
    }
    ret as isize
}

/// A host file handle.
#[derive(Debug)]
pub struct File(usize);

/// Why a host call failed (the host's negative return or a name that does not fit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError;

impl File {
    /// The host's standard output (`:tt` opened for writing).
    pub fn stdout() -> Result<File, HostError> {
        open_raw(b":tt", MODE_WRITE)
    }

    /// The host's standard error (`:tt` opened for appending).
    pub fn stderr() -> Result<File, HostError> {
        open_raw(b":tt", MODE_APPEND)
    }

    /// Creates (or truncates) a host file for binary writing. Relative paths are relative to
    /// the directory QEMU runs in.
    pub fn create(path: &[u8]) -> Result<File, HostError> {
        open_raw(path, MODE_WRITE_BINARY)
    }

    /// Writes all of `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), HostError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let block = [self.0, bytes.as_ptr() as usize, bytes.len()];
        // SAFETY: the block describes a live, readable buffer for the duration of the call.
        // SYS_WRITE returns the number of bytes *not* written.
        let left = unsafe { call(SYS_WRITE, block.as_ptr() as usize) };
        if left == 0 { Ok(()) } else { Err(HostError) }
    }

    /// Closes the handle.
    pub fn close(self) -> Result<(), HostError> {
        let block = [self.0];
        // SAFETY: a one-word block holding a handle the host gave us.
        let r = unsafe { call(SYS_CLOSE, block.as_ptr() as usize) };
        if r == 0 { Ok(()) } else { Err(HostError) }
    }
}

impl core::fmt::Write for File {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write_all(s.as_bytes()).map_err(|_| core::fmt::Error)
    }
}

/// Longest host path accepted (the call needs it NUL-terminated, so it is copied).
const MAX_PATH: usize = 256;

fn open_raw(name: &[u8], mode: usize) -> Result<File, HostError> {
    if name.is_empty() || name.len() >= MAX_PATH || name.contains(&0) {
        return Err(HostError);
    }
    let mut z = [0u8; MAX_PATH];
    z[..name.len()].copy_from_slice(name);
    let block = [z.as_ptr() as usize, mode, name.len()];
    // SAFETY: the block points at a NUL-terminated name that lives across the call.
    let h = unsafe { call(SYS_OPEN, block.as_ptr() as usize) };
    if h < 0 { Err(HostError) } else { Ok(File(h as usize)) }
}

/// Reads the command line QEMU was given (`-semihosting-config arg=...` values joined by
/// spaces, or the kernel path followed by `-append` text) into `buf`; returns the text.
pub fn command_line(buf: &mut [u8]) -> Result<&[u8], HostError> {
    let mut block = [buf.as_mut_ptr() as usize, buf.len()];
    // SAFETY: the block describes a writable buffer; the host writes at most `buf.len()` bytes
    // (including a NUL) and stores the text length in the second word.
    let r = unsafe { call(SYS_GET_CMDLINE, block.as_mut_ptr() as usize) };
    if r != 0 {
        return Err(HostError);
    }
    let len = block[1].min(buf.len());
    Ok(&buf[..len])
}

/// Ends the program: QEMU exits with `status` as its process exit status (0 = success).
pub fn exit(status: u8) -> ! {
    let block = [ADP_STOPPED_APPLICATION_EXIT, status as usize];
    // SAFETY: a two-word block (reason, subcode) as SYS_EXIT_EXTENDED expects.
    unsafe {
        call(SYS_EXIT_EXTENDED, block.as_ptr() as usize);
    }
    // A host without SYS_EXIT_EXTENDED returns here: fall back to the plain exit, which can only
    // tell success from failure.
    let reason =
        if status == 0 { ADP_STOPPED_APPLICATION_EXIT } else { ADP_STOPPED_RUN_TIME_ERROR };
    // SAFETY: on 32-bit Arm SYS_EXIT takes the reason code itself, not a block.
    unsafe {
        call(SYS_EXIT, reason);
    }
    loop {
        cortex_m::asm::wfi();
    }
}
