//! Gemma's RMSNorm: `x / rms(x) * (1 + w)`, computed in f32 whatever the model dtype.

use candle_core::{DType, Module, Result, Tensor};

use crate::model::kernels::norm::{add_rms_norm, rms_norm};
use crate::model::load::weights::WeightSource;

/// An RMSNorm with its `1 + w` scale precomputed in f32.
pub struct RmsNorm {
    scale: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Loads `weight` (the Hugging Face convention: the stored value is `w`, applied as `1 + w`).
    pub fn load(ws: &WeightSource, size: usize, eps: f64) -> Result<Self> {
        let w = ws.tensor(size, "weight")?.to_dtype(DType::F32)?;
        Ok(Self {
            scale: (w + 1.0)?,
            eps: eps as f32,
        })
    }

    /// Normalizes in f32 and returns f32.
    pub fn forward_f32(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(&x.to_dtype(DType::F32)?)
    }

    /// `residual + self.forward(h)`, in one pass where it can.
    pub fn add_to(&self, residual: &Tensor, h: &Tensor) -> Result<Tensor> {
        add_rms_norm(residual, h, &self.scale, self.eps)
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &self.scale, self.eps)
    }
}
