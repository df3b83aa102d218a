//! The token embedding table: dense, or kept as Q8_0 when a GGUF file stores it so. The 2B's
//! 256000 × 2304 table is 2.2 GiB in f32 and 0.6 GiB in Q8_0; a quantized table decodes only
//! the rows a step looks up (the same values the dense path would hold after dequantizing).

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Result, Tensor};

use super::q8_gemm::q8_0_rows;

/// `[vocab, hidden]` embedding rows.
pub enum Embedding {
    /// A plain table in the model's dtype.
    Dense(Tensor),
    /// A Q8_0 table on the CPU; rows come out in `dtype`.
    Q8_0 {
        /// The stored table.
        table: Arc<QTensor>,
        /// Dtype of the rows handed out.
        dtype: DType,
    },
}

impl Embedding {
    /// The rows of `ids`, `[ids.len(), hidden]`.
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor> {
        match self {
            Self::Dense(table) => {
                let index = Tensor::new(ids, table.device())?;
                table.index_select(&index, 0)
            }
            Self::Q8_0 { table, dtype } => {
                let (vocab, hidden) = table.shape().dims2()?;
                let raw = table.data()?;
                let values = q8_0_rows(&raw, vocab, hidden, ids.iter().map(|&id| id as usize))?;
                Tensor::from_vec(values, (ids.len(), hidden), &Device::Cpu)?.to_dtype(*dtype)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    #[test]
    fn q8_0_rows_equal_the_dequantized_table_rows() {
        let values: Vec<f32> = (0..10 * 64)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let dense = Tensor::from_vec(values, (10, 64), &Device::Cpu).expect("table");
        let q = Arc::new(QTensor::quantize(&dense, GgmlDType::Q8_0).expect("quantize"));
        let dequantized = Embedding::Dense(q.dequantize(&Device::Cpu).expect("dequantize"));
        let quantized = Embedding::Q8_0 {
            table: q,
            dtype: DType::F32,
        };
        let ids = [7, 0, 7, 9];
        let a: Vec<Vec<f32>> = dequantized.rows(&ids).and_then(|t| t.to_vec2()).expect("a");
        let b: Vec<Vec<f32>> = quantized.rows(&ids).and_then(|t| t.to_vec2()).expect("b");
        assert_eq!(a, b);
        assert!(quantized.rows(&[10]).is_err());
    }
}
