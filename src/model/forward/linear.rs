//! A bias-free linear layer that multiplies all tokens of a batch as one matrix, with dense
//! or quantized (GGUF) weights.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Result, Tensor};

use crate::model::kernels::dense_gemm::PackedDense;
use crate::model::kernels::int8_gemm::PackedInt8;
use crate::model::profile::{self, Phase};

/// `y = x W^T` with `W` stored `[out, in]` as in the checkpoints.
pub enum Linear {
    /// A plain weight matrix in the model's dtype.
    Dense(Tensor),
    /// A quantized matrix (Q8_0, Q4_K, ...); activations go through it in f32.
    Quantized(QMatMul),
    /// A Q8_0, Q4_K or Q6_K matrix repacked for the AVX-512 VNNI kernel; activations go through it in f32.
    Packed(PackedInt8),
    /// A bf16 or f32 matrix repacked for the AVX-512 dense kernel; activations go through it
    /// in the weights' dtype.
    PackedDense(PackedDense),
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims.last().copied().unwrap_or(0);
        let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let y = profile::timed(Phase::Gemm, || match self {
            Self::Dense(w) => x2.matmul(&w.t()?),
            Self::Quantized(q) => q.forward(&x2.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
            Self::Packed(p) => x2
                .to_dtype(DType::F32)?
                .contiguous()?
                .apply_op1_no_bwd(p)?
                .to_dtype(x.dtype()),
            Self::PackedDense(p) => x2
                .to_dtype(p.dtype())?
                .contiguous()?
                .apply_op1_no_bwd(p)?
                .to_dtype(x.dtype()),
        })?;
        profile::count_gemm(rows, in_dim, y.dim(1)?);
        let mut out_shape = dims.to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = y.dim(1)?;
        }
        y.reshape(out_shape)
    }
}
