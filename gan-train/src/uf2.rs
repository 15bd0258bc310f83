//! UF2 files for drag-and-drop flashing (the RP2040 boot ROM's USB mass-storage mode, entered
//! by holding BOOTSEL while plugging the board in).
//!
//! A UF2 file is a sequence of independent 512-byte blocks, each carrying up to 476 bytes for
//! one flash address. This writer uses 256-byte payloads at 256-byte aligned addresses (one
//! flash page, what the RP2040 boot ROM expects):
//!
//! ```text
//! offset  size  field
//! 0       4     magic 0x0A324655 ("UF2\n")
//! 4       4     magic 0x9E5D5157
//! 8       4     flags (0x2000: the family id field is present)
//! 12      4     target address
//! 16      4     payload size (256)
//! 20      4     block number (0-based)
//! 24      4     number of blocks in the file
//! 28      4     family id (RP2040: 0xE48BFF56)
//! 32      476   payload, zero-padded
//! 508     4     magic 0x0AB16F30
//! ```
//!
//! [`elf_to_uf2`] converts a firmware ELF (its loadable segments, at their physical = flash
//! addresses); [`bin_to_uf2`] converts raw bytes to be placed at one address, e.g. a weights file
//! for the firmware's WEIGHTS region ([`PICO_WEIGHTS_ADDR`]).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};
use gan_core::board::Board;

/// First magic number of every block.
pub const MAGIC_START0: u32 = 0x0A32_4655;
/// Second magic number of every block.
pub const MAGIC_START1: u32 = 0x9E5D_5157;
/// Magic number closing every block.
pub const MAGIC_END: u32 = 0x0AB1_6F30;
/// Flag: the block's word at offset 28 is a family id.
pub const FLAG_FAMILY_ID_PRESENT: u32 = 0x0000_2000;
pub use gan_core::board::RP2040_FAMILY_ID;
/// Bytes per UF2 block.
pub const BLOCK_LEN: usize = 512;
/// Payload bytes per block (one flash page).
pub const PAYLOAD_LEN: usize = 256;
/// Where the Pico firmware looks for a separately flashed weights file (from the board table).
pub const PICO_WEIGHTS_ADDR: u32 = gan_core::board::PICO.weights.origin;

/// The board called `name`, if UF2 files can be written for it (a `--board` value).
pub fn parse_board(name: &str) -> std::result::Result<&'static Board, String> {
    match gan_core::board::by_name(name) {
        Some(b) if b.uf2_family.is_some() => Ok(b),
        _ => {
            let names: Vec<&str> = gan_core::board::BOARDS
                .iter()
                .filter(|b| b.uf2_family.is_some())
                .map(|b| b.name)
                .collect();
            Err(format!(
                "no UF2 board called `{name}` (boards flashed by UF2: {})",
                names.join(", ")
            ))
        }
    }
}

/// The UF2 family id of `board`.
pub fn family_of(board: &Board) -> Result<u32> {
    board.uf2_family.with_context(|| format!("{} is not flashed with UF2 files", board.name))
}

/// One decoded UF2 block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Flags word.
    pub flags: u32,
    /// Flash address of the payload.
    pub addr: u32,
    /// Block number.
    pub block_no: u32,
    /// Number of blocks the file claims.
    pub num_blocks: u32,
    /// Family id (or file size when the family flag is absent).
    pub family_id: u32,
    /// The payload.
    pub data: Vec<u8>,
}

/// One loadable ELF segment: bytes and the (physical) address they go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Physical (load) address.
    pub addr: u32,
    /// The segment's file bytes.
    pub data: Vec<u8>,
}

const PT_LOAD: u32 = 1;

fn read_u16(b: &[u8], at: usize) -> Result<u16> {
    let s = b.get(at..at + 2).with_context(|| format!("ELF ends before offset {at}"))?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn read_u32(b: &[u8], at: usize) -> Result<u32> {
    let s = b.get(at..at + 4).with_context(|| format!("ELF ends before offset {at}"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The `PT_LOAD` segments of a 32-bit little-endian ELF that have file bytes (`p_filesz > 0`),
/// at their physical addresses: for a firmware, `.data`'s initial values go to flash (its
/// physical address), not to RAM (its virtual address).
pub fn load_segments(elf: &[u8]) -> Result<Vec<Segment>> {
    ensure!(elf.len() >= 52 && elf[..4] == *b"\x7fELF", "not an ELF file");
    ensure!(elf[4] == 1, "not a 32-bit ELF file");
    ensure!(elf[5] == 1, "not a little-endian ELF file");
    let phoff = read_u32(elf, 28)? as usize;
    let phentsize = read_u16(elf, 42)? as usize;
    let phnum = read_u16(elf, 44)? as usize;
    ensure!(phnum == 0 || phentsize >= 32, "ELF program header entries are too small");
    let mut out = Vec::new();
    for i in 0..phnum {
        let ph = phoff.checked_add(i * phentsize).context("ELF program header offset overflows")?;
        if read_u32(elf, ph)? != PT_LOAD {
            continue;
        }
        let offset = read_u32(elf, ph + 4)? as usize;
        let paddr = read_u32(elf, ph + 12)?;
        let filesz = read_u32(elf, ph + 16)? as usize;
        if filesz == 0 {
            continue;
        }
        let data = offset
            .checked_add(filesz)
            .and_then(|end| elf.get(offset..end))
            .with_context(|| format!("ELF segment {i} lies outside the file"))?;
        ensure!(
            (paddr as u64) + (filesz as u64) <= 1 << 32,
            "ELF segment {i} runs past the 32-bit address space"
        );
        out.push(Segment { addr: paddr, data: data.to_vec() });
    }
    Ok(out)
}

/// Writes the pages covering `segments` as UF2 blocks. Bytes of a page that no segment covers
/// are zero; a byte covered twice is an error.
fn pages_to_uf2(segments: &[Segment], family_id: u32) -> Result<Vec<u8>> {
    let mut pages: BTreeMap<u32, ([u8; PAYLOAD_LEN], [bool; PAYLOAD_LEN])> = BTreeMap::new();
    for seg in segments {
        ensure!(
            seg.addr as u64 + seg.data.len() as u64 <= 1 << 32,
            "data at {:#010x} runs past the 32-bit address space",
            seg.addr
        );
        for (i, &b) in seg.data.iter().enumerate() {
            let addr = seg.addr + i as u32;
            let page = addr & !(PAYLOAD_LEN as u32 - 1);
            let at = (addr - page) as usize;
            let (bytes, used) =
                pages.entry(page).or_insert(([0; PAYLOAD_LEN], [false; PAYLOAD_LEN]));
            if used[at] {
                bail!("two segments both write address {addr:#010x}");
            }
            bytes[at] = b;
            used[at] = true;
        }
    }
    let num_blocks = u32::try_from(pages.len()).context("too many UF2 blocks")?;
    let mut out = Vec::with_capacity(pages.len() * BLOCK_LEN);
    for (block_no, (addr, (bytes, _))) in pages.iter().enumerate() {
        push_block(&mut out, *addr, block_no as u32, num_blocks, family_id, bytes);
    }
    Ok(out)
}

fn push_block(
    out: &mut Vec<u8>, addr: u32, block_no: u32, num_blocks: u32, family_id: u32, payload: &[u8],
) {
    let start = out.len();
    for word in [
        MAGIC_START0,
        MAGIC_START1,
        FLAG_FAMILY_ID_PRESENT,
        addr,
        PAYLOAD_LEN as u32,
        block_no,
        num_blocks,
        family_id,
    ] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(payload);
    out.resize(start + BLOCK_LEN - 4, 0);
    out.extend_from_slice(&MAGIC_END.to_le_bytes());
}

/// Converts a firmware ELF to UF2: every loadable segment with file bytes, at its physical
/// address, in 256-byte pages (gaps inside a page are zero).
pub fn elf_to_uf2(elf: &[u8], family_id: u32) -> Result<Vec<u8>> {
    let segments = load_segments(elf)?;
    ensure!(!segments.is_empty(), "the ELF file has no loadable bytes");
    pages_to_uf2(&segments, family_id)
}

/// Converts raw bytes to UF2 blocks placing them at `base_addr` (for flashing a weights file to
/// the Pico's WEIGHTS region use [`PICO_WEIGHTS_ADDR`]). `base_addr` should be page aligned;
/// otherwise the first page starts with zeros. Data that would run past the 32-bit address space
/// gives an empty file.
pub fn bin_to_uf2(data: &[u8], base_addr: u32, family_id: u32) -> Vec<u8> {
    let seg = Segment { addr: base_addr, data: data.to_vec() };
    // A single segment cannot overlap itself; the only possible error is running past 4 GiB.
    pages_to_uf2(&[seg], family_id).unwrap_or_default()
}

/// Decodes and checks a UF2 file: every block has the magics, a payload of at most 476 bytes,
/// consecutive block numbers and the same block count.
pub fn read_uf2(bytes: &[u8]) -> Result<Vec<Block>> {
    ensure!(
        bytes.len().is_multiple_of(BLOCK_LEN),
        "UF2 length {} is not a multiple of 512",
        bytes.len()
    );
    let mut blocks = Vec::with_capacity(bytes.len() / BLOCK_LEN);
    for (i, b) in bytes.chunks_exact(BLOCK_LEN).enumerate() {
        let w = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        ensure!(
            w(0) == MAGIC_START0 && w(4) == MAGIC_START1 && w(508) == MAGIC_END,
            "block {i}: bad magic"
        );
        let size = w(16) as usize;
        ensure!(size <= 476, "block {i}: payload size {size} is too large");
        blocks.push(Block {
            flags: w(8),
            addr: w(12),
            block_no: w(20),
            num_blocks: w(24),
            family_id: w(28),
            data: b[32..32 + size].to_vec(),
        });
    }
    let n = blocks.len() as u32;
    for (i, blk) in blocks.iter().enumerate() {
        ensure!(
            blk.block_no == i as u32 && blk.num_blocks == n,
            "block {i}: numbered {} of {}, expected {i} of {n}",
            blk.block_no,
            blk.num_blocks
        );
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF32 LE executable with the given program headers
    /// `(type, paddr, vaddr, bytes, memsz)`; segment bytes follow the headers.
    fn tiny_elf(segs: &[(u32, u32, u32, &[u8], u32)]) -> Vec<u8> {
        let phoff = 52usize;
        let mut data_off = phoff + 32 * segs.len();
        let mut elf = vec![0u8; 52];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 1; // ELFCLASS32
        elf[5] = 1; // ELFDATA2LSB
        elf[6] = 1; // EV_CURRENT
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&40u16.to_le_bytes()); // EM_ARM
        elf[28..32].copy_from_slice(&(phoff as u32).to_le_bytes());
        elf[40..42].copy_from_slice(&52u16.to_le_bytes());
        elf[42..44].copy_from_slice(&32u16.to_le_bytes());
        elf[44..46].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        let mut payload = Vec::new();
        for &(kind, paddr, vaddr, bytes, memsz) in segs {
            for w in [kind, data_off as u32, vaddr, paddr, bytes.len() as u32, memsz, 4, 4] {
                elf.extend_from_slice(&w.to_le_bytes());
            }
            payload.extend_from_slice(bytes);
            data_off += bytes.len();
        }
        elf.extend_from_slice(&payload);
        elf
    }

    fn memory(blocks: &[Block]) -> BTreeMap<u32, u8> {
        let mut m = BTreeMap::new();
        for b in blocks {
            for (i, &v) in b.data.iter().enumerate() {
                assert!(m.insert(b.addr + i as u32, v).is_none(), "address written twice");
            }
        }
        m
    }

    #[test]
    fn bin_round_trip() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let uf2 = bin_to_uf2(&data, PICO_WEIGHTS_ADDR, RP2040_FAMILY_ID);
        assert_eq!(uf2.len(), 4 * BLOCK_LEN); // 1000 bytes = 4 pages
        let blocks = read_uf2(&uf2).unwrap();
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(b.addr, PICO_WEIGHTS_ADDR + 256 * i as u32);
            assert_eq!(b.flags, FLAG_FAMILY_ID_PRESENT);
            assert_eq!(b.family_id, RP2040_FAMILY_ID);
            assert_eq!(b.data.len(), PAYLOAD_LEN);
        }
        let m = memory(&blocks);
        let back: Vec<u8> = (0..data.len() as u32).map(|i| m[&(PICO_WEIGHTS_ADDR + i)]).collect();
        assert_eq!(back, data);
        // The tail of the last page is zero padding.
        assert!((1000..1024).all(|i| m[&(PICO_WEIGHTS_ADDR + i)] == 0));
        // Raw layout of the first block.
        assert_eq!(&uf2[..4], &MAGIC_START0.to_le_bytes());
        assert_eq!(&uf2[4..8], &MAGIC_START1.to_le_bytes());
        assert_eq!(&uf2[508..512], &MAGIC_END.to_le_bytes());
        assert_eq!(&uf2[32..32 + 256], &data[..256]);
        assert!(uf2[32 + 256..508].iter().all(|&b| b == 0));
        assert!(bin_to_uf2(&[], 0, RP2040_FAMILY_ID).is_empty());
    }

    #[test]
    fn elf_segments_at_physical_addresses() {
        let text: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let data = [0xAA; 8];
        let elf = tiny_elf(&[
            (PT_LOAD, 0x1000_0100, 0x1000_0100, &text, 300),
            // .data: runs from RAM, stored in flash right after .text.
            (PT_LOAD, 0x1000_0100 + 300, 0x2000_0000, &data, 8),
            // .bss: nothing to flash.
            (PT_LOAD, 0x2000_0008, 0x2000_0008, &[], 64),
            // Not loadable.
            (4, 0x3000_0000, 0x3000_0000, &[1, 2, 3], 3),
        ]);
        let segs = load_segments(&elf).unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[1].addr, 0x1000_022C);
        let uf2 = elf_to_uf2(&elf, RP2040_FAMILY_ID).unwrap();
        let blocks = read_uf2(&uf2).unwrap();
        // 0x1000_0100 .. 0x1000_0234 spans pages 0x1000_0100 and 0x1000_0200.
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].addr, 0x1000_0100);
        assert_eq!(blocks[1].addr, 0x1000_0200);
        assert!(blocks.iter().all(|b| b.num_blocks == 2 && b.family_id == RP2040_FAMILY_ID));
        let m = memory(&blocks);
        for (i, &b) in text.iter().enumerate() {
            assert_eq!(m[&(0x1000_0100 + i as u32)], b);
        }
        for i in 0..8 {
            assert_eq!(m[&(0x1000_022C + i)], 0xAA);
        }
        assert!(!m.keys().any(|&a| a >= 0x2000_0000));
    }

    #[test]
    fn unaligned_start_and_errors() {
        let elf = tiny_elf(&[(PT_LOAD, 0x10, 0x10, &[9; 4], 4)]);
        let blocks = read_uf2(&elf_to_uf2(&elf, 7).unwrap()).unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].addr, 0);
        assert_eq!(
            &blocks[0].data[..20],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9]
        );
        assert_eq!(blocks[0].family_id, 7);

        let overlapping =
            tiny_elf(&[(PT_LOAD, 0x100, 0x100, &[1; 8], 8), (PT_LOAD, 0x104, 0x104, &[2; 8], 8)]);
        assert!(elf_to_uf2(&overlapping, RP2040_FAMILY_ID).is_err());
        assert!(
            elf_to_uf2(b"not an elf at all, but long enough to have a header......", 0).is_err()
        );
        let mut big_endian = tiny_elf(&[(PT_LOAD, 0, 0, &[1], 1)]);
        big_endian[5] = 2;
        assert!(elf_to_uf2(&big_endian, 0).is_err());
        let mut cut = tiny_elf(&[(PT_LOAD, 0, 0, &[1; 100], 100)]);
        cut.truncate(cut.len() - 10);
        assert!(elf_to_uf2(&cut, 0).is_err());
        assert!(elf_to_uf2(&tiny_elf(&[]), 0).is_err());

        let mut uf2 = bin_to_uf2(&[1; 600], 0, 0);
        uf2[512 + 508] ^= 1;
        assert!(read_uf2(&uf2).is_err());
        assert!(read_uf2(&uf2[..100]).is_err());
    }
}
