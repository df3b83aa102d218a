//! The scoring head: the final norm, the two rows of the tied embedding for `Yes` and `No`, and
//! the final soft-cap, all in f32 (bf16 logits sit on too coarse a grid for probabilities).

use candle_core::{DType, Result, Tensor};

use crate::model::forward::norm::RmsNorm;

/// Computes soft-capped `[rows, 2]` (Yes, No) logits from last-position hidden states.
pub struct YesNoHead {
    norm: RmsNorm,
    /// `[hidden, 2]`: the transposed Yes and No embedding rows.
    rows_t: Tensor,
    softcap: f64,
}

impl YesNoHead {
    /// Takes the Yes and No rows of the tied embedding, `[2, hidden]`.
    pub fn new(rows: &Tensor, norm: RmsNorm, softcap: f64) -> Result<Self> {
        let rows = rows.to_dtype(DType::F32)?;
        Ok(Self {
            norm,
            rows_t: rows.t()?.contiguous()?,
            softcap,
        })
    }

    /// `hidden` is `[rows, hidden]` in any dtype.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self.norm.forward_f32(hidden)?;
        let logits = h.matmul(&self.rows_t)?;
        (logits / self.softcap)?.tanh()? * self.softcap
    }
}
