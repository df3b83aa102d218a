//! The token embedding table: dense, or kept quantized when a GGUF file stores it so. The 2B's
//! 256000 × 2304 table is 2.2 GiB in f32, 0.6 GiB in Q8_0 and 0.45 GiB in Q6_K; a quantized
//! table decodes only the rows a step looks up (the same values the dense path would hold
//! after dequantizing).

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Result, Tensor};

/// `[vocab, hidden]` embedding rows.
pub enum Embedding {
    /// A plain table in the model's dtype.
    Dense(Tensor),
    /// A quantized table (any GGUF block type); rows come out in `dtype`.
    Quantized {
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
            Self::Quantized { table, dtype } => {
                let index = Tensor::new(ids, &Device::Cpu)?;
                table.embedding(&index)?.to_dtype(*dtype)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    fn rows_match_the_dequantized_table(dtype: GgmlDType, hidden: usize) {
        let values: Vec<f32> = (0..10 * hidden)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let dense = Tensor::from_vec(values, (10, hidden), &Device::Cpu).expect("table");
        let q = Arc::new(QTensor::quantize(&dense, dtype).expect("quantize"));
        let dequantized = Embedding::Dense(q.dequantize(&Device::Cpu).expect("dequantize"));
        let quantized = Embedding::Quantized {
            table: q,
            dtype: DType::F32,
        };
        let ids = [7, 0, 7, 9];
        let a: Vec<Vec<f32>> = dequantized.rows(&ids).and_then(|t| t.to_vec2()).expect("a");
        let b: Vec<Vec<f32>> = quantized.rows(&ids).and_then(|t| t.to_vec2()).expect("b");
        assert_eq!(a, b, "{dtype:?}");
        assert!(quantized.rows(&[10]).is_err(), "{dtype:?}");
    }

    #[test]
    fn quantized_rows_equal_the_dequantized_table_rows() {
        rows_match_the_dequantized_table(GgmlDType::Q8_0, 64);
        rows_match_the_dequantized_table(GgmlDType::Q6K, 256);
        rows_match_the_dequantized_table(GgmlDType::Q4K, 512);
    }
}
