//! The layout of a batch whose rows differ in length (a check's four policy suffixes, requests
//! batched together): the norms, projections and MLP work token by token, so they run on the
//! real tokens only, packed one row after another; attention needs the rows padded to one
//! width, and its kernels read and write the packed rows directly.

use candle_core::{Result, Tensor};

/// The rows of a token-packed batch: row `b` holds `lengths[b]` real tokens, then padding up to
/// `width` (the longest row).
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    pub lengths: &'a [usize],
    pub width: usize,
}

impl Rows<'_> {
    /// The packed index of each row's first token.
    pub(crate) fn starts(&self) -> Vec<usize> {
        self.lengths
            .iter()
            .scan(0, |start, &n| {
                let this = *start;
                *start += n;
                Some(this)
            })
            .collect()
    }

    /// Whether every row fills the width (packed and padded layouts then coincide).
    fn unpadded(&self) -> bool {
        self.lengths.iter().all(|&n| n == self.width)
    }

    /// The real tokens of a padded `[batch, width, d]` tensor, packed to `[tokens, d]`.
    pub fn pack(&self, padded: &Tensor) -> Result<Tensor> {
        if self.unpadded() {
            return padded.flatten_to(1);
        }
        let rows = self
            .lengths
            .iter()
            .enumerate()
            .map(|(b, &n)| padded.get(b)?.narrow(0, 0, n))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&rows, 0)
    }

    /// `[tokens, d]` → `[batch, width, d]`, zeros in the padding slots.
    pub fn unpack(&self, packed: &Tensor) -> Result<Tensor> {
        let d = packed.dim(1)?;
        if self.unpadded() {
            return packed.reshape((self.lengths.len(), self.width, d));
        }
        let mut rows = Vec::with_capacity(self.lengths.len());
        for (&start, &n) in self.starts().iter().zip(self.lengths) {
            let row = packed.narrow(0, start, n)?;
            rows.push(if n < self.width {
                let pad = Tensor::zeros((self.width - n, d), packed.dtype(), packed.device())?;
                Tensor::cat(&[&row, &pad], 0)?
            } else {
                row
            });
        }
        Tensor::stack(&rows, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn packing_and_unpacking_round_trip_with_zeros_in_padding() {
        let lengths = [2, 3, 1];
        let rows = Rows {
            lengths: &lengths,
            width: 3,
        };
        let packed = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .and_then(|t| t.reshape((6, 1)))
            .expect("packed");
        let padded = rows.unpack(&packed).expect("unpack");
        let flat: Vec<f32> = padded
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("flat");
        assert_eq!(flat, [0.0, 1.0, 0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]);
        let back: Vec<f32> = rows
            .pack(&padded)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("back");
        assert_eq!(back, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn rows_of_one_length_pack_and_unpack_without_padding() {
        let lengths = [2, 2];
        let rows = Rows {
            lengths: &lengths,
            width: 2,
        };
        let packed = Tensor::arange(0f32, 4.0, &Device::Cpu)
            .and_then(|t| t.reshape((4, 1)))
            .expect("packed");
        let padded = rows.unpack(&packed).expect("unpack");
        assert_eq!(padded.dims(), [2, 2, 1]);
        assert_eq!(rows.pack(&padded).expect("pack").dims(), [4, 1]);
    }
}
