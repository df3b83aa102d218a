//! Gemma's GeGLU, `gelu_tanh(gate) * up`, as one fused CPU kernel for f32: both cores, one
//! pass, no intermediate tensor. candle computes `gelu` on one thread with a libm `tanh` per
//! element, which took about a sixth of a 2B prefill; here `tanh` is a rational approximation
//! the compiler vectorizes (`approx.rs`). Other dtypes and devices take candle's own ops.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::model::kernels::approx::tanh;

/// `gelu_tanh(gate) * up` for tensors of the same shape.
pub fn geglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fused = matches!(gate.device(), Device::Cpu)
        && gate.dtype() == DType::F32
        && up.dtype() == DType::F32
        && gate.shape() == up.shape()
        && gate.is_contiguous()
        && up.is_contiguous();
    if fused {
        gate.apply_op2_no_bwd(up, &FusedGeglu)
    } else {
        gate.gelu()? * up
    }
}

struct FusedGeglu;

/// Elements per parallel task: large enough to amortise scheduling, small enough to split a
/// prefill's activations across both cores.
const CHUNK: usize = 16 * 1024;

impl CustomOp2 for FusedGeglu {
    fn name(&self) -> &'static str {
        "fused-geglu"
    }

    fn cpu_fwd(
        &self,
        gate: &CpuStorage,
        gate_layout: &Layout,
        up: &CpuStorage,
        up_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(gate), CpuStorage::F32(up)) = (gate, up) else {
            candle_core::bail!("fused-geglu takes f32 tensors")
        };
        let (Some((g0, g1)), Some((u0, u1))) = (
            gate_layout.contiguous_offsets(),
            up_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("fused-geglu takes contiguous tensors")
        };
        let (gate, up) = (&gate[g0..g1], &up[u0..u1]);
        let mut out = vec![0f32; gate.len()];
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(|(out, (gate, up))| {
                for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                    *o = gelu_tanh(g) * u;
                }
            });
        Ok((CpuStorage::F32(out), gate_layout.shape().clone()))
    }
}

/// GELU with the tanh approximation, as `gelu_pytorch_tanh` defines it.
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("difference")
    }

    #[test]
    fn fused_geglu_matches_candles_gelu_times_up() {
        let n = 3 * CHUNK + 17;
        let gate: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 1001) as f32 - 500.0) / 60.0)
            .collect();
        let up: Vec<f32> = (0..n)
            .map(|i| ((i * 11 % 97) as f32 - 48.0) / 10.0)
            .collect();
        let gate = Tensor::from_vec(gate, n, &Device::Cpu).expect("gate");
        let up = Tensor::from_vec(up, n, &Device::Cpu).expect("up");
        let fused = geglu(&gate, &up).expect("fused");
        let plain = (gate.gelu().expect("gelu") * &up).expect("mul");
        let diff = max_abs_diff(&fused, &plain);
        assert!(diff < 1e-5, "largest difference {diff:e}");
    }

    #[test]
    fn other_dtypes_and_strided_inputs_still_work() {
        let gate = Tensor::arange(-8f32, 8.0, &Device::Cpu)
            .and_then(|t| t.reshape((4, 4)))
            .expect("gate");
        let up = gate.ones_like().expect("up");
        let strided = geglu(&gate.t().expect("t"), &up).expect("strided");
        let plain = (gate.t().and_then(|g| g.gelu()).expect("gelu") * &up).expect("mul");
        let diff = max_abs_diff(&strided, &plain);
        assert!(diff < 1e-5);
        let half = geglu(
            &gate.to_dtype(DType::BF16).expect("bf16"),
            &up.to_dtype(DType::BF16).expect("bf16"),
        )
        .expect("bf16 geglu");
        assert_eq!(half.dtype(), DType::BF16);
    }
}
