//! The float types the fused kernels read and write (f32, bf16, f16); their arithmetic is f32.

use std::borrow::Cow;

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor, WithDType};
use half::{bf16, f16};
use rayon::prelude::*;

/// A float type a fused kernel reads and writes.
pub(crate) trait Float: WithDType {
    /// The value in f32 (exact).
    fn widen(self) -> f32;
    /// The nearest value of this type.
    fn narrow(value: f32) -> Self;
    /// The values in f32, borrowed when they already are, else widened on every core.
    fn widened(values: &[Self]) -> Cow<'_, [f32]> {
        let mut out = vec![0f32; values.len()];
        out.par_chunks_mut(CHUNK)
            .zip(values.par_chunks(CHUNK))
            .for_each(|(out, values)| {
                for (o, &v) in out.iter_mut().zip(values) {
                    *o = v.widen();
                }
            });
        Cow::Owned(out)
    }
}

/// Elements per parallel task in element-wise kernels: large enough to amortise scheduling,
/// small enough to split a prefill's activations across both cores.
pub(crate) const CHUNK: usize = 16 * 1024;

impl Float for f32 {
    fn widen(self) -> f32 {
        self
    }
    fn narrow(value: f32) -> Self {
        value
    }
    fn widened(values: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(values)
    }
}

impl Float for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    /// Rounds to nearest, ties to even, as `bf16::from_f32` does, but without its branches, so
    /// that loops over it vectorize. A NaN stays a (quiet) NaN.
    fn narrow(value: f32) -> Self {
        let bits = value.to_bits();
        let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
        let quiet_nan = (bits >> 16) | 0x40;
        bf16::from_bits(if value.is_nan() { quiet_nan } else { rounded } as u16)
    }
}

impl Float for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn narrow(value: f32) -> Self {
        f16::from_f32(value)
    }
}

/// Calls `f` with the values of a contiguous f32 tensor on the CPU (a kernel's constant input:
/// a mask, a norm's scale).
pub(crate) fn with_host_f32<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = tensor.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) => f(&values[start..end]),
        _ => candle_core::bail!("a fused kernel takes its constants as contiguous f32 on the CPU"),
    }
}

/// The contiguous values of a kernel's input.
pub(crate) fn contiguous<'a, T>(values: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("a fused kernel takes contiguous tensors"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing_to_bf16_is_half_crates_rounding() {
        let special = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x3f80_8000), // a tie that rounds to even (down)
            f32::from_bits(0x3f81_8000), // a tie that rounds to even (up)
            f32::from_bits(0x7f7f_ffff), // rounds up to infinity
        ];
        let spread = (0..2_000_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761)));
        for x in special.into_iter().chain(spread) {
            let (ours, theirs) = (bf16::narrow(x), bf16::from_f32(x));
            if x.is_nan() {
                assert!(ours.is_nan(), "{x:e}");
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{x:e}");
            }
        }
    }
}
