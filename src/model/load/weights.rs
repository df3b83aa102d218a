//! Where the model's tensors come from: a candle `VarBuilder` (safetensors, synthetic weights)
//! or stored tensors (a GGUF file, or a model quantized in memory) whose quantized matrices
//! stay quantized.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::model::forward::embedding::Embedding;
use crate::model::forward::linear::Linear;
use crate::model::kernels::dense_gemm::PackedDense;
use crate::model::kernels::int8_gemm::PackedInt8;

/// One stored tensor (from a GGUF file or quantized in memory), under its Hugging Face name.
#[derive(Clone)]
pub enum StoredTensor {
    /// Stored as (or dequantized to) a plain tensor.
    Dense(Tensor),
    /// A quantized matrix, multiplied as is.
    Quantized(Arc<QTensor>),
}

enum Backend {
    Var(VarBuilder<'static>),
    Gguf {
        /// Matrices repacked for the int8 kernel leave the map as they are packed, so that
        /// loading never holds both copies of the model.
        tensors: Mutex<HashMap<String, StoredTensor>>,
        dtype: DType,
        device: Device,
    },
}

/// A view of the model's tensors under a name prefix.
#[derive(Clone)]
pub struct WeightSource {
    backend: Arc<Backend>,
    prefix: String,
}

impl WeightSource {
    /// Tensors from a `VarBuilder`, converted to its dtype.
    pub fn from_var_builder(vb: VarBuilder<'static>) -> Self {
        Self {
            backend: Arc::new(Backend::Var(vb)),
            prefix: String::new(),
        }
    }

    /// Tensors read from a GGUF file or quantized in memory; dense ones are used in `dtype`.
    pub fn from_tensors(
        tensors: HashMap<String, StoredTensor>,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            backend: Arc::new(Backend::Gguf {
                tensors: Mutex::new(tensors),
                dtype,
                device: device.clone(),
            }),
            prefix: String::new(),
        }
    }

    /// The same source under `prefix.name`.
    pub fn pp(&self, name: impl AsRef<str>) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.as_ref().to_string()
        } else {
            format!("{}.{}", self.prefix, name.as_ref())
        };
        Self {
            backend: self.backend.clone(),
            prefix,
        }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The dtype of dense tensors.
    pub fn dtype(&self) -> DType {
        match self.backend.as_ref() {
            Backend::Var(vb) => vb.dtype(),
            Backend::Gguf { dtype, .. } => *dtype,
        }
    }

    /// The device tensors live on.
    pub fn device(&self) -> &Device {
        match self.backend.as_ref() {
            Backend::Var(vb) => vb.device(),
            Backend::Gguf { device, .. } => device,
        }
    }

    fn stored(&self) -> Result<MutexGuard<'_, HashMap<String, StoredTensor>>> {
        let Backend::Gguf { tensors, .. } = self.backend.as_ref() else {
            candle_core::bail!("not a GGUF source")
        };
        tensors
            .lock()
            .map_err(|_| candle_core::Error::Msg("the tensor map is poisoned".into()))
    }

    fn gguf_entry(&self, shape: &Shape, name: &str) -> Result<StoredTensor> {
        let full = self.full_name(name);
        let entry = self.stored()?.get(&full).cloned().ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "cannot find tensor {full} (a packed matrix is read once, by the model)"
            ))
        })?;
        let found = match &entry {
            StoredTensor::Dense(t) => t.shape().clone(),
            StoredTensor::Quantized(q) => q.shape().clone(),
        };
        if &found != shape {
            candle_core::bail!("shape mismatch for {full}: expected {shape:?}, found {found:?}")
        }
        Ok(entry)
    }

    /// A tensor of this shape, dense, in the source's dtype (quantized ones are dequantized).
    pub fn tensor(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        let shape = shape.into();
        match self.backend.as_ref() {
            Backend::Var(vb) => vb.get(shape, &self.full_name(name)),
            Backend::Gguf { dtype, device, .. } => match self.gguf_entry(&shape, name)? {
                StoredTensor::Dense(t) => t.to_dtype(*dtype),
                StoredTensor::Quantized(q) => q.dequantize(device)?.to_dtype(*dtype),
            },
        }
    }

    /// The linear layer `name` (its `weight`, `[out, in]`), quantized if stored quantized. A
    /// matrix repacked for the int8 kernel, or (bf16, f32) for the dense kernel where it runs,
    /// is taken out of an in-memory source (freeing the stored copy), so it can be read this
    /// way once.
    pub fn linear(&self, in_dim: usize, out_dim: usize, name: &str) -> Result<Linear> {
        let source = self.pp(name);
        if let Backend::Gguf { .. } = self.backend.as_ref() {
            if let StoredTensor::Quantized(q) =
                source.gguf_entry(&Shape::from((out_dim, in_dim)), "weight")?
            {
                return Ok(match PackedInt8::from_qtensor(&q)? {
                    Some(packed) => {
                        source.forget("weight")?;
                        Linear::Packed(packed)
                    }
                    None => Linear::Quantized(QMatMul::from_arc(q)?),
                });
            }
        }
        let dense = source.tensor((out_dim, in_dim), "weight")?;
        Ok(match PackedDense::from_tensor(&dense)? {
            Some(packed) => {
                source.forget("weight")?;
                Linear::PackedDense(packed)
            }
            None => Linear::Dense(dense),
        })
    }

    /// Drops the in-memory copy of `name` once a kernel has repacked it (files are read
    /// tensor by tensor and keep none).
    fn forget(&self, name: &str) -> Result<()> {
        if let Backend::Gguf { .. } = self.backend.as_ref() {
            self.stored()?.remove(&self.full_name(name));
        }
        Ok(())
    }

    /// The embedding table `name` (`[vocab, hidden]`): kept quantized when stored so,
    /// otherwise dense in the source's dtype.
    pub fn embedding(&self, vocab: usize, hidden: usize, name: &str) -> Result<Embedding> {
        if let Backend::Gguf { dtype, .. } = self.backend.as_ref() {
            if let StoredTensor::Quantized(table) =
                self.gguf_entry(&Shape::from((vocab, hidden)), name)?
            {
                return Ok(Embedding::Quantized {
                    table,
                    dtype: *dtype,
                });
            }
        }
        Ok(Embedding::Dense(self.tensor((vocab, hidden), name)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    #[test]
    fn bf16_and_f32_matrices_take_the_dense_tile_where_it_runs_and_compute_the_same() {
        use crate::model::kernels::dense_gemm::{available, Precision};
        use candle_core::Module;
        let values: Vec<f32> = (0..32 * 64)
            .map(|i| ((i % 17) as f32 - 8.0) / 16.0)
            .collect();
        let w = Tensor::from_vec(values, (32, 64), &Device::Cpu).expect("w");
        for (dtype, precision) in [(DType::BF16, Precision::Bf16), (DType::F32, Precision::F32)] {
            let w = w.to_dtype(dtype).expect("dtype");
            let x = Tensor::ones((3, 64), dtype, &Device::Cpu).expect("x");
            let tensors = HashMap::from([("a.weight".to_string(), StoredTensor::Dense(w.clone()))]);
            let source = WeightSource::from_tensors(tensors, dtype, &Device::Cpu);
            let linear = source.linear(64, 32, "a").expect("linear");
            assert_eq!(
                matches!(linear, Linear::PackedDense(_)),
                available(precision)
            );
            // Sixteenths: every f32 sum is exact, and both paths round it once to the dtype.
            let got = linear.forward(&x).expect("forward");
            let want = x.matmul(&w.t().expect("t")).expect("matmul");
            let diff = (got.to_dtype(DType::F32).expect("f32")
                - want.to_dtype(DType::F32).expect("f32"))
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .expect("difference");
            assert_eq!(diff, 0.0, "{dtype:?}");
            // A repacked matrix has left the in-memory source: it is not held twice.
            let again = source.linear(64, 32, "a");
            if available(precision) {
                let err = again.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(err.contains("read once"), "{dtype:?}: {err}");
            } else {
                assert!(again.is_ok(), "{dtype:?}");
            }
        }
    }

    #[test]
    fn a_packed_matrix_leaves_the_source_and_others_stay() {
        let w = Tensor::ones((32, 64), DType::F32, &Device::Cpu).expect("w");
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).expect("quantize");
        let packable = PackedInt8::from_qtensor(&q).expect("pack").is_some();
        let w48 = Tensor::ones((48, 64), DType::F32, &Device::Cpu).expect("w");
        let tensors = HashMap::from([
            ("a.weight".to_string(), StoredTensor::Quantized(Arc::new(q))),
            // 48 rows: no kernel repacks it.
            ("b.weight".to_string(), StoredTensor::Dense(w48)),
        ]);
        let source = WeightSource::from_tensors(tensors, DType::F32, &Device::Cpu);
        let first = source.linear(64, 32, "a").expect("linear");
        assert_eq!(matches!(first, Linear::Packed(_)), packable);
        let second = source.linear(64, 32, "a");
        if packable {
            let err = second.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("read once"), "{err}");
        } else {
            assert!(second.is_ok());
        }
        assert!(source.linear(64, 48, "b").is_ok() && source.linear(64, 48, "b").is_ok());
    }
}
