//! Activations quantized per 32-wide block of each row for the int8 tiles, with one scale per
//! block or, for Q4_K, per 256-wide group (like llama.cpp's Q8_K): then a super-block's eight
//! sub-block sums share the activation scale and can be added as integers.

use rayon::prelude::*;

use super::nibbles::SUPER;
use super::BLOCK;

/// How the quantized activations enter `vpdpbusd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Encoding {
    /// `q + 128` as unsigned bytes, for signed weights (Q8_0); the weights' offsets undo it.
    Shifted,
    /// `q` as signed bytes, for unsigned weights (Q4_0's 4-bit values; Q8_0 on AVX2).
    Signed,
    /// `q` as signed bytes with one scale per 256 inputs, for Q4_K's super-blocks.
    SignedPer256,
}

impl Encoding {
    /// Inputs that share one scale.
    fn group(self) -> usize {
        match self {
            Self::Shifted | Self::Signed => BLOCK,
            Self::SignedPer256 => SUPER,
        }
    }
}

/// `q = round(x / d)` in [-127, 127] with `d = max |x| / 127` per group of the encoding, in
/// its bytes; rows past the real ones are zero. Per 32-wide block, `scales` holds its group's
/// `d` and `totals` its `Σ q`.
pub(super) struct Activations {
    pub(super) bytes: Vec<u8>,
    pub(super) scales: Vec<f32>,
    pub(super) totals: Vec<i16>,
    pub(super) in_dim: usize,
}

impl Activations {
    pub(super) fn quantize(
        x: &[f32],
        rows: usize,
        padded_rows: usize,
        in_dim: usize,
        encoding: Encoding,
    ) -> Self {
        let blocks = in_dim / BLOCK;
        let shift = match encoding {
            Encoding::Shifted => 128,
            Encoding::Signed | Encoding::SignedPer256 => 0,
        };
        let group = encoding.group();
        assert!(
            in_dim.is_multiple_of(group),
            "{in_dim} inputs in groups of {group}"
        );
        let mut bytes = vec![shift as u8; padded_rows * in_dim];
        let mut scales = vec![0f32; padded_rows * blocks];
        let mut totals = vec![0i16; padded_rows * blocks];
        bytes[..rows * in_dim]
            .par_chunks_mut(in_dim)
            .zip(scales[..rows * blocks].par_chunks_mut(blocks))
            .zip(totals[..rows * blocks].par_chunks_mut(blocks))
            .zip(x.par_chunks(in_dim))
            .for_each(|(((bytes, scales), totals), x)| {
                let row = Row {
                    bytes,
                    scales,
                    totals,
                };
                quantize_row(x, row, shift, group);
            });
        Self {
            bytes,
            scales,
            totals,
            in_dim,
        }
    }

    /// Checks that rows `row..row + count` are here (the tiles read them through raw
    /// pointers).
    pub(super) fn check_rows(&self, row: usize, count: usize) {
        let blocks = self.in_dim / BLOCK;
        assert!(self.bytes.len() >= (row + count) * self.in_dim);
        assert!(self.scales.len() >= (row + count) * blocks);
        assert!(self.totals.len() >= (row + count) * blocks);
    }

    /// The quantized value at `row`, `col`, whatever the encoding.
    #[cfg(test)]
    pub(super) fn value(&self, row: usize, col: usize, encoding: Encoding) -> i32 {
        let byte = self.bytes[row * self.in_dim + col];
        match encoding {
            Encoding::Shifted => i32::from(byte) - 128,
            Encoding::Signed | Encoding::SignedPer256 => i32::from(byte as i8),
        }
    }
}

/// One row's share of [`Activations`], per 32-wide block.
pub(super) struct Row<'a> {
    pub(super) bytes: &'a mut [u8],
    pub(super) scales: &'a mut [f32],
    pub(super) totals: &'a mut [i16],
}

/// Quantizes one row group by group into `q + shift` bytes and each block's scale and `Σ q`: with AVX-512 where the CPU has it, else in plain code; both round to the
/// nearest, ties to even, and agree exactly.
fn quantize_row(x: &[f32], row: Row, shift: i32, group: usize) {
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        return super::avx512::quantize_row(x, row, shift, group);
    }
    quantize_row_plain(x, row, shift, group);
}

fn quantize_row_plain(x: &[f32], row: Row, shift: i32, group: usize) {
    let per = group / BLOCK;
    for (g, x) in x.chunks_exact(group).enumerate() {
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = max / 127.0;
        let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
        for (j, x) in x.chunks_exact(BLOCK).enumerate() {
            let b = g * per + j;
            let mut total = 0i32;
            for (q, &v) in row.bytes[b * BLOCK..][..BLOCK].iter_mut().zip(x) {
                let value = (v * inv).round_ties_even() as i32;
                total += value;
                *q = (value + shift) as u8;
            }
            row.scales[b] = d;
            // |total| ≤ 32 × 127.
            row.totals[b] = total as i16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_quantizer_equals_the_plain_one() {
        let x: Vec<f32> = (0..3 * 256)
            .map(|i| match i % 41 {
                0 => 0.5,
                1 => -2.5,
                _ => (i as f32 * 0.731).sin() * (1 + i % 7) as f32,
            })
            .chain([0.0; 256])
            .collect();
        let blocks = x.len() / BLOCK;
        type Out = (Vec<u8>, Vec<f32>, Vec<i16>);
        let run = |quantize: fn(&[f32], Row, i32, usize), shift, group| -> Out {
            let mut out = (vec![0u8; x.len()], vec![0f32; blocks], vec![0i16; blocks]);
            let row = Row {
                bytes: &mut out.0,
                scales: &mut out.1,
                totals: &mut out.2,
            };
            quantize(&x, row, shift, group);
            out
        };
        for (shift, group) in [(0, 32), (128, 32), (0, 256)] {
            assert_eq!(
                run(quantize_row, shift, group),
                run(quantize_row_plain, shift, group),
                "shift {shift}, group {group}"
            );
        }
    }

    #[test]
    fn the_per_32_encodings_hold_the_same_values_and_block_sums() {
        let x: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let shifted = Activations::quantize(&x, 2, 3, 64, Encoding::Shifted);
        let signed = Activations::quantize(&x, 2, 3, 64, Encoding::Signed);
        assert_eq!(shifted.scales, signed.scales);
        for row in 0..3 {
            for block in 0..2 {
                let values: Vec<i32> = (0..BLOCK)
                    .map(|k| signed.value(row, block * BLOCK + k, Encoding::Signed))
                    .collect();
                let again: Vec<i32> = (0..BLOCK)
                    .map(|k| shifted.value(row, block * BLOCK + k, Encoding::Shifted))
                    .collect();
                assert_eq!(values, again);
                let d = signed.scales[row * 2 + block];
                let total = values.iter().sum::<i32>();
                assert_eq!(i32::from(signed.totals[row * 2 + block]), total);
                for (k, &q) in values.iter().enumerate() {
                    let v = x.get(row * 64 + block * BLOCK + k).copied().unwrap_or(0.0);
                    assert!((q as f32 * d - v).abs() <= d / 2.0 + 1e-6);
                }
            }
        }
    }

    #[test]
    fn per_256_the_blocks_of_a_group_share_its_scale() {
        let x: Vec<f32> = (0..2 * 512)
            .map(|i| {
                if i == 700 {
                    9.0
                } else {
                    (i as f32 * 0.37).sin()
                }
            })
            .collect();
        let acts = Activations::quantize(&x, 2, 2, 512, Encoding::SignedPer256);
        for row in 0..2 {
            for group in 0..2 {
                let values = &x[row * 512 + group * 256..][..256];
                let d = values.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                for j in 0..8 {
                    let b = row * 16 + group * 8 + j;
                    assert_eq!(acts.scales[b], d);
                    let mut total = 0;
                    for k in 0..BLOCK {
                        let q =
                            acts.value(row, (group * 8 + j) * BLOCK + k, Encoding::SignedPer256);
                        assert!((q as f32 * d - values[j * BLOCK + k]).abs() <= d / 2.0 + 1e-6);
                        total += q;
                    }
                    assert_eq!(i32::from(acts.totals[b]), total);
                }
            }
        }
    }
}
