//! Activations quantized per 32-wide block of each row for the int8 tiles.

use rayon::prelude::*;

use super::BLOCK;

/// How the quantized activations enter `vpdpbusd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Encoding {
    /// `q + 128` as unsigned bytes, for signed weights (Q8_0); the weights' offsets undo it.
    Shifted,
    /// `q` as signed bytes, for unsigned weights (Q4_K's 4-bit values).
    Signed,
}

/// `q = round(x / d)` in [-127, 127] with `d = max |x| / 127` per block, in the given
/// encoding; rows past the real ones are zero. `sums` holds `d × Σ q` of each block.
pub(super) struct Activations {
    pub(super) bytes: Vec<u8>,
    pub(super) scales: Vec<f32>,
    pub(super) sums: Vec<f32>,
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
            Encoding::Signed => 0,
        };
        let mut bytes = vec![shift as u8; padded_rows * in_dim];
        let mut scales = vec![0f32; padded_rows * blocks];
        let mut sums = vec![0f32; padded_rows * blocks];
        bytes[..rows * in_dim]
            .par_chunks_mut(in_dim)
            .zip(scales[..rows * blocks].par_chunks_mut(blocks))
            .zip(sums[..rows * blocks].par_chunks_mut(blocks))
            .zip(x.par_chunks(in_dim))
            .for_each(|(((bytes, scales), sums), x)| quantize_row(x, bytes, scales, sums, shift));
        Self {
            bytes,
            scales,
            sums,
            in_dim,
        }
    }

    /// Checks that rows `row..row + count` are here (the tiles read them through raw
    /// pointers).
    pub(super) fn check_rows(&self, row: usize, count: usize) {
        let blocks = self.in_dim / BLOCK;
        assert!(self.bytes.len() >= (row + count) * self.in_dim);
        assert!(self.scales.len() >= (row + count) * blocks);
        assert!(self.sums.len() >= (row + count) * blocks);
    }

    /// The quantized value at `row`, `col`, whatever the encoding.
    #[cfg(test)]
    pub(super) fn value(&self, row: usize, col: usize, encoding: Encoding) -> i32 {
        let byte = self.bytes[row * self.in_dim + col];
        match encoding {
            Encoding::Shifted => i32::from(byte) - 128,
            Encoding::Signed => i32::from(byte as i8),
        }
    }
}

/// Quantizes one row block by block into `bytes` (`q + shift`), `scales` (`d`) and `sums`
/// (`d × Σ q`): with AVX-512 where the CPU has it, else in plain code; both round to the
/// nearest, ties to even, and agree exactly.
fn quantize_row(x: &[f32], bytes: &mut [u8], scales: &mut [f32], sums: &mut [f32], shift: i32) {
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        return super::avx512::quantize_row(x, bytes, scales, sums, shift);
    }
    quantize_row_plain(x, bytes, scales, sums, shift);
}

fn quantize_row_plain(
    x: &[f32],
    bytes: &mut [u8],
    scales: &mut [f32],
    sums: &mut [f32],
    shift: i32,
) {
    for (((q, d), sum), x) in bytes
        .chunks_exact_mut(BLOCK)
        .zip(scales.iter_mut())
        .zip(sums.iter_mut())
        .zip(x.chunks_exact(BLOCK))
    {
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        *d = max / 127.0;
        let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
        let mut total = 0i32;
        for (q, &v) in q.iter_mut().zip(x) {
            let value = (v * inv).round_ties_even() as i32;
            total += value;
            *q = (value + shift) as u8;
        }
        *sum = *d * total as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_quantizer_equals_the_plain_one() {
        let x: Vec<f32> = (0..4 * 96)
            .map(|i| match i % 41 {
                0 => 0.5,
                1 => -2.5,
                _ => (i as f32 * 0.731).sin() * (1 + i % 7) as f32,
            })
            .chain([0.0; 32])
            .collect();
        for shift in [0, 128] {
            let mut a = (
                vec![0u8; x.len()],
                vec![0f32; x.len() / BLOCK],
                vec![0f32; x.len() / BLOCK],
            );
            let mut b = a.clone();
            quantize_row(&x, &mut a.0, &mut a.1, &mut a.2, shift);
            quantize_row_plain(&x, &mut b.0, &mut b.1, &mut b.2, shift);
            assert_eq!(a, b, "shift {shift}");
        }
    }

    #[test]
    fn both_encodings_hold_the_same_values_and_block_sums() {
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
                let sum = d * values.iter().sum::<i32>() as f32;
                assert_eq!(signed.sums[row * 2 + block], sum);
                for (k, &q) in values.iter().enumerate() {
                    let v = x.get(row * 64 + block * BLOCK + k).copied().unwrap_or(0.0);
                    assert!((q as f32 * d - v).abs() <= d / 2.0 + 1e-6);
                }
            }
        }
    }
}
