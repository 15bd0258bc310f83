//! The f32 encoding: the flat parameter buffer of [`crate::spec`] as it is, little-endian, every
//! tensor on a 16-byte boundary (the buffer's own alignment), so a device uses it in place.

use crate::error::CoreError;
use crate::format::{DType, FormatError, TensorEntry, TensorKind};
use crate::layers::LayerWeights;
use crate::spec::{LayerInfo, Spec};

use super::Table;

/// Every weight, bias and running-statistics tensor at its offset in the parameter layout.
pub(crate) fn table(spec: &Spec<'_>) -> Result<Table, FormatError> {
    let mut t = heapless::Vec::new();
    for info in spec.iter() {
        let layer = u16::try_from(info.index).map_err(|_| FormatError::TooLarge)?;
        for (kind, off, len) in [
            (TensorKind::Weight, info.param_offset, info.weight_len),
            (TensorKind::Bias, info.bias_offset, info.bias_len),
            (TensorKind::RunningStats, info.stats_offset, info.stats_len),
        ] {
            if len == 0 {
                continue;
            }
            t.push(TensorEntry {
                layer,
                kind,
                dtype: DType::F32,
                offset: u32::try_from(off * 4).map_err(|_| FormatError::TooLarge)?,
                len: u32::try_from(len).map_err(|_| FormatError::TooLarge)?,
            })
            .map_err(|_| FormatError::TooLarge)?;
        }
    }
    let len = spec.param_len().checked_mul(4).ok_or(FormatError::TooLarge)?;
    Ok((t, len))
}

/// The parameters as little-endian bytes.
pub(crate) fn encode(
    _spec: &Spec<'_>, params: &[f32], out: &mut [u8],
) -> Result<usize, FormatError> {
    let len = params.len() * 4;
    let out = out.get_mut(..len).ok_or(FormatError::BufferTooSmall)?;
    for (dst, p) in out.chunks_exact_mut(4).zip(params) {
        dst.copy_from_slice(&p.to_le_bytes());
    }
    Ok(len)
}

/// The data section as f32, in place.
#[cfg(target_endian = "little")]
pub(crate) fn view(data: &[u8]) -> Result<&[f32], FormatError> {
    if !data.len().is_multiple_of(4) {
        return Err(FormatError::BadTensorTable);
    }
    // SAFETY: every bit pattern is a valid f32, and `align_to` only puts correctly aligned,
    // in-bounds elements in the middle slice; we require the prefix and suffix to be empty.
    let (pre, mid, post) = unsafe { data.align_to::<f32>() };
    if !pre.is_empty() || !post.is_empty() {
        return Err(FormatError::Misaligned);
    }
    Ok(mid)
}

#[cfg(not(target_endian = "little"))]
compile_error!("the weights format is little-endian and is read in place");

/// One layer's tensors, at their ranges of the parameter buffer.
pub(crate) fn layer<'a>(params: &'a [f32], l: &LayerInfo) -> Result<LayerWeights<'a>, CoreError> {
    let get = |r: core::ops::Range<usize>| {
        params.get(r).ok_or(CoreError::BufferLen {
            what: "params",
            expected: l.param_range().end,
            got: params.len(),
        })
    };
    Ok(LayerWeights::F32 {
        w: get(l.weight_range())?,
        b: get(l.bias_range())?,
        stats: get(l.stats_range())?,
    })
}
