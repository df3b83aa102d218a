//! A bias-free linear layer that multiplies all tokens of a batch as one matrix.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `y = x W^T` with `W` stored `[out, in]` as in the checkpoints.
pub struct Linear {
    weight: Tensor,
}

impl Linear {
    /// Loads `weight` of shape `[out, in]`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get((out_dim, in_dim), "weight")?,
        })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims.last().copied().unwrap_or(0);
        let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?;
        let mut out_shape = dims.to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = self.weight.dim(0)?;
        }
        y.reshape(out_shape)
    }
}
