//! Which slots of a padded batch hold tokens. Rows of a batch differ in length (a check's four
//! policy suffixes, requests batched together) and attention needs them padded to one width,
//! but the norms, projections and MLP work token by token: they run on the real tokens only,
//! packed together, and only attention sees the padded layout.

use candle_core::{Device, Result, Tensor};

/// The token slots of a `[batch, width]` batch.
pub struct Slots {
    batch: usize,
    width: usize,
    /// `None` when every slot holds a token; else the packing.
    packing: Option<Packing>,
}

struct Packing {
    /// Flat slot (`b × width + t`) of each token, in order.
    tokens: Tensor,
    /// Token index of each slot; padding slots point one past the last token (a zero row).
    of_slot: Tensor,
    count: usize,
}

impl Slots {
    /// Slots of rows of the given lengths, padded to the longest.
    pub fn new(lengths: &[usize], device: &Device) -> Result<Self> {
        let batch = lengths.len();
        let width = lengths.iter().copied().max().unwrap_or(0).max(1);
        if lengths.iter().all(|&n| n == width) {
            return Ok(Self {
                batch,
                width,
                packing: None,
            });
        }
        let mut tokens = Vec::new();
        let mut of_slot = Vec::with_capacity(batch * width);
        let count: usize = lengths.iter().sum();
        for (b, &n) in lengths.iter().enumerate() {
            for t in 0..width {
                if t < n {
                    of_slot.push(tokens.len() as u32);
                    tokens.push((b * width + t) as u32);
                } else {
                    of_slot.push(count as u32);
                }
            }
        }
        Ok(Self {
            batch,
            width,
            packing: Some(Packing {
                tokens: Tensor::from_vec(tokens, count, device)?,
                of_slot: Tensor::from_vec(of_slot, batch * width, device)?,
                count,
            }),
        })
    }

    /// Rows and width of the padded layout.
    pub fn dims(&self) -> (usize, usize) {
        (self.batch, self.width)
    }

    /// Number of real tokens.
    pub fn tokens(&self) -> usize {
        self.packing
            .as_ref()
            .map_or(self.batch * self.width, |p| p.count)
    }

    /// `[batch, width, d]` → `[tokens, d]`: the real tokens' rows, in order.
    pub fn pack(&self, padded: &Tensor) -> Result<Tensor> {
        let d = padded.dim(2)?;
        let flat = padded.reshape((self.batch * self.width, d))?;
        match &self.packing {
            None => Ok(flat),
            Some(p) => flat.index_select(&p.tokens, 0),
        }
    }

    /// `[tokens, d]` → `[batch, width, d]`, zeros in the padding slots.
    pub fn unpack(&self, packed: &Tensor) -> Result<Tensor> {
        let d = packed.dim(1)?;
        let flat = match &self.packing {
            None => packed.clone(),
            Some(p) => {
                let zero = Tensor::zeros((1, d), packed.dtype(), packed.device())?;
                Tensor::cat(&[packed, &zero], 0)?.index_select(&p.of_slot, 0)?
            }
        };
        flat.reshape((self.batch, self.width, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_the_real_tokens_in_order_and_unpacking_pads_with_zeros() {
        let slots = Slots::new(&[2, 3, 1], &Device::Cpu).expect("slots");
        assert_eq!((slots.dims(), slots.tokens()), ((3, 3), 6));
        let padded = Tensor::arange(0f32, 9.0, &Device::Cpu)
            .and_then(|t| t.reshape((3, 3, 1)))
            .expect("tensor");
        let packed = slots.pack(&padded).expect("pack");
        let values: Vec<f32> = packed.flatten_all().and_then(|t| t.to_vec1()).expect("vec");
        assert_eq!(values, [0.0, 1.0, 3.0, 4.0, 5.0, 6.0]);
        let back: Vec<f32> = slots
            .unpack(&packed)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("vec");
        assert_eq!(back, [0.0, 1.0, 0.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0]);
    }

    #[test]
    fn rows_of_one_length_need_no_packing() {
        let slots = Slots::new(&[4, 4], &Device::Cpu).expect("slots");
        assert!(slots.packing.is_none());
        assert_eq!(slots.tokens(), 8);
    }
}
