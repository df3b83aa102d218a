//! Gemma's GeGLU, `gelu_tanh(gate) * up`, as one fused CPU kernel for f32, bf16 and f16: both
//! cores, one pass, no intermediate tensor. candle computes `gelu` on one thread with a libm
//! `tanh` per element, which took about a sixth of a 2B prefill in f32 and a third in bf16;
//! here `tanh` is a rational approximation the compiler vectorizes (`approx.rs`). In bf16 and
//! f16 the kernel computes in f32 and rounds where the unfused ops round (`gelu(gate)`, then its
//! product with `up`). Other devices take candle's own ops.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::model::kernels::approx::tanh;
use crate::model::kernels::float::{contiguous, Float, CHUNK};

/// `gelu_tanh(gate) * up` for tensors of the same shape.
pub fn geglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fused = matches!(gate.device(), Device::Cpu)
        && matches!(gate.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && up.dtype() == gate.dtype()
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
        let (g, u) = (gate_layout, up_layout);
        let out = match (gate, up) {
            (CpuStorage::F32(gate), CpuStorage::F32(up)) => CpuStorage::F32(fused(gate, g, up, u)?),
            (CpuStorage::BF16(gate), CpuStorage::BF16(up)) => {
                CpuStorage::BF16(fused(gate, g, up, u)?)
            }
            (CpuStorage::F16(gate), CpuStorage::F16(up)) => CpuStorage::F16(fused(gate, g, up, u)?),
            _ => candle_core::bail!("fused-geglu takes two f32, bf16 or f16 tensors"),
        };
        Ok((out, gate_layout.shape().clone()))
    }
}

/// `gelu_tanh(gate) * up` element by element, rounding `gelu` first, chunks spread over the
/// threads.
fn fused<T: Float>(gate: &[T], g: &Layout, up: &[T], u: &Layout) -> Result<Vec<T>> {
    let (gate, up) = (contiguous(gate, g)?, contiguous(up, u)?);
    let mut out = vec![T::zero(); gate.len()];
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(out, (gate, up))| {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                let gelu = T::narrow(gelu_tanh(g.widen()));
                *o = T::narrow(gelu.widen() * u.widen());
            }
        });
    Ok(out)
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
    use half::bf16;

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

    #[test]
    fn fused_bf16_geglu_rounds_as_the_reference_does() {
        // PyTorch's bf16 GeGLU: gelu computed in f32 from the bf16 gate and rounded to bf16,
        // then the product with `up` rounded. (candle's own bf16 gelu rounds after every
        // operation, so that `1 + tanh(…)` near −1 collapses to 0: not a reference.)
        let n = 2 * CHUNK + 5;
        let values = |k: usize, d: f32| -> Vec<bf16> {
            (0..n)
                .map(|i| bf16::from_f32(((i * k % 1001) as f32 - 500.0) / d))
                .collect()
        };
        let (gate, up) = (values(37, 60.0), values(11, 100.0));
        let tensor = |v: &[bf16]| Tensor::from_vec(v.to_vec(), n, &Device::Cpu).expect("tensor");
        let fused = geglu(&tensor(&gate), &tensor(&up)).expect("fused");
        assert_eq!(fused.dtype(), DType::BF16);
        let fused = fused.to_vec1::<bf16>().expect("values");
        let mut differ = 0;
        for (i, ((got, g), u)) in fused.iter().zip(&gate).zip(&up).enumerate() {
            let x = f64::from(g.to_f32());
            let exact = 0.5
                * x
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044_715 * x * x * x)).tanh());
            let gelu = bf16::from_f64(exact);
            let want = bf16::from_f32(gelu.to_f32() * u.to_f32()).to_f32();
            let got = got.to_f32();
            // The tanh approximation (under 1e-6 from tanh, as in f32) can tip a rounding: one
            // bf16 step (2^-7 relative) at most, and nearly all equal where gelu is not ~0.
            assert!(
                (got - want).abs() <= want.abs() / 128.0 + 1e-5,
                "element {i}: {got} against {want}"
            );
            differ += usize::from(got != want && want.abs() > 1e-3);
        }
        assert!(differ * 100 < n, "{differ} of {n} differ");
    }
}
